using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Cpu.GemmKernels;

// Fully unrolled register tiles (written out by a small generator script; edit all rows alike).
// Contract of every micro-kernel: a = packed A micro-panel (kc steps of MR floats), b = packed B micro-panel
// (kc steps of NR floats), c = top-left of an MR x NR tile of row-major C with leading dimension ldc.
// c = alpha * (A·B) + beta * c; beta == 0 never reads c.
internal static unsafe class GemmMicroKernels
{
    /// <summary>AVX-512 12x32 tile: 24 zmm accumulators + 2 B vectors + 1 broadcast = 27 of 32 registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Avx512_12x32(int kc, float* a, float* b, float* c, nint ldc, float alpha, float beta)
    {
        Vector512<float> c0_0 = default; Vector512<float> c0_1 = default;
        Vector512<float> c1_0 = default; Vector512<float> c1_1 = default;
        Vector512<float> c2_0 = default; Vector512<float> c2_1 = default;
        Vector512<float> c3_0 = default; Vector512<float> c3_1 = default;
        Vector512<float> c4_0 = default; Vector512<float> c4_1 = default;
        Vector512<float> c5_0 = default; Vector512<float> c5_1 = default;
        Vector512<float> c6_0 = default; Vector512<float> c6_1 = default;
        Vector512<float> c7_0 = default; Vector512<float> c7_1 = default;
        Vector512<float> c8_0 = default; Vector512<float> c8_1 = default;
        Vector512<float> c9_0 = default; Vector512<float> c9_1 = default;
        Vector512<float> c10_0 = default; Vector512<float> c10_1 = default;
        Vector512<float> c11_0 = default; Vector512<float> c11_1 = default;
        for (nint r = 0; r < 12; r++) { Sse.Prefetch0(c + r * ldc); Sse.Prefetch0(c + r * ldc + 31); }
        for (int p = 0; p < kc; p++)
        {
            Vector512<float> b0 = Vector512.Load(b + 0);
            Vector512<float> b1 = Vector512.Load(b + 16);
            { Vector512<float> ai = Vector512.Create(a[0]); c0_0 = Avx512F.FusedMultiplyAdd(ai, b0, c0_0); c0_1 = Avx512F.FusedMultiplyAdd(ai, b1, c0_1); }
            { Vector512<float> ai = Vector512.Create(a[1]); c1_0 = Avx512F.FusedMultiplyAdd(ai, b0, c1_0); c1_1 = Avx512F.FusedMultiplyAdd(ai, b1, c1_1); }
            { Vector512<float> ai = Vector512.Create(a[2]); c2_0 = Avx512F.FusedMultiplyAdd(ai, b0, c2_0); c2_1 = Avx512F.FusedMultiplyAdd(ai, b1, c2_1); }
            { Vector512<float> ai = Vector512.Create(a[3]); c3_0 = Avx512F.FusedMultiplyAdd(ai, b0, c3_0); c3_1 = Avx512F.FusedMultiplyAdd(ai, b1, c3_1); }
            { Vector512<float> ai = Vector512.Create(a[4]); c4_0 = Avx512F.FusedMultiplyAdd(ai, b0, c4_0); c4_1 = Avx512F.FusedMultiplyAdd(ai, b1, c4_1); }
            { Vector512<float> ai = Vector512.Create(a[5]); c5_0 = Avx512F.FusedMultiplyAdd(ai, b0, c5_0); c5_1 = Avx512F.FusedMultiplyAdd(ai, b1, c5_1); }
            { Vector512<float> ai = Vector512.Create(a[6]); c6_0 = Avx512F.FusedMultiplyAdd(ai, b0, c6_0); c6_1 = Avx512F.FusedMultiplyAdd(ai, b1, c6_1); }
            { Vector512<float> ai = Vector512.Create(a[7]); c7_0 = Avx512F.FusedMultiplyAdd(ai, b0, c7_0); c7_1 = Avx512F.FusedMultiplyAdd(ai, b1, c7_1); }
            { Vector512<float> ai = Vector512.Create(a[8]); c8_0 = Avx512F.FusedMultiplyAdd(ai, b0, c8_0); c8_1 = Avx512F.FusedMultiplyAdd(ai, b1, c8_1); }
            { Vector512<float> ai = Vector512.Create(a[9]); c9_0 = Avx512F.FusedMultiplyAdd(ai, b0, c9_0); c9_1 = Avx512F.FusedMultiplyAdd(ai, b1, c9_1); }
            { Vector512<float> ai = Vector512.Create(a[10]); c10_0 = Avx512F.FusedMultiplyAdd(ai, b0, c10_0); c10_1 = Avx512F.FusedMultiplyAdd(ai, b1, c10_1); }
            { Vector512<float> ai = Vector512.Create(a[11]); c11_0 = Avx512F.FusedMultiplyAdd(ai, b0, c11_0); c11_1 = Avx512F.FusedMultiplyAdd(ai, b1, c11_1); }
            a += 12; b += 32;
        }
        Vector512<float> va = Vector512.Create(alpha);
        if (beta == 0f)
        {
            (c0_0 * va).Store(c + 0 * ldc + 0); (c0_1 * va).Store(c + 0 * ldc + 16);
            (c1_0 * va).Store(c + 1 * ldc + 0); (c1_1 * va).Store(c + 1 * ldc + 16);
            (c2_0 * va).Store(c + 2 * ldc + 0); (c2_1 * va).Store(c + 2 * ldc + 16);
            (c3_0 * va).Store(c + 3 * ldc + 0); (c3_1 * va).Store(c + 3 * ldc + 16);
            (c4_0 * va).Store(c + 4 * ldc + 0); (c4_1 * va).Store(c + 4 * ldc + 16);
            (c5_0 * va).Store(c + 5 * ldc + 0); (c5_1 * va).Store(c + 5 * ldc + 16);
            (c6_0 * va).Store(c + 6 * ldc + 0); (c6_1 * va).Store(c + 6 * ldc + 16);
            (c7_0 * va).Store(c + 7 * ldc + 0); (c7_1 * va).Store(c + 7 * ldc + 16);
            (c8_0 * va).Store(c + 8 * ldc + 0); (c8_1 * va).Store(c + 8 * ldc + 16);
            (c9_0 * va).Store(c + 9 * ldc + 0); (c9_1 * va).Store(c + 9 * ldc + 16);
            (c10_0 * va).Store(c + 10 * ldc + 0); (c10_1 * va).Store(c + 10 * ldc + 16);
            (c11_0 * va).Store(c + 11 * ldc + 0); (c11_1 * va).Store(c + 11 * ldc + 16);
        }
        else
        {
            Vector512<float> vb = Vector512.Create(beta);
            Avx512F.FusedMultiplyAdd(c0_0, va, Vector512.Load(c + 0 * ldc + 0) * vb).Store(c + 0 * ldc + 0); Avx512F.FusedMultiplyAdd(c0_1, va, Vector512.Load(c + 0 * ldc + 16) * vb).Store(c + 0 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c1_0, va, Vector512.Load(c + 1 * ldc + 0) * vb).Store(c + 1 * ldc + 0); Avx512F.FusedMultiplyAdd(c1_1, va, Vector512.Load(c + 1 * ldc + 16) * vb).Store(c + 1 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c2_0, va, Vector512.Load(c + 2 * ldc + 0) * vb).Store(c + 2 * ldc + 0); Avx512F.FusedMultiplyAdd(c2_1, va, Vector512.Load(c + 2 * ldc + 16) * vb).Store(c + 2 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c3_0, va, Vector512.Load(c + 3 * ldc + 0) * vb).Store(c + 3 * ldc + 0); Avx512F.FusedMultiplyAdd(c3_1, va, Vector512.Load(c + 3 * ldc + 16) * vb).Store(c + 3 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c4_0, va, Vector512.Load(c + 4 * ldc + 0) * vb).Store(c + 4 * ldc + 0); Avx512F.FusedMultiplyAdd(c4_1, va, Vector512.Load(c + 4 * ldc + 16) * vb).Store(c + 4 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c5_0, va, Vector512.Load(c + 5 * ldc + 0) * vb).Store(c + 5 * ldc + 0); Avx512F.FusedMultiplyAdd(c5_1, va, Vector512.Load(c + 5 * ldc + 16) * vb).Store(c + 5 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c6_0, va, Vector512.Load(c + 6 * ldc + 0) * vb).Store(c + 6 * ldc + 0); Avx512F.FusedMultiplyAdd(c6_1, va, Vector512.Load(c + 6 * ldc + 16) * vb).Store(c + 6 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c7_0, va, Vector512.Load(c + 7 * ldc + 0) * vb).Store(c + 7 * ldc + 0); Avx512F.FusedMultiplyAdd(c7_1, va, Vector512.Load(c + 7 * ldc + 16) * vb).Store(c + 7 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c8_0, va, Vector512.Load(c + 8 * ldc + 0) * vb).Store(c + 8 * ldc + 0); Avx512F.FusedMultiplyAdd(c8_1, va, Vector512.Load(c + 8 * ldc + 16) * vb).Store(c + 8 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c9_0, va, Vector512.Load(c + 9 * ldc + 0) * vb).Store(c + 9 * ldc + 0); Avx512F.FusedMultiplyAdd(c9_1, va, Vector512.Load(c + 9 * ldc + 16) * vb).Store(c + 9 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c10_0, va, Vector512.Load(c + 10 * ldc + 0) * vb).Store(c + 10 * ldc + 0); Avx512F.FusedMultiplyAdd(c10_1, va, Vector512.Load(c + 10 * ldc + 16) * vb).Store(c + 10 * ldc + 16);
            Avx512F.FusedMultiplyAdd(c11_0, va, Vector512.Load(c + 11 * ldc + 0) * vb).Store(c + 11 * ldc + 0); Avx512F.FusedMultiplyAdd(c11_1, va, Vector512.Load(c + 11 * ldc + 16) * vb).Store(c + 11 * ldc + 16);
        }
    }

    /// <summary>AVX2+FMA 6x16 tile: 12 ymm accumulators + 2 B vectors + 1 broadcast = 15 of 16 registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Avx2_6x16(int kc, float* a, float* b, float* c, nint ldc, float alpha, float beta)
    {
        Vector256<float> c0_0 = default; Vector256<float> c0_1 = default;
        Vector256<float> c1_0 = default; Vector256<float> c1_1 = default;
        Vector256<float> c2_0 = default; Vector256<float> c2_1 = default;
        Vector256<float> c3_0 = default; Vector256<float> c3_1 = default;
        Vector256<float> c4_0 = default; Vector256<float> c4_1 = default;
        Vector256<float> c5_0 = default; Vector256<float> c5_1 = default;
        for (nint r = 0; r < 6; r++) { Sse.Prefetch0(c + r * ldc); Sse.Prefetch0(c + r * ldc + 15); }
        for (int p = 0; p < kc; p++)
        {
            Vector256<float> b0 = Vector256.Load(b + 0);
            Vector256<float> b1 = Vector256.Load(b + 8);
            { Vector256<float> ai = Vector256.Create(a[0]); c0_0 = Fma.MultiplyAdd(ai, b0, c0_0); c0_1 = Fma.MultiplyAdd(ai, b1, c0_1); }
            { Vector256<float> ai = Vector256.Create(a[1]); c1_0 = Fma.MultiplyAdd(ai, b0, c1_0); c1_1 = Fma.MultiplyAdd(ai, b1, c1_1); }
            { Vector256<float> ai = Vector256.Create(a[2]); c2_0 = Fma.MultiplyAdd(ai, b0, c2_0); c2_1 = Fma.MultiplyAdd(ai, b1, c2_1); }
            { Vector256<float> ai = Vector256.Create(a[3]); c3_0 = Fma.MultiplyAdd(ai, b0, c3_0); c3_1 = Fma.MultiplyAdd(ai, b1, c3_1); }
            { Vector256<float> ai = Vector256.Create(a[4]); c4_0 = Fma.MultiplyAdd(ai, b0, c4_0); c4_1 = Fma.MultiplyAdd(ai, b1, c4_1); }
            { Vector256<float> ai = Vector256.Create(a[5]); c5_0 = Fma.MultiplyAdd(ai, b0, c5_0); c5_1 = Fma.MultiplyAdd(ai, b1, c5_1); }
            a += 6; b += 16;
        }
        Vector256<float> va = Vector256.Create(alpha);
        if (beta == 0f)
        {
            (c0_0 * va).Store(c + 0 * ldc + 0); (c0_1 * va).Store(c + 0 * ldc + 8);
            (c1_0 * va).Store(c + 1 * ldc + 0); (c1_1 * va).Store(c + 1 * ldc + 8);
            (c2_0 * va).Store(c + 2 * ldc + 0); (c2_1 * va).Store(c + 2 * ldc + 8);
            (c3_0 * va).Store(c + 3 * ldc + 0); (c3_1 * va).Store(c + 3 * ldc + 8);
            (c4_0 * va).Store(c + 4 * ldc + 0); (c4_1 * va).Store(c + 4 * ldc + 8);
            (c5_0 * va).Store(c + 5 * ldc + 0); (c5_1 * va).Store(c + 5 * ldc + 8);
        }
        else
        {
            Vector256<float> vb = Vector256.Create(beta);
            Fma.MultiplyAdd(c0_0, va, Vector256.Load(c + 0 * ldc + 0) * vb).Store(c + 0 * ldc + 0); Fma.MultiplyAdd(c0_1, va, Vector256.Load(c + 0 * ldc + 8) * vb).Store(c + 0 * ldc + 8);
            Fma.MultiplyAdd(c1_0, va, Vector256.Load(c + 1 * ldc + 0) * vb).Store(c + 1 * ldc + 0); Fma.MultiplyAdd(c1_1, va, Vector256.Load(c + 1 * ldc + 8) * vb).Store(c + 1 * ldc + 8);
            Fma.MultiplyAdd(c2_0, va, Vector256.Load(c + 2 * ldc + 0) * vb).Store(c + 2 * ldc + 0); Fma.MultiplyAdd(c2_1, va, Vector256.Load(c + 2 * ldc + 8) * vb).Store(c + 2 * ldc + 8);
            Fma.MultiplyAdd(c3_0, va, Vector256.Load(c + 3 * ldc + 0) * vb).Store(c + 3 * ldc + 0); Fma.MultiplyAdd(c3_1, va, Vector256.Load(c + 3 * ldc + 8) * vb).Store(c + 3 * ldc + 8);
            Fma.MultiplyAdd(c4_0, va, Vector256.Load(c + 4 * ldc + 0) * vb).Store(c + 4 * ldc + 0); Fma.MultiplyAdd(c4_1, va, Vector256.Load(c + 4 * ldc + 8) * vb).Store(c + 4 * ldc + 8);
            Fma.MultiplyAdd(c5_0, va, Vector256.Load(c + 5 * ldc + 0) * vb).Store(c + 5 * ldc + 0); Fma.MultiplyAdd(c5_1, va, Vector256.Load(c + 5 * ldc + 8) * vb).Store(c + 5 * ldc + 8);
        }
    }

    /// <summary>Portable 4x4 tile (no SIMD); correctness fallback only.</summary>
    public static void Scalar_4x4(int kc, float* a, float* b, float* c, nint ldc, float alpha, float beta)
    {
        float* acc = stackalloc float[16];
        for (int t = 0; t < 16; t++) acc[t] = 0f;
        for (int p = 0; p < kc; p++)
        {
            for (int i = 0; i < 4; i++)
            {
                float ai = a[i];
                acc[i * 4 + 0] += ai * b[0];
                acc[i * 4 + 1] += ai * b[1];
                acc[i * 4 + 2] += ai * b[2];
                acc[i * 4 + 3] += ai * b[3];
            }
            a += 4; b += 4;
        }
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
                c[i * ldc + j] = beta == 0f ? alpha * acc[i * 4 + j] : alpha * acc[i * 4 + j] + beta * c[i * ldc + j];
    }

    /// <summary>Runs this machine's micro-kernel (the ISA test folds to a constant in the JIT).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Run(int kc, float* a, float* b, float* c, nint ldc, float alpha, float beta)
    {
        if (Avx512F.IsSupported) Avx512_12x32(kc, a, b, c, ldc, alpha, beta);
        else if (Fma.IsSupported && Avx2.IsSupported) Avx2_6x16(kc, a, b, c, ldc, alpha, beta);
        else Scalar_4x4(kc, a, b, c, ldc, alpha, beta);
    }
}
