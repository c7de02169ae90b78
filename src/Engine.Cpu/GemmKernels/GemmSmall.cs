using System.Numerics.Tensors;

namespace Engine.Cpu.GemmKernels;

/// <summary>
/// Unpacked path for problems too small (or too thin: m or n below a few) to pay for packing and zero-padded
/// tiles: row-by-row axpy (op(B) rows contiguous) or dot products (op(B) columns contiguous), fp32 accumulation.
/// </summary>
internal static unsafe class GemmSmall
{
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
