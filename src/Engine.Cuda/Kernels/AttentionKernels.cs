namespace Engine.Cuda.Kernels;

/// <summary>Attention problem size: q/o [B, T, H, D], k/v [B, T, Hkv, D], H % Hkv == 0; D 64 or 128 (attention.cu),
/// 32, 64, 96 or 128 (attention_v2.cu). AlibiMaxBias &gt; 0: ALiBi, run by the kernels' *_alibi entry points, which take
/// it as a second argument after the params struct (<see cref="AttentionKernels.Launch{T}"/>; causal only).</summary>
public readonly record struct AttentionShape(int Batch, int SeqLen, int Heads, int KvHeads, int HeadDim, float AlibiMaxBias = 0f)
{
    /// <summary>The kernel name infix of the ALiBi entry points ("attention_forward_alibi_d64").</summary>
    public string Variant => AlibiMaxBias > 0 ? "_alibi" : "";

    /// <summary>Head dims of the v1 kernels (attention.cu).</summary>
    public static readonly int[] V1HeadDims = [64, 128];

    public void Validate() => Validate(V1HeadDims, "attention.cu");

    /// <summary>Sizes, and the head dim among <paramref name="headDims"/> (the kernel family named by <paramref name="kernels"/>).</summary>
    public void Validate(int[] headDims, string kernels)
    {
        if (Batch < 0 || SeqLen < 0) throw new ArgumentException($"batch {Batch} and seq_len {SeqLen} must be >= 0");
        if (Heads <= 0 || KvHeads <= 0 || Heads % KvHeads != 0)
            throw new ArgumentException($"heads {Heads} must be a positive multiple of kv_heads {KvHeads}");
        if (Array.IndexOf(headDims, HeadDim) < 0)
            throw new ArgumentException($"head dim {HeadDim} unsupported: the {kernels} kernels take {string.Join(", ", headDims)}");
        if (!(AlibiMaxBias >= 0) || float.IsInfinity(AlibiMaxBias)) throw new ArgumentException($"ALiBi max bias must be finite and >= 0 (got {AlibiMaxBias})");
    }
    /// <summary>Bytes of the fp32 lse [B, H, T] (forward output) and of the backward's delta scratch (same size).</summary>
    public long LseBytes => (long)Batch * Heads * SeqLen * sizeof(float);
}

/// <summary>Launchers for native/attention.cu (flash attention forward and deterministic backward).</summary>
public sealed class AttentionKernels
{
    private const string Module = "attention";
    private readonly KernelLibrary _lib;
    internal AttentionKernels(KernelLibrary lib) => _lib = lib;

    internal static long Stride(long given, int heads, int d) => given == 0 ? (long)heads * d : given;

    internal static void CheckOperand(DevicePtr p, long rowStride, long minStride, string name)
    {
        if (p.IsNull) throw new ArgumentException($"{name} is null", name);
        if (!p.IsAligned(16)) throw new ArgumentException($"{name} ({p}) must be 16-byte aligned", name);
        if (rowStride % 8 != 0 || rowStride < minStride)
            throw new ArgumentException($"{name} row stride {rowStride} must be a multiple of 8 elements and >= {minStride}", name);
    }

    /// <summary>o = softmax(q k^T / sqrt(D) [causal]) v, lse [B, H, T] saved. Row strides 0 mean packed (heads * D).</summary>
    public void Forward(CudaStream s, AttentionShape shape, DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o, DevicePtr lse, bool causal = true,
        long qRowStride = 0, long kRowStride = 0, long vRowStride = 0, long oRowStride = 0)
    {
        var p = Params(shape, q, k, v, o, lse, causal, qRowStride, kRowStride, vRowStride, oRowStride);
        if (shape.Batch == 0 || shape.SeqLen == 0) return;
        int d = shape.HeadDim;
        var grid = new Dim3((uint)((shape.SeqLen + KernelTraits.AttnFwdBlockM(d) - 1) / KernelTraits.AttnFwdBlockM(d)), (uint)shape.Heads, (uint)shape.Batch);
        Launch(_lib.Function(Module, $"attention_forward{shape.Variant}_d{d}"), s, grid, KernelTraits.AttnThreads, KernelTraits.AttnFwdSmem(d), p, shape);
    }

    /// <summary>dq, dk, dv from dout and the forward's o and lse; <paramref name="delta"/> is fp32 scratch of
    /// <see cref="AttentionShape.LseBytes"/> bytes. dk/dv of a kv head sum over its query-head group. Deterministic.</summary>
    public void Backward(CudaStream s, AttentionShape shape, DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o, DevicePtr lse,
        DevicePtr dout, DevicePtr dq, DevicePtr dk, DevicePtr dv, DevicePtr delta, bool causal = true,
        long qRowStride = 0, long kRowStride = 0, long vRowStride = 0, long oRowStride = 0,
        long doRowStride = 0, long dqRowStride = 0, long dkRowStride = 0, long dvRowStride = 0)
    {
        var f = Params(shape, q, k, v, o, lse, causal, qRowStride, kRowStride, vRowStride, oRowStride);
        int d = shape.HeadDim;
        var p = BackwardParams(shape, f, dout, dq, dk, dv, delta, doRowStride, dqRowStride, dkRowStride, dvRowStride);
        if (shape.Batch == 0 || shape.SeqLen == 0) return;

        long rows = (long)shape.Batch * shape.SeqLen * shape.Heads;
        unsafe
        {
            int headDim = d;
            AttentionBackwardParams copy = p;
            void** args = stackalloc void*[2] { &copy, &headDim };
            _lib.Function(Module, "attention_backward_preprocess").LaunchRaw(s, new Dim3((uint)_lib.GridFor(rows, 4)), 128, 0, args);
        }
        int bkv = KernelTraits.AttnBwdBlockKV(d), bm = KernelTraits.AttnBwdBlockM(d);
        var gridKv = new Dim3((uint)((shape.SeqLen + bkv - 1) / bkv), (uint)shape.KvHeads, (uint)shape.Batch);
        Launch(_lib.Function(Module, $"attention_backward_dkdv{shape.Variant}_d{d}"), s, gridKv, KernelTraits.AttnThreads, KernelTraits.AttnBwdKVSmem(d), p, shape);
        var gridQ = new Dim3((uint)((shape.SeqLen + bm - 1) / bm), (uint)shape.Heads, (uint)shape.Batch);
        Launch(_lib.Function(Module, $"attention_backward_dq{shape.Variant}_d{d}"), s, gridQ, KernelTraits.AttnThreads, KernelTraits.AttnBwdQSmem(d), p, shape);
    }

    /// <summary>Launches an attention kernel of either family: the params struct alone, or for ALiBi (the *_alibi entry
    /// points) the struct and the max bias.</summary>
    internal static void Launch<T>(KernelFunction f, CudaStream s, Dim3 grid, int block, int smem, in T p, AttentionShape shape) where T : unmanaged
    {
        if (shape.AlibiMaxBias > 0) f.Launch(s, grid, block, smem, p, shape.AlibiMaxBias);
        else f.Launch(s, grid, block, smem, p);
    }

    private static AttentionParams Params(AttentionShape shape, DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o, DevicePtr lse, bool causal,
        long qs, long ks, long vs, long os)
    {
        shape.Validate();
        return CommonParams(shape, q, k, v, o, lse, causal, qs, ks, vs, os);
    }

    /// <summary>The backward params both kernel families take (the forward's <paramref name="f"/> plus the gradients and
    /// delta scratch), the gradient operands checked.</summary>
    internal static AttentionBackwardParams BackwardParams(AttentionShape shape, AttentionParams f, DevicePtr dout, DevicePtr dq, DevicePtr dk,
        DevicePtr dv, DevicePtr delta, long dos, long dqs, long dks, long dvs)
    {
        int d = shape.HeadDim;
        var p = new AttentionBackwardParams
        {
            Fwd = f,
            DOut = dout,
            Dq = dq,
            Dk = dk,
            Dv = dv,
            Delta = delta,
            DoRowStride = Stride(dos, shape.Heads, d),
            DqRowStride = Stride(dqs, shape.Heads, d),
            DkRowStride = Stride(dks, shape.KvHeads, d),
            DvRowStride = Stride(dvs, shape.KvHeads, d),
        };
        CheckOperand(dout, p.DoRowStride, (long)shape.Heads * d, nameof(dout));
        CheckOperand(dq, p.DqRowStride, (long)shape.Heads * d, nameof(dq));
        CheckOperand(dk, p.DkRowStride, (long)shape.KvHeads * d, nameof(dk));
        CheckOperand(dv, p.DvRowStride, (long)shape.KvHeads * d, nameof(dv));
        if (delta.IsNull) throw new ArgumentException("delta scratch is null", nameof(delta));
        return p;
    }

    /// <summary>The params struct both kernel families take, its operands checked (the shape is validated by the caller).</summary>
    internal static AttentionParams CommonParams(AttentionShape shape, DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o, DevicePtr lse, bool causal,
        long qs, long ks, long vs, long os)
    {
        int d = shape.HeadDim;
        var p = new AttentionParams
        {
            Q = q,
            K = k,
            V = v,
            O = o,
            Lse = lse,
            Batch = shape.Batch,
            SeqLen = shape.SeqLen,
            Heads = shape.Heads,
            KvHeads = shape.KvHeads,
            QRowStride = Stride(qs, shape.Heads, d),
            KRowStride = Stride(ks, shape.KvHeads, d),
            VRowStride = Stride(vs, shape.KvHeads, d),
            ORowStride = Stride(os, shape.Heads, d),
            SoftmaxScale = 1f / MathF.Sqrt(d),
            Causal = causal ? 1 : 0,
        };
        if (shape.AlibiMaxBias > 0 && !causal)
            throw new ArgumentException("ALiBi attention is causal only (its bias m·(j − i) assumes keys at or before the query)", nameof(causal));
        CheckOperand(q, p.QRowStride, (long)shape.Heads * d, nameof(q));
        CheckOperand(k, p.KRowStride, (long)shape.KvHeads * d, nameof(k));
        CheckOperand(v, p.VRowStride, (long)shape.KvHeads * d, nameof(v));
        CheckOperand(o, p.ORowStride, (long)shape.Heads * d, nameof(o));
        if (lse.IsNull) throw new ArgumentException("lse is null", nameof(lse));
        return p;
    }
}
