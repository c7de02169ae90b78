using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Cpu;
using Engine.Model;
using Engine.Model.IO;

namespace Engine.Tests.Model;

/// <summary>Tiny Baichuan 2 models: 7B-style (RoPE) and 13B-style (ALiBi, a head count that is not a power of two).</summary>
public static class BaichuanModels
{
    public static LlamaConfig Config(bool alibi, int layers = 3) => new()
    {
        Family = ModelFamily.Baichuan,
        Position = alibi ? PositionEmbedding.Alibi : PositionEmbedding.Rope,
        VocabSize = 61,
        HiddenSize = alibi ? 20 : 24,
        IntermediateSize = 40,
        NumLayers = layers,
        NumHeads = alibi ? 5 : 3,
        NumKvHeads = alibi ? 5 : 3,
        MaxPositionEmbeddings = 16,
        RmsNormEps = 1e-6f,
        NormHead = true,
        MaxZLossWeight = 2e-4,
        InitializerRange = 0.2,
    };

    public static LlamaModel Create(bool alibi, ulong seed = 5, int layers = 3) => TestModels.Create(Config(alibi, layers), seed);

    /// <summary>Token sequences of the given lengths (fixed seed).</summary>
    public static int[][] Sequences(int vocab, ulong seed, params int[] lengths)
    {
        var rng = new Rng(seed);
        return lengths.Select(n => Enumerable.Range(0, n).Select(_ => rng.NextInt(vocab)).ToArray()).ToArray();
    }

    /// <summary>The engine's mean next-token NLL over sequences (plain cross-entropy, or with its training max-z term).</summary>
    public static double MeanNll(LlamaModel m, int[][] sequences, bool withMaxZ = false)
    {
        using var scope = new TensorScope();
        using var ng = Grad.NoGrad();
        var be = m.Backend;
        int count = sequences.Sum(s => s.Length - 1);
        double total = 0;
        foreach (var s in sequences)
        {
            var ids = be.Empty([s.Length - 1], DType.I32);
            var tg = be.Empty([s.Length - 1], DType.I32);
            be.Upload(ids, s[..^1]);
            be.Upload(tg, s[1..]);
            total += m.Loss(ids, tg, 1, s.Length - 1, count, 0f, withMaxZ ? m.TrainingMaxZLoss : 0f).Loss.Item();
        }
        return total;
    }
}

/// <summary>
/// Baichuan 2 in and out of its Hugging Face layout (config.json as modeling_baichuan.py reads it, q/k/v packed in
/// W_pack, NormHead, z_loss_weight), ALiBi's length extrapolation, and an independent PyTorch implementation
/// (Oracles/baichuan2_torch.py, fp64, reading the files the engine wrote) for the mean NLL.
/// </summary>
public class BaichuanTests
{
    const string Python = "/usr/bin/python3";

    static Dictionary<string, float[]> Weights(LlamaModel m) => m.Parameters.ToDictionary(p => p.Name, p => p.Tensor.ToArray());

    static JsonObject ConfigJson(string dir) => JsonNode.Parse(File.ReadAllText(Path.Combine(dir, ModelIO.ConfigFile)))!.AsObject();

    static Dictionary<string, long[]> FileTensors(string dir)
    {
        var all = new Dictionary<string, long[]>(StringComparer.Ordinal);
        foreach (var path in ModelIO.WeightFiles(dir).Shards)
        {
            using var f = SafeTensorsFile.Open(path);
            foreach (var e in f.Entries) all[e.Name] = e.Shape;
        }
        return all;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SavedInBaichuanLayoutAndLoadedBackBitIdentical(bool alibi)
    {
        using var dir = new TempDir();
        using var m = BaichuanModels.Create(alibi);
        var c = m.Config;
        ModelIO.Save(m, dir.Path);

        var json = ConfigJson(dir.Path);
        Assert.Equal("baichuan", json["model_type"]!.GetValue<string>());
        Assert.Equal("BaichuanForCausalLM", json["architectures"]![0]!.GetValue<string>());
        Assert.Equal(!alibi, json.ContainsKey("max_position_embeddings"));   // 7B has it, 13B only model_max_length
        Assert.Equal(16, json["model_max_length"]!.GetValue<int>());
        Assert.True(json["norm_head"]!.GetValue<bool>());
        Assert.Equal(2e-4, json["z_loss_weight"]!.GetValue<double>());
        Assert.False(json.ContainsKey("num_key_value_heads"));
        Assert.False(json.ContainsKey("rope_theta"));
        Assert.Contains("Baichuan2-" + (alibi ? "13B" : "7B"), json["auto_map"]!["AutoModelForCausalLM"]!.GetValue<string>());

        var tensors = FileTensors(dir.Path);
        for (int i = 0; i < c.NumLayers; i++)
        {
            Assert.Equal([3L * c.HiddenSize, c.HiddenSize], tensors[$"model.layers.{i}.self_attn.W_pack.weight"]);
            Assert.DoesNotContain($"model.layers.{i}.self_attn.q_proj.weight", tensors.Keys);
        }
        Assert.Equal(c.NumLayers * 7 + 3, tensors.Count);   // W_pack, o, gate, up, down, 2 norms per layer; embed, norm, head

        using var back = ModelIO.Load(dir.Path, CpuBackend.Instance);
        Assert.Equal(c with { Hf = back.Config.Hf }, back.Config);
        var (a, b) = (Weights(m), Weights(back));
        foreach (var (name, v) in a) Assert.Equal(v, b[name]);

        // saved again from what was loaded: the same files (config fields and carried auto_map included)
        using var dir2 = new TempDir();
        ModelIO.Save(back, dir2.Path);
        Assert.Equal(File.ReadAllText(dir.File(ModelIO.ConfigFile)), File.ReadAllText(dir2.File(ModelIO.ConfigFile)));
        Assert.Equal(File.ReadAllBytes(dir.File(ModelIO.WeightsFile)), File.ReadAllBytes(dir2.File(ModelIO.WeightsFile)));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ShardedBf16LoadsWidenedExactlyAndPipelineStagesReadTheirLayers(bool alibi)
    {
        using var dir = new TempDir();
        using var m = BaichuanModels.Create(alibi, 6);
        ModelIO.Save(m, dir.Path, "BF16", maxShardBytes: 2500);
        Assert.True(File.Exists(dir.File(SafeTensorsIndex.IndexFile)));
        Assert.True(Directory.GetFiles(dir.Path, "model-*-of-*.safetensors").Length > 2);
        Assert.Contains("model.layers.1.self_attn.W_pack.weight", SafeTensorsIndex.Read(dir.File(SafeTensorsIndex.IndexFile)).Keys);
        using var back = ModelIO.Load(dir.Path, CpuBackend.Instance);
        foreach (var (name, t) in m.Parameters)
            Assert.Equal(t.ToArray().Select(x => BFloat16.ToFloat(BFloat16.FromFloat(x))).ToArray(), back[name].ToArray());

        using var stage = ModelIO.Load(dir.Path, CpuBackend.Instance, c => PipelineStage.Split(c.NumLayers, 2)[1]);
        Assert.Equal(2, stage.Stage.FirstLayer);
        foreach (var (name, t) in stage.Parameters) Assert.Equal(back[name].ToArray(), t.ToArray());
    }

    static string Oracle()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string p = Path.Combine(d.FullName, "tests", "Engine.Tests", "Model", "Oracles", "baichuan2_torch.py");
            if (File.Exists(p)) return p;
        }
        throw new FileNotFoundException("tests/Engine.Tests/Model/Oracles/baichuan2_torch.py not found above the test binaries");
    }

    /// <summary>The oracle's result on a model directory.</summary>
    public static JsonElement RunOracle(string modelDir, int[][] sequences)
    {
        string input = Path.Combine(modelDir, "oracle-input.json");
        File.WriteAllText(input, JsonSerializer.Serialize(new { sequences }));
        var (code, stdout, stderr) = Engine.Training.Bench.MachineInfo.Run(Python, $"{Oracle()} {modelDir} {input}",
            new Dictionary<string, string> { ["OMP_NUM_THREADS"] = "1" });
        Assert.True(code == 0, $"baichuan2_torch.py failed: {stderr}");
        return JsonDocument.Parse(stdout).RootElement.Clone();
    }

    [Theory]
    [InlineData(false, "F32")]
    [InlineData(true, "F32")]
    [InlineData(false, "BF16")]
    [InlineData(true, "BF16")]
    public void PyTorchBaichuanComputesTheSameMeanNllOnTheSavedFiles(bool alibi, string dtype)
    {
        if (!TorchParityTests.TorchAvailable(out var why)) Assert.Skip(why);
        using var dir = new TempDir();
        using (var m = BaichuanModels.Create(alibi, 9))
            ModelIO.Save(m, dir.Path, dtype, maxShardBytes: dtype == "BF16" ? 4000 : SafeTensorsIndex.DefaultMaxShardBytes);
        using var model = ModelIO.Load(dir.Path, CpuBackend.Instance);   // the engine runs exactly what the files hold
        // ALiBi: also at twice the trained length (model_max_length 16), as Baichuan's code extends its mask
        var seqs = BaichuanModels.Sequences(model.Config.VocabSize, 10, alibi ? [16, 9, 32] : [16, 9, 13]);
        var r = RunOracle(dir.Path, seqs);
        double ours = BaichuanModels.MeanNll(model, seqs), theirs = r.GetProperty("mean_nll").GetDouble();
        Assert.True(Math.Abs(ours - theirs) <= 1e-5, $"mean NLL: engine {ours:R}, PyTorch {theirs:R}");
        Assert.True(ours > 1, $"mean NLL {ours} is implausibly low for random weights");
        double train = BaichuanModels.MeanNll(model, seqs, withMaxZ: true), theirsTrain = r.GetProperty("train_loss").GetDouble();
        Assert.True(Math.Abs(train - theirsTrain) <= 1e-5, $"training loss with max-z: engine {train:R}, PyTorch {theirsTrain:R}");
        Assert.True(train > ours, "the max-z term adds to the loss");
    }

    [Fact]
    public void AlibiExtrapolatesPastTheTrainedLengthAndDecodingMatchesTheFullPass()
    {
        using var m = BaichuanModels.Create(alibi: true, 13);
        int T = 2 * m.Config.MaxPositionEmbeddings;
        var ids = BaichuanModels.Sequences(m.Config.VocabSize, 14, T)[0];
        using var scope = new TensorScope();
        using var ng = Grad.NoGrad();
        var be = m.Backend;
        var t = be.Empty([T], DType.I32);
        be.Upload(t, ids);
        var full = m.Logits(t, 1, T).ToArray();
        using var cache = new KvCache(m.Config, be, T);
        var dec = new List<float>();
        // a 5-token prefill, then one token at a time
        foreach (var (start, n) in new[] { (0, 5) }.Concat(Enumerable.Range(5, T - 5).Select(i => (i, 1))))
        {
            var chunk = be.Empty([n], DType.I32);
            be.Upload(chunk, ids.AsSpan(start, n).ToArray());
            dec.AddRange(m.LogitsWithCache(chunk, cache).ToArray());
        }
        Tests.Ops.GradCheck.AssertClose(dec.ToArray(), full.Select(x => (double)x).ToArray(), "cached decoding vs the full pass at 2x the trained length", 1e-4, 1e-5);

        using var rope = BaichuanModels.Create(alibi: false, 13);
        var e = Assert.Throws<ArgumentException>(() => rope.Logits(t, 1, T));
        Assert.Contains("max_position_embeddings", e.Message);
    }

    /// <summary>A shipped-style Baichuan 2 config.json: every field as published but the widths (the engine's flat store
    /// holds at most 2^31 − 1 parameters, fewer than 7B), with the published layer counts and vocabulary.</summary>
    static JsonObject HubConfig(bool alibi)
    {
        var o = new JsonObject
        {
            ["_from_model_config"] = true,
            ["architectures"] = new JsonArray("BaichuanForCausalLM"),
            ["auto_map"] = new JsonObject
            {
                ["AutoConfig"] = "configuration_baichuan.BaichuanConfig",
                ["AutoModelForCausalLM"] = "modeling_baichuan.BaichuanForCausalLM",
            },
            ["tokenizer_class"] = "BaichuanTokenizer",
            ["bos_token_id"] = 1,
            ["eos_token_id"] = 2,
            ["gradient_checkpointing"] = new JsonArray(false),
            ["hidden_act"] = "silu",
            ["hidden_size"] = alibi ? 80 : 64,
            ["initializer_range"] = 0.02,
            ["intermediate_size"] = alibi ? 216 : 172,
            ["model_max_length"] = 4096,
            ["model_type"] = "baichuan",
            ["num_attention_heads"] = alibi ? 10 : 8,
            ["num_hidden_layers"] = alibi ? 40 : 32,
            ["pad_token_id"] = 0,
            ["rms_norm_eps"] = 1e-06,
            ["tie_word_embeddings"] = false,
            ["torch_dtype"] = "bfloat16",
            ["transformers_version"] = "4.29.2",
            ["use_cache"] = true,
            ["vocab_size"] = 125696,
            ["z_loss_weight"] = 0,
        };
        if (!alibi) o["max_position_embeddings"] = 4096;
        return o;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void PublishedConfigsReadAsTheirModelingCodeReadsThem(bool alibi)
    {
        var c = LlamaConfig.FromHuggingFaceJson(HubConfig(alibi).ToJsonString());
        Assert.Equal(ModelFamily.Baichuan, c.Family);
        Assert.Equal(alibi ? PositionEmbedding.Alibi : PositionEmbedding.Rope, c.Position);
        Assert.Equal(alibi ? 8f : 0f, c.AlibiMaxBias);
        Assert.True(c.NormHead);   // Baichuan 2's vocabulary: NormHead
        Assert.Equal(4096, c.MaxPositionEmbeddings);
        Assert.Equal(c.NumHeads, c.NumKvHeads);
        Assert.Equal(alibi ? 40 : 32, c.NumLayers);
        // written back: the published fields, auto_map and tokenizer_class carried, nothing Baichuan's code would misread
        var back = JsonNode.Parse(c.ToHuggingFaceJson("bfloat16"))!.AsObject();
        Assert.Equal("configuration_baichuan.BaichuanConfig", back["auto_map"]!["AutoConfig"]!.GetValue<string>());
        Assert.Equal("BaichuanTokenizer", back["tokenizer_class"]!.GetValue<string>());
        Assert.Equal(0, back["pad_token_id"]!.GetValue<int>());
        Assert.Equal(!alibi, back.ContainsKey("max_position_embeddings"));
        Assert.Equal(4096, back["model_max_length"]!.GetValue<int>());
        Assert.Equal(c with { Hf = null }, LlamaConfig.FromHuggingFaceJson(back.ToJsonString()) with { Hf = null });
        // Baichuan 1 (64,000 tokens) has a plain head unless a config says otherwise
        var v1 = HubConfig(alibi);
        v1["vocab_size"] = 64000;
        Assert.False(LlamaConfig.FromHuggingFaceJson(v1.ToJsonString()).NormHead);
    }

    public static TheoryData<string, string, string> Hostile() => new()
    {
        // field, value (JSON), a phrase the refusal must contain
        { "rope_scaling", """{"type": "linear", "factor": 2.0}""", "rope_scaling" },
        { "rope_theta", "500000", "rope_theta" },
        { "num_key_value_heads", "8", "num_key_value_heads" },
        { "tie_word_embeddings", "true", "tie_word_embeddings" },
        { "model_type", "\"baichuan3\"", "model_type 'baichuan3'" },
        { "architectures", """["BaichuanForCausalLM", "LlamaForCausalLM"]""", "architectures" },
        { "architectures", """["BloomForCausalLM"]""", "BloomForCausalLM" },
        { "hidden_act", "\"gelu\"", "hidden_act" },
        { "z_loss_weight", "-1", "z_loss_weight" },
        { "model_max_length", "null", "model_max_length" },
    };

    [Theory]
    [MemberData(nameof(Hostile))]
    public void HostileConfigsAreRefusedByName(string field, string value, string phrase)
    {
        var o = HubConfig(alibi: true);
        if (value == "null") o.Remove(field);
        else o[field] = JsonNode.Parse(value);
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromHuggingFaceJson(o.ToJsonString(), "x/config.json"));
        Assert.StartsWith("x/config.json: ", e.Message);
        Assert.Contains(phrase, e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public void AlibiWithRopeScalingIsRefusedByNameAndLlamaTypesStayLlama()
    {
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromHuggingFaceJson(
            HubConfig(alibi: true).Also(o => o["rope_scaling"] = new JsonObject { ["type"] = "dynamic", ["factor"] = 2.0 }).ToJsonString()));
        Assert.Contains("ALiBi", e.Message);
        Assert.Contains("rope_scaling", e.Message);
        // the engine's own settings refuse the same combination
        var direct = Assert.Throws<ArgumentException>(() => (BaichuanModels.Config(alibi: true) with { RopeScaling = RopeScalingKind.Linear, RopeScalingFactor = 2 }).Validate());
        Assert.Contains("ALiBi", direct.Message);
        Assert.Throws<ArgumentException>(() => (TestModels.Tiny() with { Position = PositionEmbedding.Alibi }).Validate());
        using var m = BaichuanModels.Create(alibi: false);
        Assert.Throws<ArgumentException>(() => m.SetRopeScaling(RopeScalingKind.Linear, 2, 32));
        Assert.Equal(ModelFamily.Llama, LlamaConfig.FromHuggingFaceJson(TestModels.Tiny().ToHuggingFaceJson()).Family);
    }

    [Fact]
    public void WeightsInTheWrongLayoutAreRefusedNamingTheTensor()
    {
        using var dir = new TempDir();
        using var llama = TestModels.Create(TestModels.Tiny() with { NumKvHeads = 4 }, 2);
        ModelIO.Save(llama, dir.Path);
        // a Baichuan config beside Llama-layout weights
        var cfg = JsonNode.Parse(File.ReadAllText(dir.File(ModelIO.ConfigFile)))!.AsObject();
        cfg["model_type"] = "baichuan";
        cfg["architectures"] = new JsonArray("BaichuanForCausalLM");
        cfg.Remove("rope_theta");
        cfg.Remove("rope_scaling");
        File.WriteAllText(dir.File(ModelIO.ConfigFile), cfg.ToJsonString());
        var e = Assert.Throws<InvalidDataException>(() => ModelIO.Load(dir.Path, CpuBackend.Instance));
        Assert.Contains("W_pack", e.Message);

        // a W_pack of the wrong shape
        using var dir2 = new TempDir();
        using var m = BaichuanModels.Create(alibi: false);
        ModelIO.Save(m, dir2.Path);
        var c2 = ConfigJson(dir2.Path);
        c2["num_attention_heads"] = 4;   // 24 / 4: the same parameter count, W_pack still [72, 24]: loads
        File.WriteAllText(dir2.File(ModelIO.ConfigFile), c2.ToJsonString());
        using (ModelIO.Load(dir2.Path, CpuBackend.Instance)) { }
        c2["hidden_size"] = 16;
        File.WriteAllText(dir2.File(ModelIO.ConfigFile), c2.ToJsonString());
        e = Assert.Throws<InvalidDataException>(() => ModelIO.Load(dir2.Path, CpuBackend.Instance));
        Assert.Contains("has shape", e.Message);
    }
}

static class JsonExtensions
{
    public static JsonObject Also(this JsonObject o, Action<JsonObject> change)
    {
        change(o);
        return o;
    }
}

/// <summary>`engine export --format safetensors` of a Baichuan model: Baichuan's layout, read by the PyTorch oracle.</summary>
public class BaichuanServingExportTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ServingExportIsABaichuanCheckpointWithTheSameNll(bool alibi)
    {
        using var dir = new TempDir();
        using var m = BaichuanModels.Create(alibi, 17);
        Engine.Model.Export.HfExport.Write(m, dir.Path, "F32", SafeTensorsIndex.DefaultMaxShardBytes);
        var json = JsonNode.Parse(File.ReadAllText(dir.File(ModelIO.ConfigFile)))!.AsObject();
        Assert.Equal("baichuan", json["model_type"]!.GetValue<string>());
        using (var f = SafeTensorsFile.Open(dir.File(ModelIO.WeightsFile)))
        {
            Assert.True(f.Contains("model.layers.0.self_attn.W_pack.weight"));
            // the head as the model multiplies by it: unit rows
            var head = f.ReadFloat32("lm_head.weight");
            int cdim = m.Config.HiddenSize;
            for (int r = 0; r < m.Config.VocabSize; r++)
                Assert.Equal(1.0, Math.Sqrt(head.AsSpan(r * cdim, cdim).ToArray().Sum(x => (double)x * x)), 5);
        }
        using var back = ModelIO.Load(dir.Path, CpuBackend.Instance);
        var seqs = BaichuanModels.Sequences(m.Config.VocabSize, 18, 12, 7);
        Assert.Equal(BaichuanModels.MeanNll(m, seqs), BaichuanModels.MeanNll(back, seqs), 6);
        if (TorchParityTests.TorchAvailable(out _))   // the engine's side above runs everywhere; the oracle where torch is
        {
            double theirs = BaichuanTests.RunOracle(dir.Path, seqs).GetProperty("mean_nll").GetDouble();
            Assert.True(Math.Abs(theirs - BaichuanModels.MeanNll(m, seqs)) <= 1e-5, $"PyTorch on the export: {theirs}");
        }
    }
}
