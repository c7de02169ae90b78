using Engine.Core;
using Engine.Cuda.Backend;
using AttentionImpl = Engine.Cuda.Kernels.AttentionImpl;

namespace Engine.Cuda.Tests.Backend;

/// <summary>Every IBackend op of CudaBackend against CpuBackend on the same bf16-representable random inputs.</summary>
[Collection("gpu")]
public class BackendOpGpuTests
{
    private static readonly CpuBackend Cpu = CpuBackend.Instance;

    [Fact]
    public void TransfersCastsAndFillsAtEveryLength()
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(1);
        for (int n = 0; n <= 256; n++)
        {
            float[] f = Data.Floats(rng, n, 3f);
            var f32 = be.Empty([n]);
            be.Upload(f32, f);
            Assert.Equal(f, f32.Host());                                   // exact
            var b16 = be.Empty([n], DType.BF16);
            be.Upload(b16, f);
            var rounded = f.Select(Bf16.Round).ToArray();
            Assert.Equal(rounded, b16.Host());                             // host rounding = round to nearest even
            var cast = be.Empty([n], DType.BF16);
            be.Copy(f32, cast);                                            // device cast_f32_to_bf16
            Assert.Equal(rounded, cast.Host());
            var back = be.Empty([n]);
            be.Copy(cast, back);
            Assert.Equal(rounded, back.Host());
            var ints = Enumerable.Range(0, n).Select(i => i * 7 - 100).ToArray();
            var i32 = be.Empty([n], DType.I32);
            be.Upload(i32, ints);
            Assert.Equal(ints.Select(i => (float)i).ToArray(), i32.Host());
            be.Fill(f32, -1.25f); be.Fill(b16, 0.1f); be.Fill(i32, 42);
            Assert.All(f32.Host(), x => Assert.Equal(-1.25f, x));
            Assert.All(b16.Host(), x => Assert.Equal(Bf16.Round(0.1f), x));
            Assert.All(i32.Host(), x => Assert.Equal(42f, x));
            Assert.All(be.Zeros([n], DType.BF16).Host(), x => Assert.Equal(0f, x));
        }
        var big = be.Empty([10, 3]);
        be.Upload(big, Enumerable.Range(0, 30).Select(i => (float)i).ToArray());
        Assert.Equal(Enumerable.Range(6, 6).Select(i => (float)i).ToArray(), big.Narrow0(2, 2).Host());   // views honour the offset
    }

    /// <summary>The device-resident scalar ops of the one-read step: SumInto equals the host's Sum / divisor rounded
    /// once (the same partials summed in the same order: bitwise), ScaleBy multiplies by a device scalar.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(1000)]
    [InlineData(100_003)]
    public void SumIntoAndScaleByStayOnTheDevice(int n)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(n + 5);
        var x = be.Empty([n]);
        be.Upload(x, Data.Floats(rng, n, 3f));
        var result = be.Empty([1]);
        long syncs = be.Stream.Synchronizations;
        be.SumInto(x, result, 7f);
        Assert.Equal(syncs, be.Stream.Synchronizations);   // nothing waited
        Assert.Equal((float)(be.Sum(x) / 7f), result.Host()[0]);
        foreach (var dtype in new[] { DType.F32, DType.BF16 })
        {
            float[] v = Data.Bf16Values(rng, n, 2f);
            var t = be.Empty([n], dtype);
            be.Upload(t, v);
            var s = be.Empty([1]);
            be.Upload(s, [-0.5f]);
            be.ScaleBy(t, s);
            Assert.Equal(v.Select(a => dtype == DType.BF16 ? Bf16.Round(-0.5f * a) : -0.5f * a).ToArray(), t.Host());
            be.Upload(s, [1f]);
            var before = t.Host();
            be.ScaleBy(t, s);
            Assert.Equal(before, t.Host());   // the training seed: x · 1 = x exactly
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(255)]
    [InlineData(100_003)]
    public void ElementwiseOpsAndReductions(int n)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(n);
        float[] a = Data.Bf16Values(rng, n, 2f), b = Data.Bf16Values(rng, n, 2f);
        var (ga, ca) = be.Pair(a, [n], DType.BF16);
        var (gb, cb) = be.Pair(b, [n], DType.BF16);
        var gy = be.Empty([n], DType.BF16); var cy = Cpu.Empty([n]);
        be.Add(ga, gb, gy); Cpu.Add(ca, cb, cy);
        BackendTol.Elementwise(gy.Host(), cy.Span.ToArray().Select(Bf16.Round).ToArray(), "add bf16");

        foreach (float alpha in new[] { 1f, -0.5f })
            foreach (var (accType, xType) in new[] { (DType.F32, DType.F32), (DType.F32, DType.BF16), (DType.BF16, DType.BF16), (DType.BF16, DType.F32) })
            {
                var (gacc, cacc) = be.Pair(a, [n], accType);
                var (gx, cx) = be.Pair(b, [n], xType);
                be.AddInPlace(gacc, gx, alpha); Cpu.AddInPlace(cacc, cx, alpha);
                var want = cacc.Span.ToArray();
                if (accType == DType.BF16) want = want.Select(Bf16.Round).ToArray();
                if (accType == DType.F32) Tol.Close(gacc.Host(), want, 1e-6f, 1e-6f, $"axpy {accType} += {alpha} {xType}");
                else BackendTol.Elementwise(gacc.Host(), want, $"axpy {accType} += {alpha} {xType}");
            }

        foreach (var dt in new[] { DType.F32, DType.BF16 })
        {
            var (g, c) = be.Pair(a, [n], dt);
            Assert.Equal(Cpu.Sum(c), be.Sum(g), Math.Max(1e-3, 1e-5 * n));
            Assert.Equal(Cpu.SumOfSquares(c), be.SumOfSquares(g), 1e-5 * Cpu.SumOfSquares(c) + 1e-6);
            Assert.Equal(be.Sum(g), be.Sum(g));                              // fixed grid: bitwise repeatable
            be.Scale(g, -3f); Cpu.Scale(c, -3f);
            var want = c.Span.ToArray();
            if (dt == DType.BF16) want = want.Select(Bf16.Round).ToArray();
            BackendTol.Elementwise(g.Host(), want, $"scale {dt}");
        }
        var (ff, cf) = be.Pair(a, [n], DType.F32);
        var (fx, cx2) = be.Pair(b, [n], DType.F32);
        be.AddSquare(ff, fx); Cpu.AddSquare(cf, cx2);
        Tol.Close(ff.Host(), cf.Span.ToArray(), 1e-6f, 1e-6f, "add square");
    }

    [Theory]
    [InlineData(false, false, 128, 256, 128)]
    [InlineData(false, true, 128, 384, 256)]
    [InlineData(true, false, 256, 128, 128)]
    [InlineData(true, true, 64, 64, 96)]
    [InlineData(false, true, 5, 123, 123)]
    public void MatMulThroughParameterShadows(bool transA, bool transB, int m, int n, int k)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(m * 7 + n + k);
        int[] aShape = transA ? [k, m] : [m, k], bShape = transB ? [n, k] : [k, n];
        var (ga, ca) = be.Pair(Data.Bf16Values(rng, (long)m * k), aShape, DType.BF16);
        var (gw, cw) = be.Pair(Data.Bf16Values(rng, (long)k * n, 0.5f), bShape, DType.F32);   // an fp32 "parameter"
        gw.IsParameter = true;
        var gc = be.Empty([m, n], DType.BF16); var cc = Cpu.Empty([m, n]);
        be.MatMul(ga, transA, gw, transB, gc); Cpu.MatMul(ca, transA, cw, transB, cc);
        BackendTol.Tensor(gc.Host(), cc.Span.ToArray(), "matmul bf16 out");

        // fp32 accumulation with beta = 1 (weight gradients)
        float[] init = Data.Floats(rng, (long)m * n);
        var (gacc, cacc) = be.Pair(init, [m, n], DType.F32);
        be.MatMul(ga, transA, gw, transB, gacc, 0.5f, 1f); Cpu.MatMul(ca, transA, cw, transB, cacc, 0.5f, 1f);
        Tol.Close(gacc.Host(), cacc.Span.ToArray(), BackendTol.StatAtol * k, BackendTol.StatRtol, "matmul fp32 accumulate");

        // a new upload makes the shadow stale: the next GEMM sees the new values
        float[] w2 = Data.Bf16Values(rng, (long)k * n, 0.5f);
        be.Upload(gw, w2); Cpu.Upload(cw, w2);
        be.MatMul(ga, transA, gw, transB, gc); Cpu.MatMul(ca, transA, cw, transB, cc);
        BackendTol.Tensor(gc.Host(), cc.Span.ToArray(), "matmul after re-upload");
        Assert.True(((CudaStorage)gw.Storage).ShadowIsCurrent);
    }

    [Theory]
    [InlineData(128, 256)]
    [InlineData(615, 123)]
    public void RmsNormForwardBackward(int rows, int cols)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(rows + cols);
        var (gx, cx) = be.Pair(Data.Bf16Values(rng, (long)rows * cols, 2f), [rows, cols], DType.BF16);
        var (gw, cw) = be.Pair(Data.Bf16Values(rng, cols, 1.5f), [cols], DType.F32);
        var gy = be.Empty([rows, cols], DType.BF16); var cy = Cpu.Empty([rows, cols]);
        var gr = be.Empty([rows]); var cr = Cpu.Empty([rows]);
        be.RmsNormForward(gx, gw, gy, gr, 1e-5f); Cpu.RmsNormForward(cx, cw, cy, cr, 1e-5f);
        BackendTol.Elementwise(gy.Host(), cy.Span.ToArray(), "rmsnorm y");
        BackendTol.Stat(gr.Host(), cr.Span.ToArray(), "rmsnorm rstd");

        var (gdy, cdy) = be.Pair(Data.Bf16Values(rng, (long)rows * cols), [rows, cols], DType.BF16);
        var gdx = be.Empty([rows, cols], DType.BF16); var cdx = Cpu.Empty([rows, cols]);
        var (gdw, cdw) = be.Pair(Data.Floats(rng, cols), [cols], DType.F32);
        var rstdRef = Up(be, cr.Span.ToArray());   // both backwards read the same rstd: only the backward's error is measured
        be.RmsNormBackward(gdy, gx, gw, rstdRef, gdx, gdw);
        Cpu.RmsNormBackward(cdy, cx, cw, cr, cdx, cdw);
        BackendTol.Tensor(gdx.Host(), cdx.Span.ToArray(), "rmsnorm dx");
        BackendTol.Tensor(gdw.Host(), cdw.Span.ToArray(), "rmsnorm dw (accumulated)");
    }

    /// <summary>The fused residual add + norm (F.AddRmsNorm: rmsnorm.cu's residual path) against the CPU's Add then
    /// RmsNorm: h is the bf16-rounded sum (exactly the separate bf16 add), y and rstd as the norm of h; the backward
    /// adds the residual stream's gradient in the same kernel.</summary>
    [Theory]
    [InlineData(64, 256)]
    [InlineData(37, 123)]
    public void RmsNormWithTheResidualFused(int rows, int cols)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(rows * 3 + cols);
        float[] x = Data.Bf16Values(rng, (long)rows * cols, 2f), r = Data.Bf16Values(rng, (long)rows * cols, 2f);
        var (gx, cx) = be.Pair(x, [rows, cols], DType.BF16);
        var (gres, cres) = be.Pair(r, [rows, cols], DType.BF16);
        var (gw, cw) = be.Pair(Data.Bf16Values(rng, cols, 1.5f), [cols], DType.F32);
        var gh = be.Empty([rows, cols], DType.BF16); var ch = Cpu.Empty([rows, cols]);
        var gy = be.Empty([rows, cols], DType.BF16); var cy = Cpu.Empty([rows, cols]);
        var gr = be.Empty([rows]); var cr = Cpu.Empty([rows]);
        be.RmsNormResidualForward(gx, gres, gw, gh, gy, gr, 1e-5f);
        ((IBackend)Cpu).RmsNormResidualForward(cx, cres, cw, ch, cy, cr, 1e-5f);
        Assert.Equal(x.Select((v, i) => Bf16.Round(v + r[i])).ToArray(), gh.Host());   // one bf16 rounding of the sum
        BackendTol.Elementwise(gy.Host(), cy.Span.ToArray(), "fused rmsnorm y");
        BackendTol.Stat(gr.Host(), cr.Span.ToArray(), "fused rmsnorm rstd");

        var (gdy, cdy) = be.Pair(Data.Bf16Values(rng, (long)rows * cols), [rows, cols], DType.BF16);
        var (gdres, cdres) = be.Pair(Data.Bf16Values(rng, (long)rows * cols), [rows, cols], DType.BF16);
        var gdx = be.Empty([rows, cols], DType.BF16); var cdx = Cpu.Empty([rows, cols]);
        var (gdw, cdw) = be.Pair(Data.Floats(rng, cols), [cols], DType.F32);
        var rstdRef = Up(be, cr.Span.ToArray());
        var (ghRef, _) = be.Pair(ch.Span.ToArray(), [rows, cols], DType.BF16);
        be.RmsNormResidualBackward(gdy, ghRef, gw, rstdRef, gdx, gdw, gdres);
        ((IBackend)Cpu).RmsNormResidualBackward(cdy, ch, cw, cr, cdx, cdw, cdres);
        BackendTol.Tensor(gdx.Host(), cdx.Span.ToArray(), "fused rmsnorm dx (+ dresidual)");
        BackendTol.Tensor(gdw.Host(), cdw.Span.ToArray(), "fused rmsnorm dw (accumulated)");
    }

    /// <summary>The fused-projection ops on the fused rows (row strides into one GEMM's q|k|v or gate|up output)
    /// against the interface's column-copy defaults on the CPU, v1 and v2 attention, and the column copy both ways.</summary>
    [Theory]
    [InlineData(2, 100, 4, 2, 64, false)]
    [InlineData(2, 100, 4, 2, 64, true)]
    [InlineData(1, 77, 8, 2, 32, true)]
    [InlineData(1, 64, 4, 4, 128, false)]
    public void FusedProjectionOpsReadTheFusedRows(int batch, int seq, int heads, int kvHeads, int d, bool v2)
    {
        var be = GpuBackend.Require();
        IBackend cpu = Cpu;
        var saved = be.AttentionPreference;
        be.AttentionPreference = v2 ? AttentionImpl.V2 : AttentionImpl.V1;
        try
        {
            using var scope = new TensorScope();
            var rng = new Random(batch + seq + d);
            var dims = new AttentionDims(batch, seq, heads, kvHeads, d);
            int n = batch * seq, row = dims.QRow + 2 * dims.KvRow;
            var p = new RopeParams(d, 10000);
            var (gqkv, cqkv) = be.Pair(Data.Bf16Values(rng, (long)n * row, 2f), [n, row], DType.BF16);
            // column copy out and back
            var gk = be.Empty([n, dims.KvRow], DType.BF16);
            be.CopyColumns(gqkv, dims.QRow, gk, 0, dims.KvRow);
            var host = cqkv.Span.ToArray();
            for (int r = 0; r < n; r++)
                for (int c = 0; c < dims.KvRow; c++) Assert.Equal(host[r * row + dims.QRow + c], gk.Host()[r * dims.KvRow + c]);
            // RoPE in place on q and k, then attention and its backward on the fused rows
            foreach (var (col, h) in new[] { (0, heads), (dims.QRow, kvHeads) })
            {
                be.RopeColumns(gqkv, col, p, batch, seq, h, 0, inverse: false);
                cpu.RopeColumns(cqkv, col, p, batch, seq, h, 0, inverse: false);
            }
            BackendTol.Elementwise(gqkv.Host(), cqkv.Span.ToArray(), "rope on the q and k columns");
            var (gsame, _) = be.Pair(cqkv.Span.ToArray(), [n, row], DType.BF16);   // both attentions read the same roped rows
            var go = be.Empty([n, dims.QRow], DType.BF16); var co = Cpu.Empty([n, dims.QRow]);
            var gl = be.Empty([batch, heads, seq]); var cl = Cpu.Empty([batch, heads, seq]);
            be.AttentionForwardFused(gsame, go, gl, dims); cpu.AttentionForwardFused(cqkv, co, cl, dims);
            BackendTol.Tensor(go.Host(), co.Span.ToArray(), "fused attention o");
            BackendTol.Stat(gl.Host(), cl.Span.ToArray(), "fused attention lse");
            var (gdo, cdo) = be.Pair(Data.Bf16Values(rng, (long)n * dims.QRow), [n, dims.QRow], DType.BF16);
            var gd = be.Empty([n, row], DType.BF16); var cd = Cpu.Empty([n, row]);
            var (glRef, _) = be.Pair(cl.Span.ToArray(), [batch, heads, seq], DType.F32);
            var (goRef, _) = be.Pair(co.Span.ToArray(), [n, dims.QRow], DType.BF16);
            be.AttentionBackwardFused(gdo, gsame, goRef, glRef, gd, dims); cpu.AttentionBackwardFused(cdo, cqkv, co, cl, cd, dims);
            BackendTol.Tensor(gd.Host(), cd.Span.ToArray(), "fused attention dq|dk|dv");

            // gate | up
            int f = 3 * d;
            var (ggu, cgu) = be.Pair(Data.Bf16Values(rng, (long)n * 2 * f, 3f), [n, 2 * f], DType.BF16);
            var gh = be.Empty([n, f], DType.BF16); var ch = Cpu.Empty([n, f]);
            be.SwiGluFusedForward(ggu, gh); cpu.SwiGluFusedForward(cgu, ch);
            BackendTol.Elementwise(gh.Host(), ch.Span.ToArray(), "fused swiglu");
            var (gdh, cdh) = be.Pair(Data.Bf16Values(rng, (long)n * f), [n, f], DType.BF16);
            var gdgu = be.Empty([n, 2 * f], DType.BF16); var cdgu = Cpu.Empty([n, 2 * f]);
            be.SwiGluFusedBackward(gdh, ggu, gdgu); cpu.SwiGluFusedBackward(cdh, cgu, cdgu);
            BackendTol.Elementwise(gdgu.Host(), cdgu.Span.ToArray(), "fused swiglu dgate|dup");
        }
        finally { be.AttentionPreference = saved; }
    }

    private static Tensor Up(CudaBackend be, float[] values)
    {
        var t = be.Empty([values.Length]);
        be.Upload(t, values);
        return t;
    }

    [Theory]
    [InlineData(2, 37, 4, 64, 0, RopeScalingKind.None, 1.0)]
    [InlineData(1, 16, 2, 128, 16380, RopeScalingKind.Linear, 4.0)]
    [InlineData(1, 9, 3, 64, 4096, RopeScalingKind.Ntk, 8.0)]
    public void RopeForwardAndInverse(int batch, int seq, int heads, int d, int offset, RopeScalingKind kind, double factor)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(seq * d);
        var p = new RopeParams(d, 10000, kind, factor);
        int[] shape = [batch * seq, heads * d];
        var (gx, cx) = be.Pair(Data.Bf16Values(rng, (long)batch * seq * heads * d), shape, DType.BF16);
        foreach (bool inverse in new[] { false, true })
        {
            var gy = be.Empty(shape, DType.BF16); var cy = Cpu.Empty(shape);
            be.Rope(gx, gy, p, batch, seq, heads, offset, inverse); Cpu.Rope(cx, cy, p, batch, seq, heads, offset, inverse);
            BackendTol.Elementwise(gy.Host(), cy.Span.ToArray(), $"rope inverse={inverse}");
        }
        be.Rope(gx, gx, p, batch, seq, heads, offset, false);   // in place
        var cy2 = Cpu.Empty(shape); Cpu.Rope(cx, cy2, p, batch, seq, heads, offset, false);
        BackendTol.Elementwise(gx.Host(), cy2.Span.ToArray(), "rope in place");
    }

    [Theory]
    [InlineData(2, 100, 4, 2, 64, false)]
    [InlineData(1, 64, 8, 8, 128, false)]
    [InlineData(3, 17, 8, 1, 64, false)]
    [InlineData(2, 100, 4, 2, 64, true)]     // ENGINE_ATTENTION=v2
    [InlineData(1, 64, 8, 8, 128, true)]
    [InlineData(2, 129, 4, 1, 32, false)]    // head dim 32 (every shipped config): v2 whatever the switch
    [InlineData(1, 70, 4, 2, 96, false)]
    public void AttentionForwardBackward(int batch, int seq, int heads, int kvHeads, int d, bool v2)
    {
        var be = GpuBackend.Require();
        var saved = be.AttentionPreference;
        be.AttentionPreference = v2 ? AttentionImpl.V2 : AttentionImpl.V1;
        try { AttentionAgainstCpu(be, batch, seq, heads, kvHeads, d); }
        finally { be.AttentionPreference = saved; }
    }

    private static void AttentionAgainstCpu(CudaBackend be, int batch, int seq, int heads, int kvHeads, int d)
    {
        using var scope = new TensorScope();
        var rng = new Random(seq * heads + d);
        var dims = new AttentionDims(batch, seq, heads, kvHeads, d);
        int n = batch * seq;
        var (gq, cq) = be.Pair(Data.Bf16Values(rng, (long)n * dims.QRow), [n, dims.QRow], DType.BF16);
        var (gk, ck) = be.Pair(Data.Bf16Values(rng, (long)n * dims.KvRow), [n, dims.KvRow], DType.BF16);
        var (gv, cv) = be.Pair(Data.Bf16Values(rng, (long)n * dims.KvRow), [n, dims.KvRow], DType.BF16);
        var go = be.Empty([n, dims.QRow], DType.BF16); var co = Cpu.Empty([n, dims.QRow]);
        var gl = be.Empty([batch, heads, seq]); var cl = Cpu.Empty([batch, heads, seq]);
        be.AttentionForward(gq, gk, gv, go, gl, dims); Cpu.AttentionForward(cq, ck, cv, co, cl, dims);
        BackendTol.Tensor(go.Host(), co.Span.ToArray(), "attention o");
        BackendTol.Stat(gl.Host(), cl.Span.ToArray(), "attention lse");

        var (gdo, cdo) = be.Pair(Data.Bf16Values(rng, (long)n * dims.QRow), [n, dims.QRow], DType.BF16);
        var gdq = be.Empty([n, dims.QRow], DType.BF16); var cdq = Cpu.Empty([n, dims.QRow]);
        var gdk = be.Empty([n, dims.KvRow], DType.BF16); var cdk = Cpu.Empty([n, dims.KvRow]);
        var gdv = be.Empty([n, dims.KvRow], DType.BF16); var cdv = Cpu.Empty([n, dims.KvRow]);
        be.AttentionBackward(gdo, gq, gk, gv, go, gl, gdq, gdk, gdv, dims);
        Cpu.AttentionBackward(cdo, cq, ck, cv, co, cl, cdq, cdk, cdv, dims);
        BackendTol.Tensor(gdq.Host(), cdq.Span.ToArray(), "attention dq");
        BackendTol.Tensor(gdk.Host(), cdk.Span.ToArray(), "attention dk");
        BackendTol.Tensor(gdv.Host(), cdv.Span.ToArray(), "attention dv");
    }

    [Theory]
    [InlineData(1, 0, 4, 2, 64)]
    [InlineData(5, 37, 4, 2, 64)]
    [InlineData(1, 300, 8, 8, 128)]
    [InlineData(7, 0, 2, 1, 32)]
    public void AttentionDecodeAgainstTheCache(int n, int offset, int heads, int kvHeads, int d)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(n + offset + d);
        int len = offset + n, cap = len + 3;
        var (gq, cq) = be.Pair(Data.Bf16Values(rng, (long)n * heads * d), [n, heads * d], DType.BF16);
        var (gk, ck) = be.Pair(Data.Bf16Values(rng, (long)cap * kvHeads * d), [cap, kvHeads * d], DType.BF16);
        var (gv, cv) = be.Pair(Data.Bf16Values(rng, (long)cap * kvHeads * d), [cap, kvHeads * d], DType.BF16);
        var go = be.Empty([n, heads * d], DType.BF16); var co = Cpu.Empty([n, heads * d]);
        be.AttentionDecode(gq, gk.Narrow0(0, len), gv.Narrow0(0, len), go, heads, kvHeads, d, offset);
        Cpu.AttentionDecode(cq, ck.Narrow0(0, len), cv.Narrow0(0, len), co, heads, kvHeads, d, offset);
        BackendTol.Tensor(go.Host(), co.Span.ToArray(), "attention decode");
    }

    [Theory]
    [InlineData(257)]
    [InlineData(128 * 344)]
    public void SwiGluForwardBackward(int n)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(n);
        var (gg, cg) = be.Pair(Data.Bf16Values(rng, n, 4f), [n], DType.BF16);
        var (gu, cu) = be.Pair(Data.Bf16Values(rng, n, 2f), [n], DType.BF16);
        var (gdh, cdh) = be.Pair(Data.Bf16Values(rng, n), [n], DType.BF16);
        var gh = be.Empty([n], DType.BF16); var ch = Cpu.Empty([n]);
        be.SwiGluForward(gg, gu, gh); Cpu.SwiGluForward(cg, cu, ch);
        BackendTol.Elementwise(gh.Host(), ch.Span.ToArray(), "swiglu h");
        var gdg = be.Empty([n], DType.BF16); var cdg = Cpu.Empty([n]);
        var gdu = be.Empty([n], DType.BF16); var cdu = Cpu.Empty([n]);
        be.SwiGluBackward(gdh, gg, gu, gdg, gdu); Cpu.SwiGluBackward(cdh, cg, cu, cdg, cdu);
        BackendTol.Elementwise(gdg.Host(), cdg.Span.ToArray(), "swiglu dgate");
        BackendTol.Elementwise(gdu.Host(), cdu.Span.ToArray(), "swiglu dup");
    }

    [Theory]
    [InlineData(300, 50, 123)]
    [InlineData(128, 512, 256)]
    public void EmbeddingForwardBackward(int tokens, int vocab, int cols)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(tokens + vocab);
        var ids = Enumerable.Range(0, tokens).Select(_ => rng.Next(vocab / 3)).ToArray();   // many repeats
        var (gi, ci) = be.PairInts(ids);
        var (gt, ct) = be.Pair(Data.Bf16Values(rng, (long)vocab * cols), [vocab, cols], DType.F32);
        gt.IsParameter = true;
        var gy = be.Empty([tokens, cols], DType.BF16); var cy = Cpu.Empty([tokens, cols]);
        be.EmbeddingForward(gi, gt, gy); Cpu.EmbeddingForward(ci, ct, cy);
        Assert.Equal(cy.Span.ToArray(), gy.Host());                     // a gather of bf16-exact values is exact

        var (gdy, cdy) = be.Pair(Data.Bf16Values(rng, (long)tokens * cols), [tokens, cols], DType.BF16);
        var (gd, cd) = be.Pair(Data.Floats(rng, (long)vocab * cols), [vocab, cols], DType.F32);
        be.EmbeddingBackward(gi, gdy, gd); Cpu.EmbeddingBackward(ci, cdy, cd);
        BackendTol.Stat(gd.Host(), cd.Span.ToArray(), "embedding dtable (host ids)");

        // ids written on the device (no current host copy): the backend downloads them
        var gi2 = be.Empty([tokens], DType.I32);
        be.Copy(gi, gi2);
        be.EmbeddingBackward(gi2, gdy, gd); Cpu.EmbeddingBackward(ci, cdy, cd);
        BackendTol.Stat(gd.Host(), cd.Span.ToArray(), "embedding dtable (downloaded ids)");
    }

    [Theory]
    [InlineData(128, 512, 0f, 0f)]
    [InlineData(61, 1000, 1e-4f, 0f)]
    [InlineData(128, 512, 0f, 2e-4f)]      // Baichuan 2's max-z loss (argmax pass, vector path)
    [InlineData(61, 1001, 1e-4f, 0.05f)]   // with z-loss, odd vocab: the scalar path
    public void CrossEntropyLossesAndInPlaceGradient(int rows, int vocab, float zLoss, float maxZ)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(rows + vocab);
        var logits = Data.Bf16Values(rng, (long)rows * vocab, 6f);
        var targets = Enumerable.Range(0, rows).Select(i => i % 7 == 3 ? -100 : rng.Next(vocab)).ToArray();
        int valid = targets.Count(t => t != -100);
        var (gt, ct) = be.PairInts(targets);
        foreach (bool grad in new[] { false, true })
        {
            var (gl, cl) = be.Pair(logits, [rows, vocab], DType.BF16);
            var gloss = be.Empty([rows]); var closs = Cpu.Empty([rows]);
            var glse = be.Empty([rows]); var clse = Cpu.Empty([rows]);
            be.CrossEntropy(gl, gt, gloss, glse, zLoss, grad, 1f / valid, maxZ);
            Cpu.CrossEntropy(cl, ct, closs, clse, zLoss, grad, 1f / valid, maxZ);
            BackendTol.Stat(gloss.Host(), closs.Span.ToArray(), "cross-entropy losses");
            BackendTol.Stat(glse.Host(), clse.Span.ToArray(), "cross-entropy lse");
            Assert.Equal(Cpu.Sum(closs), be.Sum(gloss), 1e-3 * Math.Abs(Cpu.Sum(closs)) + 1e-4);
            if (grad) BackendTol.Tensor(gl.Host(), cl.Span.ToArray(), "cross-entropy dlogits (in place)");
            else Assert.Equal(logits, gl.Host());                       // forward only: logits untouched
        }
    }

    [Theory]
    [InlineData(1000, false)]
    [InlineData(12345, true)]
    public void AdamWUpdatesMasterAndShadowTogether(int n, bool bf16Grad)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(n);
        int rows = n / 5, cols = 5;
        var (gp, cp) = be.Pair(Data.Floats(rng, n), [rows, cols], DType.F32);
        gp.IsParameter = true;
        var (gg, cg) = be.Pair(Data.Bf16Values(rng, n, 0.01f), [rows, cols], bf16Grad ? DType.BF16 : DType.F32);
        var (gm, cm) = be.Pair(new float[n], [rows, cols], DType.F32);
        var (gv, cv) = be.Pair(new float[n], [rows, cols], DType.F32);
        for (int step = 1; step <= 3; step++)
        {
            var s = new AdamWStep(1e-3f, 0.9f, 0.95f, 1e-8f, 0f, step, 0.7f);
            AdamWRun[] all = [new AdamWRun(0, 0, 0, n, 0.1f)];
            be.AdamW(gp, gg, gm, gv, all, s); Cpu.AdamW(cp, cg, cm, cv, all, s);
        }
        Tol.Close(gp.Host(), cp.Span.ToArray(), 1e-6f, 1e-5f, "adamw master");
        Tol.Close(gm.Host(), cm.Span.ToArray(), 1e-9f, 1e-5f, "adamw m");
        Tol.Close(gv.Host(), cv.Span.ToArray(), 1e-12f, 1e-5f, "adamw v");

        // the shadow the GEMMs read is bf16(master): same product as a bf16 upload of the downloaded master, bitwise
        var st = (CudaStorage)gp.Storage;
        Assert.True(st.ShadowIsCurrent);
        var x = be.Empty([3, cols], DType.BF16);
        be.Upload(x, Data.Bf16Values(rng, 3 * cols));
        var viaShadow = be.Empty([3, rows], DType.BF16);
        be.MatMul(x, false, gp, true, viaShadow);
        var explicitBf16 = be.Empty([rows, cols], DType.BF16);
        be.Upload(explicitBf16, gp.Host());
        var viaCopy = be.Empty([3, rows], DType.BF16);
        be.MatMul(x, false, explicitBf16, true, viaCopy);
        Assert.Equal(viaCopy.Host(), viaShadow.Host());
    }

    [Fact]
    public void EwcPenaltyAndGradient()
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(5);
        int n = 70_001;
        var (gp, cp) = be.Pair(Data.Floats(rng, n), [n], DType.F32);
        var (ga, ca) = be.Pair(Data.Floats(rng, n), [n], DType.F32);
        var (gf, cf) = be.Pair(Data.Floats(rng, n).Select(Math.Abs).ToArray(), [n], DType.F32);
        var (gg, cg) = be.Pair(Data.Floats(rng, n), [n], DType.F32);
        double gpu = be.Ewc(gp, ga, gf, gg, 0.3f), cpu = Cpu.Ewc(cp, ca, cf, cg, 0.3f);
        Assert.Equal(cpu, gpu, 1e-5 * Math.Abs(cpu));
        Tol.Close(gg.Host(), cg.Span.ToArray(), 1e-6f, 1e-6f, "ewc grad");
    }

    /// <summary>Chunk partials of the flat-store gradient norm: fp32 sums in another order than the CPU's SIMD lanes
    /// (relative 1e-5), and bitwise the same on a second launch and for any slice of whole chunks.</summary>
    [Theory]
    [InlineData(70_001, false)]
    [InlineData(4096 * 3, true)]
    public void ChunkSumOfSquaresAndNormFinalize(int n, bool bf16)
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(n);
        const int chunk = 4096;
        int chunks = (n + chunk - 1) / chunk;
        var (gx, cx) = be.Pair(Data.Bf16Values(rng, n), [n], bf16 ? DType.BF16 : DType.F32);
        var gp = be.Empty([chunks]); var cp = Cpu.Empty([chunks]);
        be.ChunkSumOfSquares(gx, chunk, gp);
        var cIn = Cpu.Empty([n]); Cpu.Upload(cIn, gx.Host());   // the bf16-rounded values the GPU read
        Cpu.ChunkSumOfSquares(cIn, chunk, cp);
        Tol.Close(gp.Host(), cp.Span.ToArray(), 1e-6f, 1e-5f, "chunk partials");
        var again = be.Empty([chunks]);
        be.ChunkSumOfSquares(gx, chunk, again);
        Assert.Equal(gp.Host(), again.Host());                                  // deterministic
        if (n >= 2 * chunk)
        {
            var tail = be.Empty([chunks - 1]);
            be.ChunkSumOfSquares(gx.Range(chunk, n - chunk), chunk, tail);
            Assert.Equal(gp.Host()[1..], tail.Host());                          // layout-independent per chunk
        }
        foreach (float maxNorm in new[] { 0f, 1f, 1e9f })
        {
            var gr = be.Empty([3]); var cr = Cpu.Empty([3]);
            be.GradNormFinalize(gp, maxNorm, gr); Cpu.GradNormFinalize(cp, maxNorm, cr);
            Tol.Close(gr.Host(), cr.Span.ToArray(), 1e-6f, 1e-5f, $"norm finalize (max {maxNorm})");
        }
        // a non-finite partial makes the clip factor NaN, which makes the AdamW kernel write nothing
        be.Upload(gp.Range(0, 1), [float.PositiveInfinity]);
        var bad = be.Empty([3]);
        be.GradNormFinalize(gp, 1f, bad);
        Assert.True(float.IsNaN(bad.Host()[2]));
        var w = be.Empty([8]); be.Upload(w, Enumerable.Range(0, 8).Select(i => (float)i).ToArray());
        var g = be.Zeros([8]); var m = be.Zeros([8]); var v = be.Zeros([8]);
        be.AdamW(w, g, m, v, [new AdamWRun(0, 0, 0, 8, 0.1f)], new AdamWStep(1e-2f, 0.9f, 0.95f, 1e-8f, 0f, 1), bad.Range(2, 1));
        Assert.Equal(Enumerable.Range(0, 8).Select(i => (float)i).ToArray(), w.Host());
    }

    /// <summary>One multi-run launch: runs at offsets of three buffers with their own weight decay, a gap left alone,
    /// the clip factor read from the device; equal to the CPU reference run by run.</summary>
    [Fact]
    public void AdamWOverRunsOfFlatBuffers()
    {
        var be = GpuBackend.Require();
        using var scope = new TensorScope();
        var rng = new Random(11);
        const int n = 20_000;
        var (gw, cw) = be.Pair(Data.Floats(rng, n), [n], DType.F32);
        var (gg, cg) = be.Pair(Data.Floats(rng, n, 0.01f), [n], DType.F32);
        var (gm, cm) = be.Pair(new float[n], [n], DType.F32);
        var (gv, cv) = be.Pair(new float[n], [n], DType.F32);
        var (gs, cs) = be.Pair([0.5f], [1], DType.F32);
        // master [0, 6000) decayed, [6400, 9000) not, [12000, 20000) decayed; gradients and moments at other offsets
        AdamWRun[] runs = [new(0, 1000, 0, 6000, 0.1f), new(6400, 7400, 6000, 2600, 0f), new(12000, 11000, 8600, 8000, 0.1f)];
        var before = gw.Host();
        for (int step = 1; step <= 3; step++)
        {
            var s = new AdamWStep(1e-3f, 0.9f, 0.95f, 1e-8f, 0f, step, 0.7f);
            be.AdamW(gw, gg, gm, gv, runs, s, gs); Cpu.AdamW(cw, cg, cm, cv, runs, s, cs);
        }
        var after = gw.Host();
        Tol.Close(after, cw.Span.ToArray(), 1e-6f, 1e-5f, "adamw runs master");
        Tol.Close(gm.Host(), cm.Span.ToArray(), 1e-9f, 1e-5f, "adamw runs m");
        Tol.Close(gv.Host(), cv.Span.ToArray(), 1e-12f, 1e-5f, "adamw runs v");
        Assert.Equal(before[6000..6400], after[6000..6400]);                     // the gap is not written
        Assert.Equal(before[9000..12000], after[9000..12000]);
    }
}
