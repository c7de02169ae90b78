using Engine.Core;
using Engine.Core.Distributed;
using Engine.Parallel.Interop;
using static Engine.Parallel.Mpi.MpiLibrary;

namespace Engine.Parallel.Mpi;

/// <summary>
/// Collectives over Open MPI for CPU processes. Every MPI call runs on the one MPI thread (<see cref="MpiRuntime"/>)
/// in call order; the returned work completes when that call returned.
/// <list type="bullet">
/// <item>fp32: MPI_FLOAT with MPI_SUM/MAX/MIN (Open MPI's algorithm fixes the summation order: identical on every
/// rank, not necessarily rank order). bf16: uint16 words with user operators that add in fp32 and round each pairwise
/// step to nearest even. Avg: the sum divided by the world size afterwards (bf16: rounded again).</item>
/// <item>In-place reduce-scatter (output = input's slice Rank) receives into a scratch buffer: MPI's own in-place
/// convention puts the result at the front of the buffer instead.</item>
/// <item>Sends are buffered: the data is copied when Send is called and handed to MPI_Isend, so the send completes at
/// once and two ranks that send to each other before receiving (a pipeline's activations one way, gradients the
/// other) cannot deadlock; completed sends are reaped by later sends and all are waited for at dispose. Receives are
/// blocking MPI_Recv calls on the MPI thread (which also progress the outstanding sends).</item>
/// </list>
/// Create a world with <see cref="MpiWorld"/>.
/// </summary>
public sealed unsafe class MpiCommunicator : Communicator
{
    readonly MpiRuntime mpi;
    readonly bool isWorld;
    IntPtr comm;

    internal MpiCommunicator(MpiRuntime mpi, IntPtr comm, int rank, int size, string id, CommWatchdog? watchdog, Func<int, int> globalRank, bool isWorld)
        : base(rank, size, CpuBackend.Instance, id, watchdog, globalRank)
    {
        this.mpi = mpi; this.comm = comm; this.isWorld = isWorld;
    }

    public override string Kind => "mpi";

    /// <summary>The Open MPI version line (MPI_Get_library_version).</summary>
    public string LibraryVersion => mpi.Version;

    protected override ICommWork StartAllReduce(OpInfo op, Tensor buffer, ReduceOp reduce) => Post(mpi.Worker, op, () =>
    {
        using (var p = MpiRuntime.PinTensor(buffer))
            Check(NativeMethods.MPI_Allreduce((void*)NativeMethods.MPI_IN_PLACE, p.Ptr, (int)buffer.Numel, mpi.Type(buffer.DType), mpi.Op(buffer.DType, reduce), comm));
        if (reduce == ReduceOp.Avg) HostReduce.DivideInPlace(buffer, WorldSize);
    });

    protected override ICommWork StartReduceScatter(OpInfo op, Tensor input, Tensor output, ReduceOp reduce, bool inPlace) => Post(mpi.Worker, op, () =>
    {
        var target = inPlace ? CpuBackend.Instance.Empty([(int)output.Numel], output.DType) : output;
        try
        {
            using (var i = MpiRuntime.PinTensor(input))
            using (var o = MpiRuntime.PinTensor(target))
                Check(NativeMethods.MPI_Reduce_scatter_block(i.Ptr, o.Ptr, (int)output.Numel, mpi.Type(input.DType), mpi.Op(input.DType, reduce), comm));
            if (reduce == ReduceOp.Avg) HostReduce.DivideInPlace(target, WorldSize);
            if (inPlace) HostReduce.CopyRange(target, 0, output, 0, output.Numel);
        }
        finally
        {
            if (inPlace) target.Dispose();
        }
    });

    protected override ICommWork StartAllGather(OpInfo op, Tensor input, Tensor output, bool inPlace) => Post(mpi.Worker, op, () =>
    {
        var type = mpi.Type(input.DType);
        using var o = MpiRuntime.PinTensor(output);
        if (inPlace)
            Check(NativeMethods.MPI_Allgather((void*)NativeMethods.MPI_IN_PLACE, 0, type, o.Ptr, (int)input.Numel, type, comm));
        else
        {
            using var i = MpiRuntime.PinTensor(input);
            Check(NativeMethods.MPI_Allgather(i.Ptr, (int)input.Numel, type, o.Ptr, (int)input.Numel, type, comm));
        }
    });

    protected override ICommWork StartBroadcast(OpInfo op, Tensor buffer, int root) => Post(mpi.Worker, op, () =>
    {
        using var p = MpiRuntime.PinTensor(buffer);
        Check(NativeMethods.MPI_Bcast(p.Ptr, (int)buffer.Numel, mpi.Type(buffer.DType), root, comm));
    });

    readonly List<(IntPtr Request, byte[] Data)> sends = new();   // touched on the MPI thread only

    protected override ICommWork StartSend(OpInfo op, Tensor buffer, int peer)
    {
        // copy now, on the caller's thread: the caller may reuse its buffer as soon as Send returns work
        int size = buffer.DType.Size();
        var copy = GC.AllocateUninitializedArray<byte>(checked((int)(buffer.Numel * size)), pinned: true);
        using (var p = MpiRuntime.PinTensor(buffer))
            new ReadOnlySpan<byte>(p.Ptr, copy.Length).CopyTo(copy);
        return Post(mpi.Worker, op, () =>
        {
            ReapSends(wait: false);
            IntPtr request;
            fixed (byte* data = copy)
                Check(NativeMethods.MPI_Isend(data, (int)buffer.Numel, mpi.Type(buffer.DType), peer, 0, comm, out request));
            sends.Add((request, copy));   // the array is pinned (pinned object heap) until the request completes
        });
    }

    /// <summary>Frees the buffers of completed sends (all of them, waiting, when <paramref name="wait"/>). MPI thread only.</summary>
    void ReapSends(bool wait)
    {
        for (int i = sends.Count - 1; i >= 0; i--)
        {
            var r = sends[i].Request;
            int done = 1;
            if (wait) Check(NativeMethods.MPI_Wait(ref r, null));
            else Check(NativeMethods.MPI_Test(ref r, out done, null));
            if (done != 0) sends.RemoveAt(i);
        }
    }

    protected override ICommWork StartRecv(OpInfo op, Tensor buffer, int peer) => Post(mpi.Worker, op, () =>
    {
        using var p = MpiRuntime.PinTensor(buffer);
        var status = stackalloc long[8];   // MPI_Status (Open MPI: 24 bytes)
        var type = mpi.Type(buffer.DType);
        Check(NativeMethods.MPI_Recv(p.Ptr, (int)buffer.Numel, type, peer, 0, comm, status));
        Check(NativeMethods.MPI_Get_count(status, type, out int count));
        if (count != buffer.Numel)
            throw new CommException($"send/recv mismatch: rank {GlobalRank(peer)} sent {count} × {buffer.DType}, rank {GlobalRank(Rank)} expected {buffer.Numel}");
    });

    protected override void RunBarrier(OpInfo op) =>
        Post(mpi.Worker, op, () => Check(NativeMethods.MPI_Barrier(comm))).Wait();

    protected override void RunAllReduce(OpInfo op, double[] values, ReduceOp reduce) => Post(mpi.Worker, op, () =>
    {
        var mpiOp = reduce switch { ReduceOp.Max => mpi.OpMax, ReduceOp.Min => mpi.OpMin, _ => mpi.OpSum };
        fixed (double* p = values)
            Check(NativeMethods.MPI_Allreduce((void*)NativeMethods.MPI_IN_PLACE, p, values.Length, mpi.Double, mpiOp, comm));
        if (reduce == ReduceOp.Avg)
            for (int i = 0; i < values.Length; i++) values[i] /= WorldSize;
    }).Wait();

    protected override byte[] RunBroadcast(OpInfo op, byte[] data, int root)
    {
        byte[] result = data;
        Post(mpi.Worker, op, () => result = BroadcastBytes(mpi, comm, data, Rank == root, root)).Wait();
        return result;
    }

    /// <summary>Root's bytes on every rank: the length, then the bytes (MPI thread only).</summary>
    internal static byte[] BroadcastBytes(MpiRuntime mpi, IntPtr comm, byte[] data, bool isRoot, int root)
    {
        int length = isRoot ? data.Length : 0;
        Check(NativeMethods.MPI_Bcast(&length, 1, mpi.Int, root, comm));
        var result = isRoot ? data : new byte[length];
        fixed (byte* p = result)
            Check(NativeMethods.MPI_Bcast(p, length, mpi.Byte, root, comm));
        return result;
    }

    protected override ICommunicator RunSplit(OpInfo op, int color, int key)
    {
        MpiCommunicator? child = null;
        Post(mpi.Worker, op, () =>
        {
            Check(NativeMethods.MPI_Comm_split(comm, color, key, out IntPtr sub));
            Check(NativeMethods.MPI_Comm_rank(sub, out int rank));
            Check(NativeMethods.MPI_Comm_size(sub, out int size));
            // The job rank of every member, for messages that name ranks.
            var jobRanks = new int[size];
            int mine = GlobalRank(Rank);
            fixed (int* p = jobRanks)
                Check(NativeMethods.MPI_Allgather(&mine, 1, mpi.Int, p, 1, mpi.Int, sub));
            child = new MpiCommunicator(mpi, sub, rank, size, $"{Id}/split{op.Seq}.c{color}", Watchdog, r => jobRanks[r], isWorld: false);
        }).Wait();
        return child!;
    }

    protected override void DisposeCore()
    {
        if (sends.Count > 0 && Fault is null && Watchdog?.Fault is null)
            Post(mpi.Worker, new OpInfo(0, "send_drain", -1, 0), () => ReapSends(wait: true)).Wait();
        if (isWorld)
        {
            // MPI_Finalize synchronizes with every rank; after a fault a rank may be gone, so it is skipped (the process
            // is ending with an error anyway) and the MPI thread, perhaps stuck in a call to a dead rank, is left behind.
            if (Fault is null && Watchdog?.Fault is null)
            {
                mpi.Finalize(Watchdog?.Options.Timeout ?? TimeSpan.FromMinutes(5));
                mpi.Dispose();
            }
            else mpi.Abandon();
        }
        else if (Fault is null && !mpi.Finalized)
        {
            var c = comm;
            try { mpi.Worker.Post(() => NativeMethods.MPI_Comm_free(ref c)); }
            catch (ObjectDisposedException) { }
        }
    }
}
