using Engine.Core;
using Engine.Core.Autograd;
using Engine.Cpu.Ops;
using Engine.Cuda.Kernels;
using Engine.Cuda.Tests.Backend;
using Engine.Cuda.Tests.Reference;
using Engine.Model;

namespace Engine.Cuda.Tests.Gpu;

/// <summary>
/// ALiBi in every CUDA attention path against the fp64 reference with the bias (slopes: AttentionCpu.AlibiSlopes,
/// the ones BLOOM and Baichuan 2 compute): attention.cu's and attention_v2.cu's *_alibi forward and backward
/// (causal, GQA, head counts that are not powers of two, T not a multiple of any tile; outputs poisoned with NaN first
/// and a second backward bitwise identical), attention_sm90.cu's forward where it runs, the KV-cache decode kernel
/// against the CPU backend, and one training step of a Baichuan-13B-style (ALiBi, max-z) model against the CPU
/// backend (the max-z cross-entropy alone: BackendOpGpuTests). Tolerances are the other attention tests'
/// (Tol.AttentionRelMax: bf16 operands, fp32 accumulation). Skipped without a GPU.
/// </summary>
[Collection("gpu")]
public class AlibiAttentionGpuTests
{
    const float MaxBias = 8f;

    static double[] Slopes(int heads) => AttentionCpu.AlibiSlopes(heads, MaxBias).Select(x => (double)x).ToArray();

    private static DeviceBuffer Poisoned(GpuContext g, long bytes)
    {
        var buf = g.Allocator.Allocate(Math.Max(1, bytes));
        g.Stream.Memset(buf.Ptr, 0xFF, Math.Max(1, bytes));   // bf16 0xFFFF and fp32 0xFFFFFFFF are NaN
        return buf;
    }

    [Theory]
    [InlineData(1, 1, 1, 1, 64, "v1")]
    [InlineData(2, 37, 6, 2, 64, "v1")]      // 6 heads: interleaved slopes; GQA 3; T inside one tile
    [InlineData(1, 130, 5, 5, 128, "v1")]    // 5 heads, three query tiles
    [InlineData(1, 37, 3, 1, 32, "v2")]
    [InlineData(2, 257, 6, 2, 64, "v2")]
    [InlineData(1, 300, 12, 4, 96, "v2")]
    [InlineData(1, 1000, 40, 40, 32, "v2")]  // Baichuan 2-13B's 40 heads; 8 key tiles x 16 query tiles
    [InlineData(2, 130, 5, 1, 128, "v2")]
    public void ForwardAndBackwardMatchFp64Reference(int B, int T, int H, int Hkv, int D, string family)
    {
        var g = GpuTest.Require();
        var rng = new Random(B * 7919 + T * 31 + H * 7 + D + 5);
        long nq = (long)B * T * H * D, nk = (long)B * T * Hkv * D;
        float[] q = Data.Bf16Values(rng, nq, 2f), k = Data.Bf16Values(rng, nk, 2f), v = Data.Bf16Values(rng, nk), dout = Data.Bf16Values(rng, nq);
        var shape = new AttentionShape(B, T, H, Hkv, D, MaxBias);
        using var dQ = g.UploadBf16(q);
        using var dK = g.UploadBf16(k);
        using var dV = g.UploadBf16(v);
        using var dDo = g.UploadBf16(dout);
        using var o = Poisoned(g, 2 * nq);
        using var lse = Poisoned(g, shape.LseBytes);
        using var delta = Poisoned(g, shape.LseBytes);
        using var acc = Poisoned(g, AttentionV2Kernels.DqAccumBytes(shape));
        using var sync = Poisoned(g, AttentionV2Kernels.SyncBytes(shape));
        using var dq = Poisoned(g, 2 * nq);
        using var dk = Poisoned(g, 2 * nk);
        using var dv = Poisoned(g, 2 * nk);
        var v2 = g.Kernels.AttentionV2;
        void Forward()
        {
            if (family == "v1") g.Kernels.Attention.Forward(g.Stream, shape, dQ.Ptr, dK.Ptr, dV.Ptr, o.Ptr, lse.Ptr);
            else
            {
                v2.HopperPath = false;   // the mma.sync kernels (HopperForwardMatchesFp64Reference covers attention_sm90.cu)
                try { v2.Forward(g.Stream, shape, dQ.Ptr, dK.Ptr, dV.Ptr, o.Ptr, lse.Ptr); }
                finally { v2.HopperPath = true; }
            }
        }
        void Backward()
        {
            if (family == "v1") g.Kernels.Attention.Backward(g.Stream, shape, dQ.Ptr, dK.Ptr, dV.Ptr, o.Ptr, lse.Ptr, dDo.Ptr, dq.Ptr, dk.Ptr, dv.Ptr, delta.Ptr);
            else v2.Backward(g.Stream, shape, dQ.Ptr, dK.Ptr, dV.Ptr, o.Ptr, lse.Ptr, dDo.Ptr, dq.Ptr, dk.Ptr, dv.Ptr, delta.Ptr, acc.Ptr, sync.Ptr);
        }
        Forward();
        var r = AttentionReference.Compute(q, k, v, dout, B, T, H, Hkv, D, causal: true, Slopes(H));
        Tol.RelMax(g.DownloadBf16(o.Ptr, nq), r.O, Tol.AttentionRelMax, 1e-3f, $"{family} ALiBi o d{D}");
        Tol.Close(g.Download<float>(lse.Ptr, (long)B * H * T), r.Lse.F(), 1e-3f, 1e-3f, $"{family} ALiBi lse d{D}");
        Backward();
        Tol.RelMax(g.DownloadBf16(dq.Ptr, nq), r.Dq, Tol.AttentionRelMax, 1e-3f, $"{family} ALiBi dq d{D}");
        Tol.RelMax(g.DownloadBf16(dk.Ptr, nk), r.Dk, Tol.AttentionRelMax, 1e-3f, $"{family} ALiBi dk d{D}");
        Tol.RelMax(g.DownloadBf16(dv.Ptr, nk), r.Dv, Tol.AttentionRelMax, 1e-3f, $"{family} ALiBi dv d{D}");

        var first = (g.Download<ushort>(dq.Ptr, nq), g.Download<ushort>(dk.Ptr, nk), g.Download<ushort>(dv.Ptr, nk));
        foreach (var buf in new[] { dq, dk, dv, acc }) g.Stream.Memset(buf.Ptr, 0xFF, buf.Bytes);
        Backward();
        Assert.Equal(first.Item1, g.Download<ushort>(dq.Ptr, nq));
        Assert.Equal(first.Item2, g.Download<ushort>(dk.Ptr, nk));
        Assert.Equal(first.Item3, g.Download<ushort>(dv.Ptr, nk));

        // the bias is really there: the reference without it is far from what the kernels computed
        if (T > 8)
        {
            var plain = AttentionReference.Compute(q, k, v, dout, B, T, H, Hkv, D, causal: true).O;
            var got = g.DownloadBf16(o.Ptr, nq);
            double maxRef = plain.Max(Math.Abs), maxErr = got.Select((x, i) => Math.Abs(x - plain[i])).Max();
            Assert.True(maxErr > 4 * Tol.AttentionRelMax * maxRef, $"o is as close to attention without ALiBi ({maxErr:G3}) as the tolerance");
        }
    }

    [Theory]
    [InlineData(2, 130, 6, 2, 64)]
    [InlineData(1, 300, 40, 40, 128)]
    public void HopperForwardMatchesFp64Reference(int B, int T, int H, int Hkv, int D)
    {
        var g = GpuTest.Require();
        var att = g.Kernels.AttentionV2;
        if (!att.UsesHopperPath(D))
            Assert.Skip($"attention_sm90.cu not used here: {g.Device} (needs compute capability 9.x, a CUDA 12 driver and the sm_90a fatbin)");
        var rng = new Random(B * 131 + T + D + 5);
        long nq = (long)B * T * H * D, nk = (long)B * T * Hkv * D;
        float[] q = Data.Bf16Values(rng, nq, 2f), k = Data.Bf16Values(rng, nk, 2f), v = Data.Bf16Values(rng, nk);
        var shape = new AttentionShape(B, T, H, Hkv, D, MaxBias);
        using var dQ = g.UploadBf16(q);
        using var dK = g.UploadBf16(k);
        using var dV = g.UploadBf16(v);
        using var o = Poisoned(g, 2 * nq);
        using var lse = Poisoned(g, shape.LseBytes);
        att.Forward(g.Stream, shape, dQ.Ptr, dK.Ptr, dV.Ptr, o.Ptr, lse.Ptr);
        var r = AttentionReference.Compute(q, k, v, new float[nq], B, T, H, Hkv, D, causal: true, Slopes(H));
        Tol.RelMax(g.DownloadBf16(o.Ptr, nq), r.O, Tol.AttentionRelMax, 1e-3f, $"sm90 ALiBi o d{D}");
        Tol.Close(g.Download<float>(lse.Ptr, (long)B * H * T), r.Lse.F(), 1e-3f, 1e-3f, $"sm90 ALiBi lse d{D}");
    }

    [Theory]
    [InlineData(1, 0, 6, 2, 64)]
    [InlineData(5, 37, 5, 5, 64)]
    [InlineData(1, 300, 40, 40, 128)]
    public void DecodeWithAlibiMatchesTheCpuBackend(int n, int offset, int heads, int kvHeads, int d)
    {
        var be = GpuBackend.Require();
        var Cpu = CpuBackend.Instance;
        using var scope = new TensorScope();
        var rng = new Random(n + offset + d + 3);
        int len = offset + n;
        var (gq, cq) = be.Pair(Data.Bf16Values(rng, (long)n * heads * d), [n, heads * d], DType.BF16);
        var (gk, ck) = be.Pair(Data.Bf16Values(rng, (long)len * kvHeads * d), [len, kvHeads * d], DType.BF16);
        var (gv, cv) = be.Pair(Data.Bf16Values(rng, (long)len * kvHeads * d), [len, kvHeads * d], DType.BF16);
        var go = be.Empty([n, heads * d], DType.BF16); var co = Cpu.Empty([n, heads * d]);
        be.AttentionDecode(gq, gk, gv, go, heads, kvHeads, d, offset, MaxBias);
        Cpu.AttentionDecode(cq, ck, cv, co, heads, kvHeads, d, offset, MaxBias);
        BackendTol.Tensor(go.Host(), co.Span.ToArray(), "ALiBi attention decode");
    }

    [Fact]
    public void BaichuanAlibiTrainingStepMatchesTheCpuBackend()
    {
        var be = GpuBackend.Require();
        var cfg = new LlamaConfig
        {
            Family = ModelFamily.Baichuan,
            Position = PositionEmbedding.Alibi,
            VocabSize = 512,
            HiddenSize = 320,
            IntermediateSize = 512,
            NumLayers = 2,
            NumHeads = 5,   // head dim 64, a head count that is not a power of two
            NumKvHeads = 5,
            MaxPositionEmbeddings = 32,   // trained length 32; the step runs 64 (ALiBi extrapolates)
            NormHead = true,
            MaxZLossWeight = 2e-4,
        };
        using var cpu = new LlamaModel(cfg, CpuBackend.Instance);
        using var gpu = new LlamaModel(cfg, be);
        cpu.InitializeWeights(77);
        gpu.InitializeWeights(77);
        var rng = new Random(78);
        const int B = 2, T = 64;
        var ids = Enumerable.Range(0, B * T).Select(_ => rng.Next(512)).ToArray();
        var tg = Enumerable.Range(0, B * T).Select(i => i % 9 == 4 ? -100 : rng.Next(512)).ToArray();
        float Step(LlamaModel m)
        {
            using var scope = new TensorScope();
            var idT = m.Backend.Empty([ids.Length], DType.I32);
            var tgT = m.Backend.Empty([tg.Length], DType.I32);
            m.Backend.Upload(idT, ids);
            m.Backend.Upload(tgT, tg);
            var (loss, _) = m.Loss(idT, tgT, B, T, tg.Count(t => t != -100), 0f, m.TrainingMaxZLoss);
            Grad.Backward(loss);
            return loss.Item();
        }
        float lc = Step(cpu), lg = Step(gpu);
        Assert.True(Math.Abs(lg - lc) <= BackendTol.StepLossRel * Math.Abs(lc), $"loss: cuda {lg} vs cpu {lc}");
        foreach (var ((name, c), (_, g)) in cpu.Parameters.Zip(gpu.Parameters))
            BackendTol.Tensor(g.Grad!.ToArray(), c.Grad!.Span.ToArray(), $"grad {name}", BackendTol.StepGradRel);
    }
}
