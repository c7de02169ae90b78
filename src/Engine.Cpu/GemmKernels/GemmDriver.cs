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

/// <summary>
/// The blocked single-thread driver (loop nest in <see cref="GemmTraits"/>). Packing buffers are per thread,
/// pinned, 64-byte aligned and grow-only, so a call allocates nothing after the first on a thread.
/// </summary>
internal static unsafe class GemmDriver
{
    [ThreadStatic] static float[]? t_bufA;
    [ThreadStatic] static float[]? t_bufB;

    public static void Run(in GemmProblem g)
    {
        int mr = GemmTraits.MR, nr = GemmTraits.NR;
        int kBlocks = (g.K + GemmTraits.KC - 1) / GemmTraits.KC;
        int kcNominal = (g.K + kBlocks - 1) / kBlocks;
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

    /// <summary>All MR x NR tiles of one packed A block times one packed B block.</summary>
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

    static int RoundUp(int x, int to) => (x + to - 1) / to * to;

    /// <summary>A 64-byte aligned pointer into a pinned, grow-only thread-local array of at least n floats.</summary>
    static float* Buffer(ref float[]? slot, long n)
    {
        long need = n + 16;
        if (slot is null || slot.Length < need)
            slot = GC.AllocateUninitializedArray<float>((int)Math.Max(need, (slot?.Length ?? 0) * 5L / 4), pinned: true);
        nuint p = (nuint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(slot));
        return (float*)((p + 63) & ~(nuint)63);
    }
}
