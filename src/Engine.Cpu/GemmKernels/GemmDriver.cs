using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Engine.Cpu.GemmKernels;

/// <summary>One validated row-major GEMM on raw pointers: C = alpha·op(A)·op(B) + beta·C.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct GemmProblem
{
    public bool TransA;   // A stored [k, lda] (true) or [m, lda] (false)
    public bool TransB;   // B stored [n, ldb] (true) or [k, ldb] (false)
    public int M, N, K;   // op(A) is [M, K], op(B) is [K, N], C is [M, N]
    public float Alpha, Beta;
    public float* A; public nint Lda;
    public float* B; public nint Ldb;
    public float* C; public nint Ldc;

    /// <summary>The sub-problem computing C[i0:i0+m, j0:j0+n] (same k, same operands shifted).</summary>
    public readonly GemmProblem Slice(int i0, int m, int j0, int n)
    {
        GemmProblem s = this;
        s.M = m; s.N = n;
        s.A = A + (TransA ? i0 : (nint)i0 * Lda);
        s.B = B + (TransB ? (nint)j0 * Ldb : j0);
        s.C = C + (nint)i0 * Ldc + j0;
        return s;
    }
}

/// <summary>A multithreaded GEMM: the problem, the split, the shared packing buffers and the barrier state.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct GemmParallelJob
{
    public GemmProblem G;
    public bool SplitM;                 // tasks own MR-row units of C (B shared) or NR-column units (A shared)
    public int Units, Tasks, KcNominal; // units of the split dimension, tasks (threads), k block size
    public float* Shared0, Shared1;     // double-buffered shared panels (B block of NC columns or A block of MC rows)
    public int BarrierCount, BarrierSense;
    public int Failed;                  // set by a task that could not allocate its private packing buffer
}

/// <summary>
/// The blocked single-thread driver (loop nest in <see cref="GemmTraits"/>). Packing buffers are per thread,
/// pinned, 64-byte aligned and grow-only, so a call allocates nothing after the first on a thread.
/// </summary>
internal static unsafe class GemmDriver
{
    [ThreadStatic] static float[]? t_bufA;
    [ThreadStatic] static float[]? t_bufB;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot from the first call: no tier-0 intrinsics
    public static void Run(in GemmProblem g)
    {
        int mr = GemmTraits.MR, nr = GemmTraits.NR;
        int kcNominal = KcNominal(g.K);
        int mcMax = Math.Min(GemmTraits.MC, RoundUp(g.M, mr));
        int ncMax = Math.Min(GemmTraits.NC, RoundUp(g.N, nr));
        float* bufA = Buffer(ref t_bufA, (long)mcMax * kcNominal + GemmPack.Slack);
        float* bufB = Buffer(ref t_bufB, (long)ncMax * kcNominal + GemmPack.Slack);
        float* tile = stackalloc float[mr * nr];

        for (int pc = 0; pc < g.K; pc += kcNominal)
        {
            int kc = Math.Min(kcNominal, g.K - pc);
            float beta = pc == 0 ? g.Beta : 1f;
            for (int ic = 0; ic < g.M; ic += GemmTraits.MC)
            {
                int mc = Math.Min(GemmTraits.MC, g.M - ic);
                GemmPack.PackA(g, ic, mc, pc, kc, bufA);
                for (int jc = 0; jc < g.N; jc += GemmTraits.NC)
                {
                    int nc = Math.Min(GemmTraits.NC, g.N - jc);
                    GemmPack.PackB(g, pc, kc, jc, nc, bufB);
                    Macro(mc, nc, kc, bufA, bufB, g.C + (nint)ic * g.Ldc + jc, g.Ldc, g.Alpha, beta, tile);
                }
            }
        }
    }

    /// <summary>
    /// K block size: k split into near-equal blocks of at most KC, rounded up to a multiple of 16 (KC is one) so
    /// the 16-wide transposing packers rarely fall back to their scalar tail (k = 1024: 352, 352, 320).
    /// </summary>
    public static int KcNominal(int k)
    {
        int kBlocks = (k + GemmTraits.KC - 1) / GemmTraits.KC;
        return Math.Min(GemmTraits.KC, RoundUp((k + kBlocks - 1) / kBlocks, 16));
    }

    /// <summary>
    /// Multithreaded driver, run as task t of job->Tasks. Each task owns a contiguous range of MR-row units of C
    /// (SplitM) or NR-column units (split n). Its own operand (A rows or B columns) is packed privately for the
    /// whole k block; the other operand is packed once, cooperatively (each task packs a share of the panels)
    /// into one of two shared buffers, then a barrier, then every task multiplies its range by it. Double
    /// buffering needs one barrier per shared block: passing barrier j means every task finished block j-1,
    /// whose buffer block j+1 then reuses.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunShared(GemmParallelJob* job, int t)
    {
        ref readonly GemmProblem g = ref job->G;
        int nt = job->Tasks, kcNominal = job->KcNominal;
        int mrFull = GemmTraits.MR, nrFull = GemmTraits.NR;
        int u0 = (int)((long)job->Units * t / nt), u1 = (int)((long)job->Units * (t + 1) / nt);
        float* tile = stackalloc float[mrFull * nrFull];
        int sense = 0, block = 0;
        // The private range is packed in `chunks` pieces of at most MaxPrivate{Rows,Cols}; every task uses the same
        // chunk count (from the largest range), so all tasks pass the same number of barriers.
        int maxUnits = (job->Units + nt - 1) / nt;
        if (job->SplitM)
        {
            int i0 = u0 * mrFull, myM = Math.Min(g.M, u1 * mrFull) - i0;
            int chunks = (maxUnits * mrFull + GemmTraits.MaxPrivateRows - 1) / GemmTraits.MaxPrivateRows;
            int chunkRows = RoundUp((myM + chunks - 1) / chunks, mrFull);
            float* pa = TryBuffer(job, ref t_bufA, (long)chunkRows * kcNominal + GemmPack.Slack);
            if (pa == null) myM = 0; // allocation failed: keep passing the barriers, the caller throws
            for (int pc = 0; pc < g.K; pc += kcNominal)
            {
                int kc = Math.Min(kcNominal, g.K - pc);
                float beta = pc == 0 ? g.Beta : 1f;
                for (int ch = 0; ch < chunks; ch++)
                {
                    int r0 = ch * chunkRows, rows = Math.Clamp(myM - r0, 0, chunkRows);
                    if (rows > 0) GemmPack.PackA(g, i0 + r0, rows, pc, kc, pa);
                    for (int jc = 0; jc < g.N; jc += GemmTraits.NC, block++)
                    {
                        int nc = Math.Min(GemmTraits.NC, g.N - jc);
                        float* pb = (block & 1) == 0 ? job->Shared0 : job->Shared1;
                        int panels = (nc + nrFull - 1) / nrFull;
                        int p0 = panels * t / nt, p1 = panels * (t + 1) / nt;
                        if (p1 > p0)
                            GemmPack.PackB(g, pc, kc, jc + p0 * nrFull, Math.Min(nc, p1 * nrFull) - p0 * nrFull, pb + (nint)p0 * nrFull * kc);
                        Barrier(job, ref sense);
                        if (rows > 0)
                            Macro(rows, nc, kc, pa, pb, g.C + (nint)(i0 + r0) * g.Ldc + jc, g.Ldc, g.Alpha, beta, tile);
                    }
                }
            }
        }
        else
        {
            int j0 = u0 * nrFull, myN = Math.Min(g.N, u1 * nrFull) - j0;
            int chunks = (maxUnits * nrFull + GemmTraits.MaxPrivateCols - 1) / GemmTraits.MaxPrivateCols;
            int chunkCols = RoundUp((myN + chunks - 1) / chunks, nrFull);
            float* pb = TryBuffer(job, ref t_bufB, (long)chunkCols * kcNominal + GemmPack.Slack);
            if (pb == null) myN = 0; // allocation failed: keep passing the barriers, the caller throws
            for (int pc = 0; pc < g.K; pc += kcNominal)
            {
                int kc = Math.Min(kcNominal, g.K - pc);
                float beta = pc == 0 ? g.Beta : 1f;
                for (int ch = 0; ch < chunks; ch++)
                {
                    int c0 = ch * chunkCols, cols = Math.Clamp(myN - c0, 0, chunkCols);
                    if (cols > 0) GemmPack.PackB(g, pc, kc, j0 + c0, cols, pb);
                    for (int ic = 0; ic < g.M; ic += GemmTraits.MC, block++)
                    {
                        int mc = Math.Min(GemmTraits.MC, g.M - ic);
                        float* pa = (block & 1) == 0 ? job->Shared0 : job->Shared1;
                        int panels = (mc + mrFull - 1) / mrFull;
                        int p0 = panels * t / nt, p1 = panels * (t + 1) / nt;
                        if (p1 > p0)
                            GemmPack.PackA(g, ic + p0 * mrFull, Math.Min(mc, p1 * mrFull) - p0 * mrFull, pc, kc, pa + (nint)p0 * mrFull * kc);
                        Barrier(job, ref sense);
                        for (int jc = 0; jc < cols; jc += GemmTraits.NC)
                        {
                            int nc = Math.Min(GemmTraits.NC, cols - jc);
                            Macro(mc, nc, kc, pa, pb + (nint)jc * kc, g.C + (nint)ic * g.Ldc + j0 + c0 + jc, g.Ldc, g.Alpha, beta, tile);
                        }
                    }
                }
            }
        }
    }

    /// <summary>Buffer, or null with job->Failed set: a task must never leave its peers waiting at a barrier.</summary>
    static float* TryBuffer(GemmParallelJob* job, ref float[]? slot, long n)
    {
        try { return Buffer(ref slot, n); }
        catch (OutOfMemoryException)
        {
            Volatile.Write(ref job->Failed, 1);
            return null;
        }
    }

    static readonly object s_barrierLock = new();
    static readonly long s_barrierSpinTicks = System.Diagnostics.Stopwatch.Frequency / 20000; // 50 µs

    /// <summary>
    /// Sense-reversing barrier over the job's tasks. Waiters poll for 50 µs (arrivals are normally a few µs
    /// apart), then block: on a loaded machine a spinning waiter would take the core from the very thread it
    /// waits for (measured: 2-thread 512³ fell below 1-thread speed with a pure spin barrier under a build).
    /// </summary>
    static void Barrier(GemmParallelJob* job, ref int sense)
    {
        sense ^= 1;
        if (Interlocked.Decrement(ref job->BarrierCount) == 0)
        {
            job->BarrierCount = job->Tasks;
            Volatile.Write(ref job->BarrierSense, sense);
            lock (s_barrierLock) Monitor.PulseAll(s_barrierLock);
            return;
        }
        long until = System.Diagnostics.Stopwatch.GetTimestamp() + s_barrierSpinTicks;
        SpinWait spin = default;
        while (Volatile.Read(ref job->BarrierSense) != sense)
        {
            if (System.Diagnostics.Stopwatch.GetTimestamp() < until) spin.SpinOnce(sleep1Threshold: -1);
            else
            {
                lock (s_barrierLock)
                    while (Volatile.Read(ref job->BarrierSense) != sense) Monitor.Wait(s_barrierLock);
            }
        }
    }

    /// <summary>All MR x NR tiles of one packed A block times one packed B block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Macro(int mc, int nc, int kc, float* pa, float* pb, float* c, nint ldc, float alpha, float beta, float* tile)
    {
        int mrFull = GemmTraits.MR, nrFull = GemmTraits.NR;
        for (int ir = 0; ir < mc; ir += mrFull)
        {
            int mr = Math.Min(mrFull, mc - ir);
            float* a = pa + (nint)ir * kc;
            float* crow = c + (nint)ir * ldc;
            for (int jr = 0; jr < nc; jr += nrFull)
            {
                int nr = Math.Min(nrFull, nc - jr);
                float* b = pb + (nint)jr * kc;
                if (mr == mrFull && nr == nrFull)
                {
                    GemmMicroKernels.Run(kc, a, b, crow + jr, ldc, alpha, beta);
                }
                else
                {
                    GemmMicroKernels.Run(kc, a, b, tile, nrFull, 1f, 0f);
                    MergeEdge(tile, nrFull, mr, nr, crow + jr, ldc, alpha, beta);
                }
            }
        }
    }

    /// <summary>c[0:mr, 0:nr] = alpha·tile + beta·c for a partial edge tile (beta == 0 does not read c).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void MergeEdge(float* tile, int tileLd, int mr, int nr, float* c, nint ldc, float alpha, float beta)
    {
        for (int i = 0; i < mr; i++)
        {
            float* t = tile + i * tileLd;
            float* ci = c + i * ldc;
            if (beta == 0f)
                for (int j = 0; j < nr; j++) ci[j] = alpha * t[j];
            else
                for (int j = 0; j < nr; j++) ci[j] = alpha * t[j] + beta * ci[j];
        }
    }

    internal static int RoundUp(int x, int to) => (x + to - 1) / to * to;

    /// <summary>A 64-byte aligned pointer into a pinned, grow-only thread-local array of at least n floats.</summary>
    internal static float* Buffer(ref float[]? slot, long n)
    {
        long need = n + 16;
        if (slot is null || slot.Length < need)
            slot = GC.AllocateUninitializedArray<float>((int)Math.Max(need, (slot?.Length ?? 0) * 5L / 4), pinned: true);
        nuint p = (nuint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(slot));
        return (float*)((p + 63) & ~(nuint)63);
    }
}
