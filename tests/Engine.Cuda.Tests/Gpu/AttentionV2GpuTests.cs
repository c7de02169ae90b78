using Engine.Cuda.Kernels;
using Engine.Cuda.Tests.Reference;

namespace Engine.Cuda.Tests.Gpu;

/// <summary>
/// attention_v2.cu against the fp64 reference at every head dim (32, 64, 96, 128), sequence lengths that are not
/// multiples of any tile (1, 37, 130, 257, 300, 1000), GQA ratios 1, 2, 4, 8, causal and full; outputs poisoned
/// with NaN first (an element the kernels miss fails), and dq/dk/dv bitwise identical on a second backward (the
/// ordered dQ sum). attention_sm90.cu's forward likewise where it runs (Hopper, sm_90a fatbin built). Skipped
/// without a GPU.
/// </summary>
[Collection("gpu")]
public class AttentionV2GpuTests
{
    private static DeviceBuffer Poisoned(GpuContext g, long bytes)
    {
        var buf = g.Allocator.Allocate(Math.Max(1, bytes));
        g.Stream.Memset(buf.Ptr, 0xFF, Math.Max(1, bytes));   // bf16 0xFFFF and fp32 0xFFFFFFFF are NaN
        return buf;
    }

    [Theory]
    [InlineData(1, 1, 1, 1, 32, true)]
    [InlineData(2, 37, 4, 1, 32, true)]      // ratio 4, T inside one tile
    [InlineData(1, 257, 8, 1, 32, true)]     // ratio 8, three forward tiles, several key tiles
    [InlineData(1, 1000, 2, 1, 32, false)]   // 8 key tiles x 16 query tiles: the ordered dQ chain at length
    [InlineData(2, 130, 4, 4, 64, true)]
    [InlineData(1, 200, 4, 2, 64, false)]
    [InlineData(1, 300, 8, 2, 96, true)]
    [InlineData(2, 77, 2, 1, 96, false)]
    [InlineData(1, 130, 8, 1, 128, true)]
    [InlineData(2, 64, 2, 2, 128, true)]     // exactly one backward key tile
    [InlineData(1, 257, 4, 4, 128, false)]
    // full attention, a whole key tile against the partial last query tile: the backward's masked path for query rows
    // past T alone (d32/d64: key tile 128 keys, query tile 64 rows; d96/d128: 64 keys, 32 rows)
    [InlineData(1, 150, 2, 1, 32, false)]
    [InlineData(1, 150, 4, 1, 64, false)]
    [InlineData(1, 97, 2, 2, 96, false)]
    [InlineData(2, 97, 4, 2, 128, false)]
    public void ForwardAndBackwardMatchFp64Reference(int B, int T, int H, int Hkv, int D, bool causal)
    {
        var g = GpuTest.Require();
        var rng = new Random(B * 7919 + T * 31 + H * 7 + D);
        long nq = (long)B * T * H * D, nk = (long)B * T * Hkv * D;
        float[] q = Data.Bf16Values(rng, nq, 2f), k = Data.Bf16Values(rng, nk, 2f), v = Data.Bf16Values(rng, nk), dout = Data.Bf16Values(rng, nq);
        var shape = new AttentionShape(B, T, H, Hkv, D);
        using var dQ = g.UploadBf16(q);
        using var dK = g.UploadBf16(k);
        using var dV = g.UploadBf16(v);
        using var dDo = g.UploadBf16(dout);
        using var o = Poisoned(g, 2 * nq);
        using var lse = Poisoned(g, shape.LseBytes);
        using var delta = Poisoned(g, shape.LseBytes);
        using var acc = Poisoned(g, AttentionV2Kernels.DqAccumBytes(shape));
        using var sync = Poisoned(g, AttentionV2Kernels.SyncBytes(shape));   // the launcher zeroes it
        using var dq = Poisoned(g, 2 * nq);
        using var dk = Poisoned(g, 2 * nk);
        using var dv = Poisoned(g, 2 * nk);
        var att = g.Kernels.AttentionV2;
        att.HopperPath = false;   // the mma.sync kernels (HopperForwardMatchesFp64Reference covers attention_sm90.cu)
        try { att.Forward(g.Stream, shape, dQ.Ptr, dK.Ptr, dV.Ptr, o.Ptr, lse.Ptr, causal); }
        finally { att.HopperPath = true; }
        var r = AttentionReference.Compute(q, k, v, dout, B, T, H, Hkv, D, causal);
        Tol.RelMax(g.DownloadBf16(o.Ptr, nq), r.O, Tol.AttentionRelMax, 1e-3f, $"v2 o d{D}");
        Tol.Close(g.Download<float>(lse.Ptr, (long)B * H * T), r.Lse.F(), 1e-3f, 1e-3f, $"v2 lse d{D}");

        att.Backward(g.Stream, shape, dQ.Ptr, dK.Ptr, dV.Ptr, o.Ptr, lse.Ptr, dDo.Ptr, dq.Ptr, dk.Ptr, dv.Ptr, delta.Ptr, acc.Ptr, sync.Ptr, causal);
        Tol.RelMax(g.DownloadBf16(dq.Ptr, nq), r.Dq, Tol.AttentionRelMax, 1e-3f, $"v2 dq d{D}");
        Tol.RelMax(g.DownloadBf16(dk.Ptr, nk), r.Dk, Tol.AttentionRelMax, 1e-3f, $"v2 dk d{D}");
        Tol.RelMax(g.DownloadBf16(dv.Ptr, nk), r.Dv, Tol.AttentionRelMax, 1e-3f, $"v2 dv d{D}");

        // deterministic: a second backward (fresh poison) is bitwise identical, dq included
        var first = (g.Download<ushort>(dq.Ptr, nq), g.Download<ushort>(dk.Ptr, nk), g.Download<ushort>(dv.Ptr, nk));
        foreach (var buf in new[] { dq, dk, dv, acc }) g.Stream.Memset(buf.Ptr, 0xFF, buf.Bytes);
        att.Backward(g.Stream, shape, dQ.Ptr, dK.Ptr, dV.Ptr, o.Ptr, lse.Ptr, dDo.Ptr, dq.Ptr, dk.Ptr, dv.Ptr, delta.Ptr, acc.Ptr, sync.Ptr, causal);
        Assert.Equal(first.Item1, g.Download<ushort>(dq.Ptr, nq));
        Assert.Equal(first.Item2, g.Download<ushort>(dk.Ptr, nk));
        Assert.Equal(first.Item3, g.Download<ushort>(dv.Ptr, nk));
    }

    [Theory]
    [InlineData(1, 1, 1, 1, 64, true)]
    [InlineData(2, 130, 4, 1, 64, true)]
    [InlineData(1, 300, 8, 2, 128, true)]
    [InlineData(2, 257, 4, 4, 128, false)]
    [InlineData(1, 128, 2, 2, 128, true)]    // exactly one tile
    public void HopperForwardMatchesFp64Reference(int B, int T, int H, int Hkv, int D, bool causal)
    {
        var g = GpuTest.Require();
        var att = g.Kernels.AttentionV2;
        if (!att.UsesHopperPath(D))
            Assert.Skip($"attention_sm90.cu not used here: {g.Device} (needs compute capability 9.x, a CUDA 12 driver and " +
                "build/native/kernels/attention_sm90.fatbin from `cmake --build build/native --target engine_kernels_sm90` with nvcc >= 12)");
        var rng = new Random(B * 131 + T + D);
        long nq = (long)B * T * H * D, nk = (long)B * T * Hkv * D;
        float[] q = Data.Bf16Values(rng, nq, 2f), k = Data.Bf16Values(rng, nk, 2f), v = Data.Bf16Values(rng, nk);
        var shape = new AttentionShape(B, T, H, Hkv, D);
        using var dQ = g.UploadBf16(q);
        using var dK = g.UploadBf16(k);
        using var dV = g.UploadBf16(v);
        using var o = Poisoned(g, 2 * nq);
        using var lse = Poisoned(g, shape.LseBytes);
        att.Forward(g.Stream, shape, dQ.Ptr, dK.Ptr, dV.Ptr, o.Ptr, lse.Ptr, causal);
        var r = AttentionReference.Compute(q, k, v, new float[nq], B, T, H, Hkv, D, causal);
        Tol.RelMax(g.DownloadBf16(o.Ptr, nq), r.O, Tol.AttentionRelMax, 1e-3f, $"sm90 o d{D}");
        Tol.Close(g.Download<float>(lse.Ptr, (long)B * H * T), r.Lse.F(), 1e-3f, 1e-3f, $"sm90 lse d{D}");
    }

    [Theory]
    [InlineData(64, true)]
    [InlineData(128, false)]
    public void AgreesWithTheV1Kernels(int D, bool causal)
    {
        var g = GpuTest.Require();
        int B = 2, T = 333, H = 4, Hkv = 2;
        var rng = new Random(D + (causal ? 1 : 0));
        long nq = (long)B * T * H * D, nk = (long)B * T * Hkv * D;
        var shape = new AttentionShape(B, T, H, Hkv, D);
        using var q = g.UploadBf16(Data.Bf16Values(rng, nq, 2f));
        using var k = g.UploadBf16(Data.Bf16Values(rng, nk, 2f));
        using var v = g.UploadBf16(Data.Bf16Values(rng, nk));
        using var o1 = g.Zeros(2 * nq);
        using var o2 = g.Zeros(2 * nq);
        using var l1 = g.Zeros(shape.LseBytes);
        using var l2 = g.Zeros(shape.LseBytes);
        g.Kernels.Attention.Forward(g.Stream, shape, q.Ptr, k.Ptr, v.Ptr, o1.Ptr, l1.Ptr, causal);
        g.Kernels.AttentionV2.Forward(g.Stream, shape, q.Ptr, k.Ptr, v.Ptr, o2.Ptr, l2.Ptr, causal);
        var a = g.DownloadBf16(o1.Ptr, nq);
        Tol.RelMax(g.DownloadBf16(o2.Ptr, nq), a.Select(x => (double)x).ToArray(), Tol.AttentionRelMax, 1e-3f, "v2 vs v1 o");
        Tol.Close(g.Download<float>(l2.Ptr, (long)B * H * T), g.Download<float>(l1.Ptr, (long)B * H * T), 1e-4f, 1e-4f, "v2 vs v1 lse");
    }

    [Fact]
    public void FusedQkvStridesAreHonoured()
    {
        var g = GpuTest.Require();
        int B = 1, T = 45, H = 4, Hkv = 2, D = 32;
        int rowLen = (H + 2 * Hkv) * D;
        var rng = new Random(19);
        float[] qkv = Data.Bf16Values(rng, (long)B * T * rowLen, 2f), dout = Data.Bf16Values(rng, (long)B * T * H * D);
        float[] q = new float[B * T * H * D], k = new float[B * T * Hkv * D], v = new float[B * T * Hkv * D];
        for (int t = 0; t < T; t++)
        {
            Array.Copy(qkv, t * rowLen, q, t * H * D, H * D);
            Array.Copy(qkv, t * rowLen + H * D, k, t * Hkv * D, Hkv * D);
            Array.Copy(qkv, t * rowLen + (H + Hkv) * D, v, t * Hkv * D, Hkv * D);
        }
        var shape = new AttentionShape(B, T, H, Hkv, D);
        using var dqkv = g.UploadBf16(qkv);
        using var ddo = g.UploadBf16(dout);
        using var o = g.Zeros(2L * B * T * H * D);
        using var lse = g.Zeros(shape.LseBytes);
        using var delta = g.Zeros(shape.LseBytes);
        using var acc = g.Zeros(AttentionV2Kernels.DqAccumBytes(shape));
        using var sync = g.Zeros(AttentionV2Kernels.SyncBytes(shape));
        using var grad = g.Zeros(2L * B * T * rowLen);   // fused dqkv: dq, dk, dv interleaved like the input
        DevicePtr kp = dqkv.Ptr.Offset(H * D, 2), vp = dqkv.Ptr.Offset((H + Hkv) * D, 2);
        var att = g.Kernels.AttentionV2;
        att.Forward(g.Stream, shape, dqkv.Ptr, kp, vp, o.Ptr, lse.Ptr, true, qRowStride: rowLen, kRowStride: rowLen, vRowStride: rowLen);
        att.Backward(g.Stream, shape, dqkv.Ptr, kp, vp, o.Ptr, lse.Ptr, ddo.Ptr, grad.Ptr, grad.Ptr.Offset(H * D, 2), grad.Ptr.Offset((H + Hkv) * D, 2),
            delta.Ptr, acc.Ptr, sync.Ptr, true, qRowStride: rowLen, kRowStride: rowLen, vRowStride: rowLen,
            dqRowStride: rowLen, dkRowStride: rowLen, dvRowStride: rowLen);
        var r = AttentionReference.Compute(q, k, v, dout, B, T, H, Hkv, D, true);
        Tol.RelMax(g.DownloadBf16(o.Ptr, q.Length), r.O, Tol.AttentionRelMax, 1e-3f, "v2 o (fused qkv)");
        var all = g.DownloadBf16(grad.Ptr, (long)B * T * rowLen);
        float[] gq = new float[q.Length], gk = new float[k.Length], gv = new float[v.Length];
        for (int t = 0; t < T; t++)
        {
            Array.Copy(all, t * rowLen, gq, t * H * D, H * D);
            Array.Copy(all, t * rowLen + H * D, gk, t * Hkv * D, Hkv * D);
            Array.Copy(all, t * rowLen + (H + Hkv) * D, gv, t * Hkv * D, Hkv * D);
        }
        Tol.RelMax(gq, r.Dq, Tol.AttentionRelMax, 1e-3f, "v2 dq (fused)");
        Tol.RelMax(gk, r.Dk, Tol.AttentionRelMax, 1e-3f, "v2 dk (fused)");
        Tol.RelMax(gv, r.Dv, Tol.AttentionRelMax, 1e-3f, "v2 dv (fused)");
    }
}
