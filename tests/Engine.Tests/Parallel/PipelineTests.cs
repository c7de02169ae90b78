using Engine.Core;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Parallel;
using Engine.Tests.Model;
using Engine.Training;
using Engine.Training.Parallel;

namespace Engine.Tests.Parallel;

/// <summary>
/// Pipeline parallelism (GPipe, 1F1B) and PP × DP on ranks-as-threads: P stages × D replicas with M micro-batches per
/// replica equal one process with D·M micro-batches (grad_accum) on the same global batch. Tolerance as in
/// <see cref="DataParallelTests"/>: the gradients are the same sums in another order — per stage, activations and
/// gradients cross stages exactly (fp32 copies), but the gradient norm is a sum over stages and the data-parallel
/// reduction sums replicas — so the weights agree to 2e-5 after three AdamW steps.
/// </summary>
public class PipelineTests
{
    const double WeightTol = 2e-5, LossTol = 1e-5;
    const int Batch = 2, Seq = 8, Steps = 3;

    static LlamaConfig Cfg(bool tied) => TestModels.Tiny(tied) with { VocabSize = 40, NumLayers = 4 };

    sealed class RandomTokens(int vocab, ulong seed) : IBatchSource
    {
        readonly Rng rng = new(seed);

        public Batch Next(int batch, int seqLen)
        {
            var ids = new int[batch * seqLen];
            var tg = new int[batch * seqLen];
            for (int i = 0; i < ids.Length; i++)
            {
                ids[i] = rng.NextInt(vocab);
                int t = rng.NextInt(vocab + 8);
                tg[i] = t >= vocab ? -100 : t;
            }
            return new Batch(ids, tg, Enumerable.Repeat("train", batch).ToArray());
        }
    }

    static LoopOptions Loop(int accum) => new()
    {
        Steps = Steps,
        BatchSize = Batch,
        SeqLen = Seq,
        GradAccum = accum,
        Optim = new AdamWOptions { Lr = 1e-2, WeightDecay = 0.1, ClipNorm = 0.5 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
    };

    sealed record Result(List<StepMetrics> Steps, Dictionary<string, float[]> Weights, int PeakLive, int Stage);

    static Result Single(int accum, bool tied)
    {
        using var model = TestModels.Create(Cfg(tied), 5);
        using var opt = new AdamW(model, Loop(accum).Optim);
        var steps = TrainingLoop.Run(model, new RandomTokens(40, 7), Loop(accum), opt);
        return new Result(steps, model.Parameters.ToDictionary(p => p.Name, p => p.Tensor.ToArray()), 0, 0);
    }

    static Result Rank(ICommunicator world, int pp, int micro, string schedule, bool tied, int zero = 0)
    {
        using var grid = DeviceMesh.Create(world, pp);
        var stages = PipelineStage.Split(4, pp);
        using var model = new LlamaModel(Cfg(tied), CpuBackend.Instance, stages[grid.Stage]);
        model.InitializeWeights(5);
        using var dp = DataParallel.Create(model.Store, grid.Data, zero, bucketMb: 0.004);
        var runner = new PipelineRunner(model, grid, dp, schedule);
        using var opt = new AdamW(model, Loop(micro).Optim, dp) { NormGroup = grid.Pipe, NormExclude = runner.NormDuplicate };
        TensorScope.ResetPeak();
        var steps = TrainingLoop.Run(model, new RandomTokens(40, 7), Loop(micro), opt, pipeline: runner);
        return new Result(steps, model.Parameters.ToDictionary(p => p.Name, p => p.Tensor.ToArray()), TensorScope.PeakLiveTapes, grid.Stage);
    }

    static void AssertEqual(Result single, Result[] ranks, string what)
    {
        foreach (var r in ranks)
            for (int i = 0; i < Steps; i++)
            {
                Assert.True(Math.Abs(single.Steps[i].Loss - r.Steps[i].Loss) <= LossTol * Math.Max(1, single.Steps[i].Loss),
                    $"{what}: stage {r.Stage} step {i + 1} loss {r.Steps[i].Loss} vs {single.Steps[i].Loss}");
                Assert.Equal(single.Steps[i].GradNorm, r.Steps[i].GradNorm, 1e-4 * single.Steps[i].GradNorm);
            }
        var covered = new HashSet<string>();
        foreach (var r in ranks)
            foreach (var (name, w) in r.Weights)
            {
                covered.Add(name);
                var expect = single.Weights[name];
                double worst = 0;
                for (int i = 0; i < w.Length; i++) worst = Math.Max(worst, Math.Abs(w[i] - expect[i]));
                Assert.True(worst <= WeightTol, $"{what}: {name} on stage {r.Stage} differs by {worst:E2}");
            }
        Assert.Equal(single.Weights.Keys.Order(), covered.Order());
    }

    [Theory]
    [InlineData(2, 4, "gpipe", false)]
    [InlineData(2, 4, "1f1b", true)]
    [InlineData(4, 4, "1f1b", false)]
    [InlineData(4, 6, "gpipe", true)]
    [InlineData(4, 2, "1f1b", true)]    // fewer micro-batches than stages
    public void StagesEqualOneProcess(int pp, int micro, string schedule, bool tied)
    {
        var single = Single(micro, tied);
        var ranks = ThreadCommunicator.Run(pp, c => Rank(c, pp, micro, schedule, tied));
        AssertEqual(single, ranks, $"pp {pp} {schedule} M {micro}{(tied ? " tied" : "")}");
        // the tied embedding's two copies stay identical
        if (tied) Assert.Equal(ranks[0].Weights["model.embed_tokens.weight"], ranks[pp - 1].Weights["model.embed_tokens.weight"]);
        // live micro-batches, measured from the tapes: 1F1B at most P − stage, GPipe all M
        foreach (var r in ranks)
        {
            int expected = schedule == "gpipe" ? micro : Math.Min(micro, pp - r.Stage);
            Assert.Equal(expected, r.PeakLive);
        }
    }

    [Theory]
    [InlineData("1f1b", 0)]
    [InlineData("gpipe", 1)]
    public void PipelineTimesDataParallelEqualsOneProcess(string schedule, int zero)
    {
        const int pp = 2, dp = 2, micro = 2;
        var single = Single(dp * micro, tied: true);
        var ranks = ThreadCommunicator.Run(pp * dp, c => Rank(c, pp, micro, schedule, tied: true, zero));
        AssertEqual(single, ranks, $"pp 2 × dp 2 {schedule} ZeRO-{zero}");
    }

    [Fact]
    public void SchedulesAreDataThatATestCanCheck()
    {
        Assert.Equal("F0 F1 F2 F3 B0 B1 B2 B3", string.Join(' ', PipelineSchedule.GPipe(4, 2, 4)));
        Assert.Equal("F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5", string.Join(' ', PipelineSchedule.OneFOneB(4, 0, 6)));
        Assert.Equal("F0 B0 F1 B1 F2 B2 F3 B3", string.Join(' ', PipelineSchedule.OneFOneB(4, 3, 4)));
        foreach (var kind in new[] { "gpipe", "1f1b" })
            foreach (int p in new[] { 1, 2, 4 })
                foreach (int m in new[] { 1, 3, 8 })
                    for (int s = 0; s < p; s++)
                    {
                        var a = PipelineSchedule.For(kind, p, s, m).ToList();
                        // every micro-batch forward once, then backward once
                        Assert.Equal(Enumerable.Range(0, m), a.Where(x => x.Op == PipeOp.Forward).Select(x => x.MicroBatch).Order());
                        Assert.Equal(Enumerable.Range(0, m), a.Where(x => x.Op == PipeOp.Backward).Select(x => x.MicroBatch).Order());
                        foreach (var b in a.Where(x => x.Op == PipeOp.Backward))
                            Assert.True(a.IndexOf(new PipeAction(PipeOp.Forward, b.MicroBatch)) < a.IndexOf(b));
                        Assert.Equal(kind == "gpipe" ? m : Math.Min(m, p - s), PipelineSchedule.PeakInFlight(a));
                    }
        // equal-cost simulation reproduces the theoretical bubble for both schedules
        foreach (var kind in new[] { "gpipe", "1f1b" })
            foreach (var (p, m) in new[] { (2, 4), (4, 8), (4, 16) })
                Assert.Equal(PipelineSchedule.Bubble(p, m), PipelineSchedule.Simulate(kind, p, m).Bubble, 9);
    }

    /// <summary>
    /// The interleaved 1F1B schedule as data: on every stage each (micro-batch, model chunk) runs forward once and
    /// backward once, its forward first; a micro-batch's chunks run forward in order and backward in reverse; stage 0
    /// matches Megatron-LM's order for P = 2, v = 2, M = 4; the dependency simulation never deadlocks, and its idle time
    /// over the compute time is (P − 1)/(v·M) — the bubble shrinks by v against 1F1B's (P − 1)/M.
    /// </summary>
    [Fact]
    public void TheInterleavedScheduleIsDataWithTheBubbleShrunkByV()
    {
        Assert.Equal("F0 F1 F0.1 F1.1 F2 B0.1 F3 B1.1 F2.1 B0 F3.1 B1 B2.1 B3.1 B2 B3", string.Join(' ', PipelineSchedule.Interleaved(2, 0, 4, 2)));
        foreach (int p in new[] { 2, 4 })
            foreach (int v in new[] { 1, 2, 3 })
                foreach (int m in new[] { p, 2 * p, 4 * p })
                {
                    for (int s = 0; s < p; s++)
                    {
                        var a = PipelineSchedule.Interleaved(p, s, m, v).ToList();
                        Assert.Equal(2 * m * v, a.Count);
                        for (int mb = 0; mb < m; mb++)
                            for (int c = 0; c < v; c++)
                            {
                                int f = a.IndexOf(new PipeAction(PipeOp.Forward, mb, c)), b = a.IndexOf(new PipeAction(PipeOp.Backward, mb, c));
                                Assert.True(f >= 0 && b > f, $"P {p} v {v} M {m} stage {s}: micro-batch {mb} chunk {c} forward at {f}, backward at {b}");
                                if (c > 0) Assert.True(a.IndexOf(new PipeAction(PipeOp.Forward, mb, c - 1)) < f);
                                if (c > 0) Assert.True(a.IndexOf(new PipeAction(PipeOp.Backward, mb, c - 1)) > b);
                            }
                    }
                    foreach (double bw in new[] { 1.0, 2.0 })
                    {
                        var (makespan, bubble) = PipelineSchedule.Simulate("interleaved", p, m, bw, v);
                        double compute = m * (1 + bw);
                        Assert.Equal((p - 1.0) / (v * m), (makespan - compute) / compute, 9);
                        Assert.Equal(PipelineSchedule.Bubble(p, m, v), bubble, 9);
                    }
                }
        Assert.Throws<ArgumentException>(() => PipelineSchedule.Interleaved(4, 0, 6, 2));   // M not a multiple of P
    }

    [Fact]
    public void AStageThatFailsStopsTheOthers()
    {
        // stage 1 throws in its second step; stage 0, blocked waiting for its gradients, fails too instead of hanging
        var e = Assert.ThrowsAny<Exception>(() => ThreadCommunicator.Run(2, c =>
        {
            using var grid = DeviceMesh.Create(c, 2);
            var stages = PipelineStage.Split(4, 2);
            using var model = new LlamaModel(Cfg(false), CpuBackend.Instance, stages[grid.Stage]);
            model.InitializeWeights(5);
            using var dp = DataParallel.Create(model.Store, grid.Data);
            var runner = new PipelineRunner(model, grid, dp, "1f1b");
            using var opt = new AdamW(model, Loop(2).Optim, dp) { NormGroup = grid.Pipe };
            TrainingLoop.Run(model, new RandomTokens(40, 7), Loop(2), opt, pipeline: runner,
                onStep: m => { if (grid.Stage == 1 && m.Step == 2) throw new InvalidDataException("stage 1 died"); });
        }, limit: TimeSpan.FromMinutes(2)));
        Assert.Contains("stage 1 died", e.Message);
    }
}
