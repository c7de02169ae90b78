using Engine.Core;
using Engine.Model;

namespace Engine.Training.Run;

/// <summary>
/// The per-micro-batch loss of a run (TorchTitan's loss function beside its one train loop): the language model's
/// cross-entropy with per-source accounting, the reward model's Bradley–Terry, DPO's, PPO's clipped policy and value
/// losses. The loop sums <see cref="Count"/> over the step's global batch (every rank's micro-batches) and hands that
/// to <see cref="Forward"/>, which divides its micro-batch's share by it — so the summed gradients of any number of
/// ranks, micro-batches and pipeline stages are those of one process on the same global batch.
/// </summary>
public interface ITrainingLoss
{
    /// <summary>Accounts the loss reports per step (reduced across ranks in this order; see <see cref="LossAccounting"/>).</summary>
    IReadOnlyList<string> Accounts { get; }

    /// <summary>The micro-batch's weight in the step's normalizer: scored tokens, pairs, answer tokens.</summary>
    long Count(Batch b);

    /// <summary>Advances past a micro-batch another rank trains on; returns its <see cref="Count"/>.</summary>
    long Skip(IBatchSource data, int batch, int seqLen) => Count(data.Next(batch, seqLen));

    /// <summary>
    /// The last (or only) stage's forward from its input — token ids [rows·T] when that stage is also the first,
    /// else the previous stage's hidden states [rows·T, C] — to the micro-batch's loss ÷ <paramref name="normalizer"/>
    /// (a [1] tensor recorded on the tape), adding what it reports to <paramref name="accounting"/>.
    /// </summary>
    Tensor Forward(Tensor input, Batch b, long normalizer, LossAccounting accounting);
}

/// <summary>The language-model loss: token cross-entropy (+ z-loss) ÷ the global count of scored targets, and the
/// per-source token losses of each row (mixture streams name a row's source).</summary>
public sealed class LanguageModelLoss(LlamaModel model, IReadOnlyList<string> sources, double zLoss = 0) : ITrainingLoss
{
    public IReadOnlyList<string> Accounts => sources;

    public long Count(Batch b) => b.Targets.Count(t => t != -100);

    public long Skip(IBatchSource data, int batch, int seqLen) => data.Skip(batch, seqLen);

    public Tensor Forward(Tensor input, Batch b, long normalizer, LossAccounting accounting)
    {
        var be = model.Backend;
        var tg = be.Empty([b.LocalTargets.Length], DType.I32);
        be.Upload(tg, b.LocalTargets);
        var (loss, tokenLosses) = model.StageLoss(input, tg, b.Layout, normalizer, (float)zLoss, model.TrainingMaxZLoss);   // Baichuan's max-z in training only
        if (b.Shard == null) accounting.AddRows(tokenLosses, b.Targets, b.RowSources);   // on the device until the step's one read
        else
        {
            // a rank's chunks of the sequences (context parallelism): placed at their tokens of the whole batch
            var (values, targets) = b.ToWhole(tokenLosses.ToArray());
            accounting.AddRows(values, targets, b.RowSources);
        }
        return loss;
    }
}
