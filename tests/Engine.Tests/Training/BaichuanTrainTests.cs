using Engine.Core;
using Engine.Model;
using Engine.Model.IO;
using Engine.Model.Lora;
using Engine.Tests.Model;
using Engine.Training;
using Engine.Training.Config;

namespace Engine.Tests.Training;

/// <summary>
/// `engine train` from a Baichuan 2 directory (model.init_from, sharded bf16, 13B-style ALiBi with max-z loss): the run
/// trains from the loaded weights, checkpoints and resumes bit for bit, and writes Baichuan's layout; with [lora] the
/// adapter is named as PEFT names Baichuan's modules.
/// </summary>
public class BaichuanTrainTests
{
    static string SaveBase(string dir)
    {
        string baseDir = Path.Combine(dir, "baichuan");
        var cfg = BaichuanModels.Config(alibi: true, layers: 2) with { VocabSize = 258, InitializerRange = 0.05, MaxPositionEmbeddings = 32 };
        using var m = TestModels.Create(cfg, 3);
        ModelIO.Save(m, baseDir, "BF16", maxShardBytes: 40_000);
        return baseDir;
    }

    static TrainConfig Run(string baseDir, string outDir, int steps, LoraSection? lora = null) => new()
    {
        Model = new ModelSection { InitFrom = baseDir, MaxPositionEmbeddings = 32 },
        Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 4, Steps = steps, Seed = 5, EvalBatches = 1 },
        Optim = new AdamWOptions { Lr = 1e-2, WeightDecay = 0 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
        Output = new OutputSection { Dir = outDir },
        Lora = lora,
    };

    [Fact]
    public void TrainsFromABaichuanDirectoryResumesExactlyAndSavesBaichuansLayout()
    {
        using var dir = new TempDir();
        string baseDir = SaveBase(dir.Path);
        var cfg = Run(baseDir, dir.File("a"), 4);
        cfg.Output.CheckpointEvery = 2;
        cfg.Validate();
        var straight = new Trainer(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        Assert.Equal(4, straight.Steps.Count);
        using (var trained = ModelIO.Load(straight.WeightsDir, CpuBackend.Instance))
        {
            Assert.Equal(ModelFamily.Baichuan, trained.Config.Family);
            Assert.Equal(PositionEmbedding.Alibi, trained.Config.Position);
            Assert.Equal(2e-4, trained.Config.MaxZLossWeight);
            using var loaded = ModelIO.Load(baseDir, CpuBackend.Instance);
            double move = loaded["model.layers.0.self_attn.k_proj.weight"].ToArray().Zip(trained["model.layers.0.self_attn.k_proj.weight"].ToArray(), (x, y) => Math.Abs(x - y)).Max();
            Assert.True(move is > 0 and < 0.1, $"k_proj moved {move}: training should start from the loaded W_pack and move it a little");
        }
        using (var f = SafeTensorsFile.Open(Path.Combine(straight.WeightsDir, ModelIO.WeightsFile)))
            Assert.True(f.Contains("model.layers.1.self_attn.W_pack.weight"));

        var ckpt = Checkpoints.List(Path.Combine(dir.File("a"), "checkpoints")).First(c => c.EndsWith("step_00000002", StringComparison.Ordinal));
        var resumed = new Trainer(Run(baseDir, dir.File("b"), 4), CpuBackend.Instance) { Resume = ckpt }.Run(TestContext.Current.CancellationToken);
        Assert.Equal(straight.Steps.Skip(2).Select(s => s.Loss), resumed.Steps.Select(s => s.Loss));
        Assert.Equal(File.ReadAllBytes(Path.Combine(straight.WeightsDir, ModelIO.WeightsFile)), File.ReadAllBytes(Path.Combine(resumed.WeightsDir, ModelIO.WeightsFile)));
    }

    [Fact]
    public void LoraOnABaichuanBaseWritesPeftsWPackAdapter()
    {
        using var dir = new TempDir();
        string baseDir = SaveBase(dir.Path);
        var cfg = Run(baseDir, dir.File("out"), 12, new LoraSection { R = 4, Alpha = 8, TargetModules = ["W_pack", "o_proj"] });
        cfg.Validate();
        var result = new Trainer(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        Assert.True(result.Steps[^1].Loss < result.Steps[0].Loss, "the adapters should lower the loss");
        using var f = SafeTensorsFile.Open(Path.Combine(result.WeightsDir, PeftAdapter.WeightsFile));
        Assert.Equal([3L * 20, 4], f["base_model.model.model.layers.1.self_attn.W_pack.lora_B.weight"].Shape);
        Assert.Equal(2 * 2 * 2, f.Entries.Count);
    }
}
