using Engine.Cuda.Kernels;
using Engine.Cuda.Tests.Reference;

namespace Engine.Cuda.Tests.Gpu;

internal static class Conv
{
    public static float[] F(this double[] x) => x.Select(v => (float)v).ToArray();
}

[Collection("gpu")]
public class RmsNormGpuTests
{
    [Theory]
    [InlineData(2 * 128, 512, false)]
    [InlineData(5 * 123, 123, false)]
    [InlineData(2 * 128, 512, true)]
    [InlineData(5 * 123, 123, true)]
    [InlineData(3, 4096, true)]
    [InlineData(1000, 64, false)]
    public void ForwardBackwardMatchReference(int rows, int cols, bool residual)
    {
        var g = GpuTest.Require();
        var rng = new Random(rows * 31 + cols);
        var s = g.Stream;
        float[] x = Data.Bf16Values(rng, (long)rows * cols, 2f), res = Data.Bf16Values(rng, (long)rows * cols), w = Data.Bf16Values(rng, cols, 1.5f);
        float[] dy = Data.Bf16Values(rng, (long)rows * cols), dres = Data.Bf16Values(rng, (long)rows * cols);
        const float eps = 1e-5f;
        long n = (long)rows * cols;
        using var dx_ = g.UploadBf16(x);
        using var dres_ = g.UploadBf16(res);
        using var dw_ = g.UploadBf16(w);
        using var y = g.Zeros(2 * n);
        using var h = g.Zeros(2 * n);
        using var rstd = g.Zeros(4L * rows);
        var k = g.Kernels.RmsNorm;
        if (residual) k.ForwardResidual(s, y.Ptr, rstd.Ptr, h.Ptr, dx_.Ptr, dres_.Ptr, dw_.Ptr, rows, cols, eps);
        else k.Forward(s, y.Ptr, rstd.Ptr, dx_.Ptr, dw_.Ptr, rows, cols, eps);
        var (ry, rr, rh) = RmsNormReference.Forward(x, residual ? res : null, w, rows, cols, eps);
        Tol.Close(g.DownloadBf16(y.Ptr, n), ry.F(), Tol.Bf16Atol, Tol.Bf16Rtol, "rmsnorm y");
        Tol.Close(g.Download<float>(rstd.Ptr, rows), rr, Tol.F32Atol, Tol.ReductionRtol, "rmsnorm rstd");
        if (residual) Assert.Equal(rh, g.DownloadBf16(h.Ptr, n));
        float[] hIn = residual ? rh : x;

        using var ddy = g.UploadBf16(dy);
        using var ddres = g.UploadBf16(dres);
        using var hbuf = g.UploadBf16(hIn);
        using var rstdRef = g.Upload<float>(rr);
        using var dxOut = g.Zeros(2 * n);
        using var dwOut = g.Upload<float>(Enumerable.Repeat(0.25f, cols).ToArray());
        using var partial = g.Zeros(RmsNormKernels.PartialBytes(rows, cols));
        k.Backward(s, dxOut.Ptr, dwOut.Ptr, ddy.Ptr, hbuf.Ptr, dw_.Ptr, rstdRef.Ptr, rows, cols, partial.Ptr, accumulateDw: true,
            dresidual: residual ? ddres.Ptr : default);
        var (rdx, rdw) = RmsNormReference.Backward(dy, hIn, w, rr, residual ? dres : null, rows, cols);
        Tol.Close(g.DownloadBf16(dxOut.Ptr, n), rdx.F(), 2e-3f, Tol.Bf16Rtol, "rmsnorm dx");
        Tol.Close(g.Download<float>(dwOut.Ptr, cols), rdw.Select(v => (float)(v + 0.25)).ToArray(), Tol.ReductionAtol * rows, Tol.ReductionRtol, "rmsnorm dw (accumulated)");

        // determinism: a second run is bitwise identical
        var first = g.Download<float>(dwOut.Ptr, cols);
        k.Backward(s, dxOut.Ptr, dwOut.Ptr, ddy.Ptr, hbuf.Ptr, dw_.Ptr, rstdRef.Ptr, rows, cols, partial.Ptr, accumulateDw: false);
        var second = g.Download<float>(dwOut.Ptr, cols);
        k.Backward(s, dxOut.Ptr, dwOut.Ptr, ddy.Ptr, hbuf.Ptr, dw_.Ptr, rstdRef.Ptr, rows, cols, partial.Ptr, accumulateDw: false);
        Assert.Equal(second, g.Download<float>(dwOut.Ptr, cols));
        Assert.NotEqual(first, second);
    }
}

[Collection("gpu")]
public class RopeGpuTests
{
    [Theory]
    [InlineData(2, 37, 3, 64, 0L, RopeScaling.None, 1.0)]
    [InlineData(1, 5, 4, 128, 16384L, RopeScaling.None, 1.0)]
    [InlineData(2, 17, 2, 128, 16380L, RopeScaling.Linear, 4.0)]
    [InlineData(1, 33, 8, 64, 16384L, RopeScaling.Ntk, 8.0)]
    public void ForwardBackwardMatchReference(int batch, int seq, int heads, int d, long offset, RopeScaling scaling, double factor)
    {
        var g = GpuTest.Require();
        var rng = new Random(seq * d);
        long n = (long)batch * seq * heads * d;
        float[] x = Data.Bf16Values(rng, n, 2f);
        float[] inv = RopeKernels.InverseFrequencies(d, 500000.0, scaling, factor);
        float lf = RopeKernels.LinearFactor(scaling, factor);
        using var dx = g.UploadBf16(x);
        using var dinv = g.Upload<float>(inv);
        using var y = g.Zeros(2 * n);
        g.Kernels.Rope.Forward(g.Stream, y.Ptr, dx.Ptr, dinv.Ptr, batch, seq, heads, d, offset, lf);
        Tol.Close(g.DownloadBf16(y.Ptr, n), RopeReference.Apply(x, inv, batch, seq, heads, d, offset, lf, false).F(), Tol.Bf16Atol, Tol.Bf16Rtol, "rope forward");
        g.Kernels.Rope.Backward(g.Stream, dx.Ptr, dx.Ptr, dinv.Ptr, batch, seq, heads, d, offset, lf);   // in place
        Tol.Close(g.DownloadBf16(dx.Ptr, n), RopeReference.Apply(x, inv, batch, seq, heads, d, offset, lf, true).F(), Tol.Bf16Atol, Tol.Bf16Rtol, "rope backward");
    }
}

[Collection("gpu")]
public class EmbeddingGpuTests
{
    [Theory]
    [InlineData(1, 10, 8)]
    [InlineData(300, 50, 123)]
    [InlineData(2 * 128, 1000, 512)]
    public void GatherAndDeterministicScatter(int tokens, int vocab, int cols)
    {
        var g = GpuTest.Require();
        var rng = new Random(tokens);
        float[] table = Data.Bf16Values(rng, (long)vocab * cols);
        int[] ids = Enumerable.Range(0, tokens).Select(_ => rng.Next(Math.Min(vocab, 17))).ToArray();   // many repeats
        float[] dout = Data.Bf16Values(rng, (long)tokens * cols);
        using var dt = g.UploadBf16(table);
        using var di = g.Upload<int>(ids);
        using var o = g.Zeros(2L * tokens * cols);
        g.Kernels.Embedding.Forward(g.Stream, o.Ptr, dt.Ptr, di.Ptr, tokens, vocab, cols);
        var got = g.DownloadBf16(o.Ptr, (long)tokens * cols);
        for (int n = 0; n < tokens; n++)
            for (int c = 0; c < cols; c++) Assert.Equal(table[ids[n] * cols + c], got[n * cols + c]);

        var b = EmbeddingKernels.BuildBuckets(ids, vocab);
        using var order = g.Upload<int>(b.Order);
        using var start = g.Upload<int>(b.BucketStart);
        using var bid = g.Upload<int>(b.BucketId);
        using var ddo = g.UploadBf16(dout);
        using var dtable = g.Zeros(4L * vocab * cols);
        g.Kernels.Embedding.Backward(g.Stream, dtable.Ptr, ddo.Ptr, order.Ptr, start.Ptr, bid.Ptr, b.Buckets, cols);
        var expect = new double[vocab * cols];
        for (int n = 0; n < tokens; n++)
            for (int c = 0; c < cols; c++) expect[ids[n] * cols + c] += dout[n * cols + c];
        var first = g.Download<float>(dtable.Ptr, (long)vocab * cols);
        Tol.Close(first, expect.F(), Tol.ReductionAtol, Tol.ReductionRtol, "embedding dtable");
        g.Kernels.Embedding.Backward(g.Stream, dtable.Ptr, ddo.Ptr, order.Ptr, start.Ptr, bid.Ptr, b.Buckets, cols);   // accumulates
        Tol.Close(g.Download<float>(dtable.Ptr, (long)vocab * cols), first.Select(v => 2 * v).ToArray(), 0, 1e-6f, "embedding accumulate");
    }
}

[Collection("gpu")]
public class AdamWGpuTests
{
    [Theory]
    [InlineData(1, false)]
    [InlineData(1000, false)]
    [InlineData(123457, true)]
    public void UpdateMatchesCpuReferenceAndNormIsDeterministic(int n, bool bf16Grad)
    {
        var gctx = GpuTest.Require();
        var s = gctx.Stream;
        var rng = new Random(n);
        float[] p = Data.Floats(rng, n), m = Data.Floats(rng, n, 0.01f), v = Data.Floats(rng, n, 0.001f).Select(Math.Abs).ToArray();
        float[] grad = bf16Grad ? Data.Bf16Values(rng, n, 0.1f) : Data.Floats(rng, n, 0.1f);
        using var dp = gctx.Upload<float>(p);
        using var dm = gctx.Upload<float>(m);
        using var dv = gctx.Upload<float>(v);
        using var dg = bf16Grad ? gctx.UploadBf16(grad) : gctx.Upload<float>(grad);
        using var pb = gctx.Zeros(2L * n);
        using var partials = gctx.Zeros(4L * 2 * Kernels.AdamWKernels.GradNormBlocks);
        using var norm = gctx.Zeros(12);
        var k = gctx.Kernels.AdamW;

        if (bf16Grad) k.GradNormPartialBf16(s, partials.Ptr, 0, dg.Ptr, n); else k.GradNormPartialF32(s, partials.Ptr, 0, dg.Ptr, n);
        k.GradNormFinalize(s, norm.Ptr, partials.Ptr, Kernels.AdamWKernels.GradNormBlocks, maxNorm: 0.5f);
        var nr = gctx.Download<float>(norm.Ptr, 3);
        double ss = grad.Sum(x => (double)x * x);
        Tol.Close([nr[0], nr[1]], [(float)ss, (float)Math.Sqrt(ss)], 1e-6f, Tol.ReductionRtol, "grad norm");
        float clip = (float)Math.Min(1.0, 0.5 / (Math.Sqrt(ss) + 1e-6));
        Tol.Close([nr[2]], [clip], 1e-6f, Tol.ReductionRtol, "clip factor");
        k.GradNormFinalize(s, norm.Ptr, partials.Ptr, Kernels.AdamWKernels.GradNormBlocks, maxNorm: 0.5f);
        Assert.Equal(nr, gctx.Download<float>(norm.Ptr, 3));

        var step = new Kernels.AdamWStep(1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7);
        if (bf16Grad) k.UpdateBf16Grad(s, dp.Ptr, pb.Ptr, dm.Ptr, dv.Ptr, dg.Ptr, n, step, 2f, norm.Ptr.Offset(8));
        else k.UpdateF32(s, dp.Ptr, pb.Ptr, dm.Ptr, dv.Ptr, dg.Ptr, n, step, 2f, norm.Ptr.Offset(8));
        AdamWReference.Step(p, grad, m, v, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 2f * nr[2]);
        var gotP = gctx.Download<float>(dp.Ptr, n);
        Tol.Close(gotP, p, 1e-6f, 1e-5f, "adamw master");
        Tol.Close(gctx.Download<float>(dm.Ptr, n), m, 1e-7f, 1e-5f, "adamw m");
        Tol.Close(gctx.Download<float>(dv.Ptr, n), v, 1e-9f, 1e-5f, "adamw v");
        Assert.Equal(Bf16.FromFloats(gotP), gctx.Download<ushort>(pb.Ptr, n));
    }
}

[Collection("gpu")]
public class CrossEntropyGpuTests
{
    [Theory]
    [InlineData(7, 123, 0f)]
    [InlineData(64, 1024, 1e-4f)]
    [InlineData(5, 32003, 1e-4f)]
    public void LossLseAndGradientMatchReference(int rows, int vocab, float zc)
    {
        var rng = new Random(rows * vocab);
        float[] logits = Data.Bf16Values(rng, (long)rows * vocab, 8f);
        int[] targets = Enumerable.Range(0, rows).Select(i => i % 3 == 1 ? -100 : rng.Next(vocab)).ToArray();
        Check(rows, vocab, zc, logits, targets, rng);
    }

    /// <summary>Masked logits (-inf, e.g. a padded vocabulary) where a thread's first values are all -inf: the online
    /// (max, sum) must not form exp(-inf - -inf) = NaN. Vocab 1024 takes the 8-wide path (thread t: columns 8t..8t+7,
    /// thread 0's all -inf in some rows), 123 the scalar path (thread t: column t).</summary>
    [Theory]
    [InlineData(6, 1024)]
    [InlineData(6, 123)]
    public void MaskedLogitsGiveFiniteLossesAndZeroGradients(int rows, int vocab)
    {
        var (logits, targets, rng) = CrossEntropyMirror.MaskedCase(rows, vocab, ignoreRow2: true);   // targets never masked
        Check(rows, vocab, 1e-4f, logits, targets, rng);
    }

    static void Check(int rows, int vocab, float zc, float[] logits, int[] targets, Random rng)
    {
        var g = GpuTest.Require();
        float[] dloss = Data.Floats(rng, rows).Select(x => x + 1.5f).ToArray();
        float scale = 1f / targets.Count(t => t >= 0);
        var (rl, rlse, rd) = CrossEntropyReference.Compute(logits, targets, rows, vocab, zc, dloss, scale);
        var k = g.Kernels.CrossEntropy;
        using var dt = g.Upload<int>(targets);
        using var ddl = g.Upload<float>(dloss);
        using var loss = g.Zeros(4L * rows);
        using var lse = g.Zeros(4L * rows);

        using (var dl = g.UploadBf16(logits))
        {
            k.Forward(g.Stream, dl.Ptr, loss.Ptr, lse.Ptr, dt.Ptr, rows, vocab, zc);
            Tol.Close(g.Download<float>(lse.Ptr, rows), rlse.F(), 1e-5f, 1e-5f, "ce lse");
            Tol.Close(g.Download<float>(loss.Ptr, rows), rl.F(), 1e-4f, 1e-5f, "ce loss");
            k.Backward(g.Stream, dl.Ptr, lse.Ptr, dt.Ptr, ddl.Ptr, scale, rows, vocab, zc);
            Tol.Close(g.DownloadBf16(dl.Ptr, (long)rows * vocab), rd.F(), 1e-6f, Tol.Bf16Rtol, "ce dlogits");
        }
        using (var dl = g.UploadBf16(logits))
        {
            using var loss2 = g.Zeros(4L * rows);
            k.ForwardBackward(g.Stream, dl.Ptr, loss2.Ptr, lse.Ptr, dt.Ptr, ddl.Ptr, scale, rows, vocab, zc);
            Tol.Close(g.Download<float>(loss2.Ptr, rows), rl.F(), 1e-4f, 1e-5f, "ce fused loss");
            Tol.Close(g.DownloadBf16(dl.Ptr, (long)rows * vocab), rd.F(), 1e-6f, Tol.Bf16Rtol, "ce fused dlogits");
        }
    }
}
