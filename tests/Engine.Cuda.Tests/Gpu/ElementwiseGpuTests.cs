using Engine.Cuda.Tests.Reference;

namespace Engine.Cuda.Tests.Gpu;

[Collection("gpu")]
public class ElementwiseGpuTests
{
    public static TheoryData<int> Lengths()
    {
        var d = new TheoryData<int>();
        foreach (int n in new[] { 0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 100, 255, 256, 257, 4099, 1 << 20 }) d.Add(n);
        return d;
    }

    [Theory]
    [MemberData(nameof(Lengths))]
    public void CastsAddScaleAxpyFillAtEveryTail(int n)
    {
        var g = GpuTest.Require();
        var rng = new Random(n + 1);
        var s = g.Stream;
        var k = g.Kernels.Elementwise;
        float[] f = Data.Floats(rng, n, 3f);
        float[] a = Data.Bf16Values(rng, n), b = Data.Bf16Values(rng, n);
        using var df = g.Upload<float>(f);
        using var da = g.UploadBf16(a);
        using var db = g.UploadBf16(b);
        using var outB = g.Zeros(2L * n);
        using var outF = g.Zeros(4L * n);

        k.CastF32ToBf16(s, outB.Ptr, df.Ptr, n);
        Assert.Equal(Bf16.FromFloats(f), g.Download<ushort>(outB.Ptr, n));   // bit-exact round-to-nearest-even
        k.CastBf16ToF32(s, outF.Ptr, da.Ptr, n);
        Assert.Equal(a, g.Download<float>(outF.Ptr, n));
        k.AddBf16(s, outB.Ptr, da.Ptr, db.Ptr, n);
        Assert.Equal(a.Select((x, i) => Bf16.Round(x + b[i])).ToArray(), g.DownloadBf16(outB.Ptr, n));
        k.MulBf16(s, outB.Ptr, da.Ptr, db.Ptr, n);
        Assert.Equal(a.Select((x, i) => Bf16.Round(x * b[i])).ToArray(), g.DownloadBf16(outB.Ptr, n));
        k.ScaleBf16(s, outB.Ptr, da.Ptr, 0.37f, n);
        Assert.Equal(a.Select(x => Bf16.Round(0.37f * x)).ToArray(), g.DownloadBf16(outB.Ptr, n));
        k.ScaleF32(s, outF.Ptr, df.Ptr, -2f, n);
        Assert.Equal(f.Select(x => -2f * x).ToArray(), g.Download<float>(outF.Ptr, n));
        k.AddF32(s, outF.Ptr, df.Ptr, df.Ptr, n);
        Assert.Equal(f.Select(x => x + x).ToArray(), g.Download<float>(outF.Ptr, n));
        k.AxpyF32(s, outF.Ptr, df.Ptr, 0.5f, n);   // 2f + 0.5 f
        Tol.Close(g.Download<float>(outF.Ptr, n), f.Select(x => 2.5f * x).ToArray(), Tol.F32Atol, Tol.F32Rtol, "axpy");
        k.AccumulateBf16F32(s, outF.Ptr, da.Ptr, n);
        Tol.Close(g.Download<float>(outF.Ptr, n), f.Select((x, i) => 2.5f * x + a[i]).ToArray(), Tol.F32Atol, Tol.F32Rtol, "accumulate");
        k.FillBf16(s, outB.Ptr, 1.5f, n);
        Assert.All(g.DownloadBf16(outB.Ptr, n), x => Assert.Equal(1.5f, x));
        k.FillF32(s, outF.Ptr, -3f, n);
        Assert.All(g.Download<float>(outF.Ptr, n), x => Assert.Equal(-3f, x));
    }

    /// <summary>The fills store without reading (their SASS has no global load: StaticKernelChecks): every element of
    /// a NaN-poisoned range is written, on the 16-byte path and misaligned (scalar path), and nothing outside it.</summary>
    [Theory]
    [InlineData(0, 1)]
    [InlineData(0, 4099)]
    [InlineData(1, 4099)]
    [InlineData(3, 17)]
    public void FillsWriteExactlyTheirRange(int offset, int n)
    {
        var g = GpuTest.Require();
        using var b = g.Allocator.Allocate(4L * (n + offset + 1));
        g.Stream.Memset(b.Ptr, 0xFF, b.Bytes);   // NaN in both dtypes
        g.Kernels.Elementwise.FillF32(g.Stream, b.Ptr.Offset(offset, 4), 0.25f, n);
        var f = g.Download<float>(b.Ptr, n + offset + 1);
        for (int i = 0; i < f.Length; i++) Assert.True(i >= offset && i < offset + n ? f[i] == 0.25f : float.IsNaN(f[i]), $"f32 [{i}] = {f[i]}");
        g.Stream.Memset(b.Ptr, 0xFF, b.Bytes);
        g.Kernels.Elementwise.FillBf16(g.Stream, b.Ptr.Offset(offset, 2), -7f, n);
        var h = g.DownloadBf16(b.Ptr, n + offset + 1);
        for (int i = 0; i < h.Length; i++) Assert.True(i >= offset && i < offset + n ? h[i] == -7f : float.IsNaN(h[i]), $"bf16 [{i}] = {h[i]}");
    }

    [Fact]
    public void MisalignedBuffersTakeTheScalarPath()
    {
        var g = GpuTest.Require();
        int n = 1001;
        var a = Data.Bf16Values(new Random(3), n + 1);
        using var da = g.UploadBf16(a);
        using var o = g.Zeros(2L * (n + 1));
        g.Kernels.Elementwise.ScaleBf16(g.Stream, o.Ptr.Offset(2), da.Ptr.Offset(2), 2f, n);   // 2-byte offset: not 16-aligned
        var got = g.DownloadBf16(o.Ptr, n + 1);
        Assert.Equal(0f, got[0]);
        for (int i = 0; i < n; i++) Assert.Equal(Bf16.Round(2f * a[i + 1]), got[i + 1]);
    }
}

[Collection("gpu")]
public class SwiGluGpuTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(13)]
    [InlineData(2 * 128 * 512)]
    [InlineData(5 * 123 * 123)]
    public void ForwardAndBackwardMatchReference(int n)
    {
        var g = GpuTest.Require();
        var rng = new Random(n);
        float[] gate = Data.Bf16Values(rng, n, 6f), up = Data.Bf16Values(rng, n, 2f), dh = Data.Bf16Values(rng, n);
        using var dg = g.UploadBf16(gate);
        using var du = g.UploadBf16(up);
        using var ddh = g.UploadBf16(dh);
        using var h = g.Zeros(2L * n);
        using var dgate = g.Zeros(2L * n);
        using var dup = g.Zeros(2L * n);
        g.Kernels.SwiGlu.Forward(g.Stream, h.Ptr, dg.Ptr, du.Ptr, n);
        Tol.Close(g.DownloadBf16(h.Ptr, n), SwiGluReference.Forward(gate, up).Select(x => (float)x).ToArray(), Tol.Bf16Atol, Tol.Bf16Rtol, "swiglu h");
        g.Kernels.SwiGlu.Backward(g.Stream, dgate.Ptr, dup.Ptr, ddh.Ptr, dg.Ptr, du.Ptr, n);
        var (rg, ru) = SwiGluReference.Backward(dh, gate, up);
        Tol.Close(g.DownloadBf16(dgate.Ptr, n), rg.Select(x => (float)x).ToArray(), Tol.Bf16Atol, Tol.Bf16Rtol, "swiglu dgate");
        Tol.Close(g.DownloadBf16(dup.Ptr, n), ru.Select(x => (float)x).ToArray(), Tol.Bf16Atol, Tol.Bf16Rtol, "swiglu dup");
        // in place: gradients over the inputs
        g.Kernels.SwiGlu.Backward(g.Stream, dg.Ptr, du.Ptr, ddh.Ptr, dg.Ptr, du.Ptr, n);
        Assert.Equal(g.Download<ushort>(dgate.Ptr, n), g.Download<ushort>(dg.Ptr, n));
        Assert.Equal(g.Download<ushort>(dup.Ptr, n), g.Download<ushort>(du.Ptr, n));
    }
}
