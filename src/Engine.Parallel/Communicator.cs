using Engine.Core;
using Engine.Core.Distributed;

namespace Engine.Parallel;

/// <summary>
/// What every <see cref="ICommunicator"/> here shares: argument checks at the public boundary (once; the
/// implementations trust their inputs), collective numbering, traffic statistics, the in-flight queue the
/// <see cref="CommWatchdog"/> watches, and abort. Subclasses implement the <c>Start*</c>/<c>Run*</c> methods.
/// </summary>
public abstract class Communicator : ICommunicator
{
    readonly Lock gate = new();
    // Numbering and enqueueing are one step: callers on several threads of one rank cannot reorder the queue.
    readonly Lock issue = new();
    readonly Queue<CommWork> inFlight = new();
    readonly List<IDisposable> owned = [];
    long collectives, pointToPoint;
    string lastCollective = "";
    volatile string? fault;
    bool disposed;

    protected Communicator(int rank, int worldSize, IBackend backend, string id, CommWatchdog? watchdog, Func<int, int>? globalRank = null)
    {
        if (worldSize < 1 || rank < 0 || rank >= worldSize) throw new ArgumentException($"rank {rank} outside a world of {worldSize}");
        Rank = rank; WorldSize = worldSize; Backend = backend; Id = id; Watchdog = watchdog;
        GlobalRank = globalRank ?? (r => r);
        watchdog?.Register(this);
    }

    public int Rank { get; }
    public int WorldSize { get; }
    public abstract string Kind { get; }
    public IBackend Backend { get; }
    public CommStats Stats { get; } = new();

    /// <summary>Names this communicator in heartbeat keys and messages: "world", or "world/split3.c1" for color 1 of
    /// the split that was collective #3 of the world.</summary>
    public string Id { get; }

    /// <summary>The job rank (world rank) of rank <c>r</c> of this communicator: messages always name job ranks.</summary>
    public Func<int, int> GlobalRank { get; }

    public CommWatchdog? Watchdog { get; }

    /// <summary>The fault that stopped this communicator, or null.</summary>
    public string? Fault => fault;

    /// <summary>The last collective this rank issued: (number, name), for its heartbeat.</summary>
    public (long Seq, string Name) Progress
    {
        get { lock (gate) return (collectives, lastCollective); }
    }

    // ---- the public API: validated here, once ------------------------------------------------------------------

    public ICommWork AllReduce(Tensor buffer, ReduceOp op = ReduceOp.Sum)
    {
        CheckBuffer(buffer, nameof(buffer));
        CheckOp(op);
        long bytes = Bytes(buffer);
        lock (issue) return StartAllReduce(Issue("all_reduce", -1, bytes), buffer, op);
    }

    public ICommWork ReduceScatter(Tensor input, Tensor output, ReduceOp op = ReduceOp.Sum)
    {
        CheckBuffer(input, nameof(input));
        CheckBuffer(output, nameof(output));
        CheckOp(op);
        if (input.DType != output.DType) throw new ArgumentException($"reduce_scatter: input {input.Describe()} and output {output.Describe()} differ in dtype");
        if (input.Numel % WorldSize != 0 || output.Numel != input.Numel / WorldSize)
            throw new ArgumentException($"reduce_scatter: input {input.Describe()} must hold {WorldSize} slices of output's {output.Numel} elements ({WorldSize * output.Numel})");
        bool inPlace = IsSlice(output, input, Rank);
        if (!inPlace && Overlap(input, output))
            throw new ArgumentException($"reduce_scatter: output {output.Describe()} overlaps input {input.Describe()} but is not its slice {Rank}");
        long bytes = Bytes(input);
        lock (issue) return StartReduceScatter(Issue("reduce_scatter", -1, bytes), input, output, op, inPlace);
    }

    public ICommWork AllGather(Tensor input, Tensor output)
    {
        CheckBuffer(input, nameof(input));
        CheckBuffer(output, nameof(output));
        if (input.DType != output.DType) throw new ArgumentException($"all_gather: input {input.Describe()} and output {output.Describe()} differ in dtype");
        if (output.Numel != input.Numel * WorldSize)
            throw new ArgumentException($"all_gather: output {output.Describe()} must hold {WorldSize} × input's {input.Numel} elements ({WorldSize * input.Numel})");
        bool inPlace = IsSlice(input, output, Rank);
        if (!inPlace && Overlap(input, output))
            throw new ArgumentException($"all_gather: input {input.Describe()} overlaps output {output.Describe()} but is not its slice {Rank}");
        long bytes = Bytes(output);
        lock (issue) return StartAllGather(Issue("all_gather", -1, bytes), input, output, inPlace);
    }

    public ICommWork Broadcast(Tensor buffer, int root)
    {
        CheckBuffer(buffer, nameof(buffer));
        CheckRank(root, nameof(root));
        lock (issue) return StartBroadcast(Issue("broadcast", -1, Bytes(buffer)), buffer, root);
    }

    public ICommWork Send(Tensor buffer, int peer)
    {
        CheckBuffer(buffer, nameof(buffer));
        CheckPeer(peer);
        lock (issue) return StartSend(Issue("send", peer, Bytes(buffer)), buffer, peer);
    }

    public ICommWork Recv(Tensor buffer, int peer)
    {
        CheckBuffer(buffer, nameof(buffer));
        CheckPeer(peer);
        lock (issue) return StartRecv(Issue("recv", peer, Bytes(buffer)), buffer, peer);
    }

    public void Barrier()
    {
        lock (issue) RunBarrier(Issue("barrier", -1, 0));
    }

    public void AllReduce(Span<double> values, ReduceOp op = ReduceOp.Sum)
    {
        CheckOp(op);
        var copy = values.ToArray();
        lock (issue) RunAllReduce(Issue("all_reduce_host", -1, 8L * values.Length), copy, op);
        copy.CopyTo(values);
    }

    public byte[] Broadcast(ReadOnlySpan<byte> data, int root)
    {
        CheckRank(root, nameof(root));
        lock (issue) return RunBroadcast(Issue("broadcast_host", -1, data.Length), data.ToArray(), root);
    }

    public ICommunicator Split(int color, int key)
    {
        if (color < 0) throw new ArgumentOutOfRangeException(nameof(color), $"split color must be ≥ 0, got {color}");
        lock (issue) return RunSplit(Issue("split", -1, 0), color, key);
    }

    /// <summary>Stops this rank: the fault goes to the store (other ranks stop at their next watchdog tick) and every
    /// pending operation here fails with it.</summary>
    public void Abort(string reason)
    {
        string message = $"rank {GlobalRank(Rank)} aborted: {reason}";
        if (Watchdog is { } w) w.Report(message);
        else AbortLocal(message);
    }

    // ---- for implementations ------------------------------------------------------------------------------------

    protected abstract ICommWork StartAllReduce(OpInfo op, Tensor buffer, ReduceOp reduce);
    protected abstract ICommWork StartReduceScatter(OpInfo op, Tensor input, Tensor output, ReduceOp reduce, bool inPlace);
    protected abstract ICommWork StartAllGather(OpInfo op, Tensor input, Tensor output, bool inPlace);
    protected abstract ICommWork StartBroadcast(OpInfo op, Tensor buffer, int root);
    protected abstract ICommWork StartSend(OpInfo op, Tensor buffer, int peer);
    protected abstract ICommWork StartRecv(OpInfo op, Tensor buffer, int peer);
    protected abstract void RunBarrier(OpInfo op);
    protected abstract void RunAllReduce(OpInfo op, double[] values, ReduceOp reduce);
    protected abstract byte[] RunBroadcast(OpInfo op, byte[] data, int root);
    protected abstract ICommunicator RunSplit(OpInfo op, int color, int key);

    /// <summary>Wakes whatever this implementation may be blocked in (the thread rendezvous, ncclCommAbort).</summary>
    protected virtual void OnAbort(string message) { }

    /// <summary>An asynchronous failure the library reports (NCCL's ncclCommGetAsyncError), polled by the watchdog
    /// every heartbeat; null while healthy.</summary>
    public virtual string? PollHealth() => null;

    /// <summary>Releases the implementation's resources (after the watchdog let go of this communicator).</summary>
    protected virtual void DisposeCore() { }

    /// <summary>Resources disposed after this communicator, in reverse order (stores, servers, parent worlds).</summary>
    public void Own(IDisposable resource)
    {
        lock (gate) owned.Add(resource);
    }

    /// <summary>Adds <paramref name="work"/> to the in-flight queue (issue order) that the watchdog watches.</summary>
    protected void Track(CommWork work)
    {
        lock (gate)
        {
            while (inFlight.TryPeek(out var head) && head.IsCompleted) inFlight.Dequeue();
            inFlight.Enqueue(work);
        }
        if (fault is { } f) work.Fail(new CommException(f));
    }

    /// <summary>The oldest operation not yet completed (the only one that can be timing out: they complete in order).</summary>
    public CommWork? OldestPending()
    {
        lock (gate)
        {
            while (inFlight.TryPeek(out var head) && head.IsCompleted) inFlight.Dequeue();
            return inFlight.TryPeek(out var w) ? w : null;
        }
    }

    /// <summary>A host-thread operation: tracked, then run on <paramref name="worker"/> in FIFO order.</summary>
    protected HostWork Post(CommWorker worker, OpInfo op, Action run)
    {
        var work = new HostWork(op);
        Track(work);
        worker.Post(() =>
        {
            if (work.IsCompleted) return;   // failed by an abort while queued
            work.MarkStarted();
            try
            {
                run();
                work.Complete(null);
            }
            catch (Exception e)
            {
                work.Complete(e as CommException ?? new CommException($"{op.Describe(GlobalRank)} failed on rank {GlobalRank(Rank)}: {e.Message}", e));
            }
        });
        return work;
    }

    /// <summary>Marks this communicator failed: pending work fails with <paramref name="message"/>, new calls throw it.
    /// Called by the watchdog (timeouts, faults reported by other ranks) and by <see cref="Abort"/>.</summary>
    public void AbortLocal(string message)
    {
        CommWork[] pending;
        lock (gate)
        {
            if (fault is not null) return;
            fault = message;
            pending = [.. inFlight];
            inFlight.Clear();
        }
        var error = new CommException(message);
        foreach (var w in pending) w.Fail(error);
        OnAbort(message);
    }

    OpInfo Issue(string name, int peer, long bytes)
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (fault is { } f) throw new CommException(f);
            long seq;
            if (peer < 0)
            {
                seq = ++collectives;
                lastCollective = name;
            }
            else seq = ++pointToPoint;
            Stats.Record(name, bytes, name == "recv" || name.EndsWith("_host", StringComparison.Ordinal) ? 0 : CommStats.BusBytes(name, bytes, WorldSize));
            return new OpInfo(seq, name, peer, bytes);
        }
    }

    void CheckBuffer(Tensor t, string arg)
    {
        ArgumentNullException.ThrowIfNull(t, arg);
        if (!ReferenceEquals(t.Backend, Backend))
            throw new ArgumentException($"{arg}: {t.Describe()} is not a tensor of this communicator's backend ({Backend.Name})", arg);
        if (t.DType is not (DType.F32 or DType.BF16))
            throw new ArgumentException($"{arg}: {t.Describe()}: collectives take F32 or BF16 buffers", arg);
        if (t.Storage.IsDisposed) throw new ArgumentException($"{arg}: {t.Describe()} was freed (its scope ended)", arg);
    }

    static void CheckOp(ReduceOp op)
    {
        if (op is not (ReduceOp.Sum or ReduceOp.Avg or ReduceOp.Max or ReduceOp.Min))
            throw new ArgumentOutOfRangeException(nameof(op), $"unknown reduce op {op}");
    }

    void CheckRank(int r, string arg)
    {
        if (r < 0 || r >= WorldSize) throw new ArgumentOutOfRangeException(arg, $"{arg} {r} outside a world of {WorldSize}");
    }

    void CheckPeer(int peer)
    {
        CheckRank(peer, nameof(peer));
        if (peer == Rank) throw new ArgumentException($"peer {peer} is this rank", nameof(peer));
    }

    static long Bytes(Tensor t) => t.Numel * t.DType.Size();

    /// <summary>Whether <paramref name="part"/> is exactly slice <paramref name="index"/> of <paramref name="whole"/>.</summary>
    static bool IsSlice(Tensor part, Tensor whole, int index) =>
        ReferenceEquals(part.Storage, whole.Storage) && part.Offset == whole.Offset + index * part.Numel;

    static bool Overlap(Tensor a, Tensor b) =>
        ReferenceEquals(a.Storage, b.Storage) && a.Numel > 0 && b.Numel > 0 &&
        a.Offset < b.Offset + b.Numel && b.Offset < a.Offset + a.Numel;

    public void Dispose()
    {
        IDisposable[] resources;
        lock (gate)
        {
            if (disposed) return;
            disposed = true;
            resources = [.. owned];
        }
        Watchdog?.Unregister(this);
        DisposeCore();
        for (int i = resources.Length - 1; i >= 0; i--) resources[i].Dispose();
        GC.SuppressFinalize(this);
    }
}
