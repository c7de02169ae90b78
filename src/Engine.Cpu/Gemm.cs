using System.Numerics;

namespace Engine.Cpu;

/// <summary>
/// Interim row-major SGEMM (simple: packs op(B) to [k, n], rows of C in parallel, Vector&lt;float&gt; over n).
/// The cache-blocked packed-panel GEMM replaces this file with the same API.
/// </summary>
public static class Gemm
{
    public static int MaxThreads { get; set; } = Environment.ProcessorCount;

    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha, ReadOnlySpan<float> a, int lda,
        ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        if (m < 0 || n < 0 || k < 0) throw new ArgumentException($"negative GEMM size m={m} n={n} k={k}");
        if (m == 0 || n == 0) return;
        var bp = new float[(long)k * n];
        for (int p = 0; p < k; p++)
            for (int j = 0; j < n; j++) bp[p * n + j] = transB ? b[j * ldb + p] : b[p * ldb + j];
        var ap = new float[(long)m * k];
        for (int i = 0; i < m; i++)
            for (int p = 0; p < k; p++) ap[i * k + p] = transA ? a[p * lda + i] : a[i * lda + p];
        unsafe
        {
            fixed (float* pc = c)
            {
                float* cc = pc;
                Parallel.For(0, m, new ParallelOptions { MaxDegreeOfParallelism = MaxThreads }, i =>
                {
                    var row = new Span<float>(cc + (long)i * ldc, n);
                    var acc = new float[n];
                    for (int p = 0; p < k; p++)
                    {
                        float av = ap[(long)i * k + p];
                        if (av == 0) continue;
                        var brow = bp.AsSpan(p * n, n);
                        int j = 0;
                        var va = new Vector<float>(av);
                        for (; j <= n - Vector<float>.Count; j += Vector<float>.Count)
                            (new Vector<float>(acc, j) + va * new Vector<float>(brow[j..])).CopyTo(acc, j);
                        for (; j < n; j++) acc[j] += av * brow[j];
                    }
                    for (int j = 0; j < n; j++) row[j] = alpha * acc[j] + (beta == 0 ? 0 : beta * row[j]);
                });
            }
        }
    }
}
