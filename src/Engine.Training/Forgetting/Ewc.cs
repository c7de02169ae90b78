using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;
using Engine.Parallel;
using Engine.Training.Parallel;
using Engine.Training.Run;

namespace Engine.Training.Forgetting;

/// <summary>
/// Elastic weight consolidation (Kirkpatrick et al. 2017) with a diagonal Fisher: the anchor θ* is the base model,
/// F_i the mean over batches of the squared gradient of the base model's loss on general data (empirical Fisher).
/// Penalty λ/2 Σ F_i (θ_i − θ*_i)², gradient λ F_i (θ_i − θ*_i), added after backward and before clipping.
/// <para>
/// Anchor and Fisher are flat, over the rank's owned slices of the parameter store (all of it without ZeRO): the
/// gradient term is applied where this rank updates, and the penalty is summed across ranks when slices are sharded.
/// Under data parallelism the Fisher batches are split across ranks and their squared gradients summed.
/// </para>
/// </summary>
public sealed class Ewc : IDisposable
{
    readonly Tensor anchor, fisher;
    readonly int storeVersion;

    Ewc(Tensor anchor, Tensor fisher, int storeVersion, float lambda)
    {
        this.anchor = anchor; this.fisher = fisher; this.storeVersion = storeVersion;
        Lambda = lambda;
    }

    public float Lambda { get; }

    /// <summary>Builds the anchor (current weights) and the Fisher from batches of (ids, targets). Every rank passes
    /// the same batches; rank r computes batches r, r + N, … and the squared gradients are summed across ranks. With
    /// <paramref name="pipeline"/> the model is a stage: each batch's gradient runs through every stage of the replica
    /// (forward and backward, no reduction), and each stage estimates its own parameters.</summary>
    public static Ewc Estimate(LlamaModel model, IEnumerable<(int[] Ids, int[] Targets)> batches, int batch, int seqLen, float lambda, DataParallel? dp = null,
        PipelineRunner? pipeline = null)
    {
        var be = model.Backend;
        var store = model.Store;
        using var local = dp == null ? DataParallel.Local(store) : null;
        var par = dp ?? local!;
        var full = be.Zeros([checked((int)store.Capacity)]).Keep();
        // a stage's gradient of one batch: the schedule of one micro-batch over the replica's stages, nothing reduced
        var stages = pipeline == null ? null : new PipelineRunner(model, pipeline.Grid, new GradientSync(), pipeline.Schedule);
        var rows = Enumerable.Repeat("ewc", batch).ToArray();
        var lm = new LanguageModelLoss(model, ["ewc"]);
        try
        {
            int count = 0;
            using (par.WithLocalGradients())
            {
                foreach (var (ids, tg) in batches)
                {
                    if (count++ % par.Comm.WorldSize != par.Comm.Rank) continue;
                    model.ZeroGrad();
                    int valid = tg.Count(t => t != -100);
                    if (stages != null) stages.RunStep([new Batch(ids, tg, rows)], Math.Max(1, valid), lm, new LossAccounting());
                    else
                        using (var scope = new TensorScope())
                        {
                            var idT = be.Empty([ids.Length], DType.I32);
                            var tgT = be.Empty([tg.Length], DType.I32);
                            be.Upload(idT, ids);
                            be.Upload(tgT, tg);
                            Grad.Backward(model.Loss(idT, tgT, batch, seqLen, Math.Max(1, valid)).Loss);
                        }
                    be.AddSquare(full, store.Grads!);
                }
                model.ZeroGrad();
            }
            if (count == 0) throw new ArgumentException("EWC needs at least one batch to estimate the Fisher information");
            if (par.Comm.WorldSize > 1) par.Comm.AllReduce(full).Wait();
            be.Scale(full, 1f / count);
            var (a, f) = (Compact(be, par, store.Master), Compact(be, par, full));
            return new Ewc(a, f, store.Version, lambda);
        }
        finally { full.Dispose(); }
    }

    /// <summary>This rank's owned slices of a flat [Capacity] buffer, concatenated (stage 0: a copy of all of it).</summary>
    static Tensor Compact(IBackend be, DataParallel dp, Tensor flat)
    {
        var c = be.Zeros([checked((int)dp.Layout.OwnedElements)]).Keep();
        foreach (var s in dp.Layout.Owned) be.Copy(flat.Range(s.Start, s.Length), c.Range(s.Compact, s.Length));
        return c;
    }

    /// <summary>Builds EWC from given anchors and Fisher diagonals per parameter (tests, loading); parameters not
    /// named get F = 0.</summary>
    public static Ewc FromTensors(LlamaModel model, IEnumerable<(string Name, float[] Anchor, float[] Fisher)> items, float lambda, DataParallel? dp = null)
    {
        var be = model.Backend;
        var store = model.Store;
        using var local = dp == null ? DataParallel.Local(store) : null;
        var par = dp ?? local!;
        using var a = be.Empty([checked((int)store.Capacity)]).Keep();
        be.Copy(store.Master, a);
        using var f = be.Zeros([checked((int)store.Capacity)]).Keep();
        foreach (var (name, anchorValues, fisherValues) in items)
        {
            var slot = store.Slot(name);
            if (anchorValues.Length != slot.Numel || fisherValues.Length != slot.Numel)
                throw new ArgumentException($"EWC terms for {name}: expected {slot.Numel} values, got {anchorValues.Length}/{fisherValues.Length}");
            be.Upload(a.Range(slot.Offset, slot.Numel), anchorValues);
            be.Upload(f.Range(slot.Offset, slot.Numel), fisherValues);
        }
        return new Ewc(Compact(be, par, a), Compact(be, par, f), store.Version, lambda);
    }

    /// <summary>Adds λF(θ−θ*) to the gradients of this rank's slices (frozen parameters sit at their anchor: zero);
    /// returns the whole model's penalty.</summary>
    public double Apply(LlamaModel model, DataParallel? dp = null)
    {
        using var local = dp == null ? DataParallel.Local(model.Store) : null;
        var par = dp ?? local!;
        if (model.Store.Version != storeVersion)
            throw new InvalidOperationException("EWC was estimated on another layout of the parameters (vocabulary resized or data parallelism set up afterwards)");
        if (anchor.Numel != par.Layout.OwnedElements) throw new InvalidOperationException("EWC was estimated for another data-parallel layout");
        double penalty = 0;
        foreach (var s in par.Layout.Owned)
            penalty += model.Backend.Ewc(model.Store.Master.Range(s.Start, s.Length), anchor.Range(s.Compact, s.Length),
                fisher.Range(s.Compact, s.Length), par.OwnedGradient(s), Lambda);
        if (par.Stage > 0)
        {
            Span<double> total = [penalty];
            par.Comm.AllReduce(total);
            penalty = total[0];
        }
        return penalty;
    }

    public void Dispose()
    {
        anchor.Dispose();
        fisher.Dispose();
    }
}
