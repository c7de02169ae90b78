using System.Buffers.Binary;
using Engine.Core;
using Engine.Data;
using Engine.Data.Prepare;
using Engine.Data.Shards;
using Engine.Model.Export;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Eval;
using Engine.Training.Recipes;

namespace Engine.Fuzz;

/// <summary>
/// One reader under test. <see cref="Prepare"/> lays the files that stay fixed in a work directory (the weights beside
/// a fuzzed config.json, …); <see cref="Run"/> writes one input there and reads it the way the engine does, going on
/// to use what was read (every tensor decoded, text encoded and decoded, every document of a shard read).
/// </summary>
public sealed record FuzzTarget(string Name, string Reader, Func<SeedCorpus, IReadOnlyList<byte[]>> Seeds, Action<byte[], string> Run,
    Action<string, SeedCorpus>? Prepare = null);

public static class FuzzPaths
{
    /// <summary>
    /// A new empty directory for one run's files: under /dev/shm when there is one (each input is written to a file
    /// and read back, and a memory file system makes that cheap), else under the system temp folder.
    /// </summary>
    public static string NewTempDir(string tag)
    {
        string root = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        string d = Path.Combine(root, "engine-fuzz", $"{tag}-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(d);
        return d;
    }
}

public static class FuzzTargets
{
    /// <summary>Every reader, by name.</summary>
    public static IReadOnlyList<FuzzTarget> All { get; } =
    [
        new("safetensors", "SafeTensorsFile.Open + every tensor read (bytes, fp32)", s => s.SafeTensors(), (input, dir) =>
        {
            string path = Write(dir, "model.safetensors", input);
            using var f = SafeTensorsFile.Open(path);
            foreach (var e in f.Entries)
            {
                f.ReadBytes(e.Name);
                if (e.DType is "F32" or "BF16" or "F16") f.ReadFloat32(e.Name);
            }
        }),

        new("safetensors-index", "ModelIO.Load of a sharded model with a fuzzed model.safetensors.index.json", s => [s.ShardedModel().Index], (input, dir) =>
        {
            Write(dir, SafeTensorsIndex.IndexFile, input);
            using var m = ModelIO.Load(dir, CpuBackend.Instance);
        }, Prepare: (dir, s) =>
        {
            foreach (var (name, bytes) in s.ShardedModel().Files)
                if (name != SafeTensorsIndex.IndexFile) File.WriteAllBytes(Path.Combine(dir, name), bytes);
        }),

        new("model-config", "ModelIO.Load with a fuzzed config.json beside valid weights", s => s.ModelConfigs(), (input, dir) =>
        {
            Write(dir, ModelIO.ConfigFile, input);
            using var m = ModelIO.Load(dir, CpuBackend.Instance);
        }, Prepare: (dir, s) =>
        {
            using var m = SeedCorpus.TinyModel();
            File.WriteAllBytes(Path.Combine(dir, ModelIO.WeightsFile), SeedCorpus.SavedModel(m, "F32")[ModelIO.WeightsFile]);
        }),

        new("gguf", "GgufFile.Open + every tensor dequantized + GgufExport.Load", s => s.Gguf(), (input, dir) =>
        {
            string path = Write(dir, "model.gguf", input);
            using (var f = GgufFile.Open(path))
                foreach (var t in f.Tensors) f.ReadFloat32(t.Name);
            using var m = GgufExport.Load(path, CpuBackend.Instance);
        }),

        new("shard", "ShardReader.Open (structure; then checksums and token ids) + every document read", s => s.Shards(), (input, dir) =>
        {
            // input = u32 length of the .bin part, the .bin, then the .idx (a length past the end takes everything)
            uint binLen = input.Length >= 4 ? BinaryPrimitives.ReadUInt32LittleEndian(input) : 0;
            var rest = input.AsSpan(Math.Min(4, input.Length));
            int cut = (int)Math.Min(binLen, (uint)rest.Length);
            Write(dir, "s.bin", rest[..cut].ToArray());
            Write(dir, "s.idx", rest[cut..].ToArray());
            string basePath = Path.Combine(dir, "s");
            using (var r = ShardReader.Open(basePath))
                for (int d = 0; d < r.DocumentCount; d++) r.Document(d);
            using var verified = ShardReader.Open(basePath, verifyChecksums: true);
        }),

        new("tokenizer", "BpeTokenizer.Load + encode/decode of mixed text + save and reload", s => s.Tokenizers(), (input, dir) =>
        {
            string path = Write(dir, "tokenizer.json", input);
            var tok = BpeTokenizer.Load(path);
            var ids = tok.Encode(SampleText);
            tok.Decode(ids);
            tok.Decode(Enumerable.Range(0, Math.Min(tok.VocabSize, 400)).ToArray());
            string saved = Path.Combine(dir, "saved.json");
            tok.Save(saved);
            var again = BpeTokenizer.Load(saved);
            if (!again.Encode(SampleText).SequenceEqual(ids))
                throw new FuzzInvariantException($"{path}: the saved tokenizer encodes differently from the loaded one");
        }),

        new("checkpoint", "Checkpoints.Open of a checkpoint with a fuzzed manifest.json + its weights and AdamW moments loaded",
            s => [s.Checkpoint()["manifest.json"]], (input, dir) =>
            {
                Write(dir, "manifest.json", input);
                var loaded = Checkpoints.Open(dir);
                using var model = loaded.LoadModel(CpuBackend.Instance);
                using var dp = DataParallel.Create(model.Store, new SingleRankCommunicator(CpuBackend.Instance));
                using var opt = new AdamW(model, new AdamWOptions(), dp);
                loaded.LoadOptimizer(opt);
            }, Prepare: (dir, s) =>
            {
                foreach (var (name, bytes) in s.Checkpoint())
                    if (name != "manifest.json")
                    {
                        string path = Path.Combine(dir, name);
                        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                        File.WriteAllBytes(path, bytes);
                    }
            }),

        new("train-config", "TrainConfig.Load (TOML)", s => s.TrainConfigs(), (input, dir) => TrainConfig.Load(Write(dir, "run.toml", input))),
        new("train-config-json", "TrainConfig.Load (JSON)", s => s.TrainConfigsJson(), (input, dir) => TrainConfig.Load(Write(dir, "run.json", input))),
        new("recipe-config", "RecipeConfig.Load (TOML)", s => s.RecipeConfigs(), (input, dir) => RecipeConfig.Load(Write(dir, "recipe.toml", input))),
        new("prepare-config", "PrepareConfig.Load (TOML)", s => s.PrepareConfigs(), (input, dir) => PrepareConfig.Load(Write(dir, "prepare.toml", input))),
        new("prepare-config-json", "PrepareConfig.Load (JSON)", s => s.PrepareConfigsJson(), (input, dir) => PrepareConfig.Load(Write(dir, "prepare.json", input))),

        new("documents-txt", "Documents.Read .txt (WikiText articles, text blocks) under each invalid-UTF-8 policy",
            s => s.Get("docs.txt", () => [s.Head("general_en/tinyshakespeare.txt"), s.Head("general_en/wikitext2_valid.txt")]),
            (input, dir) => ReadDocuments(Write(dir, "doc.txt", input), input)),
        new("documents-jsonl", "Documents.Read .jsonl under each invalid-UTF-8 policy",
            s => s.Get("docs.jsonl", () => [s.Head("general_en/c4_demo.jsonl"), s.Head("general_zh/cnews_general.jsonl"), s.Head("instruct/self_instruct_seed_tasks.jsonl")]),
            (input, dir) => ReadDocuments(Write(dir, "doc.jsonl", input), input)),
        new("documents-json", "Documents.Read .json (array of records) under each invalid-UTF-8 policy",
            s => s.Get("docs.json", () => [s.JsonArrayHead("instruct/alpaca_en_demo.json"), s.JsonArrayHead("instruct/alpaca_zh_demo.json")]),
            (input, dir) => ReadDocuments(Write(dir, "doc.json", input), input)),
        new("documents-csv", "Documents.Read .csv (RFC 4180) under each invalid-UTF-8 policy",
            s => s.Get("docs.csv", () => [s.Head("eval/fpb_test.csv", 2000), s.Head("eval/fpb_train.csv", 2000)]),
            (input, dir) => ReadDocuments(Write(dir, "doc.csv", input), input)),
        new("instructions", "Instructions.Read (.json alpaca arrays; .jsonl records and Self-Instruct tasks)",
            s => s.Get("instructions", () => [s.JsonArrayHead("instruct/alpaca_en_demo.json"), s.Head("instruct/self_instruct_seed_tasks.jsonl"), s.Head("instruct/fin_en_formula.jsonl")]),
            (input, dir) =>
            {
                // the seed decides the extension: a JSON array (starts with '[' after whitespace) or JSON lines
                string ext = input.SkipWhile(b => b is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t').FirstOrDefault() == (byte)'[' ? ".json" : ".jsonl";
                Instructions.Read(Write(dir, "inst" + ext, input), new DocumentReadOptions { InvalidUtf8 = Policy(input) }, new DocumentReadStats()).ToList();
            }),
        new("prepare-jsonl-zst", "engine prepare's InputReader on .jsonl.zst (ZstdSharp stream, bounded line reader) under each invalid-UTF-8 policy",
            s => s.Get("prepare.jsonl.zst", () => [Zstd(s.Head("general_en/c4_demo.jsonl")), Zstd(s.Head("general_zh/cnews_general.jsonl"))]),
            (input, dir) => ReadInput(Write(dir, "in.jsonl.zst", input), input, new Engine.Data.Extraction.InputOptions { InvalidUtf8 = Policy(input), MaxRecordBytes = 4096 })),
        new("prepare-parquet", "engine prepare's InputReader on Parquet (Parquet.Net, one text column by row group)",
            s => s.Get("prepare.parquet", () => [Parquet(s.Head("general_en/c4_demo.jsonl"))]),
            (input, dir) => ReadInput(Write(dir, "in.parquet", input), input, new Engine.Data.Extraction.InputOptions())),
        new("prepare-html", "engine prepare's HTML main-content extraction (AngleSharp + SmartReader, tables as Markdown)",
            s => s.Get("prepare.html", () => [System.Text.Encoding.UTF8.GetBytes(HtmlSeed)]),
            (input, dir) => ReadInput(Write(dir, "in.html", input), input, new Engine.Data.Extraction.InputOptions { InvalidUtf8 = Policy(input) })),
        new("prepare-pdf", "engine prepare's PDF text extraction (PdfPig)",
            s => s.Get("prepare.pdf", () => [Pdf()]),
            (input, dir) => ReadInput(Write(dir, "in.pdf", input), input, new Engine.Data.Extraction.InputOptions())),
        new("labeled", "LabeledData.Read (few-shot sets: csv label,sentence or jsonl text,label)",
            s => s.Get("labeled", () => [s.Head("eval/fpb_test.csv", 2000), s.Head("eval/fiqa_sa_test.jsonl", 2000), s.Head("eval/tfns_test.jsonl", 2000)]),
            (input, dir) =>
            {
                string ext = input.FirstOrDefault() == (byte)'{' ? ".jsonl" : ".csv";
                LabeledData.Read(Write(dir, "set" + ext, input), input.Length % 3 == 0 ? ["negative", "neutral", "positive"] : null);
            }),
    ];

    public static FuzzTarget Get(string name) => All.FirstOrDefault(t => t.Name == name)
        ?? throw new ArgumentException($"unknown fuzz target '{name}' (known: {string.Join(", ", All.Select(t => t.Name))})");

    /// <summary>English, Chinese, digits, emoji, special-token text and odd whitespace: what a tokenizer meets.</summary>
    public const string SampleText = "The Fed raised rates by 25 bp in 2023, 利率上调了。 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa! 😀 <s></s><|endoftext|>\t\n  x";

    static string Write(string dir, string name, byte[] bytes)
    {
        string path = Path.Combine(dir, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>The invalid-UTF-8 policy an input is read under (cycles with its length, so every policy is exercised).</summary>
    static InvalidUtf8Policy Policy(byte[] input) => (InvalidUtf8Policy)(input.Length % 3);

    static void ReadInput(string path, byte[] input, Engine.Data.Extraction.InputOptions options)
    {
        var counts = new Engine.Data.Extraction.Counters();
        foreach (var _ in Engine.Data.Extraction.InputReader.Read(new Engine.Data.Extraction.InputPart(path), Engine.Data.Extraction.InputFormat.Auto, options, counts)) { }
    }

    static byte[] Zstd(byte[] raw) => new ZstdSharp.Compressor(3).Wrap(raw).ToArray();

    static byte[] Parquet(byte[] jsonl)
    {
        var texts = System.Text.Encoding.UTF8.GetString(jsonl).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("text").GetString()!).ToArray();
        var field = new global::Parquet.Schema.DataField<string>("text");
        using var ms = new MemoryStream();
        var w = global::Parquet.ParquetWriter.CreateAsync(new global::Parquet.Schema.ParquetSchema(field), ms).GetAwaiter().GetResult();
        foreach (var half in new[] { texts[..(texts.Length / 2)], texts[(texts.Length / 2)..] })
        {
            using var rg = w.CreateRowGroup();
            rg.WriteAsync(field, half, null).GetAwaiter().GetResult();
        }
        w.DisposeAsync().AsTask().GetAwaiter().GetResult();
        return ms.ToArray();
    }

    const string HtmlSeed = """
        <!DOCTYPE html><html><head><title>Results</title><script>var t = 1;</script></head><body>
        <nav><a href="/">Home</a> | <a href="/m">Markets</a></nav>
        <article><h2>Quarterly results</h2><p>Revenue rose twelve percent to 4.2 billion dollars on cloud demand and a recovery in advertising across markets.</p>
        <table><tr><th>Year</th><th>Revenue</th></tr><tr><td>2023</td><td>3.75</td></tr></table>
        <p>The ratio is <math alttext="\frac{a}{b}"><mi>a</mi></math>; margins widened to 31 percent as costs stayed flat while sales grew.</p></article>
        <footer>Cookie settings</footer></body></html>
        """;

    static byte[] Pdf()
    {
        var b = new UglyToad.PdfPig.Writer.PdfDocumentBuilder();
        var font = b.AddStandard14Font(UglyToad.PdfPig.Fonts.Standard14Fonts.Standard14Font.Helvetica);
        var page = b.AddPage(UglyToad.PdfPig.Content.PageSize.A4);
        page.AddText("Net interest income rose in the quarter.", 12, new UglyToad.PdfPig.Core.PdfPoint(50, 750), font);
        page.AddText("Deposits were stable.", 12, new UglyToad.PdfPig.Core.PdfPoint(50, 730), font);
        return b.Build();
    }

    static void ReadDocuments(string path, byte[] input)
    {
        var stats = new DocumentReadStats();
        foreach (var _ in Documents.Read(path, new DocumentReadOptions { InvalidUtf8 = Policy(input), TargetBlockChars = 200 }, stats)) { }
    }
}

/// <summary>A property of a reader broken by an input it accepted (e.g. save + reload changed a tokenizer).</summary>
public sealed class FuzzInvariantException(string message) : Exception(message);
