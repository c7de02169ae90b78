using Engine.Model;
using Engine.Parallel;

namespace Engine.Training.Planning;

/*
 * Per-device memory of a training layout, counted the way the engine allocates (not a generic rule of thumb):
 *
 *   weights      fp32 masters of the stage's parameters (the flat store), plus on a GPU their bf16 shadow; ZeRO-3
 *                keeps the rank's 1/dp slice of both, plus the gathered units: the unit in use and the next one being
 *                prefetched, in the working dtype (bf16 on a GPU, fp32 on the CPU)
 *   gradients    fp32, one per parameter; ZeRO-2 keeps only the rank's 1/dp slice plus its bucket pool; ZeRO-3 the slice
 *                plus unit-sized bucket buffers (the unit being filled and the reduce-scatters in flight, each with its
 *                slice-sized partial)
 *   optimizer    AdamW m and v in fp32; ZeRO-1, -2 and -3 keep the rank's 1/dp slice
 *   activations  what one micro-batch's tape holds until its backward, times the micro-batches alive at once
 *                (1F1B: min(M, P − stage); GPipe: M; no pipeline: 1 — the scope of a micro-batch ends after its
 *                backward, so gradient accumulation does not add up)
 *   transient    the backward's working set on top of that: the gradients of one layer's activations (freed node by
 *                node as backward proceeds) and what recompute rebuilds: one layer's activations (full), or one
 *                layer's attention core and SwiGLU product (selective)
 *   runtime      what no tensor accounts for (GPU only, stated parameters, RuntimeOverheads): the CUDA context, NCCL's
 *                buffers per communicator, and the caching allocator's fragmentation as a share of the tensors
 *
 * One layer's saved activations, per token, in elements (LlamaModel.Block, each a tensor the tape keeps):
 *   9·C   RMSNorm out, q, rotated q, attention out, o_proj out, residual, RMSNorm out, down_proj out, residual
 *   3·KV  k, v, rotated k          3·F   gate, up, SwiGLU out
 *   fp32 statistics: 2 RMSNorm rstd and H attention log-sum-exps
 * Full recompute keeps only a layer's input (C). Selective recompute drops the attention core's and SwiGLU's outputs
 * and intermediates (rotated q and k, attention out and its log-sum-exps, SwiGLU out): 7·C + 2·KV + 2·F and 2 fp32.
 * The first stage adds the embedding output (C), the last the final RMSNorm (C + rstd), the logits (V, fp32: the
 * cross-entropy turns the buffer into its own gradient) and the per-token losses. Input ids and targets are int32.
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

    /// <summary>Tensor-parallel ranks (inside a node), context-parallel ranks, model chunks per stage (interleaved).</summary>
    public int Tp { get; init; } = 1;
    public int Cp { get; init; } = 1;
    public int VirtualStages { get; init; } = 1;
    /// <summary>Sequence parallelism with tp &gt; 1 (the norm/residual activations sharded along the tokens).</summary>
    public bool SequenceParallel { get; init; } = true;

    public int Devices => Dp * Pp * Tp * Cp;
    /// <summary>The ranks a stage's gradients are summed and ZeRO-sharded over (data-parallel replicas × context ranks).</summary>
    public int DataRanks => Dp * Cp;
    /// <summary>Sequences per optimizer step over the whole run.</summary>
    public long GlobalBatch => (long)Dp * MicroBatch * MicroBatches;

    public string Describe() =>
        $"dp {Dp} × pp {Pp}" + (Cp > 1 ? $" × cp {Cp}" : "") + (Tp > 1 ? $" × tp {Tp}{(SequenceParallel ? " (sequence parallel)" : "")}" : "") +
        $", ZeRO-{Zero}, micro-batch {MicroBatch} × {MicroBatches}" + (Pp > 1 ? $" ({Schedule}{(VirtualStages > 1 ? $", {VirtualStages} chunks per stage" : "")})" : "") +
        (Recompute == RecomputeMode.None ? "" : $", {Recompute.ToString().ToLowerInvariant()} recompute");
}

/// <summary>
/// Per-device memory no tensor accounts for, as stated parameters (GPU runs; on the CPU the engine's counter is exact
/// and there is neither a context nor NCCL). Defaults from published measurements:
/// <list type="bullet">
/// <item>CUDA context: 723 MiB after the first CUDA call in PyTorch's own measurement (discuss.pytorch.org/t/73021),
/// "~700+ MB depending on the CUDA version and device" (t/81330) — 0.7 GiB.</item>
/// <item>NCCL: 544 MiB for a 2-rank and 688 MiB for a 4-rank communicator on NVLink A100s after one all-reduce
/// (NVIDIA/nccl#964), linear in the channels and per communicator (nccl#864, #986) — 0.65 GiB per communicator the rank
/// belongs to (the world, and with a pipeline its data, pipe and tied-embedding groups).</item>
/// <item>Fragmentation: the caching allocator's, 15% of the memory on average (up to 33%) over eight LLMs trained with
/// recompute, ZeRO-3 and LoRA on A100-80GB (GMLake, ASPLOS 2024, arXiv 2401.08156) — 15% of the tensors' bytes.</item>
/// </list>
/// </summary>
public sealed record RuntimeOverheads(double CudaContextGiB, double NcclPerCommunicatorGiB, double Fragmentation)
{
    public static RuntimeOverheads Gpu { get; } = new(0.7, 0.65, 0.15);

    /// <summary>On a device whose free memory was read after this process created its CUDA context (the trainer's fit
    /// check and --dry-run): the context is already spent.</summary>
    public static RuntimeOverheads LiveGpu { get; } = Gpu with { CudaContextGiB = 0 };
    public static RuntimeOverheads None { get; } = new(0, 0, 0);

    /// <summary>NCCL communicators a rank of the layout belongs to.</summary>
    public static int Communicators(PlanLayout l, bool tied) =>
        l.Devices <= 1 ? 0 : 1 + (l.Pp > 1 ? (l.DataRanks > 1 ? 1 : 0) + 1 + (tied ? 1 : 0) : 0) + (l.Tp > 1 ? 1 : 0) + (l.Cp > 1 ? 2 : 0);

    public double Bytes(PlanLayout l, bool tied, double tensors) =>
        (CudaContextGiB + NcclPerCommunicatorGiB * Communicators(l, tied)) * (1L << 30) + Fragmentation * tensors;

    public string Describe() => $"CUDA context {CudaContextGiB:F2} GiB, NCCL {NcclPerCommunicatorGiB:F2} GiB per communicator, fragmentation {Fragmentation:P0} of the tensors";
}

/// <summary>Bytes per device of one pipeline stage (the largest stage is what must fit).</summary>
public sealed record MemoryEstimate(int Stage, long Parameters, int LiveMicroBatches, double Weights, double Gradients,
    double Optimizer, double Activations, double Transient, double Runtime = 0)
{
    /// <summary>The tensors' bytes (what the engine's counters measure).</summary>
    public double Tensors => Weights + Gradients + Optimizer + Activations + Transient;
    public double Total => Tensors + Runtime;

    public string Describe() =>
        $"{Gib(Total)} (weights {Gib(Weights)}, gradients {Gib(Gradients)}, AdamW {Gib(Optimizer)}, activations {Gib(Activations)}" +
        $" for {LiveMicroBatches} live micro-batch(es), backward working set {Gib(Transient)}" + (Runtime > 0 ? $", runtime {Gib(Runtime)}" : "") + ")";

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
    public static (double Act, double F32) LayerPerToken(LlamaConfig c, RecomputeMode recompute)
    {
        double kv = (double)c.NumKvHeads * c.HeadDim;
        return recompute switch
        {
            RecomputeMode.Full => (c.HiddenSize, 0),
            RecomputeMode.Selective => (7.0 * c.HiddenSize + 2 * kv + 2.0 * c.IntermediateSize, 2),
            _ => (9.0 * c.HiddenSize + 3 * kv + 3.0 * c.IntermediateSize, 2 + c.NumHeads),
        };
    }

    /// <summary>Elements of the stage's largest unit (a block, or the embedding / head it holds): what one gathered
    /// unit takes under ZeRO-3, and one of its gradient buckets.</summary>
    public static long LargestUnit(LlamaConfig c, PipelineStage s)
    {
        long largest = s.Layers > 0 ? c.LayerParameterCount() : c.HiddenSize;
        bool embedding = s.IsFirst || (s.IsLast && c.TieWordEmbeddings), head = s.IsLast && !c.TieWordEmbeddings;
        if (embedding || head) largest = Math.Max(largest, (long)c.VocabSize * c.HiddenSize);
        return largest;
    }

    /// <summary>Live micro-batches of a stage, read off the schedule the runner executes (1F1B min(M, P − s), GPipe M);
    /// no pipeline: 1 (each micro-batch's scope ends after its backward).</summary>
    public static int LiveMicroBatches(string schedule, int pp, int stage, int microBatches, int virtualStages = 1) =>
        pp == 1 ? 1 : (PipelineSchedule.PeakInFlight(PipelineSchedule.For(schedule, pp, stage, microBatches, virtualStages)) + virtualStages - 1) / virtualStages;

    /// <summary>A layer's activation elements per token (activation dtype, fp32) on one tensor rank.</summary>
    static (double A, double F) Split((double A, double F) perToken, LlamaConfig c, PlanLayout l)
    {
        if (l.Tp <= 1) return perToken;
        if (l.SequenceParallel) return (perToken.A / l.Tp, perToken.F / l.Tp);
        double whole = 2.0 * c.HiddenSize;
        return ((perToken.A - whole) / l.Tp + whole, perToken.F / l.Tp);
    }

    /// <summary>The estimate for every stage of <paramref name="l"/> (balanced split unless given).</summary>
    public static List<MemoryEstimate> Stages(LlamaConfig c, PlanLayout l, bool gpu, IReadOnlyList<int>? split = null, RuntimeOverheads? runtime = null)
    {
        var stages = PipelineStage.Split(c.NumLayers, l.Pp, split);
        return stages.Select(s => ForStage(c, l, s, gpu, runtime)).ToList();
    }

    /// <summary>The stage that needs the most memory.</summary>
    public static MemoryEstimate Worst(LlamaConfig c, PlanLayout l, bool gpu, IReadOnlyList<int>? split = null, RuntimeOverheads? runtime = null) =>
        Stages(c, l, gpu, split, runtime).MaxBy(e => e.Total)!;

    /// <param name="runtime">The overheads no tensor holds (default: <see cref="RuntimeOverheads.Gpu"/> on a GPU, none
    /// on the CPU).</param>
    public static MemoryEstimate ForStage(LlamaConfig c, PlanLayout l, PipelineStage s, bool gpu, RuntimeOverheads? runtime = null)
    {
        // tensor parallelism: a rank holds 1/tp of the stage's weights (the norms, a few thousand values, ignored)
        long n = StageParameters(c, s) / Math.Max(1, l.Tp);
        int act = gpu ? 2 : 4;
        int dp = Math.Max(1, l.DataRanks);
        bool zero3 = l.Zero >= 3 && dp > 1;
        long unit = LargestUnit(c, s) / Math.Max(1, l.Tp);
        // ZeRO-3: the master slice (and its bf16 shadow on a GPU) + the unit in use and the one being prefetched
        double weights = zero3 ? n * (gpu ? 6.0 : 4.0) / dp + 2.0 * unit * act : n * (gpu ? 6.0 : 4.0);
        double bucket = l.BucketMb * (1 << 20);
        double grads = zero3 ? 4.0 * n / dp + (DataParallel.MaxInFlight + 1) * 4.0 * (unit + (double)unit / dp)
            : l.Zero >= 2 && dp > 1 ? 4.0 * n / dp + Math.Min(4.0 * n, 2 * bucket) : 4.0 * n;
        double optimizer = l.Zero >= 1 && dp > 1 ? 8.0 * n / dp : 8.0 * n;

        // a rank's tokens: 1/cp of each sequence; its activations per token 1/tp of a layer's with sequence parallelism
        // (Korthikanti et al. 2022), without it the norm inputs and residual stream (2·C per token) whole on every rank
        double tok = (double)l.MicroBatch * l.SeqLen / Math.Max(1, l.Cp);
        var (la, lf) = Split(LayerPerToken(c, l.Recompute), c, l);
        double perMicro = s.Layers * tok * (la * act + lf * 4) + tok * 4 * 2;   // layers + ids/targets
        if (s.IsFirst) perMicro += tok * c.HiddenSize * act;
        if (s.IsLast) perMicro += tok * ((c.HiddenSize * (double)act) + 4 + 4.0 * c.VocabSize + 4);
        if (!s.IsFirst) perMicro += tok * c.HiddenSize * act;                    // the received input
        int live = LiveMicroBatches(l.Schedule, l.Pp, s.Index, l.MicroBatches, l.VirtualStages);

        var (fa, ff) = Split(LayerPerToken(c, RecomputeMode.None), c, l);
        double layer = tok * (fa * act + ff * 4);
        // what recompute rebuilds in backward: a whole layer (full) or its attention core and SwiGLU product (selective)
        var (sa, sf) = Split(LayerPerToken(c, RecomputeMode.Selective), c, l);
        double rebuilt = l.Recompute switch { RecomputeMode.Full => layer, RecomputeMode.Selective => layer - tok * (sa * act + sf * 4), _ => 0 };
        double transient = s.Layers == 0 ? 0 : layer + rebuilt;
        if (s.IsLast && l.Tp > 1) perMicro -= tok * 4.0 * c.VocabSize * (1 - 1.0 / l.Tp);   // vocabulary-parallel logits
        var e = new MemoryEstimate(s.Index, n, live, weights, grads, optimizer, live * perMicro, transient);
        var overheads = runtime ?? (gpu ? RuntimeOverheads.Gpu : RuntimeOverheads.None);
        return e with { Runtime = overheads.Bytes(l, c.TieWordEmbeddings, e.Tensors) };
    }
}
