using Engine.Cuda.Kernels;

namespace Engine.Cuda.Bench;

/// <summary>
/// What one call of a benchmarked kernel must move or compute. <paramref name="Bytes"/> counts every tensor the
/// call's launches read once and every tensor they write once (scratch one launch writes and the next reads counts
/// twice, as it really crosses memory): the floor against which achieved GB/s is judged. <paramref name="IssuedBytes"/>
/// is set where the kernel knowingly reads a tensor more than once (a second pass that L2 may or may not catch).
/// <paramref name="Flops"/> is set for matrix work (attention, GEMM). <paramref name="Formula"/> states the count.
/// </summary>
public sealed record KernelCost(string Kernel, string Shape, long Bytes, double Flops, string Formula, long IssuedBytes = 0)
{
    public bool IsMemoryBound => Bytes > 0;
}

/// <summary>
/// Byte and FLOP accounting per kernel, written from the reads and writes of native/*.cu (bf16 = 2 bytes,
/// fp32 and int32 = 4). GB/s and TFLOP/s are decimal (1e9 bytes, 1e12 FLOP per second).
/// </summary>
public static class KernelCosts
{
    private const long Bf16 = 2, F32 = 4, I32 = 4;

    /// <summary>cuMemcpyDtoD of <paramref name="bytes"/>: read once + written once = 2·bytes (the reference bandwidth).</summary>
    public static KernelCost Copy(long bytes) =>
        new("copy_dtod", $"bytes={bytes}", 2 * bytes, 0, "2*bytes (read + write)");

    /// <summary>rmsnorm_forward, no residual: read x [R,C] bf16 + w [C] bf16, write y [R,C] bf16 + rstd [R] fp32.</summary>
    public static KernelCost RmsNormForward(int rows, int cols) =>
        new("rmsnorm_fwd", $"rows={rows} cols={cols}",
            2 * (long)rows * cols * Bf16 + cols * Bf16 + rows * F32, 0, "2*R*C*2 + C*2 + R*4");

    /// <summary>rmsnorm_backward + dw_reduce: read dy, x [R,C] bf16, w [C] bf16, rstd [R] fp32; write dx [R,C] bf16;
    /// the G = min(R, 256) fp32 dw partials [G,C] written then read; dw [C] fp32 written.</summary>
    public static KernelCost RmsNormBackward(int rows, int cols)
    {
        long g = RmsNormKernels.PartialBlocks(rows);
        long bytes = 3 * (long)rows * cols * Bf16 + cols * Bf16 + rows * F32 + 2 * g * cols * F32 + cols * F32;
        return new("rmsnorm_bwd", $"rows={rows} cols={cols}", bytes, 0, "3*R*C*2 + C*2 + R*4 + 2*G*C*4 + C*4, G = min(R, 256)");
    }

    /// <summary>swiglu_forward over n = N·F: read gate, up, write h (bf16): 6n.</summary>
    public static KernelCost SwiGluForward(int tokens, int ffn)
    {
        long n = (long)tokens * ffn;
        return new("swiglu_fwd", $"tokens={tokens} ffn={ffn}", 3 * n * Bf16, 0, "3*n*2, n = N*F");
    }

    /// <summary>swiglu_backward: read dh, gate, up, write dgate, dup (bf16): 10n.</summary>
    public static KernelCost SwiGluBackward(int tokens, int ffn)
    {
        long n = (long)tokens * ffn;
        return new("swiglu_bwd", $"tokens={tokens} ffn={ffn}", 5 * n * Bf16, 0, "5*n*2, n = N*F");
    }

    /// <summary>rope_forward / rope_backward on [B,T,H,D]: read x, write y (bf16), read inv_freq [D/2] fp32.</summary>
    public static KernelCost Rope(bool backward, int batch, int seqLen, int heads, int headDim)
    {
        long n = (long)batch * seqLen * heads * headDim;
        return new(backward ? "rope_bwd" : "rope_fwd", $"B={batch} T={seqLen} H={heads} D={headDim}",
            2 * n * Bf16 + headDim / 2 * F32, 0, "2*B*T*H*D*2 + D/2*4");
    }

    /// <summary>embedding_forward: read ids [N] int32, one table row per token [N,C] bf16 (rows repeated across
    /// tokens may come from L2), write out [N,C] bf16.</summary>
    public static KernelCost EmbeddingForward(int tokens, int vocab, int cols) =>
        new("embedding_fwd", $"tokens={tokens} vocab={vocab} cols={cols}",
            tokens * I32 + 2 * (long)tokens * cols * Bf16, 0, "N*4 + 2*N*C*2");

    /// <summary>embedding_backward with U distinct ids: read dout [N,C] bf16, order [N], bucket_start [U+1], bucket_id [U]
    /// int32; dtable rows of the U ids read and written (fp32, accumulated into).</summary>
    public static KernelCost EmbeddingBackward(int tokens, int vocab, int cols, int distinctIds) =>
        new("embedding_bwd", $"tokens={tokens} vocab={vocab} cols={cols}",
            (long)tokens * cols * Bf16 + tokens * I32 + (2L * distinctIds + 1) * I32 + 2L * distinctIds * cols * F32, 0,
            $"N*C*2 + N*4 + (2U+1)*4 + 2*U*C*4, U = {distinctIds} distinct ids");

    /// <summary>crossentropy_forward_backward on logits [N,V] bf16: read logits, write dlogits in place (bf16), read
    /// targets [N] int32, write loss and lse [N] fp32. The kernel streams each row twice (lse pass, then gradient pass):
    /// issued bytes add a second N·V·2 read, which L2 catches only when the rows in flight fit in it.</summary>
    public static KernelCost CrossEntropyForwardBackward(int rows, int vocab)
    {
        long nv = (long)rows * vocab;
        long bytes = 2 * nv * Bf16 + rows * I32 + 2 * rows * F32;
        return new("crossentropy_fwd_bwd", $"rows={rows} vocab={vocab}", bytes, 0, "2*N*V*2 + N*4 + 2*N*4", bytes + nv * Bf16);
    }

    /// <summary>adamw_update_f32 with the bf16 working copy: read master, m, v, grad (fp32), write master, m, v (fp32)
    /// and param_bf16: 30n.</summary>
    public static KernelCost AdamW(long n) =>
        new("adamw_update_f32", $"n={n}", 7 * n * F32 + n * Bf16, 0, "7*n*4 + n*2");

    /// <summary>cast_f32_to_bf16: read n fp32, write n bf16.</summary>
    public static KernelCost CastF32ToBf16(long n) => new("cast_f32_to_bf16", $"n={n}", n * (F32 + Bf16), 0, "n*4 + n*2");
    /// <summary>cast_bf16_to_f32: read n bf16, write n fp32.</summary>
    public static KernelCost CastBf16ToF32(long n) => new("cast_bf16_to_f32", $"n={n}", n * (Bf16 + F32), 0, "n*2 + n*4");
    /// <summary>add_bf16: read a, b, write out (bf16).</summary>
    public static KernelCost AddBf16(long n) => new("add_bf16", $"n={n}", 3 * n * Bf16, 0, "3*n*2");
    /// <summary>accumulate_bf16_f32 (acc += g): read acc fp32 + g bf16, write acc fp32.</summary>
    public static KernelCost AccumulateBf16F32(long n) => new("accumulate_bf16_f32", $"n={n}", n * (2 * F32 + Bf16), 0, "n*4*2 + n*2");

    /// <summary>
    /// Attention FLOPs, the FlashAttention-2 convention: forward = 4·B·H·T²·D (two matrix products QKᵀ and PV of
    /// 2·T²·D each per head), halved when causal (exactly 0.5, not (T+1)/2T); backward = 2.5 × forward (five matrix
    /// products instead of two). Recomputation the kernels do (our dq kernel recomputes P) is not counted, so TFLOP/s
    /// compares with FA2/PyTorch numbers on the same footing.
    /// </summary>
    public static double AttentionFlops(int batch, int seqLen, int heads, int headDim, bool causal, bool backward)
    {
        double fwd = 4.0 * batch * heads * (double)seqLen * seqLen * headDim * (causal ? 0.5 : 1.0);
        return backward ? 2.5 * fwd : fwd;
    }

    /// <summary>The shape key shared with benchmarks/scripts/sdpa_bench.py (its shape_key must print the same string).</summary>
    public static string AttentionShapeKey(int batch, int seqLen, int heads, int kvHeads, int headDim, bool causal) =>
        $"B={batch} T={seqLen} H={heads} Hkv={kvHeads} D={headDim} {(causal ? "causal" : "full")}";

    /// <summary>One attention pass; <paramref name="family"/> "attention" (attention.cu) or "attention_v2" names the kernels.</summary>
    public static KernelCost Attention(bool backward, int batch, int seqLen, int heads, int kvHeads, int headDim, bool causal,
        string family = "attention") =>
        new(family + (backward ? "_bwd" : "_fwd"), AttentionShapeKey(batch, seqLen, heads, kvHeads, headDim, causal), 0,
            AttentionFlops(batch, seqLen, heads, headDim, causal, backward),
            backward ? "2.5 * 4*B*H*T^2*D" + (causal ? " * 0.5" : "") : "4*B*H*T^2*D" + (causal ? " * 0.5" : ""));

    /// <summary>cuBLAS bf16 GEMM (fp32 accumulate): 2·M·N·K.</summary>
    public static KernelCost Gemm(int m, int n, int k) =>
        new("cublas_gemm_bf16", $"M={m} N={n} K={k}", 0, 2.0 * m * n * k, "2*M*N*K");

    /// <summary>Decimal GB/s of <paramref name="bytes"/> moved in <paramref name="ms"/> milliseconds.</summary>
    public static double GBps(long bytes, double ms) => ms > 0 ? bytes / (ms * 1e6) : 0;

    /// <summary>Decimal TFLOP/s of <paramref name="flops"/> in <paramref name="ms"/> milliseconds.</summary>
    public static double Tflops(double flops, double ms) => ms > 0 ? flops / (ms * 1e9) : 0;
}
