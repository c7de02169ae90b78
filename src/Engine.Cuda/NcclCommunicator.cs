using System.Runtime.InteropServices;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Cuda.Backend;
using Engine.Cuda.Interop;
using Engine.Parallel;

namespace Engine.Cuda;

/// <summary>
/// <see cref="ICommunicator"/> over NCCL, one rank per GPU.
/// <list type="bullet">
/// <item><b>Streams.</b> Collectives run on a dedicated communication stream, ordered after everything already on
/// the compute stream (<see cref="CudaBackend.Stream"/>) by an event; <see cref="ICommWork.Wait"/> makes the compute
/// stream wait for the operation's event — no host synchronization, the caller keeps enqueuing compute. Buffers must
/// outlive the operation (the caching allocator's reuse is ordered on the compute stream, which the Wait orders after
/// the collective).</item>
/// <item><b>Types.</b> F32 and BF16 (ncclBfloat16), Sum/Avg/Max/Min (ncclAvg: NCCL ≥ 2.10). Outputs are marked
/// written so fp32 masters' bf16 shadows are re-cast.</item>
/// <item><b>Failures.</b> The watchdog polls ncclCommGetAsyncError and each operation's completion event; on a timeout
/// or an asynchronous error it names the rank at fault from the heartbeats and calls ncclCommAbort, which ends the
/// stuck kernels; later calls fail with the fault.</item>
/// <item><b>Host operations</b> (Barrier, host-value all-reduce, byte broadcast, Split) wait on the host by polling
/// their event, so a timeout can still end them.</item>
/// </list>
/// Built against NCCL's C API; CPU tests cover library resolution and argument checks, the GPU tests run it at world
/// size 1 (tests/Engine.Cuda.Tests/NcclCommunicatorGpuTests.cs).
/// </summary>
public sealed class NcclCommunicator : Communicator
{
    private readonly CudaBackend _cuda;
    private readonly NcclComm _nccl;
    private readonly CudaStream _comm;
    private readonly CudaEvent _computeReady;
    private readonly Lock _enqueue = new();

    private NcclCommunicator(CudaBackend cuda, NcclComm nccl, string id, CommWatchdog? watchdog, Func<int, int> globalRank)
        : base(nccl.Rank, nccl.WorldSize, cuda, id, watchdog, globalRank)
    {
        _cuda = cuda; _nccl = nccl;
        cuda.Device.MakeCurrent();
        _comm = new CudaStream();
        _computeReady = new CudaEvent();
    }

    public override string Kind => "nccl";

    /// <summary>NCCL's version, e.g. "2.21.5".</summary>
    public static string LibraryVersion => NcclComm.VersionText(NcclComm.Version());

    /// <summary>
    /// The factory for <see cref="DistributedContext"/>: joins the job's NCCL world on this process's GPU (the
    /// launcher gives each rank its own device through CUDA_VISIBLE_DEVICES = local rank), the unique id shared by
    /// rank 0 through the bootstrap.
    /// </summary>
    public static ICommunicator Create(NcclBootstrap b)
    {
        RequireLibrary();
        if (b.Backend is not CudaBackend cuda) throw new ArgumentException($"NCCL needs the CUDA backend, not '{b.Backend.Name}'");
        CheckDevice(cuda, b.Info.LocalRank);
        cuda.Device.MakeCurrent();
        byte[] id = b.Info.Rank == 0 ? b.ShareId(IdBytes(NcclComm.CreateUniqueId())) : b.ShareId(null);
        NcclComm nccl;
        try { nccl = new NcclComm(IdFromBytes(id), b.Info.WorldSize, b.Info.Rank); }
        catch (CudaException e) { throw new CommException($"NCCL init failed on rank {b.Info.Rank}: {e.Message}", e); }
        var comm = new NcclCommunicator(cuda, nccl, "nccl", b.Watchdog, r => r);
        foreach (var r in b.Resources) comm.Own(r);
        return comm;
    }

    /// <summary>A world of one rank on <paramref name="cuda"/> (tests; every collective still runs through NCCL).</summary>
    public static NcclCommunicator CreateSingle(CudaBackend cuda, CommOptions? options = null)
    {
        RequireLibrary();
        cuda.Device.MakeCurrent();
        var watchdog = new CommWatchdog(new Engine.Parallel.Store.InMemoryStore(), 0, options ?? new CommOptions());
        var nccl = new NcclComm(NcclComm.CreateUniqueId(), 1, 0);
        var comm = new NcclCommunicator(cuda, nccl, "nccl", watchdog, r => r);
        comm.Own(watchdog);
        return comm;
    }

    /// <summary>NotSupportedException with the resolver's message ("NCCL not found (libnccl.so.*); looked in: ...").</summary>
    public static void RequireLibrary()
    {
        var probe = NativeLibraryResolver.Probe(CudaLibrary.Nccl, Environment.GetEnvironmentVariable, out _);
        if (!probe.Found) throw new NotSupportedException(probe.Error);
    }

    /// <summary>Several GPUs visible but this rank on a device other than its local rank's: two ranks would share one.</summary>
    private static void CheckDevice(CudaBackend cuda, int localRank)
    {
        if (NativeMethods.cuDeviceGetCount(out int count) != CuResult.Success || count <= 1) return;
        if (cuda.Device.Ordinal != localRank % count)
            throw new NotSupportedException(
                $"local rank {localRank} runs on CUDA device {cuda.Device.Ordinal} of {count}: give each rank its own GPU " +
                $"(engine launch sets CUDA_VISIBLE_DEVICES to the local rank; under mpirun/srun bind one GPU per task, e.g. srun --gpus-per-task=1)");
    }

    public static byte[] IdBytes(NcclUniqueId id) => MemoryMarshal.AsBytes(MemoryMarshal.CreateReadOnlySpan(ref id, 1)).ToArray();

    public static NcclUniqueId IdFromBytes(byte[] bytes)
    {
        if (bytes.Length != 128) throw new CommException($"NCCL unique id of {bytes.Length} bytes received, expected 128");
        var id = default(NcclUniqueId);
        bytes.CopyTo(MemoryMarshal.AsBytes(MemoryMarshal.CreateSpan(ref id, 1)));
        return id;
    }

    public static NcclDataType DataType(DType t) => t switch
    {
        DType.F32 => NcclDataType.Float32,
        DType.BF16 => NcclDataType.Bfloat16,
        _ => throw new ArgumentException($"NCCL collectives here take F32 or BF16, not {t}"),
    };

    public static NcclRedOp RedOp(ReduceOp op) => op switch
    {
        ReduceOp.Sum => NcclRedOp.Sum,
        ReduceOp.Avg => NcclRedOp.Avg,
        ReduceOp.Max => NcclRedOp.Max,
        ReduceOp.Min => NcclRedOp.Min,
        _ => throw new ArgumentOutOfRangeException(nameof(op)),
    };

    // ---- enqueueing ---------------------------------------------------------------------------------------------

    private static DevicePtr Ptr(Tensor t) => ((CudaStorage)t.Storage).Ptr.Offset(t.Offset, t.DType.Size());

    /// <summary>Orders the communication stream after the compute stream, enqueues <paramref name="call"/> on it and
    /// records its completion event; <paramref name="written"/> storages get a new write version.</summary>
    private NcclWork Enqueue(OpInfo op, Action<IntPtr> call, params Tensor[] written)
    {
        lock (_enqueue)
        {
            _cuda.Device.MakeCurrent();
            _computeReady.Record(_cuda.Stream);
            _comm.Wait(_computeReady);
            try { call(_comm.Handle); }
            catch (CudaException e) { throw new CommException($"{op.Describe(GlobalRank)} failed on rank {GlobalRank(Rank)}: {e.Message}", e); }
            var done = new CudaEvent();
            done.Record(_comm);
            foreach (var t in written) ((CudaStorage)t.Storage).MarkWritten();
            var work = new NcclWork(op, this, done);
            work.MarkStarted();
            Track(work);
            return work;
        }
    }

    protected override ICommWork StartAllReduce(OpInfo op, Tensor buffer, ReduceOp reduce) =>
        Enqueue(op, s => _nccl.AllReduce(s, Ptr(buffer), Ptr(buffer), buffer.Numel, DataType(buffer.DType), RedOp(reduce)), buffer);

    protected override ICommWork StartReduceScatter(OpInfo op, Tensor input, Tensor output, ReduceOp reduce, bool inPlace) =>
        Enqueue(op, s => _nccl.ReduceScatter(s, Ptr(input), Ptr(output), output.Numel, DataType(input.DType), RedOp(reduce)), output);

    protected override ICommWork StartAllGather(OpInfo op, Tensor input, Tensor output, bool inPlace) =>
        Enqueue(op, s => _nccl.AllGather(s, Ptr(input), Ptr(output), input.Numel, DataType(input.DType)), output);

    protected override ICommWork StartBroadcast(OpInfo op, Tensor buffer, int root) =>
        Enqueue(op, s => _nccl.Broadcast(s, Ptr(buffer), Ptr(buffer), buffer.Numel, DataType(buffer.DType), root), buffer);

    protected override ICommWork StartSend(OpInfo op, Tensor buffer, int peer) =>
        Enqueue(op, s => _nccl.Send(s, Ptr(buffer), buffer.Numel, DataType(buffer.DType), peer));

    protected override ICommWork StartRecv(OpInfo op, Tensor buffer, int peer) =>
        Enqueue(op, s => _nccl.Recv(s, Ptr(buffer), buffer.Numel, DataType(buffer.DType), peer), buffer);

    // ---- host operations: a device scratch buffer, then a host wait that a timeout can end ----------------------

    private unsafe T WithScratch<T>(long bytes, Func<DevicePtr, T> body)
    {
        _cuda.Device.MakeCurrent();
        Check.Cu(NativeMethods.cuMemAlloc_v2(out ulong p, (nuint)Math.Max(bytes, 16)));
        try { return body(new DevicePtr(p)); }
        finally
        {
            // Freed only once nothing on the communication stream can still use it.
            if (Fault is null) NativeMethods.cuStreamSynchronize(_comm.Handle);
            if (Fault is null) NativeMethods.cuMemFree_v2(p);
        }
    }

    private void HostWait(NcclWork work)
    {
        var spin = new SpinWait();
        while (!work.IsCompleted)
        {
            if (Fault is { } f) throw new CommException(f);
            if (spin.NextSpinWillYield) Thread.Sleep(1);
            else spin.SpinOnce();
        }
        work.ThrowIfFailed();
    }

    protected override void RunBarrier(OpInfo op) => WithScratch(4, p =>
    {
        _comm.Memset(p, 0, 4);
        HostWait(Enqueue(op, s => _nccl.AllReduce(s, p, p, 1, NcclDataType.Float32, NcclRedOp.Sum)));
        return 0;
    });

    protected override unsafe void RunAllReduce(OpInfo op, double[] values, ReduceOp reduce) => WithScratch(8L * values.Length, p =>
    {
        if (values.Length == 0) return 0;
        _comm.CopyToDevice<double>(p, values);
        HostWait(Enqueue(op, s => _nccl.AllReduce(s, p, p, values.Length, NcclDataType.Float64, RedOp(reduce))));
        _comm.CopyToHost<double>(values, p);
        return 0;
    });

    protected override byte[] RunBroadcast(OpInfo op, byte[] data, int root)
    {
        var length = new double[] { Rank == root ? data.Length : 0 };
        WithScratch(8, p =>
        {
            _comm.CopyToDevice<double>(p, length);
            HostWait(Enqueue(op, s => _nccl.Broadcast(s, p, p, 1, NcclDataType.Float64, root)));
            _comm.CopyToHost<double>(length, p);
            return 0;
        });
        var result = Rank == root ? data : new byte[(int)length[0]];
        if (result.Length == 0) return result;
        return WithScratch(result.Length, p =>
        {
            if (Rank == root) _comm.CopyToDevice<byte>(p, result);
            HostWait(Enqueue(op, s => _nccl.Broadcast(s, p, p, result.Length, NcclDataType.Uint8, root)));
            _comm.CopyToHost<byte>(result, p);
            return result;
        });
    }

    protected override ICommunicator RunSplit(OpInfo op, int color, int key)
    {
        _cuda.Device.MakeCurrent();
        NcclComm sub;
        try { sub = _nccl.Split(color, key); }
        catch (CudaException e) { throw new CommException($"{op.Describe(GlobalRank)} (ncclCommSplit) failed on rank {GlobalRank(Rank)}: {e.Message}", e); }
        // The members' job ranks, for messages naming ranks.
        var jobRanks = new double[sub.WorldSize];
        jobRanks[sub.Rank] = GlobalRank(Rank);
        var child = new NcclCommunicator(_cuda, sub, $"{Id}/split{op.Seq}.c{color}", Watchdog, r => (int)jobRanks[r]);
        child.AllReduce(jobRanks.AsSpan(), ReduceOp.Sum);   // zeros elsewhere: a sum is a gather
        return child;
    }

    public override string? PollHealth()
    {
        if (Fault is not null) return null;
        NcclResult e;
        try
        {
            _cuda.Device.MakeCurrent();
            e = _nccl.AsyncError();
        }
        catch (CudaException x) { return $"NCCL failed on rank {GlobalRank(Rank)}: {x.Message}"; }
        if (e is NcclResult.Success or NcclResult.InProgress) return null;
        string text = _nccl.LastError();
        return $"NCCL reported an asynchronous error on rank {GlobalRank(Rank)}: {e}{(text.Length > 0 ? ": " + text : "")}";
    }

    protected override void OnAbort(string message)
    {
        try
        {
            _cuda.Device.MakeCurrent();
            _nccl.Abort();
        }
        catch (Exception e) when (e is CudaException or DllNotFoundException) { }
    }

    protected override void DisposeCore()
    {
        _cuda.Device.MakeCurrent();
        if (Fault is null)
        {
            _comm.Synchronize();
            _nccl.Dispose();
        }
        _computeReady.Dispose();
        _comm.Dispose();
    }

    /// <summary>One enqueued NCCL operation: complete when its event on the communication stream has fired.</summary>
    private sealed class NcclWork(OpInfo info, NcclCommunicator owner, CudaEvent done) : CommWork(info)
    {
        private readonly Lock _gate = new();
        private CudaEvent? _event = done;
        private CommException? _error;
        private bool _completed;

        public override bool IsCompleted
        {
            get
            {
                lock (_gate)
                {
                    if (_completed) return true;
                    owner._cuda.Device.MakeCurrent();
                    var r = NativeMethods.cuEventQuery(_event!.Handle);
                    if (r == CuResult.NotReady) return false;
                    if (r != CuResult.Success) _error ??= new CommException($"{Info.Describe(owner.GlobalRank)}: {Check.Describe(r)}");
                    _completed = true;
                    _event.Dispose();
                    _event = null;
                    return true;
                }
            }
        }

        public override void Fail(CommException error)
        {
            lock (_gate)
            {
                _error ??= error;
                _completed = true;
            }
        }

        public void ThrowIfFailed()
        {
            lock (_gate)
                if (_error is { } e) throw new CommException(e.Message, e);
        }

        /// <summary>The compute stream waits for this operation (no host synchronization).</summary>
        public override void Wait()
        {
            lock (_gate)
            {
                if (_error is { } e) throw new CommException(e.Message, e);
                if (owner.Fault is { } f) throw new CommException(f);
                if (_event is null) return;   // already complete
                owner._cuda.Device.MakeCurrent();
                owner._cuda.Stream.Wait(_event);
            }
        }
    }
}
