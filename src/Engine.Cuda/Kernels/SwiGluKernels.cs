namespace Engine.Cuda.Kernels;

/// <summary>Launchers for native/swiglu.cu: h = silu(gate) * up over n = N*F elements.</summary>
public sealed class SwiGluKernels
{
    private const string Module = "swiglu";
    private readonly KernelLibrary _lib;
    internal SwiGluKernels(KernelLibrary lib) => _lib = lib;

    public unsafe void Forward(CudaStream s, DevicePtr h, DevicePtr gate, DevicePtr up, long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (n == 0) return;
        void** args = stackalloc void*[4] { &h, &gate, &up, &n };
        _lib.Function(Module, "swiglu_forward").LaunchRaw(s, new Dim3((uint)_lib.GridFor((n + 7) / 8, KernelTraits.ElementwiseBlock)), KernelTraits.ElementwiseBlock, 0, args);
    }

    /// <summary>dgate, dup (may alias gate, up) from dh.</summary>
    public unsafe void Backward(CudaStream s, DevicePtr dgate, DevicePtr dup, DevicePtr dh, DevicePtr gate, DevicePtr up, long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (n == 0) return;
        void** args = stackalloc void*[6] { &dgate, &dup, &dh, &gate, &up, &n };
        _lib.Function(Module, "swiglu_backward").LaunchRaw(s, new Dim3((uint)_lib.GridFor((n + 7) / 8, KernelTraits.ElementwiseBlock)), KernelTraits.ElementwiseBlock, 0, args);
    }

    /// <summary>h [rows, f] from gu [rows, 2f] whose rows are gate | up.</summary>
    public unsafe void FusedForward(CudaStream s, DevicePtr h, DevicePtr gu, long rows, long f)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(f);
        if (rows * f == 0) return;
        void** args = stackalloc void*[4] { &h, &gu, &rows, &f };
        _lib.Function(Module, "swiglu_fused_forward").LaunchRaw(s, new Dim3((uint)_lib.GridFor((rows * f + 7) / 8, KernelTraits.ElementwiseBlock)), KernelTraits.ElementwiseBlock, 0, args);
    }

    /// <summary>dgu [rows, 2f] (dgate | dup per row; may alias gu) from dh [rows, f].</summary>
    public unsafe void FusedBackward(CudaStream s, DevicePtr dgu, DevicePtr dh, DevicePtr gu, long rows, long f)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(f);
        if (rows * f == 0) return;
        void** args = stackalloc void*[5] { &dgu, &dh, &gu, &rows, &f };
        _lib.Function(Module, "swiglu_fused_backward").LaunchRaw(s, new Dim3((uint)_lib.GridFor((rows * f + 7) / 8, KernelTraits.ElementwiseBlock)), KernelTraits.ElementwiseBlock, 0, args);
    }
}
