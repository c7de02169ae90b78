using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Cpu.GemmKernels;

/// <summary>
/// Packing: copies a block of op(A) / op(B) into the layout the micro-kernel reads, for all four transpose
/// combinations, zero-padding partial panels so the kernel always runs full tiles.
///   packed A panel (rows ir..ir+MR): for p in [0,kc): MR floats op(A)[ir+r, pc+p]      at panel + p·MR + r
///   packed B panel (cols jr..jr+NR): for p in [0,kc): NR floats op(B)[pc+p, jr+c]      at panel + p·NR + c
/// Panel i of A starts at i·MR·kc, panel j of B at j·NR·kc.
/// The strided cases (A not transposed, B transposed) go through a 16x16 AVX-512 register transpose.
/// </summary>
internal static unsafe class GemmPack
{
    /// <summary>Spare floats at the end of every packing buffer.</summary>
    public const int Slack = 16;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot from the first call: no tier-0 intrinsics
    public static void PackA(in GemmProblem g, int ic, int mc, int pc, int kc, float* dst)
    {
        int mrFull = GemmTraits.MR;
        for (int ir = 0; ir < mc; ir += mrFull)
        {
            int mr = Math.Min(mrFull, mc - ir);
            float* panel = dst + (nint)ir * kc;
            if (!g.TransA)
            {
                float* src = g.A + (nint)(ic + ir) * g.Lda + pc;
                PackStrided(src, g.Lda, mr, kc, panel, mrFull);
            }
            else
            {
                float* src = g.A + (nint)pc * g.Lda + ic + ir;
                PackContiguous(src, g.Lda, mr, kc, panel, mrFull);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PackB(in GemmProblem g, int pc, int kc, int jc, int nc, float* dst)
    {
        int nrFull = GemmTraits.NR;
        for (int jr = 0; jr < nc; jr += nrFull)
        {
            int nr = Math.Min(nrFull, nc - jr);
            float* panel = dst + (nint)jr * kc;
            if (!g.TransB)
            {
                float* src = g.B + (nint)pc * g.Ldb + jc + jr;
                PackContiguous(src, g.Ldb, nr, kc, panel, nrFull);
            }
            else
            {
                float* src = g.B + (nint)(jc + jr) * g.Ldb + pc;
                PackStrided(src, g.Ldb, nr, kc, panel, nrFull);
            }
        }
    }

    /// <summary>
    /// Panel whose w (≤ width) entries per k step are contiguous in the source: source row p holds them at
    /// src + p·ld. Writes kc·width floats, zero-padding columns w..width.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PackContiguous(float* src, nint ld, int w, int kc, float* dst, int width)
    {
        if (w == width)
        {
            if (width == 32 && Avx512F.IsSupported)
            {
                for (int p = 0; p < kc; p++, src += ld, dst += 32)
                {
                    Vector512.Store(Vector512.Load(src), dst);
                    Vector512.Store(Vector512.Load(src + 16), dst + 16);
                }
                return;
            }
            if (width == 12 && Avx2.IsSupported)
            {
                for (int p = 0; p < kc; p++, src += ld, dst += 12)
                {
                    Vector256.Store(Vector256.Load(src), dst);
                    Vector128.Store(Vector128.Load(src + 8), dst + 8);
                }
                return;
            }
            if (width == 16 && Avx2.IsSupported)
            {
                for (int p = 0; p < kc; p++, src += ld, dst += 16)
                {
                    Vector256.Store(Vector256.Load(src), dst);
                    Vector256.Store(Vector256.Load(src + 8), dst + 8);
                }
                return;
            }
        }
        for (int p = 0; p < kc; p++, src += ld, dst += width)
        {
            int c = 0;
            for (; c < w; c++) dst[c] = src[c];
            for (; c < width; c++) dst[c] = 0f;
        }
    }

    /// <summary>
    /// Panel whose w (≤ width) entries per k step come from w different source rows (row r at src + r·ld,
    /// element p at +p): a transpose. Writes kc·width floats, zero-padding entries w..width.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void PackStrided(float* src, nint ld, int w, int kc, float* dst, int width)
    {
        int p = 0;
        if (Avx512F.IsSupported && w == width && (width == 12 || width == 32))
        {
            if (width == 12)
            {
                // 12 source rows + 4 zero rows; row q of the transpose is 16 floats of which 12 are kept:
                // ascending overlapping stores leave the correct 12 (the next store overwrites the tail), and the
                // last row is stored as 8 + 4 so nothing is written past this panel (threads pack neighbours).
                for (; p + 16 <= kc; p += 16)
                    Transpose16x16(src + p, ld, 12, dst + (nint)p * 12, 12);
            }
            else
            {
                for (; p + 16 <= kc; p += 16)
                {
                    Transpose16x16(src + p, ld, 16, dst + (nint)p * 32, 32);
                    Transpose16x16(src + 16 * ld + p, ld, 16, dst + (nint)p * 32 + 16, 32);
                }
            }
        }
        for (int r = 0; r < w; r++)
        {
            float* s = src + r * ld;
            float* d = dst + r;
            for (int q = p; q < kc; q++) d[(nint)q * width] = s[q];
        }
        for (int q = p; q < kc; q++)
            for (int r = w; r < width; r++) dst[(nint)q * width + r] = 0f;
    }

    /// <summary>
    /// Loads rows 0..rows-1 (16 floats each, rows at src + r·ld; missing rows read as zero), transposes the
    /// 16x16 block in registers and stores row q (16 floats) at dst + q·dstStride in ascending q; with
    /// dstStride 12 only the first 12 floats of the last row are stored (no write past dst + 16·12).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Transpose16x16(float* src, nint ld, int rows, float* dst, nint dstStride)
    {
        Vector512<float> r0 = Vector512.Load(src), r1 = Vector512.Load(src + ld);
        Vector512<float> r2 = Vector512.Load(src + 2 * ld), r3 = Vector512.Load(src + 3 * ld);
        Vector512<float> r4 = Vector512.Load(src + 4 * ld), r5 = Vector512.Load(src + 5 * ld);
        Vector512<float> r6 = Vector512.Load(src + 6 * ld), r7 = Vector512.Load(src + 7 * ld);
        Vector512<float> r8 = Vector512.Load(src + 8 * ld), r9 = Vector512.Load(src + 9 * ld);
        Vector512<float> r10 = Vector512.Load(src + 10 * ld), r11 = Vector512.Load(src + 11 * ld);
        Vector512<float> r12 = default, r13 = default, r14 = default, r15 = default;
        if (rows == 16)
        {
            r12 = Vector512.Load(src + 12 * ld); r13 = Vector512.Load(src + 13 * ld);
            r14 = Vector512.Load(src + 14 * ld); r15 = Vector512.Load(src + 15 * ld);
        }

        // Stage 1: interleave pairs of rows within 128-bit lanes.
        Vector512<float> t0 = Avx512F.UnpackLow(r0, r1), t1 = Avx512F.UnpackHigh(r0, r1);
        Vector512<float> t2 = Avx512F.UnpackLow(r2, r3), t3 = Avx512F.UnpackHigh(r2, r3);
        Vector512<float> t4 = Avx512F.UnpackLow(r4, r5), t5 = Avx512F.UnpackHigh(r4, r5);
        Vector512<float> t6 = Avx512F.UnpackLow(r6, r7), t7 = Avx512F.UnpackHigh(r6, r7);
        Vector512<float> t8 = Avx512F.UnpackLow(r8, r9), t9 = Avx512F.UnpackHigh(r8, r9);
        Vector512<float> t10 = Avx512F.UnpackLow(r10, r11), t11 = Avx512F.UnpackHigh(r10, r11);
        Vector512<float> t12 = Avx512F.UnpackLow(r12, r13), t13 = Avx512F.UnpackHigh(r12, r13);
        Vector512<float> t14 = Avx512F.UnpackLow(r14, r15), t15 = Avx512F.UnpackHigh(r14, r15);

        // Stage 2: 4x4 transposes within 128-bit lanes.
        r0 = Avx512F.Shuffle(t0, t2, 0x44); r1 = Avx512F.Shuffle(t0, t2, 0xEE);
        r2 = Avx512F.Shuffle(t1, t3, 0x44); r3 = Avx512F.Shuffle(t1, t3, 0xEE);
        r4 = Avx512F.Shuffle(t4, t6, 0x44); r5 = Avx512F.Shuffle(t4, t6, 0xEE);
        r6 = Avx512F.Shuffle(t5, t7, 0x44); r7 = Avx512F.Shuffle(t5, t7, 0xEE);
        r8 = Avx512F.Shuffle(t8, t10, 0x44); r9 = Avx512F.Shuffle(t8, t10, 0xEE);
        r10 = Avx512F.Shuffle(t9, t11, 0x44); r11 = Avx512F.Shuffle(t9, t11, 0xEE);
        r12 = Avx512F.Shuffle(t12, t14, 0x44); r13 = Avx512F.Shuffle(t12, t14, 0xEE);
        r14 = Avx512F.Shuffle(t13, t15, 0x44); r15 = Avx512F.Shuffle(t13, t15, 0xEE);

        // Stages 3-4: move 128-bit lanes across registers.
        t0 = Avx512F.Shuffle4x128(r0, r4, 0x88); t1 = Avx512F.Shuffle4x128(r1, r5, 0x88);
        t2 = Avx512F.Shuffle4x128(r2, r6, 0x88); t3 = Avx512F.Shuffle4x128(r3, r7, 0x88);
        t4 = Avx512F.Shuffle4x128(r0, r4, 0xDD); t5 = Avx512F.Shuffle4x128(r1, r5, 0xDD);
        t6 = Avx512F.Shuffle4x128(r2, r6, 0xDD); t7 = Avx512F.Shuffle4x128(r3, r7, 0xDD);
        t8 = Avx512F.Shuffle4x128(r8, r12, 0x88); t9 = Avx512F.Shuffle4x128(r9, r13, 0x88);
        t10 = Avx512F.Shuffle4x128(r10, r14, 0x88); t11 = Avx512F.Shuffle4x128(r11, r15, 0x88);
        t12 = Avx512F.Shuffle4x128(r8, r12, 0xDD); t13 = Avx512F.Shuffle4x128(r9, r13, 0xDD);
        t14 = Avx512F.Shuffle4x128(r10, r14, 0xDD); t15 = Avx512F.Shuffle4x128(r11, r15, 0xDD);

        Vector512.Store(Avx512F.Shuffle4x128(t0, t8, 0x88), dst);
        Vector512.Store(Avx512F.Shuffle4x128(t1, t9, 0x88), dst + dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t2, t10, 0x88), dst + 2 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t3, t11, 0x88), dst + 3 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t4, t12, 0x88), dst + 4 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t5, t13, 0x88), dst + 5 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t6, t14, 0x88), dst + 6 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t7, t15, 0x88), dst + 7 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t0, t8, 0xDD), dst + 8 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t1, t9, 0xDD), dst + 9 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t2, t10, 0xDD), dst + 10 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t3, t11, 0xDD), dst + 11 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t4, t12, 0xDD), dst + 12 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t5, t13, 0xDD), dst + 13 * dstStride);
        Vector512.Store(Avx512F.Shuffle4x128(t6, t14, 0xDD), dst + 14 * dstStride);
        Vector512<float> last = Avx512F.Shuffle4x128(t7, t15, 0xDD);
        if (dstStride >= 16) Vector512.Store(last, dst + 15 * dstStride);
        else
        {
            Vector256.Store(last.GetLower(), dst + 15 * dstStride);
            Vector128.Store(last.GetUpper().GetLower(), dst + 15 * dstStride + 8);
        }
    }
}
