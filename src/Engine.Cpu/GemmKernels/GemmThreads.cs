using System.Runtime.ExceptionServices;

namespace Engine.Cpu.GemmKernels;

/// <summary>
/// A tiny fork/join pool for GEMM: dedicated background workers (so their thread-local packing buffers live
/// as long as the process), woken per call, with no allocation per call. Task 0 runs on the caller.
/// One GEMM uses the pool at a time; a concurrent caller (e.g. GEMMs issued from a Parallel.For) gets false
/// from <see cref="TryAcquire"/> / <see cref="TryRun"/> and runs its work serially on its own thread instead.
/// Tasks of one run must not throw past a barrier they share (GemmDriver.RunShared reports a failed buffer
/// allocation through its job instead of throwing).
/// </summary>
internal static unsafe class GemmThreads
{
    sealed class Worker
    {
        public readonly ManualResetEventSlim Start = new(false, 0);
        public int Task;
        public int Generation; // bumped by the caller per run this worker joins
    }

    /// <summary>
    /// How long a worker (after its task) and the caller (waiting for the join) poll before blocking in the kernel:
    /// Back-to-back GEMMs (a training step issues dozens) then start without a futex wake-up (~20-50 µs on this
    /// VM); polling yields the core (SpinWait without Sleep(1)), so other runnable threads are not starved.
    /// </summary>
    static readonly long s_pollTicks = System.Diagnostics.Stopwatch.Frequency / 10000; // 100 µs

    static readonly object s_gate = new();
    static readonly ManualResetEventSlim s_done = new(false, 0);
    static Worker[] s_workers = [];
    static delegate*<void*, int, void> s_fn;
    static void* s_ctx;
    static int s_pending;
    static ExceptionDispatchInfo? s_error;

    [ThreadStatic] static bool t_holdsGate;
    static float[]?[] s_shared = new float[]?[2];

    /// <summary>Takes the pool for this thread without blocking; false if another GEMM holds it.</summary>
    public static bool TryAcquire()
    {
        if (!Monitor.TryEnter(s_gate)) return false;
        t_holdsGate = true;
        return true;
    }

    public static void Release()
    {
        t_holdsGate = false;
        Monitor.Exit(s_gate);
    }

    /// <summary>Runs fn(ctx, t) for t in [0, tasks) on tasks threads; false (nothing run) if the pool is busy.</summary>
    public static bool TryRun(int tasks, delegate*<void*, int, void> fn, void* ctx)
    {
        if (!TryAcquire()) return false;
        try { Run(tasks, fn, ctx); }
        finally { Release(); }
        return true;
    }

    /// <summary>
    /// A 64-byte aligned buffer of at least floats floats, shared by the tasks of the current pooled run (slot 0
    /// or 1, for double buffering). Only the thread holding the pool may call this, before <see cref="Run"/>.
    /// </summary>
    public static float* SharedBuffer(int slot, long floats)
    {
        if (!t_holdsGate) throw new InvalidOperationException("GemmThreads.SharedBuffer needs the pool (TryAcquire).");
        return GemmDriver.Buffer(ref s_shared[slot], floats);
    }

    /// <summary>Runs fn(ctx, t) for t in [0, tasks) on tasks threads. The caller holds the pool.</summary>
    public static void Run(int tasks, delegate*<void*, int, void> fn, void* ctx)
    {
        EnsureWorkers(tasks - 1);
        s_fn = fn; s_ctx = ctx; s_error = null;
        s_pending = tasks - 1;
        s_done.Reset();
        for (int t = 1; t < tasks; t++)
        {
            Worker w = s_workers[t - 1];
            w.Task = t;
            Interlocked.Increment(ref w.Generation);
            w.Start.Set();
        }
        try { fn(ctx, 0); }
        finally
        {
            if (tasks > 1) PollThenWait(new Joined(), s_done, resetAfterWake: false);
        }
        s_error?.Throw();
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

    /// <summary>Polls until done() (yielding), then blocks on ev; whoever makes done() true sets ev afterwards.</summary>
    static void PollThenWait<TDone>(TDone done, ManualResetEventSlim ev, bool resetAfterWake) where TDone : struct, IDone
    {
        long until = System.Diagnostics.Stopwatch.GetTimestamp() + s_pollTicks;
        SpinWait spin = default;
        while (!done.Check())
        {
            if (System.Diagnostics.Stopwatch.GetTimestamp() < until) spin.SpinOnce(sleep1Threshold: -1);
            else
            {
                ev.Wait(); // a stale Set() only costs one more pass: the condition is re-checked
                if (resetAfterWake) ev.Reset();
            }
        }
    }

    interface IDone { bool Check(); }

    readonly struct Joined : IDone
    {
        public bool Check() => Volatile.Read(ref s_pending) == 0;
    }

    readonly struct NewGeneration(Worker w, int seen) : IDone
    {
        public bool Check() => Volatile.Read(ref w.Generation) != seen;
    }

    static void WorkerLoop(Worker w)
    {
        int seen = 0;
        while (true)
        {
            PollThenWait(new NewGeneration(w, seen), w.Start, resetAfterWake: true);
            seen = Volatile.Read(ref w.Generation);
            try { s_fn(s_ctx, w.Task); }
            catch (Exception e) { s_error = ExceptionDispatchInfo.Capture(e); }
            if (Interlocked.Decrement(ref s_pending) == 0) s_done.Set();
        }
    }
}
