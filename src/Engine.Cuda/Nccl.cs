using Engine.Cuda.Interop;

namespace Engine.Cuda;

/// <summary>An NCCL communicator for one rank; collectives are enqueued on the given stream.</summary>
public sealed class NcclCommunicator : IDisposable
{
    private readonly NcclCommHandle _comm;
    public int Rank { get; }
    public int WorldSize { get; }

    /// <summary>Rank 0 creates the id and sends its 128 bytes to every rank (rendezvous is the caller's).</summary>
    public static NcclUniqueId CreateUniqueId()
    {
        Check.Nccl(NativeMethods.ncclGetUniqueId(out var id));
        return id;
    }

    /// <summary>Joins the communicator; blocks until all <paramref name="worldSize"/> ranks have joined.
    /// The device's context must be current on this thread.</summary>
    public NcclCommunicator(NcclUniqueId id, int worldSize, int rank)
    {
        if (worldSize <= 0 || rank < 0 || rank >= worldSize) throw new ArgumentException($"rank {rank} outside world size {worldSize}");
        Check.Nccl(NativeMethods.ncclCommInitRank(out IntPtr comm, worldSize, id, rank));
        _comm = new NcclCommHandle(comm);
        Rank = rank; WorldSize = worldSize;
    }

    private IntPtr H => _comm.DangerousGetHandle();

    public void AllReduce(CudaStream s, DevicePtr send, DevicePtr recv, long count, NcclDataType type, NcclRedOp op = NcclRedOp.Sum) =>
        Check.Nccl(NativeMethods.ncclAllReduce(send.Address, recv.Address, (nuint)count, type, op, H, s.Handle));

    /// <summary>recv gets this rank's reduced slice of <paramref name="recvCount"/> elements (send holds WorldSize slices).</summary>
    public void ReduceScatter(CudaStream s, DevicePtr send, DevicePtr recv, long recvCount, NcclDataType type, NcclRedOp op = NcclRedOp.Sum) =>
        Check.Nccl(NativeMethods.ncclReduceScatter(send.Address, recv.Address, (nuint)recvCount, type, op, H, s.Handle));

    /// <summary>recv (WorldSize * sendCount elements) gets every rank's send slice in rank order.</summary>
    public void AllGather(CudaStream s, DevicePtr send, DevicePtr recv, long sendCount, NcclDataType type) =>
        Check.Nccl(NativeMethods.ncclAllGather(send.Address, recv.Address, (nuint)sendCount, type, H, s.Handle));

    public void Broadcast(CudaStream s, DevicePtr send, DevicePtr recv, long count, NcclDataType type, int root) =>
        Check.Nccl(NativeMethods.ncclBroadcast(send.Address, recv.Address, (nuint)count, type, root, H, s.Handle));

    public void Dispose() => _comm.Dispose();
}
