namespace Engine.Observability;

/*
 * Model FLOPs utilization (PaLM, Chowdhery et al. 2022, appendix B):
 *   FLOPs per token = 6·N + 12·L·H·Q·T
 *     N = parameters that take part in a matmul per token (non-embedding weights + the LM head; an embedding lookup is
 *         no matmul), 6 = 2 forward + 4 backward FLOPs per weight per token
 *     12·L·H·Q·T = the attention score and value products (QKᵀ, PV) over a context of T, forward and backward;
 *         L layers, H query heads, Q head dim (no causal halving, as in PaLM)
 *   MFU = tokens/s × FLOPs per token / peak FLOP/s
 * Peak: the device's dense bf16 tensor-core peak on a GPU (datasheet, table below); on the CPU the measured SGEMM roof
 * (the best fp32 GEMM GFLOP/s measured on that machine), since a CPU has no meaningful datasheet peak for this code.
 */

/// <summary>The one MFU computation shared by the trainer, the benchmarks and the dashboard.</summary>
public static class Mfu
{
    /// <summary>6·N + 12·L·H·Q·T training FLOPs per token.</summary>
    public static double FlopsPerToken(long matmulParameters, int layers, int heads, int headDim, int seqLen)
    {
        if (matmulParameters <= 0 || layers <= 0 || heads <= 0 || headDim <= 0 || seqLen <= 0)
            throw new ArgumentException($"MFU needs positive N, L, H, Q, T; got N={matmulParameters} L={layers} H={heads} Q={headDim} T={seqLen}");
        return 6.0 * matmulParameters + 12.0 * layers * heads * headDim * seqLen;
    }

    /// <summary>Share of <paramref name="peakFlopsPerSecond"/> that <paramref name="tokensPerSecond"/> tokens of
    /// <paramref name="flopsPerToken"/> FLOPs each achieve (0.45 = 45 %).</summary>
    public static double Compute(double tokensPerSecond, double flopsPerToken, double peakFlopsPerSecond)
    {
        if (!(tokensPerSecond >= 0) || !(flopsPerToken > 0) || !(peakFlopsPerSecond > 0))
            throw new ArgumentException($"MFU needs tokens/s >= 0, FLOPs/token > 0 and a positive peak; got {tokensPerSecond}, {flopsPerToken}, {peakFlopsPerSecond}");
        return tokensPerSecond * flopsPerToken / peakFlopsPerSecond;
    }

    /// <summary>Dense bf16 peaks by GPU name (TFLOP/s), first match wins; the same figures TorchTitan uses.</summary>
    static readonly (string[] AllOf, double Tflops)[] Peaks =
    [
        (["h100", "nvl"], 835),
        (["h100", "pcie"], 756),
        (["gh200"], 989),
        (["h200", "nvl"], 835),
        (["h200"], 989),
        (["h100"], 989),
        (["b200"], 2250),
        (["a100"], 312),
        (["l40s"], 362),
        (["mi300x"], 1300),
        (["mi325x"], 1300),
    ];

    /// <summary>The dense bf16 peak of a GPU by its driver name, or null when the table does not know it.</summary>
    public static double? PeakBf16Tflops(string gpuName)
    {
        string n = gpuName.ToLowerInvariant();
        foreach (var (all, tflops) in Peaks)
            if (all.All(n.Contains)) return tflops;
        return null;
    }
}
