using System.Text.Json;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;
using Engine.Model.IO;
using Engine.Model.Lora;
using Engine.Tests.Ops;

namespace Engine.Tests.Model;

/// <summary>
/// LoRA on Baichuan as PEFT names its modules: the attention input is one packed layer, W_pack (lora_A [r, C],
/// lora_B [3C, r]), which the engine computes through its separate q, k, v weights, each with its rows of B, one
/// dropout mask for the input the three share; merge, gradients and the adapter files follow.
/// </summary>
public class BaichuanLoraTests
{
    static readonly LoraConfig BaichuanTargets = new() { R = 3, Alpha = 6, TargetModules = ["W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"] };

    static void RandomizeB(LoraAdapters a, ulong seed)
    {
        var rng = new Rng(seed);
        foreach (var s in a.Store.Slots.Where(s => s.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal)))
            CpuBackend.Instance.Upload(s.Tensor, GradCheck.RandomArray(rng, (int)s.Numel, 0.3).Select(v => (float)v).ToArray());
    }

    static float[] Logits(LlamaModel m, Tensor ids, int seq)
    {
        using var s = new TensorScope();
        using var ng = Grad.NoGrad();
        return m.Logits(ids, 1, seq).ToArray();
    }

    [Fact]
    public void AdapterFilesCarryPeftsBaichuanNamesAndLoadBack()
    {
        using var dir = new TempDir();
        using var m = BaichuanModels.Create(alibi: true, 30);
        var c = m.Config;
        var (ids, _) = TestModels.Batch(1, 9, c.VocabSize, 31);
        ids.Keep();
        float[] adapted;
        using (var lora = LoraAdapters.Attach(m, new LoraConfig { R = 2, Alpha = 4, TargetModules = ["all-linear"] }, 32))
        {
            Assert.Equal(5 * c.NumLayers, lora.Modules.Count);
            RandomizeB(lora, 33);
            adapted = Logits(m, ids, 9);
            lora.Save(dir.Path);
        }
        using (var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.Path, PeftAdapter.ConfigFile))))
            Assert.Equal(["W_pack", "down_proj", "gate_proj", "o_proj", "up_proj"],
                doc.RootElement.GetProperty("target_modules").EnumerateArray().Select(e => e.GetString()!).ToArray());
        using (var f = SafeTensorsFile.Open(Path.Combine(dir.Path, PeftAdapter.WeightsFile)))
        {
            Assert.Equal(2 * 5 * c.NumLayers, f.Entries.Count);
            Assert.Equal([2L, c.HiddenSize], f["base_model.model.model.layers.0.self_attn.W_pack.lora_A.weight"].Shape);
            Assert.Equal([3L * c.HiddenSize, 2], f["base_model.model.model.layers.2.self_attn.W_pack.lora_B.weight"].Shape);
            Assert.DoesNotContain(f.Entries, e => e.Name.Contains("q_proj", StringComparison.Ordinal) || e.Name.Contains("v_proj", StringComparison.Ordinal));
        }
        using var fresh = BaichuanModels.Create(alibi: true, 30);
        using var back = LoraAdapters.Load(fresh, dir.Path);
        Assert.Equal(adapted, Logits(fresh, ids, 9));

        // Llama's module names do not exist in Baichuan: refused, naming what the model has
        var e = Assert.Throws<ArgumentException>(() => new LoraConfig { TargetModules = ["q_proj", "v_proj"] }.Resolve(c));
        Assert.Contains("W_pack", e.Message);
    }

    [Fact]
    public void MergeFoldsEachRowBlockOfWPackIntoItsWeight()
    {
        using var m = BaichuanModels.Create(alibi: false, 34);
        var c = m.Config;
        var (ids, _) = TestModels.Batch(1, 11, c.VocabSize, 35);
        ids.Keep();
        var before = new[] { "q_proj", "k_proj", "v_proj" }.Select(n => m[$"model.layers.1.self_attn.{n}.weight"].ToArray()).ToArray();
        var lora = LoraAdapters.Attach(m, BaichuanTargets, 36);
        RandomizeB(lora, 37);
        var adapted = Logits(m, ids, 11);
        var a = lora.Store[LoraAdapters.AName("model.layers.1.self_attn.W_pack")].ToArray();
        var b = lora.Store[LoraAdapters.BName("model.layers.1.self_attn.W_pack")].ToArray();
        lora.Merge();
        var merged = Logits(m, ids, 11);
        for (int i = 0; i < merged.Length; i++)
            Assert.True(Math.Abs(merged[i] - adapted[i]) <= 1e-4 + 1e-4 * Math.Abs(adapted[i]), $"logit {i}: merged {merged[i]} vs adapters {adapted[i]}");
        int h = c.HiddenSize, r = 3;
        double s = 2;
        for (int part = 0; part < 3; part++)
        {
            var w = m[$"model.layers.1.self_attn.{new[] { "q_proj", "k_proj", "v_proj" }[part]}.weight"].ToArray();
            for (int o = 0; o < h; o++)
                for (int j = 0; j < h; j++)
                {
                    double e = before[part][o * h + j];
                    for (int k = 0; k < r; k++) e += s * b[(part * h + o) * r + k] * a[k * h + j];
                    Assert.Equal(e, w[o * h + j], 1e-5);
                }
        }
        lora.Dispose();
    }

    [Fact]
    public void PackedAdapterGradientsMatchFiniteDifferencesInEveryRowBlock()
    {
        using var m = BaichuanModels.Create(alibi: true, 38, layers: 2);
        using var lora = LoraAdapters.Attach(m, BaichuanTargets with { TargetModules = ["W_pack"] }, 39);
        RandomizeB(lora, 40);
        const int T = 7;
        using var outer = new TensorScope();
        var (ids, tg) = TestModels.Batch(1, T, m.Config.VocabSize, 41);
        ids.Keep(); tg.Keep();
        lora.Store.ZeroGrads();
        using (var s = new TensorScope()) Grad.Backward(m.Loss(ids, tg, 1, T, T).Loss);
        int h = m.Config.HiddenSize, r = 3;
        foreach (var slot in lora.Store.Slots)
        {
            var p = slot.Tensor;
            var g = p.Grad!.ToArray();
            // A: two entries; B: one entry in each of the q, k and v row blocks
            int[] at = slot.Name.Contains("lora_A", StringComparison.Ordinal) ? [1, 2 * h - 3] : [2 * r + 1, (h + 3) * r, (2 * h + 5) * r + 2];
            foreach (int i in at)
            {
                float orig = p.Span[i];
                const float step = 1e-2f;
                p.Span[i] = orig + step; double lp = LossAt();
                p.Span[i] = orig - step; double lm = LossAt();
                p.Span[i] = orig;
                double fd = (lp - lm) / (2 * step);
                Assert.True(Math.Abs(fd - g[i]) <= 2e-3 + 0.05 * Math.Abs(fd), $"{slot.Name}[{i}]: analytic {g[i]:G6} vs finite difference {fd:G6}");
                Assert.True(Math.Abs(g[i]) > 1e-6, $"{slot.Name}[{i}] has no gradient");
            }
        }
        double LossAt()
        {
            using var s = new TensorScope();
            using var ng = Grad.NoGrad();
            return m.Loss(ids, tg, 1, T, T).Loss.Item();
        }
    }

    [Fact]
    public void ThePackedPartsShareOneDropoutMask()
    {
        using var m = BaichuanModels.Create(alibi: false, 42, layers: 2);
        using var lora = LoraAdapters.Attach(m, new LoraConfig { R = 2, Alpha = 4, Dropout = 0.3, TargetModules = ["W_pack"] }, 43);
        const int T = 5;
        var (ids, tg) = TestModels.Batch(1, T, m.Config.VocabSize, 44);
        var s0 = lora.DropoutRngState;
        using (var s = new TensorScope()) m.Loss(ids, tg, 1, T, T);
        // one mask of T x C draws per layer (PEFT drops W_pack's input once), not one per q, k and v
        var rng = new Rng(0) { State = s0 };
        for (int i = 0; i < m.Config.NumLayers * T * m.Config.HiddenSize; i++) rng.NextDouble();
        Assert.Equal(rng.State, lora.DropoutRngState);
    }
}
