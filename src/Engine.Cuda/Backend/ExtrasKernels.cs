using System.Runtime.InteropServices;
using Engine.Cuda.Kernels;

namespace Engine.Cuda.Backend;

/// <summary>Mirror of AttentionDecodeParams in native/backend_extras.cu (80 bytes, asserted on both sides).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct AttentionDecodeParams
{
    public DevicePtr Q, K, V, O;
    public long N, Heads, KvHeads, HeadDim, Offset;
    public float SoftmaxScale;
    /// <summary>0: none; &gt; 0: ALiBi's bias with this max bias.</summary>
    public float AlibiMaxBias;

    public const int Size = 80;
}

/// <summary>Launchers for native/backend_extras.cu (the backend's extra kernels; semantics in that file's header).</summary>
public sealed class ExtrasKernels
{
    public const string Module = "backend_extras";
    /// <summary>Blocks of a partial-sum launch: fixed, so sums are bitwise identical on every GPU.</summary>
    public const int PartialBlocks = KernelTraits.PartialBlocks;
    /// <summary>Warps per attention_decode block and the largest head dim it takes (kDecodeWarps, 32 * kDecodeMaxPerLane).</summary>
    public const int DecodeWarps = 4, DecodeMaxHeadDim = 256;

    private readonly KernelLibrary _lib;
    public ExtrasKernels(KernelLibrary lib) => _lib = lib;

    private Dim3 Grid(long n) => new((uint)_lib.GridFor(n, KernelTraits.ElementwiseBlock));

    private unsafe void Flat(string name, CudaStream s, DevicePtr a0, DevicePtr a1, float f, long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (n == 0) return;
        void** args = stackalloc void*[4] { &a0, &a1, &f, &n };
        _lib.Function(Module, name).LaunchRaw(s, Grid(n), KernelTraits.ElementwiseBlock, 0, args);
    }

    /// <summary>y(bf16) += alpha * x(bf16).</summary>
    public void AxpyBf16(CudaStream s, DevicePtr y, DevicePtr x, float alpha, long n) => Flat("axpy_bf16", s, y, x, alpha, n);
    /// <summary>y(fp32) += alpha * x(bf16).</summary>
    public void AxpyF32Bf16(CudaStream s, DevicePtr y, DevicePtr x, float alpha, long n) => Flat("axpy_f32_bf16", s, y, x, alpha, n);
    /// <summary>y(bf16) += alpha * x(fp32).</summary>
    public void AxpyBf16F32(CudaStream s, DevicePtr y, DevicePtr x, float alpha, long n) => Flat("axpy_bf16_f32", s, y, x, alpha, n);

    public unsafe void FillI32(CudaStream s, DevicePtr output, int value, long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (n == 0) return;
        void** args = stackalloc void*[3] { &output, &value, &n };
        _lib.Function(Module, "fill_i32").LaunchRaw(s, Grid(n), KernelTraits.ElementwiseBlock, 0, args);
    }

    /// <summary>acc(fp32) += x * x.</summary>
    public unsafe void AddSquareF32(CudaStream s, DevicePtr acc, DevicePtr x, long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (n == 0) return;
        void** args = stackalloc void*[3] { &acc, &x, &n };
        _lib.Function(Module, "add_square_f32").LaunchRaw(s, Grid(n), KernelTraits.ElementwiseBlock, 0, args);
    }

    /// <summary>partials[0 .. PartialBlocks) = per-block sums of x (fp32 or bf16).</summary>
    public unsafe void SumPartial(CudaStream s, DevicePtr partials, DevicePtr x, long n, bool bf16)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        void** args = stackalloc void*[3] { &partials, &x, &n };
        _lib.Function(Module, bf16 ? "sum_partial_bf16" : "sum_partial_f32").LaunchRaw(s, new Dim3(PartialBlocks), KernelTraits.ReduceBlock, 0, args);
    }

    /// <summary>out[0] = (float)(Σ partials[0 .. PartialBlocks) in double / divisor), on the device.</summary>
    public unsafe void SumFinalize(CudaStream s, DevicePtr output, DevicePtr partials, float divisor)
    {
        int n = PartialBlocks;
        void** args = stackalloc void*[4] { &output, &partials, &n, &divisor };
        _lib.Function(Module, "sum_finalize").LaunchRaw(s, new Dim3(1), 32, 0, args);
    }

    /// <summary>t *= scalar[0] (fp32 device scalar), t fp32 or bf16.</summary>
    public unsafe void ScaleBy(CudaStream s, DevicePtr t, DevicePtr scalar, long n, bool bf16)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (n == 0) return;
        void** args = stackalloc void*[3] { &t, &scalar, &n };
        _lib.Function(Module, bf16 ? "scale_by_bf16" : "scale_by_f32").LaunchRaw(s, Grid(n), KernelTraits.ElementwiseBlock, 0, args);
    }

    /// <summary>grad += lambda * fisher * (param - anchor); partials[b] = per-block sums of fisher * (param - anchor)^2.</summary>
    public unsafe void EwcPartial(CudaStream s, DevicePtr partials, DevicePtr grad, DevicePtr param, DevicePtr anchor, DevicePtr fisher, float lambda, long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        void** args = stackalloc void*[7] { &partials, &grad, &param, &anchor, &fisher, &lambda, &n };
        _lib.Function(Module, "ewc_partial").LaunchRaw(s, new Dim3(PartialBlocks), KernelTraits.ReduceBlock, 0, args);
    }

    /// <summary>KV-cache attention of n queries at positions offset.. against k/v [offset + n, kvHeads * headDim] (bf16).</summary>
    public void AttentionDecode(CudaStream s, DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o, int n, int heads, int kvHeads, int headDim, int offset,
        float alibiMaxBias = 0f)
    {
        if (!(alibiMaxBias >= 0) || float.IsInfinity(alibiMaxBias)) throw new ArgumentException($"ALiBi max bias must be finite and >= 0 (got {alibiMaxBias})", nameof(alibiMaxBias));
        ValidateDecode(n, heads, kvHeads, headDim, offset);
        if (n == 0) return;
        var p = new AttentionDecodeParams
        {
            Q = q,
            K = k,
            V = v,
            O = o,
            N = n,
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            Offset = offset,
            SoftmaxScale = 1f / MathF.Sqrt(headDim),
            AlibiMaxBias = alibiMaxBias,
        };
        long blocks = (long)n * heads;
        if (blocks > int.MaxValue) throw new ArgumentException($"attention decode grid of {blocks} blocks (n {n} x heads {heads}) is too large");
        _lib.Function(Module, "attention_decode").Launch(s, new Dim3((uint)blocks), DecodeWarps * 32, 0, p);
    }

    /// <summary>The decode kernel's limits, checked before launching (message names each argument).</summary>
    public static void ValidateDecode(int n, int heads, int kvHeads, int headDim, int offset)
    {
        if (n < 0 || offset < 0) throw new ArgumentException($"attention decode: n {n} and offset {offset} must be >= 0");
        if (heads <= 0 || kvHeads <= 0 || heads % kvHeads != 0) throw new ArgumentException($"attention decode: heads {heads} must be a positive multiple of kv heads {kvHeads}");
        if (headDim <= 0 || headDim > DecodeMaxHeadDim) throw new ArgumentException($"attention decode: head dim {headDim} must be in [1, {DecodeMaxHeadDim}]");
    }
}
