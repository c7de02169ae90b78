using Engine.Core;
using Engine.Model;
using Engine.Training.Run;

namespace Engine.Training.Alignment;

/// <summary>
/// The reward model: a Llama body (optionally the tuned model's weights) with a scalar head read at the last answer
/// token, trained on preference pairs with the pairwise Bradley–Terry loss (InstructGPT, Baichuan 2, DeepSpeed-Chat
/// step 2). A run like any other (<see cref="RunAssembler"/>, so at any layout): batch_size pairs per step (the global
/// batch, split over the data-parallel replicas), chosen and rejected packed in one micro-batch, body and head each
/// with their own AdamW and clip, constant learning rate.
/// </summary>
public static class RewardModelTrainer
{
    public sealed record StepLog(int Step, double Loss, double Accuracy, double GradNorm);

    /// <summary>The reward model's run: <paramref name="body"/> with a fresh head (<paramref name="headSeed"/>).</summary>
    public static RunSpec Spec(ModelSource body, ulong headSeed, IReadOnlyList<Preference> pairs, RewardSection o, int padId, ulong seed, RunLayout layout,
        Action<StepLog>? onStep = null, Action<string>? log = null)
    {
        if (pairs.Count == 0) throw new InvalidDataException("reward model: no training pairs (every sampled answer scored as high as the reference?)");
        return new RunSpec
        {
            Name = "alignment.reward",
            Layout = layout,
            Model = body,
            ScalarHead = RunSpec.NewHead(headSeed),
            Optim = o.Optim,
            Data = run => new PairBatches(pairs, o.BatchSize, run.Layout.Replicas, seed, padId),
            // for the fit check: the whole global batch's sequences at the longest pair (an upper bound per replica)
            MicroBatchRows = 2 * Math.Min(o.BatchSize, pairs.Count),
            SeqLen = MaxLength(pairs),
            Steps = o.Steps,
            Loss = run => new BradleyTerryLoss(run.Head!),
            OnStep = (m, _) => onStep?.Invoke(new StepLog(m.Step, m.Loss, m.SourceLosses?.GetValueOrDefault("accuracy", double.NaN) ?? double.NaN, m.GradNorm)),
            Log = log,
        };
    }

    /// <summary>A trained reward model as <see cref="ScalarHeadModel.Save"/> writes it, from however many stages hold
    /// it: the body in Hugging Face layout, the head by the last stage's writer (collective).</summary>
    public static void Save(AssembledRun run, string directory)
    {
        run.SaveWeights(directory);
        if (run.Model.Stage.IsLast && run.Layout.WritesWeights) run.Head!.SaveHead(directory);
        run.World.Barrier();
    }

    /// <summary>The longest prompt + answer of any pair.</summary>
    public static int MaxLength(IReadOnlyList<Preference> pairs) => pairs.Max(p => p.Prompt.Ids.Length + Math.Max(p.Chosen.Length, p.Rejected.Length));

    /// <summary>The Bradley–Terry loss of a batch of pairs on a whole model (recorded when gradients are on), its value
    /// and the share of pairs ranked right.</summary>
    public static (Tensor Loss, double Value, double Accuracy) Loss(ScalarHeadModel rm, IReadOnlyList<Preference> batch, int padId)
    {
        var b = PairBatch.Of(batch, padId);
        var accounting = new LossAccounting();
        var loss = new BradleyTerryLoss(rm).Forward(Upload(rm.Backend, b.Ids), b, batch.Count, accounting);
        return (loss, loss.Item(), accounting.Means()["accuracy"]);
    }

    internal static Tensor Upload(IBackend be, int[] ids)
    {
        var t = be.Empty([ids.Length], DType.I32);
        be.Upload(t, ids);
        return t;
    }

    /// <summary>Share of pairs whose chosen answer the reward model scores higher (held-out pair accuracy), and the mean loss.</summary>
    public static (double Accuracy, double Loss) Evaluate(ScalarHeadModel rm, IReadOnlyList<Preference> pairs, int padId, int batch = 8)
    {
        if (pairs.Count == 0) return (double.NaN, double.NaN);
        var c = PolicyOps.Scores(rm, pairs.Select(p => p.ChosenSequence).ToList(), padId, batch);
        var r = PolicyOps.Scores(rm, pairs.Select(p => p.RejectedSequence).ToList(), padId, batch);
        var (loss, _, _, acc) = AlignmentMath.BradleyTerry(c, r);
        return (acc, loss);
    }
}
