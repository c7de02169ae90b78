using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;
using Engine.Model.IO;
using Engine.Model.Lora;
using Engine.Training;
using Engine.Training.Config;

namespace Engine.Tests.Training;

/// <summary>`engine train` with [lora]: the adapter lands in final/ in PEFT's layout, the base on disk is untouched, and
/// configurations the engine cannot honour are refused by key.</summary>
public class LoraTrainTests
{
    [Fact]
    public void TrainWithLoraWritesAPeftAdapterThatChangesTheBase()
    {
        using var dir = new TempDir();
        string baseDir = SaveBase(dir.Path);
        var baseBytes = File.ReadAllBytes(Path.Combine(baseDir, ModelIO.WeightsFile));
        var cfg = new TrainConfig
        {
            Model = new ModelSection { InitFrom = baseDir, MaxPositionEmbeddings = 64 },
            Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
            Train = new TrainSection { SeqLen = 32, BatchSize = 4, Steps = 25, Seed = 5, EvalBatches = 2 },
            Optim = new AdamWOptions { Lr = 1e-2, WeightDecay = 0 },
            Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
            Output = new OutputSection { Dir = Path.Combine(dir.Path, "out") },
            Lora = new LoraSection { R = 4, Alpha = 8, TargetModules = ["q_proj", "v_proj", "down_proj"] },
        };
        cfg.Validate();
        var result = new Trainer(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        double first = result.Steps.Take(3).Average(s => s.Loss), last = result.Steps.TakeLast(3).Average(s => s.Loss);
        Assert.True(last < first - 0.15, $"the adapters should lower the loss: {first:F3} → {last:F3}");
        Assert.True(File.Exists(Path.Combine(result.WeightsDir, PeftAdapter.ConfigFile)));
        Assert.True(File.Exists(Path.Combine(result.WeightsDir, PeftAdapter.WeightsFile)));
        Assert.False(File.Exists(Path.Combine(result.WeightsDir, ModelIO.WeightsFile)));
        Assert.Equal(baseBytes, File.ReadAllBytes(Path.Combine(baseDir, ModelIO.WeightsFile)));

        using var m = ModelIO.Load(baseDir, CpuBackend.Instance);
        var ids = CpuBackend.Instance.Empty([16], DType.I32);
        CpuBackend.Instance.Upload(ids, Enumerable.Range(0, 16).Select(i => 65 + i).ToArray());
        ids.Keep();
        float[] Logits()
        {
            using var s = new TensorScope();
            using var ng = Grad.NoGrad();
            return m.Logits(ids, 1, 16).ToArray();
        }
        var plain = Logits();
        using var lora = LoraAdapters.Load(m, result.WeightsDir);
        Assert.Equal(3 * 2, lora.Modules.Count);
        Assert.True(Logits().Zip(plain).Max(p => Math.Abs(p.First - p.Second)) > 1e-3, "the trained adapter should change the logits");
    }

    static string SaveBase(string dir)
    {
        string baseDir = Path.Combine(dir, "base");
        var shape = new LlamaConfig { VocabSize = 258, HiddenSize = 32, IntermediateSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64, InitializerRange = 0.05 };
        using var b = new LlamaModel(shape, CpuBackend.Instance);
        b.InitializeWeights(3);
        ModelIO.Save(b, baseDir);
        return baseDir;
    }

    static TrainConfig LoraRun(string baseDir, string outDir, int steps) => new()
    {
        Model = new ModelSection { InitFrom = baseDir, MaxPositionEmbeddings = 64 },
        Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 4, Steps = steps, Seed = 5, EvalBatches = 2 },
        Optim = new AdamWOptions { Lr = 1e-2, WeightDecay = 0.01 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Cosine, WarmupSteps = 2, MinLr = 1e-3 },
        Output = new OutputSection { Dir = outDir, CheckpointEvery = 2, KeepCheckpoints = 3 },
        // dropout > 0: the masks' generator must be restored too
        Lora = new LoraSection { R = 4, Alpha = 8, Dropout = 0.1, TargetModules = ["q_proj", "v_proj", "down_proj"] },
    };

    /// <summary>A LoRA run stopped and resumed (checkpoint: adapter, its dropout generator, moments; the base is read
    /// again from init_from) ends with the uninterrupted run's losses and adapter bit for bit; its checkpoints hold no
    /// copy of the frozen base.</summary>
    [Fact]
    public void StoppedAndResumedLoraRunEqualsUninterrupted()
    {
        var ct = TestContext.Current.CancellationToken;
        using var dir = new TempDir();
        string baseDir = SaveBase(dir.Path);
        var straight = new Trainer(LoraRun(baseDir, Path.Combine(dir.Path, "a"), 7), CpuBackend.Instance).Run(ct);

        var cfg = LoraRun(baseDir, Path.Combine(dir.Path, "b"), 7);
        using (var control = new RunControl { MaxSteps = 3 })
        {
            var stopped = new Trainer(cfg, CpuBackend.Instance) { Control = control }.Run(ct);
            Assert.EndsWith("step_00000003", stopped.Checkpoint);
            Assert.True(File.Exists(Path.Combine(stopped.Checkpoint!, Checkpoints.AdapterDir, PeftAdapter.WeightsFile)));
            Assert.False(File.Exists(Path.Combine(stopped.Checkpoint!, ModelIO.WeightsFile)));   // no copy of the base
        }
        var messages = new List<string>();
        var resumed = new Trainer(cfg, CpuBackend.Instance) { Resume = "latest", OnMessage = messages.Add }.Run(ct);
        Assert.Contains(messages, m => m.Contains("resuming from", StringComparison.Ordinal));
        Assert.Equal([4, 5, 6, 7], resumed.Steps.Select(s => s.Step));
        Assert.Equal(straight.Steps.Skip(3).Select(s => s.Loss), resumed.Steps.Select(s => s.Loss));
        Assert.Equal(File.ReadAllBytes(Path.Combine(straight.WeightsDir, PeftAdapter.WeightsFile)),
            File.ReadAllBytes(Path.Combine(resumed.WeightsDir, PeftAdapter.WeightsFile)));
    }

    /// <summary>A LoRA checkpoint is refused, by name, to a full run and under a changed adapter; a full checkpoint
    /// to a LoRA run.</summary>
    [Fact]
    public void LoraCheckpointsRefuseTheOtherKindAndAChangedAdapter()
    {
        var ct = TestContext.Current.CancellationToken;
        using var dir = new TempDir();
        string baseDir = SaveBase(dir.Path);
        string outDir = Path.Combine(dir.Path, "out");
        var cfg = LoraRun(baseDir, outDir, 6);
        using (var control = new RunControl { MaxSteps = 2 })
            new Trainer(cfg, CpuBackend.Instance) { Control = control }.Run(ct);

        var full = LoraRun(baseDir, outDir, 6);
        full.Lora = null;
        var e = Assert.Throws<InvalidDataException>(() => new Trainer(full, CpuBackend.Instance) { Resume = "latest" }.Run(ct));
        Assert.Contains("LoRA adapter", e.Message);

        var r8 = LoraRun(baseDir, outDir, 6);
        r8.Lora!.R = 8;
        var c = Assert.Throws<ConfigException>(() => new Trainer(r8, CpuBackend.Instance) { Resume = "latest" }.Run(ct));
        Assert.Contains("lora", c.Message);

        string fullOut = Path.Combine(dir.Path, "full");
        var fullRun = LoraRun(baseDir, fullOut, 6);
        fullRun.Lora = null;
        using (var control = new RunControl { MaxSteps = 2 })
            new Trainer(fullRun, CpuBackend.Instance) { Control = control }.Run(ct);
        var lora = LoraRun(baseDir, fullOut, 6);
        e = Assert.Throws<InvalidDataException>(() => new Trainer(lora, CpuBackend.Instance) { Resume = "latest" }.Run(ct));
        Assert.Contains("full model", e.Message);
    }

    static string Toml(string extra) => $"""
        [model]
        init_from = "base"
        [data]
        train = ["a.txt"]
        [train]
        seq_len = 16
        steps = 3
        [lora]
        r = 4
        {extra}
        """;

    static ConfigException Refused(string text)
    {
        using var dir = new TempDir();
        var p = dir.File("c.toml");
        File.WriteAllText(p, text);
        return Assert.Throws<ConfigException>(() => TrainConfig.Load(p));
    }

    [Fact]
    public void LoraConfigsTheEngineCannotHonourAreRefusedByKey()
    {
        Assert.Contains("lora.base_dtype", Refused(Toml("base_dtype = \"bf16\"")).Message);
        Assert.Contains("lora_dropout", Refused(Toml("dropout = 1.5")).Message);
        Assert.Contains("target_modules", Refused(Toml("target_modules = []")).Message);
        Assert.Contains("model.init_from", Refused(Toml("").Replace("init_from = \"base\"", "")).Message);
        Assert.Contains("lora.dropout = 0.1 with pipeline stages", Refused(Toml("dropout = 0.1") + "\n[parallel]\npp = 2\n").Message);
        Assert.Contains("checkpoint_activations", Refused(Toml("dropout = 0.1").Replace("init_from = \"base\"", "init_from = \"base\"\ncheckpoint_activations = true")).Message);
        Assert.Contains("unknown", Refused(Toml("rank = 4")).Message, StringComparison.OrdinalIgnoreCase);
    }
}
