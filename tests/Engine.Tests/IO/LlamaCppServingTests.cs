using System.CommandLine;
using System.Text.Json.Nodes;
using Engine.Cli.Commands;
using Engine.Core;
using Engine.Data;
using Engine.Model;
using Engine.Model.Export;
using Engine.Model.IO;
using Engine.Model.Lora;
using Engine.Tests.Model;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Eval;
using Engine.Training.Recipes;

namespace Engine.Tests.IO;

/// <summary>
/// A model as llama.cpp serves it (node-llama-cpp 3.21.1, tools/llamacpp-check/generate.mjs): a hybrid-tuned recipe stage
/// exported by `engine export` answers through node-llama-cpp's chat API — the GGUF's own tokenizer.chat_template,
/// raw text in — with the greedy tokens `engine generate --chat` produces; a LoRA adapter exported as a llama.cpp adapter
/// GGUF (`--format gguf-lora`) loaded beside the base GGUF generates the merged model's greedy tokens. Both with f32
/// weights and an F32 KV cache (logits agree to ~1e-6, LlamaCppParityTests). Skips, saying why, without node-llama-cpp.
/// </summary>
[Collection("console")]
public class LlamaCppServingTests
{
    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var root = new RootCommand("engine");
        root.Subcommands.Add(ExportCommand.Create());
        root.Subcommands.Add(EvalCommand.CreateGenerate());
        var (err, output) = (new StringWriter(), new StringWriter());
        var (oldErr, oldOut) = (Console.Error, Console.Out);
        Console.SetError(err);
        Console.SetOut(output);
        try { return (Engine.Cli.Cli.Run(root, args), output.ToString(), err.ToString()); }
        finally { Console.SetError(oldErr); Console.SetOut(oldOut); }
    }

    static StageSection Stage(string name, string init, Dictionary<string, double> w) => new()
    {
        Name = name,
        Init = init,
        Weights = w,
        Steps = 4,
        BatchSize = 2,
        SeqLen = 48,
        Optim = new AdamWOptions { Lr = 1e-2 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant, MinLr = 0 },
    };

    /// <summary>A two-stage recipe on a trained BPE: base (text), hybrid (text + instructions + sentiment rows).</summary>
    public static RecipeConfig HybridRecipe(string outDir)
    {
        var cfg = new RecipeConfig
        {
            Name = "serving test",
            Seed = 3,
            Tokenizer = new TokenizerSection { Kind = "bpe", VocabSize = 500, TrainChars = 80_000 },
            Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 128 },
            Sources = new()
            {
                ["gen_en"] = new SourceSection { Files = [DataPaths.File("general_en/wikitext2_test_a.txt")], Domain = "general", Language = "en" },
                ["fin_inst"] = new SourceSection { Kind = "instruct", Files = [DataPaths.File("instruct/fin_en_formula.jsonl")], MaxDocs = 50 },
                ["fin_sent"] = new SourceSection { Kind = "sentiment", Files = [DataPaths.File("eval/fpb_train.csv")], MaxDocs = 50 },
            },
            Stages =
            [
                Stage("base", "random", new() { ["gen_en"] = 1 }),
                Stage("hybrid", "base", new() { ["gen_en"] = 0.4, ["fin_inst"] = 0.3, ["fin_sent"] = 0.3 }),
            ],
            Eval = new EvalSection { SeqLen = 32, Batch = 4, PerplexityTokens = 128, Instruction = false },
            Output = new RecipeOutput { Dir = outDir },
        };
        cfg.Validate();
        return cfg;
    }

    [Fact]
    public void HybridTunedStageAnswersThroughLlamaCppChatApiAsEngineGenerate()
    {
        using var dir = new TempDir();
        string run = Path.Combine(dir.Path, "chatrun");
        new RecipeRunner(HybridRecipe(run), CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        string hybrid = Path.Combine(run, "stages", "hybrid"), baseDir = Path.Combine(run, "stages", "base");
        string template = ChatTemplate.Default.ToJinja();
        // the directories carry the tokenizer; the chat template only where the stage tuned on the chat format
        Assert.Equal(template, JsonNode.Parse(File.ReadAllText(Path.Combine(hybrid, "tokenizer_config.json")))!["chat_template"]!.GetValue<string>());
        Assert.Null(JsonNode.Parse(File.ReadAllText(Path.Combine(baseDir, "tokenizer_config.json")))!["chat_template"]);
        Assert.Equal(File.ReadAllText(Path.Combine(run, "tokenizer.json")), File.ReadAllText(Path.Combine(hybrid, "tokenizer.json")));

        var (code, output, err) = Run("export", "-m", hybrid, "-o", dir.File("hybrid.gguf"), "--type", "f32");
        Assert.True(code == 0, err);
        Assert.Contains("chat template", output);
        using (var f = GgufFile.Open(dir.File("hybrid.gguf")))
        {
            Assert.Equal(template, f.Get("tokenizer.chat_template").AsString);
            Assert.Equal("chatrun-hybrid", f.Get("general.name").AsString);
            Assert.Equal("qwen2", f.Get("tokenizer.ggml.pre").AsString);
        }
        if (LlamaCpp.Unavailable is { } why) Assert.Skip(why);

        string[] prompts = [RecipeSources.SentimentInstruction + "\n\nShares of the bank rose 5% after profit beat forecasts.", "What is the formula for return on equity?"];
        using var result = LlamaCpp.Run(new { model = dir.File("hybrid.gguf"), maxTokens = 20, runs = prompts.Select(p => new { chat = p }).ToArray() },
            dir.Path, script: "generate.mjs");
        var outputs = result.RootElement.GetProperty("outputs");
        var tok = TokenizerFiles.FromDirectory(hybrid)!;
        using var m = ModelIO.Load(hybrid, CpuBackend.Instance);
        int generated = 0;
        for (int i = 0; i < prompts.Length; i++)
        {
            var ids = ChatTemplate.Default.EncodeUserMessage(tok, prompts[i]);
            var engine = Generator.Generate(m, ids, new SamplingOptions(20, StopToken: tok.EosId));
            if (engine.Count > 0 && engine[^1] == tok.EosId) engine.RemoveAt(engine.Count - 1);
            var llama = outputs[i].GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToList();
            Assert.True(engine.SequenceEqual(llama), $"prompt {i}: engine {string.Join(" ", engine)} vs llama.cpp chat API {string.Join(" ", llama)} ({result.RootElement.GetProperty("chatWrapper")})");
            (code, output, err) = Run("generate", "-m", hybrid, "--chat", "-p", prompts[i], "--max-new-tokens", "20");
            Assert.True(code == 0, err);
            Assert.Equal(tok.Decode(engine.ToArray()), output.TrimEnd('\n'));
            Assert.Equal(tok.Decode(llama.ToArray()), outputs[i].GetProperty("text").GetString());
            generated += engine.Count;
            TestContext.Current.TestOutputHelper?.WriteLine($"prompt {i} ({result.RootElement.GetProperty("chatWrapper")}): {engine.Count} tokens {System.Text.Json.JsonSerializer.Serialize(tok.Decode(engine.ToArray()))}");
        }
        Assert.True(generated > 0, "both answers were empty: nothing was compared");
        // a model tuned without a chat format is refused --chat, by name
        (code, _, err) = Run("generate", "-m", baseDir, "--chat", "-p", "hi");
        Assert.Equal(2, code);
        Assert.Contains("no chat template", err);
    }

    [Fact]
    public void LoraAdapterGgufBesideTheBaseGeneratesTheMergedModelsTokens()
    {
        using var dir = new TempDir();
        var tok = new ByteTokenizer();
        using (var m = TestModels.Create(new LlamaConfig
        {
            VocabSize = 258,
            HiddenSize = 32,
            IntermediateSize = 64,
            NumLayers = 2,
            NumHeads = 4,
            NumKvHeads = 2,
            MaxPositionEmbeddings = 64,
            InitializerRange = 0.1,
        }, 5))
        {
            RunArtifacts.Attach(m, tok, "lora-base");
            ModelIO.Save(m, dir.File("base"));
            using var lora = LoraAdapters.Attach(m, new LoraConfig { R = 4, Alpha = 8, TargetModules = ["all-linear"] }, 6);
            var rng = new Rng(7);
            foreach (var s in lora.Store.Slots.Where(s => s.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal)))
                CpuBackend.Instance.Upload(s.Tensor, Enumerable.Range(0, (int)s.Numel).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray());
            lora.Save(dir.File("adapter"), dir.File("base"));
        }
        Assert.True(File.Exists(dir.File("adapter/tokenizer.json")));
        foreach (var args in new[]
        {
            new[] { "export", "-m", dir.File("base"), "-o", dir.File("base.gguf"), "--type", "f32" },
            ["export", "-m", dir.File("base"), "--adapter", dir.File("adapter"), "--format", "gguf-lora", "-o", dir.File("adapter.gguf")],
            ["export", "-m", dir.File("base"), "--adapter", dir.File("adapter"), "-o", dir.File("merged.gguf"), "--type", "f32"],
        })
        {
            var (code, _, err) = Run(args);
            Assert.True(code == 0, err);
        }
        using (var f = GgufFile.Open(dir.File("adapter.gguf")))
        {
            Assert.Equal("adapter", f.Get("general.type").AsString);
            Assert.Equal("lora", f.Get("adapter.type").AsString);
            Assert.Equal(8.0, f.Get("adapter.lora.alpha").AsReal);
            Assert.Equal(new long[] { 32, 4 }, f["blk.0.attn_q.weight.lora_a"].Dims);
            Assert.Equal(new long[] { 4, 32 }, f["blk.0.attn_q.weight.lora_b"].Dims);
            Assert.Equal(2 * 2 * 7, f.Tensors.Count);
        }
        // the engine's greedy tokens: base + adapter
        var prompt = tok.Encode("Net interest margin widened to");
        List<int> engine;
        using (var m = ModelIO.Load(dir.File("base"), CpuBackend.Instance))
        using (LoraAdapters.Load(m, dir.File("adapter")))
            engine = Generator.Generate(m, prompt, new SamplingOptions(16));
        if (LlamaCpp.Unavailable is { } why) Assert.Skip(why);
        var runs = new[] { new { ids = prompt } };
        List<int> Tokens(System.Text.Json.JsonDocument d) => d.RootElement.GetProperty("outputs")[0].GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToList();
        using var withAdapter = LlamaCpp.Run(new { model = dir.File("base.gguf"), lora = new[] { dir.File("adapter.gguf") }, maxTokens = 16, runs }, dir.Path, script: "generate.mjs");
        using var merged = LlamaCpp.Run(new { model = dir.File("merged.gguf"), maxTokens = 16, runs }, dir.Path, script: "generate.mjs");
        using var plain = LlamaCpp.Run(new { model = dir.File("base.gguf"), maxTokens = 16, runs }, dir.Path, script: "generate.mjs");
        Assert.Equal(16, Tokens(merged).Count);
        Assert.Equal(Tokens(merged), Tokens(withAdapter));
        Assert.Equal(engine.Take(Tokens(merged).Count), Tokens(merged));
        Assert.NotEqual(Tokens(plain), Tokens(withAdapter));   // the adapter was applied
    }
}
