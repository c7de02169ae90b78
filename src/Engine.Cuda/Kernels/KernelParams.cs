using System.Runtime.InteropServices;

namespace Engine.Cuda.Kernels;

// Mirrors of the params structs in native/*.cu, field for field (DevicePtr = 8-byte device address).
// Sizes are asserted on the native side (static_assert) and on this side (KernelParamsTests, and SizeOf below).

/// <summary>Expected sizes in bytes; equal to the static_asserts in native/*.cu.</summary>
public static class KernelParamSizes
{
    public const int RmsNormForward = 72, RmsNormBackward = 72, RmsNormDwReduce = 40, Rope = 88, EmbeddingForward = 48,
        EmbeddingBackward = 56, AdamW = 96, GradNorm = 40, CrossEntropy = 80, Attention = 112, AttentionBackward = 184,
        ChunkNorm = 40, AdamWRun = 40, AdamWRuns = 112, AttnSchedule = 16, AttentionV2 = 128, AttentionV2Backward = 216,
        AttentionSm90 = 512;
}

[StructLayout(LayoutKind.Sequential)]
public struct RmsNormForwardParams
{
    public DevicePtr Y, Rstd, H, X, Residual, W;
    public long Rows, Cols;
    public float Eps;
    public int Pad;
}

[StructLayout(LayoutKind.Sequential)]
public struct RmsNormBackwardParams
{
    public DevicePtr Dx, DwPartial, Dy, X, W, Rstd, DResidual;
    public long Rows, Cols;
}

[StructLayout(LayoutKind.Sequential)]
public struct RmsNormDwReduceParams
{
    public DevicePtr Dw, DwBf16, Partial;
    public long Cols;
    public int NumPartials, Accumulate;
}

[StructLayout(LayoutKind.Sequential)]
public struct RopeParams
{
    public DevicePtr Out, In, InvFreq;
    public long Batch, SeqLen, Heads, HeadDim, InRowStride, OutRowStride, PositionOffset;
    public float LinearFactor;
    public int Pad;
}

[StructLayout(LayoutKind.Sequential)]
public struct EmbeddingForwardParams
{
    public DevicePtr Out, Table, Ids;
    public long Tokens, Vocab, Cols;
}

[StructLayout(LayoutKind.Sequential)]
public struct EmbeddingBackwardParams
{
    public DevicePtr DTable, DOut, Order, BucketStart, BucketId;
    public long Buckets, Cols;
}

[StructLayout(LayoutKind.Sequential)]
public struct AdamWParams
{
    public DevicePtr Master, ParamBf16, M, V, GradF32, GradBf16, GradScalePtr;
    public long N;
    public float Lr, Beta1, Beta2, Eps, WeightDecay, StepSize, Bc2Sqrt, GradScale;
}

[StructLayout(LayoutKind.Sequential)]
public struct GradNormParams
{
    public DevicePtr Partials, GF32, GBf16;
    public long N;
    public int Slot, Pad;
}

[StructLayout(LayoutKind.Sequential)]
public struct ChunkNormParams
{
    public DevicePtr Partials, XF32, XBf16;
    public long N, Chunk;
}

/// <summary>One run of adamw_runs (element offsets into master/shadow, grad, and m/v).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct AdamWRun
{
    public long Master, Grad, State, Count;
    public float WeightDecay;
    public int Pad;
}

[StructLayout(LayoutKind.Sequential)]
public struct AdamWRunsParams
{
    public AdamWParams Base;
    public DevicePtr Runs;
    public long NRuns;
}

[StructLayout(LayoutKind.Sequential)]
public struct CrossEntropyParams
{
    public DevicePtr Logits, Loss, Lse, Targets, DLoss;
    public long Rows, Vocab, RowStride;
    public float ZLoss, DLossScale;
    public int IgnoreIndex;
    /// <summary>Baichuan 2's max-z loss weight (0 = none).</summary>
    public float MaxZLoss;
}

[StructLayout(LayoutKind.Sequential)]
public struct AttentionParams
{
    public DevicePtr Q, K, V, O, Lse;
    public long Batch, SeqLen, Heads, KvHeads, QRowStride, KRowStride, VRowStride, ORowStride;
    public float SoftmaxScale;
    public int Causal;
}

[StructLayout(LayoutKind.Sequential)]
public struct AttentionBackwardParams
{
    public AttentionParams Fwd;
    public DevicePtr DOut, Dq, Dk, Dv, Delta;
    public long DoRowStride, DqRowStride, DkRowStride, DvRowStride;
}

/// <summary>Tile order of the attention_v2 kernels (native attn_tile; <see cref="AttentionSchedule"/> has the C# mirror).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct AttnSchedule
{
    /// <summary>Tiles per head: query tiles (forward) or key tiles (backward).</summary>
    public int Blocks;
    /// <summary>Independent heads: B·H (forward) or B·Hkv (backward).</summary>
    public int Heads;
    /// <summary>Heads per L2 group (≥ 1).</summary>
    public int Group;
    /// <summary>1: the last block first (causal forward); the backward requires 0.</summary>
    public int Descending;
}

[StructLayout(LayoutKind.Sequential)]
public struct AttentionV2Params
{
    public AttentionParams Base;
    public AttnSchedule Sched;
}

[StructLayout(LayoutKind.Sequential)]
public struct AttentionV2BackwardParams
{
    public AttentionBackwardParams Base;
    public DevicePtr DqAccum, Sync;
    public AttnSchedule Sched;
}

/// <summary>attention_sm90.cu's parameter: three CUtensorMaps (q, k, v; 128 bytes each, opaque) then the common params
/// and the tile schedule. Passed as a __grid_constant__ kernel parameter (the TMA reads the maps from there).</summary>
[StructLayout(LayoutKind.Sequential, Size = 512)]
public unsafe struct AttentionSm90Params
{
    public fixed byte Q[128];
    public fixed byte K[128];
    public fixed byte V[128];
    public AttentionParams Base;
    public AttnSchedule Sched;
}

/// <summary>Launch geometry mirrored from native/common/traits.cuh.</summary>
public static class KernelTraits
{
    public const int RowBlock = 256, ElementwiseBlock = 256, ReduceBlock = 512, AttnThreads = 128, AttnPad = 8;
    /// <summary>Blocks of the deterministic partial-sum passes (fixed, so results are identical on every GPU).</summary>
    public const int PartialBlocks = 256;

    public static int AttnFwdBlockM(int d) => 64;
    public static int AttnFwdBlockN(int d) => 64;
    public static int AttnBwdBlockKV(int d) => 64;
    public static int AttnBwdBlockQ(int d) => d == 64 ? 64 : 32;
    public static int AttnBwdBlockM(int d) => 64;
    public static int AttnBwdBlockN(int d) => d == 64 ? 64 : 32;
    private static int Row(int d) => d + AttnPad;
    public static int AttnFwdSmem(int d) => (AttnFwdBlockM(d) + 2 * AttnFwdBlockN(d)) * Row(d) * 2;
    public static int AttnBwdKVSmem(int d) => (2 * AttnBwdBlockKV(d) + 2 * AttnBwdBlockQ(d)) * Row(d) * 2 + 2 * AttnBwdBlockQ(d) * 4;
    public static int AttnBwdQSmem(int d) => (2 * AttnBwdBlockM(d) + 2 * AttnBwdBlockN(d)) * Row(d) * 2 + 2 * AttnBwdBlockM(d) * 4;

    // ---- attention_v2 (AttnV2Traits) ----
    /// <summary>Head dims the attention_v2 kernels are built for.</summary>
    public static readonly int[] AttnV2HeadDims = [32, 64, 96, 128];
    public const int AttnV2FwdThreads = 128, AttnV2FwdBlockM = 128;
    public static int AttnV2FwdBlockN(int d) => d == 32 ? 128 : d == 96 ? 32 : 64;
    public static int AttnV2BwdWarps(int d) => d <= 64 ? 8 : 4;
    public static int AttnV2BwdThreads(int d) => 32 * AttnV2BwdWarps(d);
    public static int AttnV2BwdBlockN(int d) => 16 * AttnV2BwdWarps(d);
    public static int AttnV2BwdBlockM(int d) => d <= 64 ? 64 : 32;
    public static int AttnV2FwdSmem(int d) => (AttnV2FwdBlockM + 2 * 2 * AttnV2FwdBlockN(d)) * Row(d) * 2;
    // ---- attention_sm90 (Sm90Traits): head dims 64 and 128, 384 threads (producer + 2 consumer warpgroups) ----
    public static readonly int[] AttnSm90HeadDims = [64, 128];
    public const int AttnSm90Threads = 384, AttnSm90BlockM = 128, AttnSm90BlockN = 128;
    public static int AttnSm90Smem(int d) => (AttnSm90BlockM + 2 * 2 * AttnSm90BlockN) * d * 2 + 1024 + 1024;
    public static int AttnV2BwdSmem(int d) => (2 * AttnV2BwdBlockN(d) + 2 * 2 * AttnV2BwdBlockM(d)) * Row(d) * 2
        + AttnV2BwdBlockN(d) * (AttnV2BwdBlockM(d) + AttnPad) * 2 + 2 * 2 * AttnV2BwdBlockM(d) * 4;
}
