using Engine.Cuda.Interop;
using Engine.Cuda.Kernels;
using Engine.Cuda.Tests.Reference;

namespace Engine.Cuda.Tests.Gpu;

[Collection("gpu")]
public class AttentionGpuTests
{
    [Theory]
    [InlineData(1, 1, 1, 1, 64, true)]
    [InlineData(2, 37, 4, 1, 64, true)]      // T not a multiple of the tile, GQA ratio 4
    [InlineData(1, 130, 8, 1, 128, true)]    // ratio 8, D = 128, three query tiles
    [InlineData(2, 64, 2, 2, 128, true)]     // ratio 1, exactly one tile
    [InlineData(1, 200, 4, 4, 64, false)]    // full (non-causal) attention
    [InlineData(1, 77, 8, 2, 128, false)]
    public void ForwardAndBackwardMatchFp64Reference(int B, int T, int H, int Hkv, int D, bool causal)
    {
        var g = GpuTest.Require();
        var rng = new Random(B * 1000 + T * 10 + D);
        long nq = (long)B * T * H * D, nk = (long)B * T * Hkv * D;
        float[] q = Data.Bf16Values(rng, nq, 2f), k = Data.Bf16Values(rng, nk, 2f), v = Data.Bf16Values(rng, nk), dout = Data.Bf16Values(rng, nq);
        var shape = new AttentionShape(B, T, H, Hkv, D);
        using var dq_ = g.UploadBf16(q);
        using var dk_ = g.UploadBf16(k);
        using var dv_ = g.UploadBf16(v);
        using var ddo = g.UploadBf16(dout);
        using var o = g.Zeros(2 * nq);
        using var lse = g.Zeros(shape.LseBytes);
        using var delta = g.Zeros(shape.LseBytes);
        using var dq = g.Zeros(2 * nq);
        using var dk = g.Zeros(2 * nk);
        using var dv = g.Zeros(2 * nk);
        var att = g.Kernels.Attention;
        att.Forward(g.Stream, shape, dq_.Ptr, dk_.Ptr, dv_.Ptr, o.Ptr, lse.Ptr, causal);
        var r = AttentionReference.Compute(q, k, v, dout, B, T, H, Hkv, D, causal);
        Tol.RelMax(g.DownloadBf16(o.Ptr, nq), r.O, Tol.AttentionRelMax, 1e-3f, "attention o");
        Tol.Close(g.Download<float>(lse.Ptr, (long)B * H * T), r.Lse.F(), 1e-3f, 1e-3f, "attention lse");

        att.Backward(g.Stream, shape, dq_.Ptr, dk_.Ptr, dv_.Ptr, o.Ptr, lse.Ptr, ddo.Ptr, dq.Ptr, dk.Ptr, dv.Ptr, delta.Ptr, causal);
        Tol.RelMax(g.DownloadBf16(dq.Ptr, nq), r.Dq, Tol.AttentionRelMax, 1e-3f, "attention dq");
        Tol.RelMax(g.DownloadBf16(dk.Ptr, nk), r.Dk, Tol.AttentionRelMax, 1e-3f, "attention dk");
        Tol.RelMax(g.DownloadBf16(dv.Ptr, nk), r.Dv, Tol.AttentionRelMax, 1e-3f, "attention dv");

        // deterministic: a second backward is bitwise identical
        var first = g.Download<ushort>(dk.Ptr, nk);
        att.Backward(g.Stream, shape, dq_.Ptr, dk_.Ptr, dv_.Ptr, o.Ptr, lse.Ptr, ddo.Ptr, dq.Ptr, dk.Ptr, dv.Ptr, delta.Ptr, causal);
        Assert.Equal(first, g.Download<ushort>(dk.Ptr, nk));
    }

    [Fact]
    public void FusedQkvStridesAreHonoured()
    {
        var g = GpuTest.Require();
        int B = 1, T = 45, H = 4, Hkv = 2, D = 64;
        int rowLen = (H + 2 * Hkv) * D;   // one token: q heads, then k heads, then v heads
        var rng = new Random(9);
        float[] qkv = Data.Bf16Values(rng, (long)B * T * rowLen, 2f);
        float[] q = new float[B * T * H * D], k = new float[B * T * Hkv * D], v = new float[B * T * Hkv * D];
        for (int t = 0; t < T; t++)
        {
            Array.Copy(qkv, t * rowLen, q, t * H * D, H * D);
            Array.Copy(qkv, t * rowLen + H * D, k, t * Hkv * D, Hkv * D);
            Array.Copy(qkv, t * rowLen + (H + Hkv) * D, v, t * Hkv * D, Hkv * D);
        }
        var shape = new AttentionShape(B, T, H, Hkv, D);
        using var dqkv = g.UploadBf16(qkv);
        using var o = g.Zeros(2L * B * T * H * D);
        using var lse = g.Zeros(shape.LseBytes);
        g.Kernels.Attention.Forward(g.Stream, shape, dqkv.Ptr, dqkv.Ptr.Offset(H * D, 2), dqkv.Ptr.Offset((H + Hkv) * D, 2), o.Ptr, lse.Ptr, true,
            qRowStride: rowLen, kRowStride: rowLen, vRowStride: rowLen);
        var r = AttentionReference.Compute(q, k, v, new float[q.Length], B, T, H, Hkv, D, true);
        Tol.RelMax(g.DownloadBf16(o.Ptr, q.Length), r.O, Tol.AttentionRelMax, 1e-3f, "attention o (fused qkv)");
    }
}

[Collection("gpu")]
public class GemmGpuTests
{
    [Theory]
    [InlineData(false, false, 33, 17, 65)]
    [InlineData(true, false, 64, 128, 32)]
    [InlineData(false, true, 5, 123, 123)]
    [InlineData(true, true, 16, 8, 40)]
    public void RowMajorGemmMatchesReference(bool ta, bool tb, int m, int n, int k)
    {
        var g = GpuTest.Require();
        using var blas = new CublasContext();
        var rng = new Random(m * n + k);
        float[] a = Data.Bf16Values(rng, (long)m * k), b = Data.Bf16Values(rng, (long)k * n);
        using var da = g.UploadBf16(a);
        using var db = g.UploadBf16(b);
        using var c = g.Zeros(4L * m * n);
        blas.Gemm(g.Stream, ta, tb, m, n, k, da.Ptr, db.Ptr, c.Ptr, cType: CudaDataType.R32F);
        var expect = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++) s += (double)(ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
                expect[i * n + j] = s;
            }
        Tol.Close(g.Download<float>(c.Ptr, (long)m * n), expect.F(), 1e-4f, 1e-4f, "gemm");

        using var cb = g.Zeros(2L * m * n * 3);
        using var a3 = g.UploadBf16([.. a, .. a, .. a]);
        blas.GemmStridedBatched(g.Stream, ta, tb, m, n, k, a3.Ptr, (long)m * k, db.Ptr, 0, cb.Ptr, (long)m * n, 3);
        var got = g.DownloadBf16(cb.Ptr, 3L * m * n);
        for (int bi = 0; bi < 3; bi++)
            Tol.Close(got.AsSpan(bi * m * n, m * n), expect.F(), 1e-3f, Tol.Bf16Rtol, $"gemm batched [{bi}]");
    }
}
