using System.Runtime.ExceptionServices;

namespace Engine.Cpu.GemmKernels;

/// <summary>
/// A tiny fork/join pool for GEMM: dedicated background workers (so their thread-local packing buffers live
/// as long as the process), woken per call, with no allocation per call. Task 0 runs on the caller.
/// One GEMM uses the pool at a time; a concurrent caller (e.g. GEMMs issued from a Parallel.For) gets false
/// from <see cref="TryRun"/> and runs its work serially on its own thread instead.
/// </summary>
internal static unsafe class GemmThreads
{
    sealed class Worker
    {
        public readonly ManualResetEventSlim Start = new(false, 200);
        public int Task;
    }

    static readonly object s_gate = new();
    static readonly ManualResetEventSlim s_done = new(false, 200);
    static Worker[] s_workers = [];
    static delegate*<void*, int, void> s_fn;
    static void* s_ctx;
    static int s_pending;
    static ExceptionDispatchInfo? s_error;

    /// <summary>Runs fn(ctx, t) for t in [0, tasks) on tasks threads; false (nothing run) if the pool is busy.</summary>
    public static bool TryRun(int tasks, delegate*<void*, int, void> fn, void* ctx)
    {
        if (!Monitor.TryEnter(s_gate)) return false;
        try
        {
            EnsureWorkers(tasks - 1);
            s_fn = fn; s_ctx = ctx; s_error = null;
            s_pending = tasks - 1;
            s_done.Reset();
            for (int t = 1; t < tasks; t++)
            {
                Worker w = s_workers[t - 1];
                w.Task = t;
                w.Start.Set();
            }
            try { fn(ctx, 0); }
            finally
            {
                if (tasks > 1) s_done.Wait();
            }
            s_error?.Throw();
            return true;
        }
        finally { Monitor.Exit(s_gate); }
    }

    static void EnsureWorkers(int count)
    {
        if (s_workers.Length >= count) return;
        var grown = new Worker[count];
        Array.Copy(s_workers, grown, s_workers.Length);
        for (int i = s_workers.Length; i < count; i++)
        {
            var w = new Worker();
            grown[i] = w;
            new Thread(() => WorkerLoop(w)) { IsBackground = true, Name = $"gemm-{i + 1}" }.Start();
        }
        s_workers = grown;
    }

    static void WorkerLoop(Worker w)
    {
        while (true)
        {
            w.Start.Wait();
            w.Start.Reset();
            try { s_fn(s_ctx, w.Task); }
            catch (Exception e) { s_error = ExceptionDispatchInfo.Capture(e); }
            if (Interlocked.Decrement(ref s_pending) == 0) s_done.Set();
        }
    }
}
