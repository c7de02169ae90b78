using Engine.Core;
using Engine.Core.Autograd;
using Engine.Data;
using Engine.Model;
using Engine.Tests.Model;
using Engine.Tests.Ops;
using Engine.Training;
using Engine.Training.Alignment;

namespace Engine.Tests.Alignment;

/// <summary>The alignment losses through real (tiny) models: gradients by finite differences, the KL penalty of a
/// reference equal to the actor, PPO with zero advantages, DPO's closed form on a crafted model.</summary>
public class AlignmentModelTests
{
    static IBackend Be => CpuBackend.Instance;

    static int[] Ints(Rng rng, int n, int vocab) => Enumerable.Range(0, n).Select(_ => rng.NextInt(vocab - 2)).ToArray();

    /// <summary>Prompt/answer sequences of different lengths (exercising right padding).</summary>
    static List<PromptResponse> Sequences(int count, int vocab, ulong seed)
    {
        var rng = new Rng(seed);
        return Enumerable.Range(0, count).Select(i => new PromptResponse(Ints(rng, 3 + i % 3, vocab), Ints(rng, 2 + (i * 2) % 3, vocab))).ToList();
    }

    static List<Preference> Pairs(int count, int vocab, ulong seed)
    {
        var rng = new Rng(seed);
        return Enumerable.Range(0, count).Select(i =>
        {
            var p = new AlignmentPrompt(i, "test", AnswerKind.Text, new InstructionExample("q", "", "a"), Ints(rng, 3 + i % 2, vocab));
            return new Preference(p, Ints(rng, 2 + i % 3, vocab), Ints(rng, 3, vocab), 1, 0, "test");
        }).ToList();
    }

    [Fact]
    public void TokenLogProbsGradientsMatchFiniteDifferences()
    {
        int n = 6, v = 9;
        int[] targets = [3, -1, 0, 8, -1, 5];
        GradCheck.Check("TokenLogProbs", t => HostOps.TokenLogProbs(t[0], targets).LogProbs, x =>
        {
            var y = new double[n];
            for (int r = 0; r < n; r++)
            {
                if (targets[r] < 0) continue;
                double m = Enumerable.Range(0, v).Max(j => x[0][r * v + j]);
                double lse = m + Math.Log(Enumerable.Range(0, v).Sum(j => Math.Exp(x[0][r * v + j] - m)));
                y[r] = x[0][r * v + targets[r]] - lse;
            }
            return y;
        }, [(GradCheck.RandomArray(new Rng(21), n * v, 2), [n, v])]);
    }

    /// <summary>d loss / d (some parameters) from the tape against central differences of the fp32 loss (h = 1e-3,
    /// the float forward's rounding ~1e-7 leaves ~1e-4 of noise).</summary>
    static void CheckParameterGradients(Func<Tensor> loss, IEnumerable<(string Name, Tensor P)> parameters, Action zeroGrad, int perParam = 6)
    {
        zeroGrad();
        using (var scope = new TensorScope()) Grad.Backward(loss());
        foreach (var (name, p) in parameters)
        {
            var g = p.Grad!.ToArray();
            var w = p.ToArray();
            int stride = Math.Max(1, w.Length / perParam);
            for (int i = 0; i < w.Length; i += stride)
            {
                const float h = 1e-3f;
                double Eval(float value)
                {
                    var c = (float[])w.Clone();
                    c[i] = value;
                    Be.Upload(p, c);
                    using var ng = Grad.NoGrad();
                    using var s = new TensorScope();
                    return loss().Item();
                }
                double fd = (Eval(w[i] + h) - Eval(w[i] - h)) / (2 * h);
                Be.Upload(p, w);
                Assert.True(Math.Abs(g[i] - fd) <= 2e-3 + 3e-2 * Math.Abs(fd), $"{name}[{i}]: tape {g[i]:G6}, finite differences {fd:G6}");
            }
        }
    }

    [Fact]
    public void RewardModelRankingLossGradientsMatchFiniteDifferences()
    {
        var cfg = TestModels.Tiny();
        using var rm = new ScalarHeadModel(TestModels.Create(cfg, 3), 5);
        var pairs = Pairs(3, cfg.VocabSize, 8);
        CheckParameterGradients(() => RewardModelTrainer.Loss(rm, pairs, cfg.VocabSize - 1).Loss,
            [(ScalarHeadModel.HeadName, rm.Head[ScalarHeadModel.HeadName]), ("model.norm.weight", rm.Body["model.norm.weight"]), ("model.layers.1.mlp.down_proj.weight", rm.Body["model.layers.1.mlp.down_proj.weight"])],
            rm.ZeroGrad);
    }

    [Fact]
    public void DpoLossGradientsThroughThePolicyMatchFiniteDifferences()
    {
        var cfg = TestModels.Tiny();
        using var policy = TestModels.Create(cfg, 4);
        var pairs = Pairs(3, cfg.VocabSize, 9);
        double[] rc = [-20, -15, -22], rr = [-18, -19, -21];
        CheckParameterGradients(() => DpoTrainer.Loss(policy, pairs, rc, rr, 0.5, 0).Loss,
            [("model.layers.0.self_attn.q_proj.weight", policy["model.layers.0.self_attn.q_proj.weight"]), ("lm_head.weight", policy["lm_head.weight"])], policy.ZeroGrad);
    }

    /// <summary>The actor's clipped policy loss and the critic's clipped value loss through the models, at a point
    /// where some tokens are clipped (old log-probs and old values shifted off the current ones).</summary>
    [Fact]
    public void PpoPolicyAndValueLossGradientsThroughTheModelsMatchFiniteDifferences()
    {
        var cfg = TestModels.Tiny();
        using var actor = TestModels.Create(cfg, 6);
        using var critic = new ScalarHeadModel(TestModels.Create(cfg, 7), 8);
        var seqs = Sequences(3, cfg.VocabSize, 10);
        var b = SequenceBatch.Pack(seqs, 0);
        var rows = b.AnswerRows.SelectMany(x => x).ToArray();
        var rng = new Rng(12);
        var (cur, _) = PolicyOps.AnswerLogProbs(actor, seqs, 0);
        var old = cur.SelectMany(x => x).Select((v, i) => v + (i % 3 == 0 ? 0.5 : 0.05)).ToArray();
        var adv = GradCheck.RandomArray(rng, rows.Length, 1);
        Tensor PolicyLoss()
        {
            var (lp, _, _) = HostOps.TokenLogProbs(actor.Logits(b.UploadIds(Be), b.Batch, b.SeqLen), b.Targets);
            return HostOps.Scalar(lp, xs =>
            {
                var (l, d, _, _) = AlignmentMath.PolicyLoss(rows.Select(r => xs[r]).ToArray(), old, adv, 0.2);
                var g = new double[xs.Length];
                for (int i = 0; i < rows.Length; i++) g[rows[i]] = d[i];
                return (l, g);
            });
        }
        CheckParameterGradients(PolicyLoss, [("model.embed_tokens.weight", actor["model.embed_tokens.weight"]), ("lm_head.weight", actor["lm_head.weight"])], actor.ZeroGrad);

        var values = PolicyOps.Values(critic, seqs, 0).SelectMany(x => x).ToArray();
        var oldV = values.Select((v, i) => v + (i % 2 == 0 ? 0.4 : -0.05)).ToArray();
        var ret = GradCheck.RandomArray(rng, rows.Length, 1);
        Tensor ValueLoss() => HostOps.Scalar(critic.Scores(b.UploadIds(Be), b.Batch, b.SeqLen), xs =>
        {
            var (l, d, _) = AlignmentMath.ValueLoss(rows.Select(r => xs[r]).ToArray(), oldV, ret, 0.2);
            var g = new double[xs.Length];
            for (int i = 0; i < rows.Length; i++) g[rows[i]] = d[i];
            return (l, g);
        });
        CheckParameterGradients(ValueLoss, [(ScalarHeadModel.HeadName, critic.Head[ScalarHeadModel.HeadName]), ("model.layers.0.mlp.up_proj.weight", critic.Body["model.layers.0.mlp.up_proj.weight"])], critic.ZeroGrad);
    }

    static PpoTrainer Trainer(LlamaModel actor, ScalarHeadModel critic, LlamaModel reference, PpoSection? o = null) =>
        new(actor, critic, reference, seqs => seqs.Select(s => (double)s.Response.Length).ToArray(),
            o ?? new PpoSection { Epochs = 2, MiniBatch = 2, Optim = new AdamWOptions { Lr = 1e-2, WeightDecay = 0 } }, 0, 1, 4, 3);

    [Fact]
    public void KlPenaltyIsZeroWhenTheActorIsTheReference()
    {
        var cfg = TestModels.Tiny();
        using var actor = TestModels.Create(cfg, 6);
        using var reference = PolicyOps.Clone(actor);
        using var critic = new ScalarHeadModel(PolicyOps.Clone(actor), 2);
        using var ppo = Trainer(actor, critic, reference, new PpoSection { InitKlCoef = 0.7, WhitenAdvantages = false });
        var rollouts = ppo.Score(Sequences(4, cfg.VocabSize, 30));
        foreach (var r in rollouts)
        {
            Assert.Equal(0, r.Kl);
            Assert.All(r.Rewards[..^1], x => Assert.Equal(0, x));
            Assert.Equal(r.Score, r.Rewards[^1]);
        }
        // a different reference makes it non-zero: the check can fail
        using var other = TestModels.Create(cfg, 99);
        using var ppo2 = Trainer(actor, critic, other, new PpoSection { InitKlCoef = 0.7 });
        Assert.Contains(ppo2.Score(Sequences(4, cfg.VocabSize, 30)), r => Math.Abs(r.Kl) > 1e-3);
    }

    [Fact]
    public void PpoUpdateWithZeroAdvantagesLeavesThePolicyUnchanged()
    {
        var cfg = TestModels.Tiny();
        using var actor = TestModels.Create(cfg, 6);
        using var reference = PolicyOps.Clone(actor);
        using var critic = new ScalarHeadModel(PolicyOps.Clone(actor), 2);
        using var ppo = Trainer(actor, critic, reference);
        var rollouts = ppo.Score(Sequences(4, cfg.VocabSize, 31));
        foreach (var r in rollouts) Array.Clear(r.Advantages);
        var before = actor.Store.Master.ToArray();
        var criticBefore = critic.Head[ScalarHeadModel.HeadName].ToArray();
        var (policyLoss, _, clip, _, _) = ppo.Update(rollouts, 0);
        Assert.Equal(0, policyLoss);
        Assert.Equal(0, clip);
        Assert.Equal(before, actor.Store.Master.ToArray());
        Assert.NotEqual(criticBefore, critic.Head[ScalarHeadModel.HeadName].ToArray());   // the critic still learned

        // the same update with the advantages GAE gave moves the policy
        var moved = ppo.Score(Sequences(4, cfg.VocabSize, 31));
        ppo.Update(moved, 1);
        Assert.NotEqual(before, actor.Store.Master.ToArray());
    }

    /// <summary>A policy whose final norm weight is zero has zero hidden states, so every token has probability 1/V
    /// and log π(y) = −|y|·ln V; the reference's log-probs come from the model's own cross-entropy (another path).</summary>
    [Fact]
    public void DpoLossEqualsItsClosedFormOnACraftedModel()
    {
        var cfg = TestModels.Tiny();
        using var policy = TestModels.Create(cfg, 4);
        Be.Fill(policy["model.norm.weight"], 0f);
        using var reference = TestModels.Create(cfg, 5);
        var pairs = Pairs(4, cfg.VocabSize, 12);
        double RefLogProb(PromptResponse s)
        {
            int[] ids = [.. s.Prompt, .. s.Response];
            var tg = Enumerable.Repeat(-100, ids.Length).ToArray();
            for (int j = 0; j < s.Response.Length; j++) tg[s.Prompt.Length + j - 1] = s.Response[j];
            using var ng = Grad.NoGrad();
            using var scope = new TensorScope();
            var idT = Be.Empty([ids.Length], DType.I32);
            var tgT = Be.Empty([ids.Length], DType.I32);
            Be.Upload(idT, ids);
            Be.Upload(tgT, tg);
            var (_, rows) = reference.Loss(idT, tgT, 1, ids.Length, 1f);
            return -rows.ToArray().Sum(x => (double)x);
        }
        var rc = pairs.Select(p => RefLogProb(p.ChosenSequence)).ToArray();
        var rr = pairs.Select(p => RefLogProb(p.RejectedSequence)).ToArray();
        Assert.Equal(rc, PolicyOps.SequenceLogProbs(reference, pairs.Select(p => p.ChosenSequence).ToList(), 0), (a, b) => Math.Abs(a - b) < 1e-4);
        double beta = 0.25, lnV = Math.Log(cfg.VocabSize);
        double expected = pairs.Select((p, i) =>
        {
            double z = beta * ((-p.Chosen.Length * lnV - rc[i]) - (-p.Rejected.Length * lnV - rr[i]));
            return Math.Log(1 + Math.Exp(-z));
        }).Average();
        using var ng = Grad.NoGrad();
        using var scope = new TensorScope();
        var (_, value, _, _) = DpoTrainer.Loss(policy, pairs, rc, rr, beta, 0);
        Assert.Equal(expected, value, 5);
    }
}
