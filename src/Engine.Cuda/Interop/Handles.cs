using System.Runtime.InteropServices;

namespace Engine.Cuda.Interop;

// SafeHandles for every native object: deterministic release through Dispose, finalizer as the backstop.
// ReleaseHandle never throws; a failed release returns false, which the runtime reports through its own channel.

/// <summary>A retained primary context of one device (cuDevicePrimaryCtxRetain / _Release).</summary>
public sealed class CudaContextHandle : SafeHandle
{
    public int Device { get; }
    public CudaContextHandle(IntPtr ctx, int device) : base(IntPtr.Zero, true) { SetHandle(ctx); Device = device; }
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() => NativeMethods.cuDevicePrimaryCtxRelease_v2(Device) == CuResult.Success;
}

/// <summary>A loaded module (cuModuleLoadData / cuModuleUnload).</summary>
public sealed class CudaModuleHandle : SafeHandle
{
    public CudaModuleHandle(IntPtr module) : base(IntPtr.Zero, true) => SetHandle(module);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() => NativeMethods.cuModuleUnload(handle) == CuResult.Success;
}

/// <summary>A stream (cuStreamCreate / cuStreamDestroy_v2).</summary>
public sealed class CudaStreamHandle : SafeHandle
{
    public CudaStreamHandle(IntPtr stream) : base(IntPtr.Zero, true) => SetHandle(stream);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() => NativeMethods.cuStreamDestroy_v2(handle) == CuResult.Success;
}

/// <summary>An event (cuEventCreate / cuEventDestroy_v2).</summary>
public sealed class CudaEventHandle : SafeHandle
{
    public CudaEventHandle(IntPtr evt) : base(IntPtr.Zero, true) => SetHandle(evt);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() => NativeMethods.cuEventDestroy_v2(handle) == CuResult.Success;
}

/// <summary>One cuMemAlloc_v2 block (freed with cuMemFree_v2). The caching allocator owns these.</summary>
public sealed class DeviceMemoryHandle : SafeHandle
{
    public long Bytes { get; }
    public DeviceMemoryHandle(ulong ptr, long bytes) : base(IntPtr.Zero, true) { SetHandle((IntPtr)(long)ptr); Bytes = bytes; }
    public override bool IsInvalid => handle == IntPtr.Zero;
    public DevicePtr Ptr => new((ulong)(long)handle);
    protected override bool ReleaseHandle() => NativeMethods.cuMemFree_v2((ulong)(long)handle) == CuResult.Success;
}

/// <summary>Page-locked host memory (cuMemHostAlloc / cuMemFreeHost): the staging blocks of asynchronous uploads.</summary>
public sealed class PinnedHostHandle : SafeHandle
{
    public long Bytes { get; }
    public PinnedHostHandle(IntPtr host, long bytes) : base(IntPtr.Zero, true) { SetHandle(host); Bytes = bytes; }
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() => NativeMethods.cuMemFreeHost(handle) == CuResult.Success;
}

/// <summary>A captured CUDA graph (cuStreamEndCapture / cuGraphDestroy).</summary>
public sealed class CudaGraphHandle : SafeHandle
{
    public CudaGraphHandle(IntPtr graph) : base(IntPtr.Zero, true) => SetHandle(graph);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() => NativeMethods.cuGraphDestroy(handle) == CuResult.Success;
}

/// <summary>An instantiated CUDA graph (cuGraphInstantiateWithFlags / cuGraphExecDestroy).</summary>
public sealed class CudaGraphExecHandle : SafeHandle
{
    public CudaGraphExecHandle(IntPtr exec) : base(IntPtr.Zero, true) => SetHandle(exec);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() => NativeMethods.cuGraphExecDestroy(handle) == CuResult.Success;
}

/// <summary>A cuBLAS handle (cublasCreate_v2 / cublasDestroy_v2).</summary>
public sealed class CublasHandle : SafeHandle
{
    public CublasHandle(IntPtr h) : base(IntPtr.Zero, true) => SetHandle(h);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() => NativeMethods.cublasDestroy_v2(handle) == CublasStatus.Success;
}

/// <summary>An NCCL communicator (ncclCommInitRank / ncclCommDestroy).</summary>
public sealed class NcclCommHandle : SafeHandle
{
    public NcclCommHandle(IntPtr comm) : base(IntPtr.Zero, true) => SetHandle(comm);
    public override bool IsInvalid => handle == IntPtr.Zero;
    protected override bool ReleaseHandle() => NativeMethods.ncclCommDestroy(handle) == NcclResult.Success;
}
