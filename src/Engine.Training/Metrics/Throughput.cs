using Engine.Core;
using Engine.Model;

namespace Engine.Training.Metrics;

/// <summary>
/// What MFU needs for a run: PaLM's training FLOPs per token (6N + 12·L·H·Q·T, <see cref="Observability.Mfu"/>) and
/// the pinned peak of the devices the tokens/s figure covers (<see cref="CpuRoof"/>): the user's --peak per device
/// when given; else on a GPU each rank's dense bf16 datasheet peak by its name × ranks (unknown GPU → no MFU, and
/// PeakSource says so); on the CPU the machine's stored SGEMM calibration × machines (ranks ÷ ranks per node) — CPU
/// ranks on one machine share its roof.
/// </summary>
public sealed record Throughput(double FlopsPerToken, double? PeakFlops, int Devices, string PeakSource)
{
    /// <summary>Model FLOPs utilization of <paramref name="tokensPerSecond"/> (all ranks), or null without a peak.</summary>
    public double? Mfu(double tokensPerSecond) =>
        PeakFlops is { } p && tokensPerSecond >= 0 ? Observability.Mfu.Compute(tokensPerSecond, FlopsPerToken, p) : null;

    /// <summary>The run's figures: <paramref name="ranks"/> data-parallel/pipeline ranks, <paramref name="nodes"/> machines.</summary>
    public static Throughput For(IBackend backend, LlamaConfig cfg, int seqLen, int ranks = 1, int nodes = 1) =>
        ForDevice((backend as IDeviceStats)?.DeviceName, cfg, seqLen, ranks, nodes);

    /// <summary>As <see cref="For"/> for a GPU named <paramref name="gpuName"/>, or the CPU when it is null.</summary>
    public static Throughput ForDevice(string? gpuName, LlamaConfig cfg, int seqLen, int ranks = 1, int nodes = 1)
    {
        double flops = Observability.Mfu.FlopsPerToken(cfg.NonEmbeddingParameterCount() + (long)cfg.VocabSize * cfg.HiddenSize,
            cfg.NumLayers, cfg.NumHeads, cfg.HeadDim, seqLen);
        int devices = gpuName != null ? ranks : nodes;
        string unit = gpuName != null ? $"{gpuName} " : "CPU ";
        if (CpuRoof.Override() is { FlopsPerSecond: { } pinned } o)
            return new Throughput(flops, pinned * devices, devices, FormattableString.Invariant($"{unit}{pinned / 1e9:F1} GFLOP/s ({o.Source}) × {devices}"));
        if (gpuName != null)
        {
            double? tflops = Observability.Mfu.PeakBf16Tflops(gpuName);
            return tflops is { } t
                ? new Throughput(flops, t * 1e12 * ranks, ranks, FormattableString.Invariant($"{gpuName} dense bf16 {t:F0} TFLOP/s (datasheet) × {ranks}"))
                : new Throughput(flops, null, ranks, $"no bf16 peak known for '{gpuName}': MFU not computed (pass --peak TFLOPS, e.g. --peak 165T)");
        }
        var roof = CpuRoof.Get();
        return roof.FlopsPerSecond is { } f
            ? new Throughput(flops, f * nodes, nodes, FormattableString.Invariant($"CPU {f / 1e9:F1} GFLOP/s ({roof.Source}) × {nodes} machine(s)"))
            : new Throughput(flops, null, nodes, roof.Source);
    }
}
