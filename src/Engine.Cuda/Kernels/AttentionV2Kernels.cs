using Engine.Cuda.Interop;

namespace Engine.Cuda.Kernels;

/// <summary>
/// The tile order of native/attention_v2.cu (attn_tile), mirrored so it can be tested on the CPU: linear tile t →
/// (block, head). Heads come in groups of <see cref="AttnSchedule.Group"/>; inside a group the block index is the slow
/// one (all heads of the group advance together, their K/V stay in L2), run from the last block when
/// <see cref="AttnSchedule.Descending"/> (causal forward: the last query tile sees the most keys, so it starts first).
/// </summary>
public static class AttentionSchedule
{
    /// <summary>Share of L2 a group's working set may take (the rest: other groups finishing, Q/O/dQ streams).</summary>
    public const double L2Share = 0.5;

    /// <summary>(block, head) of linear tile <paramref name="t"/>; the same arithmetic as the kernel's attn_tile.</summary>
    public static (long Block, long Head) TileAt(in AttnSchedule s, long t)
    {
        long perGroup = (long)s.Group * s.Blocks;
        long first = t / perGroup * s.Group, r = t % perGroup;
        long size = Math.Min(s.Group, s.Heads - first);
        long step = r / size;
        return (s.Descending != 0 ? s.Blocks - 1 - step : step, first + r % size);
    }

    public static long Tiles(in AttnSchedule s) => (long)s.Blocks * s.Heads;

    /// <summary>Forward: query tiles of 128 rows over B·H heads; a head's K/V (4·T·D bytes, shared by H/Hkv query
    /// heads) sets the group size.</summary>
    public static AttnSchedule Forward(AttentionShape shape, bool causal, long l2Bytes)
    {
        long heads = (long)shape.Batch * shape.Heads;
        double perHead = 4.0 * shape.SeqLen * shape.HeadDim / (shape.Heads / shape.KvHeads);
        return Make((shape.SeqLen + KernelTraits.AttnV2FwdBlockM - 1) / KernelTraits.AttnV2FwdBlockM, heads, perHead, l2Bytes, causal);
    }

    /// <summary>Backward: key tiles over B·Hkv heads, ascending (the ordered dQ sum needs it); a kv head's working set is
    /// its group's Q, dO (bf16) and fp32 dQ sum, 8·T·D·(H/Hkv) bytes.</summary>
    public static AttnSchedule Backward(AttentionShape shape, long l2Bytes)
    {
        long heads = (long)shape.Batch * shape.KvHeads;
        double perHead = 8.0 * shape.SeqLen * shape.HeadDim * (shape.Heads / shape.KvHeads);
        int bn = KernelTraits.AttnV2BwdBlockN(shape.HeadDim);
        return Make((shape.SeqLen + bn - 1) / bn, heads, perHead, l2Bytes, descending: false);
    }

    private static AttnSchedule Make(int blocks, long heads, double bytesPerHead, long l2Bytes, bool descending)
    {
        if (heads > int.MaxValue || (long)blocks * heads > int.MaxValue)
            throw new ArgumentException($"attention: {blocks} tiles x {heads} heads exceed the grid's 2^31 - 1 blocks");
        long group = bytesPerHead > 0 ? (long)(l2Bytes * L2Share / bytesPerHead) : heads;
        return new AttnSchedule
        {
            Blocks = blocks,
            Heads = (int)heads,
            Group = (int)Math.Clamp(group, 1, Math.Max(1, heads)),
            Descending = descending ? 1 : 0,
        };
    }
}

/// <summary>
/// Launchers for native/attention_v2.cu: flash attention with FlashAttention-2's schedule for head dims 32, 64, 96
/// and 128 (one-pass five-GEMM backward, deterministic dQ). Same operands and results as <see cref="AttentionKernels"/>;
/// the backward also takes the fp32 dQ sum and the int32 sync array (<see cref="DqAccumBytes"/>, <see cref="SyncBytes"/>),
/// which it zeroes itself. Selected over v1 by <see cref="AttentionImpl"/> (ENGINE_ATTENTION).
/// </summary>
public sealed class AttentionV2Kernels
{
    private const string Module = "attention_v2", HopperModule = "attention_sm90";
    /// <summary>ENGINE_ATTENTION_SM90=0 keeps the forward on the mma.sync kernel on Hopper too.</summary>
    public const string HopperVariable = "ENGINE_ATTENTION_SM90";
    private readonly KernelLibrary _lib;
    private long _l2Bytes = -1;
    internal AttentionV2Kernels(KernelLibrary lib) => _lib = lib;

    /// <summary>Run the forward on attention_sm90.cu (wgmma + TMA) where it applies (<see cref="UsesHopperPath"/>);
    /// default on unless ENGINE_ATTENTION_SM90=0.</summary>
    public bool HopperPath { get; set; } = Environment.GetEnvironmentVariable(HopperVariable) != "0";

    /// <summary>Whether <see cref="Forward"/> runs attention_sm90.cu for head dim <paramref name="d"/>: Hopper (compute
    /// capability 9.x), a CUDA 12 driver (tensor maps), head dim 64 or 128, the sm_90a fatbin built (CMake target
    /// engine_kernels_sm90, nvcc &gt;= 12).</summary>
    public bool UsesHopperPath(int d) => HopperPath && _lib.Device.ComputeMajor == 9 && _lib.Device.DriverVersion >= 12000
        && Array.IndexOf(KernelTraits.AttnSm90HeadDims, d) >= 0 && _lib.TryFunction(HopperModule, $"attention_sm90_forward_d{d}", out _);

    /// <summary>Bytes of the fp32 dQ sum [B, H, T, D].</summary>
    public static long DqAccumBytes(AttentionShape s) => (long)s.Batch * s.Heads * s.SeqLen * s.HeadDim * sizeof(float);

    /// <summary>Bytes of the int32 sync array: a ticket counter and one flag per (batch, query head, query tile).</summary>
    public static long SyncBytes(AttentionShape s)
    {
        int bm = KernelTraits.AttnV2BwdBlockM(s.HeadDim);
        return (1 + (long)s.Batch * s.Heads * ((s.SeqLen + bm - 1) / bm)) * sizeof(int);
    }

    private long L2Bytes()
    {
        if (_l2Bytes < 0)
        {
            _lib.Device.MakeCurrent();
            Check.Cu(NativeMethods.cuDeviceGet(out int handle, _lib.Device.Ordinal));
            Check.Cu(NativeMethods.cuDeviceGetAttribute(out int l2, CuDeviceAttribute.L2CacheSize, handle));
            _l2Bytes = l2;
        }
        return _l2Bytes;
    }

    private static AttentionParams Params(AttentionShape shape, DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o, DevicePtr lse, bool causal,
        long qs, long ks, long vs, long os)
    {
        shape.Validate(KernelTraits.AttnV2HeadDims, "attention_v2.cu");
        return AttentionKernels.CommonParams(shape, q, k, v, o, lse, causal, qs, ks, vs, os);
    }

    /// <summary>o = softmax(q k^T / sqrt(D) [causal]) v, lse [B, H, T] saved. Row strides 0 mean packed (heads * D).</summary>
    public void Forward(CudaStream s, AttentionShape shape, DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o, DevicePtr lse, bool causal = true,
        long qRowStride = 0, long kRowStride = 0, long vRowStride = 0, long oRowStride = 0)
    {
        var p = new AttentionV2Params { Base = Params(shape, q, k, v, o, lse, causal, qRowStride, kRowStride, vRowStride, oRowStride) };
        if (shape.Batch == 0 || shape.SeqLen == 0) return;
        p.Sched = AttentionSchedule.Forward(shape, causal, L2Bytes());
        int d = shape.HeadDim;
        if (UsesHopperPath(d) && (shape.AlibiMaxBias == 0 || _lib.TryFunction(HopperModule, $"attention_sm90_forward{shape.Variant}_d{d}", out _)))
        {
            LaunchHopper(s, shape, p);
            return;
        }
        AttentionKernels.Launch(_lib.Function(Module, $"attention_v2_forward{shape.Variant}_d{d}"), s, new Dim3((uint)AttentionSchedule.Tiles(p.Sched)),
            KernelTraits.AttnV2FwdThreads, KernelTraits.AttnV2FwdSmem(d), p, shape);
    }

    private unsafe void LaunchHopper(CudaStream s, AttentionShape shape, AttentionV2Params p)
    {
        var sp = new AttentionSm90Params { Base = p.Base, Sched = p.Sched };
        int box = KernelTraits.AttnSm90BlockM;   // = BlockN: one box shape serves Q, K and V
        TensorMaps.Encode(TensorMaps.Spec(p.Base.Q, shape.Heads, shape.SeqLen, shape.Batch, p.Base.QRowStride, shape.HeadDim, box), sp.Q);
        TensorMaps.Encode(TensorMaps.Spec(p.Base.K, shape.KvHeads, shape.SeqLen, shape.Batch, p.Base.KRowStride, shape.HeadDim, box), sp.K);
        TensorMaps.Encode(TensorMaps.Spec(p.Base.V, shape.KvHeads, shape.SeqLen, shape.Batch, p.Base.VRowStride, shape.HeadDim, box), sp.V);
        int d = shape.HeadDim;
        AttentionKernels.Launch(_lib.Function(HopperModule, $"attention_sm90_forward{shape.Variant}_d{d}"), s, new Dim3((uint)AttentionSchedule.Tiles(sp.Sched)),
            KernelTraits.AttnSm90Threads, KernelTraits.AttnSm90Smem(d), sp, shape);
    }

    /// <summary>dq, dk, dv from dout and the forward's o and lse. Scratch: <paramref name="delta"/> fp32
    /// (<see cref="AttentionShape.LseBytes"/>), <paramref name="dqAccum"/> (<see cref="DqAccumBytes"/>) and
    /// <paramref name="sync"/> (<see cref="SyncBytes"/>, zeroed here). dk/dv of a kv head sum over its query-head group.
    /// Deterministic: dQ is summed over key tiles in a fixed order.</summary>
    public void Backward(CudaStream s, AttentionShape shape, DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o, DevicePtr lse,
        DevicePtr dout, DevicePtr dq, DevicePtr dk, DevicePtr dv, DevicePtr delta, DevicePtr dqAccum, DevicePtr sync, bool causal = true,
        long qRowStride = 0, long kRowStride = 0, long vRowStride = 0, long oRowStride = 0,
        long doRowStride = 0, long dqRowStride = 0, long dkRowStride = 0, long dvRowStride = 0) =>
        Backward(s, shape, q, k, v, o, lse, dout, dq, dk, dv, delta, dqAccum, sync, causal, qRowStride, kRowStride, vRowStride, oRowStride,
            doRowStride, dqRowStride, dkRowStride, dvRowStride, skippedTickets: 0);

    /// <summary>Debug aid (AttentionV2DebugGpuTests, packed strides): <see cref="Backward"/> with the first
    /// <paramref name="skippedTickets"/> tiles never started — the ticket counter starts there and the grid is that
    /// much smaller — so the key tiles after them wait for dQ partials nobody publishes. A release build hangs; a
    /// debug build (ENGINE_DEBUG_KERNELS) traps after a bounded wait.</summary>
    public void BackwardWithMissingPredecessors(CudaStream s, AttentionShape shape, DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o,
        DevicePtr lse, DevicePtr dout, DevicePtr dq, DevicePtr dk, DevicePtr dv, DevicePtr delta, DevicePtr dqAccum, DevicePtr sync,
        bool causal, int skippedTickets)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(skippedTickets);
        Backward(s, shape, q, k, v, o, lse, dout, dq, dk, dv, delta, dqAccum, sync, causal, 0, 0, 0, 0, 0, 0, 0, 0, skippedTickets);
    }

    private void Backward(CudaStream s, AttentionShape shape, DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o, DevicePtr lse,
        DevicePtr dout, DevicePtr dq, DevicePtr dk, DevicePtr dv, DevicePtr delta, DevicePtr dqAccum, DevicePtr sync, bool causal,
        long qRowStride, long kRowStride, long vRowStride, long oRowStride, long doRowStride, long dqRowStride, long dkRowStride,
        long dvRowStride, int skippedTickets)
    {
        var f = Params(shape, q, k, v, o, lse, causal, qRowStride, kRowStride, vRowStride, oRowStride);
        int d = shape.HeadDim;
        var b = AttentionKernels.BackwardParams(shape, f, dout, dq, dk, dv, delta, doRowStride, dqRowStride, dkRowStride, dvRowStride);
        if (dqAccum.IsNull || !dqAccum.IsAligned(16)) throw new ArgumentException("dq accumulation scratch must be a 16-byte aligned buffer", nameof(dqAccum));
        if (sync.IsNull || !sync.IsAligned(4)) throw new ArgumentException("sync scratch must be a 4-byte aligned buffer", nameof(sync));
        if (shape.Batch == 0 || shape.SeqLen == 0) return;

        var p = new AttentionV2BackwardParams { Base = b, DqAccum = dqAccum, Sync = sync, Sched = AttentionSchedule.Backward(shape, L2Bytes()) };
        long tiles = AttentionSchedule.Tiles(p.Sched);
        if (skippedTickets >= tiles) throw new ArgumentOutOfRangeException(nameof(skippedTickets), $"{skippedTickets} of {tiles} tiles");
        s.Memset(sync, 0, SyncBytes(shape));
        if (skippedTickets > 0) s.CopyToDevice<int>(sync, [skippedTickets]);
        long rows = (long)shape.Batch * shape.SeqLen * shape.Heads;
        unsafe
        {
            int headDim = d;
            AttentionBackwardParams copy = b;
            void** args = stackalloc void*[2] { &copy, &headDim };
            _lib.Function(Module, "attention_v2_backward_preprocess").LaunchRaw(s, new Dim3((uint)_lib.GridFor(rows, 4)), 128, 0, args);
        }
        AttentionKernels.Launch(_lib.Function(Module, $"attention_v2_backward{shape.Variant}_d{d}"), s, new Dim3((uint)(tiles - skippedTickets)),
            KernelTraits.AttnV2BwdThreads(d), KernelTraits.AttnV2BwdSmem(d), p, shape);
    }
}

/// <summary>A 4-D TMA tensor map over q, k or v viewed as (D, heads, T, B): element strides 1, heads D apart, tokens a
/// row stride apart, batches T row strides apart; box (64, 1, rows, 1) of bf16 with 128-byte swizzle (attention_sm90.cu
/// reads 64-column blocks); rows past T read as zeros.</summary>
public readonly record struct TensorMapSpec(ulong Address, ulong[] Dims, ulong[] StridesBytes, uint[] Box);

public static class TensorMaps
{
    public const int Bf16 = 9, InterleaveNone = 0, Swizzle128B = 3, L2Promotion128B = 2, OobFillZeros = 0;

    public static TensorMapSpec Spec(DevicePtr tensor, int heads, int seqLen, int batch, long rowStride, int headDim, int boxRows)
    {
        if (headDim % 64 != 0) throw new ArgumentException($"TMA boxes are 64 columns wide: head dim {headDim} is not a multiple of 64");
        if (!tensor.IsAligned(16) || rowStride % 8 != 0) throw new ArgumentException($"TMA needs 16-byte aligned addresses and row strides ({tensor}, stride {rowStride})");
        return new TensorMapSpec(tensor.Address,
            [(ulong)headDim, (ulong)heads, (ulong)seqLen, (ulong)batch],
            [(ulong)headDim * 2, (ulong)rowStride * 2, (ulong)seqLen * (ulong)rowStride * 2],
            [64, 1, (uint)boxRows, 1]);
    }

    /// <summary>cuTensorMapEncodeTiled into <paramref name="dst"/> (128 bytes), through a 64-byte aligned buffer.</summary>
    public static unsafe void Encode(TensorMapSpec spec, byte* dst)
    {
        void* map = System.Runtime.InteropServices.NativeMemory.AlignedAlloc(128, 64);
        try
        {
            uint* elem = stackalloc uint[4] { 1, 1, 1, 1 };
            fixed (ulong* dims = spec.Dims)
            fixed (ulong* strides = spec.StridesBytes)
            fixed (uint* box = spec.Box)
                Check.Cu(NativeMethods.cuTensorMapEncodeTiled(map, Bf16, 4, spec.Address, dims, strides, box, elem,
                    InterleaveNone, Swizzle128B, L2Promotion128B, OobFillZeros), "cuTensorMapEncodeTiled");
            Buffer.MemoryCopy(map, dst, 128, 128);
        }
        finally { System.Runtime.InteropServices.NativeMemory.AlignedFree(map); }
    }
}

/// <summary>Which flash-attention kernels the CUDA backend runs.</summary>
public enum AttentionImpl
{
    /// <summary>attention.cu: head dims 64 and 128, dq in a second kernel (seven GEMMs in the backward).</summary>
    V1,
    /// <summary>attention_v2.cu: head dims 32, 64, 96, 128; FlashAttention-2 schedule.</summary>
    V2,
}

/// <summary>The ENGINE_ATTENTION switch: v1 (default until a GPU run has shown v2 correct and faster) or v2. A head
/// dim v1 lacks (32, 96) always runs v2.</summary>
public static class AttentionSelection
{
    public const string Variable = "ENGINE_ATTENTION";

    public static AttentionImpl Parse(string? value) => value?.Trim().ToLowerInvariant() switch
    {
        null or "" or "v1" => AttentionImpl.V1,
        "v2" => AttentionImpl.V2,
        _ => throw new ArgumentException($"{Variable}={value}: expected v1 or v2"),
    };

    public static AttentionImpl FromEnvironment() => Parse(Environment.GetEnvironmentVariable(Variable));

    /// <summary>The kernels for <paramref name="headDim"/> given the preference; throws when neither family has it.</summary>
    public static AttentionImpl For(AttentionImpl preferred, int headDim)
    {
        bool v1 = Array.IndexOf(AttentionShape.V1HeadDims, headDim) >= 0, v2 = Array.IndexOf(KernelTraits.AttnV2HeadDims, headDim) >= 0;
        if (preferred == AttentionImpl.V1 && v1) return AttentionImpl.V1;
        if (v2) return AttentionImpl.V2;
        throw new ArgumentException(
            $"head dim {headDim} is not supported by the flash-attention kernels (32, 64, 96 or 128); choose hidden_size / num_attention_heads among them for device cuda");
    }
}
