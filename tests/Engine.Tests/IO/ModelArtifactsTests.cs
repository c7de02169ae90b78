using System.CommandLine;
using System.Text.Json.Nodes;
using Engine.Cli.Commands;
using Engine.Core;
using Engine.Data;
using Engine.Model;
using Engine.Model.IO;
using Engine.Tests.Model;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Recipes;

namespace Engine.Tests.IO;

/// <summary>
/// Every saved model directory is self-contained (<see cref="ModelArtifacts"/>): tokenizer.json, tokenizer_config.json,
/// generation_config.json and config.json with the tokenizer's BOS/EOS/PAD ids and the run's name, in train's final/
/// and checkpoints, after a reload and re-save, in a serving export; a Hub directory keeps its own files; the CLI
/// uses the directory's tokenizer and refuses another vocabulary by name (unless --force-tokenizer); a fine-tune
/// whose data.tokenizer is not the model's is refused.
/// </summary>
[Collection("console")]
public class ModelArtifactsTests
{
    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var root = new RootCommand("engine");
        root.Subcommands.Add(EvalCommand.Create());
        root.Subcommands.Add(ExportCommand.Create());
        var (err, output) = (new StringWriter(), new StringWriter());
        var (oldErr, oldOut) = (Console.Error, Console.Out);
        Console.SetError(err);
        Console.SetOut(output);
        try { return (Engine.Cli.Cli.Run(root, args), output.ToString(), err.ToString()); }
        finally { Console.SetError(oldErr); Console.SetOut(oldOut); }
    }

    static JsonNode Json(string path) => JsonNode.Parse(File.ReadAllText(path))!;

    static BpeTokenizer SmallBpe() =>
        BpeTokenizer.Train(Documents.Read(DataPaths.File("general_en/wikitext2_test_a.txt")).Take(200), new BpeTrainOptions { VocabSize = 400 });

    static TrainConfig Tiny(string outDir, string tokenizer) => new()
    {
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 1, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
        Data = new DataSection { Train = [DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02, Tokenizer = tokenizer },
        Train = new TrainSection { SeqLen = 32, BatchSize = 2, Steps = 4, Seed = 5, EvalBatches = 1 },
        Optim = new AdamWOptions { Lr = 1e-2 },
        Output = new OutputSection { Dir = outDir, CheckpointEvery = 2 },
    };

    /// <summary>A directory holds the tokenizer's files and ids: a BPE trained by the engine (no BOS), EOS = pad.</summary>
    static void AssertSelfContained(string dir, BpeTokenizer tok, string name)
    {
        Assert.Null(TokenizerFiles.Difference(tok, TokenizerFiles.FromDirectory(dir)!));
        int eos = tok.EosId;
        var tc = Json(Path.Combine(dir, "tokenizer_config.json"));
        Assert.Equal("<|endoftext|>", tc["eos_token"]!.GetValue<string>());
        Assert.Equal("<|endoftext|>", tc["pad_token"]!.GetValue<string>());
        Assert.Null(tc["bos_token"]);
        Assert.False(tc["add_bos_token"]!.GetValue<bool>());
        Assert.Null(tc["chat_template"]);
        var gen = Json(Path.Combine(dir, "generation_config.json"));
        Assert.Equal(eos, gen["eos_token_id"]!.GetValue<int>());
        Assert.Equal(eos, gen["pad_token_id"]!.GetValue<int>());
        Assert.Null(gen["bos_token_id"]);
        var cfg = Json(Path.Combine(dir, "config.json"));
        Assert.True(cfg.AsObject().ContainsKey("bos_token_id") && cfg["bos_token_id"] is null, "config.json must say bos_token_id null, not leave transformers' default 1");
        Assert.Equal(eos, cfg["eos_token_id"]!.GetValue<int>());
        Assert.Equal(eos, cfg["pad_token_id"]!.GetValue<int>());
        Assert.Equal(name, cfg["_name_or_path"]!.GetValue<string>());
    }

    [Fact]
    public void TrainFinalCheckpointsAndReSavesCarryTheTokenizerAndItsIds()
    {
        using var dir = new TempDir();
        var tok = SmallBpe();
        tok.Save(dir.File("tok.json"));
        string run = Path.Combine(dir.Path, "shakespeare_bpe");
        var result = new Trainer(Tiny(run, dir.File("tok.json")), CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        AssertSelfContained(result.WeightsDir, tok, "shakespeare_bpe");
        string ckpt = Checkpoints.List(Path.Combine(run, "checkpoints")).Single();
        AssertSelfContained(ckpt, tok, "shakespeare_bpe");
        Assert.Contains("tokenizer.json", Checkpoints.Open(ckpt).Manifest.Files.Keys);   // hashed with the weights
        // a reloaded model carries them to its next directory
        using (var m = ModelIO.Load(result.WeightsDir, CpuBackend.Instance)) ModelIO.Save(m, dir.File("again"));
        AssertSelfContained(dir.File("again"), tok, "shakespeare_bpe");
        // and so does the serving export
        var (code, _, err) = Run("export", "-m", result.WeightsDir, "-o", dir.File("serve"), "--format", "safetensors");
        Assert.True(code == 0, err);
        AssertSelfContained(dir.File("serve"), tok, "shakespeare_bpe");
        // eval takes the directory's tokenizer by default, and refuses another vocabulary by name unless forced
        string text = dir.File("held.txt");
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("First Citizen: we are accounted poor citizens. ", 20)));
        (code, var output, err) = Run("eval", "-m", result.WeightsDir, "--text", text, "--seq-len", "16", "--max-tokens", "200");
        Assert.True(code == 0, err);
        Assert.Contains("perplexity", output);
        (code, _, err) = Run("eval", "-m", result.WeightsDir, "--text", text, "--tokenizer", "byte");
        Assert.Equal(2, code);
        Assert.Contains("--tokenizer byte is not the model's tokenizer", err);
        Assert.Contains("258 ids against the model's", err);
        Assert.Contains("--force-tokenizer", err);
        Assert.Single(err.Trim().Split('\n'));
        (code, _, err) = Run("eval", "-m", result.WeightsDir, "--text", text, "--tokenizer", "byte", "--force-tokenizer", "--seq-len", "16", "--max-tokens", "200");
        Assert.True(code == 0, err);
        (code, _, err) = Run("export", "-m", result.WeightsDir, "-o", dir.File("x.gguf"), "--tokenizer", "byte");
        Assert.Equal(2, code);
        Assert.Contains("is not the model's tokenizer", err);

        // fine-tuning: data.tokenizer must be the model's own ("model" takes it); another is refused by name
        var ft = Tiny(Path.Combine(dir.Path, "ft"), "byte");
        ft.Model = new ModelSection { InitFrom = result.WeightsDir };
        var e = Assert.Throws<ConfigException>(() => new Trainer(ft, CpuBackend.Instance).Run(TestContext.Current.CancellationToken));
        Assert.Contains("data.tokenizer (byte) is not the tokenizer of the model", e.Message);
        ft.Data.Tokenizer = "model";
        ft.Train.Steps = 1;
        var tuned = new Trainer(ft, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        AssertSelfContained(tuned.WeightsDir, tok, "ft");
    }

    [Fact]
    public void ByteTokenizerModelSaysBos257Eos256()
    {
        using var dir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny() with { VocabSize = 258 }, 1);
        Assert.Equal(1, m.Config.BosTokenId);   // transformers' default until a tokenizer is attached
        RunArtifacts.Attach(m, new ByteTokenizer(), "bytes");
        ModelIO.Save(m, dir.Path);
        var cfg = Json(dir.File("config.json"));
        Assert.Equal(257, cfg["bos_token_id"]!.GetValue<int>());
        Assert.Equal(256, cfg["eos_token_id"]!.GetValue<int>());
        Assert.Equal(257, Json(dir.File("generation_config.json"))["bos_token_id"]!.GetValue<int>());
        Assert.Equal("<|startoftext|>", Json(dir.File("tokenizer_config.json"))["bos_token"]!.GetValue<string>());
        Assert.IsType<ByteTokenizer>(TokenizerFiles.FromDirectory(dir.Path));
    }

    [Fact]
    public void HubDirectoryKeepsItsOwnTokenizerFiles()
    {
        using var dir = new TempDir();
        var tok = SmallBpe();
        string hub = dir.File("hub");
        using (var m = TestModels.Create(TestModels.Tiny() with { VocabSize = tok.VocabSize }, 2)) ModelIO.Save(m, hub);
        tok.Save(Path.Combine(hub, "tokenizer.json"));
        const string tc = "{\n  \"bos_token\": null,\n  \"eos_token\": {\"content\": \"<|endoftext|>\", \"lstrip\": false},\n  \"custom\": 7\n}";
        const string gen = "{\"eos_token_id\": 256, \"temperature\": 0.6}";
        File.WriteAllText(Path.Combine(hub, "tokenizer_config.json"), tc);
        File.WriteAllText(Path.Combine(hub, "generation_config.json"), gen);
        using var hubModel = ModelIO.Load(hub, CpuBackend.Instance);
        RunArtifacts.Attach(hubModel, TokenizerFiles.FromDirectory(hub)!, "tuned");
        ModelIO.Save(hubModel, dir.File("out"));
        Assert.Equal(tc, File.ReadAllText(dir.File("out/tokenizer_config.json")));
        Assert.Equal(gen, File.ReadAllText(dir.File("out/generation_config.json")));
        Assert.Equal(File.ReadAllText(Path.Combine(hub, "tokenizer.json")), File.ReadAllText(dir.File("out/tokenizer.json")));
        // tuned on the engine's chat format: the template is set, the rest of the file kept
        RunArtifacts.Attach(hubModel, TokenizerFiles.FromDirectory(hub)!, "tuned", ChatTemplate.Default);
        ModelIO.Save(hubModel, dir.File("chat"));
        var chat = Json(dir.File("chat/tokenizer_config.json"));
        Assert.Equal(ChatTemplate.Default.ToJinja(), chat["chat_template"]!.GetValue<string>());
        Assert.Equal(7, chat["custom"]!.GetValue<int>());
        Assert.Same(ChatTemplate.Default, ChatTemplate.FromJinja(ModelIO.LoadConfig(dir.File("chat")).Hf!.ChatTemplate));
    }

    [Fact]
    public void RecipeStageFromAModelDirectoryTakesItsTokenizerAndRefusesAnother()
    {
        using var dir = new TempDir();
        var tok = SmallBpe();
        string model = dir.File("pretrained");
        using (var m = TestModels.Create(TestModels.Tiny() with { VocabSize = tok.VocabSize }, 4))
        {
            RunArtifacts.Attach(m, tok, "pretrained");
            ModelIO.Save(m, model);
        }
        RecipeConfig Make(string kind)
        {
            var cfg = new RecipeConfig
            {
                Name = "from a directory",
                Seed = 1,
                Tokenizer = new TokenizerSection { Kind = kind },
                Sources = new() { ["gen_en"] = new SourceSection { Files = [DataPaths.File("general_en/wikitext2_test_a.txt")], MaxDocs = 200 } },
                Stages =
                [
                    new StageSection
                    {
                        Name = "ft", Init = model, Weights = new() { ["gen_en"] = 1 }, Steps = 1, BatchSize = 2, SeqLen = 32,
                        Optim = new AdamWOptions { Lr = 1e-3 }, Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant, MinLr = 0 },
                    },
                ],
                Eval = new EvalSection { SeqLen = 32, Batch = 2, PerplexityTokens = 64, Instruction = false },
                Output = new RecipeOutput { Dir = dir.File(kind) },
            };
            cfg.Validate();
            return cfg;
        }
        // tokenizer.kind defaults to auto: the directory's own tokenizer
        Assert.Equal("auto", new TokenizerSection().Kind);
        var reports = new RecipeRunner(Make("auto"), CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        AssertSelfContained(reports[0].WeightsDir, tok, "auto-ft");
        var e = Assert.Throws<ConfigException>(() => new RecipeRunner(Make("byte"), CpuBackend.Instance).Run(TestContext.Current.CancellationToken));
        Assert.Contains($"stages[ft].init {model} carries another tokenizer", e.Message);
        Assert.Contains("258 ids against the model's", e.Message);
    }
}
