using System.Diagnostics;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;
using Engine.Training.Eval;

namespace Engine.Training.Alignment;

/// <summary>One rollout with what PPO needs of it: per answer token the actor's log-prob at sampling time, the frozen
/// reference's, the critic's value, the KL-penalised reward, the advantage and the return; the reward model's score.</summary>
public sealed record Rollout(PromptResponse Sequence, double[] OldLogProbs, double[] RefLogProbs, double[] OldValues, double Score,
    double[] Rewards, double[] Advantages, double[] Returns, double[] Entropy)
{
    /// <summary>Σ_t (log π_old − log π_ref) over the answer: the sampled estimate of KL(π_old ‖ π_ref).</summary>
    public double Kl => OldLogProbs.Zip(RefLogProbs, (a, b) => a - b).Sum();
}

/// <summary>Per PPO step: reward model score, KL to the reference (nats per answer), the KL coefficient used,
/// the actor's entropy per answer token, the clip fractions, losses and the mean answer length.</summary>
public sealed record PpoStepLog(int Step, double Reward, double Kl, double KlCoef, double Entropy, double ClipFraction, double ValueClipFraction,
    double ApproxKl, double PolicyLoss, double ValueLoss, double ResponseLength, double Seconds);

/// <summary>
/// PPO with four models (Baichuan 2, InstructGPT, DeepSpeed-Chat step 3): the actor samples answers with the KV-cache
/// generator (temperature, top-p, stopping at EOS); the frozen reference gives the per-token KL penalty (coefficient
/// adapted toward a target KL); the reward model scores the answer at its last token; the critic (a Llama with a value
/// head) gives per-token values for GAE. Each batch of rollouts is trained for several epochs of mini-batches with the
/// clipped policy loss (actor) and the clipped value loss (critic), on answer tokens only. All four are full models
/// here (no LoRA adapters), each with its own weights.
/// </summary>
public sealed class PpoTrainer : IDisposable
{
    readonly LlamaModel actor, reference;
    readonly ScalarHeadModel critic;
    readonly Func<IReadOnlyList<PromptResponse>, double[]> reward;
    readonly PpoSection o;
    readonly int padId, eosId, maxNewTokens;
    readonly ulong seed;
    readonly AdamW actorOpt;
    readonly HeadModelOptimizer criticOpt;

    /// <param name="reward">Scores finished rollouts (the reward model; a rule in tests).</param>
    public PpoTrainer(LlamaModel actor, ScalarHeadModel critic, LlamaModel reference, Func<IReadOnlyList<PromptResponse>, double[]> reward,
        PpoSection options, int padId, int eosId, int maxNewTokens, ulong seed)
    {
        (this.actor, this.critic, this.reference, this.reward, o) = (actor, critic, reference, reward, options);
        (this.padId, this.eosId, this.maxNewTokens, this.seed) = (padId, eosId, maxNewTokens, seed);
        actor.SetTrainable(null);
        critic.SetTrainable(true);
        reference.SetTrainable(_ => false);
        actorOpt = new AdamW(actor, o.Optim);
        criticOpt = new HeadModelOptimizer(critic, o.CriticOptim);
        Kl = new AdaptiveKlController(o.InitKlCoef, o.TargetKl, o.KlHorizon);
    }

    public AdaptiveKlController Kl { get; }

    /// <summary>Samples one answer per prompt from the actor.</summary>
    public List<PromptResponse> Generate(IReadOnlyList<int[]> prompts, int step)
    {
        var list = new List<PromptResponse>();
        for (int i = 0; i < prompts.Count; i++)
        {
            var so = new SamplingOptions(maxNewTokens, o.Temperature, o.TopP, seed ^ ((ulong)step << 32) ^ (ulong)i * 0x9E3779B97F4A7C15UL, eosId);
            list.Add(new PromptResponse(prompts[i], Generator.Generate(actor, prompts[i], so).ToArray()));
        }
        return list;
    }

    /// <summary>Scores finished sequences and computes the per-token statistics, rewards (KL penalty at the current
    /// coefficient), GAE advantages (whitened over the batch's answer tokens when configured) and returns.</summary>
    public List<Rollout> Score(IReadOnlyList<PromptResponse> seqs)
    {
        var (oldLp, ent) = PolicyOps.AnswerLogProbs(actor, seqs, padId);
        var (refLp, _) = PolicyOps.AnswerLogProbs(reference, seqs, padId);
        var values = PolicyOps.Values(critic, seqs, padId);
        var scores = reward(seqs);
        var rollouts = new List<Rollout>();
        for (int i = 0; i < seqs.Count; i++)
        {
            var r = AlignmentMath.KlPenalizedRewards(oldLp[i], refLp[i], scores[i], Kl.Value);
            var (adv, ret) = AlignmentMath.Gae(r, values[i], o.Gamma, o.Lambda);
            rollouts.Add(new Rollout(seqs[i], oldLp[i], refLp[i], values[i], scores[i], r, adv, ret, ent[i]));
        }
        if (o.WhitenAdvantages)
        {
            var all = rollouts.SelectMany(x => x.Advantages).ToArray();
            AlignmentMath.Whiten(all);
            int k = 0;
            foreach (var x in rollouts) for (int t = 0; t < x.Advantages.Length; t++) x.Advantages[t] = all[k++];
        }
        return rollouts;
    }

    /// <summary>PPO epochs over the rollouts in mini-batches: an actor step (clipped policy loss) and a critic step
    /// (clipped value loss) per mini-batch. Returns mean policy loss, value loss, clip fractions and approximate KL.</summary>
    public (double PolicyLoss, double ValueLoss, double ClipFraction, double ValueClipFraction, double ApproxKl) Update(IReadOnlyList<Rollout> rollouts, int step)
    {
        double pl = 0, vl = 0, cf = 0, vcf = 0, akl = 0;
        int updates = 0;
        for (int epoch = 0; epoch < o.Epochs; epoch++)
        {
            var order = Recipes.RecipeSources.Permutation(rollouts.Count, seed ^ ((ulong)step << 20) ^ (ulong)epoch);
            for (int s = 0; s < order.Length; s += o.MiniBatch)
            {
                var mb = order.Skip(s).Take(o.MiniBatch).Select(i => rollouts[i]).ToList();
                var b = SequenceBatch.Pack(mb.Select(r => r.Sequence).ToList(), padId);
                var old = mb.SelectMany(r => r.OldLogProbs).ToArray();
                var adv = mb.SelectMany(r => r.Advantages).ToArray();
                var rows = b.AnswerRows.SelectMany(x => x).ToArray();

                actorOpt.Parallel.BeginStep();
                using (var scope = new TensorScope())
                {
                    var logits = actor.Logits(b.UploadIds(actor.Backend), b.Batch, b.SeqLen);
                    var (lp, _, _) = HostOps.TokenLogProbs(logits, b.Targets);
                    var loss = HostOps.Scalar(lp, xs =>
                    {
                        var cur = rows.Select(r => xs[r]).ToArray();
                        var (l, d, c, k) = AlignmentMath.PolicyLoss(cur, old, adv, o.ClipRange);
                        var g = new double[xs.Length];
                        for (int i = 0; i < rows.Length; i++) g[rows[i]] = d[i];
                        pl += l; cf += c; akl += k;
                        return (l, g);
                    });
                    Grad.Backward(loss);
                }
                actorOpt.Update(o.Optim.Lr);

                var oldV = mb.SelectMany(r => r.OldValues).ToArray();
                var ret = mb.SelectMany(r => r.Returns).ToArray();
                criticOpt.BeginStep();
                using (var scope = new TensorScope())
                {
                    var v = critic.Scores(b.UploadIds(critic.Backend), b.Batch, b.SeqLen);
                    var loss = HostOps.Scalar(v, xs =>
                    {
                        var cur = rows.Select(r => xs[r]).ToArray();
                        var (l, d, c) = AlignmentMath.ValueLoss(cur, oldV, ret, o.ValueClip);
                        var g = new double[xs.Length];
                        for (int i = 0; i < rows.Length; i++) g[rows[i]] = d[i];
                        vl += l; vcf += c;
                        return (l, g);
                    });
                    Grad.Backward(loss);
                }
                criticOpt.Update(o.CriticOptim.Lr);
                updates++;
            }
        }
        return (pl / updates, vl / updates, cf / updates, vcf / updates, akl / updates);
    }

    /// <summary>One PPO step: rollouts for the prompts, PPO epochs, then the KL coefficient adapts.</summary>
    public PpoStepLog Step(IReadOnlyList<int[]> prompts, int step)
    {
        var sw = Stopwatch.StartNew();
        double coef = Kl.Value;
        var rollouts = Score(Generate(prompts, step));
        var (pl, vl, cf, vcf, akl) = Update(rollouts, step);
        double kl = rollouts.Average(r => r.Kl);
        Kl.Update(kl, rollouts.Count);
        return new PpoStepLog(step + 1, rollouts.Average(r => r.Score), kl, coef,
            rollouts.SelectMany(r => r.Entropy).Average(), cf, vcf, akl, pl, vl, rollouts.Average(r => r.Sequence.Response.Length), sw.Elapsed.TotalSeconds);
    }

    /// <summary>o.Steps steps over the prompts (cycled in a seeded order, rollout_batch per step).</summary>
    public List<PpoStepLog> Train(IReadOnlyList<int[]> prompts, Action<PpoStepLog>? onStep = null)
    {
        if (prompts.Count == 0) throw new InvalidDataException("PPO: no training prompts");
        var logs = new List<PpoStepLog>();
        var order = Recipes.RecipeSources.Permutation(prompts.Count, seed);
        int pos = 0;
        for (int step = 0; step < o.Steps; step++)
        {
            var batch = new List<int[]>();
            for (int i = 0; i < o.RolloutBatch; i++)
            {
                if (pos == order.Length) { order = Recipes.RecipeSources.Permutation(prompts.Count, seed + (ulong)step + 1); pos = 0; }
                batch.Add(prompts[order[pos++]]);
            }
            var log = Step(batch, step);
            logs.Add(log);
            onStep?.Invoke(log);
        }
        return logs;
    }

    public void Dispose()
    {
        actorOpt.Dispose();
        criticOpt.Dispose();
    }
}
