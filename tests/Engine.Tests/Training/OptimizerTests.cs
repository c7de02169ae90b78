using Engine.Core;
using Engine.Cpu.Ops;
using Engine.Tests.Model;
using Engine.Training;

namespace Engine.Tests.Training;

public class OptimizerTests
{
    /// <summary>AdamW against a hand-computed double-precision update (PyTorch's formula), two steps.</summary>
    [Fact]
    public void AdamWMatchesTheFormula()
    {
        float[] p = [0.5f, -1f, 2f], g1 = [0.1f, -0.2f, 0.3f], g2 = [-0.05f, 0.4f, 0.0f];
        float[] m = new float[3], v = new float[3];
        double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
        double[] P = p.Select(x => (double)x).ToArray(), M = new double[3], V = new double[3];
        int step = 0;
        foreach (var g in new[] { g1, g2 })
        {
            step++;
            AdamWCpu.Update(p, g, m, v, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, step);
            for (int i = 0; i < 3; i++)
            {
                P[i] *= 1 - lr * wd;
                M[i] = b1 * M[i] + (1 - b1) * g[i];
                V[i] = b2 * V[i] + (1 - b2) * g[i] * g[i];
                double mh = M[i] / (1 - Math.Pow(b1, step)), vh = V[i] / (1 - Math.Pow(b2, step));
                P[i] -= lr * mh / (Math.Sqrt(vh) + eps);
            }
        }
        for (int i = 0; i < 3; i++) Assert.Equal(P[i], p[i], 5);
    }

    [Fact]
    public void ClippingScalesToTheGlobalNormAndFrozenParametersStayPut()
    {
        using var model = TestModels.Create(TestModels.Tiny(), 3);
        foreach (var (_, t) in model.Parameters) CpuBackend.Instance.Fill(t.Grad!, 1f);
        // a frozen parameter receives no gradient in backward: its (zero) gradient must not move it either
        CpuBackend.Instance.Fill(model["model.embed_tokens.weight"].Grad!, 0f);
        model["model.embed_tokens.weight"].Frozen = true;
        var before = model["model.embed_tokens.weight"].ToArray();
        var headBefore = model["lm_head.weight"].ToArray();
        // a large eps makes Adam's first step depend on the gradient's scale: from zero moments each weight moves by
        // lr·c/(c + eps) with c the clipped gradient (1 × clip factor); unclipped it would move by lr/(1 + eps)
        const double lr = 1e-3, eps = 1e-2;
        using var opt = new AdamW(model, new AdamWOptions { ClipNorm = 1.0, Lr = lr, Eps = eps, WeightDecay = 0 });
        double expected = Math.Sqrt(model.Parameters.Where(p => !p.Tensor.Frozen).Sum(p => (double)p.Tensor.Numel));
        double norm = opt.Update(lr);
        Assert.Equal(expected, norm, expected * 1e-6);   // the norm is an fp32 result (computed where the gradients live)
        Assert.Equal(before, model["model.embed_tokens.weight"].ToArray());
        double clip = 1.0 / (norm + 1e-6);
        Assert.True(clip < 0.1, $"the test needs a norm well above clip_norm (got {norm})");
        double step = lr * clip / (clip + eps);
        var head = model["lm_head.weight"].ToArray();
        for (int i = 0; i < head.Length; i++)
            Assert.True(Math.Abs(headBefore[i] - head[i] - step) <= 1e-3 * step + 1e-7,
                $"lm_head[{i}] moved by {headBefore[i] - head[i]:E4}; with the gradient clipped by {clip:E4} it should move by {step:E4} (unclipped: {lr / (1 + eps):E4})");
    }

    [Fact]
    public void NonFiniteGradientNormRefusesTheUpdate()
    {
        using var model = TestModels.Create(TestModels.Tiny(), 3);
        model.ZeroGrad();
        model["model.norm.weight"].Grad!.Span[0] = float.NaN;
        var before = model["model.norm.weight"].ToArray();
        using var opt = new AdamW(model, new AdamWOptions());
        var e = Assert.Throws<NonFiniteGradientException>(() => opt.Update(1e-3));
        Assert.Contains("NaN", e.Message);
        Assert.True(double.IsNaN(e.Norm));
        Assert.Equal(1, e.Step);
        Assert.Equal(before, model["model.norm.weight"].ToArray());
        Assert.Equal(0, opt.Step);
    }
}
