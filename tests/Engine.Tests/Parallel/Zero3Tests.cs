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
