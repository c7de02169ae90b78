using Engine.Cpu.GemmKernels;

namespace Engine.Cpu;

/*
 * Row-major single-precision GEMM:  C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C,  op(X) = X or Xᵀ.
 *   transA: A stored [k, lda ≥ m], else [m, lda ≥ k].   transB: B stored [n, ldb ≥ k], else [k, ldb ≥ n].
 * Precision: fp32 inputs, fp32 FMA accumulation (k split into blocks of ≤ KC, each block added to C in fp32).
 * beta == 0 never reads C (C may hold NaN). Arguments are validated here once; GemmKernels/* trusts them.
 * Implementation: GotoBLAS/BLIS packed panels + register-tiled micro-kernel (GemmKernels/GemmTraits.cs).
 */

/// <summary>CPU SGEMM (blocked, packed, AVX-512/AVX2 micro-kernels, multithreaded) and its reference.</summary>
public static unsafe class Gemm
{
    static int s_maxThreads = Environment.ProcessorCount;

    /// <summary>Most threads one call uses (default: processor count). At least 1.</summary>
    public static int MaxThreads
    {
        get => s_maxThreads;
        set => s_maxThreads = value >= 1
            ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "Gemm.MaxThreads must be >= 1.");
    }

    /// <summary>The micro-kernel this process runs: "avx512-12x32", "avx2-6x16" or "scalar-4x4" (for logs and benchmarks).</summary>
    public static string Kernel => GemmTraits.Isa switch
    {
        GemmIsa.Avx512 => "avx512-12x32",
        GemmIsa.Avx2 => "avx2-6x16",
        _ => "scalar-4x4",
    };

    /// <summary>C = alpha·op(A)·op(B) + beta·C, row-major (see the file header for layouts).</summary>
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha, ReadOnlySpan<float> a, int lda,
        ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        Validate(transA, transB, m, n, k, a.Length, lda, 0, b.Length, ldb, 0, c.Length, ldc, 0, 1);
        if (m == 0 || n == 0) return;
        fixed (float* pa = a)
        fixed (float* pb = b)
        fixed (float* pc = c)
        {
            var g = Problem(transA, transB, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
            RunOne(g, MaxThreads);
        }
    }

    /// <summary>
    /// batchCount independent GEMMs; item i uses a + i·strideA, b + i·strideB, c + i·strideC (element strides;
    /// strideA/strideB may be 0 to share an operand, C items must not overlap).
    /// </summary>
    public static void SgemmStridedBatched(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, long strideA, ReadOnlySpan<float> b, int ldb, long strideB, float beta,
        Span<float> c, int ldc, long strideC, int batchCount)
    {
        Validate(transA, transB, m, n, k, a.Length, lda, strideA, b.Length, ldb, strideB, c.Length, ldc, strideC, batchCount);
        if (m == 0 || n == 0 || batchCount == 0) return;
        fixed (float* pa = a)
        fixed (float* pb = b)
        fixed (float* pc = c)
        {
            var g = Problem(transA, transB, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
            var job = new BatchJob { G = g, StrideA = strideA, StrideB = strideB, StrideC = strideC, Count = batchCount };
            int threads = Math.Min(MaxThreads, batchCount);
            double flops = 2.0 * m * n * k * batchCount;
            threads = (int)Math.Min(threads, Math.Max(1.0, flops / GemmTraits.MinFlopsPerThread));
            // Items spread over threads when that balances (each item then runs single-threaded);
            // otherwise items run one after another, each split across threads.
            bool spread = threads > 1 && (batchCount % threads == 0 || batchCount >= 4 * threads);
            if (spread && GemmThreads.TryRun(threads, &BatchTask, &job)) return;
            for (int i = 0; i < batchCount; i++) RunOne(job.Item(i), spread ? 1 : MaxThreads);
        }
    }

    /// <summary>Plain triple loop with double accumulation: the test reference. Same contract as <see cref="Sgemm"/>.</summary>
    public static void SgemmReference(bool transA, bool transB, int m, int n, int k, float alpha, ReadOnlySpan<float> a,
        int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        Validate(transA, transB, m, n, k, a.Length, lda, 0, b.Length, ldb, 0, c.Length, ldc, 0, 1);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double acc = 0;
                for (int p = 0; p < k; p++)
                {
                    float av = transA ? a[p * lda + i] : a[i * lda + p];
                    float bv = transB ? b[j * ldb + p] : b[p * ldb + j];
                    acc += (double)av * bv;
                }
                int ci = i * ldc + j;
                c[ci] = beta == 0f ? (float)(alpha * acc) : (float)(alpha * acc + (double)beta * c[ci]);
            }
    }

    // ---- dispatch ---------------------------------------------------------------------------------------------

    static GemmProblem Problem(bool transA, bool transB, int m, int n, int k, float alpha, float* a, int lda,
        float* b, int ldb, float beta, float* c, int ldc) => new()
        {
            TransA = transA,
            TransB = transB,
            M = m,
            N = n,
            K = k,
            Alpha = alpha,
            Beta = beta,
            A = a,
            Lda = lda,
            B = b,
            Ldb = ldb,
            C = c,
            Ldc = ldc,
        };

    /// <summary>One GEMM with m, n ≥ 1: degenerate cases, the thin path, or the blocked path on ≤ maxThreads.</summary>
    static void RunOne(in GemmProblem g, int maxThreads)
    {
        if (g.K == 0 || g.Alpha == 0f)
        {
            ScaleC(g);
            return;
        }
        // Thin shapes whose long dimension is contiguous for axpy (n) or dot (k) skip the zero-padded tiles.
        bool thin = (g.M < 4 && (g.TransB ? g.K : g.N) >= 16) || (g.N < 4 && g.TransB && !g.TransA && g.K >= 16);
        if (thin)
        {
            GemmSmall.Run(g);
            return;
        }
        double flops = 2.0 * g.M * g.N * g.K;
        int threads = (int)Math.Min(maxThreads, Math.Max(1.0, flops / GemmTraits.MinFlopsPerThread));
        // Threads own whole MR-row or NR-column panels. Split m unless n's panels divide clearly (> 2%) more evenly
        // (512³: 42.7 row panels → 22 per thread, 3% idle; 16 column panels → 8 each). Splitting n makes every
        // thread stream all of A with fewer column panels per A micro-panel: measured 5-10% slower on the tall
        // 2048x384 model shapes, whose 0.8% better balance does not pay for that.
        bool splitM = true;
        int units = 1;
        if (threads > 1)
        {
            double balanceM = Balance(g.M, GemmTraits.MR, threads), balanceN = Balance(g.N, GemmTraits.NR, threads);
            splitM = balanceM >= balanceN - 0.02;
            units = splitM ? (g.M + GemmTraits.MR - 1) / GemmTraits.MR : (g.N + GemmTraits.NR - 1) / GemmTraits.NR;
            threads = Math.Min(threads, units);
        }
        if (threads > 1 && GemmThreads.TryAcquire())
        {
            try
            {
                int kc = GemmDriver.KcNominal(g.K);
                long shared = splitM
                    ? (long)GemmDriver.RoundUp(Math.Min(GemmTraits.NC, g.N), GemmTraits.NR) * kc
                    : (long)GemmDriver.RoundUp(Math.Min(GemmTraits.MC, g.M), GemmTraits.MR) * kc;
                var job = new GemmParallelJob
                {
                    G = g,
                    SplitM = splitM,
                    Units = units,
                    Tasks = threads,
                    KcNominal = kc,
                    Shared0 = GemmThreads.SharedBuffer(0, shared + GemmPack.Slack),
                    Shared1 = GemmThreads.SharedBuffer(1, shared + GemmPack.Slack),
                    BarrierCount = threads,
                };
                GemmThreads.Run(threads, &SharedTask, &job);
                if (job.Failed != 0) throw new OutOfMemoryException("Gemm: a worker could not allocate its packing buffer.");
            }
            finally { GemmThreads.Release(); }
            return;
        }
        GemmDriver.Run(g);
    }

    /// <summary>Ideal over actual per-thread panel count (≤ 1) when extent is split into panels of unit over threads.</summary>
    static double Balance(int extent, int unit, int threads)
    {
        int panels = (extent + unit - 1) / unit;
        int perThread = (panels + threads - 1) / threads;
        return (double)extent / unit / threads / perThread;
    }

    static void ScaleC(in GemmProblem g)
    {
        for (int i = 0; i < g.M; i++)
        {
            var row = new Span<float>(g.C + (nint)i * g.Ldc, g.N);
            if (g.Beta == 0f) row.Clear();
            else if (g.Beta != 1f) System.Numerics.Tensors.TensorPrimitives.Multiply(row, g.Beta, row);
        }
    }

    static void SharedTask(void* ctx, int t) => GemmDriver.RunShared((GemmParallelJob*)ctx, t);

    struct BatchJob
    {
        public GemmProblem G;
        public long StrideA, StrideB, StrideC;
        public int Count, Next;

        public readonly GemmProblem Item(int i)
        {
            GemmProblem s = G;
            s.A += i * StrideA; s.B += i * StrideB; s.C += i * StrideC;
            return s;
        }
    }

    /// <summary>Items are claimed one at a time, so a thread slowed by other load simply takes fewer.</summary>
    static void BatchTask(void* ctx, int t)
    {
        ref BatchJob job = ref *(BatchJob*)ctx;
        for (int i; (i = Interlocked.Increment(ref job.Next) - 1) < job.Count;) RunOne(job.Item(i), 1);
    }

    // ---- validation (public boundary only) --------------------------------------------------------------------

    static void Validate(bool transA, bool transB, int m, int n, int k, int aLength, int lda, long strideA,
        int bLength, int ldb, long strideB, int cLength, int ldc, long strideC, int batchCount)
    {
        if (m < 0) throw new ArgumentOutOfRangeException(nameof(m), m, "m must be >= 0.");
        if (n < 0) throw new ArgumentOutOfRangeException(nameof(n), n, "n must be >= 0.");
        if (k < 0) throw new ArgumentOutOfRangeException(nameof(k), k, "k must be >= 0.");
        if (batchCount < 0) throw new ArgumentOutOfRangeException(nameof(batchCount), batchCount, "batchCount must be >= 0.");
        if (strideA < 0) throw new ArgumentOutOfRangeException(nameof(strideA), strideA, "strideA must be >= 0.");
        if (strideB < 0) throw new ArgumentOutOfRangeException(nameof(strideB), strideB, "strideB must be >= 0.");
        if (strideC < 0) throw new ArgumentOutOfRangeException(nameof(strideC), strideC, "strideC must be >= 0.");

        // Stored shapes: A [k, lda ≥ m] when transA else [m, lda ≥ k]; B [n, ldb ≥ k] when transB else [k, ldb ≥ n].
        CheckOperand("a", "lda", aLength, transA ? k : m, transA ? m : k, lda, transA ? "m (transA = true)" : "k (transA = false)",
            strideA, batchCount, m, n, k);
        CheckOperand("b", "ldb", bLength, transB ? n : k, transB ? k : n, ldb, transB ? "k (transB = true)" : "n (transB = false)",
            strideB, batchCount, m, n, k);
        long cItem = CheckOperand("c", "ldc", cLength, m, n, ldc, "n", strideC, batchCount, m, n, k);
        if (batchCount > 1 && strideC < cItem)
            throw new ArgumentOutOfRangeException(nameof(strideC), strideC,
                $"strideC ({strideC}) must be >= {cItem} (one [m={m}, n={n}] item with ldc={ldc}) so batch items of C do not overlap.");
    }

    /// <summary>Checks ld ≥ max(1, cols) and the span length; returns the elements one item spans.</summary>
    static long CheckOperand(string name, string ldName, int length, int rows, int cols, int ld, string colsName,
        long stride, int batchCount, int m, int n, int k)
    {
        if (ld < Math.Max(1, cols))
            throw new ArgumentOutOfRangeException(ldName, ld, $"{ldName} ({ld}) must be >= max(1, {colsName}) = {Math.Max(1, cols)}.");
        long item = rows == 0 || cols == 0 ? 0 : (long)(rows - 1) * ld + cols;
        long need = batchCount == 0 || item == 0 ? 0 : (batchCount - 1) * stride + item;
        if (length < need)
            throw new ArgumentException(
                $"{name} has {length} elements but needs {need}: stored [{rows}, {cols}] with {ldName}={ld}" +
                (batchCount > 1 ? $", {batchCount} items at stride {stride}" : "") + $" (m={m}, n={n}, k={k}).", name);
        return item;
    }
}
