using System.Collections.Concurrent;
using System.Diagnostics;
using Engine.Core.Distributed;

namespace Engine.Parallel;

/// <summary>
/// One issued operation as the watchdog and error messages see it. Collectives are numbered 1, 2, … per communicator
/// in call order (the same numbers on every rank); sends and receives have their own count and name a peer.
/// </summary>
public sealed record OpInfo(long Seq, string Name, int Peer, long Bytes)
{
    public bool IsCollective => Peer < 0;

    /// <summary>"collective #57 all_reduce" or "send #3 to rank 1".</summary>
    public string Describe(Func<int, int> globalRank) => IsCollective
        ? $"collective #{Seq} {Name}"
        : $"{Name} #{Seq} {(Name == "send" ? "to" : "from")} rank {globalRank(Peer)}";
}

/// <summary>
/// An operation in flight: what the communicator's in-flight queue and its watchdog track. The timeout runs from
/// <see cref="MarkStarted"/> (when a worker begins executing it, or when it is enqueued on a GPU stream).
/// </summary>
public abstract class CommWork(OpInfo info) : ICommWork
{
    long startedAt;

    public OpInfo Info { get; } = info;
    public abstract bool IsCompleted { get; }
    public abstract void Wait();

    /// <summary>Fails the operation (abort): waiters get <paramref name="error"/>; a no-op once completed.</summary>
    public abstract void Fail(CommException error);

    public void MarkStarted() => Interlocked.CompareExchange(ref startedAt, Stopwatch.GetTimestamp(), 0);

    /// <summary>How long it has been executing, or null while still queued behind earlier operations.</summary>
    public TimeSpan? RunningFor
    {
        get
        {
            long s = Interlocked.Read(ref startedAt);
            return s == 0 ? null : Stopwatch.GetElapsedTime(s);
        }
    }
}

/// <summary>An operation run by a host worker thread (threads, MPI): completes once, with or without an error.</summary>
public sealed class HostWork(OpInfo info) : CommWork(info)
{
    readonly ManualResetEventSlim done = new(false);
    CommException? error;
    int completed;

    public override bool IsCompleted => done.IsSet;

    /// <summary>First completion wins (the worker's, or an abort's).</summary>
    public bool Complete(CommException? e)
    {
        if (Interlocked.Exchange(ref completed, 1) != 0) return false;
        error = e;
        done.Set();
        return true;
    }

    public override void Fail(CommException error) => Complete(error);

    public override void Wait()
    {
        done.Wait();
        if (error is { } e) throw new CommException(e.Message, e);
    }
}

/// <summary>
/// A dedicated thread that runs its queue in FIFO order: the order every rank issued its operations is the order they
/// execute, and the caller overlaps its own compute with them. MPI requires one thread for all of its calls: its
/// communicators share one worker.
/// </summary>
public sealed class CommWorker : IDisposable
{
    readonly BlockingCollection<Action> queue = new();
    readonly Thread thread;

    public CommWorker(string name)
    {
        thread = new Thread(Loop) { IsBackground = true, Name = name };
        thread.Start();
    }

    public bool OnWorkerThread => Thread.CurrentThread == thread;

    public void Post(Action action)
    {
        try { queue.Add(action); }
        catch (InvalidOperationException) { throw new ObjectDisposedException(thread.Name, "the communicator was disposed"); }
    }

    /// <summary>Runs <paramref name="f"/> on the worker and returns its result (blocking; exceptions rethrown).</summary>
    public T Invoke<T>(Func<T> f) => Invoke(f, Timeout.InfiniteTimeSpan, () => "");

    /// <summary>As <see cref="Invoke{T}(Func{T})"/>, but a CommException with <paramref name="onTimeout"/>'s text when
    /// <paramref name="f"/> has not returned within <paramref name="timeout"/> (the worker is then left behind).</summary>
    public T Invoke<T>(Func<T> f, TimeSpan timeout, Func<string> onTimeout)
    {
        if (OnWorkerThread) return f();
        T result = default!;
        Exception? error = null;
        var done = new ManualResetEventSlim(false);   // not disposed: a timed-out call may still set it
        Post(() =>
        {
            try { result = f(); }
            catch (Exception e) { error = e; }
            finally { done.Set(); }
        });
        if (!done.Wait(timeout)) throw new CommException(onTimeout());
        if (error is not null) throw error is CommException c ? new CommException(c.Message, c) : error;
        return result;
    }

    void Loop()
    {
        foreach (var action in queue.GetConsumingEnumerable()) action();
    }

    /// <summary>Stops taking work; waits up to <paramref name="join"/> for the queue to drain (a worker stuck in a
    /// failed library call is left behind: it is a background thread).</summary>
    public void Stop(TimeSpan join)
    {
        queue.CompleteAdding();
        if (!OnWorkerThread) thread.Join(join);
    }

    public void Dispose() => Stop(TimeSpan.FromSeconds(30));
}
