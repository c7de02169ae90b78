using Engine.Core;
using Engine.Tests.Ops;
using Engine.Training.Alignment;

namespace Engine.Tests.Alignment;

/// <summary>The alignment losses as fp64 functions: gradients against central finite differences, GAE by hand, the
/// adaptive KL controller.</summary>
public class AlignmentMathTests
{
    const double H = 1e-6;

    /// <summary>Central differences of f at x (fp64).</summary>
    static double[] Fd(Func<double[], double> f, double[] x)
    {
        var g = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double o = x[i];
            x[i] = o + H; double p = f(x);
            x[i] = o - H; double m = f(x);
            x[i] = o;
            g[i] = (p - m) / (2 * H);
        }
        return g;
    }

    static void Close(double[] got, double[] expected, string what, double tol = 1e-6)
    {
        Assert.Equal(expected.Length, got.Length);
        for (int i = 0; i < got.Length; i++)
            Assert.True(Math.Abs(got[i] - expected[i]) <= tol * (1 + Math.Abs(expected[i])), $"{what}[{i}]: got {got[i]:G10}, finite differences {expected[i]:G10}");
    }

    [Fact]
    public void BradleyTerryGradientsMatchFiniteDifferences()
    {
        var rng = new Rng(11);
        var c = GradCheck.RandomArray(rng, 7, 2);
        var r = GradCheck.RandomArray(rng, 7, 2);
        c[0] = 40; r[0] = -40;                                  // saturated pairs stay finite
        c[1] = -40; r[1] = 40;
        var (loss, dc, dr, acc) = AlignmentMath.BradleyTerry(c, r);
        Assert.Equal(Enumerable.Range(0, 7).Average(i => -Math.Log(1 / (1 + Math.Exp(-(c[i] - r[i]))))), loss, 9);
        Assert.Equal(Enumerable.Range(0, 7).Count(i => c[i] > r[i]) / 7.0, acc);
        Close(dc, Fd(x => AlignmentMath.BradleyTerry(x, r).Loss, c), "dL/dchosen");
        Close(dr, Fd(x => AlignmentMath.BradleyTerry(c, x).Loss, r), "dL/drejected");
    }

    [Fact]
    public void DpoGradientsMatchFiniteDifferences()
    {
        var rng = new Rng(12);
        var (pc, pr, rc, rr) = (GradCheck.RandomArray(rng, 5, 3), GradCheck.RandomArray(rng, 5, 3), GradCheck.RandomArray(rng, 5, 3), GradCheck.RandomArray(rng, 5, 3));
        var (_, dc, dr, _, _) = AlignmentMath.Dpo(pc, pr, rc, rr, 0.3);
        Close(dc, Fd(x => AlignmentMath.Dpo(x, pr, rc, rr, 0.3).Loss, pc), "dDPO/dchosen");
        Close(dr, Fd(x => AlignmentMath.Dpo(pc, x, rc, rr, 0.3).Loss, pr), "dDPO/drejected");
        // policy = reference: every margin is 0 and the loss is log 2
        Assert.Equal(Math.Log(2), AlignmentMath.Dpo(rc, rr, rc, rr, 0.3).Loss, 12);
    }

    [Fact]
    public void PolicyLossGradientsMatchFiniteDifferencesOnBothSidesOfTheClip()
    {
        var rng = new Rng(13);
        int n = 24;
        var old = GradCheck.RandomArray(rng, n, 1);
        var adv = GradCheck.RandomArray(rng, n, 1);
        // log-ratios spread over [-0.6, 0.6]: inside and outside the 0.2 clip window, none on its edges
        var cur = old.Select((o, i) => o + (-0.6 + 1.2 * i / (n - 1)) + 0.013).ToArray();
        var (_, d, clipFrac, _) = AlignmentMath.PolicyLoss(cur, old, adv, 0.2);
        Assert.InRange(clipFrac, 0.1, 0.9);
        Close(d, Fd(x => AlignmentMath.PolicyLoss(x, old, adv, 0.2).Loss, cur), "dPPO/dlogp");
        // at the sampling policy the ratio is 1: the loss is −mean(A) and the gradient −A/n
        var (l0, d0, c0, k0) = AlignmentMath.PolicyLoss(old, old, adv, 0.2);
        Assert.Equal(-adv.Average(), l0, 12);
        Close(d0, adv.Select(a => -a / n).ToArray(), "dPPO/dlogp at ratio 1", 1e-12);
        Assert.Equal(0, c0);
        Assert.Equal(0, k0);
    }

    [Fact]
    public void ValueLossGradientsMatchFiniteDifferencesOnBothSidesOfTheClip()
    {
        var rng = new Rng(14);
        int n = 24;
        var old = GradCheck.RandomArray(rng, n, 1);
        var ret = GradCheck.RandomArray(rng, n, 1);
        var cur = old.Select((o, i) => o + (-0.7 + 1.4 * i / (n - 1)) + 0.011).ToArray();
        var (_, d, clipFrac) = AlignmentMath.ValueLoss(cur, old, ret, 0.2);
        Assert.InRange(clipFrac, 0.05, 0.95);
        Close(d, Fd(x => AlignmentMath.ValueLoss(x, old, ret, 0.2).Loss, cur), "dV/dvalues");
    }

    [Fact]
    public void GaeEqualsAHandComputation()
    {
        double[] r = [1.0, 0.0, 2.0], v = [0.5, 0.2, 0.1];
        double g = 0.9, l = 0.8;
        // δ_2 = 2 − 0.1 = 1.9;  δ_1 = 0 + 0.9·0.1 − 0.2 = −0.11;  δ_0 = 1 + 0.9·0.2 − 0.5 = 0.68
        // A_2 = 1.9;  A_1 = −0.11 + 0.72·1.9 = 1.258;  A_0 = 0.68 + 0.72·1.258 = 1.58576
        var (adv, ret) = AlignmentMath.Gae(r, v, g, l);
        Assert.Equal(1.58576, adv[0], 12);
        Assert.Equal(1.258, adv[1], 12);
        Assert.Equal(1.9, adv[2], 12);
        Assert.Equal(1.58576 + 0.5, ret[0], 12);
        Assert.Equal(1.258 + 0.2, ret[1], 12);
        Assert.Equal(2.0, ret[2], 12);
        // λ = 1, γ = 1: the return is the plain sum of the remaining rewards
        var (_, mc) = AlignmentMath.Gae(r, v, 1, 1);
        Assert.Equal([3.0, 2.0, 2.0], mc, (a, b) => Math.Abs(a - b) < 1e-12);
    }

    [Fact]
    public void KlPenaltyIsZeroWhenLogProbsAgreeAndTheScoreLandsOnTheLastToken()
    {
        double[] lp = [-1.2, -0.3, -2.0];
        Assert.Equal([0.0, 0.0, 0.7], AlignmentMath.KlPenalizedRewards(lp, lp, 0.7, 0.5));
        var r = AlignmentMath.KlPenalizedRewards(lp, [-1.0, -0.3, -2.5], 0.7, 0.5);
        Assert.Equal(0.1, r[0], 12);
        Assert.Equal(0.0, r[1], 12);
        Assert.Equal(-0.25 + 0.7, r[2], 12);
    }

    [Fact]
    public void AdaptiveKlMovesTowardItsTargetAndAFixedOneStays()
    {
        var c = new AdaptiveKlController(0.1, 6, 1000);
        c.Update(12, 100);                                      // KL twice the target: error clipped to +0.2
        Assert.Equal(0.1 * (1 + 0.2 * 100 / 1000), c.Value, 12);
        c.Update(3, 100);                                       // half the target: error −0.5 → −0.2
        Assert.Equal(0.1 * 1.02 * 0.98, c.Value, 12);
        var f = new AdaptiveKlController(0.1, 0, 1000);
        f.Update(50, 100);
        Assert.Equal(0.1, f.Value);
    }

    [Theory]
    [InlineData(AnswerKind.Label, "positive", "Positive.", 1.0)]
    [InlineData(AnswerKind.Label, "positive", "neutral", 0.25)]
    [InlineData(AnswerKind.Label, "positive", "posit", 0.0)]
    [InlineData(AnswerKind.Number, "21462.58", "21462.58", 1.0)]
    [InlineData(AnswerKind.Number, "21462.58", "about 21,462.579", 1.0)]
    [InlineData(AnswerKind.Number, "100", "no idea", 0.0)]
    [InlineData(AnswerKind.Text, "长实集团", "长实集团", 1.0)]
    [InlineData(AnswerKind.Text, "Fixed Price", "fixed  price", 1.0)]
    public void TheRuleScoresAnswers(AnswerKind kind, string reference, string answer, double expected) =>
        Assert.Equal(expected, AnswerRule.Score(kind, reference, answer), 9);

    [Fact]
    public void TheRuleRanksWrongNumbersAndPartialTextBelowTheReference()
    {
        double near = AnswerRule.Score(AnswerKind.Number, "100", "101"), far = AnswerRule.Score(AnswerKind.Number, "100", "300");
        Assert.True(near < 1 && far < near && far > 0, $"near {near}, far {far}");
        double part = AnswerRule.Score(AnswerKind.Text, "长实集团", "长实");
        Assert.InRange(part, 0.1, 0.89);
        Assert.Equal(AnswerKind.Number, AnswerRule.KindOf("instruct", "-12.6"));
        Assert.Equal(AnswerKind.Number, AnswerRule.KindOf("instruct", "$1,452.4 million"));
        Assert.Equal(AnswerKind.Text, AnswerRule.KindOf("instruct", "2019, 2018, 2017"));
        Assert.Equal(AnswerKind.Label, AnswerRule.KindOf("sentiment", "neutral"));
    }
}
