namespace Engine.Cpu.Tests.Gemms;

/// <summary>Gemm.Sgemm / SgemmStridedBatched against the double-accumulating Gemm.SgemmReference.</summary>
public class GemmTests
{
    /// <summary>
    /// The one tolerance: |got − ref| ≤ 1e-5 · sqrt(k + 1) · max(1, max|ref|) elementwise, NaN/Inf must match.
    /// fp32 accumulation of k products of O(1) inputs has error ~ eps·sqrt(k)·|terms| (eps = 6e-8) in expectation;
    /// 1e-5 leaves ~100x headroom for unlucky blocks, yet a wrong element (an O(1) error) always fails.
    /// </summary>
    static void AssertClose(ReadOnlySpan<float> got, ReadOnlySpan<float> expect, int k, string what)
    {
        Assert.Equal(expect.Length, got.Length);
        float maxRef = 1f;
        foreach (float v in expect) if (float.IsFinite(v)) maxRef = Math.Max(maxRef, Math.Abs(v));
        double tol = 1e-5 * Math.Sqrt(k + 1) * maxRef;
        for (int i = 0; i < got.Length; i++)
        {
            float g = got[i], e = expect[i];
            bool ok = float.IsNaN(e) ? float.IsNaN(g) : float.IsInfinity(e) ? g == e : Math.Abs(g - e) <= tol;
            if (!ok) Assert.Fail($"{what}: first mismatch at flat index {i}: got {g}, expected {e} (tol {tol:G3}).");
        }
    }

    static float[] Random(Random rng, long count)
    {
        var x = new float[count];
        for (long i = 0; i < count; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }

    /// <summary>Runs Sgemm and the reference on identical copies of C, compares the whole C buffer (padding too).</summary>
    static void Check(Random rng, bool ta, bool tb, int m, int n, int k, float alpha, float beta, int padA = 0, int padB = 0,
        int padC = 0, bool nanC = false)
    {
        int lda = (ta ? m : k) + padA, ldb = (tb ? k : n) + padB, ldc = n + padC;
        lda = Math.Max(1, lda); ldb = Math.Max(1, ldb); ldc = Math.Max(1, ldc);
        float[] a = Random(rng, (long)(ta ? k : m) * lda);
        float[] b = Random(rng, (long)(tb ? n : k) * ldb);
        float[] c = Random(rng, (long)m * ldc);
        if (nanC) Array.Fill(c, float.NaN);
        float[] expect = (float[])c.Clone();
        if (nanC)
            for (int i = 0; i < m; i++) Array.Fill(expect, 0f, i * ldc, n); // the reference multiplies; C must not be read
        Gemm.SgemmReference(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, expect, ldc);
        Gemm.Sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        if (nanC)
            for (int i = 0; i < m; i++)
                for (int j = n; j < ldc; j++) expect[i * ldc + j] = float.NaN; // padding stays untouched
        AssertClose(c, expect, k, $"ta={ta} tb={tb} m={m} n={n} k={k} alpha={alpha} beta={beta} pads={padA},{padB},{padC}");
    }

    public static TheoryData<bool, bool, int, int, int> Shapes()
    {
        var data = new TheoryData<bool, bool, int, int, int>();
        (int m, int n, int k)[] shapes =
        [
            (1, 1, 1), (5, 7, 3), (12, 32, 16), (13, 33, 17), (24, 64, 256), (37, 70, 61),
            (100, 67, 500),   // two k blocks (KC = 384)
            (1201, 40, 20),   // two m blocks (single thread)
            // 2 threads (2·m·n·k ≥ 8e6): split m / split n, odd unit counts, several shared blocks per k block
            (200, 160, 130),  // split m, 17 row units
            (1000, 800, 20),  // split m, B shared in 3 column blocks (double buffer reused)
            (40, 400, 400),   // split n, two k blocks
            (9240, 40, 12),   // split m, 4620 rows per thread packed in 2 pieces (MaxPrivateRows 4608)
            (40, 9300, 12),   // split n, 4650 columns per thread packed in 2 pieces (MaxPrivateCols 4608)
            (3, 50, 40), (50, 3, 40), // thin: unpacked path
        ];
        foreach (var (m, n, k) in shapes)
            foreach (bool ta in new[] { false, true })
                foreach (bool tb in new[] { false, true })
                    data.Add(ta, tb, m, n, k);
        return data;
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Sgemm_MatchesReference_AllTransposes(bool ta, bool tb, int m, int n, int k)
    {
        var rng = new Random(m * 7919 + n * 131 + k * 17 + (ta ? 1 : 0) + (tb ? 2 : 0));
        Check(rng, ta, tb, m, n, k, 1f, 0f);
        Check(rng, ta, tb, m, n, k, -0.5f, 1.5f, padA: 3, padB: 5, padC: 7);
    }

    [Theory]
    [InlineData(1)] // serial blocked driver on sizes that would otherwise be threaded
    [InlineData(3)]
    [InlineData(4)] // 1160 x 1280: split n (40 column panels / 4), A shared in 2 row blocks of MC
    public void Sgemm_OtherThreadCounts_MatchReference(int threads)
    {
        // Gemm.MaxThreads is process-wide; only this class calls Gemm in this test process, one test at a time.
        int saved = Gemm.MaxThreads;
        Gemm.MaxThreads = threads;
        try
        {
            var rng = new Random(threads);
            foreach (bool ta in new[] { false, true })
                foreach (bool tb in new[] { false, true })
                {
                    Check(rng, ta, tb, 1160, 1280, 8, 1f, 0.5f);
                    Check(rng, ta, tb, 515, 301, 50, -1f, 0f, padA: 1, padC: 2);
                }
        }
        finally { Gemm.MaxThreads = saved; }
    }

    [Fact]
    public void Sgemm_RandomOddSizes_WithAlphaBetaAndPadding()
    {
        var rng = new Random(1234);
        float[] alphas = [1f, -1f, 0.37f, 2f];
        float[] betas = [0f, 1f, -0.75f];
        for (int trial = 0; trial < 300; trial++)
        {
            int m = rng.Next(1, 71), n = rng.Next(1, 71), k = rng.Next(1, 71);
            Check(rng, rng.Next(2) == 1, rng.Next(2) == 1, m, n, k, alphas[rng.Next(alphas.Length)],
                betas[rng.Next(betas.Length)], rng.Next(3), rng.Next(3), rng.Next(3));
        }
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void Sgemm_BetaZero_DoesNotReadC(bool ta, bool tb)
    {
        var rng = new Random(7);
        Check(rng, ta, tb, 2, 3, 4, 1f, 0f, padC: 2, nanC: true);      // tiny, packed
        Check(rng, ta, tb, 3, 40, 33, 1f, 0f, padC: 2, nanC: true);    // thin m: unpacked path
        Check(rng, ta, tb, 40, 3, 33, 1f, 0f, padC: 2, nanC: true);    // thin n: unpacked when ta=false, tb=true
        Check(rng, ta, tb, 29, 67, 31, 0.5f, 0f, padC: 3, nanC: true); // packed path with edge tiles
        Check(rng, ta, tb, 29, 67, 0, 0.5f, 0f, padC: 3, nanC: true);  // k = 0
        Check(rng, ta, tb, 29, 67, 31, 0f, 0f, padC: 3, nanC: true);   // alpha = 0
    }

    [Fact]
    public void Sgemm_DegenerateSizes()
    {
        var rng = new Random(11);
        Check(rng, false, false, 17, 19, 0, 1f, 0.5f); // k = 0: C = beta·C
        Check(rng, true, true, 17, 19, 23, 0f, 2f);    // alpha = 0: C = beta·C
        Gemm.Sgemm(false, false, 0, 5, 3, 1f, [], 3, new float[15], 5, 0f, [], 5);
        Gemm.Sgemm(false, false, 5, 0, 3, 1f, new float[15], 3, [], 1, 0f, [], 1);
    }

    [Fact]
    public void Sgemm_ModelShapes_SmallTokenCount()
    {
        // The benchmark model's GEMM kinds at 96 tokens: forward x·Wᵀ, backward dY·W and dYᵀ·X.
        var rng = new Random(5);
        Check(rng, false, true, 96, 384, 384, 1f, 0f);  // forward, out = 384
        Check(rng, false, false, 96, 384, 1024, 1f, 0f); // dX = dY·W, in = 384, out = 1024
        Check(rng, true, false, 128, 384, 96, 1f, 1f);   // dW += dYᵀ·X
    }

    [Fact]
    public void Sgemm_ConcurrentCallers_AllCorrect()
    {
        // Several threads at once: one owns the worker pool, the others run serially on their own thread.
        Parallel.For(0, 6, new ParallelOptions { MaxDegreeOfParallelism = 6 }, i =>
        {
            var rng = new Random(100 + i);
            Check(rng, i % 2 == 0, i % 3 == 0, 200, 176, 120, 1f, 0.25f);
        });
    }

    [Theory]
    [InlineData(false, true, 24, 20, 16, 6)]    // tiny items: unpacked path, spread over threads
    [InlineData(false, true, 64, 64, 32, 8)]    // attention-like scores, spread
    [InlineData(true, false, 130, 70, 90, 3)]   // odd count: items in turn, each split across threads
    [InlineData(false, false, 40, 50, 60, 1)]
    public void SgemmStridedBatched_MatchesPerItemReference(bool ta, bool tb, int m, int n, int k, int batch)
    {
        var rng = new Random(m + n + k + batch);
        int lda = (ta ? m : k) + 1, ldb = (tb ? k : n) + 2, ldc = n + 3;
        long sa = (long)(ta ? k : m) * lda + 5, sb = (long)(tb ? n : k) * ldb, sc = (long)m * ldc + 4;
        float[] a = Random(rng, sa * batch), b = Random(rng, sb * batch), c = Random(rng, sc * batch);
        float[] expect = (float[])c.Clone();
        for (int i = 0; i < batch; i++)
            Gemm.SgemmReference(ta, tb, m, n, k, 0.75f, a.AsSpan((int)(i * sa)), lda, b.AsSpan((int)(i * sb)), ldb, 0.5f,
                expect.AsSpan((int)(i * sc)), ldc);
        Gemm.SgemmStridedBatched(ta, tb, m, n, k, 0.75f, a, lda, sa, b, ldb, sb, 0.5f, c, ldc, sc, batch);
        AssertClose(c, expect, k, $"batched ta={ta} tb={tb} {m}x{n}x{k} x{batch}");
    }

    [Fact]
    public void SgemmStridedBatched_SharedOperandWithZeroStride()
    {
        var rng = new Random(3);
        int m = 33, n = 45, k = 27, batch = 4;
        float[] a = Random(rng, (long)m * k), b = Random(rng, (long)k * n * batch), c = new float[m * n * batch];
        float[] expect = new float[c.Length];
        for (int i = 0; i < batch; i++)
            Gemm.SgemmReference(false, false, m, n, k, 1f, a, k, b.AsSpan(i * k * n), n, 0f, expect.AsSpan(i * m * n), n);
        Gemm.SgemmStridedBatched(false, false, m, n, k, 1f, a, k, 0, b, n, (long)k * n, 0f, c, n, (long)m * n, batch);
        AssertClose(c, expect, k, "shared A");
    }

    [Fact]
    public void Sgemm_DoesNotAllocatePerCall()
    {
        var rng = new Random(9);
        float[] a = Random(rng, 300 * 300), b = Random(rng, 300 * 300), c = new float[300 * 300];
        void Calls()
        {
            Gemm.Sgemm(false, true, 200, 160, 130, 1f, a, 130, b, 130, 0f, c, 160);  // threaded when the pool is free
            Gemm.Sgemm(true, false, 2, 64, 64, 1f, a, 2, b, 64, 1f, c, 64);         // thin path, gathers op(A) rows
            Gemm.Sgemm(false, false, 37, 45, 29, 0.5f, a, 29, b, 45, 0.25f, c, 45);  // single-thread packed, edges
            Gemm.SgemmStridedBatched(false, true, 24, 20, 16, 1f, a, 16, 400, b, 16, 400, 0f, c, 20, 500, 8);
        }
        for (int i = 0; i < 3; i++) Calls(); // first calls size the per-thread packing buffers
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 5; i++) Calls();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    /// <summary>Set by <see cref="GemmFallbackKernelTests"/> when it reruns this class with AVX-512 or AVX2 disabled.</summary>
    public const string ExpectedKernelVariable = "ENGINE_TEST_EXPECT_GEMM_KERNEL";

    [Fact]
    public void Kernel_IsTheExpectedOne()
    {
        string? expected = Environment.GetEnvironmentVariable(ExpectedKernelVariable);
        Assert.Equal(expected ?? Gemm.Kernel, Gemm.Kernel);
        Assert.Contains(Gemm.Kernel, new[] { "avx512-12x32", "avx2-6x16", "scalar-4x4" });
    }

    [Fact]
    public void Sgemm_InvalidArguments_NameTheArgument()
    {
        float[] a = new float[12], b = new float[12], c = new float[12];
        void Throws<T>(string param, string fragment, Action act) where T : ArgumentException
        {
            var e = Assert.Throws<T>(act);
            Assert.Equal(param, e.ParamName);
            Assert.Contains(fragment, e.Message);
        }
        Throws<ArgumentOutOfRangeException>("m", "m must be >= 0", () => Gemm.Sgemm(false, false, -1, 3, 4, 1f, a, 4, b, 3, 0f, c, 3));
        Throws<ArgumentOutOfRangeException>("n", "n must be >= 0", () => Gemm.Sgemm(false, false, 3, -2, 4, 1f, a, 4, b, 3, 0f, c, 3));
        Throws<ArgumentOutOfRangeException>("k", "k must be >= 0", () => Gemm.Sgemm(false, false, 3, 3, -4, 1f, a, 4, b, 3, 0f, c, 3));
        Throws<ArgumentOutOfRangeException>("lda", "lda (3) must be >= max(1, k (transA = false)) = 4",
            () => Gemm.Sgemm(false, false, 3, 3, 4, 1f, a, 3, b, 3, 0f, c, 3));
        Throws<ArgumentOutOfRangeException>("lda", "m (transA = true)",
            () => Gemm.Sgemm(true, false, 3, 3, 4, 1f, a, 2, b, 3, 0f, c, 3));
        Throws<ArgumentOutOfRangeException>("ldb", "ldb (2) must be >= max(1, n (transB = false)) = 3",
            () => Gemm.Sgemm(false, false, 3, 3, 4, 1f, a, 4, b, 2, 0f, c, 3));
        Throws<ArgumentOutOfRangeException>("ldc", "ldc (2) must be >= max(1, n) = 3",
            () => Gemm.Sgemm(false, false, 3, 3, 4, 1f, a, 4, b, 3, 0f, c, 2));
        Throws<ArgumentException>("a", "a has 12 elements but needs 16",
            () => Gemm.Sgemm(false, false, 4, 3, 4, 1f, a, 4, b, 3, 0f, new float[12], 3));
        Throws<ArgumentException>("b", "b has 12 elements but needs 15",
            () => Gemm.Sgemm(false, true, 3, 3, 5, 1f, new float[15], 5, b, 5, 0f, c, 3));
        Throws<ArgumentException>("c", "c has 12 elements but needs 13",
            () => Gemm.Sgemm(false, false, 3, 3, 4, 1f, a, 4, b, 3, 0f, c, 5));
        Throws<ArgumentOutOfRangeException>("strideC", "strideC (4) must be >= 9",
            () => Gemm.SgemmStridedBatched(false, false, 3, 3, 4, 1f, a, 4, 0, b, 3, 0, 0f, new float[20], 3, 4, 2));
        Throws<ArgumentException>("c", "2 items at stride 9",
            () => Gemm.SgemmStridedBatched(false, false, 3, 3, 4, 1f, a, 4, 0, b, 3, 0, 0f, new float[17], 3, 9, 2));
        Throws<ArgumentOutOfRangeException>("batchCount", "batchCount must be >= 0",
            () => Gemm.SgemmStridedBatched(false, false, 3, 3, 4, 1f, a, 4, 0, b, 3, 0, 0f, c, 3, 9, -1));
        Throws<ArgumentOutOfRangeException>("value", "MaxThreads must be >= 1", () => Gemm.MaxThreads = 0);
    }
}
