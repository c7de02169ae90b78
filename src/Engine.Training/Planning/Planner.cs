using System.Globalization;
using System.Text;
using Engine.Model;

namespace Engine.Training.Planning;

/*
 * Step time of a layout (all times per optimizer step, balanced stages, stated assumptions):
 *
 *   compute     FLOPs per token = 6N + 12·L·H·Q·T (PaLM) plus what recompute runs again: the forward, 2N + 4·L·H·Q·T
 *               (full), or the attention core's forward, 4·L·H·Q·T (selective; SwiGLU's elementwise product is noise);
 *               split over stages by their share of the FLOPs, at the achieved FLOP/s (measured by the engine, given,
 *               or assumed as a share of the peak — counting the recomputed FLOPs, i.e. hardware FLOP utilization);
 *               one micro-batch on the slowest stage takes t_mb = its FLOPs / achieved
 *   pipeline    (M + P − 1) · (t_mb + 2 · t_p2p): every schedule with one forward and one backward slot per
 *               micro-batch fills and drains P − 1 slots (bubble (P − 1)/(M + P − 1)); t_p2p sends one micro-batch's
 *               activations [mb·T, C] in the activation dtype over the link between neighbouring stages
 *   gradients   ring all-reduce (ZeRO-0) or reduce-scatter + all-gather (ZeRO-1/2): 2 (D − 1)/D · bytes / bandwidth
 *               + 2 (D − 1) · latency; gradients fp32 (4 bytes per parameter of the stage). Buckets are launched during
 *               the last micro-batch's backward, so what shows is max(all-reduce − that backward, one bucket's share)
 *   ZeRO-3      every micro-batch: the weights all-gathered twice (forward, backward; 2 bytes per parameter on a GPU)
 *               and the fp32 gradients reduce-scattered once, each (D − 1)/D · bytes / bandwidth + (D − 1) · latency per
 *               unit; prefetched behind the units' compute, so what shows per micro-batch is max(0, that − t_mb) plus
 *               the first unit's gather of the forward and of the backward, which nothing hides
 *   optimizer   AdamW streams master, gradient, m, v (+ the bf16 shadow) once: ~30 bytes per owned parameter at the
 *               device's memory bandwidth
 *
 *   tensor      Megatron's tensor parallelism over tp ranks: a rank runs 1/tp of every micro-batch's FLOPs; per layer
 *               2 all-reduces of the [mb·T/cp, C] activations in forward and 2 in backward (with sequence parallelism
 *               the same bytes as all-gathers + reduce-scatters), ring cost over the tensor group's link, not overlapped
 *               (stated: Megatron overlaps part of it; the estimate is pessimistic there)
 *   context     cp ranks per sequence: a rank runs 1/cp of the tokens; per layer the whole sequence's K and V
 *               all-gathered in forward and their gradients reduce-scattered in backward (the engine's all-gathered
 *               K/V, Llama 3's choice), not overlapped
 *   interleaved v model chunks per stage: the bubble is (P − 1)/v slots, the point-to-point messages v times as many
 *
 * Links: a group whose ranks sit on one node uses NVLink; otherwise InfiniBand per GPU. Ranks are laid out as the
 * engine's DeviceMesh does (tensor innermost, then context, data, pipeline: rank = ((stage · dp + replica) · cp +
 * context) · tp + tensor): the tensor group is consecutive ranks (inside a node when tp ≤ GPUs per node), the data
 * group (replicas × context ranks) strides by tp, the pipeline group by dp · cp · tp.
 *
 *   pipeline efficiency = compute / step time: the share of a step spent in model FLOPs at the achieved rate
 *   scaling efficiency = (compute + optimizer) / step time: tokens/s per device relative to one device running the
 *   same micro-batches with nothing to wait for — what the layout costs: the pipeline bubble, point-to-point
 *   transfers and the exposed collectives (gradients; ZeRO-3's gathers)
 */

/// <summary>One kind of accelerator: dense bf16 peak, memory, memory bandwidth.</summary>
public sealed record DeviceSpec(string Name, double PeakTflops, double MemoryGiB, double MemoryGBps, bool Gpu)
{
    /// <summary>H100 SXM: 989 dense bf16 TFLOP/s, 80 GB HBM3 at 3.35 TB/s (NVIDIA datasheet).</summary>
    public static DeviceSpec H100 => new("H100 SXM", 989, 80, 3350, true);
    public static DeviceSpec H200 => new("H200 SXM", 989, 141, 4800, true);
    public static DeviceSpec A100 => new("A100 SXM 80GB", 312, 80, 2039, true);
    /// <summary>A800 SXM 80GB: the A100 with NVLink cut to 400 GB/s (the export variant XuanYuan-70B trained on).</summary>
    public static DeviceSpec A800 => new("A800 SXM 80GB", 312, 80, 2039, true);

    public static DeviceSpec ByName(string name) => name.ToLowerInvariant() switch
    {
        "h100" => H100,
        "h200" => H200,
        "a100" => A100,
        "a800" => A800,
        _ => throw new ArgumentException($"unknown --gpu '{name}' (known: h100, h200, a100, a800; or give --gpu-memory and --tflops)"),
    };
}

/// <summary>Bandwidth (GB/s per device, one direction) and latency of the links inside and between nodes.</summary>
public sealed record LinkModel(int GpusPerNode, double NvlinkGBps, double NvlinkLatencyUs, double IbGBps, double IbLatencyUs)
{
    /// <summary>DGX H100: NVLink 4 (NCCL all-reduce bus bandwidth ~360 GB/s measured by nccl-tests on 8 GPUs, of the
    /// 450 GB/s per direction), 8 × 400 Gb/s NDR InfiniBand (50 GB/s per GPU; ~40 achieved), latencies of a few µs.</summary>
    public static LinkModel DgxH100 => new(8, 360, 3, 40, 8);

    /// <summary>DGX A100: NVLink 3 (600 GB/s per GPU; ~230 GB/s all-reduce bus bandwidth in nccl-tests on 8 GPUs),
    /// 8 × 200 Gb/s HDR InfiniBand (25 GB/s per GPU; ~22 achieved).</summary>
    public static LinkModel DgxA100 => new(8, 230, 3, 22, 8);

    /// <summary>An A800 node: NVLink cut to 400 GB/s per GPU (assumed 150 GB/s bus bandwidth, 2/3 of the A100's), the
    /// same HDR InfiniBand.</summary>
    public static LinkModel A800Node => new(8, 150, 3, 22, 8);

    /// <summary>The usual node of a device kind (H100/H200: DGX H100; A100: DGX A100; A800: its NVLink cut).</summary>
    public static LinkModel For(DeviceSpec device) => device.Name.StartsWith("A800", StringComparison.Ordinal) ? A800Node
        : device.Name.StartsWith("A100", StringComparison.Ordinal) ? DgxA100 : DgxH100;

    public double Bandwidth(bool intraNode) => (intraNode ? NvlinkGBps : IbGBps) * 1e9;
    public double Latency(bool intraNode) => (intraNode ? NvlinkLatencyUs : IbLatencyUs) * 1e-6;

    public string Describe() =>
        $"{GpusPerNode} GPUs per node; NVLink {NvlinkGBps:F0} GB/s, {NvlinkLatencyUs:F0} µs; InfiniBand {IbGBps:F0} GB/s per GPU, {IbLatencyUs:F0} µs";
}

/// <summary>A layout with its predicted memory and speed.</summary>
public sealed record PlanResult(PlanLayout Layout, MemoryEstimate Memory, bool Fits, double ComputeSeconds, double BubbleSeconds,
    double P2pSeconds, double GradientSeconds, double OptimizerSeconds, double StepSeconds, double TokensPerSecondPerDevice,
    double Mfu, double PipelineEfficiency, double ScalingEfficiency)
{
    public double BubbleFraction => BubbleSeconds / StepSeconds;
    /// <summary>The tensor- and context-parallel collectives of the step (inside the micro-batches, not overlapped).</summary>
    public double TensorSeconds { get; init; }
}

public static class Planner
{
    /// <summary>Training FLOPs of one token through layers [a, b) plus the stage's embedding/head share, with what
    /// recompute runs again.</summary>
    static double StageFlopsPerToken(LlamaConfig c, PipelineStage s, int seqLen, RecomputeMode recompute)
    {
        long h = c.HiddenSize;
        double layerN = c.LayerParameterCount() - 2.0 * h;        // the block's matmul weights (not the RMSNorm gains)
        double attn = 12.0 * c.NumHeads * c.HeadDim * seqLen;
        double again = recompute switch { RecomputeMode.Full => 2 * layerN + attn / 3, RecomputeMode.Selective => attn / 3, _ => 0 };
        double perLayer = 6 * layerN + attn + again;
        double f = s.Layers * perLayer;
        if (s.IsLast) f += 6.0 * c.VocabSize * h;
        return f;
    }

    public static double FlopsPerToken(LlamaConfig c, int seqLen) => c.TrainingFlopsPerToken(seqLen);

    /// <summary>Time of one ring collective moving 2(D − 1)/D of <paramref name="bytes"/>.</summary>
    public static double RingSeconds(double bytes, int ranks, double bandwidth, double latency) =>
        ranks <= 1 ? 0 : 2.0 * (ranks - 1) / ranks * bytes / bandwidth + 2.0 * (ranks - 1) * latency;

    /// <summary>Time of one ring all-gather or reduce-scatter over <paramref name="bytes"/> (the full, all-ranks size):
    /// (D − 1)/D of it moved, D − 1 latencies.</summary>
    public static double GatherSeconds(double bytes, int ranks, double bandwidth, double latency) =>
        ranks <= 1 ? 0 : (ranks - 1.0) / ranks * bytes / bandwidth + (ranks - 1.0) * latency;

    public static PlanResult Evaluate(LlamaConfig c, PlanLayout l, DeviceSpec device, LinkModel link, double achievedTflops,
        IReadOnlyList<int>? split = null, RuntimeOverheads? runtime = null)
    {
        var stages = PipelineStage.Split(c.NumLayers, l.Pp, split);
        var mem = stages.Select(s => MemoryModel.ForStage(c, l, s, device.Gpu, runtime)).MaxBy(e => e.Total)!;
        bool fits = mem.Total <= device.MemoryGiB * (1L << 30) * 0.9;

        double achieved = achievedTflops * 1e12;
        double tokMb = (double)l.MicroBatch * l.SeqLen;
        var slowest = stages.MaxBy(s => StageFlopsPerToken(c, s, l.SeqLen, l.Recompute))!;
        int tp = Math.Max(1, l.Tp), cp = Math.Max(1, l.Cp), v = Math.Max(1, l.VirtualStages), D = l.DataRanks;
        // a rank's share of one micro-batch: 1/tp of the FLOPs of its 1/cp of the tokens
        double tMb = tokMb * StageFlopsPerToken(c, slowest, l.SeqLen, l.Recompute) / achieved / (tp * cp);
        double actBytesPerElem = device.Gpu ? 2 : 4;
        double rankTokens = tokMb / cp;
        bool tpIntra = tp <= link.GpusPerNode;
        bool cpIntra = tp * cp <= link.GpusPerNode;
        // tensor: 4 all-reduces of the rank's [tokens, C] activations per layer (2 forward, 2 backward); context: per
        // layer K and V of the whole sequence gathered (forward) and their gradients reduce-scattered (backward)
        double tTp = tp > 1 ? slowest.Layers * 4 * RingSeconds(rankTokens * c.HiddenSize * actBytesPerElem, tp, link.Bandwidth(tpIntra), link.Latency(tpIntra)) : 0;
        double kvBytes = 2.0 * tokMb * c.NumKvHeads * c.HeadDim * actBytesPerElem / tp;
        double tCp = cp > 1 ? slowest.Layers * 2 * GatherSeconds(kvBytes, cp, link.Bandwidth(cpIntra), link.Latency(cpIntra)) : 0;
        tMb += tTp + tCp;
        double tBwdMb = tMb * (l.Checkpoint ? 0.5 : 2.0 / 3);

        bool dpIntra = D * tp <= link.GpusPerNode;
        bool ppIntra = l.Devices <= link.GpusPerNode;
        // the point-to-point activations: the rank's tokens, 1/tp of them under sequence parallelism
        double actBytes = rankTokens * c.HiddenSize * actBytesPerElem / (l.SequenceParallel ? tp : 1);
        double tP2p = l.Pp > 1 ? actBytes / link.Bandwidth(ppIntra) + link.Latency(ppIntra) : 0;

        double compute = l.MicroBatches * (tMb - tTp - tCp);
        double bubble = (l.Pp - 1) * tMb / v;
        double p2p = l.Pp > 1 ? (v * l.MicroBatches + l.Pp - 1) * 2 * tP2p : 0;
        double tensorComm = l.MicroBatches * (tTp + tCp);

        long n = MemoryModel.StageParameters(c, slowest) / tp;
        double gradBytes = 4.0 * n;
        double bw = link.Bandwidth(dpIntra), lat = link.Latency(dpIntra);
        double grads;
        if (l.Zero >= 3 && D > 1)
        {
            // per micro-batch: two gathers of the weights, one reduce-scatter of the gradients, unit by unit, behind compute
            int units = slowest.Layers + 2;
            double weightBytes = device.Gpu ? 2.0 : 4.0;
            double perMb = 2 * GatherSeconds(weightBytes * n, D, bw, 0) + GatherSeconds(gradBytes, D, bw, 0) + 3.0 * units * (D - 1) * lat;
            double firstUnit = GatherSeconds(weightBytes * MemoryModel.LargestUnit(c, slowest) / tp, D, bw, lat);
            grads = l.MicroBatches * (Math.Max(0, perMb - tMb) + 2 * firstUnit);
        }
        else
        {
            double ring = RingSeconds(gradBytes, D, bw, lat);
            double buckets = Math.Max(1, gradBytes / (l.BucketMb * (1 << 20)));
            grads = D > 1 ? Math.Max(ring - tBwdMb, ring / buckets) : 0;
        }
        double owned = l.Zero >= 1 ? (double)n / D : n;
        double opt = owned * (device.Gpu ? 30.0 : 28.0) / (device.MemoryGBps * 1e9);

        double step = compute + tensorComm + bubble + p2p + grads + opt;
        double tokensPerStep = (double)l.GlobalBatch * l.SeqLen;
        double perDevice = tokensPerStep / step / l.Devices;
        double mfu = perDevice * FlopsPerToken(c, l.SeqLen) / (device.PeakTflops * 1e12);
        return new PlanResult(l, mem, fits, compute, bubble, p2p, grads, opt, step, perDevice, mfu, compute / step, (compute + opt) / step) { TensorSeconds = tensorComm };
    }

    /// <summary>Every (pp, dp, zero, micro-batch, recompute) layout of <paramref name="devices"/> devices with about the
    /// given global batch (micro-batches per replica rounded to the nearest whole number) that the engine runs (no
    /// ZeRO-2 with a pipeline), fitting first, fastest first.</summary>
    public static List<PlanResult> Rank(LlamaConfig c, int devices, int globalBatch, int seqLen, DeviceSpec device, LinkModel link,
        double achievedTflops, string schedule = "1f1b", RuntimeOverheads? runtime = null)
    {
        var results = new List<PlanResult>();
        // tensor ranks inside a node, dividing the heads, the MLP width and the vocabulary (as RunLayout.Validate asks)
        var tps = new[] { 1, 2, 4, 8 }.Where(t => t <= link.GpusPerNode && c.NumHeads % t == 0 && (c.NumKvHeads % t == 0 || t % c.NumKvHeads == 0)
            && c.IntermediateSize % t == 0 && c.VocabSize % t == 0);
        var cps = new[] { 1, 2, 4, 8 }.Where(x => seqLen >= 2 * x * 128);   // chunks of at least 128 tokens
        foreach (int tp in tps)
            foreach (int cp in cps)
                for (int pp = 1; pp <= Math.Min(devices, c.NumLayers); pp++)
                {
                    if (devices % (pp * tp * cp) != 0) continue;
                    int dp = devices / (pp * tp * cp);
                    foreach (int mb in new[] { 1, 2, 4, 8, 16 })
                    {
                        if (dp * mb > globalBatch) continue;
                        int m = (int)Math.Max(1, Math.Round((double)globalBatch / (dp * mb)));
                        // the interleaved schedule (v chunks per stage) where the layers and micro-batches allow it
                        foreach (int v in new[] { 1, 2, 4 })
                        {
                            if (v > 1 && (pp < 2 || c.NumLayers < pp * v || m % pp != 0)) continue;
                            foreach (int zero in new[] { 0, 1, 2, 3 })
                            {
                                if ((zero > 0 && dp * cp == 1) || (zero == 2 && pp > 1) || (v > 1 && zero >= 2)) continue;
                                foreach (var recompute in new[] { RecomputeMode.None, RecomputeMode.Selective, RecomputeMode.Full })
                                {
                                    var l = new PlanLayout(dp, pp, zero, mb, m, seqLen, recompute, v > 1 ? "interleaved" : schedule) { Tp = tp, Cp = cp, VirtualStages = v };
                                    results.Add(Evaluate(c, l, device, link, achievedTflops, runtime: runtime));
                                }
                            }
                        }
                    }
                }
        return results.OrderByDescending(r => r.Fits).ThenByDescending(r => r.TokensPerSecondPerDevice).ToList();
    }

    /// <summary>The ranked table as text (the first <paramref name="top"/> rows).</summary>
    public static string Format(IReadOnlyList<PlanResult> results, int top)
    {
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.AppendLine("  #  dp   pp  cp tp v  zero  mb×M      batch  recompute  memory/GPU  fits  step s   bubble  tp+cp s  comm s   tok/s/GPU  MFU    pipeline  scaling");
        int i = 0;
        foreach (var r in results.Take(top))
        {
            var l = r.Layout;
            sb.AppendLine(string.Format(inv, "{0,3}  {1,-4} {2,-3} {3,-2} {4,-2} {5,-1}  {6,-5} {7,-9} {8,5}  {9,-10} {10,10}  {11,-4}  {12,7:F2}  {13,5:P0}  {14,7:F3}  {15,7:F3}  {16,9:N0}  {17,5:P0}  {18,7:P1}  {19,7:P1}",
                ++i, l.Dp, l.Pp, l.Cp, l.Tp, l.VirtualStages, l.Zero, $"{l.MicroBatch}×{l.MicroBatches}", l.GlobalBatch, l.Recompute.ToString().ToLowerInvariant(), MemoryEstimate.Gib(r.Memory.Total),
                r.Fits ? "yes" : "NO", r.StepSeconds, r.BubbleFraction, r.TensorSeconds, r.P2pSeconds + r.GradientSeconds, r.TokensPerSecondPerDevice, r.Mfu,
                r.PipelineEfficiency, r.ScalingEfficiency));
        }
        return sb.ToString();
    }
}
