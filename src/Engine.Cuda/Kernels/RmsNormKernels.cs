namespace Engine.Cuda.Kernels;

/// <summary>Launchers for native/rmsnorm.cu (bf16 [rows, cols], fp32 rstd [rows]).</summary>
public sealed class RmsNormKernels
{
    private const string Module = "rmsnorm";
    private readonly KernelLibrary _lib;
    internal RmsNormKernels(KernelLibrary lib) => _lib = lib;

    /// <summary>Blocks of the backward's partial pass (fixed: dw is bitwise identical on every GPU).</summary>
    public static int PartialBlocks(int rows) => Math.Clamp(rows, 1, KernelTraits.PartialBlocks);
    /// <summary>Bytes of the fp32 dw partial buffer the backward needs.</summary>
    public static long PartialBytes(int rows, int cols) => (long)PartialBlocks(rows) * cols * sizeof(float);

    private static void CheckShape(int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
    }

    /// <summary>y = x * rstd * w; rstd saved.</summary>
    public void Forward(CudaStream s, DevicePtr y, DevicePtr rstd, DevicePtr x, DevicePtr w, int rows, int cols, float eps) =>
        ForwardResidual(s, y, rstd, DevicePtr.Null, x, DevicePtr.Null, w, rows, cols, eps);

    /// <summary>h = x + residual (written, may alias x), y = h * rstd * w; with residual null this is <see cref="Forward"/>.</summary>
    public void ForwardResidual(CudaStream s, DevicePtr y, DevicePtr rstd, DevicePtr h, DevicePtr x, DevicePtr residual, DevicePtr w,
        int rows, int cols, float eps)
    {
        CheckShape(rows, cols);
        if (!residual.IsNull && h.IsNull) throw new ArgumentException("h (the x + residual output) is required with a residual", nameof(h));
        if (rows == 0) return;
        var p = new RmsNormForwardParams { Y = y, Rstd = rstd, H = h, X = x, Residual = residual, W = w, Rows = rows, Cols = cols, Eps = eps };
        _lib.Function(Module, "rmsnorm_forward").Launch(s, new Dim3((uint)Math.Min(rows, 65535 * 16)), KernelTraits.RowBlock, 0, p);
    }

    /// <summary>
    /// dx = rstd (dy w - n mean(dy w n)) + dresidual (optional), dw = sum_rows dy n (fp32 into <paramref name="dw"/>,
    /// added when <paramref name="accumulateDw"/>; optionally also bf16 into <paramref name="dwBf16"/>).
    /// <paramref name="x"/> is the forward's normalized input (h when a residual was fused);
    /// <paramref name="dwPartial"/> holds <see cref="PartialBytes"/> bytes.
    /// </summary>
    public void Backward(CudaStream s, DevicePtr dx, DevicePtr dw, DevicePtr dy, DevicePtr x, DevicePtr w, DevicePtr rstd,
        int rows, int cols, DevicePtr dwPartial, bool accumulateDw, DevicePtr dresidual = default, DevicePtr dwBf16 = default)
    {
        CheckShape(rows, cols);
        if (dw.IsNull && dwBf16.IsNull) throw new ArgumentException("dw or dwBf16 is required", nameof(dw));
        int blocks = PartialBlocks(rows);
        if (rows > 0)
        {
            var p = new RmsNormBackwardParams { Dx = dx, DwPartial = dwPartial, Dy = dy, X = x, W = w, Rstd = rstd, DResidual = dresidual, Rows = rows, Cols = cols };
            int smem = checked(cols * sizeof(float));
            if (smem > _lib.Device.MaxSharedMemoryPerBlockOptin)
                throw new ArgumentOutOfRangeException(nameof(cols), $"cols {cols} needs {smem} bytes of shared memory; the device allows {_lib.Device.MaxSharedMemoryPerBlockOptin}");
            _lib.Function(Module, "rmsnorm_backward").Launch(s, new Dim3((uint)blocks), KernelTraits.RowBlock, smem, p);
        }
        else
        {
            s.Memset(dwPartial, 0, PartialBytes(rows, cols));
        }
        var r = new RmsNormDwReduceParams { Dw = dw, DwBf16 = dwBf16, Partial = dwPartial, Cols = cols, NumPartials = blocks, Accumulate = accumulateDw ? 1 : 0 };
        _lib.Function(Module, "rmsnorm_backward_dw_reduce").Launch(s, new Dim3((uint)((cols + 255) / 256)), 256, 0, r);
    }
}
