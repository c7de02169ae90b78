using Engine.Model;
using Engine.Parallel;

namespace Engine.Training.Planning;

/*
 * Per-device memory of a training layout, counted the way the engine allocates (not a generic rule of thumb):
 *
 *   weights      fp32 masters of the stage's parameters (the flat store), plus on a GPU their bf16 shadow
 *   gradients    fp32, one per parameter; ZeRO-2 keeps only the rank's 1/dp slice plus its bucket pool
 *   optimizer    AdamW m and v in fp32; ZeRO-1 and -2 keep the rank's 1/dp slice
 *   activations  what one micro-batch's tape holds until its backward, times the micro-batches alive at once
 *                (1F1B: min(M, P − stage); GPipe: M; no pipeline: 1 — the scope of a micro-batch ends after its
 *                backward, so gradient accumulation does not add up)
 *   transient    the backward's working set on top of that: the gradients of one layer's activations (freed node by
 *                node as backward proceeds) and, under activation checkpointing, one layer's recomputed activations
 *
 * One layer's saved activations, per token, in elements (LlamaModel.Block, each a tensor the tape keeps):
 *   9·C   RMSNorm out, q, rotated q, attention out, o_proj out, residual, RMSNorm out, down_proj out, residual
 *   3·KV  k, v, rotated k          3·F   gate, up, SwiGLU out
 *   fp32 statistics: 2 RMSNorm rstd and H attention log-sum-exps
 * Under checkpointing a layer keeps only its input (C). The first stage adds the embedding output (C), the last the
 * final RMSNorm (C + rstd), the logits (V, fp32: the cross-entropy turns the buffer into its own gradient) and the
 * per-token losses. Input ids and targets are int32.
 *
 * On the CPU activations are fp32; on a GPU bf16 (fp32 statistics). The estimate is checked against the engine's
 * measured peak of live tensor storage (MemoryCounter) in tests/Engine.Tests/Parallel/PlannerTests.cs.
 */

/// <summary>How a model is laid out on the devices of one training run.</summary>
public sealed record PlanLayout(int Dp, int Pp, int Zero, int MicroBatch, int MicroBatches, int SeqLen, RecomputeMode Recompute,
    string Schedule = "1f1b", double BucketMb = 25)
{
    /// <summary>Full recompute (activation checkpointing per block).</summary>
    public bool Checkpoint => Recompute == RecomputeMode.Full;

    public int Devices => Dp * Pp;
    /// <summary>Sequences per optimizer step over the whole run.</summary>
    public long GlobalBatch => (long)Dp * MicroBatch * MicroBatches;

    public string Describe() =>
        $"dp {Dp} × pp {Pp}, ZeRO-{Zero}, micro-batch {MicroBatch} × {MicroBatches}" + (Pp > 1 ? $" ({Schedule})" : "") +
        (Recompute == RecomputeMode.None ? "" : $", {Recompute.ToString().ToLowerInvariant()} recompute");
}

/// <summary>Bytes per device of one pipeline stage (the largest stage is what must fit).</summary>
public sealed record MemoryEstimate(int Stage, long Parameters, int LiveMicroBatches, double Weights, double Gradients,
    double Optimizer, double Activations, double Transient)
{
    public double Total => Weights + Gradients + Optimizer + Activations + Transient;

    public string Describe() =>
        $"{Gib(Total)} (weights {Gib(Weights)}, gradients {Gib(Gradients)}, AdamW {Gib(Optimizer)}, activations {Gib(Activations)}" +
        $" for {LiveMicroBatches} live micro-batch(es), backward working set {Gib(Transient)})";

    public static string Gib(double bytes) => bytes >= 1 << 30 ? $"{bytes / (1 << 30):F1} GiB" : $"{bytes / (1 << 20):F1} MiB";
}

public static class MemoryModel
{
    /// <summary>Parameters of each pipeline stage (a tied head on a last stage that is not the first keeps its own
    /// copy of the embedding, as <see cref="LlamaModel"/> does).</summary>
    public static long StageParameters(LlamaConfig c, PipelineStage s)
    {
        long n = s.Layers * c.LayerParameterCount();
        long emb = (long)c.VocabSize * c.HiddenSize;
        if (s.IsFirst) n += emb;
        if (s.IsLast) n += c.HiddenSize + (c.TieWordEmbeddings && s.IsFirst ? 0 : emb);
        return n;
    }

    /// <summary>Saved activations of one layer per token: (activation-dtype elements, fp32 elements).</summary>
    public static (double Act, double F32) LayerPerToken(LlamaConfig c, bool checkpoint)
    {
        double kv = (double)c.NumKvHeads * c.HeadDim;
        return checkpoint ? (c.HiddenSize, 0) : (9.0 * c.HiddenSize + 3 * kv + 3.0 * c.IntermediateSize, 2 + c.NumHeads);
    }

    /// <summary>Live micro-batches of a stage, read off the schedule the runner executes (1F1B min(M, P − s), GPipe M);
    /// no pipeline: 1 (each micro-batch's scope ends after its backward).</summary>
    public static int LiveMicroBatches(string schedule, int pp, int stage, int microBatches) =>
        pp == 1 ? 1 : PipelineSchedule.PeakInFlight(PipelineSchedule.For(schedule, pp, stage, microBatches));

    /// <summary>The estimate for every stage of <paramref name="l"/> (balanced split unless given).</summary>
    public static List<MemoryEstimate> Stages(LlamaConfig c, PlanLayout l, bool gpu, IReadOnlyList<int>? split = null)
    {
        var stages = PipelineStage.Split(c.NumLayers, l.Pp, split);
        return stages.Select(s => ForStage(c, l, s, gpu)).ToList();
    }

    /// <summary>The stage that needs the most memory.</summary>
    public static MemoryEstimate Worst(LlamaConfig c, PlanLayout l, bool gpu, IReadOnlyList<int>? split = null) =>
        Stages(c, l, gpu, split).MaxBy(e => e.Total)!;

    public static MemoryEstimate ForStage(LlamaConfig c, PlanLayout l, PipelineStage s, bool gpu)
    {
        long n = StageParameters(c, s);
        int act = gpu ? 2 : 4;
        double weights = n * (gpu ? 6.0 : 4.0);
        double bucket = l.BucketMb * (1 << 20);
        double grads = l.Zero >= 2 ? 4.0 * n / l.Dp + Math.Min(4.0 * n, 2 * bucket) : 4.0 * n;
        double optimizer = l.Zero >= 1 ? 8.0 * n / l.Dp : 8.0 * n;

        double tok = (double)l.MicroBatch * l.SeqLen;
        var (la, lf) = LayerPerToken(c, l.Checkpoint);
        double perMicro = s.Layers * tok * (la * act + lf * 4) + tok * 4 * 2;   // layers + ids/targets
        if (s.IsFirst) perMicro += tok * c.HiddenSize * act;
        if (s.IsLast) perMicro += tok * ((c.HiddenSize * (double)act) + 4 + 4.0 * c.VocabSize + 4);
        if (!s.IsFirst) perMicro += tok * c.HiddenSize * act;                    // the received input
        int live = LiveMicroBatches(l.Schedule, l.Pp, s.Index, l.MicroBatches);

        var (fa, ff) = LayerPerToken(c, checkpoint: false);
        double layer = tok * (fa * act + ff * 4);
        double transient = s.Layers == 0 ? 0 : layer * (l.Checkpoint ? 2 : 1);
        return new MemoryEstimate(s.Index, n, live, weights, grads, optimizer, live * perMicro, transient);
    }
}
