using Engine.Core;
using Engine.Cpu;
using Engine.Cuda.Interop;
using Engine.Cuda.Kernels;
using static Engine.Cuda.Backend.CudaOpChecks;
using AdamWRun = Engine.Core.AdamWRun;
using AdamWStep = Engine.Core.AdamWStep;
using KernelAdamWRun = Engine.Cuda.Kernels.AdamWRun;
using KernelAdamWStep = Engine.Cuda.Kernels.AdamWStep;
using RopeParams = Engine.Core.RopeParams;

namespace Engine.Cuda.Backend;

/// <summary>
/// <see cref="IBackend"/> on one NVIDIA GPU: mixed precision on the hand-written kernels of native/ and cuBLAS.
/// <list type="bullet">
/// <item>Activations and their gradients are bf16 (<see cref="ActivationDType"/>); statistics (rstd, lse, per-row
/// losses, the scalar loss), parameters (fp32 masters), their gradients and the AdamW moments are fp32.</item>
/// <item>fp32 operands of bf16 kernels — parameters in GEMMs, the RMSNorm gain, the embedding table — are read
/// through the storage's bf16 shadow (rule and lifetime: <see cref="CudaStorage"/>); the fused AdamW kernel refreshes
/// master and shadow together.</item>
/// <item>GEMMs: cuBLAS GemmEx, bf16 A/B, fp32 compute, C in c's dtype (weight gradients accumulate in fp32 with
/// beta = 1).</item>
/// <item>One stream for everything (the caching allocator's reuse is stream-ordered). Host↔device copies
/// synchronize; scalar results (Sum, SumOfSquares, Ewc) are fixed-grid fp32 partials summed on the host in double.</item>
/// <item>Every op runs on the GPU. Host work: bf16 rounding of uploaded floats, the embedding backward's bucket sort
/// (from the host copy of the ids kept at upload; a download only when the ids were produced on the device).</item>
/// </list>
/// Thread use: the context is made current on whichever thread calls (checked per call, cheap); ops are not meant to
/// run concurrently from several threads (one stream).
/// </summary>
public sealed class CudaBackend : IBackend, IShadowCaster, IDeviceStats, IDisposable
{
    private static readonly Lazy<(CudaBackend? Backend, string Reason)> SharedInstance = new(OpenShared);
    [ThreadStatic] private static CudaBackend? _currentOnThread;

    private readonly CublasContext _blas;
    private readonly ExtrasKernels _extras;
    private readonly RopeFrequencyCache _rope;
    private bool _disposed;

    public CudaBackend(CudaDevice device, KernelLibrary kernels)
    {
        Device = device;
        Kernels = kernels;
        device.MakeCurrent();
        _currentOnThread = this;
        Stream = new CudaStream();
        Allocator = new CachingAllocator();
        _blas = new CublasContext();
        _extras = new ExtrasKernels(kernels);
        _rope = new RopeFrequencyCache(UploadTable);
        Staging = new PinnedStaging();
        AttentionPreference = AttentionSelection.FromEnvironment();
    }

    /// <summary>Page-locked blocks every upload goes through (asynchronous: an upload never waits for the device).</summary>
    public PinnedStaging Staging { get; }

    /// <summary>ENGINE_FUSED_PROJECTIONS=0 turns the fused q|k|v and gate|up GEMMs off (the separate ops then run).</summary>
    public const string FusedProjectionsVariable = "ENGINE_FUSED_PROJECTIONS";

    /// <summary>The model runs q|k|v and gate|up as one GEMM each; the kernels below read the fused rows with row strides.</summary>
    public bool FusesProjections { get; set; } = Environment.GetEnvironmentVariable(FusedProjectionsVariable) != "0";

    /// <summary>Preferred flash-attention kernels: ENGINE_ATTENTION=v1 (default: attention.cu) or v2 (attention_v2.cu).
    /// Head dims v1 does not have (32, 96) run v2 whatever the preference (<see cref="AttentionSelection.For"/>).</summary>
    public AttentionImpl AttentionPreference { get; set; }

    /// <summary>
    /// The process-wide backend (kernels load once): opens device 0 and the kernel library on first call. False with
    /// a one-line reason (no driver, no device, compute capability, kernels not built) — the reason is remembered.
    /// </summary>
    public static bool TryGetShared(out CudaBackend? backend, out string reason)
    {
        (backend, reason) = SharedInstance.Value;
        return backend != null;
    }

    private static int _preferredOrdinal = -1;

    /// <summary>
    /// Before the shared backend opens: use GPU <paramref name="localRank"/> when this process sees more than one
    /// (torchrun or srun started several ranks per node without restricting CUDA_VISIBLE_DEVICES; `engine launch`
    /// restricts it, so each rank sees one GPU and takes device 0).
    /// </summary>
    public static void PreferDevice(int localRank)
    {
        if (SharedInstance.IsValueCreated) throw new InvalidOperationException("the shared CUDA backend is already open");
        _preferredOrdinal = localRank;
    }

    private static (CudaBackend?, string) OpenShared()
    {
        int ordinal = 0;
        if (_preferredOrdinal > 0 && CudaDevice.Count() is int visible && visible > 1)
        {
            if (_preferredOrdinal >= visible) return (null, $"local rank {_preferredOrdinal} has no GPU: this node shows {visible}");
            ordinal = _preferredOrdinal;
        }
        if (!CudaDevice.TryCreate(out var device, out string reason, ordinal)) return (null, reason);
        try
        {
            var kernels = KernelLibrary.Load(device!);
            string extras = Path.Combine(kernels.Directory, ExtrasKernels.Module + ".fatbin");
            if (!File.Exists(extras))
            {
                kernels.Dispose();
                device!.Dispose();
                return (null, $"CUDA kernels in {kernels.Directory} predate the backend: {ExtrasKernels.Module}.fatbin is missing (rebuild: cmake --build build/native)");
            }
            return (new CudaBackend(device!, kernels), "");
        }
        catch (Exception e) when (e is DirectoryNotFoundException or CudaException or DllNotFoundException or ArgumentException)
        {
            device!.Dispose();
            return (null, e.Message);
        }
    }

    public CudaDevice Device { get; }
    public KernelLibrary Kernels { get; }
    public CudaStream Stream { get; }
    public CachingAllocator Allocator { get; }

    public string Name => "cuda";
    public string DeviceName => Device.Name;
    public long DeviceBytesInUse => Allocator.Stats.InUseBytes;
    public long DevicePeakBytes => Allocator.Stats.PeakInUseBytes;
    public DType ActivationDType => DType.BF16;

    /// <summary>Distinct RoPE inv_freq tables on the device.</summary>
    public int RopeTables => _rope.Count;

    private DeviceBuffer? _cublasWorkspace;

    /// <summary>cuBLAS workspace for captured GEMMs (32 MiB, the size NVIDIA recommends on Hopper).</summary>
    public const long CublasWorkspaceBytes = 32L << 20;

    /// <summary>
    /// Captures the device work <paramref name="work"/> enqueues through this backend into a CUDA graph (nothing
    /// runs while capturing; <see cref="CudaGraph.Replay"/> then re-runs it as one launch). Everything it allocates comes
    /// from a private pool the graph keeps, cuBLAS gets a workspace of its own first, and uploads or host reads inside
    /// are refused: inputs are written into their tensors before capturing and before each replay. Built, not yet run
    /// on a GPU (CudaGraphGpuTests). What keeps a whole training step out of one graph today: the embedding backward's
    /// bucket table is built on the host from each batch's ids and uploaded, and the micro-batch inputs are uploaded
    /// per step (docs/KERNELS.md, "CUDA graphs").
    /// </summary>
    public CudaGraph Capture(Action work)
    {
        Enter();
        if (Profiler.Enabled) throw new InvalidOperationException("CUDA-graph capture under --profile: the profiler's events cannot be captured");
        if (_cublasWorkspace == null)
        {
            _cublasWorkspace = Scratch(CublasWorkspaceBytes);
            _blas.SetWorkspace(Stream, _cublasWorkspace.Ptr, CublasWorkspaceBytes);
        }
        return CudaGraph.Capture(Stream, Allocator, work);
    }

    /// <summary>Waits for all enqueued work (benchmarks, tests).</summary>
    public void Synchronize()
    {
        Enter();
        Stream.Synchronize();
    }

    // ---- plumbing -------------------------------------------------------------------------------------------------

    private CudaEventClock? _clock;

    /// <summary>A profiled op (Profiler.Enabled): an event pair on the stream around it; one branch when disabled.</summary>
    private Profiler.OpScope Prof(string op, params ReadOnlySpan<Tensor?> tensors) => Profiler.Enabled ? Prof(op, Profiler.Bytes(tensors)) : default;

    private Profiler.OpScope Prof(string op, long bytes)
    {
        if (!Profiler.Enabled) return default;
        Enter();
        return Profiler.Op(op, bytes, _clock ??= new CudaEventClock(Stream));
    }

    private static long AdamWBytes(ReadOnlySpan<AdamWRun> runs)
    {
        long n = 0;
        foreach (var r in runs) n += r.Count;
        return 16 * n;
    }

    private void Enter()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_currentOnThread == this) return;
        Device.MakeCurrent();
        _currentOnThread = this;
    }

    private CudaStorage St(Tensor t)
    {
        if (t.Storage is CudaStorage s && ReferenceEquals(s.Backend, this)) return s;
        throw new ArgumentException($"{t.Describe()} is not a tensor of this CUDA backend");
    }

    /// <summary>Address of t's first element, for reading.</summary>
    private DevicePtr In(Tensor t) => St(t).Ptr.Offset(t.Offset, t.DType.Size());

    /// <summary>Address of t's first element, for writing: records the write (stale shadows, host copies).</summary>
    private DevicePtr Out(Tensor t)
    {
        var s = St(t);
        s.MarkWritten();
        return s.Ptr.Offset(t.Offset, t.DType.Size());
    }

    /// <summary>bf16 view of t for a kernel or GEMM: t itself when bf16, else its storage's shadow (re-cast if stale).</summary>
    private DevicePtr Bf16In(Tensor t) => t.DType switch
    {
        DType.BF16 => In(t),
        DType.F32 => St(t).Bf16Shadow(this).Offset(t.Offset, 2),
        _ => throw new ArgumentException($"{t.Describe()} cannot be read as bf16"),
    };

    void IShadowCaster.CastF32ToBf16(DevicePtr dstBf16, DevicePtr srcF32, long count) => Kernels.Elementwise.CastF32ToBf16(Stream, dstBf16, srcF32, count);

    private DeviceBuffer Scratch(long bytes) => Allocator.Allocate(Math.Max(1, bytes));

    private DeviceBuffer UploadTable(float[] values)
    {
        var buf = Scratch((long)values.Length * sizeof(float));
        Staging.CopyToDevice<float>(Stream, buf.Ptr, values);
        return buf;
    }

    /// <summary>Sums the fixed-grid fp32 partials in double on the host (synchronizes).</summary>
    private double SumPartials(DeviceBuffer partials)
    {
        Span<float> host = stackalloc float[ExtrasKernels.PartialBlocks];
        Stream.CopyToHost(host, partials.Ptr);
        double total = 0;
        foreach (float x in host) total += x;
        return total;
    }

    // ---- creation and transfer ------------------------------------------------------------------------------------

    public Tensor Empty(ReadOnlySpan<int> shape, DType dtype = DType.F32)
    {
        Enter();
        CudaStorage storage;
        try { storage = new CudaStorage(this, Allocator, dtype, Shape.Numel(shape)); }
        catch (DeviceOutOfMemoryException e) { throw e.For($"tensor {dtype}{Shape.Format(shape)}"); }
        return TensorFactory.Owning(storage, shape);
    }

    /// <summary>The device's free memory plus what this backend's allocator already holds (in use and cached): the
    /// budget the fit check compares a model's estimate with, since the model's own weights are already allocated.</summary>
    public long AvailableMemoryBytes()
    {
        Enter();
        var (free, _) = Device.MemoryInfo();
        return free + Allocator.Stats.ReservedBytes;
    }

    public Tensor Zeros(ReadOnlySpan<int> shape, DType dtype = DType.F32)
    {
        using var _p = Prof("zeros", Shape.Numel(shape) * dtype.Size());
        var t = Empty(shape, dtype);
        if (t.Numel > 0) Stream.Memset(Out(t), 0, t.Numel * dtype.Size());   // 0 bits are 0 in all three dtypes
        return t;
    }

    public void Upload(Tensor dst, ReadOnlySpan<float> src)
    {
        using var _p = Prof("upload", dst);
        Enter();
        if (src.Length != dst.Numel) throw new ArgumentException($"upload of {src.Length} values into {dst.Describe()}");
        if (dst.DType == DType.I32) throw new ArgumentException($"upload of float values into {dst.Describe()}: use the int32 overload");
        if (src.Length == 0) return;
        switch (dst.DType)
        {
            case DType.F32:
                Staging.CopyToDevice(Stream, Out(dst), src);
                break;
            case DType.BF16:
                var half = new ushort[src.Length];
                BFloat16.FromFloat(src, half);
                Staging.CopyToDevice<ushort>(Stream, Out(dst), half);
                break;
        }
    }

    /// <summary>Asynchronous (pinned staging): ids and targets of a micro-batch never make the host wait.</summary>
    public void Upload(Tensor dst, ReadOnlySpan<int> src)
    {
        using var _p = Prof("upload", dst);
        Enter();
        if (src.Length != dst.Numel) throw new ArgumentException($"upload of {src.Length} values into {dst.Describe()}");
        Is(dst, "Upload", "dst", DType.I32);
        var s = St(dst);
        if (src.Length > 0) Staging.CopyToDevice(Stream, s.Ptr.Offset(dst.Offset, 4), src);
        s.UploadInts(dst.Offset, src);
    }

    public void Download(Tensor src, Span<float> dst)
    {
        using var _p = Prof("download", src);
        Enter();
        if (dst.Length < src.Numel) throw new ArgumentException($"download of {src.Describe()} into {dst.Length} values");
        int n = checked((int)src.Numel);
        if (n == 0) return;
        switch (src.DType)
        {
            case DType.F32:
                Stream.CopyToHost(dst[..n], In(src));
                break;
            case DType.BF16:
                var half = new ushort[n];
                Stream.CopyToHost<ushort>(half, In(src));
                BFloat16.ToFloat(half, dst[..n]);
                break;
            case DType.I32:
                var ints = new int[n];
                Stream.CopyToHost<int>(ints, In(src));
                for (int i = 0; i < n; i++) dst[i] = ints[i];
                break;
        }
    }

    public void Fill(Tensor t, float value)
    {
        using var _p = Prof("fill", t);
        Enter();
        switch (t.DType)
        {
            case DType.F32: Kernels.Elementwise.FillF32(Stream, Out(t), value, t.Numel); break;
            case DType.BF16: Kernels.Elementwise.FillBf16(Stream, Out(t), value, t.Numel); break;
            case DType.I32: _extras.FillI32(Stream, Out(t), checked((int)value), t.Numel); break;
        }
    }

    public void Copy(Tensor src, Tensor dst)
    {
        using var _p = Prof("copy", src, dst);
        Enter();
        if (src.Numel != dst.Numel) throw new ArgumentException($"copy {src.Describe()} → {dst.Describe()}: sizes differ");
        var from = In(src);
        if (src.DType == dst.DType && src.Numel == 0) return;
        if (src.DType == dst.DType) Stream.CopyDeviceToDevice(Out(dst), from, src.Numel * src.DType.Size());
        else if (src.DType == DType.F32 && dst.DType == DType.BF16) Kernels.Elementwise.CastF32ToBf16(Stream, Out(dst), from, src.Numel);
        else if (src.DType == DType.BF16 && dst.DType == DType.F32) Kernels.Elementwise.CastBf16ToF32(Stream, Out(dst), from, src.Numel);
        else throw new ArgumentException($"copy {src.Describe()} → {dst.Describe()}: no {src.DType} → {dst.DType} conversion");
    }

    // ---- GEMM and element-wise ------------------------------------------------------------------------------------

    public void MatMul(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f)
    {
        using var _p = Prof("matmul", a, b, c);
        Enter();
        var (m, n, k) = CudaOpChecks.MatMul(a, transA, b, transB, c);
        var pa = Bf16In(a);
        var pb = Bf16In(b);
        _blas.Gemm(Stream, transA, transB, m, n, k, pa, pb, Out(c), alpha, beta,
            c.DType == DType.F32 ? CudaDataType.R32F : CudaDataType.R16BF);
    }

    public void Add(Tensor a, Tensor b, Tensor y)
    {
        using var _p = Prof("add", a, b, y);
        Enter();
        SameNumel(a, b, "Add"); SameNumel(a, y, "Add");
        if (a.DType != b.DType || a.DType != y.DType || a.DType == DType.I32)
            throw new ArgumentException($"Add: {a.Describe()}, {b.Describe()} → {y.Describe()} must share one float dtype");
        if (a.DType == DType.BF16) Kernels.Elementwise.AddBf16(Stream, Out(y), In(a), In(b), a.Numel);
        else Kernels.Elementwise.AddF32(Stream, Out(y), In(a), In(b), a.Numel);
    }

    public void AddInPlace(Tensor acc, Tensor x, float alpha)
    {
        using var _p = Prof("add_in_place", acc, x);
        Enter();
        SameNumel(acc, x, "AddInPlace");
        IsFloat(acc, "AddInPlace", "acc"); IsFloat(x, "AddInPlace", "x");
        var px = In(x);
        var pacc = Out(acc);
        long n = acc.Numel;
        switch (acc.DType, x.DType)
        {
            case (DType.F32, DType.F32): Kernels.Elementwise.AxpyF32(Stream, pacc, px, alpha, n); break;
            case (DType.F32, DType.BF16):
                if (alpha == 1f) Kernels.Elementwise.AccumulateBf16F32(Stream, pacc, px, n);
                else _extras.AxpyF32Bf16(Stream, pacc, px, alpha, n);
                break;
            case (DType.BF16, DType.BF16):
                if (alpha == 1f) Kernels.Elementwise.AddBf16(Stream, pacc, pacc, px, n);
                else _extras.AxpyBf16(Stream, pacc, px, alpha, n);
                break;
            default: _extras.AxpyBf16F32(Stream, pacc, px, alpha, n); break;
        }
    }

    public void Scale(Tensor t, float s)
    {
        using var _p = Prof("scale", t);
        Enter();
        IsFloat(t, "Scale", "t");
        var p = Out(t);
        if (t.DType == DType.BF16) Kernels.Elementwise.ScaleBf16(Stream, p, p, s, t.Numel);
        else Kernels.Elementwise.ScaleF32(Stream, p, p, s, t.Numel);
    }

    public double SumOfSquares(Tensor t)
    {
        using var _p = Prof("sum_of_squares", t);
        Enter();
        IsFloat(t, "SumOfSquares", "t");
        using var partials = Scratch(ExtrasKernels.PartialBlocks * sizeof(float));
        if (t.DType == DType.BF16) Kernels.AdamW.GradNormPartialBf16(Stream, partials.Ptr, 0, In(t), t.Numel);
        else Kernels.AdamW.GradNormPartialF32(Stream, partials.Ptr, 0, In(t), t.Numel);
        return SumPartials(partials);
    }

    public void ScaleBy(Tensor t, Tensor scalar)
    {
        using var _p = Prof("scale_by", t);
        Enter();
        IsFloat(t, "ScaleBy", "t");
        Is(scalar, "ScaleBy", "scalar", DType.F32);
        Numel(scalar, "ScaleBy", "scalar", 1);
        var ps = In(scalar);
        _extras.ScaleBy(Stream, Out(t), ps, t.Numel, t.DType == DType.BF16);
    }

    public void SumInto(Tensor x, Tensor result, float divisor)
    {
        using var _p = Prof("sum_into", x, result);
        Enter();
        IsFloat(x, "SumInto", "x");
        Is(result, "SumInto", "result", DType.F32);
        Numel(result, "SumInto", "result", 1);
        // the same fixed-grid partials Sum reads back, summed in double in the same order — on the device
        using var partials = Scratch(ExtrasKernels.PartialBlocks * sizeof(float));
        _extras.SumPartial(Stream, partials.Ptr, In(x), x.Numel, x.DType == DType.BF16);
        _extras.SumFinalize(Stream, Out(result), partials.Ptr, divisor);
    }

    public double Sum(Tensor t)
    {
        using var _p = Prof("sum", t);
        Enter();
        IsFloat(t, "Sum", "t");
        using var partials = Scratch(ExtrasKernels.PartialBlocks * sizeof(float));
        _extras.SumPartial(Stream, partials.Ptr, In(t), t.Numel, t.DType == DType.BF16);
        return SumPartials(partials);
    }

    // ---- fused ops ------------------------------------------------------------------------------------------------

    public void RmsNormForward(Tensor x, Tensor w, Tensor y, Tensor rstd, float eps)
    {
        using var _p = Prof("rmsnorm_forward", x, w, y, rstd);
        Enter();
        int rows = RmsNormRows(x, w, y, rstd, "RmsNormForward");
        int cols = checked((int)w.Numel);
        var pw = Bf16In(w);
        Kernels.RmsNorm.Forward(Stream, Out(y), Out(rstd), In(x), pw, rows, cols, eps);
    }

    public void RmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dwAccumulate)
    {
        using var _p = Prof("rmsnorm_backward", dy, x, w, rstd, dx, dwAccumulate);
        Enter();
        int rows = RmsNormRows(x, w, dx, rstd, "RmsNormBackward");
        Is(dy, "RmsNormBackward", "dy", DType.BF16);
        SameNumel(dy, x, "RmsNormBackward");
        Is(dwAccumulate, "RmsNormBackward", "dw", DType.F32);
        Numel(dwAccumulate, "RmsNormBackward", "dw", w.Numel);
        int cols = checked((int)w.Numel);
        var pw = Bf16In(w);
        using var partial = Scratch(RmsNormKernels.PartialBytes(rows, cols));
        Kernels.RmsNorm.Backward(Stream, Out(dx), Out(dwAccumulate), In(dy), In(x), pw, In(rstd), rows, cols, partial.Ptr, accumulateDw: true);
    }

    // ---- fused projections: q|k|v and gate|up rows of one GEMM, read in place ----------------------------------------

    public void CopyColumns(Tensor src, int srcCol, Tensor dst, int dstCol, int cols)
    {
        using var _p = Prof("copy_columns", (long)src.Shape[0] * cols * src.DType.Size() * 2);
        Enter();
        Fused2D(src, "CopyColumns", "src"); Fused2D(dst, "CopyColumns", "dst");
        if (src.DType != dst.DType || src.Shape[0] != dst.Shape[0] || srcCol < 0 || dstCol < 0 || cols < 0
            || srcCol + cols > src.Shape[1] || dstCol + cols > dst.Shape[1])
            throw new ArgumentException($"CopyColumns: columns [{srcCol}, +{cols}) of {src.Describe()} do not fit columns [{dstCol}, +{cols}) of {dst.Describe()}");
        if (cols == 0 || src.Shape[0] == 0) return;
        int e = src.DType.Size();
        var from = In(src).Offset(srcCol, e);
        Stream.Copy2D(Out(dst).Offset(dstCol, e), (long)dst.Shape[1] * e, from, (long)src.Shape[1] * e, (long)cols * e, src.Shape[0]);
    }

    public void RopeColumns(Tensor x, int col, RopeParams p, int batch, int seqLen, int heads, int positionOffset, bool inverse)
    {
        using var _p = Prof("rope", x);
        Enter();
        Fused2D(x, "RopeColumns", "x");
        Is(x, "RopeColumns", "x", DType.BF16);
        int width = heads * p.HeadDim;
        if (x.Shape[0] != batch * seqLen || col < 0 || col + width > x.Shape[1])
            throw new ArgumentException($"RopeColumns: columns [{col}, +{width}) of {x.Describe()} are not B*T={batch * seqLen} rows of {heads} heads");
        var inv = _rope.Get(p);
        float lin = RopeFrequencyCache.LinearFactor(p);
        var ptr = Out(x).Offset(col, 2);
        long row = x.Shape[1];
        if (inverse) Kernels.Rope.Backward(Stream, ptr, ptr, inv, batch, seqLen, heads, p.HeadDim, positionOffset, lin, row, row);
        else Kernels.Rope.Forward(Stream, ptr, ptr, inv, batch, seqLen, heads, p.HeadDim, positionOffset, lin, row, row);
    }

    public void AttentionForwardFused(Tensor qkv, Tensor o, Tensor lse, AttentionDims d)
    {
        using var _p = Prof("attention_forward", qkv, o, lse);
        Enter();
        var (q, k, v, row) = QkvPointers(qkv, d, "AttentionForwardFused", write: false);
        Shape.Check(o, "o", d.Batch * d.SeqLen, d.QRow);
        Is(o, "AttentionForwardFused", "o", DType.BF16); Is(lse, "AttentionForwardFused", "lse", DType.F32);
        Numel(lse, "AttentionForwardFused", "lse", (long)d.Batch * d.Heads * d.SeqLen);
        if (AttentionSelection.For(AttentionPreference, d.HeadDim) == AttentionImpl.V2)
            Kernels.AttentionV2.Forward(Stream, ShapeOf(d), q, k, v, Out(o), Out(lse), causal: true, qRowStride: row, kRowStride: row, vRowStride: row);
        else
            Kernels.Attention.Forward(Stream, ShapeOf(d), q, k, v, Out(o), Out(lse), causal: true, qRowStride: row, kRowStride: row, vRowStride: row);
    }

    public void AttentionBackwardFused(Tensor dout, Tensor qkv, Tensor o, Tensor lse, Tensor dqkv, AttentionDims d)
    {
        using var _p = Prof("attention_backward", dout, qkv, o, lse, dqkv);
        Enter();
        const string op = "AttentionBackwardFused";
        var (q, k, v, row) = QkvPointers(qkv, d, op, write: false);
        var (dq, dk, dv, drow) = QkvPointers(dqkv, d, op, write: true);
        Shape.Check(o, "o", d.Batch * d.SeqLen, d.QRow);
        Shape.Check(dout, "dout", d.Batch * d.SeqLen, d.QRow);
        Is(dout, op, "dout", DType.BF16); Is(o, op, "o", DType.BF16); Is(lse, op, "lse", DType.F32);
        var shape = ShapeOf(d);
        using var delta = Scratch(shape.LseBytes);
        if (AttentionSelection.For(AttentionPreference, d.HeadDim) == AttentionImpl.V2)
        {
            using var dqAccum = Scratch(AttentionV2Kernels.DqAccumBytes(shape));
            using var sync = Scratch(AttentionV2Kernels.SyncBytes(shape));
            Kernels.AttentionV2.Backward(Stream, shape, q, k, v, In(o), In(lse), In(dout), dq, dk, dv, delta.Ptr, dqAccum.Ptr, sync.Ptr, causal: true,
                qRowStride: row, kRowStride: row, vRowStride: row, dqRowStride: drow, dkRowStride: drow, dvRowStride: drow);
        }
        else
        {
            Kernels.Attention.Backward(Stream, shape, q, k, v, In(o), In(lse), In(dout), dq, dk, dv, delta.Ptr, causal: true,
                qRowStride: row, kRowStride: row, vRowStride: row, dqRowStride: drow, dkRowStride: drow, dvRowStride: drow);
        }
    }

    /// <summary>q, k, v addresses inside a fused [B*T, (H + 2 Hkv) D] bf16 buffer, and its row stride.</summary>
    private (DevicePtr Q, DevicePtr K, DevicePtr V, long Row) QkvPointers(Tensor qkv, AttentionDims d, string op, bool write)
    {
        d.Validate();
        Is(qkv, op, write ? "dqkv" : "qkv", DType.BF16);
        Shape.Check(qkv, write ? "dqkv" : "qkv", d.Batch * d.SeqLen, d.QRow + 2 * d.KvRow);
        var b = write ? Out(qkv) : In(qkv);
        return (b, b.Offset(d.QRow, 2), b.Offset(d.QRow + d.KvRow, 2), qkv.Shape[1]);
    }

    public void SwiGluFusedForward(Tensor gu, Tensor h)
    {
        using var _p = Prof("swiglu_forward", gu, h);
        Enter();
        Fused2D(gu, "SwiGluFusedForward", "gu");
        Is(gu, "SwiGluFusedForward", "gu", DType.BF16); Is(h, "SwiGluFusedForward", "h", DType.BF16);
        int n = gu.Shape[0], f = gu.Shape[1] / 2;
        Shape.Check(h, "h", n, f);
        Kernels.SwiGlu.FusedForward(Stream, Out(h), In(gu), n, f);
    }

    public void SwiGluFusedBackward(Tensor dh, Tensor gu, Tensor dgu)
    {
        using var _p = Prof("swiglu_backward", dh, gu, dgu);
        Enter();
        Fused2D(gu, "SwiGluFusedBackward", "gu");
        foreach (var (t, role) in new[] { (dh, "dh"), (gu, "gu"), (dgu, "dgu") }) Is(t, "SwiGluFusedBackward", role, DType.BF16);
        int n = gu.Shape[0], f = gu.Shape[1] / 2;
        Shape.Check(dh, "dh", n, f);
        Shape.Check(dgu, "dgu", n, 2 * f);
        var (pdh, pgu) = (In(dh), In(gu));
        Kernels.SwiGlu.FusedBackward(Stream, Out(dgu), pdh, pgu, n, f);
    }

    private static void Fused2D(Tensor t, string op, string role)
    {
        if (t.Rank != 2) throw new ArgumentException($"{op}: {role} must be rank 2, got {t.Describe()}");
    }

    public void RmsNormResidualForward(Tensor x, Tensor residual, Tensor w, Tensor h, Tensor y, Tensor rstd, float eps)
    {
        using var _p = Prof("rmsnorm_residual_forward", x, residual, w, h, y, rstd);
        Enter();
        int rows = RmsNormRows(x, w, y, rstd, "RmsNormResidualForward");
        SameNumel(x, residual, "RmsNormResidualForward"); SameNumel(x, h, "RmsNormResidualForward");
        Is(residual, "RmsNormResidualForward", "residual", DType.BF16);
        Is(h, "RmsNormResidualForward", "h", DType.BF16);
        int cols = checked((int)w.Numel);
        var pw = Bf16In(w);
        var (px, pr) = (In(x), In(residual));
        Kernels.RmsNorm.ForwardResidual(Stream, Out(y), Out(rstd), Out(h), px, pr, pw, rows, cols, eps);
    }

    public void RmsNormResidualBackward(Tensor dy, Tensor h, Tensor w, Tensor rstd, Tensor dx, Tensor dwAccumulate, Tensor dresidual)
    {
        using var _p = Prof("rmsnorm_residual_backward", dy, h, w, rstd, dx, dwAccumulate, dresidual);
        Enter();
        int rows = RmsNormRows(h, w, dx, rstd, "RmsNormResidualBackward");
        Is(dy, "RmsNormResidualBackward", "dy", DType.BF16);
        Is(dresidual, "RmsNormResidualBackward", "dresidual", DType.BF16);
        SameNumel(dy, h, "RmsNormResidualBackward"); SameNumel(dresidual, h, "RmsNormResidualBackward");
        Is(dwAccumulate, "RmsNormResidualBackward", "dw", DType.F32);
        Numel(dwAccumulate, "RmsNormResidualBackward", "dw", w.Numel);
        int cols = checked((int)w.Numel);
        var pw = Bf16In(w);
        using var partial = Scratch(RmsNormKernels.PartialBytes(rows, cols));
        var (pdy, ph, pr, pres) = (In(dy), In(h), In(rstd), In(dresidual));
        Kernels.RmsNorm.Backward(Stream, Out(dx), Out(dwAccumulate), pdy, ph, pw, pr, rows, cols, partial.Ptr, accumulateDw: true, dresidual: pres);
    }

    public void Rope(Tensor x, Tensor y, RopeParams p, int batch, int seqLen, int heads, int positionOffset, bool inverse)
    {
        using var _p = Prof("rope", x, y);
        Enter();
        CudaOpChecks.Rope(x, y, p, batch, seqLen, heads);
        var inv = _rope.Get(p);
        float lin = RopeFrequencyCache.LinearFactor(p);
        var px = In(x);
        if (inverse) Kernels.Rope.Backward(Stream, Out(y), px, inv, batch, seqLen, heads, p.HeadDim, positionOffset, lin);
        else Kernels.Rope.Forward(Stream, Out(y), px, inv, batch, seqLen, heads, p.HeadDim, positionOffset, lin);
    }

    private static AttentionShape ShapeOf(AttentionDims d) =>
        d.AlibiMaxBias > 0 && !d.AllHeads
            // the kernels derive each head's slope from its index among the heads they run (attention.cu alibi_slope)
            ? throw new NotSupportedException($"ALiBi attention over heads {d.HeadOffset}..{d.HeadOffset + d.Heads - 1} of {d.TotalHeads} (a tensor-parallel rank's share) has no CUDA kernel yet: the kernels take the slopes of all heads; run ALiBi models at tensor_parallel = 1 on GPUs")
            : new(d.Batch, d.SeqLen, d.Heads, d.KvHeads, d.HeadDim, d.AlibiMaxBias);

    public void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, AttentionDims d)
    {
        using var _p = Prof("attention_forward", q, k, v, o, lse);
        Enter();
        Attention("AttentionForward", d, q, k, v, o, lse);
        if (AttentionSelection.For(AttentionPreference, d.HeadDim) == AttentionImpl.V2)
            Kernels.AttentionV2.Forward(Stream, ShapeOf(d), In(q), In(k), In(v), Out(o), Out(lse), causal: d.Causal);
        else
            Kernels.Attention.Forward(Stream, ShapeOf(d), In(q), In(k), In(v), Out(o), Out(lse), causal: d.Causal);
    }

    public void AttentionBackward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dq, Tensor dk, Tensor dv, AttentionDims d)
    {
        using var _p = Prof("attention_backward", dout, q, k, v, o, lse, dq, dk, dv);
        Enter();
        const string op = "AttentionBackward";
        Attention(op, d, q, k, v, o, lse);
        Attention(op, d, dq, dk, dv, dout, lse);
        var shape = ShapeOf(d);
        using var delta = Scratch(shape.LseBytes);
        if (AttentionSelection.For(AttentionPreference, d.HeadDim) == AttentionImpl.V2)
        {
            using var dqAccum = Scratch(AttentionV2Kernels.DqAccumBytes(shape));
            using var sync = Scratch(AttentionV2Kernels.SyncBytes(shape));
            Kernels.AttentionV2.Backward(Stream, shape, In(q), In(k), In(v), In(o), In(lse), In(dout), Out(dq), Out(dk), Out(dv),
                delta.Ptr, dqAccum.Ptr, sync.Ptr, causal: d.Causal);
        }
        else
        {
            Kernels.Attention.Backward(Stream, shape, In(q), In(k), In(v), In(o), In(lse), In(dout), Out(dq), Out(dk), Out(dv), delta.Ptr, causal: d.Causal);
        }
    }

    public void AttentionDecode(Tensor q, Tensor kCache, Tensor vCache, Tensor o, int heads, int kvHeads, int headDim, int positionOffset, float alibiMaxBias = 0f)
    {
        using var _p = Prof("attention_decode", q, kCache, vCache, o);
        Enter();
        int n = Decode(q, kCache, vCache, o, heads, kvHeads, headDim, positionOffset);
        _extras.AttentionDecode(Stream, In(q), In(kCache), In(vCache), Out(o), n, heads, kvHeads, headDim, positionOffset, alibiMaxBias);
    }

    public void SwiGluForward(Tensor gate, Tensor up, Tensor h)
    {
        using var _p = Prof("swiglu_forward", gate, up, h);
        Enter();
        foreach (var (t, role) in new[] { (gate, "gate"), (up, "up"), (h, "h") }) Is(t, "SwiGluForward", role, DType.BF16);
        SameNumel(gate, up, "SwiGluForward"); SameNumel(gate, h, "SwiGluForward");
        Kernels.SwiGlu.Forward(Stream, Out(h), In(gate), In(up), gate.Numel);
    }

    public void SwiGluBackward(Tensor dh, Tensor gate, Tensor up, Tensor dgate, Tensor dup)
    {
        using var _p = Prof("swiglu_backward", dh, gate, up, dgate, dup);
        Enter();
        foreach (var (t, role) in new[] { (dh, "dh"), (gate, "gate"), (up, "up"), (dgate, "dgate"), (dup, "dup") }) Is(t, "SwiGluBackward", role, DType.BF16);
        SameNumel(gate, up, "SwiGluBackward"); SameNumel(gate, dh, "SwiGluBackward");
        SameNumel(gate, dgate, "SwiGluBackward"); SameNumel(gate, dup, "SwiGluBackward");
        var (pdh, pg, pu) = (In(dh), In(gate), In(up));
        Kernels.SwiGlu.Backward(Stream, Out(dgate), Out(dup), pdh, pg, pu, gate.Numel);
    }

    public void EmbeddingForward(Tensor ids, Tensor table, Tensor y)
    {
        using var _p = Prof("embedding_forward", ids, table, y);
        Enter();
        var (tokens, vocab, cols) = Embedding(ids, table, y, "EmbeddingForward", DType.BF16);
        IsFloat(table, "EmbeddingForward", "table");
        // the kernel turns an out-of-range id into a zero row; with the ids' host copy at hand, reject it like the CPU
        if (St(ids).TryHostInts(ids.Offset, tokens, out var hostIds))
            for (int i = 0; i < hostIds.Length; i++)
                if ((uint)hostIds[i] >= (uint)vocab)
                    throw new ArgumentException($"EmbeddingForward: ids {ids.Describe()}[{i}] = {hostIds[i]} is outside the table {table.Describe()}");
        var pt = Bf16In(table);
        Kernels.Embedding.Forward(Stream, Out(y), pt, In(ids), tokens, vocab, cols);
        // the backward's buckets (when one will run), built from the host ids now and uploaded asynchronously: the
        // backward then does no host work
        if (!hostIds.IsEmpty && Engine.Core.Autograd.Grad.Needs(table)) St(ids).SetEmbeddingBuckets(ids.Offset, tokens, vocab, UploadBuckets(EmbeddingKernels.BuildBuckets(hostIds, vocab)));
    }

    /// <summary>order [N] | bucket_start [U + 1] | bucket_id [U] in one device buffer (one asynchronous upload).</summary>
    private DeviceEmbeddingBuckets UploadBuckets(EmbeddingBuckets b)
    {
        var packed = new int[b.Order.Length + b.BucketStart.Length + b.BucketId.Length];
        b.Order.CopyTo(packed, 0);
        b.BucketStart.CopyTo(packed, b.Order.Length);
        b.BucketId.CopyTo(packed, b.Order.Length + b.BucketStart.Length);
        var dev = Scratch((long)packed.Length * sizeof(int));
        Staging.CopyToDevice<int>(Stream, dev.Ptr, packed);
        return new DeviceEmbeddingBuckets(dev, b.Order.Length, b.BucketStart.Length, b.Buckets);
    }

    public void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtableAccumulate)
    {
        using var _p = Prof("embedding_backward", ids, dy, dtableAccumulate);
        Enter();
        var (tokens, vocab, cols) = Embedding(ids, dtableAccumulate, dy, "EmbeddingBackward", DType.BF16);
        Is(dtableAccumulate, "EmbeddingBackward", "dtable", DType.F32);
        // the buckets the forward uploaded for these ids (still current: same version); otherwise built here from the
        // ids' host copy (kept at upload), or — ids computed on the device — from one download
        var s = St(ids);
        var b = s.EmbeddingBucketsFor(ids.Offset, tokens, vocab);
        if (b == null)
        {
            int[]? downloaded = null;
            if (!s.TryHostInts(ids.Offset, tokens, out var hostIds))
            {
                downloaded = new int[tokens];
                if (tokens > 0) Stream.CopyToHost<int>(downloaded, In(ids));
                hostIds = downloaded;
            }
            b = UploadBuckets(EmbeddingKernels.BuildBuckets(hostIds, vocab));
            s.SetEmbeddingBuckets(ids.Offset, tokens, vocab, b);
        }
        if (b.Buckets == 0) return;
        var order = b.Packed.Ptr;
        var start = order.Offset(b.OrderLength, sizeof(int));
        var id = start.Offset(b.StartLength, sizeof(int));
        Kernels.Embedding.Backward(Stream, Out(dtableAccumulate), In(dy), order, start, id, b.Buckets, cols);
    }

    public void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor lse, float zLoss, bool writeGradient, float gradScale, float maxZLoss = 0f)
    {
        using var _p = Prof("cross_entropy", logits, targets, losses, lse);
        Enter();
        var (rows, vocab) = CudaOpChecks.CrossEntropy(logits, targets, losses, lse);
        var pt = In(targets);
        if (writeGradient)
            Kernels.CrossEntropy.ForwardBackward(Stream, Out(logits), Out(losses), Out(lse), pt, DevicePtr.Null, gradScale, rows, vocab, zLoss, maxZLoss: maxZLoss);
        else
            Kernels.CrossEntropy.Forward(Stream, In(logits), Out(losses), Out(lse), pt, rows, vocab, zLoss, maxZLoss: maxZLoss);
    }

    public void ChunkSumOfSquares(Tensor x, int chunk, Tensor partials)
    {
        using var _p = Prof("chunk_sum_of_squares", x, partials);
        Enter();
        IsFloat(x, "ChunkSumOfSquares", "x");
        Is(partials, "ChunkSumOfSquares", "partials", DType.F32);
        long chunks = (x.Numel + chunk - 1) / Math.Max(1, chunk);
        if (partials.Numel < chunks) throw new ArgumentException($"ChunkSumOfSquares: {partials.Describe()} holds fewer than {chunks} partials");
        Kernels.AdamW.ChunkSumOfSquares(Stream, Out(partials), In(x), x.DType == DType.BF16, x.Numel, chunk);
    }

    public void GradNormFinalize(Tensor partials, float maxNorm, Tensor result)
    {
        using var _p = Prof("grad_norm_finalize", partials, result);
        Enter();
        Is(partials, "GradNormFinalize", "partials", DType.F32);
        Is(result, "GradNormFinalize", "result", DType.F32);
        Numel(result, "GradNormFinalize", "result", 3);
        Kernels.AdamW.GradNormFinalize(Stream, Out(result), In(partials), checked((int)partials.Numel), maxNorm);
    }

    public void AdamW(Tensor master, Tensor grad, Tensor m, Tensor v, ReadOnlySpan<AdamWRun> runs, AdamWStep step, Tensor? gradScale = null)
    {
        using var _p = Prof("adamw", AdamWBytes(runs));
        Enter();
        const string op = "AdamW";
        Is(master, op, "master", DType.F32); Is(m, op, "m", DType.F32); Is(v, op, "v", DType.F32); IsFloat(grad, op, "grad");
        if (step.Step < 1) throw new ArgumentOutOfRangeException(nameof(step), "AdamW step counts from 1");
        foreach (var r in runs)
            if (r.Count < 0 || r.Master < 0 || r.Grad < 0 || r.State < 0 || r.Master + r.Count > master.Numel || r.Grad + r.Count > grad.Numel
                || r.State + r.Count > m.Numel || r.State + r.Count > v.Numel)
                throw new ArgumentException($"AdamW: run {r} is outside master {master.Describe()}, grad {grad.Describe()} or moments {m.Describe()}");
        if (gradScale != null) { Is(gradScale, op, "gradScale", DType.F32); Numel(gradScale, op, "gradScale", 1); }
        var (table, count, longest) = RunTable(runs);
        if (count == 0) return;
        var s = St(master);
        var pmaster = In(master);
        var pg = In(grad);
        var (pm, pv) = (Out(m), Out(v));
        // the master is a parameter buffer the GEMMs read through its bf16 shadow: bring the shadow up to date (a no-op
        // in steady state) and let the fused update rewrite it at every offset it updates, so it stays current
        var shadow = s.Bf16Shadow(this).Offset(master.Offset, 2);
        var ks = new KernelAdamWStep(step.Lr, step.Beta1, step.Beta2, step.Eps, 0f, step.Step);
        Kernels.AdamW.UpdateRuns(Stream, pmaster, shadow, pm, pv, pg, grad.DType == DType.BF16, table, count, longest, ks, step.GradScale,
            gradScale != null ? In(gradScale) : DevicePtr.Null);
        s.EndFusedUpdate(shadow);
    }

    private DeviceBuffer? _runTable;
    private KernelAdamWRun[] _runTableHost = [];

    /// <summary>The runs as a device table; re-uploaded only when they change (the optimizer's runs are fixed per layout).</summary>
    private (DevicePtr Table, int Count, long Longest) RunTable(ReadOnlySpan<AdamWRun> runs)
    {
        var host = new KernelAdamWRun[runs.Length];
        long longest = 0;
        for (int i = 0; i < runs.Length; i++)
        {
            var r = runs[i];
            host[i] = new KernelAdamWRun { Master = r.Master, Grad = r.Grad, State = r.State, Count = r.Count, WeightDecay = r.WeightDecay };
            longest = Math.Max(longest, r.Count);
        }
        if (_runTable == null || !host.AsSpan().SequenceEqual(_runTableHost))
        {
            _runTable?.Dispose();
            _runTable = Scratch((long)Math.Max(1, host.Length) * System.Runtime.InteropServices.Marshal.SizeOf<KernelAdamWRun>());
            if (host.Length > 0) Staging.CopyToDevice<KernelAdamWRun>(Stream, _runTable.Ptr, host);
            _runTableHost = host;
        }
        return (_runTable.Ptr, host.Length, longest);
    }

    public double Ewc(Tensor param, Tensor anchor, Tensor fisher, Tensor grad, float lambda)
    {
        using var _p = Prof("ewc", param, anchor, fisher, grad);
        Enter();
        const string op = "Ewc";
        foreach (var (t, role) in new[] { (param, "param"), (anchor, "anchor"), (fisher, "fisher"), (grad, "grad") })
        {
            Is(t, op, role, DType.F32);
            SameNumel(param, t, op);
        }
        using var partials = Scratch(ExtrasKernels.PartialBlocks * sizeof(float));
        var (pp, pa, pf) = (In(param), In(anchor), In(fisher));
        _extras.EwcPartial(Stream, partials.Ptr, Out(grad), pp, pa, pf, lambda, param.Numel);
        return 0.5 * lambda * SumPartials(partials);
    }

    public void AddSquare(Tensor acc, Tensor x)
    {
        using var _p = Prof("add_square", acc, x);
        Enter();
        Is(acc, "AddSquare", "acc", DType.F32); Is(x, "AddSquare", "x", DType.F32);
        SameNumel(acc, x, "AddSquare");
        var px = In(x);
        _extras.AddSquareF32(Stream, Out(acc), px, acc.Numel);
    }

    public void Dispose()
    {
        if (_disposed) return;
        Device.MakeCurrent();
        Stream.Synchronize();
        _disposed = true;
        _rope.Dispose();
        _runTable?.Dispose();
        _cublasWorkspace?.Dispose();
        Staging.Dispose();
        _blas.Dispose();
        _clock?.Dispose();
        Allocator.Dispose();
        Stream.Dispose();
        Kernels.Dispose();
        if (_currentOnThread == this) _currentOnThread = null;
    }
}
