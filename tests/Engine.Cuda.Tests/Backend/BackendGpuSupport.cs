using Engine.Core;
using Engine.Cuda.Backend;

namespace Engine.Cuda.Tests.Backend;

/// <summary>
/// Tolerances of CudaBackend against CpuBackend, derived in one place. Inputs are bf16-representable, so both
/// backends start from identical values and only the GPU's storage roundings and summation orders differ.
/// <list type="bullet">
/// <item>Element-wise results that are one fp32 computation rounded to bf16 (Add, SwiGLU, RoPE, casts): relative
/// error ≤ 2^-9 per rounding; judged |got − ref| ≤ <see cref="ElementAtol"/> + <see cref="ElementRtol"/>·|ref|
/// (2^-7: room for two roundings and fp32-vs-fp32 last-place differences).</item>
/// <item>Results of reductions or bf16 intermediates (GEMM outputs, RMSNorm dx/dw, attention, cross-entropy
/// gradients, decode): the flash-attention whole-tensor rule, max|err| ≤ <see cref="TensorRel"/>·max|ref| — a plain
/// bf16 implementation rounds each of its O(1) intermediates once (2^-9 each, 2^-8 for P and dS fed to the tensor
/// cores), so 2e-2 is ≥ 2× that error with the outputs' own rounding included.</item>
/// <item>fp32 statistics (rstd, lse, per-row losses) and fp32 GEMM accumulators: same data, different summation
/// order → <see cref="StatRtol"/>.</item>
/// <item>A whole training step of a 2-layer model: every activation is stored in bf16 about ten times between the
/// embedding and the loss, and gradients traverse them again; errors compound (still far below the signal):
/// loss relative <see cref="StepLossRel"/>, each parameter gradient whole-tensor <see cref="StepGradRel"/>.</item>
/// </list>
/// </summary>
public static class BackendTol
{
    public const float ElementRtol = 1f / 128, ElementAtol = 1e-3f;
    public const float TensorRel = 2e-2f;
    public const float StatRtol = 1e-3f, StatAtol = 1e-4f;
    public const float StepLossRel = 1e-2f, StepGradRel = 5e-2f;

    public static void Elementwise(ReadOnlySpan<float> got, ReadOnlySpan<float> expected, string what) =>
        Tol.Close(got, expected, ElementAtol, ElementRtol, what);

    public static void Stat(ReadOnlySpan<float> got, ReadOnlySpan<float> expected, string what) =>
        Tol.Close(got, expected, StatAtol, StatRtol, what);

    public static void Tensor(ReadOnlySpan<float> got, ReadOnlySpan<float> expected, string what, float rel = TensorRel)
    {
        var e = new double[expected.Length];
        for (int i = 0; i < e.Length; i++) e[i] = expected[i];
        Tol.RelMax(got, e, rel, 1e-6f, what);
    }
}

/// <summary>The shared CudaBackend for GPU tests, or SKIPPED with the reason.</summary>
public static class GpuBackend
{
    public static CudaBackend Require()
    {
        if (!CudaBackend.TryGetShared(out var be, out string reason))
            Assert.Skip(reason.StartsWith("no CUDA", StringComparison.Ordinal) ? reason : "no CUDA device: " + reason);
        return be!;
    }

    /// <summary>The same values on both backends: fp32 on the CPU, <paramref name="gpuType"/> on the GPU.</summary>
    public static (Tensor Gpu, Tensor Cpu) Pair(this CudaBackend be, float[] values, int[] shape, DType gpuType)
    {
        var c = CpuBackend.Instance.Empty(shape);
        CpuBackend.Instance.Upload(c, values);
        var g = be.Empty(shape, gpuType);
        be.Upload(g, values);
        return (g, c);
    }

    public static (Tensor Gpu, Tensor Cpu) PairInts(this CudaBackend be, int[] values)
    {
        var c = CpuBackend.Instance.Empty([values.Length], DType.I32);
        CpuBackend.Instance.Upload(c, values);
        var g = be.Empty([values.Length], DType.I32);
        be.Upload(g, values);
        return (g, c);
    }

    public static float[] Host(this Tensor t) => t.ToArray();
}
