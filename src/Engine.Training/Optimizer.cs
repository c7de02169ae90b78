using Engine.Core;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Parallel;
using Engine.Training.Parallel;

namespace Engine.Training;

/// <summary>AdamW settings; defaults are the seeds' pretraining values (β = 0.9/0.95, wd 0.1, clip 1.0).</summary>
public sealed record AdamWOptions
{
    public double Lr { get; init; } = 1.2e-4;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;
    public double Eps { get; init; } = 1e-8;
    public double WeightDecay { get; init; } = 0.1;
    /// <summary>Global gradient-norm clip; 0 disables clipping.</summary>
    public double ClipNorm { get; init; } = 1.0;
    /// <summary>Skip weight decay on 1-D parameters (norm weights), as Megatron and TorchTitan do.</summary>
    public bool NoDecayOnNorms { get; init; } = true;
}

/// <summary>
/// A step whose global gradient norm is not finite: <see cref="AdamW.Update"/> wrote nothing (weights, moments and
/// step count are as before the call). The norm is all-reduced, so every data-parallel rank throws it at the same step.
/// </summary>
public sealed class NonFiniteGradientException(double norm, int step)
    : InvalidOperationException($"gradient norm is {norm} at step {step}: refusing to update the weights")
{
    public double Norm { get; } = norm;
    public int Step { get; } = step;
}

/// <summary>
/// AdamW with fp32 moments over the flat parameter store: one multi-tensor launch over runs of the store (a run per
/// stretch of consecutive trainable parameters with the same weight decay — norms undecayed — so frozen parameters
/// are skipped, stage-1 vocabulary training), global-norm clipping computed on the device from chunk partials (the
/// clip factor never visits the host before the update), and, under ZeRO, moments only for this rank's slices
/// (<see cref="DataParallel"/>). A step whose gradient norm is not finite writes nothing and throws.
/// </summary>
public sealed class AdamW : IDisposable
{
    readonly ParameterStore store;
    readonly bool ownsParallel;
    Tensor? m, v, partials, result;
    AdamWRun[] runs = [];
    int runsVersion = -1;
    string frozenKey = "";

    /// <param name="parallel">The data-parallel set-up (null: one process, the store as it is).</param>
    public AdamW(LlamaModel model, AdamWOptions options, DataParallel? parallel = null) : this(model.Store, options, parallel) { }

    /// <summary>AdamW over any flat store (LoRA: the adapters' store, so moments exist for the adapters only).</summary>
    public AdamW(ParameterStore store, AdamWOptions options, DataParallel? parallel = null)
    {
        this.store = store;
        Options = options;
        Parallel = parallel ?? DataParallel.Local(store);
        ownsParallel = parallel == null;
        if (!ReferenceEquals(Parallel.Store, store)) throw new ArgumentException("the data-parallel set-up belongs to another model");
    }

    public AdamWOptions Options { get; }
    public DataParallel Parallel { get; }

    /// <summary>The other pipeline stages (null: none): the gradient norm and clip factor are over the whole model,
    /// so every stage's sum of squares is added across this group.</summary>
    public ICommunicator? NormGroup { get; set; }
    /// <summary>A parameter whose gradient another stage already counts (the last stage's tied-embedding copy).</summary>
    public string? NormExclude { get; set; }
    /// <summary>Parameters whose gradient another rank of <see cref="NormGroup"/> already counts (tensor parallelism's
    /// replicated parameters on all but their first holder).</summary>
    public IReadOnlyList<string> NormDuplicates { get; set; } = [];
    public int Step { get; private set; }

    /// <summary>Bytes of AdamW moments this rank holds (m and v; 1/N of the single-rank figure under ZeRO).</summary>
    public long StateBytes => ((m?.Numel ?? 0) + (v?.Numel ?? 0)) * sizeof(float);

    IBackend Be => store.Backend;

    void EnsureState()
    {
        if (m != null) return;
        int n = checked((int)Parallel.Layout.OwnedElements);
        m = Be.Zeros([n]).Keep();
        v = Be.Zeros([n]).Keep();
        partials = Be.Zeros([checked((int)((store.Capacity + ShardLayout.Chunk - 1) / ShardLayout.Chunk))]).Keep();
        result = Be.Zeros([3]).Keep();
    }

    /// <summary>The runs of this rank's slices over trainable parameters, rebuilt when the trainable set changes.</summary>
    AdamWRun[] Runs()
    {
        string key = string.Concat(store.Slots.Select(s => s.Tensor.Frozen ? '0' : '1'));
        if (runsVersion == store.Version && key == frozenKey) return runs;
        var list = new List<AdamWRun>();
        foreach (var slice in Parallel.Layout.Owned)
        {
            long sliceEnd = slice.Start + slice.Length;
            AdamWRun? open = null;
            long openStart = 0;   // the open run's first flat element
            foreach (var s in store.Slots)
            {
                long lo = Math.Max(s.Offset, slice.Start), hi = Math.Min(s.Offset + s.Numel, sliceEnd);
                if (lo >= hi) continue;
                if (s.Tensor.Frozen) { if (open != null) { list.Add(open.Value); open = null; } continue; }
                float wd = Options.NoDecayOnNorms && s.Shape.Length == 1 ? 0f : (float)Options.WeightDecay;
                long master = Parallel.MasterOffset(slice) + (lo - slice.Start);
                long grad = Parallel.GradientOffset(slice) + (lo - slice.Start);
                long state = slice.Compact + (lo - slice.Start);
                // extend the open run across the alignment gap (gaps are zero and stay zero under AdamW) when the
                // weight decay agrees; otherwise start a new run
                if (open is { } o && o.WeightDecay == wd) open = o with { Count = hi - openStart };
                else
                {
                    if (open != null) list.Add(open.Value);
                    open = new AdamWRun(master, grad, state, hi - lo, wd);
                    openStart = lo;
                }
            }
            if (open != null) list.Add(open.Value);
        }
        runs = list.ToArray();
        runsVersion = store.Version;
        frozenKey = key;
        return runs;
    }

    /// <summary>sqrt(sum of squared gradients) over trainable parameters (frozen ones hold zero gradients), written on
    /// the device as [Σg², norm, clip factor]; one download. Waits for the gradient reductions.</summary>
    public double GradNorm()
    {
        LaunchNorm();
        return result!.ToArray()[1];
    }

    /// <summary>Enqueues the norm: chunk partials of the (reduced) gradients (+ the gate on the last) → [Σg², norm, clip
    /// factor] in result.</summary>
    void LaunchNorm(Tensor? gate = null)
    {
        EnsureState();
        Parallel.FinishGradients();
        if (Parallel.Stage >= 2)
        {
            Be.Fill(partials!, 0f);
            foreach (var s in Parallel.Layout.Owned)
                Be.ChunkSumOfSquares(Parallel.OwnedGradient(s), ShardLayout.Chunk, partials!.Range(s.Start / ShardLayout.Chunk, s.Length / ShardLayout.Chunk));
            // each chunk's partial is non-zero on its owner alone: the sum is exact, the same value on every rank
            Parallel.Comm.AllReduce(partials!).Wait();
        }
        else Be.ChunkSumOfSquares(store.Grads!, ShardLayout.Chunk, partials!);
        if (gate != null) Be.AddInPlace(partials!.Range(partials.Numel - 1, 1), gate, 1f);
        Be.GradNormFinalize(partials!, (float)Options.ClipNorm, result!);
        if (NormGroup is { WorldSize: > 1 } group) CombineAcrossStages(group);
    }

    /// <summary>Pipeline and tensor parallelism: the global Σg² is the sum over the model's stages and tensor ranks,
    /// each gradient counted once (a tied embedding's copy on the last stage and tensor parallelism's replicated
    /// parameters are left out where another rank counts them); norm and clip factor recomputed on the host and written
    /// back (one read and one write of three floats).</summary>
    void CombineAcrossStages(ICommunicator group)
    {
        double s = result!.ToArray()[0];
        var excluded = NormExclude is { } one ? NormDuplicates.Append(one).Distinct() : NormDuplicates;
        if (excluded.Any())
        {
            // the excluded gradients' part on this rank (sharded at ZeRO-2/3: summed over the data-parallel group)
            Span<double> ex = [excluded.Sum(name => Parallel.OwnedGradientRanges(name).Sum(g => Be.SumOfSquares(g)))];
            if (Parallel.Stage >= 2) Parallel.Comm.AllReduce(ex);
            s -= ex[0];
        }
        Span<double> total = [s];
        group.AllReduce(total);
        double norm = Math.Sqrt(Math.Max(0, total[0]));
        float clip = !double.IsFinite(total[0]) ? float.NaN : Options.ClipNorm > 0 ? (float)Math.Min(1, Options.ClipNorm / (norm + 1e-6)) : 1f;
        Be.Upload(result!, [(float)total[0], (float)norm, clip]);
    }

    /// <summary>Clips by global norm and applies one AdamW update at learning rate lr (this rank's slices; the master
    /// weights are then all-gathered under ZeRO). Returns the pre-clip norm. One host read per step (after the update
    /// is enqueued).</summary>
    public double Update(double lr) => Complete(Enqueue(lr).ToArray());

    /// <summary>
    /// <see cref="Update"/> without its read: enqueues the norm, the clipped update and (ZeRO) the gather, and returns
    /// the device's [Σg², norm, clip factor] for the caller to read once together with its own values (the training
    /// loop's one read per step), then to pass to <see cref="Complete"/>. <paramref name="gate"/> (an fp32 scalar,
    /// 0 or NaN, e.g. 0·loss squared) is added to the last norm partial: 0 leaves every bit as it was, NaN makes the
    /// clip factor NaN, so the update writes nothing — a non-finite loss skips the step without a host decision.
    /// </summary>
    public Tensor Enqueue(double lr, Tensor? gate = null)
    {
        using var prof = Profiler.Time("adamw");
        LaunchNorm(gate);
        Step++;
        var step = new AdamWStep((float)lr, (float)Options.Beta1, (float)Options.Beta2, (float)Options.Eps, 0f, Step);
        // the clip factor is read on the device; a non-finite one makes the kernel write nothing (and the gather then
        // moves the unchanged weights)
        Be.AdamW(Parallel.MasterBuffer, Parallel.GradientBuffer, m!, v!, Runs(), step, result!.Range(2, 1));
        Parallel.GatherParameters();
        return result!;
    }

    /// <summary>After the read of <see cref="Enqueue"/>'s result: the pre-clip norm, or (clip factor not finite: the
    /// update wrote nothing) the step is taken back and <see cref="NonFiniteGradientException"/> thrown.</summary>
    public double Complete(ReadOnlySpan<float> result)
    {
        if (!float.IsFinite(result[2]))
        {
            Step--;
            throw new NonFiniteGradientException(result[1], Step + 1);
        }
        return result[1];
    }

    /// <summary>This rank's moments for checkpoints: the compact buffers and the owned slices they cover.</summary>
    public (float[] M, float[] V) ExportState()
    {
        EnsureState();
        return (m!.ToArray(), v!.ToArray());
    }

    /// <summary>Restores this rank's moments (compact, as <see cref="ExportState"/> returned them for this layout).</summary>
    public void ImportState(int step, float[] mValues, float[] vValues)
    {
        EnsureState();
        if (mValues.Length != m!.Numel || vValues.Length != v!.Numel)
            throw new InvalidDataException($"optimizer state holds {mValues.Length}/{vValues.Length} values, this rank's layout needs {m.Numel}");
        Step = step;
        Be.Upload(m, mValues);
        Be.Upload(v!, vValues);
    }

    public void Dispose()
    {
        m?.Dispose(); v?.Dispose(); partials?.Dispose(); result?.Dispose();
        m = v = partials = result = null;
        if (ownsParallel) Parallel.Dispose();
    }
}

/// <summary>Learning-rate schedules.</summary>
public enum ScheduleKind { Cosine, Constant, Linear }

public sealed record ScheduleOptions
{
    public ScheduleKind Kind { get; init; } = ScheduleKind.Cosine;
    public int WarmupSteps { get; init; }
    /// <summary>Floor of the cosine/linear decay (the seeds: 1.2e-4 → 1e-5).</summary>
    public double MinLr { get; init; } = 1e-5;
}

public static class Schedule
{
    /// <summary>lr at step (0-based) of total: linear warmup, then cosine or linear decay to minLr, or constant.</summary>
    public static double LearningRate(ScheduleOptions s, double peak, int step, int total)
    {
        if (s.WarmupSteps > 0 && step < s.WarmupSteps) return peak * (step + 1) / s.WarmupSteps;
        if (s.Kind == ScheduleKind.Constant) return peak;
        int decay = Math.Max(1, total - s.WarmupSteps);
        double progress = Math.Clamp((double)(step - s.WarmupSteps) / decay, 0, 1);
        double factor = s.Kind == ScheduleKind.Cosine ? 0.5 * (1 + Math.Cos(Math.PI * progress)) : 1 - progress;
        return s.MinLr + (peak - s.MinLr) * factor;
    }
}
