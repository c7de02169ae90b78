using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Cpu;
using Engine.Model;
using Engine.Model.IO;
using Engine.Tests.Model;
using Engine.Tests.Training;
using Engine.Training;
using Engine.Training.Config;

namespace Engine.Tests.IO;

/// <summary>Hugging Face checkpoints as published: sharded safetensors, bf16/fp16, config.json fields and side files.</summary>
public class HfCheckpointTests
{
    static Dictionary<string, float[]> Weights(LlamaModel m) => m.Parameters.ToDictionary(p => p.Name, p => p.Tensor.ToArray());

    [Fact]
    public void ShardedSaveWritesIndexAndLoadsBackExactly()
    {
        using var dir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny(), 3);
        ModelIO.Save(m, dir.Path, maxShardBytes: 3000);
        Assert.False(File.Exists(dir.File(ModelIO.WeightsFile)));
        var index = JsonNode.Parse(File.ReadAllText(dir.File(SafeTensorsIndex.IndexFile)))!;
        var shards = Directory.GetFiles(dir.Path, "model-*-of-*.safetensors").Select(Path.GetFileName).Order().ToList();
        Assert.True(shards.Count > 2, $"expected several shards, got {shards.Count}");
        Assert.Equal($"model-00001-of-{shards.Count:D5}.safetensors", shards[0]);
        long total = m.Parameters.Sum(p => p.Tensor.Numel * 4);
        Assert.Equal(total, index["metadata"]!["total_size"]!.GetValue<long>());
        var map = index["weight_map"]!.AsObject();
        Assert.Equal(m.Parameters.Select(p => p.Name).Order(StringComparer.Ordinal), map.Select(kv => kv.Key));
        foreach (var s in shards) Assert.True(new FileInfo(dir.File(s!)).Length < 3000 + 2000, $"{s} is larger than the limit plus its header");

        using var back = ModelIO.Load(dir.Path, CpuBackend.Instance);
        var (a, b) = (Weights(m), Weights(back));
        foreach (var (name, v) in a) Assert.Equal(v, b[name]);

        // saving again as one file removes the shards and the index; and back to shards removes model.safetensors
        ModelIO.Save(back, dir.Path);
        Assert.True(File.Exists(dir.File(ModelIO.WeightsFile)));
        Assert.Empty(Directory.GetFiles(dir.Path, "model-*-of-*.safetensors"));
        Assert.False(File.Exists(dir.File(SafeTensorsIndex.IndexFile)));
        ModelIO.Save(back, dir.Path, maxShardBytes: 3000);
        Assert.False(File.Exists(dir.File(ModelIO.WeightsFile)));
        using var again = ModelIO.Load(dir.Path, CpuBackend.Instance);
        foreach (var (name, v) in a) Assert.Equal(v, again[name].ToArray());
    }

    [Theory]
    [InlineData("BF16", "bfloat16")]
    [InlineData("F16", "float16")]
    public void HalfPrecisionSavesRoundToNearestAndLoadWidenedExactly(string dtype, string torchDtype)
    {
        using var dir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny(), 4);
        ModelIO.Save(m, dir.Path, dtype, maxShardBytes: 2500);
        Assert.Equal(torchDtype, JsonNode.Parse(File.ReadAllText(dir.File(ModelIO.ConfigFile)))!["torch_dtype"]!.GetValue<string>());
        using var back = ModelIO.Load(dir.Path, CpuBackend.Instance);
        foreach (var (name, t) in m.Parameters)
        {
            var want = t.ToArray().Select(x => dtype == "BF16" ? BFloat16.ToFloat(BFloat16.FromFloat(x)) : (float)(Half)x).ToArray();
            Assert.Equal(want, back[name].ToArray());
        }
    }

    [Fact]
    public void Fp16SaveRefusesValuesBeyondItsRange()
    {
        using var dir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny(), 4);
        var w = m["model.norm.weight"].ToArray();
        w[3] = 70000f;
        m.Load("model.norm.weight", w);
        var e = Assert.Throws<ArgumentException>(() => ModelIO.Save(m, dir.Path, "F16"));
        Assert.Contains("model.norm.weight", e.Message);
        Assert.Contains("fp16", e.Message);
    }

    [Fact]
    public void ShardPlanFollowsHuggingFaceHub()
    {
        // sizes 5, 3, 10 (> limit 8: alone), 4, 4 → [2], [0, 1], [3, 4]
        var plan = SafeTensorsIndex.Plan([5, 3, 10, 4, 4], 8);
        Assert.Equal([[2], [0, 1], [3, 4]], plan.Select(s => s.ToArray()).ToArray());
        Assert.Single(SafeTensorsIndex.Plan([1, 2, 3], 100));
    }

    [Theory]
    [InlineData("5GB", 5_000_000_000L)]
    [InlineData("5GiB", 5L << 30)]
    [InlineData("500MB", 500_000_000L)]
    [InlineData("2MiB", 2L << 20)]
    [InlineData("10KB", 10_000L)]
    [InlineData("5Gb", 625_000_000L)]
    [InlineData("123456", 123456L)]
    public void ShardSizesParseAsTransformers(string text, long bytes) => Assert.Equal(bytes, SafeTensorsIndex.ParseSize(text));

    [Theory]
    [InlineData("1.5GB")]
    [InlineData("GB")]
    [InlineData("-5")]
    [InlineData("5TB")]
    [InlineData("0")]
    public void BadShardSizesAreRefused(string text) => Assert.Throws<ArgumentException>(() => SafeTensorsIndex.ParseSize(text));

    /// <summary>A sharded checkpoint to corrupt: three or more shards of the tiny model.</summary>
    static (TempDir Dir, JsonObject Index) Sharded()
    {
        var dir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny(), 5);
        ModelIO.Save(m, dir.Path, maxShardBytes: 3000);
        return (dir, JsonNode.Parse(File.ReadAllText(dir.File(SafeTensorsIndex.IndexFile)))!.AsObject());
    }

    static void WriteIndex(TempDir dir, JsonObject index) => File.WriteAllText(dir.File(SafeTensorsIndex.IndexFile), index.ToJsonString());

    static Exception LoadFails(TempDir dir) => Assert.ThrowsAny<Exception>(() => ModelIO.Load(dir.Path, CpuBackend.Instance));

    [Fact]
    public void CorruptedIndexIsRefusedWithTheReason()
    {
        {
            var (dir, _) = Sharded();
            using var d = dir;
            File.WriteAllText(dir.File(SafeTensorsIndex.IndexFile), "{\"weight_map\": {\"a\": ");
            var e = Assert.IsType<InvalidDataException>(LoadFails(dir));
            Assert.Contains("not valid JSON", e.Message);
            Assert.Contains(SafeTensorsIndex.IndexFile, e.Message);
        }
        {
            var (dir, index) = Sharded();
            using var d = dir;
            index.Remove("weight_map");
            WriteIndex(dir, index);
            Assert.Contains("no weight_map", Assert.IsType<InvalidDataException>(LoadFails(dir)).Message);
        }
        {
            // a shard the index names is gone
            var (dir, index) = Sharded();
            using var d = dir;
            string shard = index["weight_map"]!["model.norm.weight"]!.GetValue<string>();
            File.Delete(dir.File(shard));
            var e = Assert.IsType<FileNotFoundException>(LoadFails(dir));
            Assert.Contains(shard, e.Message);
        }
        {
            // the index sends a tensor to the wrong shard
            var (dir, index) = Sharded();
            using var d = dir;
            var wm = index["weight_map"]!.AsObject();
            string first = wm["model.embed_tokens.weight"]!.GetValue<string>(), other = wm["model.norm.weight"]!.GetValue<string>();
            Assert.NotEqual(first, other);
            wm["model.norm.weight"] = first;
            WriteIndex(dir, index);
            var e = Assert.IsType<InvalidDataException>(LoadFails(dir));
            Assert.Contains("model.norm.weight", e.Message);
        }
        {
            // a tensor the shards hold but the index does not list (its shard also holds a listed one)
            var (dir, index) = Sharded();
            using var d = dir;
            var wm = index["weight_map"]!.AsObject();
            var victim = wm.GroupBy(kv => kv.Value!.GetValue<string>()).First(g => g.Count() > 1).First().Key;
            wm.Remove(victim);
            WriteIndex(dir, index);
            var e = Assert.IsType<InvalidDataException>(LoadFails(dir));
            Assert.Contains("does not list", e.Message);
            Assert.Contains(victim, e.Message);
        }
        {
            // a shard name leaving the directory
            var (dir, index) = Sharded();
            using var d = dir;
            index["weight_map"]!["model.norm.weight"] = "../model-00001-of-00004.safetensors";
            WriteIndex(dir, index);
            Assert.Contains("not a file in the model directory", Assert.IsType<InvalidDataException>(LoadFails(dir)).Message);
        }
        {
            // a stale single file beside the index
            var (dir, _) = Sharded();
            using var d = dir;
            File.WriteAllBytes(dir.File(ModelIO.WeightsFile), [0]);
            Assert.Contains("both", Assert.IsType<InvalidDataException>(LoadFails(dir)).Message);
        }
        {
            // a truncated shard
            var (dir, index) = Sharded();
            using var d = dir;
            string shard = dir.File(index["weight_map"]!["model.norm.weight"]!.GetValue<string>());
            File.WriteAllBytes(shard, File.ReadAllBytes(shard)[..^8]);
            Assert.Contains("truncated", Assert.IsType<InvalidDataException>(LoadFails(dir)).Message);
        }
    }

    [Fact]
    public void PickleOnlyDirectoryIsRefusedByName()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File(ModelIO.ConfigFile), TestModels.Tiny().ToHuggingFaceJson());
        File.WriteAllBytes(dir.File("pytorch_model.bin"), [1, 2, 3]);
        var e = Assert.Throws<InvalidDataException>(() => ModelIO.Load(dir.Path, CpuBackend.Instance));
        Assert.Contains("pytorch_model", e.Message);
    }

    /// <summary>
    /// A directory laid out as transformers publishes a tied-embedding Llama: bf16 shards without lm_head.weight,
    /// rotary inv_freq buffers, a config with fields the engine does not model, eos ids as a list, a dynamic
    /// rope_scaling, generation_config.json, tokenizer_config.json with a chat template and chat_template.jinja.
    /// </summary>
    static string PublishedStyleDirectory(TempDir dir, LlamaModel source)
    {
        var tensors = source.Parameters.Where(p => p.Name != "lm_head.weight")
            .Select(p => new SafeTensorWrite(p.Name, p.Tensor.Shape.Select(d => (long)d).ToArray(), p.Tensor.ToArray(), "BF16"))
            .Append(new SafeTensorWrite("model.layers.0.self_attn.rotary_emb.inv_freq", [2], new float[] { 1, 0.01f }, "F32")).ToList();
        SafeTensorsWriter.Write(dir.File("model-00001-of-00002.safetensors"), tensors.Take(5), new Dictionary<string, string> { ["format"] = "pt" });
        SafeTensorsWriter.Write(dir.File("model-00002-of-00002.safetensors"), tensors.Skip(5), new Dictionary<string, string> { ["format"] = "pt" });
        File.WriteAllText(dir.File(SafeTensorsIndex.IndexFile), SafeTensorsIndex.IndexJson(0,
            tensors.Select((t, i) => (t.Name, i < 5 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors"))));
        var c = source.Config;
        File.WriteAllText(dir.File("config.json"), $$"""
            {
              "_name_or_path": "org/tiny-llama",
              "architectures": ["LlamaForCausalLM"],
              "attention_bias": false,
              "attention_dropout": 0.0,
              "bos_token_id": 1,
              "eos_token_id": [2, 7],
              "head_dim": {{c.HeadDim}},
              "hidden_act": "silu",
              "hidden_size": {{c.HiddenSize}},
              "initializer_range": 0.02,
              "intermediate_size": {{c.IntermediateSize}},
              "max_position_embeddings": {{c.MaxPositionEmbeddings}},
              "mlp_bias": false,
              "model_type": "llama",
              "num_attention_heads": {{c.NumHeads}},
              "num_hidden_layers": {{c.NumLayers}},
              "num_key_value_heads": {{c.NumKvHeads}},
              "pad_token_id": 0,
              "pretraining_tp": 1,
              "rms_norm_eps": 1e-05,
              "rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
              "rope_theta": 500000.0,
              "tie_word_embeddings": true,
              "torch_dtype": "bfloat16",
              "transformers_version": "4.46.0",
              "use_cache": true,
              "vocab_size": {{c.VocabSize}}
            }
            """);
        File.WriteAllText(dir.File("generation_config.json"), "{\n  \"bos_token_id\": 1,\n  \"do_sample\": true,\n  \"eos_token_id\": [2, 7],\n  \"temperature\": 0.6,\n  \"top_p\": 0.9\n}\n");
        File.WriteAllText(dir.File("tokenizer_config.json"), "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"chat_template\": \"{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}\"}");
        File.WriteAllText(dir.File("chat_template.jinja"), "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}");
        return dir.Path;
    }

    [Fact]
    public void PublishedStyleDirectoryLoadsAndItsSideFilesAreCarriedThroughSave()
    {
        using var src = new TempDir();
        using var outDir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny(tied: true), 6);
        PublishedStyleDirectory(src, m);
        using var loaded = ModelIO.Load(src.Path, CpuBackend.Instance);
        var c = loaded.Config;
        Assert.True(c.TieWordEmbeddings);
        Assert.Equal(500000.0, c.RopeTheta);
        Assert.Equal(RopeScalingKind.None, c.RopeScaling); // dynamic NTK is plain RoPE up to max_position_embeddings
        Assert.Equal(2, c.EosTokenId);
        foreach (var (name, t) in m.Parameters)
            Assert.Equal(t.ToArray().Select(x => BFloat16.ToFloat(BFloat16.FromFloat(x))), loaded[name].ToArray());
        Assert.Equal("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}", c.Hf!.ChatTemplate);

        ModelIO.Save(loaded, outDir.Path, "BF16");
        foreach (var f in new[] { "generation_config.json", "tokenizer_config.json", "chat_template.jinja" })
            Assert.Equal(File.ReadAllText(src.File(f)), File.ReadAllText(outDir.File(f)));
        var cfg = JsonNode.Parse(File.ReadAllText(outDir.File("config.json")))!;
        Assert.Equal("org/tiny-llama", cfg["_name_or_path"]!.GetValue<string>());
        Assert.Equal(0, cfg["pad_token_id"]!.GetValue<int>());
        Assert.Equal("4.46.0", cfg["transformers_version"]!.GetValue<string>());
        Assert.Equal([2, 7], cfg["eos_token_id"]!.AsArray().Select(x => x!.GetValue<int>()));
        Assert.Equal("dynamic", cfg["rope_scaling"]!["rope_type"]!.GetValue<string>());
        Assert.Equal(500000.0, cfg["rope_theta"]!.GetValue<double>());
        Assert.Equal("bfloat16", cfg["torch_dtype"]!.GetValue<string>());
        Assert.False(cfg.AsObject().ContainsKey("norm_head"));

        // and the re-saved directory loads to the same config and weights
        using var again = ModelIO.Load(outDir.Path, CpuBackend.Instance);
        Assert.Equal(c, again.Config);
        foreach (var (name, t) in loaded.Parameters) Assert.Equal(t.ToArray(), again[name].ToArray());
    }

    [Fact]
    public void TrainingInitializesFromAShardedHuggingFaceDirectory()
    {
        using var src = new TempDir();
        using var run = new TempDir();
        var cfg = new LlamaConfig
        {
            VocabSize = 258,
            HiddenSize = 32,
            IntermediateSize = 64,
            NumLayers = 2,
            NumHeads = 4,
            NumKvHeads = 2,
            MaxPositionEmbeddings = 64,
            TieWordEmbeddings = true,
        };
        using var source = TestModels.Create(cfg, 8);
        PublishedStyleDirectory(src, source);
        var tc = new TrainConfig
        {
            Model = new ModelSection { InitFrom = src.Path },
            Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
            Train = new TrainSection { SeqLen = 32, BatchSize = 2, Steps = 2, Seed = 5, EvalBatches = 1 },
            Output = new OutputSection { Dir = run.Path },
        };
        var result = new Trainer(tc, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        Assert.Equal(2, result.Steps.Count);
        using var trained = ModelIO.Load(result.WeightsDir, CpuBackend.Instance);
        Assert.True(trained.Config.TieWordEmbeddings);
        // two AdamW steps at lr 1.2e-4 move each weight by at most ~2.4e-4 from the loaded bf16 values (a fresh init would differ by ~0.05)
        var before = source["model.embed_tokens.weight"].ToArray().Select(x => BFloat16.ToFloat(BFloat16.FromFloat(x))).ToArray();
        var after = trained["model.embed_tokens.weight"].ToArray();
        double maxMove = before.Zip(after, (a, b) => Math.Abs(a - b)).Max();
        Assert.True(maxMove < 1e-3, $"weights moved {maxMove} from the loaded checkpoint: training did not start from it");
        // the chat template and generation defaults reach the trained model's directory
        Assert.Equal(File.ReadAllText(src.File("generation_config.json")), File.ReadAllText(Path.Combine(result.WeightsDir, "generation_config.json")));
        Assert.True(File.Exists(Path.Combine(result.WeightsDir, "chat_template.jinja")));
    }

    [Theory]
    [InlineData("llama3", "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}")]
    [InlineData("yarn", "{\"rope_type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32768}")]
    [InlineData("longrope", "{\"type\": \"longrope\", \"long_factor\": [1.0], \"short_factor\": [1.0]}")]
    [InlineData("su", "{\"type\": \"su\", \"factor\": 2.0}")]
    [InlineData("fancy", "{\"type\": \"fancy\", \"factor\": 2.0}")]
    public void UnsupportedRopeScalingIsRefusedByName(string kind, string scaling)
    {
        var json = JsonNode.Parse(TestModels.Tiny().ToHuggingFaceJson())!.AsObject();
        json["rope_scaling"] = JsonNode.Parse(scaling);
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromHuggingFaceJson(json.ToJsonString(), "x/config.json"));
        Assert.Contains($"'{kind}'", e.Message);
        Assert.Contains("x/config.json", e.Message);
    }

    [Fact]
    public void LinearScalingRoundTripsAndTransformers5RopeParametersAreRead()
    {
        var cfg = TestModels.Tiny() with { RopeScaling = RopeScalingKind.Linear, RopeScalingFactor = 4, RopeTheta = 50000 };
        var json = JsonNode.Parse(cfg.ToHuggingFaceJson())!;
        Assert.Equal("linear", json["rope_scaling"]!["rope_type"]!.GetValue<string>());
        Assert.Equal(cfg, LlamaConfig.FromHuggingFaceJson(json.ToJsonString()));
        // transformers 5 writes rope_parameters instead of rope_theta + rope_scaling
        var v5 = json.AsObject();
        v5.Remove("rope_theta");
        v5.Remove("rope_scaling");
        v5["rope_parameters"] = JsonNode.Parse("{\"rope_type\": \"linear\", \"factor\": 4.0, \"rope_theta\": 50000.0}");
        Assert.Equal(cfg, LlamaConfig.FromHuggingFaceJson(v5.ToJsonString()));
    }

    [Fact]
    public void EngineNtkScalingIsExportedAsItsRopeThetaNotAsDynamic()
    {
        var cfg = TestModels.Tiny() with { RopeScaling = RopeScalingKind.Ntk, RopeScalingFactor = 4, MaxPositionEmbeddings = 64 };
        var json = JsonNode.Parse(cfg.ToHuggingFaceJson())!;
        Assert.Null(json["rope_scaling"]);
        double theta = json["rope_theta"]!.GetValue<double>();
        Assert.Equal(256, json["max_position_embeddings"]!.GetValue<int>());
        // what transformers computes from that file (default RoPE at rope_theta) is exactly the engine's NTK frequencies
        Assert.Equal(cfg.Rope.InverseFrequencies(), new RopeParams(cfg.HeadDim, theta).InverseFrequencies());
        Assert.NotEqual(cfg.Rope.InverseFrequencies(), new RopeParams(cfg.HeadDim, cfg.RopeTheta).InverseFrequencies());
        // the engine restores its own setting from engine_rope_scaling
        Assert.Equal(cfg, LlamaConfig.FromHuggingFaceJson(json.ToJsonString()));
        // an edited rope_theta disagrees with the record and is refused rather than guessed
        json["rope_theta"] = theta * 2;
        var e = Assert.Throws<InvalidDataException>(() => LlamaConfig.FromHuggingFaceJson(json.ToJsonString()));
        Assert.Contains(HfConfig.EngineRopeKey, e.Message);
        // without the record it is plain RoPE at that base, which is what transformers runs
        json.AsObject().Remove(HfConfig.EngineRopeKey);
        json["rope_theta"] = theta;
        var plain = LlamaConfig.FromHuggingFaceJson(json.ToJsonString());
        Assert.Equal(RopeScalingKind.None, plain.RopeScaling);
        Assert.Equal(cfg.Rope.InverseFrequencies(), plain.Rope.InverseFrequencies());
    }

    [Fact]
    public void DynamicScalingRunsExactlyWithinTheOriginalContextAndRefusesBeyond()
    {
        var json = JsonNode.Parse(TestModels.Tiny().ToHuggingFaceJson())!.AsObject();
        json["rope_scaling"] = JsonNode.Parse("{\"type\": \"dynamic\", \"factor\": 2.0}");
        var cfg = LlamaConfig.FromHuggingFaceJson(json.ToJsonString());
        // transformers: base·((f·L/L0) − (f − 1))^(d/(d−2)) = base for L ≤ L0 = max_position_embeddings
        Assert.Equal(new RopeParams(cfg.HeadDim, 10000.0).InverseFrequencies(), cfg.Rope.InverseFrequencies());
        using var m = TestModels.Create(cfg);
        var (ids, _) = TestModels.Batch(1, cfg.MaxPositionEmbeddings + 1, cfg.VocabSize, 1);
        Assert.Throws<ArgumentException>(() => m.Logits(ids, 1, cfg.MaxPositionEmbeddings + 1));
    }

    [Fact]
    public void QuantizedAndSlidingWindowConfigsAreRefused()
    {
        var json = JsonNode.Parse(TestModels.Tiny().ToHuggingFaceJson())!.AsObject();
        json["quantization_config"] = JsonNode.Parse("{\"quant_method\": \"gptq\", \"bits\": 4}");
        Assert.Contains("gptq", Assert.Throws<InvalidDataException>(() => LlamaConfig.FromHuggingFaceJson(json.ToJsonString())).Message);
        json.Remove("quantization_config");
        json["model_type"] = "mistral";
        json["sliding_window"] = 16;
        Assert.Contains("sliding_window", Assert.Throws<InvalidDataException>(() => LlamaConfig.FromHuggingFaceJson(json.ToJsonString())).Message);
        json["sliding_window"] = null;
        Assert.Equal(TestModels.Tiny(), LlamaConfig.FromHuggingFaceJson(json.ToJsonString()));
    }
}
