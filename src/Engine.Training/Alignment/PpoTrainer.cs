using System.Diagnostics;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Parallel;
using Engine.Training.Eval;
using Engine.Training.Run;

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
/// <para>
/// Data-parallel over the ranks of <paramref name="comm"/>: the rollouts are sampled and scored in shares (prompt i
/// on replica i mod N, seeded by i, so the samples are those of one process) and gathered, so every rank whitens the
/// same advantages; actor and critic are runs of <see cref="RunAssembler"/> whose every update trains the mini-batch
/// split over the replicas. Pipeline stages are refused (<see cref="RunLayout.Validate"/>): sampling token by token
/// needs the whole actor.
/// </para>
/// </summary>
public sealed class PpoTrainer : IDisposable
{
    readonly LlamaModel actor, reference;
    readonly ScalarHeadModel critic;
    readonly Func<IReadOnlyList<PromptResponse>, double[]> reward;
    readonly PpoSection o;
    readonly int padId, eosId, maxNewTokens;
    readonly ulong seed;
    readonly ICommunicator comm;
    readonly AssembledRun actorRun, criticRun;

    /// <param name="reward">Scores finished rollouts (the reward model; a rule in tests).</param>
    /// <param name="comm">The job's ranks (null: this process alone).</param>
    /// <param name="layout">The recipe's layout (null: data parallelism over <paramref name="comm"/>, ZeRO-0).</param>
    public PpoTrainer(LlamaModel actor, ScalarHeadModel critic, LlamaModel reference, Func<IReadOnlyList<PromptResponse>, double[]> reward,
        PpoSection options, int padId, int eosId, int maxNewTokens, ulong seed, ICommunicator? comm = null, RunLayout? layout = null)
    {
        (this.actor, this.critic, this.reference, this.reward, o) = (actor, critic, reference, reward, options);
        (this.padId, this.eosId, this.maxNewTokens, this.seed) = (padId, eosId, maxNewTokens, seed);
        this.comm = comm ?? new SingleRankCommunicator(actor.Backend);
        layout ??= new RunLayout(new Parallel.ParallelSection());
        actor.SetTrainable(null);
        critic.SetTrainable(true);
        reference.SetTrainable(_ => false);
        actorRun = RunAssembler.Assemble(Spec("alignment.ppo actor", layout, ModelSource.Existing(actor), null, o.Optim, run => new PpoPolicyLoss(run.Model, o.ClipRange)), this.comm, actor.Backend);
        try
        {
            criticRun = RunAssembler.Assemble(Spec("alignment.ppo critic", layout, ModelSource.Existing(critic.Body), _ => critic, o.CriticOptim,
                run => new PpoValueLoss(run.Head!, o.ValueClip)), this.comm, actor.Backend);
        }
        catch
        {
            actorRun.Dispose();
            throw;
        }
        Kl = new AdaptiveKlController(o.InitKlCoef, o.TargetKl, o.KlHorizon);
    }

    /// <summary>A PPO model's run: trained in rounds (<see cref="AssembledRun.Loop"/>), one per batch of rollouts.</summary>
    RunSpec Spec(string name, RunLayout layout, ModelSource model, Func<LlamaModel, ScalarHeadModel>? head, AdamWOptions optim, Func<AssembledRun, ITrainingLoss> loss) => new()
    {
        Name = name,
        Layout = layout,
        Sampling = true,
        Model = model,
        ScalarHead = head,
        Optim = optim,
        MicroBatchRows = o.MiniBatch,
        SeqLen = maxNewTokens,
        Steps = o.Steps,
        Loss = loss,
    };

    public AdaptiveKlController Kl { get; }

    /// <summary>The data-parallel ranks the rollouts are shared over.</summary>
    ICommunicator Replicas => actorRun.Layout.DataGroup;

    /// <summary>Samples one answer per prompt from the actor (prompt i seeded by i, on replica i mod N).</summary>
    public List<PromptResponse> Generate(IReadOnlyList<int[]> prompts, int step)
    {
        var answers = RankShards.Map(Replicas, prompts.Count, mine => mine.Select(i =>
        {
            var so = new SamplingOptions(maxNewTokens, o.Temperature, o.TopP, seed ^ ((ulong)step << 32) ^ (ulong)i * 0x9E3779B97F4A7C15UL, eosId);
            return Generator.Generate(actor, prompts[i], so).Select(t => (double)t).ToArray();
        }).ToArray());
        return prompts.Select((p, i) => new PromptResponse(p, answers[i].Select(t => (int)t).ToArray())).ToList();
    }

    /// <summary>Scores finished sequences and computes the per-token statistics, rewards (KL penalty at the current
    /// coefficient), GAE advantages (whitened over the batch's answer tokens when configured) and returns. The
    /// statistics are computed in shares over the replicas and gathered, so every rank holds every rollout.</summary>
    public List<Rollout> Score(IReadOnlyList<PromptResponse> seqs)
    {
        // per sequence of answer length L: old log-probs, reference log-probs, values, entropies (L each), the score
        var stats = RankShards.Map(Replicas, seqs.Count, mine =>
        {
            var part = mine.Select(i => seqs[i]).ToList();
            var (oldLp, ent) = PolicyOps.AnswerLogProbs(actor, part, padId);
            var (refLp, _) = PolicyOps.AnswerLogProbs(reference, part, padId);
            var values = PolicyOps.Values(critic, part, padId);
            var scores = reward(part);
            return part.Select((_, k) => (double[])[.. oldLp[k], .. refLp[k], .. values[k], .. ent[k], scores[k]]).ToArray();
        });
        var rollouts = new List<Rollout>();
        for (int i = 0; i < seqs.Count; i++)
        {
            int L = seqs[i].Response.Length;
            var x = stats[i];
            double[] oldLp = x[..L], refLp = x[L..(2 * L)], values = x[(2 * L)..(3 * L)], ent = x[(3 * L)..(4 * L)];
            double score = x[4 * L];
            var r = AlignmentMath.KlPenalizedRewards(oldLp, refLp, score, Kl.Value);
            var (adv, ret) = AlignmentMath.Gae(r, values, o.Gamma, o.Lambda);
            rollouts.Add(new Rollout(seqs[i], oldLp, refLp, values, score, r, adv, ret, ent));
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

    /// <summary>PPO epochs over the rollouts in mini-batches: per mini-batch an actor step (clipped policy loss) and a
    /// critic step (clipped value loss) — independent models on fixed rollouts, so the actor's updates run first, then
    /// the critic's, each through its run's loop. Returns mean policy loss, value loss, clip fractions and approximate KL.</summary>
    public (double PolicyLoss, double ValueLoss, double ClipFraction, double ValueClipFraction, double ApproxKl) Update(IReadOnlyList<Rollout> rollouts, int step)
    {
        var updates = new List<IReadOnlyList<Rollout>>();
        for (int epoch = 0; epoch < o.Epochs; epoch++)
        {
            var order = Recipes.RecipeSources.Permutation(rollouts.Count, seed ^ ((ulong)step << 20) ^ (ulong)epoch);
            for (int s = 0; s < order.Length; s += o.MiniBatch)
                updates.Add(order.Skip(s).Take(o.MiniBatch).Select(i => rollouts[i]).ToList());
        }
        var loop = new LoopOptions
        {
            Steps = updates.Count,
            BatchSize = o.MiniBatch,
            SeqLen = maxNewTokens,
            Optim = o.Optim,
            Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
        };
        var a = actorRun.Loop(new RolloutBatches(updates, actorRun.Layout.Replicas, padId), loop);
        var c = criticRun.Loop(new RolloutBatches(updates, criticRun.Layout.Replicas, padId), loop with { Optim = o.CriticOptim });
        double Mean(List<StepMetrics> steps, string account) => steps.Average(m => m.SourceLosses![account]);
        return (a.Average(m => m.Loss), c.Average(m => m.Loss), Mean(a, "clip_fraction"), Mean(c, "value_clip_fraction"), Mean(a, "approx_kl"));
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
        criticRun.Dispose();
        actorRun.Dispose();
    }
}
