using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;
using Engine.Tests.Model;
using Engine.Training;
using Engine.Training.Forgetting;

namespace Engine.Tests.Training;

public class ForgettingTests
{
    [Fact]
    public void EwcPenaltyAndGradientMatchAHandComputation()
    {
        var cfg = TestModels.Tiny();
        using var m = TestModels.Create(cfg, 40);
        var norm = m["model.norm.weight"]; // 16 values
        var theta = norm.ToArray();
        var anchor = theta.Select((x, i) => x - 0.1f * (i % 3)).ToArray();
        var fisher = theta.Select((_, i) => 0.5f + i).ToArray();
        using var ewc = Ewc.FromTensors(m, [("model.norm.weight", anchor, fisher)], lambda: 2f);
        m.ZeroGrad();
        double penalty = ewc.Apply(m);
        double expected = 0;
        for (int i = 0; i < theta.Length; i++) expected += 0.5 * 2 * fisher[i] * Math.Pow(theta[i] - anchor[i], 2);
        Assert.Equal(expected, penalty, 5);
        var g = norm.Grad!.ToArray();
        for (int i = 0; i < theta.Length; i++) Assert.Equal(2 * fisher[i] * (theta[i] - anchor[i]), g[i], 5);
    }

    [Fact]
    public void EwcFisherIsTheMeanSquaredGradientAndZeroAtTheAnchor()
    {
        using var m = TestModels.Create(TestModels.Tiny(), 41);
        var (ids, tg) = TestModels.Batch(2, 6, m.Config.VocabSize, 3);
        var batch = (ids.IntSpan.ToArray(), tg.IntSpan.ToArray());
        using var ewc = Ewc.Estimate(m, [batch, batch], 2, 6, lambda: 1f);
        // at the anchor the penalty and its gradient vanish
        m.ZeroGrad();
        Assert.Equal(0, ewc.Apply(m));
        Assert.All(m.Parameters, p => Assert.True(p.Tensor.Grad == null || p.Tensor.Grad.ToArray().All(x => x == 0)));
        // Fisher of two identical batches = gradient squared
        m.ZeroGrad();
        using (var s = new TensorScope())
        {
            var idT = CpuBackend.Instance.Empty([12], DType.I32); CpuBackend.Instance.Upload(idT, batch.Item1);
            var tgT = CpuBackend.Instance.Empty([12], DType.I32); CpuBackend.Instance.Upload(tgT, batch.Item2);
            Grad.Backward(m.Loss(idT, tgT, 2, 6, 12).Loss);
        }
        var w = m["model.layers.0.mlp.up_proj.weight"];
        var g = w.Grad!.ToArray();
        var theta = w.ToArray();
        theta[0] += 1f; // move one weight by 1: penalty = λ/2 · F_0
        w.Span[0] = theta[0];
        m.ZeroGrad();
        double pen = ewc.Apply(m);
        Assert.Equal(0.5 * g[0] * g[0], pen, 6);
    }

    [Fact]
    public void VocabularyResizeKeepsOldRowsAndStartsNewRowsAtTheMean()
    {
        using var m = TestModels.Create(TestModels.Tiny(), 42);
        var before = m["model.embed_tokens.weight"].ToArray();
        var headBefore = m["lm_head.weight"].ToArray();
        m.ResizeVocabulary(45);
        Assert.Equal(45, m.Config.VocabSize);
        var after = m["model.embed_tokens.weight"].ToArray();
        Assert.Equal(before, after[..before.Length]);
        int c = m.Config.HiddenSize;
        for (int j = 0; j < c; j++)
        {
            double mean = Enumerable.Range(0, 37).Average(r => (double)before[r * c + j]);
            for (int r = 37; r < 45; r++) Assert.Equal(mean, after[r * c + j], 5);
        }
        Assert.Equal(headBefore, m["lm_head.weight"].ToArray()[..headBefore.Length]);
        Assert.Throws<ArgumentException>(() => m.ResizeVocabulary(10));
    }

    [Fact]
    public void StageOneTrainingChangesOnlyEmbeddingsAndHead()
    {
        using var m = TestModels.Create(TestModels.Tiny(), 43);
        m.ResizeVocabulary(40);
        m.SetTrainable(LlamaModel.IsEmbeddingOrHead);
        var before = m.Parameters.ToDictionary(p => p.Name, p => p.Tensor.ToArray());
        using var opt = new AdamW(m, new AdamWOptions { Lr = 1e-2 });
        for (int step = 0; step < 3; step++)
        {
            var (ids, tg) = TestModels.Batch(2, 8, 40, (ulong)step);
            m.ZeroGrad();
            using (var s = new TensorScope()) Grad.Backward(m.Loss(ids, tg, 2, 8, 16).Loss);
            opt.Update(1e-2);
        }
        foreach (var (name, t) in m.Parameters)
        {
            bool changed = !before[name].SequenceEqual(t.ToArray());
            Assert.True(changed == LlamaModel.IsEmbeddingOrHead(name), $"{name}: changed = {changed}");
        }
        // stage 2: everything trains
        m.SetTrainable(null);
        Assert.All(m.Parameters, p => Assert.False(p.Tensor.Frozen));
    }
}
