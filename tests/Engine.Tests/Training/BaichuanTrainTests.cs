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

    /// <summary>Per-token NLLs of the same predictions (targets 1..63 but 32 of each 64-token window), evaluated as one
    /// 64-token pass and as two 32-token passes.</summary>
    static (double Long, double Short) Nll(LlamaModel m, int[] text, int windows)
    {
        using var scope = new TensorScope();
        using var ng = Engine.Core.Autograd.Grad.NoGrad();
        double l64 = 0, l32 = 0;
        int n = 0;
        for (int w = 0; w < windows; w++)
        {
            var win = text.AsSpan(w * 65, 65).ToArray();   // 64 inputs, 64 targets
            float[] Losses(int start, int len)
            {
                var ids = CpuBackend.Instance.Empty([len], DType.I32);
                var tg = CpuBackend.Instance.Empty([len], DType.I32);
                CpuBackend.Instance.Upload(ids, win[start..(start + len)]);
                CpuBackend.Instance.Upload(tg, win[(start + 1)..(start + len + 1)]);
                return m.Loss(ids, tg, 1, len, 1f).TokenLosses.ToArray();
            }
            var full = Losses(0, 64);
            var halves = Losses(0, 32).Concat(Losses(32, 32)).ToArray();
            for (int t = 0; t < 64; t++)
            {
                if (t == 32) continue;   // the second half's first target has no context in the 32-token pass
                l64 += full[t];
                l32 += halves[t];
                n++;
            }
        }
        return (l64 / n, l32 / n);
    }

    /// <summary>
    /// ALiBi's length extrapolation (Press et al. 2022): a model trained on 32-token windows evaluated on 64-token
    /// windows — twice its trained length — predicts the same tokens at least as well as on 32-token windows (the extra
    /// context does not hurt; measured +0.003 nats/byte), while the same model with RoPE, trained identically, gets
    /// worse (measured +0.155).
    /// </summary>
    [Fact]
    public void AlibiExtrapolatesToTwiceTheTrainedLengthWhereRopeDegrades()
    {
        using var dir = new TempDir();
        var text = new Engine.Data.ByteTokenizer().Encode(Engine.Data.TextDecoding.ReadFile(Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt"),
            Engine.Data.InvalidUtf8Policy.Error)[^40_000..]);   // held out: the training windows come from the front
        var result = new Dictionary<string, (double Long, double Short)>();
        foreach (bool alibi in new[] { true, false })
        {
            var cfg = new TrainConfig
            {
                Model = new ModelSection
                {
                    Family = alibi ? ModelFamily.Baichuan : ModelFamily.Llama,
                    PositionEmbedding = alibi ? PositionEmbedding.Alibi : PositionEmbedding.Rope,
                    HiddenSize = 64,
                    IntermediateSize = 128,
                    NumLayers = 2,
                    NumHeads = 4,
                    NumKvHeads = 4,
                    MaxPositionEmbeddings = 64,   // RoPE may be evaluated at 64; both train at 32
                },
                Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.05 },
                Train = new TrainSection { SeqLen = 32, BatchSize = 16, Steps = 250, Seed = 11, EvalBatches = 1 },
                Optim = new AdamWOptions { Lr = 3e-3, WeightDecay = 0 },
                Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
                Output = new OutputSection { Dir = dir.File(alibi ? "alibi" : "rope") },
            };
            cfg.Validate();
            var r = new Trainer(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
            using var m = ModelIO.Load(r.WeightsDir, CpuBackend.Instance);
            result[alibi ? "alibi" : "rope"] = Nll(m, text, 40);
        }
        var (a64, a32) = result["alibi"];
        var (r64, r32) = result["rope"];
        TestContext.Current.TestOutputHelper?.WriteLine($"ALiBi: NLL {a32:F4} at 32 tokens, {a64:F4} at 64; RoPE: {r32:F4} at 32, {r64:F4} at 64");
        Assert.True(a32 < 3.0, $"the ALiBi model did not learn ({a32:F3} nats/byte)");
        Assert.True(a64 <= a32 + 0.02, $"ALiBi at twice the trained length: {a64:F4} vs {a32:F4} at the trained length");
        Assert.True(r64 - r32 > a64 - a32 + 0.05, $"RoPE past its trained length ({r32:F4} → {r64:F4}) should degrade more than ALiBi ({a32:F4} → {a64:F4})");
    }
}
