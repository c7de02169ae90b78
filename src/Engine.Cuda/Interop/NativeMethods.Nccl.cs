using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Engine.Cuda.Interop;

/// <summary>ncclResult_t.</summary>
public enum NcclResult { Success = 0, UnhandledCudaError = 1, SystemError = 2, InternalError = 3, InvalidArgument = 4, InvalidUsage = 5, RemoteError = 6, InProgress = 7 }

/// <summary>ncclDataType_t.</summary>
public enum NcclDataType { Int8 = 0, Uint8 = 1, Int32 = 2, Uint32 = 3, Int64 = 4, Uint64 = 5, Float16 = 6, Float32 = 7, Float64 = 8, Bfloat16 = 9 }

/// <summary>ncclRedOp_t.</summary>
public enum NcclRedOp { Sum = 0, Prod = 1, Max = 2, Min = 3, Avg = 4 }

/// <summary>ncclUniqueId: 128 opaque bytes, created on rank 0 and sent to every rank out of band.</summary>
[InlineArray(128)]
public struct NcclUniqueId
{
    private byte _first;
}

/// <summary>NCCL (libnccl.so.2).</summary>
public static unsafe partial class NativeMethods
{
    [LibraryImport(LibNccl)] public static partial NcclResult ncclGetVersion(out int version);
    [LibraryImport(LibNccl)] public static partial NcclResult ncclGetUniqueId(out NcclUniqueId id);
    [LibraryImport(LibNccl)] public static partial NcclResult ncclCommInitRank(out IntPtr comm, int nranks, NcclUniqueId id, int rank);
    [LibraryImport(LibNccl)] public static partial NcclResult ncclCommDestroy(IntPtr comm);
    [LibraryImport(LibNccl)]
    public static partial NcclResult ncclAllReduce(ulong sendbuff, ulong recvbuff, nuint count, NcclDataType dataType, NcclRedOp op, IntPtr comm, IntPtr stream);
    [LibraryImport(LibNccl)]
    public static partial NcclResult ncclReduceScatter(ulong sendbuff, ulong recvbuff, nuint recvcount, NcclDataType dataType, NcclRedOp op, IntPtr comm, IntPtr stream);
    [LibraryImport(LibNccl)]
    public static partial NcclResult ncclAllGather(ulong sendbuff, ulong recvbuff, nuint sendcount, NcclDataType dataType, IntPtr comm, IntPtr stream);
    [LibraryImport(LibNccl)]
    public static partial NcclResult ncclBroadcast(ulong sendbuff, ulong recvbuff, nuint count, NcclDataType dataType, int root, IntPtr comm, IntPtr stream);
    [LibraryImport(LibNccl)] public static partial IntPtr ncclGetErrorString(NcclResult result);
    [LibraryImport(LibNccl)]
    public static partial NcclResult ncclSend(ulong sendbuff, nuint count, NcclDataType dataType, int peer, IntPtr comm, IntPtr stream);
    [LibraryImport(LibNccl)]
    public static partial NcclResult ncclRecv(ulong recvbuff, nuint count, NcclDataType dataType, int peer, IntPtr comm, IntPtr stream);
    [LibraryImport(LibNccl)] public static partial NcclResult ncclCommCount(IntPtr comm, out int count);
    [LibraryImport(LibNccl)] public static partial NcclResult ncclCommUserRank(IntPtr comm, out int rank);
    [LibraryImport(LibNccl)] public static partial NcclResult ncclGroupStart();
    [LibraryImport(LibNccl)] public static partial NcclResult ncclGroupEnd();
    /// <summary>Stops the communicator's pending work and frees it (instead of ncclCommDestroy) after an error.</summary>
    [LibraryImport(LibNccl)] public static partial NcclResult ncclCommAbort(IntPtr comm);
    [LibraryImport(LibNccl)] public static partial NcclResult ncclCommGetAsyncError(IntPtr comm, out NcclResult asyncError);
    /// <summary>NCCL ≥ 2.18; <paramref name="config"/> null inherits the parent's.</summary>
    [LibraryImport(LibNccl)] public static partial NcclResult ncclCommSplit(IntPtr comm, int color, int key, out IntPtr newcomm, IntPtr config);
    /// <summary>NCCL ≥ 2.13: the last error's text for this communicator.</summary>
    [LibraryImport(LibNccl)] public static partial IntPtr ncclGetLastError(IntPtr comm);
}
