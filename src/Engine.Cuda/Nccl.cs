using System.Runtime.InteropServices;
using Engine.Cuda.Interop;

namespace Engine.Cuda;

/// <summary>
/// One rank's raw NCCL communicator: typed calls that enqueue on a given stream (NcclCommunicator, the
/// <see cref="Engine.Core.Distributed.ICommunicator"/>, is built on it).
/// </summary>
public sealed class NcclComm : IDisposable
{
    /// <summary>NCCL_VERSION(2,18,0): ncclCommSplit appears.</summary>
    public const int SplitVersion = 21800;

    private readonly NcclCommHandle _comm;
    private bool _aborted;
    public int Rank { get; }
    public int WorldSize { get; }

    /// <summary>The library's version code (NCCL_VERSION: major × 10000 + minor × 100 + patch).</summary>
    public static int Version()
    {
        Check.Nccl(NativeMethods.ncclGetVersion(out int v));
        return v;
    }

    public static string VersionText(int code) => $"{code / 10000}.{code / 100 % 100}.{code % 100}";

    /// <summary>Rank 0 creates the id and sends its 128 bytes to every rank (rendezvous is the caller's).</summary>
    public static NcclUniqueId CreateUniqueId()
    {
        Check.Nccl(NativeMethods.ncclGetUniqueId(out var id));
        return id;
    }

    /// <summary>Joins the communicator; blocks until all <paramref name="worldSize"/> ranks have joined.
    /// The device's context must be current on this thread.</summary>
    public NcclComm(NcclUniqueId id, int worldSize, int rank)
    {
        if (worldSize <= 0 || rank < 0 || rank >= worldSize) throw new ArgumentException($"rank {rank} outside world size {worldSize}");
        Check.Nccl(NativeMethods.ncclCommInitRank(out IntPtr comm, worldSize, id, rank));
        _comm = new NcclCommHandle(comm);
        Rank = rank; WorldSize = worldSize;
    }

    private NcclComm(IntPtr comm, int rank, int worldSize)
    {
        _comm = new NcclCommHandle(comm);
        Rank = rank; WorldSize = worldSize;
    }

    private IntPtr H => _comm.DangerousGetHandle();

    public void AllReduce(CudaStream s, DevicePtr send, DevicePtr recv, long count, NcclDataType type, NcclRedOp op = NcclRedOp.Sum) =>
        AllReduce(s.Handle, send, recv, count, type, op);

    public void AllReduce(IntPtr stream, DevicePtr send, DevicePtr recv, long count, NcclDataType type, NcclRedOp op) =>
        Check.Nccl(NativeMethods.ncclAllReduce(send.Address, recv.Address, (nuint)count, type, op, H, stream));

    /// <summary>recv gets this rank's reduced slice of <paramref name="recvCount"/> elements (send holds WorldSize slices).</summary>
    public void ReduceScatter(IntPtr stream, DevicePtr send, DevicePtr recv, long recvCount, NcclDataType type, NcclRedOp op) =>
        Check.Nccl(NativeMethods.ncclReduceScatter(send.Address, recv.Address, (nuint)recvCount, type, op, H, stream));

    /// <summary>recv (WorldSize * sendCount elements) gets every rank's send slice in rank order.</summary>
    public void AllGather(IntPtr stream, DevicePtr send, DevicePtr recv, long sendCount, NcclDataType type) =>
        Check.Nccl(NativeMethods.ncclAllGather(send.Address, recv.Address, (nuint)sendCount, type, H, stream));

    public void Broadcast(IntPtr stream, DevicePtr send, DevicePtr recv, long count, NcclDataType type, int root) =>
        Check.Nccl(NativeMethods.ncclBroadcast(send.Address, recv.Address, (nuint)count, type, root, H, stream));

    public void Send(IntPtr stream, DevicePtr buffer, long count, NcclDataType type, int peer) =>
        Check.Nccl(NativeMethods.ncclSend(buffer.Address, (nuint)count, type, peer, H, stream));

    public void Recv(IntPtr stream, DevicePtr buffer, long count, NcclDataType type, int peer) =>
        Check.Nccl(NativeMethods.ncclRecv(buffer.Address, (nuint)count, type, peer, H, stream));

    /// <summary>The asynchronous error state (Success, InProgress, or the failure of an enqueued operation).</summary>
    public NcclResult AsyncError()
    {
        if (_aborted) return NcclResult.Success;
        Check.Nccl(NativeMethods.ncclCommGetAsyncError(H, out var e));
        return e;
    }

    /// <summary>NCCL's text for the last error of this communicator (NCCL ≥ 2.13), or "".</summary>
    public string LastError()
    {
        try { return Marshal.PtrToStringUTF8(NativeMethods.ncclGetLastError(H)) ?? ""; }
        catch (EntryPointNotFoundException) { return ""; }
    }

    /// <summary>ncclCommSplit (collective over this communicator; NCCL ≥ 2.18).</summary>
    public NcclComm Split(int color, int key)
    {
        int v = Version();
        if (v < SplitVersion) throw new NotSupportedException($"splitting an NCCL communicator needs NCCL ≥ 2.18 (ncclCommSplit); this is NCCL {VersionText(v)}");
        Check.Nccl(NativeMethods.ncclCommSplit(H, color, key, out IntPtr sub, IntPtr.Zero));
        Check.Nccl(NativeMethods.ncclCommUserRank(sub, out int rank));
        Check.Nccl(NativeMethods.ncclCommCount(sub, out int count));
        return new NcclComm(sub, rank, count);
    }

    /// <summary>ncclCommAbort: pending kernels stop and the handle is freed (no ncclCommDestroy afterwards).</summary>
    public void Abort()
    {
        if (_aborted || _comm.IsInvalid || _comm.IsClosed) return;
        _aborted = true;
        NativeMethods.ncclCommAbort(H);
        _comm.SetHandleAsInvalid();
    }

    public void Dispose()
    {
        if (!_aborted) _comm.Dispose();
    }
}
