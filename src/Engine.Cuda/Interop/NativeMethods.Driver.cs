using System.Runtime.InteropServices;

namespace Engine.Cuda.Interop;

/// <summary>CUDA driver API result codes (subset we name; any other value is reported through cuGetErrorName).</summary>
public enum CuResult
{
    Success = 0,
    InvalidValue = 1,
    OutOfMemory = 2,
    NotInitialized = 3,
    Deinitialized = 4,
    NoDevice = 100,
    InvalidDevice = 101,
    InvalidImage = 200,
    InvalidContext = 201,
    NoBinaryForGpu = 209,
    NotFound = 500,
    NotReady = 600,
    LaunchOutOfResources = 701,
    LaunchFailed = 719,
}

/// <summary>CUDA_MEMCPY2D (128 bytes on 64-bit): device-to-device copies set the memory types to 2 (CU_MEMORYTYPE_DEVICE).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CudaMemcpy2D
{
    public nuint SrcXInBytes, SrcY;
    public int SrcMemoryType;
    public IntPtr SrcHost;
    public ulong SrcDevice;
    public IntPtr SrcArray;
    public nuint SrcPitch;
    public nuint DstXInBytes, DstY;
    public int DstMemoryType;
    public IntPtr DstHost;
    public ulong DstDevice;
    public IntPtr DstArray;
    public nuint DstPitch;
    public nuint WidthInBytes, Height;

    public const int Size = 128, MemoryTypeDevice = 2;
}

/// <summary>CUdevice_attribute values used by the engine.</summary>
public enum CuDeviceAttribute
{
    MaxThreadsPerBlock = 1,
    MaxSharedMemoryPerBlock = 8,
    WarpSize = 10,
    MultiprocessorCount = 16,
    L2CacheSize = 38,
    ComputeCapabilityMajor = 75,
    ComputeCapabilityMinor = 76,
    MaxSharedMemoryPerBlockOptin = 97,
}

/// <summary>CUfunction_attribute values used by the engine.</summary>
public enum CuFunctionAttribute
{
    MaxThreadsPerBlock = 0,
    SharedSizeBytes = 1,
    NumRegs = 4,
    MaxDynamicSharedSizeBytes = 8,
}

/// <summary>CUDA driver API (libcuda.so.1). C names unchanged; pointers to device memory are <c>ulong</c> (CUdeviceptr).</summary>
public static unsafe partial class NativeMethods
{
    internal const string LibCuda = "libcuda";
    internal const string LibCublas = "libcublas";
    internal const string LibNccl = "libnccl";

    static NativeMethods() => NativeLibraryResolver.Install();

    [LibraryImport(LibCuda)] public static partial CuResult cuInit(uint flags);
    [LibraryImport(LibCuda)] public static partial CuResult cuDriverGetVersion(out int version);
    [LibraryImport(LibCuda)] public static partial CuResult cuDeviceGetCount(out int count);
    [LibraryImport(LibCuda)] public static partial CuResult cuDeviceGet(out int device, int ordinal);
    [LibraryImport(LibCuda)] public static partial CuResult cuDeviceGetAttribute(out int value, CuDeviceAttribute attribute, int device);
    [LibraryImport(LibCuda)] public static partial CuResult cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(LibCuda)] public static partial CuResult cuDeviceTotalMem_v2(out nuint bytes, int device);

    [LibraryImport(LibCuda)] public static partial CuResult cuCtxCreate_v2(out IntPtr context, uint flags, int device);
    [LibraryImport(LibCuda)] public static partial CuResult cuCtxDestroy_v2(IntPtr context);
    [LibraryImport(LibCuda)] public static partial CuResult cuDevicePrimaryCtxRetain(out IntPtr context, int device);
    [LibraryImport(LibCuda)] public static partial CuResult cuDevicePrimaryCtxRelease_v2(int device);
    [LibraryImport(LibCuda)] public static partial CuResult cuCtxSetCurrent(IntPtr context);
    [LibraryImport(LibCuda)] public static partial CuResult cuCtxSynchronize();

    [LibraryImport(LibCuda)] public static partial CuResult cuMemAlloc_v2(out ulong devicePtr, nuint bytes);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemFree_v2(ulong devicePtr);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemGetInfo_v2(out nuint free, out nuint total);
    /// <summary>Page-locked host memory (flags 0: portable to this context only), the source of asynchronous uploads.</summary>
    [LibraryImport(LibCuda)] public static partial CuResult cuMemHostAlloc(out IntPtr host, nuint bytes, uint flags);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemFreeHost(IntPtr host);
    /// <summary>CUDA 12 driver API: a TMA tensor map (128 bytes; <paramref name="tensorMap"/> 64-byte aligned). The enums
    /// are passed as int: data type bf16 = 9, interleave none = 0, swizzle 128B = 3, L2 promotion 128B = 2, OOB fill none = 0
    /// (zeros). Older drivers lack the symbol (EntryPointNotFoundException).</summary>
    [LibraryImport(LibCuda)]
    public static partial CuResult cuTensorMapEncodeTiled(void* tensorMap, int dataType, uint rank, ulong globalAddress, ulong* globalDim,
        ulong* globalStrides, uint* boxDim, uint* elementStrides, int interleave, int swizzle, int l2Promotion, int oobFill);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemcpyHtoD_v2(ulong dst, void* src, nuint bytes);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemcpyDtoH_v2(void* dst, ulong src, nuint bytes);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemcpyDtoD_v2(ulong dst, ulong src, nuint bytes);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemcpyHtoDAsync_v2(ulong dst, void* src, nuint bytes, IntPtr stream);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemcpyDtoHAsync_v2(void* dst, ulong src, nuint bytes, IntPtr stream);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemcpyDtoDAsync_v2(ulong dst, ulong src, nuint bytes, IntPtr stream);
    /// <summary>A 2-D (pitched) copy: column blocks of row-major matrices (IBackend.CopyColumns).</summary>
    [LibraryImport(LibCuda)] public static partial CuResult cuMemcpy2DAsync_v2(in CudaMemcpy2D copy, IntPtr stream);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemsetD8_v2(ulong dst, byte value, nuint count);
    [LibraryImport(LibCuda)] public static partial CuResult cuMemsetD8Async(ulong dst, byte value, nuint count, IntPtr stream);

    [LibraryImport(LibCuda)] public static partial CuResult cuStreamCreate(out IntPtr stream, uint flags);
    [LibraryImport(LibCuda)] public static partial CuResult cuStreamDestroy_v2(IntPtr stream);
    [LibraryImport(LibCuda)] public static partial CuResult cuStreamSynchronize(IntPtr stream);
    [LibraryImport(LibCuda)] public static partial CuResult cuStreamWaitEvent(IntPtr stream, IntPtr evt, uint flags);

    /// <summary>Stream capture into a CUDA graph (mode 2 = relaxed: allocations allowed while capturing), instantiate, replay.</summary>
    [LibraryImport(LibCuda)] public static partial CuResult cuStreamBeginCapture_v2(IntPtr stream, int mode);
    [LibraryImport(LibCuda)] public static partial CuResult cuStreamEndCapture(IntPtr stream, out IntPtr graph);
    [LibraryImport(LibCuda)] public static partial CuResult cuGraphInstantiateWithFlags(out IntPtr exec, IntPtr graph, ulong flags);
    [LibraryImport(LibCuda)] public static partial CuResult cuGraphLaunch(IntPtr exec, IntPtr stream);
    [LibraryImport(LibCuda)] public static partial CuResult cuGraphDestroy(IntPtr graph);
    [LibraryImport(LibCuda)] public static partial CuResult cuGraphExecDestroy(IntPtr exec);
    [LibraryImport(LibCuda)] public static partial CuResult cuGraphGetNodes(IntPtr graph, IntPtr* nodes, ref nuint count);

    [LibraryImport(LibCuda)] public static partial CuResult cuEventCreate(out IntPtr evt, uint flags);
    [LibraryImport(LibCuda)] public static partial CuResult cuEventDestroy_v2(IntPtr evt);
    [LibraryImport(LibCuda)] public static partial CuResult cuEventRecord(IntPtr evt, IntPtr stream);
    [LibraryImport(LibCuda)] public static partial CuResult cuEventSynchronize(IntPtr evt);
    [LibraryImport(LibCuda)] public static partial CuResult cuEventQuery(IntPtr evt);
    [LibraryImport(LibCuda)] public static partial CuResult cuEventElapsedTime(out float milliseconds, IntPtr start, IntPtr end);

    [LibraryImport(LibCuda)] public static partial CuResult cuModuleLoadData(out IntPtr module, void* image);
    [LibraryImport(LibCuda)] public static partial CuResult cuModuleUnload(IntPtr module);
    [LibraryImport(LibCuda, StringMarshalling = StringMarshalling.Utf8)]
    public static partial CuResult cuModuleGetFunction(out IntPtr function, IntPtr module, string name);
    [LibraryImport(LibCuda)] public static partial CuResult cuFuncSetAttribute(IntPtr function, CuFunctionAttribute attribute, int value);
    [LibraryImport(LibCuda)] public static partial CuResult cuFuncGetAttribute(out int value, CuFunctionAttribute attribute, IntPtr function);
    [LibraryImport(LibCuda)]
    public static partial CuResult cuLaunchKernel(IntPtr function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY,
        uint blockZ, uint sharedMemBytes, IntPtr stream, void** kernelParams, void** extra);

    [LibraryImport(LibCuda)] public static partial CuResult cuGetErrorName(CuResult error, out IntPtr name);
    [LibraryImport(LibCuda)] public static partial CuResult cuGetErrorString(CuResult error, out IntPtr text);
}
