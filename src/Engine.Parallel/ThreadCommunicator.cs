using System.Runtime.ExceptionServices;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Parallel.Store;

namespace Engine.Parallel;

/// <summary>
/// Ranks as threads of one process, for fast deterministic tests of everything above the communicator. Each rank has
/// a FIFO worker thread (operations complete in call order, overlapping the caller) and a watchdog over an
/// in-process store, like a real job.
/// <para><b>Algorithm.</b> A collective is a rendezvous of the ranks' workers: each posts its buffers, then reads the
/// others' directly. All-reduce is a reduce-scatter (rank r folds chunk r of every buffer, in rank order, into its
/// own) followed by an all-gather of the chunks, so the work is split across ranks; every element is reduced by
/// <see cref="HostReduce.Fold"/> — the same bits on every rank, and in all-reduce and reduce-scatter alike.</para>
/// </summary>
public sealed class ThreadCommunicator : Communicator
{
    readonly ThreadGroup group;
    readonly CommWorker worker;
    readonly bool ownsWorker;

    ThreadCommunicator(ThreadGroup group, int rank, string id, CommWatchdog watchdog, CommWorker worker, bool ownsWorker, Func<int, int> globalRank)
        : base(rank, group.Size, CpuBackend.Instance, id, watchdog, globalRank)
    {
        this.group = group; this.worker = worker; this.ownsWorker = ownsWorker;
    }

    public override string Kind => "threads";

    /// <summary>A world of <paramref name="worldSize"/> communicators sharing one rendezvous and store; give each to
    /// its own thread (<see cref="Run"/> does that).</summary>
    public static ThreadCommunicator[] CreateWorld(int worldSize, CommOptions? options = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        options ??= new CommOptions();
        var store = new InMemoryStore();
        var group = new ThreadGroup(worldSize);
        var comms = new ThreadCommunicator[worldSize];
        for (int r = 0; r < worldSize; r++)
        {
            var watchdog = new CommWatchdog(store, r, options);
            var worker = new CommWorker($"comm-threads-rank{r}");
            comms[r] = new ThreadCommunicator(group, r, "world", watchdog, worker, ownsWorker: true, x => x);
            comms[r].Own(watchdog);
        }
        return comms;
    }

    /// <summary>
    /// Runs <paramref name="body"/> as every rank of a new thread world and disposes it. A rank that throws aborts
    /// the world (the others fail instead of waiting for it); the first failure is rethrown. Ranks still running
    /// after <paramref name="limit"/> (default: twice the timeout plus a minute) are reported by a TimeoutException.
    /// </summary>
    public static void Run(int worldSize, Action<ICommunicator> body, CommOptions? options = null, TimeSpan? limit = null) =>
        Run(worldSize, c => { body(c); return 0; }, options, limit);

    /// <summary><see cref="Run(int, Action{ICommunicator}, CommOptions?, TimeSpan?)"/> returning each rank's result.</summary>
    public static T[] Run<T>(int worldSize, Func<ICommunicator, T> body, CommOptions? options = null, TimeSpan? limit = null)
    {
        options ??= new CommOptions();
        var comms = CreateWorld(worldSize, options);
        var results = new T[worldSize];
        var failures = new (long Order, Exception Error)?[worldSize];
        long order = 0;
        var threads = new Thread[worldSize];
        for (int r = 0; r < worldSize; r++)
        {
            int rank = r;
            threads[r] = new Thread(() =>
            {
                try { results[rank] = body(comms[rank]); }
                catch (Exception e)
                {
                    failures[rank] = (Interlocked.Increment(ref order), e);
                    comms[rank].Abort($"rank {rank} failed: {e.Message}");
                }
            })
            { IsBackground = true, Name = $"rank{rank}" };
            threads[r].Start();
        }
        var deadline = DateTime.UtcNow + (limit ?? options.Timeout * 2 + TimeSpan.FromMinutes(1));
        var stuck = new List<int>();
        for (int r = 0; r < worldSize; r++)
            if (!threads[r].Join(Max(TimeSpan.Zero, deadline - DateTime.UtcNow))) stuck.Add(r);
        foreach (var c in comms) c.Dispose();
        if (stuck.Count > 0) throw new TimeoutException($"thread world: rank(s) {string.Join(", ", stuck)} still running after the limit");
        var first = failures.Where(f => f is not null).Select(f => f!.Value).OrderBy(f => f.Order).FirstOrDefault();
        if (first.Error is not null) ExceptionDispatchInfo.Throw(first.Error);
        return results;
    }

    static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    // ---- collectives --------------------------------------------------------------------------------------------

    protected override ICommWork StartAllReduce(OpInfo op, Tensor buffer, ReduceOp reduce) => Post(worker, op, () =>
    {
        var slots = group.Arrive(Rank, new ThreadGroup.Call(op, buffer.DType, buffer.Numel, -1, reduce), buffer, null);
        var inputs = Tensors(slots, s => s.A!);
        long n = buffer.Numel;
        var (lo, count) = Chunk(n, Rank);
        HostReduce.Fold(inputs, lo, count, buffer, lo, reduce);
        group.Barrier();
        for (int q = 0; q < WorldSize; q++)
        {
            if (q == Rank) continue;
            var (qlo, qcount) = Chunk(n, q);
            HostReduce.CopyRange(inputs[q], qlo, buffer, qlo, qcount);
        }
        group.Barrier();
    });

    protected override ICommWork StartReduceScatter(OpInfo op, Tensor input, Tensor output, ReduceOp reduce, bool inPlace) => Post(worker, op, () =>
    {
        var slots = group.Arrive(Rank, new ThreadGroup.Call(op, input.DType, input.Numel, -1, reduce), input, output);
        HostReduce.Fold(Tensors(slots, s => s.A!), Rank * output.Numel, output.Numel, output, 0, reduce);
        group.Barrier();
    });

    protected override ICommWork StartAllGather(OpInfo op, Tensor input, Tensor output, bool inPlace) => Post(worker, op, () =>
    {
        var slots = group.Arrive(Rank, new ThreadGroup.Call(op, input.DType, input.Numel, -1, ReduceOp.Sum), input, output);
        long m = input.Numel;
        for (int q = 0; q < WorldSize; q++)
            if (!(q == Rank && inPlace)) HostReduce.CopyRange(slots[q].A!, 0, output, q * m, m);
        group.Barrier();
    });

    protected override ICommWork StartBroadcast(OpInfo op, Tensor buffer, int root) => Post(worker, op, () =>
    {
        var slots = group.Arrive(Rank, new ThreadGroup.Call(op, buffer.DType, buffer.Numel, root, ReduceOp.Sum), buffer, null);
        if (Rank != root) HostReduce.CopyRange(slots[root].A!, 0, buffer, 0, buffer.Numel);
        group.Barrier();
    });

    protected override ICommWork StartSend(OpInfo op, Tensor buffer, int peer)
    {
        // buffered: copied now, on the caller's thread (the caller may free or reuse its buffer once Send returned)
        var copy = CpuBackend.Instance.Empty([checked((int)buffer.Numel)], buffer.DType).Keep();
        HostReduce.CopyRange(buffer, 0, copy, 0, buffer.Numel);
        return Post(worker, op, () => group.Send(Rank, peer, copy));
    }

    protected override ICommWork StartRecv(OpInfo op, Tensor buffer, int peer) =>
        Post(worker, op, () => group.Recv(peer, Rank, buffer));

    protected override void RunBarrier(OpInfo op) => Post(worker, op, () =>
    {
        group.Arrive(Rank, new ThreadGroup.Call(op, DType.F32, 0, -1, ReduceOp.Sum), null, null);
        group.Barrier();
    }).Wait();

    protected override void RunAllReduce(OpInfo op, double[] values, ReduceOp reduce) => Post(worker, op, () =>
    {
        var slots = group.Arrive(Rank, new ThreadGroup.Call(op, DType.F32, values.Length, -1, reduce), null, null, values);
        var result = (double[])((double[])slots[0].Extra!).Clone();
        for (int q = 1; q < WorldSize; q++) HostReduce.Combine(result, (double[])slots[q].Extra!, reduce);
        if (reduce == ReduceOp.Avg)
            for (int i = 0; i < result.Length; i++) result[i] /= WorldSize;
        group.Barrier();
        result.CopyTo(values, 0);
    }).Wait();

    protected override byte[] RunBroadcast(OpInfo op, byte[] data, int root)
    {
        byte[] result = [];
        Post(worker, op, () =>
        {
            var slots = group.Arrive(Rank, new ThreadGroup.Call(op, DType.F32, -1, root, ReduceOp.Sum), null, null, data);
            result = (byte[])((byte[])slots[root].Extra!).Clone();
            group.Barrier();
        }).Wait();
        return result;
    }

    protected override ICommunicator RunSplit(OpInfo op, int color, int key)
    {
        ThreadCommunicator? child = null;
        Post(worker, op, () =>
        {
            var slots = group.Arrive(Rank, new ThreadGroup.Call(op, DType.F32, 0, -1, ReduceOp.Sum), null, null, (color, key));
            var members = Enumerable.Range(0, WorldSize)
                .Where(q => ((ValueTuple<int, int>)slots[q].Extra!).Item1 == color)
                .OrderBy(q => ((ValueTuple<int, int>)slots[q].Extra!).Item2).ThenBy(q => q)
                .ToArray();
            var sub = group.SubGroup(op.Seq, color, members.Length);
            var parentGlobal = GlobalRank;
            child = new ThreadCommunicator(sub, Array.IndexOf(members, Rank), $"{Id}/split{op.Seq}.c{color}", Watchdog!, worker,
                ownsWorker: false, r => parentGlobal(members[r]));
            group.Barrier();
            if (Rank == 0) group.ForgetSubGroups(op.Seq);
        }).Wait();
        return child!;
    }

    protected override void OnAbort(string message) => group.Abort(message);

    protected override void DisposeCore()
    {
        if (ownsWorker) worker.Stop(Fault is null ? TimeSpan.FromSeconds(30) : TimeSpan.FromSeconds(1));
    }

    // ---- helpers ------------------------------------------------------------------------------------------------

    (long Start, long Count) Chunk(long n, int q)
    {
        long lo = n * q / WorldSize, hi = n * (q + 1) / WorldSize;
        return (lo, hi - lo);
    }

    static Tensor[] Tensors(ThreadGroup.Slot[] slots, Func<ThreadGroup.Slot, Tensor> pick) => [.. slots.Select(pick)];
}

/// <summary>The rendezvous of one thread world (or split): posted buffers, a generation barrier, mailboxes, abort.</summary>
sealed class ThreadGroup(int size)
{
    /// <summary>What a rank called: every rank must have called the same (else a mismatch error on all of them).</summary>
    public readonly record struct Call(OpInfo Op, DType DType, long Count, int Root, ReduceOp Reduce)
    {
        public string Describe() =>
            $"#{Op.Seq} {Op.Name}({(Count >= 0 ? $"{Count} × {DType}" : "bytes")}{(Root >= 0 ? $", root {Root}" : "")}{(Op.Name.Contains("reduce") ? $", {Reduce}" : "")})";

        public bool Matches(Call o) => Op.Seq == o.Op.Seq && Op.Name == o.Op.Name && DType == o.DType && Count == o.Count && Root == o.Root && Reduce == o.Reduce;
    }

    public readonly record struct Slot(Call Call, Tensor? A, Tensor? B, object? Extra);

    sealed class Mail(Tensor data)
    {
        public Tensor Data { get; } = data;
    }

    readonly object gate = new();   // Monitor.Wait/PulseAll need a monitor object
    readonly Slot[] slots = new Slot[size];
    readonly Dictionary<(int Src, int Dst), Queue<Mail>> mailboxes = [];
    readonly Dictionary<(long Seq, int Color), ThreadGroup> subGroups = [];
    int arrived;
    long generation;
    string? abort;

    public int Size { get; } = size;

    /// <summary>Posts this rank's call, waits for every rank, checks they all called the same; returns all posts.</summary>
    public Slot[] Arrive(int rank, Call call, Tensor? a, Tensor? b, object? extra = null)
    {
        slots[rank] = new Slot(call, a, b, extra);
        Barrier();
        var posted = (Slot[])slots.Clone();
        for (int q = 0; q < Size; q++)
            if (!posted[q].Call.Matches(posted[0].Call))
            {
                string message = $"collective mismatch: rank 0 called {posted[0].Call.Describe()} but rank {q} called {posted[q].Call.Describe()}";
                Abort(message);
                throw new CommException(message);
            }
        return posted;
    }

    public void Barrier()
    {
        lock (gate)
        {
            if (abort is { } a) throw new CommException(a);
            if (++arrived == Size)
            {
                arrived = 0;
                generation++;
                Monitor.PulseAll(gate);
                return;
            }
            long g = generation;
            while (generation == g)
            {
                if (abort is { } reason) throw new CommException(reason);
                Monitor.Wait(gate);
            }
        }
    }

    /// <summary>A buffered send: <paramref name="data"/> (a private copy) goes into <paramref name="dst"/>'s mailbox and
    /// the sender goes on (as MPI_Isend of a private copy), so ranks that send to each other before receiving cannot
    /// deadlock.</summary>
    public void Send(int src, int dst, Tensor data)
    {
        var mail = new Mail(data);   // the sender's private copy, freed by the receiver
        lock (gate)
        {
            if (abort is { } a) throw new CommException(a);
            if (!mailboxes.TryGetValue((src, dst), out var box)) mailboxes[(src, dst)] = box = new Queue<Mail>();
            box.Enqueue(mail);
            Monitor.PulseAll(gate);
        }
    }

    public void Recv(int src, int dst, Tensor into)
    {
        Mail mail;
        lock (gate)
        {
            while (true)
            {
                if (abort is { } reason) throw new CommException(reason);
                if (mailboxes.TryGetValue((src, dst), out var box) && box.TryDequeue(out var m)) { mail = m; break; }
                Monitor.Wait(gate);
            }
        }
        string? error = mail.Data.DType != into.DType || mail.Data.Numel != into.Numel
            ? $"send/recv mismatch: rank {src} sent {mail.Data.Numel} × {mail.Data.DType}, rank {dst} expected {into.Numel} × {into.DType}"
            : null;
        if (error is null) HostReduce.CopyRange(mail.Data, 0, into, 0, into.Numel);
        mail.Data.Dispose();
        if (error is not null) throw new CommException(error);
    }

    public ThreadGroup SubGroup(long seq, int color, int members)
    {
        lock (gate)
        {
            if (!subGroups.TryGetValue((seq, color), out var g)) subGroups[(seq, color)] = g = new ThreadGroup(members);
            return g;
        }
    }

    public void ForgetSubGroups(long seq)
    {
        lock (gate)
            foreach (var k in subGroups.Keys.Where(k => k.Seq == seq).ToList()) subGroups.Remove(k);
    }

    public void Abort(string reason)
    {
        lock (gate)
        {
            abort ??= reason;
            Monitor.PulseAll(gate);
        }
    }
}
