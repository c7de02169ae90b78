using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;

namespace Engine.Tests.Model;

public class LlamaModelTests
{
    [Fact]
    public void ParameterNamesAndShapesFollowHuggingFaceLlama()
    {
        using var m = TestModels.Create(TestModels.Tiny());
        var names = m.Parameters.Select(p => p.Name).ToList();
        Assert.Equal("model.embed_tokens.weight", names[0]);
        Assert.Contains("model.layers.1.self_attn.k_proj.weight", names);
        Assert.Equal("lm_head.weight", names[^1]);
        Assert.Equal([8, 16], m["model.layers.0.self_attn.k_proj.weight"].Shape); // kv heads 2 × head dim 4
        Assert.Equal([24, 16], m["model.layers.0.mlp.gate_proj.weight"].Shape);
        Assert.Equal([16, 24], m["model.layers.0.mlp.down_proj.weight"].Shape);
        Assert.Equal(m.Config.ParameterCount(), m.ParameterCount);
        using var tied = TestModels.Create(TestModels.Tiny(tied: true));
        Assert.False(tied.HasParameter("lm_head.weight"));
        Assert.Equal(tied.Config.ParameterCount(), tied.ParameterCount);
    }

    [Fact]
    public void ConfigValidationNamesEveryBadField()
    {
        var bad = TestModels.Tiny() with { NumHeads = 3, NumKvHeads = 2, VocabSize = 0 };
        var e = Assert.Throws<ArgumentException>(() => bad.Validate());
        Assert.Contains("vocab_size", e.Message);
        Assert.Contains("num_attention_heads", e.Message);
    }

    [Fact]
    public void SameSeedSameWeightsDifferentSeedDifferentWeights()
    {
        using var a = TestModels.Create(TestModels.Tiny(), 5);
        using var b = TestModels.Create(TestModels.Tiny(), 5);
        using var c = TestModels.Create(TestModels.Tiny(), 6);
        var wa = a["model.layers.0.self_attn.q_proj.weight"].ToArray();
        Assert.Equal(wa, b["model.layers.0.self_attn.q_proj.weight"].ToArray());
        Assert.NotEqual(wa, c["model.layers.0.self_attn.q_proj.weight"].ToArray());
    }

    /// <summary>
    /// Whole-model gradient: analytic gradients of a few coordinates of every parameter against central finite
    /// differences of the fp32 loss (h = 1e-2 and a loose tolerance: fp32 forward noise limits FD accuracy; the
    /// fp64 per-op checks carry the tight bound).
    /// </summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void WholeModelGradientMatchesFiniteDifferences(bool tied, bool normHead)
    {
        using var m = TestModels.Create(TestModels.Tiny(tied, normHead), 3);
        const int B = 2, T = 6;
        using var outer = new TensorScope();
        var (ids, tg) = TestModels.Batch(B, T, m.Config.VocabSize, 9, ignoreEvery: 5);
        ids.Keep(); tg.Keep();
        float valid = tg.IntSpan.ToArray().Count(t => t != -100);
        using (var s = new TensorScope())
        {
            m.ZeroGrad();
            var (loss, _) = m.Loss(ids, tg, B, T, valid, zLoss: 1e-3f);
            Grad.Backward(loss);
        }
        var rng = new Rng(4);
        foreach (var (name, p) in m.Parameters)
        {
            var g = p.Grad!.ToArray();
            for (int trial = 0; trial < 2; trial++)
            {
                int i = rng.NextInt((int)p.Numel);
                float orig = p.Span[i];
                const float h = 1e-2f;
                p.Span[i] = orig + h; double lp = LossAtZ();
                p.Span[i] = orig - h; double lm = LossAtZ();
                p.Span[i] = orig;
                double fd = (lp - lm) / (2 * h);
                Assert.True(Math.Abs(fd - g[i]) <= 2e-3 + 0.05 * Math.Abs(fd), $"{name}[{i}]: analytic {g[i]:G6} vs finite difference {fd:G6}");
            }
        }
        double LossAtZ()
        {
            using var s = new TensorScope();
            using var ng = Grad.NoGrad();
            return m.Loss(ids, tg, B, T, valid, zLoss: 1e-3f).Loss.Item();
        }
    }

    /// <summary>Full recompute (the block re-run in backward) and selective recompute (the attention core and SwiGLU
    /// recomputed before their consumers' backward) give the gradients of no recompute bit for bit, and the same loss.</summary>
    [Theory]
    [InlineData(RecomputeMode.Full, false)]
    [InlineData(RecomputeMode.Selective, false)]
    [InlineData(RecomputeMode.Selective, true)]
    public void ActivationRecomputeGivesIdenticalGradients(RecomputeMode mode, bool tied)
    {
        using var m = TestModels.Create(TestModels.Tiny(tied), 8);
        var (ids, tg) = TestModels.Batch(2, 9, m.Config.VocabSize, 10, ignoreEvery: 5);
        ids.Keep(); tg.Keep();
        (double Loss, Dictionary<string, float[]> Grads) Run(RecomputeMode r)
        {
            m.Recompute = r;
            m.ZeroGrad();
            using var s = new TensorScope();
            var loss = m.Loss(ids, tg, 2, 9, 18).Loss;
            double value = loss.Item();
            Grad.Backward(loss);
            return (value, m.Parameters.ToDictionary(p => p.Name, p => p.Tensor.Grad!.ToArray()));
        }
        var plain = Run(RecomputeMode.None);
        var again = Run(mode);
        Assert.Equal(plain.Loss, again.Loss);
        foreach (var (name, g) in plain.Grads) Assert.Equal(g, again.Grads[name]);
        Assert.Contains(plain.Grads.Values, g => g.Any(v => v != 0));
    }

    /// <summary>What each recompute mode keeps alive between forward and backward, measured from the live tensor storage
    /// after the forward: full keeps one input per block, selective drops the attention core's and SwiGLU's outputs and
    /// intermediates (rotated q and k, attention output and log-sum-exp, SwiGLU product: 2C + KV + F + H fp32 per token
    /// and layer), none keeps them all.</summary>
    [Fact]
    public void RecomputeModesKeepLessBetweenForwardAndBackward()
    {
        var cfg = TestModels.Tiny() with { NumLayers = 3 };
        using var m = TestModels.Create(cfg, 8);
        const int B = 2, T = 16;
        var (ids, tg) = TestModels.Batch(B, T, cfg.VocabSize, 10);
        ids.Keep(); tg.Keep();
        long Held(RecomputeMode r)
        {
            m.Recompute = r;
            var counter = new MemoryCounter();
            using (counter.Use())
            {
                using var s = new TensorScope();
                var loss = m.Loss(ids, tg, B, T, B * T).Loss;
                long held = counter.LiveBytes;
                Grad.Backward(loss);
                return held;
            }
        }
        long none = Held(RecomputeMode.None), selective = Held(RecomputeMode.Selective), full = Held(RecomputeMode.Full);
        long dropped = (long)cfg.NumLayers * B * T * (2L * cfg.HiddenSize + cfg.NumKvHeads * cfg.HeadDim + cfg.IntermediateSize + cfg.NumHeads) * 4;
        Assert.Equal(dropped, none - selective);
        Assert.True(full < selective, $"full recompute holds {full} B, selective {selective} B");
    }

    [Fact]
    public void GradientAccumulationOverMicroBatchesEqualsOneBigBatch()
    {
        using var m = TestModels.Create(TestModels.Tiny(), 11);
        var (ids, tg) = TestModels.Batch(4, 5, m.Config.VocabSize, 12);
        ids.Keep(); tg.Keep();
        m.ZeroGrad();
        using (var s = new TensorScope()) Grad.Backward(m.Loss(ids, tg, 4, 5, 20).Loss);
        var big = m.Parameters.ToDictionary(p => p.Name, p => p.Tensor.Grad!.ToArray());
        m.ZeroGrad();
        for (int mb = 0; mb < 2; mb++)
        {
            using var s = new TensorScope();
            Grad.Backward(m.Loss(ids.Narrow0(mb * 10, 10), tg.Narrow0(mb * 10, 10), 2, 5, 20).Loss);
        }
        foreach (var (name, p) in m.Parameters)
        {
            var acc = p.Grad!.ToArray();
            for (int i = 0; i < acc.Length; i++) Assert.True(Math.Abs(acc[i] - big[name][i]) <= 1e-5 + 1e-4 * Math.Abs(big[name][i]), $"{name}[{i}]");
        }
    }
}
