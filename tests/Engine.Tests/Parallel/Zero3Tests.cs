using Engine.Core;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Tests.Training;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Parallel;

namespace Engine.Tests.Parallel;

/// <summary>
/// ZeRO-3 through `engine train` (the Trainer) on thread ranks: equal to one process on the same global batch (world
/// size × grad_accum micro-batches) — losses per step and final weights within <see cref="RelTol"/> relative — alone,
/// inside a pipeline's data-parallel groups, with LoRA and with activation recompute.
/// <para>
/// <b>Tolerance.</b> The ranks sum their micro-batches' gradients, then the reduce-scatter sums the ranks' partial
/// sums: fp32 addition in another order than the single process's (relative ~1e-7 per gradient, see
/// <see cref="DataParallelTests"/>), carried into the weights by AdamW. Weights are compared as a whole per tensor
/// (‖a − b‖ / ‖a‖), so elements near zero do not dominate.
/// </para>
/// </summary>
public class Zero3Tests
{
    const double RelTol = 1e-5;

    internal static TrainConfig Config(string outDir, int accum, int zero = 3, int pp = 1, bool tied = false, string recompute = "none", int steps = 4) => new()
    {
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 4, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64, TieWordEmbeddings = tied, Recompute = recompute },
        Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 2, GradAccum = accum, Steps = steps, Seed = 5, EvalBatches = 1 },
        Optim = new AdamWOptions { Lr = 5e-3, WeightDecay = 0.01 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Cosine, WarmupSteps = 2, MinLr = 1e-3 },
        Output = new OutputSection { Dir = outDir, CheckpointEvery = 0 },
        Parallel = new ParallelSection { Zero = zero, Pp = pp, BucketMb = 0.01 },
    };

    internal static TrainResult Train(int world, TrainConfig cfg, string? resume = null)
    {
        cfg.Validate();
        return ThreadCommunicator.Run(world, c =>
            new Trainer(cfg, CpuBackend.Instance) { Communicator = c, Resume = resume }.Run(TestContext.Current.CancellationToken))[0];
    }

    internal static Dictionary<string, float[]> Weights(string dir)
    {
        var all = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var file in Directory.GetFiles(dir, "*.safetensors"))
        {
            using var f = SafeTensorsFile.Open(file);
            foreach (var e in f.Entries) all[e.Name] = f.ReadFloat32(e.Name);
        }
        Assert.NotEmpty(all);
        return all;
    }

    /// <summary>Losses per step and every weight tensor within <see cref="RelTol"/> relative.</summary>
    internal static void AssertSameRun(TrainResult expected, TrainResult actual, string what, double tol = RelTol)
    {
        Assert.Equal(expected.Steps.Count, actual.Steps.Count);
        for (int i = 0; i < expected.Steps.Count; i++)
        {
            double a = expected.Steps[i].Loss, b = actual.Steps[i].Loss;
            Assert.True(Math.Abs(a - b) <= tol * Math.Abs(a), $"{what}: step {i + 1} loss {b} vs {a}");
        }
        var wa = Weights(expected.WeightsDir);
        var wb = Weights(actual.WeightsDir);
        Assert.Equal(wa.Keys.Order(), wb.Keys.Order());
        foreach (var (name, x) in wa)
        {
            double rel = RelativeDifference(x, wb[name]);
            Assert.True(rel <= tol, $"{what}: {name} differs by {rel:E2} relative (> {tol:E0})");
        }
    }

    internal static double RelativeDifference(float[] a, float[] b)
    {
        double d = 0, n = 0;
        for (int i = 0; i < a.Length; i++) { d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]); n += (double)a[i] * a[i]; }
        return Math.Sqrt(d / Math.Max(n, 1e-30));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TrainAtDp2EqualsOneProcess(bool tied)
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var single = Train(1, Config(a.Path, 4, zero: 0, tied: tied));
        var sharded = Train(2, Config(b.Path, 2, tied: tied));
        AssertSameRun(single, sharded, $"dp 2 ZeRO-3{(tied ? ", tied" : "")}");
        Assert.Equal(single.FinalValidLoss!.Value, sharded.FinalValidLoss!.Value, 1e-5);
    }

    [Theory]
    [InlineData("1f1b", false)]
    [InlineData("gpipe", true)]
    public void PipelineStagesTimesDp2EqualOneProcess(string schedule, bool tied)
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var single = Train(1, Config(a.Path, 4, zero: 0, tied: tied));
        var cfg = Config(b.Path, 2, pp: 2, tied: tied);
        cfg.Parallel = cfg.Parallel with { Schedule = schedule };
        var piped = Train(4, cfg);
        AssertSameRun(single, piped, $"pp 2 × dp 2 ZeRO-3 {schedule}{(tied ? ", tied" : "")}");
    }

    [Theory]
    [InlineData("full")]
    [InlineData("selective")]
    public void RecomputeUnderZero3EqualsOneProcessWithout(string recompute)
    {
        // full recompute re-runs each block inside its backward's gather; selective drops the attention core and SwiGLU
        using var a = new TempDir();
        using var b = new TempDir();
        var single = Train(1, Config(a.Path, 4, zero: 0));
        var sharded = Train(2, Config(b.Path, 2, recompute: recompute));
        AssertSameRun(single, sharded, $"dp 2 ZeRO-3, {recompute} recompute");
    }

    [Fact]
    public void LoraUnderZero3EqualsOneProcess()
    {
        // the frozen base sharded and gathered unit by unit, the adapters trained (their gradients and moments sharded)
        using var dir = new TempDir();
        string baseDir = Path.Combine(dir.Path, "base");
        using (var m = new Engine.Model.LlamaModel(new Engine.Model.LlamaConfig { VocabSize = 258, HiddenSize = 32, IntermediateSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64, InitializerRange = 0.05 }, CpuBackend.Instance))
        {
            m.InitializeWeights(3);
            ModelIO.Save(m, baseDir);
        }
        TrainConfig Lora(string outDir, int accum, int zero)
        {
            var cfg = Config(outDir, accum, zero);
            cfg.Model = new ModelSection { InitFrom = baseDir, MaxPositionEmbeddings = 64 };
            cfg.Optim = cfg.Optim with { Lr = 1e-2 };
            // no dropout: the masks are drawn per micro-batch on the rank that trains it
            cfg.Lora = new LoraSection { R = 4, Alpha = 8, TargetModules = ["q_proj", "v_proj", "down_proj"] };
            return cfg;
        }
        var single = Train(1, Lora(Path.Combine(dir.Path, "one"), 4, 0));
        var sharded = Train(2, Lora(Path.Combine(dir.Path, "two"), 2, 3));
        AssertSameRun(single, sharded, "dp 2 ZeRO-3 with LoRA");
        Assert.True(File.Exists(Path.Combine(sharded.WeightsDir, Engine.Model.Lora.PeftAdapter.WeightsFile)));
    }
}

/// <summary>
/// ZeRO-3 checkpoints: every rank writes its slices of the fp32 master weights with its moments (no rank holds whole
/// weights), and a checkpoint reshards by parameter name and element between any ZeRO stage, data-parallel size and
/// pipeline split, in both directions.
/// </summary>
public class Zero3CheckpointTests
{
    static TrainConfig Config(string outDir, int accum, int zero, int pp = 1, int steps = 6, bool tied = false, ScheduleKind schedule = ScheduleKind.Cosine)
    {
        var cfg = Zero3Tests.Config(outDir, accum, zero, pp, tied, steps: steps);
        cfg.Output = new OutputSection { Dir = outDir, CheckpointEvery = 3, KeepCheckpoints = 5 };
        cfg.Schedule = cfg.Schedule with { Kind = schedule };
        return cfg;
    }

    static string Step(string outDir, int step) =>
        Checkpoints.List(Path.Combine(outDir, "checkpoints")).Single(d => d.EndsWith($"step_{step:D8}", StringComparison.Ordinal));

    [Fact]
    public void RanksWriteTheirWeightSlicesAndTheCheckpointReassemblesTheModel()
    {
        // constant learning rate: a 3-step run ends where the 6-step run's step-3 checkpoint is
        using var a = new TempDir();
        using var b = new TempDir();
        Zero3Tests.Train(2, Config(a.Path, 2, zero: 3, schedule: ScheduleKind.Constant));
        var three = Zero3Tests.Train(2, Config(b.Path, 2, zero: 3, steps: 3, schedule: ScheduleKind.Constant));
        string ckpt = Step(a.Path, 3);
        var loaded = Checkpoints.Open(ckpt);
        Assert.True(loaded.Manifest.ShardedWeights);
        Assert.Equal(Checkpoints.ShardedWeightsFormat, loaded.Manifest.Format);
        Assert.False(File.Exists(Path.Combine(ckpt, ModelIO.WeightsFile)), "no rank holds whole weights to write");
        using (var f = SafeTensorsFile.Open(Path.Combine(ckpt, "optimizer", "rank00001.safetensors")))
            Assert.Equal(f["exp_avg"].Numel, f["master"].Numel);
        using var model = loaded.LoadModel(CpuBackend.Instance);
        var final = Zero3Tests.Weights(three.WeightsDir);
        foreach (var (name, t) in model.Parameters) Assert.True(t.ToArray().AsSpan().SequenceEqual(final[name]), $"{name} reassembled differs");
    }

    [Fact]
    public void ResumeAtTheSameLayoutIsBitExact()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var straight = Zero3Tests.Train(2, Config(a.Path, 2, zero: 3));
        var resumed = Zero3Tests.Train(2, Config(b.Path, 2, zero: 3), resume: Step(a.Path, 3));
        Assert.Equal(straight.Steps.Skip(3).Select(s => s.Loss), resumed.Steps.Select(s => s.Loss));
        Assert.Equal(straight.Steps.Skip(3).Select(s => s.GradNorm), resumed.Steps.Select(s => s.GradNorm));
        Assert.Equal(File.ReadAllBytes(Path.Combine(straight.WeightsDir, ModelIO.WeightsFile)), File.ReadAllBytes(Path.Combine(resumed.WeightsDir, ModelIO.WeightsFile)));
    }

    [Fact]
    public void Zero3ToOneProcessAndBackContinuesTheUninterruptedRun()
    {
        // dp 2 ZeRO-3 (steps 1-3) → one process (4-6) → dp 2 ZeRO-3 (7-9), the global batch kept (4 micro-batches)
        using var a = new TempDir();
        using var c = new TempDir();
        using var d = new TempDir();
        var straight = Zero3Tests.Train(2, Config(a.Path, 2, zero: 3, steps: 9));
        var one = Zero3Tests.Train(1, Config(c.Path, 4, zero: 0, steps: 9), resume: Step(a.Path, 3));
        Assert.False(Checkpoints.Open(Step(c.Path, 6)).Manifest.ShardedWeights);
        var back = Zero3Tests.Train(2, Config(d.Path, 2, zero: 3, steps: 9), resume: Step(c.Path, 6));
        Assert.Equal([7, 8, 9], back.Steps.Select(s => s.Step));
        var expected = straight.Steps.Skip(6).ToList();
        for (int i = 0; i < 3; i++) Assert.Equal(expected[i].Loss, back.Steps[i].Loss, 1e-5 * expected[i].Loss);
        for (int i = 0; i < 3; i++) Assert.Equal(straight.Steps[3 + i].Loss, one.Steps[i].Loss, 1e-5 * one.Steps[i].Loss);
        var wa = Zero3Tests.Weights(straight.WeightsDir);
        foreach (var (name, w) in Zero3Tests.Weights(back.WeightsDir))
            Assert.True(Zero3Tests.RelativeDifference(wa[name], w) <= 1e-5, $"{name}: {Zero3Tests.RelativeDifference(wa[name], w):E2}");
    }

    [Theory]
    [InlineData(4, 2, 3, 1, 1, 0, true)]    // pp 2 × dp 2 ZeRO-3 → one process
    [InlineData(1, 1, 0, 4, 2, 3, true)]    // one process → pp 2 × dp 2 ZeRO-3
    [InlineData(2, 1, 3, 4, 1, 1, false)]   // dp 2 ZeRO-3 → dp 4 ZeRO-1
    [InlineData(4, 1, 2, 2, 1, 3, false)]   // dp 4 ZeRO-2 → dp 2 ZeRO-3
    [InlineData(4, 2, 3, 4, 4, 1, false)]   // pp 2 × dp 2 ZeRO-3 → pp 4 ZeRO-1
    public void ReshardsBetweenStagesSizesAndSplits(int worldA, int ppA, int zeroA, int worldB, int ppB, int zeroB, bool tied)
    {
        const int globalMicroBatches = 4;
        using var a = new TempDir();
        using var b = new TempDir();
        var straight = Zero3Tests.Train(worldA, Config(a.Path, globalMicroBatches / (worldA / ppA), zeroA, ppA, tied: tied));
        var resumed = Zero3Tests.Train(worldB, Config(b.Path, globalMicroBatches / (worldB / ppB), zeroB, ppB, tied: tied), resume: Step(a.Path, 3));
        Assert.Equal([4, 5, 6], resumed.Steps.Select(s => s.Step));
        for (int i = 0; i < 3; i++) Assert.Equal(straight.Steps[3 + i].Loss, resumed.Steps[i].Loss, 1e-5 * resumed.Steps[i].Loss);
        var wa = Zero3Tests.Weights(straight.WeightsDir);
        foreach (var (name, w) in Zero3Tests.Weights(resumed.WeightsDir))
            Assert.True(Zero3Tests.RelativeDifference(wa[name], w) <= 1e-5, $"{name}: {Zero3Tests.RelativeDifference(wa[name], w):E2}");
    }
}
