using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace Engine.Cpu.GemmKernels;

/// <summary>
/// Unpacked path for thin problems (m ≤ 3, e.g. one-token decoding, or n ≤ 3 with contiguous dot operands), where
/// MR x NR tiles would be mostly zero padding: row by row, k axpys of length n over op(B) rows (op(B) not
/// transposed) or n dot products of length k (B transposed), vectorised by TensorPrimitives, fp32 accumulation.
/// Not used for small-but-square problems, where per-call costs of short TensorPrimitives calls dominate: packed
/// vs this path, one thread, best of 9: 8³ 2.4 vs 3.1 GFLOP/s (both call-bound), 16³ 7.1 vs 3.6, 32³ 38 vs 3.4,
/// 64³ 73 vs 14.
/// </summary>
internal static unsafe class GemmSmall
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot from the first call: no tier-0 intrinsics
    public static void Run(in GemmProblem g)
    {
        int m = g.M, n = g.N, k = g.K;
        float[]? rented = null;
        if (g.TransA) rented = System.Buffers.ArrayPool<float>.Shared.Rent(k);
        try
        {
            for (int i = 0; i < m; i++)
            {
                float* ci = g.C + (nint)i * g.Ldc;
                ReadOnlySpan<float> ai;
                if (g.TransA)
                {
                    for (int p = 0; p < k; p++) rented![p] = g.A[(nint)p * g.Lda + i];
                    ai = rented.AsSpan(0, k);
                }
                else ai = new ReadOnlySpan<float>(g.A + (nint)i * g.Lda, k);

                if (g.TransB)
                {
                    for (int j = 0; j < n; j++)
                    {
                        float dot = TensorPrimitives.Dot(ai, new ReadOnlySpan<float>(g.B + (nint)j * g.Ldb, k));
                        ci[j] = g.Beta == 0f ? g.Alpha * dot : g.Alpha * dot + g.Beta * ci[j];
                    }
                }
                else
                {
                    var crow = new Span<float>(ci, n);
                    if (g.Beta == 0f) crow.Clear();
                    else if (g.Beta != 1f) TensorPrimitives.Multiply(crow, g.Beta, crow);
                    for (int p = 0; p < k; p++)
                    {
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(g.B + (nint)p * g.Ldb, n), g.Alpha * ai[p], crow, crow);
                    }
                }
            }
        }
        finally
        {
            if (rented is not null) System.Buffers.ArrayPool<float>.Shared.Return(rented);
        }
    }
}
