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

    static long MeasureSingle(RecomputeMode recompute)
    {
        var counter = new MemoryCounter();
        using (counter.Use())
        {
            using var model = new LlamaModel(Cfg, CpuBackend.Instance) { Recompute = recompute };
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
            using var grid = DeviceMesh.Create(world, pp);
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
    [InlineData(RecomputeMode.None)]
    [InlineData(RecomputeMode.Full)]
    [InlineData(RecomputeMode.Selective)]
    public void OneProcessEstimateIsWithinTenPercentOfTheMeasuredPeak(RecomputeMode recompute)
    {
        long measured = MeasureSingle(recompute);
        var l = new PlanLayout(1, 1, 0, Batch, 2, Seq, recompute);
        Check($"{recompute} recompute", MemoryModel.Worst(Cfg, l, gpu: false), measured);
    }

    /// <summary>A ZeRO-3 rank (dp 2, threads): its peak of live tensor storage from the first step on (the whole model
    /// it is built from is sharded before that), and what it holds between steps.</summary>
    static (long Peak, long Held, long Owned, long GradientBytes)[] MeasureZero3(int world, RecomputeMode recompute) => ThreadCommunicator.Run(world, comm =>
    {
        var counter = new MemoryCounter();
        long held = 0, owned, gradients;
        using (counter.Use())
        {
            using var model = new LlamaModel(Cfg, CpuBackend.Instance) { Recompute = recompute };
            model.InitializeWeights(3);
            using var dp = DataParallel.Create(model.Store, comm, 3);
            using var opt = new AdamW(model, Loop(2).Optim, dp);
            counter.ResetPeak();
            TrainingLoop.Run(model, new RandomTokens(Cfg.VocabSize, 1), Loop(2), opt, onStep: _ => held = counter.LiveBytes);
            (owned, gradients) = (dp.Layout.OwnedElements, dp.GradientBytes);
        }
        return (counter.PeakBytes, held, owned, gradients);
    });

    /// <summary>
    /// ZeRO-3's peak per rank against the memory model (within 10%), and what the rank holds between steps: its slices
    /// of the fp32 master and of the two AdamW moments (12 bytes per owned element), its gradient shard and the
    /// recycled gradient buffers (DataParallel.GradientBytes) and nothing else — where the owned elements are 1/N of
    /// the parameters, padded to whole world × 4096-element units per model unit.
    /// </summary>
    [Theory]
    [InlineData(RecomputeMode.None)]
    [InlineData(RecomputeMode.Full)]
    public void Zero3RankPeakIsWithinTenPercentOfTheEstimateAndHoldsOneNthOfTheState(RecomputeMode recompute)
    {
        const int world = 2;
        var measured = MeasureZero3(world, recompute);
        var l = new PlanLayout(world, 1, 3, Batch, 2, Seq, recompute);
        var estimate = MemoryModel.Worst(Cfg, l, gpu: false);
        long n = Cfg.ParameterCount(), unit = MemoryModel.LargestUnit(Cfg, PipelineStage.Whole(Cfg.NumLayers));
        for (int r = 0; r < world; r++)
        {
            var m = measured[r];
            Check($"ZeRO-3 rank {r}, {recompute} recompute", estimate, m.Peak);
            output.WriteLine($"rank {r} holds {m.Held / 1024.0:F0} KiB between steps: 12 B × {m.Owned} owned elements + {m.GradientBytes / 1024.0:F0} KiB of gradients " +
                $"(1/{world} of {n} parameters = {(double)n / world:F0}; one unit {unit * 4 / 1024} KiB)");
            Assert.InRange(m.Held - (12 * m.Owned + m.GradientBytes), 0, 4096);   // + AdamW's norm partials and result
            Assert.InRange(m.Owned, (double)n / world, 1.12 * n / world);
        }
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
        var z3 = MemoryModel.ForStage(Seven, new PlanLayout(8, 1, 3, 1, 1, 2048, RecomputeMode.None, BucketMb: 25), PipelineStage.Whole(32), gpu: true);
        long n = Seven.ParameterCount();
        Assert.Equal(n, plain.Parameters);
        Assert.Equal(6.0 * n, plain.Weights);                 // fp32 master + bf16 shadow
        Assert.Equal(8.0 * n, plain.Optimizer);
        Assert.Equal(8.0 * n / 8, z1.Optimizer);
        Assert.Equal(4.0 * n, z1.Gradients);
        Assert.Equal(4.0 * n / 8 + 2 * 25.0 * (1 << 20), z2.Gradients);
        // ZeRO-3: 1/8 of master + shadow, plus the unit in use and the one prefetched (bf16; the 7B's largest unit is
        // a block, 202M elements, larger than the 131M-element embedding); a 1/8 gradient shard plus unit-sized bucket
        // buffers with their slices
        long unit = Seven.LayerParameterCount();
        Assert.Equal(unit, MemoryModel.LargestUnit(Seven, PipelineStage.Whole(32)));
        Assert.Equal(6.0 * n / 8 + 2.0 * unit * 2, z3.Weights);
        Assert.Equal(4.0 * n / 8 + (DataParallel.MaxInFlight + 1) * 4.0 * (unit + unit / 8.0), z3.Gradients);
        Assert.Equal(8.0 * n / 8, z3.Optimizer);
        Assert.Equal(plain.Activations, z3.Activations);
        Assert.True(z3.Total < plain.Total / 2.5, $"ZeRO-3 {z3.Describe()} vs plain {plain.Describe()}");
    }

    /// <summary>The memory no tensor holds, by its stated parameters: on a GPU the CUDA context, NCCL's buffers per
    /// communicator of the rank (the world; with a pipeline also its data, pipe and tied-embedding groups) and the
    /// allocator's fragmentation as a share of the tensors; nothing on the CPU, where the engine's counter is exact.</summary>
    [Fact]
    public void RuntimeOverheadsAreStatedParameters()
    {
        var l = new PlanLayout(8, 1, 3, 1, 1, 2048, RecomputeMode.Full);
        var e = MemoryModel.ForStage(Seven, l, PipelineStage.Whole(32), gpu: true);
        var o = RuntimeOverheads.Gpu;
        Assert.Equal((o.CudaContextGiB + o.NcclPerCommunicatorGiB) * (1L << 30) + o.Fragmentation * e.Tensors, e.Runtime, 3);
        Assert.Equal(e.Tensors + e.Runtime, e.Total);
        Assert.Equal(0, MemoryModel.ForStage(Seven, l, PipelineStage.Whole(32), gpu: false).Runtime);
        Assert.Equal(0, MemoryModel.ForStage(Seven, l, PipelineStage.Whole(32), gpu: true, RuntimeOverheads.None).Runtime);
        Assert.Equal(1, RuntimeOverheads.Communicators(l, tied: false));
        Assert.Equal(4, RuntimeOverheads.Communicators(new PlanLayout(4, 2, 1, 1, 4, 2048, RecomputeMode.None), tied: true));
        Assert.Equal(0, RuntimeOverheads.Communicators(new PlanLayout(1, 1, 0, 1, 1, 2048, RecomputeMode.None), tied: false));
        // the trainer's fit check reads free memory after its context exists: the context is not counted twice
        Assert.Equal(0, RuntimeOverheads.LiveGpu.CudaContextGiB);
    }

    /// <summary>Selective recompute keeps 7·C + 2·KV + 2·F activations and 2 fp32 statistics per token and layer — between
    /// none (9·C + 3·KV + 3·F, 2 + H) and full (C) — and rebuilds one layer's attention core and SwiGLU product in
    /// backward.</summary>
    [Fact]
    public void SelectiveRecomputeSitsBetweenNoneAndFull()
    {
        var none = MemoryModel.ForStage(Seven, new PlanLayout(8, 1, 3, 1, 1, 2048, RecomputeMode.None), PipelineStage.Whole(32), gpu: true);
        var sel = MemoryModel.ForStage(Seven, new PlanLayout(8, 1, 3, 1, 1, 2048, RecomputeMode.Selective), PipelineStage.Whole(32), gpu: true);
        var full = MemoryModel.ForStage(Seven, new PlanLayout(8, 1, 3, 1, 1, 2048, RecomputeMode.Full), PipelineStage.Whole(32), gpu: true);
        double dropped = 32.0 * 2048 * ((2.0 * 4096 + 4096 + 11008) * 2 + 32 * 4);   // 2C + KV + F (bf16), H fp32
        Assert.Equal(dropped, none.Activations - sel.Activations, 0);
        Assert.Equal(2048.0 * ((2.0 * 4096 + 4096 + 11008) * 2 + 32 * 4), sel.Transient - none.Transient, 0);
        Assert.True(full.Activations < sel.Activations);
    }

    [Fact]
    public void ScalingEfficiencyIncludesThePipelineBubble()
    {
        var free = new LinkModel(8, 1e9, 0, 1e9, 0);
        var piped = Planner.Evaluate(Seven, new PlanLayout(1, 4, 0, 1, 4, 1024, RecomputeMode.None), DeviceSpec.H100, free, 400);
        Assert.Equal((piped.ComputeSeconds + piped.OptimizerSeconds) / piped.StepSeconds, piped.ScalingEfficiency, 12);
        Assert.True(piped.ScalingEfficiency <= 1 - piped.BubbleFraction + 1e-12, $"{piped.ScalingEfficiency} vs bubble {piped.BubbleFraction}");
        var flat = Planner.Evaluate(Seven, new PlanLayout(4, 1, 0, 1, 4, 1024, RecomputeMode.None), DeviceSpec.H100, free, 400);
        Assert.True(flat.ScalingEfficiency > piped.ScalingEfficiency + 0.2);
    }

    /// <summary>
    /// ZeRO-3's collectives in the step time: every micro-batch gathers the weights twice (bf16) and reduce-scatters the
    /// fp32 gradients; prefetched, they hide behind a micro-batch's compute when it is long enough, and only the first
    /// unit's gathers show — and they show when the micro-batch is too short.
    /// </summary>
    [Fact]
    public void Zero3CommunicationHidesBehindComputeWhenTheMicroBatchIsLongEnough()
    {
        var ib = new LinkModel(8, 360, 3, 40, 8);
        var big = Planner.Evaluate(Seven, new PlanLayout(64, 1, 3, 8, 1, 4096, RecomputeMode.Full), DeviceSpec.H100, ib, 400);
        var small = Planner.Evaluate(Seven, new PlanLayout(64, 1, 3, 1, 1, 512, RecomputeMode.Full), DeviceSpec.H100, ib, 400);
        long n = Seven.ParameterCount();
        double perMb = 2 * Planner.GatherSeconds(2.0 * n, 64, 40e9, 0) + Planner.GatherSeconds(4.0 * n, 64, 40e9, 0) + 3.0 * 34 * 63 * 8e-6;
        double first = Planner.GatherSeconds(2.0 * Seven.LayerParameterCount(), 64, 40e9, 8e-6);
        Assert.Equal(2 * first, big.GradientSeconds, 9);                                   // all but the first units hidden
        Assert.Equal(perMb - small.ComputeSeconds + 2 * first, small.GradientSeconds, 9);  // exposed beyond compute
    }

    /// <summary>TorchTitan's Llama-2-70B on 64 A100 (FSDP, full recompute, local batch 2 × 4096 tokens): 353
    /// tokens/s/GPU at 50.5% MFU. At that utilization — 67% of the peak once full recompute's forward FLOPs are
    /// counted, the planner's convention — the planner's ZeRO-3 layout predicts within 10% of it; what remains is its
    /// communication model (assumed DGX A100 links). The memory fits the 80 GB.</summary>
    [Fact]
    public void TorchTitans70BRunIsPredictedWithinTenPercentAtItsOwnUtilization()
    {
        var llama2_70b = new LlamaConfig { VocabSize = 32000, HiddenSize = 8192, IntermediateSize = 28672, NumLayers = 80, NumHeads = 64, NumKvHeads = 8, MaxPositionEmbeddings = 4096 };
        double mfu = 0.505, hfu = mfu * (8.0 * 68.5e9 + 16.0 * 80 * 64 * 128 * 4096) / (6.0 * 68.5e9 + 12.0 * 80 * 64 * 128 * 4096);
        var r = Planner.Evaluate(llama2_70b, new PlanLayout(64, 1, 3, 2, 1, 4096, RecomputeMode.Full), DeviceSpec.A100, LinkModel.DgxA100, hfu * 312);
        Assert.True(r.Fits, r.Memory.Describe());
        Assert.InRange(r.TokensPerSecondPerDevice, 353 * 0.9, 353 * 1.1);
        // without ZeRO-3 the best layout the planner finds is far slower (the 161 tokens/s/GPU of the issue)
        var best = Planner.Rank(llama2_70b, 64, 128, 4096, DeviceSpec.A100, LinkModel.DgxA100, 0.45 * 312).First(x => x.Fits);
        Assert.Equal(3, best.Layout.Zero);
    }
    /// <summary>The planner's tensor, context and interleave dimensions: a tensor rank holds 1/tp of the weights, moments
    /// and (with sequence parallelism) activations; tp and cp add their collectives inside the micro-batch; the
    /// interleaved schedule divides the bubble by v; the ranking includes 4-D layouts.</summary>
    [Fact]
    public void TensorContextAndInterleavingArePlanned()
    {
        var c = new Engine.Model.LlamaConfig { VocabSize = 32000, HiddenSize = 8192, IntermediateSize = 28672, NumLayers = 80, NumHeads = 64, NumKvHeads = 8 };
        var link = LinkModel.DgxH100;
        var basic = new PlanLayout(2, 4, 1, 1, 16, 4096, RecomputeMode.Full);
        PlanResult Eval(PlanLayout l) => Planner.Evaluate(c, l, DeviceSpec.H100, link, 400);
        var one = Eval(basic);
        var tp = Eval(basic with { Tp = 4 });
        Assert.Equal(one.Memory.Optimizer / 4, tp.Memory.Optimizer, one.Memory.Optimizer * 1e-3);
        Assert.True(tp.Memory.Activations < one.Memory.Activations / 3, $"{tp.Memory.Activations} vs {one.Memory.Activations}");
        Assert.True(Eval(basic with { Tp = 4, SequenceParallel = false }).Memory.Activations > tp.Memory.Activations);
        Assert.Equal(0, one.TensorSeconds);
        Assert.True(tp.TensorSeconds > 0 && Eval(basic with { Cp = 2 }).TensorSeconds > 0);
        Assert.Equal(one.ComputeSeconds / 4, tp.ComputeSeconds, one.ComputeSeconds * 1e-9);
        var v2 = Eval(basic with { VirtualStages = 2, Schedule = "interleaved" });
        Assert.Equal(one.BubbleSeconds / 2, v2.BubbleSeconds, one.BubbleSeconds * 1e-9);
        Assert.Equal(64, (basic with { Tp = 4, Cp = 2 }).Devices);
        var ranked = Planner.Rank(c, 64, 256, 4096, DeviceSpec.H100, link, 400);
        Assert.Contains(ranked, r => r.Layout.Tp == 8 && r.Layout.Cp == 2);
        Assert.Contains(ranked, r => r.Layout.VirtualStages == 2 && r.Layout.Schedule == "interleaved");
        Assert.DoesNotContain(ranked, r => r.Layout.Tp > link.GpusPerNode || r.Layout.Devices != 64);
    }
}
