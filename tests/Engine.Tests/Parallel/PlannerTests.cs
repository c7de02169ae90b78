using Engine.Core;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Parallel;
using Engine.Training;
using Engine.Training.Parallel;
using Engine.Training.Planning;

namespace Engine.Tests.Parallel;

/// <summary>
/// The planner's memory estimate against the engine's measured peak of live tensor storage (<see cref="MemoryCounter"/>,
/// PyTorch's "allocated", per rank) on the CPU, for three layouts: one process, one process with activation
/// checkpointing, and a 2-stage 1F1B pipeline whose stages run as threads. Within 10% each (issue 11).
/// </summary>
public class PlannerTests(ITestOutputHelper output)
{
    const int Batch = 4, Seq = 64, Micro = 4;

    static LlamaConfig Cfg => new()
    {
        VocabSize = 512,
        HiddenSize = 64,
        IntermediateSize = 176,
        NumLayers = 4,
        NumHeads = 4,
        NumKvHeads = 2,
        MaxPositionEmbeddings = Seq,
        InitializerRange = 0.05,
    };

    sealed class RandomTokens(int vocab, ulong seed) : IBatchSource
    {
        readonly Rng rng = new(seed);

        public Batch Next(int batch, int seqLen)
        {
            var ids = new int[batch * seqLen];
            var tg = new int[batch * seqLen];
            for (int i = 0; i < ids.Length; i++) { ids[i] = rng.NextInt(vocab); tg[i] = rng.NextInt(vocab); }
            return new Batch(ids, tg, Enumerable.Repeat("train", batch).ToArray());
        }
    }

    static LoopOptions Loop(int accum) => new()
    {
        Steps = 2,
        BatchSize = Batch,
        SeqLen = Seq,
        GradAccum = accum,
        Optim = new AdamWOptions { Lr = 1e-3 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
    };

    static long MeasureSingle(bool checkpoint)
    {
        var counter = new MemoryCounter();
        using (counter.Use())
        {
            using var model = new LlamaModel(Cfg, CpuBackend.Instance) { CheckpointActivations = checkpoint };
            model.InitializeWeights(3);
            using var opt = new AdamW(model, Loop(2).Optim);
            TrainingLoop.Run(model, new RandomTokens(Cfg.VocabSize, 1), Loop(2), opt);
        }
        return counter.PeakBytes;
    }

    static long[] MeasurePipeline(int pp, string schedule) => ThreadCommunicator.Run(pp, world =>
    {
        var counter = new MemoryCounter();
        using (counter.Use())
        {
            using var grid = PipelineGrid.Create(world, pp);
            var stages = PipelineStage.Split(Cfg.NumLayers, pp);
            using var model = new LlamaModel(Cfg, CpuBackend.Instance, stages[grid.Stage]);
            model.InitializeWeights(3);
            using var dp = DataParallel.Create(model.Store, grid.Data, 0, bucketMb: 25);
            var runner = new PipelineRunner(model, grid, dp, schedule);
            using var opt = new AdamW(model, Loop(Micro).Optim, dp) { NormGroup = grid.Pipe, NormExclude = runner.NormDuplicate };
            TrainingLoop.Run(model, new RandomTokens(Cfg.VocabSize, 1), Loop(Micro), opt, pipeline: runner);
        }
        return counter.PeakBytes;
    });

    void Check(string what, MemoryEstimate estimate, long measured)
    {
        double ratio = estimate.Total / measured;
        output.WriteLine($"{what}: estimated {estimate.Total / 1024.0:F0} KiB vs measured {measured / 1024.0:F0} KiB (×{ratio:F3}); {estimate.Describe()}");
        Assert.True(Math.Abs(ratio - 1) <= 0.10, $"{what}: estimate {estimate.Total:F0} B vs measured peak {measured} B (×{ratio:F3})");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void OneProcessEstimateIsWithinTenPercentOfTheMeasuredPeak(bool checkpoint)
    {
        long measured = MeasureSingle(checkpoint);
        var l = new PlanLayout(1, 1, 0, Batch, 2, Seq, checkpoint ? RecomputeMode.Full : RecomputeMode.None);
        Check(checkpoint ? "checkpointed" : "plain", MemoryModel.Worst(Cfg, l, gpu: false), measured);
    }

    [Theory]
    [InlineData("1f1b")]
    [InlineData("gpipe")]
    public void PipelineStageEstimatesAreWithinTenPercentOfEachStagesMeasuredPeak(string schedule)
    {
        var measured = MeasurePipeline(2, schedule);
        var l = new PlanLayout(1, 2, 0, Batch, Micro, Seq, RecomputeMode.None, schedule);
        var est = MemoryModel.Stages(Cfg, l, gpu: false);
        for (int s = 0; s < 2; s++) Check($"{schedule} stage {s}", est[s], measured[s]);
    }
}

/// <summary>The step-time model against hand computations.</summary>
public class PlannerStepTimeTests
{
    static readonly LlamaConfig Seven = new() { VocabSize = 32000, HiddenSize = 4096, IntermediateSize = 11008, NumLayers = 32, NumHeads = 32, NumKvHeads = 32 };

    [Fact]
    public void RingCollectiveMovesTwiceTheBufferTimesDMinusOneOverD()
    {
        // 1 GB over 8 ranks at 100 GB/s and 5 µs: 2·7/8·1e9/1e11 + 14·5e-6
        Assert.Equal(2.0 * 7 / 8 * 1e9 / 1e11 + 14 * 5e-6, Planner.RingSeconds(1e9, 8, 1e11, 5e-6), 12);
        Assert.Equal(0, Planner.RingSeconds(1e9, 1, 1e11, 5e-6));
    }

    [Theory]
    [InlineData(2, 4)]
    [InlineData(4, 8)]
    [InlineData(4, 16)]
    public void PipelineBubbleIsPMinusOneOverMPlusPMinusOneWithoutCommunication(int pp, int m)
    {
        var free = new LinkModel(8, 1e9, 0, 1e9, 0);       // links too fast to matter
        var l = new PlanLayout(1, pp, 0, 1, m, 1024, RecomputeMode.None);
        var r = Planner.Evaluate(Seven, l, DeviceSpec.H100, free, 400);
        // balanced 32 layers: every stage but the last (which adds the head) has 32/pp layers; the slowest sets t_mb
        double theory = (pp - 1.0) / (m + pp - 1);
        Assert.Equal(theory, r.BubbleSeconds / (r.ComputeSeconds + r.BubbleSeconds), 9);
        Assert.Equal(r.ComputeSeconds + r.BubbleSeconds + r.P2pSeconds + r.GradientSeconds + r.OptimizerSeconds, r.StepSeconds, 12);
        Assert.True(r.BubbleFraction < theory, "the AdamW step dilutes the bubble's share of the whole step");
    }

    [Fact]
    public void MfuAndTokensPerDeviceFollowFromTheStepTime()
    {
        var l = new PlanLayout(8, 1, 1, 1, 4, 2048, RecomputeMode.None);
        var r = Planner.Evaluate(Seven, l, DeviceSpec.H100, LinkModel.DgxH100, 400);
        double tokens = 8.0 * 4 * 2048;
        Assert.Equal(tokens / r.StepSeconds / 8, r.TokensPerSecondPerDevice, 6);
        Assert.Equal(r.TokensPerSecondPerDevice * Seven.TrainingFlopsPerToken(2048) / 989e12, r.Mfu, 9);
        // one stage: compute = M micro-batches of 2048 tokens at 400 TFLOP/s of the model's FLOPs (no recompute; the
        // planner leaves out the RMSNorm gains, 0.01% of N, which PaLM's N counts)
        double hand = 4 * 2048 * Seven.TrainingFlopsPerToken(2048) / 400e12;
        Assert.True(Math.Abs(r.ComputeSeconds / hand - 1) < 1e-4, $"{r.ComputeSeconds} vs {hand}");
    }

    [Fact]
    public void ZeroStagesShrinkTheOptimizerAndGradientsByTheDataParallelSize()
    {
        var plain = MemoryModel.ForStage(Seven, new PlanLayout(8, 1, 0, 1, 1, 2048, RecomputeMode.None, BucketMb: 25), PipelineStage.Whole(32), gpu: true);
        var z1 = MemoryModel.ForStage(Seven, new PlanLayout(8, 1, 1, 1, 1, 2048, RecomputeMode.None, BucketMb: 25), PipelineStage.Whole(32), gpu: true);
        var z2 = MemoryModel.ForStage(Seven, new PlanLayout(8, 1, 2, 1, 1, 2048, RecomputeMode.None, BucketMb: 25), PipelineStage.Whole(32), gpu: true);
        long n = Seven.ParameterCount();
        Assert.Equal(n, plain.Parameters);
        Assert.Equal(6.0 * n, plain.Weights);                 // fp32 master + bf16 shadow
        Assert.Equal(8.0 * n, plain.Optimizer);
        Assert.Equal(8.0 * n / 8, z1.Optimizer);
        Assert.Equal(4.0 * n, z1.Gradients);
        Assert.Equal(4.0 * n / 8 + 2 * 25.0 * (1 << 20), z2.Gradients);
    }
}
