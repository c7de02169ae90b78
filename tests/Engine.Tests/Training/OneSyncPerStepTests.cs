using Engine.Core;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Parallel;
using Engine.Training;

namespace Engine.Tests.Training;

/// <summary>
/// Issue 23: a training step makes the host wait for the device once. A fake device (the CPU backend behind a
/// wrapper) counts every operation that returns device values to the host — Download (Item, ToArray), Sum,
/// SumOfSquares, Ewc — and the loop, with gradient accumulation, must do exactly one per step; the results stay
/// bit-identical to the plain CPU backend's. A non-finite loss is gated on the device (AdamW writes nothing) within
/// the same single read.
/// </summary>
public class OneSyncPerStepTests
{
    /// <summary>The CPU backend, counting host reads.</summary>
    sealed class CountingBackend : CpuDelegatingBackend
    {
        public int HostReads;
        /// <summary>When set, the next cross-entropy writes NaN into its first row loss (a poisoned batch).</summary>
        public bool PoisonNextLoss;

        public override string Name => "counting-cpu";
        public override void Download(Tensor src, Span<float> dst) { HostReads++; base.Download(src, dst); }
        public override double SumOfSquares(Tensor t) { HostReads++; return base.SumOfSquares(t); }
        public override double Sum(Tensor t) { HostReads++; return base.Sum(t); }
        public override double Ewc(Tensor param, Tensor anchor, Tensor fisher, Tensor grad, float lambda) { HostReads++; return base.Ewc(param, anchor, fisher, grad, lambda); }
        public override void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor lse, float zLoss, bool writeGradient, float gradScale, float maxZLoss = 0f)
        {
            base.CrossEntropy(logits, targets, losses, lse, zLoss, writeGradient, gradScale, maxZLoss);
            if (PoisonNextLoss) { losses.Span[0] = float.NaN; PoisonNextLoss = false; }
        }
    }

    sealed class RandomTokens(int vocab) : IBatchSource
    {
        readonly Rng rng = new(11);
        public Batch Next(int batch, int seqLen)
        {
            var ids = new int[batch * seqLen];
            var tg = new int[batch * seqLen];
            for (int i = 0; i < ids.Length; i++) { ids[i] = rng.NextInt(vocab); tg[i] = i % 5 == 3 ? -100 : rng.NextInt(vocab); }
            return new Batch(ids, tg, [.. Enumerable.Range(0, batch).Select(r => r % 2 == 0 ? "en" : "zh")]);
        }
        public IReadOnlyList<string> SourceNames => ["en", "zh"];
    }

    static readonly LlamaConfig Cfg = new LlamaConfig
    {
        VocabSize = 64,
        HiddenSize = 32,
        IntermediateSize = 64,
        NumLayers = 2,
        NumHeads = 4,
        NumKvHeads = 2,
        MaxPositionEmbeddings = 16,
    }.Validate();

    static LoopOptions Loop(string guard = "fail") => new()
    {
        Steps = 4,
        BatchSize = 2,
        SeqLen = 16,
        GradAccum = 2,
        Optim = new AdamWOptions { Lr = 1e-2 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
        Guard = new GuardOptions { Mode = guard, ZScore = 0 },
    };

    /// <summary>Trains o.Steps steps; the host reads of each step are the counter's growth up to its onStep (which
    /// runs after the step's read). <paramref name="poisonStep"/>: that step's first micro-batch loss is NaN.</summary>
    static (List<StepMetrics> Steps, List<int> ReadsPerStep, float[] Weights) Train(IBackend be, LoopOptions o, int poisonStep = -1)
    {
        using var model = new LlamaModel(Cfg, be);
        model.InitializeWeights(3);
        using var opt = new AdamW(model, o.Optim);
        var counting = be as CountingBackend;
        var reads = new List<int>();
        int before = counting?.HostReads ?? 0;
        if (counting != null) counting.PoisonNextLoss = poisonStep == 0;
        var steps = TrainingLoop.Run(model, new RandomTokens(Cfg.VocabSize), o, opt, cancel: TestContext.Current.CancellationToken, onStep: m =>
        {
            int now = counting?.HostReads ?? 0;
            reads.Add(now - before);
            before = now;
            if (counting != null) counting.PoisonNextLoss = m.Step == poisonStep;   // m.Step is 1-based: the next step's index
        });
        return (steps, reads, model.Store.Master.ToArray());
    }

    [Fact]
    public void EachStepReadsTheDeviceOnceAndMatchesTheCpuBitForBit()
    {
        var counted = Train(new CountingBackend(), Loop());
        Assert.Equal([1, 1, 1, 1], counted.ReadsPerStep);
        var plain = Train(CpuBackend.Instance, Loop());
        Assert.Equal(plain.Steps.Select(s => s.Loss), counted.Steps.Select(s => s.Loss));
        Assert.Equal(plain.Steps.Select(s => s.GradNorm), counted.Steps.Select(s => s.GradNorm));
        Assert.Equal(plain.Weights, counted.Weights);
        Assert.All(counted.Steps, s => Assert.Equal(["en", "zh"], s.SourceLosses!.Keys.Order()));
        Assert.All(counted.Steps, s => Assert.True(double.IsFinite(s.Loss) && double.IsFinite(s.GradNorm)));
    }

    [Fact]
    public void ANonFiniteLossIsGatedOnTheDeviceWithinTheSameRead()
    {
        // step 3's first micro-batch produces a NaN loss: the update is skipped on the device (nothing written), the
        // host learns it from the one read, and the weights equal those after step 2
        var afterTwo = Train(new CountingBackend(), Loop("skip") with { Steps = 2 });
        var poisoned = Train(new CountingBackend(), Loop("skip") with { Steps = 3 }, poisonStep: 2);
        Assert.Equal([1, 1, 1], poisoned.ReadsPerStep);
        Assert.True(poisoned.Steps[2].Skipped);
        Assert.True(double.IsNaN(poisoned.Steps[2].Loss));
        Assert.False(poisoned.Steps[1].Skipped);
        Assert.Equal(afterTwo.Weights, poisoned.Weights);
        // with guard = fail the step stops with the loss named
        var e = Assert.Throws<InvalidDataException>(() => Train(new CountingBackend(), Loop("fail") with { Steps = 1 }, poisonStep: 0));
        Assert.Contains("the loss is NaN", e.Message);
    }

    [Fact]
    public void TheSpikeGuardReadsTheLossBeforeTheUpdate()
    {
        // the z-score rule decides on the host before the update: a second read per step, by design
        var spike = Train(new CountingBackend(), Loop("skip") with { Guard = new GuardOptions { Mode = "skip", ZScore = 5, Window = 4 } });
        Assert.Equal([2, 2, 2, 2], spike.ReadsPerStep);
    }
}
