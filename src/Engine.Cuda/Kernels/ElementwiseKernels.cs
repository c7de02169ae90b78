namespace Engine.Cuda.Kernels;

/// <summary>Launchers for native/elementwise.cu: flat buffers of n elements, outputs may alias inputs.</summary>
public sealed class ElementwiseKernels
{
    private const string Module = "elementwise";
    private readonly KernelLibrary _lib;
    internal ElementwiseKernels(KernelLibrary lib) => _lib = lib;

    private int Grid(long n) => _lib.GridFor((n + 7) / 8, KernelTraits.ElementwiseBlock);

    private unsafe void Launch3(string name, CudaStream s, DevicePtr a0, DevicePtr a1, DevicePtr a2, long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (n == 0) return;
        void** args = stackalloc void*[4] { &a0, &a1, &a2, &n };
        _lib.Function(Module, name).LaunchRaw(s, new Dim3((uint)Grid(n)), KernelTraits.ElementwiseBlock, 0, args);
    }

    private unsafe void Launch2(string name, CudaStream s, DevicePtr a0, DevicePtr a1, long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (n == 0) return;
        void** args = stackalloc void*[3] { &a0, &a1, &n };
        _lib.Function(Module, name).LaunchRaw(s, new Dim3((uint)Grid(n)), KernelTraits.ElementwiseBlock, 0, args);
    }

    private unsafe void Launch2F(string name, CudaStream s, DevicePtr a0, DevicePtr a1, float f, long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (n == 0) return;
        void** args = stackalloc void*[4] { &a0, &a1, &f, &n };
        _lib.Function(Module, name).LaunchRaw(s, new Dim3((uint)Grid(n)), KernelTraits.ElementwiseBlock, 0, args);
    }

    private unsafe void Launch1F(string name, CudaStream s, DevicePtr a0, float f, long n)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (n == 0) return;
        void** args = stackalloc void*[3] { &a0, &f, &n };
        _lib.Function(Module, name).LaunchRaw(s, new Dim3((uint)Grid(n)), KernelTraits.ElementwiseBlock, 0, args);
    }

    /// <summary>out(bf16) = round_nearest_even(in(fp32)).</summary>
    public void CastF32ToBf16(CudaStream s, DevicePtr outBf16, DevicePtr inF32, long n) => Launch2("cast_f32_to_bf16", s, outBf16, inF32, n);
    /// <summary>out(fp32) = in(bf16), exact.</summary>
    public void CastBf16ToF32(CudaStream s, DevicePtr outF32, DevicePtr inBf16, long n) => Launch2("cast_bf16_to_f32", s, outF32, inBf16, n);
    public void AddBf16(CudaStream s, DevicePtr output, DevicePtr a, DevicePtr b, long n) => Launch3("add_bf16", s, output, a, b, n);
    public void AddF32(CudaStream s, DevicePtr output, DevicePtr a, DevicePtr b, long n) => Launch3("add_f32", s, output, a, b, n);
    public void MulBf16(CudaStream s, DevicePtr output, DevicePtr a, DevicePtr b, long n) => Launch3("mul_bf16", s, output, a, b, n);
    public void ScaleBf16(CudaStream s, DevicePtr output, DevicePtr input, float scale, long n) => Launch2F("scale_bf16", s, output, input, scale, n);
    public void ScaleF32(CudaStream s, DevicePtr output, DevicePtr input, float scale, long n) => Launch2F("scale_f32", s, output, input, scale, n);
    /// <summary>y += alpha * x (fp32).</summary>
    public void AxpyF32(CudaStream s, DevicePtr y, DevicePtr x, float alpha, long n) => Launch2F("axpy_f32", s, y, x, alpha, n);
    /// <summary>acc(fp32) += g(bf16).</summary>
    public void AccumulateBf16F32(CudaStream s, DevicePtr acc, DevicePtr g, long n) => Launch2("accumulate_bf16_f32", s, acc, g, n);
    public void FillBf16(CudaStream s, DevicePtr output, float value, long n) => Launch1F("fill_bf16", s, output, value, n);
    public void FillF32(CudaStream s, DevicePtr output, float value, long n) => Launch1F("fill_f32", s, output, value, n);
}
