using Engine.Core;
using Engine.Core.Autograd;
using Engine.Cpu.Ops;

namespace Engine.Tests.Ops;

/// <summary>
/// ALiBi in the CPU attention (forward, backward, KV-cache decoding) against an fp64 reference and fp64 finite
/// differences, its slopes against Baichuan 2's and BLOOM's definitions, and Baichuan 2's max-z loss.
/// </summary>
public class AlibiAttentionTests
{
    static (double[], int[]) Rand(ulong seed, double scale, params int[] shape) => OpGradientTests.Rand(seed, scale, shape);

    /// <summary>Baichuan 2's _get_interleave, transcribed: start·ratio^i for a power of two, else the closest power of
    /// two's slopes then every other slope of the next power of two.</summary>
    static List<double> Interleave(int n)
    {
        static List<double> PowerOf2(int n)
        {
            double start = Math.Pow(2, -Math.Pow(2, -(Math.Log2(n) - 3)));
            return Enumerable.Range(0, n).Select(i => start * Math.Pow(start, i)).ToList();
        }
        if (Math.Log2(n) % 1 == 0) return PowerOf2(n);
        int closest = 1 << (int)Math.Floor(Math.Log2(n));
        return [.. PowerOf2(closest), .. Interleave(2 * closest).Where((_, i) => i % 2 == 0).Take(n - closest)];
    }

    [Fact]
    public void SlopesAreBaichuanAndBloomSlopesForEveryHeadCount()
    {
        for (int h = 1; h <= 96; h++)
        {
            var ours = AttentionCpu.AlibiSlopes(h, 8f);
            var theirs = Interleave(h);
            Assert.Equal(h, ours.Length);
            for (int i = 0; i < h; i++) Assert.Equal((float)theirs[i], ours[i]);
        }
        // Press et al.'s 8-head example and the 40 heads of Baichuan 2-13B (32 geometric, then 8 of the 64-head series)
        Assert.Equal([0.5f, 0.25f, 0.125f, 0.0625f, 0.03125f, 0.015625f, 0.0078125f, 0.00390625f], AttentionCpu.AlibiSlopes(8, 8f));
        var b13 = AttentionCpu.AlibiSlopes(40, 8f);
        Assert.Equal((float)Math.Pow(2, -0.25), b13[0]);
        Assert.Equal((float)Math.Pow(2, -8.0), b13[31]);
        Assert.Equal((float)Math.Pow(2, -0.125), b13[32]);
        Assert.Equal((float)Math.Pow(2, -15 * 0.125), b13[39]);
    }

    [Theory]
    [InlineData(2, 5, 4, 2, 4)]   // GQA ratio 2, odd T
    [InlineData(1, 7, 6, 2, 4)]   // 6 heads: the interleaved slopes of a non-power-of-two head count, GQA 3
    [InlineData(1, 9, 3, 1, 8)]   // multi-query, 3 heads
    [InlineData(2, 3, 2, 2, 6)]   // MHA
    [InlineData(1, 70, 5, 5, 4)]  // longer than the 64-row query block, 5 heads
    public void ForwardAndGradientsMatchFp64(int batch, int seq, int heads, int kvHeads, int dim)
    {
        var d = new AttentionDims(batch, seq, heads, kvHeads, dim, 8f);
        var slopes = AttentionCpu.AlibiSlopes(heads, 8f).Select(x => (double)x).ToArray();
        GradCheck.Check("AlibiAttention", t => F.Attention(t[0], t[1], t[2], d),
            x => RefOps.Attention(x[0], x[1], x[2], batch, seq, heads, kvHeads, dim, slopes),
            [Rand(21, 1, batch * seq, heads * dim), Rand(22, 1, batch * seq, kvHeads * dim), Rand(23, 1, batch * seq, kvHeads * dim)]);
    }

    [Fact]
    public void TheBiasMovesTheResult()
    {
        // the same inputs with and without ALiBi differ (a test that a bias of zero would pass cannot pass here)
        var (q, _) = Rand(31, 1, 12, 8);
        var (k, _) = Rand(32, 1, 12, 8);
        var (v, _) = Rand(33, 1, 12, 8);
        var with = RefOps.Attention(q, k, v, 1, 12, 2, 2, 4, AttentionCpu.AlibiSlopes(2, 8f).Select(x => (double)x).ToArray());
        var without = RefOps.Attention(q, k, v, 1, 12, 2, 2, 4);
        Assert.True(with.Zip(without).Max(p => Math.Abs(p.First - p.Second)) > 0.05);
        using var scope = new TensorScope();
        using var ng = Grad.NoGrad();
        var o = F.Attention(GradCheck.ToTensor(q, 12, 8), GradCheck.ToTensor(k, 12, 8), GradCheck.ToTensor(v, 12, 8), new AttentionDims(1, 12, 2, 2, 4, 8f));
        GradCheck.AssertClose(o.Span, with, "ALiBi forward", 1e-5, 1e-6);
    }

    [Theory]
    [InlineData(11, 6, 2, 8, 1)]  // token by token, 6 heads over 2 kv heads
    [InlineData(11, 6, 2, 8, 3)]  // chunks of 3 (the last one 2): prefill then decode
    [InlineData(130, 4, 4, 4, 7)] // past two query blocks
    public void DecodeWithCacheEqualsFullAttention(int seq, int heads, int kvHeads, int dim, int chunk)
    {
        var (q, _) = Rand(41, 1, seq, heads * dim);
        var (k, _) = Rand(42, 1, seq, kvHeads * dim);
        var (v, _) = Rand(43, 1, seq, kvHeads * dim);
        float[] qf = q.Select(x => (float)x).ToArray(), kf = k.Select(x => (float)x).ToArray(), vf = v.Select(x => (float)x).ToArray();
        var full = new float[qf.Length];
        AttentionCpu.Forward(qf, kf, vf, full, new float[heads * seq], new AttentionCpu.Dims(1, seq, heads, kvHeads, dim, 8f));
        var dec = new float[qf.Length];
        int row = heads * dim;
        for (int at = 0; at < seq; at += chunk)
        {
            int n = Math.Min(chunk, seq - at);
            AttentionCpu.Decode(qf.AsSpan(at * row, n * row), kf.AsSpan(0, (at + n) * kvHeads * dim), vf.AsSpan(0, (at + n) * kvHeads * dim),
                dec.AsSpan(at * row, n * row), n, heads, kvHeads, dim, at, 8f);
        }
        GradCheck.AssertClose(dec, full.Select(x => (double)x).ToArray(), "decode vs full", 1e-5, 1e-6);
        var reference = RefOps.Attention(q, k, v, 1, seq, heads, kvHeads, dim, AttentionCpu.AlibiSlopes(heads, 8f).Select(x => (double)x).ToArray());
        GradCheck.AssertClose(full, reference, "full vs fp64", 1e-4, 1e-5);
    }

    [Fact]
    public void InvalidMaxBiasIsRefused()
    {
        Assert.Throws<ArgumentException>(() => new AttentionDims(1, 2, 2, 2, 4, -1f).Validate());
        Assert.Throws<ArgumentException>(() => new AttentionDims(1, 2, 2, 2, 4, float.NaN).Validate());
    }

    [Theory]
    [InlineData(0.0, 2e-4)]
    [InlineData(1e-3, 0.05)]
    public void CrossEntropyWithMaxZLoss(double z, double maxZ)
    {
        int[] targets = [3, -100, 0, 6, 2, -100];
        int rows = targets.Length, vocab = 7;
        float norm = 4f;
        GradCheck.Check("CrossEntropy max-z", t =>
            {
                var tg = CpuBackend.Instance.Empty([rows], DType.I32);
                targets.CopyTo(tg.IntSpan);
                return F.CrossEntropy(t[0], tg, norm, (float)z, (float)maxZ).Loss;
            },
            x => [RefOps.CrossEntropyRows(x[0], targets, vocab, z, maxZ).Sum() / norm],
            [Rand(24, 2, rows, vocab)]);
    }
}
