namespace Engine.Cuda.Kernels;

/// <summary>Launchers for native/crossentropy.cu: logits [N, V] bf16 (rows rowStride apart), targets int32 [N].</summary>
public sealed class CrossEntropyKernels
{
    private const string Module = "crossentropy";
    public const int DefaultIgnoreIndex = -100;
    private readonly KernelLibrary _lib;
    internal CrossEntropyKernels(KernelLibrary lib) => _lib = lib;

    /// <summary>loss[i] = lse_i - x[i, t] + zLoss lse_i^2 + maxZLoss max_j(x[i, j])^2 (0 for ignored rows), lse[i] saved.</summary>
    public void Forward(CudaStream s, DevicePtr logits, DevicePtr loss, DevicePtr lse, DevicePtr targets, int rows, int vocab,
        float zLoss = 0f, int ignoreIndex = DefaultIgnoreIndex, long rowStride = 0, float maxZLoss = 0f) =>
        Launch("crossentropy_forward", s, logits, loss, lse, targets, DevicePtr.Null, 0f, rows, vocab, zLoss, ignoreIndex, rowStride, maxZLoss);

    /// <summary>logits overwritten in place by dlogits = d_i (softmax (1 + 2 zLoss lse_i) - onehot + 2 maxZLoss m_i onehot(argmax)),
    /// d_i = dlossScale * dloss[i] (dloss null: 1); zero rows for ignored targets. Reads the lse saved by <see cref="Forward"/>.</summary>
    public void Backward(CudaStream s, DevicePtr logits, DevicePtr lse, DevicePtr targets, DevicePtr dloss, float dlossScale, int rows, int vocab,
        float zLoss = 0f, int ignoreIndex = DefaultIgnoreIndex, long rowStride = 0, float maxZLoss = 0f) =>
        Launch("crossentropy_backward", s, logits, DevicePtr.Null, lse, targets, dloss, dlossScale, rows, vocab, zLoss, ignoreIndex, rowStride, maxZLoss);

    /// <summary>Forward and backward in one pass pair when the upstream gradient is known before the forward
    /// (loss is the graph output, typically dlossScale = 1 / valid targets): writes loss and lse, then dlogits in place.</summary>
    public void ForwardBackward(CudaStream s, DevicePtr logits, DevicePtr loss, DevicePtr lse, DevicePtr targets, DevicePtr dloss, float dlossScale,
        int rows, int vocab, float zLoss = 0f, int ignoreIndex = DefaultIgnoreIndex, long rowStride = 0, float maxZLoss = 0f) =>
        Launch("crossentropy_forward_backward", s, logits, loss, lse, targets, dloss, dlossScale, rows, vocab, zLoss, ignoreIndex, rowStride, maxZLoss);

    private void Launch(string name, CudaStream s, DevicePtr logits, DevicePtr loss, DevicePtr lse, DevicePtr targets, DevicePtr dloss,
        float dlossScale, int rows, int vocab, float zLoss, int ignoreIndex, long rowStride, float maxZLoss)
    {
        if (maxZLoss != 0f && vocab >= 1 << 24) throw new ArgumentOutOfRangeException(nameof(vocab), $"vocab {vocab}: the max-z argmax is exact below 2^24 columns");
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocab);
        if (rowStride == 0) rowStride = vocab;
        if (rowStride < vocab) throw new ArgumentOutOfRangeException(nameof(rowStride), $"row stride {rowStride} < vocab {vocab}");
        if (rows == 0) return;
        var p = new CrossEntropyParams
        {
            Logits = logits,
            Loss = loss,
            Lse = lse,
            Targets = targets,
            DLoss = dloss,
            Rows = rows,
            Vocab = vocab,
            RowStride = rowStride,
            ZLoss = zLoss,
            DLossScale = dlossScale,
            IgnoreIndex = ignoreIndex,
            MaxZLoss = maxZLoss,
        };
        _lib.Function(Module, name).Launch(s, new Dim3((uint)Math.Min(rows, 65535 * 16)), KernelTraits.RowBlock, 0, p);
    }
}
