using System.Text;
using System.Text.Json;
using Engine.Core;
using Engine.Data;
using Engine.Data.Shards;
using Engine.Model;
using Engine.Model.Export;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Parallel;

namespace Engine.Fuzz;

/// <summary>
/// The seed inputs of every target, built deterministically from what the project ships: slices of the text files
/// under the shipped data/ folder (each format), the configs under configs/, and the binary files the engine's own writers make from
/// them — a tiny Llama saved as safetensors (F32/BF16/F16, single and sharded) and GGUF (F16/Q8_0/Q4_0), token shards of
/// shipped text, a BPE tokenizer trained on shipped text and a hand-written SentencePiece-style tokenizer.json. Small
/// on purpose (a few KB each): a mutation run parses each input once.
/// </summary>
public sealed class SeedCorpus
{
    readonly Dictionary<string, List<byte[]>> cache = new(StringComparer.Ordinal);
    readonly Lock gate = new();

    public SeedCorpus(string dataDir, string repoRoot)
    {
        DataDir = dataDir;
        RepoRoot = repoRoot;
    }

    public string DataDir { get; }
    public string RepoRoot { get; }

    /// <summary>The shipped data folder and the repository (found walking up from the binary or the current directory).</summary>
    public static SeedCorpus Locate()
    {
        string data = DataPaths.Find();
        foreach (var start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
            for (var d = new DirectoryInfo(start); d != null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "Engine.sln"))) return new SeedCorpus(data, d.FullName);
        throw new DirectoryNotFoundException($"the repository (Engine.sln) was not found above {AppContext.BaseDirectory}");
    }

    /// <summary>Seeds of one kind, built once.</summary>
    public IReadOnlyList<byte[]> Get(string kind, Func<List<byte[]>> build)
    {
        lock (gate)
        {
            if (!cache.TryGetValue(kind, out var list)) cache[kind] = list = build();
            return list;
        }
    }

    // ------------------------------------------------------------------ text slices of the shipped data

    /// <summary>A shipped file: NAME, or NAME.gz (data/ ships gzip; the readers open either).</summary>
    string Shipped(string relative)
    {
        string path = Path.Combine(DataDir, relative);
        return File.Exists(path) || !File.Exists(path + ".gz") ? path : path + ".gz";
    }

    static byte[] ReadAll(string path)
    {
        if (!path.EndsWith(".gz", StringComparison.Ordinal)) return File.ReadAllBytes(path);
        using var gz = new System.IO.Compression.GZipStream(File.OpenRead(path), System.IO.Compression.CompressionMode.Decompress);
        using var ms = new MemoryStream();
        gz.CopyTo(ms);
        return ms.ToArray();
    }

    static IEnumerable<string> ReadLines(string path) =>
        path.EndsWith(".gz", StringComparison.Ordinal) ? Encoding.UTF8.GetString(ReadAll(path)).Split('\n') : File.ReadLines(path);

    /// <summary>The first lines of a shipped file, up to about <paramref name="maxBytes"/> bytes (whole lines).</summary>
    public byte[] Head(string relative, int maxBytes = 3000)
    {
        var sb = new StringBuilder();
        foreach (var line in ReadLines(Shipped(relative)))
        {
            if (sb.Length > 0 && Encoding.UTF8.GetByteCount(sb.ToString()) + line.Length > maxBytes) break;
            sb.Append(line).Append('\n');
        }
        return Encoding.UTF8.GetBytes(sb.ToString());
    }

    /// <summary>The first <paramref name="records"/> elements of a shipped JSON array, as a JSON array.</summary>
    public byte[] JsonArrayHead(string relative, int records = 3)
    {
        using var doc = JsonDocument.Parse(ReadAll(Shipped(relative)));
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartArray();
            foreach (var e in doc.RootElement.EnumerateArray().Take(records)) e.WriteTo(w);
            w.WriteEndArray();
        }
        return ms.ToArray();
    }

    public byte[] Config(string relative) => File.ReadAllBytes(Path.Combine(RepoRoot, relative));

    /// <summary>Documents of shipped text for tokenizers and shards (the first ~<paramref name="chars"/> characters of three files).</summary>
    public List<string> SampleDocuments(int chars = 20_000)
    {
        var docs = new List<string>();
        foreach (var f in new[] { "general_en/tinyshakespeare.txt", "general_zh/cnews_general.jsonl", "finance_en/fomc_statements.jsonl" })
        {
            int n = 0;
            foreach (var d in Documents.Read(Shipped(f)))
            {
                string s = d.Length > 2000 ? d[..2000] : d;
                docs.Add(s);
                if ((n += s.Length) > chars / 3) break;
            }
        }
        return docs;
    }

    // ------------------------------------------------------------------ models

    /// <summary>A tiny Llama (1 layer, GQA) with seeded random weights.</summary>
    public static LlamaModel TinyModel(int vocab = 32, int hidden = 16, int intermediate = 24, bool tied = false)
    {
        var cfg = new LlamaConfig
        {
            VocabSize = vocab,
            HiddenSize = hidden,
            IntermediateSize = intermediate,
            NumLayers = 1,
            NumHeads = 2,
            NumKvHeads = 1,
            MaxPositionEmbeddings = 64,
            TieWordEmbeddings = tied,
            InitializerRange = 0.2,
        };
        var m = new LlamaModel(cfg, CpuBackend.Instance);
        m.InitializeWeights(7);
        return m;
    }

    /// <summary>Saves a model in a fresh temporary directory and returns the directory's files by name.</summary>
    public static Dictionary<string, byte[]> SavedModel(LlamaModel m, string dtype, long maxShardBytes = SafeTensorsIndex.DefaultMaxShardBytes)
    {
        string dir = FuzzPaths.NewTempDir("seed-model");
        try
        {
            ModelIO.Save(m, dir, dtype, new Dictionary<string, string> { ["engine.seed"] = "fuzz" }, maxShardBytes);
            return Directory.GetFiles(dir).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes, StringComparer.Ordinal);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    public IReadOnlyList<byte[]> SafeTensors() => Get("safetensors", () =>
    {
        using var m = TinyModel();
        using var tied = TinyModel(vocab: 20, tied: true);
        return
        [
            SavedModel(m, "F32")[ModelIO.WeightsFile],
            SavedModel(m, "BF16")[ModelIO.WeightsFile],
            SavedModel(tied, "F16")[ModelIO.WeightsFile],
        ];
    });

    public IReadOnlyList<byte[]> ModelConfigs() => Get("config.json", () =>
    {
        using var m = TinyModel();
        var plain = SavedModel(m, "F32")[ModelIO.ConfigFile];
        // the same model as transformers 5 and older transformers write it (rope_parameters, eos list, extra fields)
        var node = System.Text.Json.Nodes.JsonNode.Parse(plain)!.AsObject();
        node["eos_token_id"] = new System.Text.Json.Nodes.JsonArray(2, 3);
        node["rope_scaling"] = new System.Text.Json.Nodes.JsonObject { ["rope_type"] = "linear", ["factor"] = 2.0 };
        node["pad_token_id"] = 0;
        node["transformers_version"] = "4.46.0";
        return [plain, Encoding.UTF8.GetBytes(node.ToJsonString())];
    });

    /// <summary>The tiny model saved in 3 shards: (index json, shard files by name, config.json).</summary>
    public (byte[] Index, Dictionary<string, byte[]> Files) ShardedModel()
    {
        using var m = TinyModel();
        var files = SavedModel(m, "F32", maxShardBytes: 2000);
        return (files[SafeTensorsIndex.IndexFile], files);
    }

    public IReadOnlyList<byte[]> Gguf() => Get("gguf", () =>
    {
        using var m = TinyModel(vocab: 258, hidden: 32, intermediate: 64, tied: true);
        var list = new List<byte[]>();
        foreach (var q in new[] { GgufQuant.F16, GgufQuant.Q8_0, GgufQuant.Q4_0 })
        {
            string dir = FuzzPaths.NewTempDir("seed-gguf");
            try
            {
                string path = Path.Combine(dir, "m.gguf");
                GgufExport.Write(m, GgufVocab.EngineBytes(), path, q, "fuzz-seed");
                list.Add(File.ReadAllBytes(path));
            }
            finally { Directory.Delete(dir, recursive: true); }
        }
        return list;
    });

    // ------------------------------------------------------------------ token shards

    /// <summary>A shard input: u32 length of the .bin part, the .bin bytes, then the .idx bytes (one file for the fuzzer).</summary>
    public static byte[] PackShard(byte[] bin, byte[] idx)
    {
        var all = new byte[4 + bin.Length + idx.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(all, (uint)bin.Length);
        bin.CopyTo(all, 4);
        idx.CopyTo(all, 4 + bin.Length);
        return all;
    }

    public IReadOnlyList<byte[]> Shards() => Get("shards", () =>
    {
        var docs = SampleDocuments(6000);
        var bpe = Tokenizer();
        var list = new List<byte[]>();
        foreach (var (vocab, encode) in new (int, Func<string, int[]>)[]
        {
            (256, d => new ByteTokenizer().Encode(d).Where(t => t < 256).ToArray()),     // uint16 ids
            (bpe.VocabSize, bpe.Encode),                                                // uint16, a trained BPE
            (70_000, d => bpe.Encode(d).Select(t => t * 37).ToArray()),                  // int32 ids (vocabulary > 65536)
        })
        {
            string dir = FuzzPaths.NewTempDir("seed-shard");
            try
            {
                string basePath = Path.Combine(dir, "s");
                using (var w = new ShardWriter(basePath, vocab))
                {
                    foreach (var d in docs.Take(6)) w.Add(encode(d.Length > 300 ? d[..300] : d));
                    w.Add([]);   // an empty document
                    w.Complete();
                }
                list.Add(PackShard(File.ReadAllBytes(basePath + ".bin"), File.ReadAllBytes(basePath + ".idx")));
            }
            finally { Directory.Delete(dir, recursive: true); }
        }
        return list;
    });

    // ------------------------------------------------------------------ tokenizers

    BpeTokenizer? tokenizer;

    /// <summary>A byte-level BPE (300 ids) trained on shipped English and Chinese text.</summary>
    public BpeTokenizer Tokenizer()
    {
        lock (gate) return tokenizer ??= BpeTokenizer.Train(SampleDocuments(), new BpeTrainOptions { VocabSize = 300 });
    }

    public IReadOnlyList<byte[]> Tokenizers() => Get("tokenizer.json", () =>
    {
        string dir = FuzzPaths.NewTempDir("seed-tok");
        try
        {
            string path = Path.Combine(dir, "tokenizer.json");
            Tokenizer().Save(path);
            return [File.ReadAllBytes(path), Encoding.UTF8.GetBytes(SentencePieceJson())];
        }
        finally { Directory.Delete(dir, recursive: true); }
    });

    /// <summary>
    /// A small SentencePiece-style tokenizer.json (Llama 2's pipeline: Prepend + Replace normalizers, byte fallback,
    /// fused unk, the Replace/ByteFallback/Fuse/Strip decoder, special added tokens, a Digits + Split pre-tokenizer).
    /// </summary>
    public static string SentencePieceJson()
    {
        var vocab = new List<string> { "<unk>", "<s>", "</s>" };
        for (int b = 0; b < 256; b++) vocab.Add($"<0x{b:X2}>");
        foreach (char c in "▁abcdefghijklmnopqrstuvwxyz,.的是") vocab.Add(c.ToString());
        string[][] merges = [["▁", "t"], ["h", "e"], ["▁t", "he"], ["i", "n"], ["a", "n"], ["▁", "a"], ["e", "r"], ["o", "n"], ["▁a", "n"], ["▁an", "d"]];
        foreach (var m in merges) vocab.Add(m[0] + m[1]);
        var o = new System.Text.Json.Nodes.JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new System.Text.Json.Nodes.JsonArray(
                AddedToken(0, "<unk>"), AddedToken(1, "<s>"), AddedToken(2, "</s>")),
            ["normalizer"] = Json("""{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"},{"type":"NFKC"}]}"""),
            ["pre_tokenizer"] = Json("""{"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},{"type":"Split","pattern":{"Regex":"[,.]"},"behavior":"Isolated","invert":false}]}"""),
            ["post_processor"] = null,
            ["decoder"] = Json("""{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]}"""),
            ["model"] = new System.Text.Json.Nodes.JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = "<unk>",
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = true,
                ["byte_fallback"] = true,
                ["ignore_merges"] = false,
                ["vocab"] = new System.Text.Json.Nodes.JsonObject(vocab.Select((t, i) => KeyValuePair.Create(t, (System.Text.Json.Nodes.JsonNode?)i))),
                ["merges"] = new System.Text.Json.Nodes.JsonArray(merges.Select(m => (System.Text.Json.Nodes.JsonNode?)$"{m[0]} {m[1]}").ToArray()),
            },
        };
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });

        static System.Text.Json.Nodes.JsonNode Json(string s) => System.Text.Json.Nodes.JsonNode.Parse(s)!;
        static System.Text.Json.Nodes.JsonObject AddedToken(int id, string content) => new()
        {
            ["id"] = id,
            ["content"] = content,
            ["single_word"] = false,
            ["lstrip"] = false,
            ["rstrip"] = false,
            ["normalized"] = false,
            ["special"] = true,
        };
    }

    // ------------------------------------------------------------------ checkpoints

    /// <summary>
    /// A training checkpoint's files by relative path: a tiny Llama trained 2 steps on 4 thread ranks as 2 pipeline
    /// stages × 2 data-parallel replicas with ZeRO-1 (so its manifest has stages, per-rank moment slices and a staged
    /// weight save), checkpointed after step 1. Deterministic: the manifest's hashes match the files in every process.
    /// </summary>
    public IReadOnlyDictionary<string, byte[]> Checkpoint()
    {
        lock (gate)
        {
            if (checkpoint != null) return checkpoint;
            string dir = FuzzPaths.NewTempDir("seed-checkpoint");
            try
            {
                string text = Path.Combine(dir, "train.txt");
                File.WriteAllBytes(text, Head("general_en/tinyshakespeare.txt", 20_000));
                var cfg = new TrainConfig
                {
                    Model = new ModelSection { HiddenSize = 16, IntermediateSize = 32, NumLayers = 2, NumHeads = 2, NumKvHeads = 1, MaxPositionEmbeddings = 32 },
                    Data = new DataSection { Train = [text], ValidFraction = 0.05 },
                    Train = new TrainSection { SeqLen = 16, BatchSize = 2, GradAccum = 2, Steps = 2, Seed = 3, EvalBatches = 1 },
                    Output = new OutputSection { Dir = Path.Combine(dir, "out"), CheckpointEvery = 1 },
                    Parallel = new ParallelSection { Pp = 2, Zero = 1, BucketMb = 0.001 },
                };
                cfg.Validate();
                ThreadCommunicator.Run(4, c => new Trainer(cfg, CpuBackend.Instance) { Communicator = c }.Run());
                string ckpt = Checkpoints.List(Path.Combine(dir, "out", "checkpoints")).Single();
                return checkpoint = Directory.GetFiles(ckpt, "*", SearchOption.AllDirectories)
                    .ToDictionary(f => Path.GetRelativePath(ckpt, f).Replace('\\', '/'), File.ReadAllBytes, StringComparer.Ordinal);
            }
            finally { Directory.Delete(dir, recursive: true); }
        }
    }

    Dictionary<string, byte[]>? checkpoint;

    // ------------------------------------------------------------------ configs

    public IReadOnlyList<byte[]> TrainConfigs() => Get("train.toml", () => [Config("configs/tiny_shakespeare.toml"), Config("configs/train_prepared.toml")]);

    /// <summary>The shipped train configs as JSON (ConfigBinder reads both).</summary>
    public IReadOnlyList<byte[]> TrainConfigsJson() => Get("train.json", () =>
    [
        Encoding.UTF8.GetBytes("""
        {"model": {"hidden_size": 128, "intermediate_size": 344, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "max_position_embeddings": 256},
         "data": {"train": ["data:general_en/tinyshakespeare.txt"], "tokenizer": "byte", "valid_fraction": 0.05},
         "train": {"seq_len": 128, "batch_size": 8, "steps": 300, "seed": 1234, "log_every": 20, "eval_every": 100, "eval_batches": 4},
         "optim": {"lr": 3e-3, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1, "clip_norm": 1.0},
         "schedule": {"kind": "cosine", "warmup_steps": 20, "min_lr": 3e-4},
         "output": {"dir": "../runs/tiny_shakespeare", "checkpoint_every": 50, "keep_checkpoints": 2, "save_dtype": "BF16"},
         "parallel": {"zero": 1}}
        """),
    ]);

    public IReadOnlyList<byte[]> RecipeConfigs() => Get("recipe.toml", () =>
        [Config("configs/demo_finance.toml"), .. Directory.GetFiles(Path.Combine(RepoRoot, "configs", "recipes"), "*.toml").Order(StringComparer.Ordinal).Select(File.ReadAllBytes)]);

    public IReadOnlyList<byte[]> PrepareConfigs() => Get("prepare.toml", () => [Config("configs/prepare_demo.toml")]);

    public IReadOnlyList<byte[]> PrepareConfigsJson() => Get("prepare.json", () =>
    [
        Encoding.UTF8.GetBytes("""
        {"output_dir": "prepared", "seed": 7, "invalid_utf8": "drop", "max_documents_per_file": 100, "threads": 2,
         "sources": [{"name": "en", "kind": "pretrain", "files": ["data:general_en/tinyshakespeare.txt"]},
                     {"name": "inst", "kind": "instruction", "files": ["data:instruct/alpaca_en_demo.json"], "quality_filter": false}],
         "cleaning": {"enabled": true, "normalization": "nfkc", "min_chars": 20, "max_chars": 100000, "max_top_ngram_char_fraction": [0.2, 0.18, 0.16]},
         "quality": {"enabled": false, "threshold": 0.5},
         "dedup": {"enabled": true, "permutations": 128, "bands": 16, "rows": 8, "threshold": 0.8},
         "tokenizer": {"vocab_size": 4096, "min_frequency": 2, "special_tokens": ["<|endoftext|>"], "add_tokens": ["利率"]}}
        """),
    ]);
}
