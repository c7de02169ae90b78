namespace Engine.Core.Distributed;

/// <summary>Reduction applied by a collective. Avg divides the sum by the world size.</summary>
public enum ReduceOp { Sum, Avg, Max, Min }

/// <summary>A collective or point-to-point operation in flight. <see cref="Wait"/> blocks until it completed and
/// rethrows its failure (a <see cref="CommException"/> naming the operation and, where known, the rank at fault).</summary>
public interface ICommWork
{
    bool IsCompleted { get; }
    void Wait();
}

/// <summary>A failed or timed-out collective: the message names the operation, its sequence number and the rank(s)
/// at fault when the watchdog could tell.</summary>
public class CommException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// The ranks of one job and the collectives among them (NCCL on GPUs, Open MPI for CPU processes, threads in one
/// process for tests). Every rank must issue the same collectives in the same order. Buffers are tensors of
/// <see cref="Backend"/> (F32 or BF16; ranges of a flat buffer are views), contiguous, and must stay alive and
/// untouched until the returned work completed. Collectives are enqueued in call order and may run asynchronously:
/// the caller overlaps compute and calls <see cref="ICommWork.Wait"/> before it reads or writes the buffer again.
/// A world of one rank is valid everywhere: every collective is then a copy or nothing.
/// </summary>
public interface ICommunicator : IDisposable
{
    int Rank { get; }
    int WorldSize { get; }
    /// <summary>"threads", "mpi" or "nccl" ("single" for a world of one).</summary>
    string Kind { get; }
    /// <summary>The backend whose tensors the collectives take.</summary>
    IBackend Backend { get; }
    /// <summary>Bytes and calls per operation kind since creation (or the last <see cref="CommStats.Reset"/>).</summary>
    CommStats Stats { get; }

    /// <summary>In place: every rank's buffer becomes the reduction over ranks.</summary>
    ICommWork AllReduce(Tensor buffer, ReduceOp op = ReduceOp.Sum);
    /// <summary>input holds WorldSize equal slices; output (input.Numel / WorldSize elements) gets the reduction of
    /// slice Rank over ranks. output may be input's own slice Rank (in place).</summary>
    ICommWork ReduceScatter(Tensor input, Tensor output, ReduceOp op = ReduceOp.Sum);
    /// <summary>output (WorldSize × input.Numel) gets every rank's input in rank order. input may be output's own
    /// slice Rank (in place).</summary>
    ICommWork AllGather(Tensor input, Tensor output);
    /// <summary>In place: every rank's buffer becomes root's.</summary>
    ICommWork Broadcast(Tensor buffer, int root);
    ICommWork Send(Tensor buffer, int peer);
    ICommWork Recv(Tensor buffer, int peer);
    /// <summary>Blocks until every rank reached it.</summary>
    void Barrier();
    /// <summary>Blocking reduction of a few host values (metrics, counts, flags), in place.</summary>
    void AllReduce(Span<double> values, ReduceOp op = ReduceOp.Sum);
    /// <summary>Rank root's bytes on every rank (small control data: ids, addresses, layouts).</summary>
    byte[] Broadcast(ReadOnlySpan<byte> data, int root);
    /// <summary>A communicator over the ranks that passed the same color, ordered by key (collective).</summary>
    ICommunicator Split(int color, int key);
    /// <summary>Stops this rank's participation after an unrecoverable error: pending and future operations fail
    /// (on every rank where the implementation can reach them) instead of hanging.</summary>
    void Abort(string reason);
}

/// <summary>
/// Traffic accounting per operation kind: calls, payload bytes (the buffer sizes handed to the collective) and bus
/// bytes (what one rank sends in the bandwidth-optimal algorithm, nccl-tests' convention: all-reduce 2(N−1)/N ×
/// size, reduce-scatter and all-gather (N−1)/N × the full size, broadcast and send the size).
/// </summary>
public sealed class CommStats
{
    readonly Lock gate = new();
    readonly Dictionary<string, (long Calls, long PayloadBytes, long BusBytes)> ops = new(StringComparer.Ordinal);

    public void Record(string op, long payloadBytes, long busBytes)
    {
        lock (gate)
        {
            var c = ops.GetValueOrDefault(op);
            ops[op] = (c.Calls + 1, c.PayloadBytes + payloadBytes, c.BusBytes + busBytes);
        }
    }

    public IReadOnlyDictionary<string, (long Calls, long PayloadBytes, long BusBytes)> Snapshot()
    {
        lock (gate) return new Dictionary<string, (long, long, long)>(ops, StringComparer.Ordinal);
    }

    public long TotalBusBytes { get { lock (gate) return ops.Values.Sum(v => v.BusBytes); } }
    public long TotalPayloadBytes { get { lock (gate) return ops.Values.Sum(v => v.PayloadBytes); } }

    public void Reset() { lock (gate) ops.Clear(); }

    /// <summary>Bus bytes one rank sends for an operation over <paramref name="bytes"/> (the full buffer for
    /// all-reduce/broadcast/send; the full, all-ranks size for reduce-scatter and all-gather).</summary>
    public static long BusBytes(string op, long bytes, int worldSize) => worldSize <= 1 ? 0 : op switch
    {
        "all_reduce" => 2 * (worldSize - 1) * bytes / worldSize,
        "reduce_scatter" or "all_gather" => (worldSize - 1) * bytes / worldSize,
        _ => bytes,
    };
}

/// <summary>A completed operation (world size 1, or an implementation that ran it synchronously).</summary>
public sealed class CompletedWork : ICommWork
{
    public static readonly CompletedWork Instance = new();
    public bool IsCompleted => true;
    public void Wait() { }
}
