namespace Engine.Cuda.Kernels;

/// <summary>How RoPE positions are scaled for context extension (same meaning as the CPU reference's RopeScalingKind).</summary>
public enum RopeScaling { None, Linear, Ntk }

/// <summary>Launchers for native/rope.cu: q or k [B, T, H, D], HF "rotate_half" pairs (i, i + D/2).</summary>
public sealed class RopeKernels
{
    private const string Module = "rope";
    private readonly KernelLibrary _lib;
    internal RopeKernels(KernelLibrary lib) => _lib = lib;

    /// <summary>inv_freq[i] = base^(-2i/D) in double, stored as fp32; NTK: base' = base * factor^(D/(D-2)).
    /// Identical to the CPU reference (Engine.Cpu RopeParams.InverseFrequencies). Upload it once per model.</summary>
    public static float[] InverseFrequencies(int headDim, double theta, RopeScaling scaling = RopeScaling.None, double factor = 1.0)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"head dim must be even and positive, got {headDim}", nameof(headDim));
        double b = scaling == RopeScaling.Ntk ? theta * Math.Pow(factor, headDim / (headDim - 2.0)) : theta;
        var inv = new float[headDim / 2];
        for (int i = 0; i < inv.Length; i++) inv[i] = (float)(1.0 / Math.Pow(b, 2.0 * i / headDim));
        return inv;
    }

    /// <summary>The kernel's divisor for positions: the factor for linear scaling, else 1.</summary>
    public static float LinearFactor(RopeScaling scaling, double factor) => scaling == RopeScaling.Linear ? (float)factor : 1f;

    /// <summary>y = rope(x) (may alias). Row strides default to heads * headDim (packed).</summary>
    public void Forward(CudaStream s, DevicePtr output, DevicePtr input, DevicePtr invFreq, int batch, int seqLen, int heads, int headDim,
        long positionOffset = 0, float linearFactor = 1f, long inRowStride = 0, long outRowStride = 0) =>
        Launch("rope_forward", s, output, input, invFreq, batch, seqLen, heads, headDim, positionOffset, linearFactor, inRowStride, outRowStride);

    /// <summary>dx = inverse rotation of dy (may alias).</summary>
    public void Backward(CudaStream s, DevicePtr dx, DevicePtr dy, DevicePtr invFreq, int batch, int seqLen, int heads, int headDim,
        long positionOffset = 0, float linearFactor = 1f, long inRowStride = 0, long outRowStride = 0) =>
        Launch("rope_backward", s, dx, dy, invFreq, batch, seqLen, heads, headDim, positionOffset, linearFactor, inRowStride, outRowStride);

    private void Launch(string name, CudaStream s, DevicePtr output, DevicePtr input, DevicePtr invFreq, int batch, int seqLen, int heads,
        int headDim, long positionOffset, float linearFactor, long inRowStride, long outRowStride)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"head dim must be even and positive, got {headDim}", nameof(headDim));
        ArgumentOutOfRangeException.ThrowIfNegative(batch);
        ArgumentOutOfRangeException.ThrowIfNegative(seqLen);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(heads);
        if (linearFactor <= 0) throw new ArgumentOutOfRangeException(nameof(linearFactor), "linear factor must be positive");
        long row = (long)heads * headDim;
        var p = new RopeParams
        {
            Out = output,
            In = input,
            InvFreq = invFreq,
            Batch = batch,
            SeqLen = seqLen,
            Heads = heads,
            HeadDim = headDim,
            InRowStride = inRowStride == 0 ? row : inRowStride,
            OutRowStride = outRowStride == 0 ? row : outRowStride,
            PositionOffset = positionOffset,
            LinearFactor = linearFactor,
        };
        if (p.InRowStride < row || p.OutRowStride < row) throw new ArgumentException($"row strides must be >= heads * headDim = {row}");
        long pairs = (long)batch * seqLen * (headDim / 2);   // one thread per (token, pair): its sincos serves every head
        if (pairs == 0) return;
        _lib.Function(Module, name).Launch(s, new Dim3((uint)_lib.GridFor(pairs, KernelTraits.ElementwiseBlock)), KernelTraits.ElementwiseBlock, 0, p);
    }
}
