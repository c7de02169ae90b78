using Engine.Core;
using Engine.Core.Autograd;
using Engine.Cpu.Ops;

namespace Engine.Tests.Ops;

/// <summary>Every differentiable op: forward against an fp64 reference, gradients against fp64 finite differences.</summary>
public class OpGradientTests
{
    internal static (double[], int[]) Rand(ulong seed, double scale, params int[] shape)
    {
        int n = shape.Aggregate(1, (a, b) => a * b);
        return (GradCheck.RandomArray(new Rng(seed), n, scale), shape);
    }

    [Theory]
    [InlineData(3, 5, 4)]
    [InlineData(7, 13, 9)]
    [InlineData(33, 17, 70)]
    public void Linear(int n, int inDim, int outDim) =>
        GradCheck.Check("Linear", t => F.Linear(t[0], t[1]), x => RefOps.Linear(x[0], x[1], n, inDim, outDim),
            [Rand(1, 1, n, inDim), Rand(2, 0.5, outDim, inDim)]);

    [Theory]
    [InlineData(4, 8)]
    [InlineData(5, 123)]
    public void RmsNorm(int rows, int cols)
    {
        var w = Rand(4, 1, cols);
        GradCheck.Check("RmsNorm", t => F.RmsNorm(t[0], t[1], 1e-5f), x => RefOps.RmsNorm(x[0], x[1], rows, cols, 1e-5),
            [Rand(3, 1, rows, cols), w]);
    }

    /// <summary>The fused residual add + norm with both outputs used (h down the residual stream, y through the
    /// norm), so both gradients reach x and the residual: out = h + y.</summary>
    [Theory]
    [InlineData(4, 8)]
    [InlineData(5, 123)]
    public void AddRmsNorm(int rows, int cols) =>
        GradCheck.Check("AddRmsNorm", t =>
        {
            var (h, y) = F.AddRmsNorm(t[0], t[1], t[2], 1e-5f);
            return F.Add(h, y);
        }, x =>
        {
            var h = x[0].Zip(x[1], (a, b) => a + b).ToArray();
            return h.Zip(RefOps.RmsNorm(h, x[2], rows, cols, 1e-5), (a, b) => a + b).ToArray();
        }, [Rand(11, 1, rows, cols), Rand(12, 1, rows, cols), Rand(13, 1, cols)]);

    [Fact]
    public void SwiGlu() =>
        GradCheck.Check("SwiGlu", t => F.SwiGlu(t[0], t[1]), x => RefOps.SwiGlu(x[0], x[1]),
            [Rand(5, 2, 7, 11), Rand(6, 1, 7, 11)]);

    [Fact]
    public void Add() =>
        GradCheck.Check("Add", t => F.Add(t[0], t[1]), x => x[0].Zip(x[1], (a, b) => a + b).ToArray(),
            [Rand(7, 1, 3, 5), Rand(8, 1, 3, 5)]);

    [Theory]
    [InlineData(2, 5, 3, 8, 0)]
    [InlineData(1, 4, 2, 16, 1000)]
    public void Rope(int batch, int seq, int heads, int dim, int offset)
    {
        var p = new RopeParams(dim, 10000.0);
        GradCheck.Check("Rope", t => F.Rope(t[0], p, batch, seq, heads, offset),
            x => RefOps.Rope(x[0], batch, seq, heads, dim, 10000.0, offset),
            [Rand(9, 1, batch * seq, heads * dim)], atol: 5e-4);
    }

    [Fact]
    public void RopeLinearScaling()
    {
        var p = new RopeParams(8, 10000.0, RopeScalingKind.Linear, 4.0);
        GradCheck.Check("Rope linear", t => F.Rope(t[0], p, 1, 6, 2, 100),
            x => RefOps.Rope(x[0], 1, 6, 2, 8, 10000.0, 100, 4.0),
            [Rand(10, 1, 6, 16)], atol: 5e-4);
    }

    [Fact]
    public void RopeNtkScalingRaisesTheBase()
    {
        var plain = new RopeParams(64, 10000.0).InverseFrequencies();
        var ntk = new RopeParams(64, 10000.0, RopeScalingKind.Ntk, 4.0).InverseFrequencies();
        Assert.Equal(plain[0], ntk[0]);
        double expectedBase = 10000.0 * Math.Pow(4.0, 64 / 62.0);
        Assert.Equal(1.0 / Math.Pow(expectedBase, 2.0 * 31 / 64), ntk[31], 1e-9);
        Assert.True(ntk[31] < plain[31]);
    }

    [Fact]
    public void RopeAnglesStayAccurateAtPosition16k()
    {
        // angles come from integer positions in fp32, never rounded to bf16: at 16k the fp32 rotation must match fp64
        var p = new RopeParams(128, 10000.0);
        var (cos, sin) = RopeCpu.Tables(p.InverseFrequencies(), p.PositionDivisor, 4, 16380);
        for (int t = 0; t < 4; t++)
            for (int i = 0; i < 64; i++)
            {
                double angle = (16380 + t) * (double)p.InverseFrequencies()[i];
                Assert.Equal(Math.Cos(angle), cos[t * 64 + i], 2e-3);
                Assert.Equal(Math.Sin(angle), sin[t * 64 + i], 2e-3);
            }
    }

    [Theory]
    [InlineData(2, 5, 4, 2, 4)]   // GQA ratio 2
    [InlineData(1, 7, 4, 1, 8)]   // multi-query
    [InlineData(2, 3, 2, 2, 6)]   // MHA
    [InlineData(1, 70, 2, 1, 4)]  // longer than the 64-row query block
    public void Attention(int batch, int seq, int heads, int kvHeads, int dim)
    {
        var d = new AttentionDims(batch, seq, heads, kvHeads, dim);
        GradCheck.Check("Attention", t => F.Attention(t[0], t[1], t[2], d),
            x => RefOps.Attention(x[0], x[1], x[2], batch, seq, heads, kvHeads, dim),
            [Rand(11, 1, batch * seq, heads * dim), Rand(12, 1, batch * seq, kvHeads * dim), Rand(13, 1, batch * seq, kvHeads * dim)]);
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(2e-4)]
    [InlineData(0.05)]
    public void CrossEntropyWithIgnoreAndZLoss(double z)
    {
        int[] targets = [3, -100, 0, 6, 2, -100];
        int rows = targets.Length, vocab = 7;
        float norm = 4f; // valid targets
        GradCheck.Check("CrossEntropy", t =>
            {
                var tg = CpuBackend.Instance.Empty([rows], DType.I32);
                targets.CopyTo(tg.IntSpan);
                return F.CrossEntropy(t[0], tg, norm, (float)z).Loss;
            },
            x => [RefOps.CrossEntropyRows(x[0], targets, vocab, z).Sum() / norm],
            [Rand(14, 2, rows, vocab)]);
    }

    [Fact]
    public void RowNormalize() =>
        GradCheck.Check("RowNormalize", t => F.RowNormalize(t[0]), x => RefOps.RowNormalize(x[0], 4, 6), [Rand(15, 1, 4, 6)]);

    [Fact]
    public void EmbeddingForwardAndScatterAddBackward()
    {
        using var scope = new TensorScope();
        var table = GradCheck.ToTensor(GradCheck.RandomArray(new Rng(16), 5 * 3), 5, 3);
        var ids = CpuBackend.Instance.Empty([4], DType.I32);
        int[] idv = [2, 0, 2, 4];
        idv.CopyTo(ids.IntSpan);
        var y = F.Embedding(ids, table);
        for (int n = 0; n < 4; n++)
            for (int c = 0; c < 3; c++) Assert.Equal(table.Span[idv[n] * 3 + c], y.Span[n * 3 + c]);
        var seed = CpuBackend.Instance.Empty(y.Shape);
        for (int i = 0; i < 12; i++) seed.Span[i] = i + 1;
        Grad.Backward(y, seed);
        var g = table.Grad!.Span;
        // row 2 gets rows 0 and 2 of the seed, row 4 gets row 3, rows 1 and 3 nothing
        for (int c = 0; c < 3; c++)
        {
            Assert.Equal((0 * 3 + c + 1) + (2 * 3 + c + 1), g[2 * 3 + c]);
            Assert.Equal(1 * 3 + c + 1, g[0 * 3 + c]);
            Assert.Equal(3 * 3 + c + 1, g[4 * 3 + c]);
            Assert.Equal(0, g[1 * 3 + c]);
            Assert.Equal(0, g[3 * 3 + c]);
        }
    }

    [Fact]
    public void EmbeddingRejectsOutOfRangeIds()
    {
        using var scope = new TensorScope();
        var table = CpuBackend.Instance.Zeros([5, 3]);
        var ids = CpuBackend.Instance.Empty([2], DType.I32);
        ids.IntSpan[0] = 1; ids.IntSpan[1] = 5;
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => F.Embedding(ids, table));
        Assert.Contains("token id 5", e.Message);
    }

    [Fact]
    public void ShapeErrorsNameTheArgument()
    {
        using var scope = new TensorScope();
        var x = CpuBackend.Instance.Zeros([4, 8]);
        var w = CpuBackend.Instance.Zeros([6, 7]);
        w.Name = "q_proj";
        var e = Assert.Throws<ArgumentException>(() => F.Linear(x, w));
        Assert.Contains("q_proj", e.Message);
    }
}
