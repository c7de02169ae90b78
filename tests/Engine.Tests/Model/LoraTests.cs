using System.Text.Json;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;
using Engine.Model.IO;
using Engine.Model.Lora;
using Engine.Tests.Ops;
using Engine.Training;

namespace Engine.Tests.Model;

/// <summary>
/// LoRA: the adapter op against an fp64 reference and its finite differences, whole-model adapter gradients, merge =
/// unmerged forward, PEFT's names and adapter_config.json round-trip (and bad adapter directories refused by name),
/// training that moves the adapters alone with AdamW moments for the adapters only.
/// </summary>
public class LoraTests
{
    static readonly LoraConfig AllLinearAndHead = new() { R = 3, Alpha = 6, TargetModules = ["all-linear", "lm_head"] };

    /// <summary>Fills every lora_B (zero after PEFT's initialisation) with seeded values so the adapters change the output.</summary>
    static void RandomizeB(LoraAdapters a, ulong seed, double scale = 0.3)
    {
        var rng = new Rng(seed);
        foreach (var s in a.Store.Slots.Where(s => s.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal)))
            CpuBackend.Instance.Upload(s.Tensor, GradCheck.RandomArray(rng, (int)s.Numel, scale).Select(v => (float)v).ToArray());
    }

    static float[] Logits(LlamaModel m, Tensor ids, int batch, int seq)
    {
        using var s = new TensorScope();
        using var ng = Grad.NoGrad();
        return m.Logits(ids, batch, seq).ToArray();
    }

    static (double[], int[]) Rand(ulong seed, double scale, params int[] shape) =>
        (GradCheck.RandomArray(new Rng(seed), shape.Aggregate(1, (a, b) => a * b), scale), shape);

    /// <summary>z = y + s·(x Aᵀ) Bᵀ in fp64 (x optionally multiplied by a dropout mask).</summary>
    static double[] RefLora(double[] y, double[] x, double[] a, double[] b, int n, int inDim, int outDim, int r, double s, float[]? mask)
    {
        var z = (double[])y.Clone();
        for (int i = 0; i < n; i++)
        {
            var u = new double[r];
            for (int k = 0; k < r; k++)
                for (int j = 0; j < inDim; j++) u[k] += x[i * inDim + j] * (mask?[i * inDim + j] ?? 1.0) * a[k * inDim + j];
            for (int o = 0; o < outDim; o++)
                for (int k = 0; k < r; k++) z[i * outDim + o] += s * u[k] * b[o * r + k];
        }
        return z;
    }

    [Theory]
    [InlineData(5, 7, 6, 2, false)]
    [InlineData(9, 16, 11, 4, false)]
    [InlineData(6, 8, 5, 3, true)]
    public void LoraOpMatchesFp64ReferenceAndFiniteDifferences(int n, int inDim, int outDim, int r, bool dropout)
    {
        const float scale = 1.75f;
        float[]? mask = null;
        if (dropout)
        {
            var rng = new Rng(3);
            mask = Enumerable.Range(0, n * inDim).Select(_ => rng.NextDouble() < 0.25 ? 0f : 1f / 0.75f).ToArray();
        }
        GradCheck.Check("Lora", t => F.Lora(t[0], t[1], t[2], t[3], scale, mask),
            x => RefLora(x[0], x[1], x[2], x[3], n, inDim, outDim, r, scale, mask),
            [Rand(11, 1, n, outDim), Rand(12, 1, n, inDim), Rand(13, 0.5, r, inDim), Rand(14, 0.5, outDim, r)]);
    }

    [Fact]
    public void LoraOpRefusesShapesThatDoNotFit()
    {
        using var s = new TensorScope();
        var be = CpuBackend.Instance;
        var e = Assert.Throws<ArgumentException>(() => F.Lora(be.Zeros([4, 6]), be.Zeros([4, 5]), be.Zeros([2, 7]), be.Zeros([6, 2]), 1f));
        Assert.Contains("A [2, 7]", e.Message);
    }

    /// <summary>
    /// Adapter gradients through the whole model (every linear layer and the head adapted) against central finite
    /// differences of the fp32 loss (h = 1e-2 and a loose tolerance, as the base model's whole-model check; the fp64
    /// per-op check above carries the tight bound). The frozen base gets no gradient at all.
    /// </summary>
    [Fact]
    public void WholeModelAdapterGradientsMatchFiniteDifferences()
    {
        using var m = TestModels.Create(TestModels.Tiny(), 3);
        using var lora = LoraAdapters.Attach(m, AllLinearAndHead, 5);
        RandomizeB(lora, 6);
        Assert.Null(m.Store.Grads);
        Assert.All(m.Store.Slots, s => Assert.False(s.Tensor.RequiresGrad));
        const int B = 2, T = 6;
        using var outer = new TensorScope();
        var (ids, tg) = TestModels.Batch(B, T, m.Config.VocabSize, 9, ignoreEvery: 5);
        ids.Keep(); tg.Keep();
        float valid = tg.IntSpan.ToArray().Count(t => t != -100);
        lora.Store.ZeroGrads();
        using (var s = new TensorScope()) Grad.Backward(m.Loss(ids, tg, B, T, valid).Loss);
        var rng = new Rng(4);
        int checkedCount = 0;
        foreach (var slot in lora.Store.Slots)
        {
            var p = slot.Tensor;
            var g = p.Grad!.ToArray();
            Assert.Contains(g, v => v != 0);
            for (int trial = 0; trial < 2; trial++)
            {
                int i = rng.NextInt((int)p.Numel);
                float orig = p.Span[i];
                const float h = 1e-2f;
                p.Span[i] = orig + h; double lp = LossAt();
                p.Span[i] = orig - h; double lm = LossAt();
                p.Span[i] = orig;
                double fd = (lp - lm) / (2 * h);
                Assert.True(Math.Abs(fd - g[i]) <= 2e-3 + 0.05 * Math.Abs(fd), $"{slot.Name}[{i}]: analytic {g[i]:G6} vs finite difference {fd:G6}");
                checkedCount++;
            }
        }
        Assert.Equal(2 * 2 * (7 * m.Config.NumLayers + 1), checkedCount);
        double LossAt()
        {
            using var s = new TensorScope();
            using var ng = Grad.NoGrad();
            return m.Loss(ids, tg, B, T, valid).Loss.Item();
        }
    }

    [Fact]
    public void FreshAdaptersLeaveTheOutputUnchangedAndActivationCheckpointingGivesTheSameGradients()
    {
        using var m = TestModels.Create(TestModels.Tiny(), 8);
        var (ids, tg) = TestModels.Batch(2, 7, m.Config.VocabSize, 10);
        ids.Keep(); tg.Keep();
        var plain = Logits(m, ids, 2, 7);
        using var lora = LoraAdapters.Attach(m, new LoraConfig { R = 4, Alpha = 8, TargetModules = ["q_proj", "v_proj", "down_proj"] }, 1);
        Assert.Equal(plain, Logits(m, ids, 2, 7));   // B = 0: PEFT's initialisation is a no-op
        RandomizeB(lora, 2);
        Assert.NotEqual(plain, Logits(m, ids, 2, 7));
        Dictionary<string, float[]> Grads(bool ckpt)
        {
            m.CheckpointActivations = ckpt;
            lora.Store.ZeroGrads();
            using var s = new TensorScope();
            Grad.Backward(m.Loss(ids, tg, 2, 7, 14).Loss);
            return lora.Store.Slots.ToDictionary(p => p.Name, p => p.Tensor.Grad!.ToArray());
        }
        var a = Grads(false);
        var b = Grads(true);
        foreach (var (name, g) in a) Assert.Equal(g, b[name]);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MergedModelEqualsTheUnmergedForward(bool rslora)
    {
        using var m = TestModels.Create(TestModels.Tiny(), 12);
        var (ids, _) = TestModels.Batch(2, 9, m.Config.VocabSize, 13);
        ids.Keep();
        var baseLogits = Logits(m, ids, 2, 9);
        var q = m["model.layers.1.self_attn.q_proj.weight"].ToArray();
        var lora = LoraAdapters.Attach(m, AllLinearAndHead with { UseRslora = rslora }, 14);
        RandomizeB(lora, 15);
        var adapted = Logits(m, ids, 2, 9);
        Assert.True(adapted.Zip(baseLogits).Max(p => Math.Abs(p.First - p.Second)) > 0.1, "the adapters should change the logits");
        lora.Merge();
        Assert.Null(m.Adapter);
        Assert.False(lora.IsAttached);
        var merged = Logits(m, ids, 2, 9);
        for (int i = 0; i < merged.Length; i++)
            Assert.True(Math.Abs(merged[i] - adapted[i]) <= 1e-4 + 1e-4 * Math.Abs(adapted[i]), $"logit {i}: merged {merged[i]} vs adapters {adapted[i]}");
        // W' = W + s·B·A exactly as written, for one layer, in fp64
        var (a, b) = (lora.Store[LoraAdapters.AName("model.layers.1.self_attn.q_proj")].ToArray(), lora.Store[LoraAdapters.BName("model.layers.1.self_attn.q_proj")].ToArray());
        var w = m["model.layers.1.self_attn.q_proj.weight"].ToArray();
        int h = m.Config.HiddenSize, r = lora.Config.R;
        double s = rslora ? 6 / Math.Sqrt(3) : 2;
        for (int o = 0; o < h; o++)
            for (int j = 0; j < h; j++)
            {
                double e = q[o * h + j];
                for (int k = 0; k < r; k++) e += s * b[o * r + k] * a[k * h + j];
                Assert.Equal(e, w[o * h + j], 1e-5);
            }
        // the base is trainable again and has its gradient buffer back
        Assert.NotNull(m.Store.Grads);
        Assert.All(m.Store.Slots, sl => Assert.True(sl.Tensor.RequiresGrad));
        lora.Dispose();
    }

    [Fact]
    public void PeftNamesAndConfigRoundTrip()
    {
        using var dir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny(), 20);
        var (ids, _) = TestModels.Batch(1, 8, m.Config.VocabSize, 21);
        ids.Keep();
        var baseLogits = Logits(m, ids, 1, 8);
        float[] adapted;
        using (var lora = LoraAdapters.Attach(m, new LoraConfig { R = 2, Alpha = 5, Dropout = 0.1, TargetModules = ["all-linear"] }, 22))
        {
            RandomizeB(lora, 23);
            adapted = Logits(m, ids, 1, 8);
            lora.Save(dir.Path, "runs/demo/stages/base");
        }
        // adapter_config.json as PEFT writes it
        using (var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.Path, "adapter_config.json"))))
        {
            var c = doc.RootElement;
            Assert.Equal("LORA", c.GetProperty("peft_type").GetString());
            Assert.Equal("CAUSAL_LM", c.GetProperty("task_type").GetString());
            Assert.Equal(2, c.GetProperty("r").GetInt32());
            Assert.Equal(5.0, c.GetProperty("lora_alpha").GetDouble());
            Assert.Equal(0.1, c.GetProperty("lora_dropout").GetDouble());
            Assert.Equal("none", c.GetProperty("bias").GetString());
            Assert.Equal("runs/demo/stages/base", c.GetProperty("base_model_name_or_path").GetString());
            Assert.Equal(["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
                c.GetProperty("target_modules").EnumerateArray().Select(e => e.GetString()!).ToArray());
        }
        // tensor names and shapes exactly as PEFT's save_pretrained writes them (adapter name "default" left out)
        using (var f = SafeTensorsFile.Open(Path.Combine(dir.Path, "adapter_model.safetensors")))
        {
            Assert.Equal(2 * 7 * m.Config.NumLayers, f.Entries.Count);
            var q = f["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
            Assert.Equal([2L, 16], q.Shape);
            Assert.Equal("F32", q.DType);
            Assert.Equal([8L, 2], f["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].Shape);
            Assert.Equal([2L, 24], f["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].Shape);
            Assert.Equal([24L, 2], f["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"].Shape);
            Assert.DoesNotContain(f.Entries, e => e.Name.Contains("lm_head", StringComparison.Ordinal) || e.Name.Contains(".default", StringComparison.Ordinal));
        }
        Assert.Equal(baseLogits, Logits(m, ids, 1, 8));   // disposing detached the adapters: the base alone again
        // loaded onto a fresh copy of the base: the same config and the same logits
        using var m2 = TestModels.Create(TestModels.Tiny(), 20);
        using var back = LoraAdapters.Load(m2, dir.Path);
        Assert.Equal(2, back.Config.R);
        Assert.Equal(5.0, back.Config.Alpha);
        Assert.Equal(2.5f, back.Config.Scaling);
        Assert.Equal(7 * m.Config.NumLayers, back.Modules.Count);
        Assert.Equal(adapted, Logits(m2, ids, 1, 8));
    }

    [Fact]
    public void PeftTargetRulesFollowPeft()
    {
        var cfg = TestModels.Tiny();
        Assert.Equal(2 * cfg.NumLayers, new LoraConfig().Resolve(cfg).Count);    // PEFT's Llama default: q_proj, v_proj
        Assert.Equal(["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"], new LoraConfig { TargetModules = ["up_proj"] }.Resolve(cfg).Select(x => x.Module));
        Assert.Equal(["model.layers.1.self_attn.o_proj"], new LoraConfig { TargetRegex = @".*\.1\.self_attn\.o_proj" }.Resolve(cfg).Select(x => x.Module));
        Assert.DoesNotContain(new LoraConfig { TargetModules = ["all-linear"] }.Resolve(cfg), x => x.Module == "lm_head");
        Assert.Throws<ArgumentException>(() => new LoraConfig { TargetModules = ["qkv"] }.Resolve(cfg));
        Assert.Throws<NotSupportedException>(() => new LoraConfig { TargetModules = ["lm_head"] }.Resolve(TestModels.Tiny(tied: true)));
        var e = Assert.Throws<ArgumentException>(() => new LoraConfig { R = 0, Dropout = 1 }.Validate());
        Assert.Contains("r must be positive", e.Message);
        Assert.Contains("lora_dropout", e.Message);
    }

    [Fact]
    public void BadAdapterDirectoriesAreRefusedByName()
    {
        using var m = TestModels.Create(TestModels.Tiny(), 30);
        using var dir = new TempDir();
        using (var lora = LoraAdapters.Attach(m, new LoraConfig { R = 2, TargetModules = ["q_proj"] }, 1)) lora.Save(dir.Path);
        string cfgPath = Path.Combine(dir.Path, "adapter_config.json"), weights = Path.Combine(dir.Path, "adapter_model.safetensors");
        string good = File.ReadAllText(cfgPath);
        var goodWeights = File.ReadAllBytes(weights);

        void Expect<TE>(string fragment) where TE : Exception
        {
            var e = Assert.ThrowsAny<TE>(() => LoraAdapters.Load(m, dir.Path).Dispose());
            Assert.Contains(fragment, e.Message);
            Assert.Null(m.Adapter);                       // a failed load leaves the model as it was
            Assert.NotNull(m.Store.Grads);
        }
        File.WriteAllText(cfgPath, good.Replace("\"use_dora\": false", "\"use_dora\": true"));
        Expect<InvalidDataException>("use_dora");
        File.WriteAllText(cfgPath, good.Replace("\"LORA\"", "\"PREFIX_TUNING\""));
        Expect<InvalidDataException>("peft_type");
        File.WriteAllText(cfgPath, "{ not json");
        Expect<InvalidDataException>("adapter_config.json");
        File.WriteAllText(cfgPath, good.Replace("\"q_proj\"", "\"v_proj\""));
        Expect<InvalidDataException>("is not an adapter of this config");
        File.WriteAllText(cfgPath, good.Replace("\"r\": 2", "\"r\": 3"));
        Expect<InvalidDataException>("has shape [2, 16], this model needs [3, 16]");
        File.WriteAllText(cfgPath, good);
        SafeTensorsWriter.Write(weights, [new SafeTensorWrite(LoraAdapters.AName("model.layers.0.self_attn.q_proj"), [2, 16], new float[32])]);
        Expect<InvalidDataException>("is missing");
        File.Delete(weights);
        Expect<FileNotFoundException>("adapter_model.safetensors");
        File.WriteAllBytes(weights, goodWeights);
        File.Delete(cfgPath);
        Expect<FileNotFoundException>("adapter_config.json");
        Assert.Throws<DirectoryNotFoundException>(() => LoraAdapters.Load(m, Path.Combine(dir.Path, "nope")));
    }

    sealed class FixedBatches(ulong seed) : IBatchSource
    {
        readonly Rng rng = new(seed);
        public Batch Next(int batch, int seqLen)
        {
            // a learnable pattern: the next token is (token + 1) mod 7
            var ids = new int[batch * seqLen];
            var tg = new int[batch * seqLen];
            for (int b = 0; b < batch; b++)
            {
                int t0 = rng.NextInt(7);
                for (int t = 0; t < seqLen; t++) { ids[b * seqLen + t] = (t0 + t) % 7; tg[b * seqLen + t] = (t0 + t + 1) % 7; }
            }
            return new Batch(ids, tg, Enumerable.Repeat("train", batch).ToArray());
        }
    }

    [Fact]
    public void TrainingMovesTheAdaptersAloneWithOptimizerStateForThemOnly()
    {
        using var m = TestModels.Create(TestModels.Tiny(), 40);
        var before = m.Store.Slots.ToDictionary(s => s.Name, s => s.Tensor.ToArray());
        using var lora = LoraAdapters.Attach(m, new LoraConfig { R = 4, Alpha = 8, Dropout = 0.1, TargetModules = ["all-linear"] }, 41);
        var adaptersBefore = lora.Store.Slots.ToDictionary(s => s.Name, s => s.Tensor.ToArray());
        using var opt = new AdamW(lora.Store, new AdamWOptions { Lr = 1e-2, WeightDecay = 0 });
        var steps = TrainingLoop.Run(m, new FixedBatches(42), new LoopOptions
        {
            Steps = 30,
            BatchSize = 4,
            SeqLen = 8,
            GradAccum = 1,
            Optim = opt.Options,
            Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
        }, opt, cancel: TestContext.Current.CancellationToken);
        Assert.True(steps[^1].Loss < steps[0].Loss - 0.3, $"the adapters alone should lower the loss: {steps[0].Loss:F3} → {steps[^1].Loss:F3}");
        foreach (var s in m.Store.Slots) Assert.Equal(before[s.Name], s.Tensor.ToArray());     // the base bit for bit
        Assert.All(lora.Store.Slots, s => Assert.NotEqual(adaptersBefore[s.Name], s.Tensor.ToArray()));
        // AdamW moments (m and v, fp32) cover the adapters' store and nothing else
        Assert.Equal(2L * sizeof(float) * lora.Store.Capacity, opt.StateBytes);
        Assert.True(lora.Store.Capacity < lora.ParameterCount + ParameterStore.Alignment * lora.Store.Count,
            $"the adapters' store ({lora.Store.Capacity}) holds {lora.ParameterCount} adapter elements plus alignment");
        Assert.Equal(lora.Modules.Sum(x => 4L * (x.In + x.Out)), lora.ParameterCount);
        Assert.True(opt.StateBytes < m.ParameterCount * 8L / 2, "moments for the adapters should be far below the base's");
    }
}
