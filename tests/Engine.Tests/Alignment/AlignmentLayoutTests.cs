using Engine.Core;
using Engine.Core.Distributed;
using Engine.Data;
using Engine.Model;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Tests.Model;
using Engine.Tests.Parallel;
using Engine.Training;
using Engine.Training.Alignment;
using Engine.Training.Parallel;
using Engine.Training.Run;

namespace Engine.Tests.Alignment;

/// <summary>
/// The alignment phases are runs of the one assembler, so they accept the layouts `train` does: the reward model and
/// DPO at dp 2 with ZeRO 0/1/2, on 2 pipeline stages (1F1B: the scalar head and the log-probs on the last stage) and
/// on 2 stages × 2 replicas, and PPO at dp 2, each equal to one process on the same global batch (batch_size pairs,
/// rollout_batch prompts per step) — losses and accuracies per step and the final weights (body and head) within
/// 1e-5 relative, as <see cref="LayoutParityTests"/>.
/// </summary>
public class AlignmentLayoutTests
{
    const int Vocab = 37, Pad = 0, Eos = 1;

    static int[] Ints(Rng rng, int n) => Enumerable.Range(0, n).Select(_ => 2 + rng.NextInt(Vocab - 2)).ToArray();

    /// <summary>Pairs of different lengths (right padding in every micro-batch).</summary>
    static List<Preference> Pairs(int count, ulong seed)
    {
        var rng = new Rng(seed);
        return Enumerable.Range(0, count).Select(i =>
        {
            var p = new AlignmentPrompt(i, "test", AnswerKind.Text, new InstructionExample("q", "", "a"), Ints(rng, 3 + i % 3));
            return new Preference(p, Ints(rng, 2 + i % 3), Ints(rng, 3), 1, 0, "test");
        }).ToList();
    }

    /// <summary>The tuned model every phase starts from: 4 layers (2 per pipeline stage), untied head.</summary>
    static string Tuned(TempDir tmp)
    {
        string dir = tmp.File("tuned");
        using var m = TestModels.Create(TestModels.Tiny() with { VocabSize = Vocab, NumLayers = 4 }, 6);
        ModelIO.Save(m, dir);
        return dir;
    }

    static readonly AdamWOptions Optim = new() { Lr = 1e-3, WeightDecay = 0 };

    static LayoutParityTests.Outcome Reward(string tuned, List<Preference> pairs, string outDir, ParallelSection parallel, ICommunicator comm)
    {
        var spec = RewardModelTrainer.Spec(ModelSource.Load(tuned, CpuBackend.Instance), 77, pairs,
            new RewardSection { Steps = 3, BatchSize = 6, Optim = Optim }, Pad, 3, new RunLayout(parallel));
        using var run = RunAssembler.Assemble(spec, comm, CpuBackend.Instance);
        var steps = run.Train().Steps;
        RewardModelTrainer.Save(run, outDir);
        return LayoutParityTests.Read(steps, outDir);
    }

    static LayoutParityTests.Outcome Dpo(string tuned, List<Preference> pairs, string outDir, ParallelSection parallel, ICommunicator comm)
    {
        double[] refC, refR;
        using (var reference = ModelIO.Load(tuned, CpuBackend.Instance))
        {
            refC = PolicyOps.SequenceLogProbs(reference, pairs.Select(p => p.ChosenSequence).ToList(), Pad);
            refR = PolicyOps.SequenceLogProbs(reference, pairs.Select(p => p.RejectedSequence).ToList(), Pad);
        }
        var spec = DpoTrainer.Spec(ModelSource.Load(tuned, CpuBackend.Instance), pairs, refC, refR,
            new DpoSection { Steps = 3, BatchSize = 6, Beta = 0.5, Optim = Optim }, Pad, 4, new RunLayout(parallel));
        using var run = RunAssembler.Assemble(spec, comm, CpuBackend.Instance);
        var steps = run.Train().Steps;
        run.SaveWeights(outDir);
        return LayoutParityTests.Read(steps, outDir);
    }

    static void Compare(Func<string, List<Preference>, string, ParallelSection, ICommunicator, LayoutParityTests.Outcome> phase, string what,
        int world, int pp, int zero)
    {
        using var tmp = new TempDir();
        string tuned = Tuned(tmp);
        var pairs = Pairs(10, 5);
        var single = phase(tuned, pairs, tmp.File("one"), new ParallelSection(), new SingleRankCommunicator(CpuBackend.Instance));
        Assert.All(single.Steps, s => Assert.True(double.IsFinite(s.Loss) && s.SourceLosses!.ContainsKey("accuracy")));
        var ranks = ThreadCommunicator.Run(world, c => phase(tuned, pairs, tmp.File("many"), new ParallelSection { Pp = pp, Zero = zero, BucketMb = 0.01 }, c));
        LayoutParityTests.AssertSame(single, ranks[0], $"{what} on {world} ranks, pp {pp}, ZeRO-{zero}", tokens: false);
        Assert.Equal(pp, ranks[0].Stages);
    }

    [Theory]
    [MemberData(nameof(LayoutParityTests.Layouts), MemberType = typeof(LayoutParityTests))]
    public void RewardModelEqualsOneProcess(int world, int pp, int zero) => Compare(Reward, "reward model", world, pp, zero);

    [Theory]
    [MemberData(nameof(LayoutParityTests.Layouts), MemberType = typeof(LayoutParityTests))]
    public void DpoEqualsOneProcess(int world, int pp, int zero) => Compare(Dpo, "DPO", world, pp, zero);

    sealed record PpoOutcome(List<PpoStepLog> Steps, float[] Actor, float[] Critic, float[] Head);

    static PpoOutcome Ppo(ICommunicator? comm)
    {
        var cfg = TestModels.Tiny() with { VocabSize = Vocab };
        using var actor = TestModels.Create(cfg, 6);
        using var critic = new ScalarHeadModel(PolicyOps.Clone(actor), 2);
        using var reference = PolicyOps.Clone(actor);
        var o = new PpoSection { Steps = 2, RolloutBatch = 6, MiniBatch = 3, Epochs = 2, Temperature = 1, Optim = Optim, CriticOptim = Optim };
        // a rule reward: longer answers score higher (the policy has something to learn)
        using var ppo = new PpoTrainer(actor, critic, reference, seqs => seqs.Select(s => (double)s.Response.Length).ToArray(), o, Pad, Eos, 5, 3,
            comm, new RunLayout(new ParallelSection { Zero = 1, BucketMb = 0.01 }));
        var rng = new Rng(8);
        var prompts = Enumerable.Range(0, 9).Select(i => Ints(rng, 3 + i % 3)).ToList();
        var steps = ppo.Train(prompts);
        float[] Flat(LlamaModel m) => m.Parameters.OrderBy(p => p.Name, StringComparer.Ordinal).SelectMany(p => p.Tensor.ToArray()).ToArray();
        return new PpoOutcome(steps, Flat(actor), Flat(critic.Body), critic.Head[ScalarHeadModel.HeadName].ToArray());
    }

    [Fact]
    public void PpoOnTwoRanksEqualsOneProcess()
    {
        var single = Ppo(null);
        var ranks = ThreadCommunicator.Run(2, c => Ppo(c));
        foreach (var r in ranks)
        {
            for (int i = 0; i < single.Steps.Count; i++)
            {
                var (a, b) = (single.Steps[i], r.Steps[i]);
                // the same rollouts: each prompt's answer is seeded by its index, whichever rank samples it
                Assert.Equal(a.ResponseLength, b.ResponseLength);
                foreach (var (name, x, y) in new[] { ("reward", a.Reward, b.Reward), ("kl", a.Kl, b.Kl), ("policy loss", a.PolicyLoss, b.PolicyLoss),
                    ("value loss", a.ValueLoss, b.ValueLoss), ("clip fraction", a.ClipFraction, b.ClipFraction), ("approx kl", a.ApproxKl, b.ApproxKl) })
                    Assert.True(Math.Abs(x - y) <= 1e-5 * Math.Max(Math.Abs(x), 1e-3), $"PPO step {i + 1} {name}: {y} vs {x}");
            }
            foreach (var (name, x, y) in new[] { ("actor", single.Actor, r.Actor), ("critic body", single.Critic, r.Critic), ("critic head", single.Head, r.Head) })
            {
                double scale = x.Max(v => Math.Abs((double)v)), worst = x.Zip(y, (p, q) => Math.Abs((double)p - q)).Max();
                Assert.True(worst <= 1e-5 * scale, $"PPO {name} differs by {worst:E2} (scale {scale:E2})");
            }
        }
        Assert.NotEqual(0, single.Steps[0].PolicyLoss);   // the update did something: the comparison can fail
    }
}
