using Engine.Core;

namespace Engine.Cuda.Backend;

/// <summary>
/// `--profile` on the GPU: each backend op between two CUDA events recorded on the backend's stream (the host
/// returns before the kernels finish, so a Stopwatch would time the launch, not the work). Events are pooled; pairs
/// are resolved on <see cref="Drain"/> (Profiler.Flush / Report), which waits for the last end event. The events'
/// resolution is about 0.5 µs. Built and checked against the interface here; not yet run on a GPU.
/// </summary>
public sealed class CudaEventClock(CudaStream stream) : IOpClock, IDisposable
{
    readonly Stack<CudaEvent> free = new();
    readonly Dictionary<int, CudaEvent> started = new();
    readonly List<(CudaEvent Start, CudaEvent End, Profiler.OpKey Key, long Bytes)> pending = [];
    readonly Lock gate = new();
    int next;

    public int Begin()
    {
        lock (gate)
        {
            var e = free.Count > 0 ? free.Pop() : new CudaEvent();
            e.Record(stream);
            started[++next] = e;
            return next;
        }
    }

    public void End(int token, Profiler.OpKey key, long bytes)
    {
        lock (gate)
        {
            if (!started.Remove(token, out var start)) return;
            var end = free.Count > 0 ? free.Pop() : new CudaEvent();
            end.Record(stream);
            pending.Add((start, end, key, bytes));
        }
    }

    public void Drain(Action<Profiler.OpKey, double, long> record)
    {
        lock (gate)
        {
            if (pending.Count == 0) return;
            pending[^1].End.Synchronize();   // one stream: every earlier pair has finished too
            foreach (var (start, end, key, bytes) in pending)
            {
                record(key, end.ElapsedSince(start) / 1e3, bytes);
                free.Push(start);
                free.Push(end);
            }
            pending.Clear();
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            foreach (var e in free) e.Dispose();
            foreach (var p in pending) { p.Start.Dispose(); p.End.Dispose(); }
            foreach (var e in started.Values) e.Dispose();
            free.Clear();
            pending.Clear();
            started.Clear();
        }
    }
}
