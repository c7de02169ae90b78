using Engine.Core;
using Engine.Model;
using Engine.Training.Run;

namespace Engine.Training.Alignment;

/// <summary>
/// Direct preference optimization (Rafailov et al. 2023) on the reward model's pairs: the tuned model is both the
/// policy's start and the frozen reference (its sequence log-probs computed once), sequence log-probs sum the answer
/// tokens only, loss −log σ(β·margin) (<see cref="AlignmentMath.Dpo"/>), constant learning rate. A run like any other
/// (<see cref="RunAssembler"/>, so at any layout): batch_size pairs per step split over the data-parallel replicas.
/// </summary>
public static class DpoTrainer
{
    public sealed record StepLog(int Step, double Loss, double Accuracy, double Margin, double GradNorm);

    /// <summary>DPO's run: <paramref name="policy"/> (the tuned model) trained on the pairs against the reference's
    /// sequence log-probs <paramref name="refChosen"/> and <paramref name="refRejected"/> (one per pair).</summary>
    public static RunSpec Spec(ModelSource policy, IReadOnlyList<Preference> pairs, double[] refChosen, double[] refRejected, DpoSection o, int padId, ulong seed,
        RunLayout layout, Action<StepLog>? onStep = null, Action<string>? log = null)
    {
        if (pairs.Count == 0) throw new InvalidDataException("DPO: no training pairs");
        return new RunSpec
        {
            Name = "alignment.dpo",
            Layout = layout,
            Model = policy,
            Optim = o.Optim,
            Data = run => new PairBatches(pairs, o.BatchSize, run.Layout.Replicas, seed, padId, refChosen, refRejected),
            MicroBatchRows = 2 * Math.Min(o.BatchSize, pairs.Count),
            SeqLen = RewardModelTrainer.MaxLength(pairs),
            Steps = o.Steps,
            Loss = run => new DpoLoss(run.Model, o.Beta),
            OnStep = (m, _) => onStep?.Invoke(new StepLog(m.Step, m.Loss, m.SourceLosses?.GetValueOrDefault("accuracy", double.NaN) ?? double.NaN,
                m.SourceLosses?.GetValueOrDefault("margin", double.NaN) ?? double.NaN, m.GradNorm)),
            Log = log,
        };
    }

    /// <summary>The DPO loss of a batch on a whole model (recorded when gradients are on): chosen and rejected packed
    /// in one batch; its value, the implicit-reward accuracy and the mean β·margin.</summary>
    public static (Tensor Loss, double Value, double Accuracy, double Margin) Loss(LlamaModel policy, IReadOnlyList<Preference> batch,
        double[] refChosen, double[] refRejected, double beta, int padId)
    {
        var b = PairBatch.Of(batch, padId, refChosen, refRejected);
        var accounting = new LossAccounting();
        var loss = new DpoLoss(policy, beta).Forward(RewardModelTrainer.Upload(policy.Backend, b.Ids), b, batch.Count, accounting);
        var means = accounting.Means();
        return (loss, loss.Item(), means["accuracy"], means["margin"]);
    }
}
