using Engine.Core;
using Engine.Data;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Recipes;

namespace Engine.Tests.Recipes;

public class RecipeTests
{
    static string Data(string rel) => DataPaths.File(rel);

    static StageSection Stage(string name, string init, Dictionary<string, double> w, int steps = 3) => new()
    {
        Name = name,
        Init = init,
        Weights = w,
        Steps = steps,
        BatchSize = 2,
        SeqLen = 32,
        Optim = new AdamWOptions { Lr = 5e-3 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant, MinLr = 0 },
    };

    static RecipeConfig Tiny(string outDir, string tokenizer = "byte") => new()
    {
        Name = "test",
        Seed = 3,
        Tokenizer = new TokenizerSection { Kind = tokenizer, VocabSize = 400, TrainChars = 60_000, ExpandBy = 20, ExpandSources = ["fin_zh"] },
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 1, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
        Sources = new()
        {
            ["gen_en"] = new SourceSection { Files = [Data("general_en/wikitext2_test_a.txt")], Domain = "general", Language = "en" },
            ["fin_zh"] = new SourceSection { Files = [Data("finance_zh/cnews_finance.jsonl")], Domain = "finance", Language = "zh", MaxDocs = 60 },
            ["fin_inst"] = new SourceSection { Kind = "instruct", Files = [Data("instruct/fin_en_formula.jsonl")], MaxDocs = 50 },
            ["fin_sent"] = new SourceSection { Kind = "sentiment", Files = [Data("eval/fpb_train.csv")], MaxDocs = 50 },
        },
        Stages = [],
        Eval = new EvalSection { SeqLen = 32, Batch = 4, PerplexityTokens = 256, FewShotFile = Data("eval/fpb_test.csv"), FewShotPool = Data("eval/fpb_train.csv"), Shots = 1, MaxExamples = 4 },
        Output = new RecipeOutput { Dir = outDir },
    };

    /// <summary>
    /// The recipe on 2 thread ranks (grad_accum 1, ZeRO-2, its BPE trained by rank 0) against one process (grad_accum 2):
    /// the same global batches, so the stage reports agree within the data-parallel fp32 tolerance (DataParallelTests),
    /// and evaluation split across the ranks scores every held-out window and example once.
    /// </summary>
    [Fact]
    public void HybridRecipeOnTwoRanksEqualsOneProcess()
    {
        RecipeConfig Make(string dir, int accum)
        {
            var cfg = Tiny(dir, tokenizer: "bpe");
            cfg.Stages =
            [
                Stage("base", "random", new() { ["gen_en"] = 1 }),
                Stage("hybrid", "base", new() { ["gen_en"] = 0.3, ["fin_zh"] = 0.3, ["fin_inst"] = 0.2, ["fin_sent"] = 0.2 }),
            ];
            foreach (var st in cfg.Stages) st.GradAccum = accum;
            cfg.Stages[1].EwcLambda = 10; cfg.Stages[1].EwcSource = "gen_en"; cfg.Stages[1].EwcBatches = 2;
            cfg.Parallel = new Engine.Training.Parallel.ParallelSection { Zero = 2 };
            cfg.Validate();
            return cfg;
        }
        using var one = new TempDir();
        using var two = new TempDir();
        var single = new RecipeRunner(Make(one.Path, 2), CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        var ranks = Engine.Parallel.ThreadCommunicator.Run(2, c =>
            new RecipeRunner(Make(two.Path, 1), CpuBackend.Instance) { Communicator = c }.Run(TestContext.Current.CancellationToken));
        Assert.Equal(File.ReadAllText(Path.Combine(one.Path, "tokenizer.json")), File.ReadAllText(Path.Combine(two.Path, "tokenizer.json")));
        foreach (var dist in ranks)
            for (int i = 0; i < single.Count; i++)
            {
                foreach (var (group, ppl) in single[i].Perplexity)
                    Assert.True(Math.Abs(dist[i].Perplexity[group] - ppl) <= 1e-4 * ppl, $"{single[i].Name} {group}: {dist[i].Perplexity[group]} vs {ppl}");
                Assert.Equal(single[i].FewShotCount, dist[i].FewShotCount);
                Assert.Equal(single[i].TokensTrained, dist[i].TokensTrained);
                for (int s = 0; s < single[i].Steps.Count; s++)
                    Assert.Equal(single[i].Steps[s].Loss, dist[i].Steps[s].Loss, 1e-4);
            }
        Assert.True(File.Exists(Path.Combine(two.Path, "report.md")));
        Assert.Equal(File.ReadAllLines(Path.Combine(one.Path, "metrics.jsonl")).Length, File.ReadAllLines(Path.Combine(two.Path, "metrics.jsonl")).Length);
        // the record `engine train` writes too, with the stage, and over two ranks their step-time spread
        var oneRank = File.ReadAllLines(Path.Combine(one.Path, "metrics.jsonl")).Select(l => Engine.Training.Metrics.StepRecord.Parse(l, "one")).ToList();
        var twoRanks = File.ReadAllLines(Path.Combine(two.Path, "metrics.jsonl")).Select(l => Engine.Training.Metrics.StepRecord.Parse(l, "two")).ToList();
        Assert.Equal(single.SelectMany(s => s.Steps.Select(_ => s.Name)), oneRank.Select(r => r.Stage));
        // MFU is there exactly when a peak is pinned (a busy machine without a CPU calibration has none), and each stage's
        // first line says where the peak comes from
        Assert.All(oneRank, r => Assert.True(r.StepSMax is null && (r.Mfu > 0) == (r.MfuPeakFlops > 0) && (r.MfuPeak is not null) == (r.Step == 1) && r.TokensPerSPerDevice == r.TokensPerS, $"{r}"));
        Assert.All(twoRanks, r => Assert.True(r.StepSMin <= r.StepSMax && r.ComputeSMin <= r.ComputeSMax && r.TokensPerSPerDevice * 2 == r.TokensPerS, $"{r}"));
    }

    [Fact]
    public void HybridRecipeRunsStagesAndWritesTheReport()
    {
        using var dir = new TempDir();
        var cfg = Tiny(dir.Path);
        cfg.Stages =
        [
            Stage("base", "random", new() { ["gen_en"] = 1 }),
            Stage("hybrid", "base", new() { ["gen_en"] = 0.3, ["fin_zh"] = 0.3, ["fin_inst"] = 0.2, ["fin_sent"] = 0.2 }),
        ];
        cfg.Stages[1].EwcLambda = 10; cfg.Stages[1].EwcSource = "gen_en"; cfg.Stages[1].EwcBatches = 2;
        cfg.Validate();
        var reports = new RecipeRunner(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        Assert.Equal(["base", "hybrid"], reports.Select(r => r.Name));
        foreach (var r in reports)
        {
            Assert.True(r.Perplexity["general"] > 1 && r.Perplexity["finance"] > 1);
            Assert.True(r.BitsPerByte["general"] > 0 && r.BitsPerByte["finance"] > 0);
            Assert.Equal(4, r.FewShotCount);
            Assert.True(File.Exists(Path.Combine(r.WeightsDir, ModelIO.WeightsFile)));
        }
        // the hybrid stage saw every source of its mixture, with losses logged per source
        var seen = reports[1].Steps.SelectMany(s => s.SourceLosses!.Keys).ToHashSet();
        Assert.Contains("gen_en", seen);
        Assert.Contains(reports[1].Steps, s => s.EwcPenalty > 0);
        Assert.True(File.Exists(Path.Combine(dir.Path, "report.md")));
        Assert.Contains("| hybrid | base |", File.ReadAllText(Path.Combine(dir.Path, "report.md")));
        Assert.True(new FileInfo(Path.Combine(dir.Path, "loss_hybrid.png")).Length > 1000);
    }

    [Fact]
    public void VocabularyExpansionStageOneThenContextExtension()
    {
        using var dir = new TempDir();
        var cfg = Tiny(dir.Path, tokenizer: "bpe");
        cfg.Eval.FewShotFile = null;
        var s1 = Stage("expand_stage1", "random", new() { ["fin_zh"] = 1 });
        s1.ExpandedVocab = true; s1.Trainable = "embeddings_and_head";
        var s2 = Stage("expand_stage2", "expand_stage1", new() { ["fin_zh"] = 1 });
        s2.ExpandedVocab = true;
        var s3 = Stage("long_context", "expand_stage2", new() { ["fin_zh"] = 1 }, steps: 2);
        s3.ExpandedVocab = true; s3.SeqLen = 96; s3.RopeScaling = Engine.Core.RopeScalingKind.Linear; s3.RopeScalingFactor = 2;
        cfg.Stages = [Stage("base", "random", new() { ["gen_en"] = 1 }, steps: 2), s1, s2, s3];
        cfg.Stages[1].Init = "base";
        cfg.Validate();
        var reports = new RecipeRunner(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        Assert.True(reports[1].VocabSize > reports[0].VocabSize, $"{reports[0].VocabSize} → {reports[1].VocabSize}");
        Assert.Contains(reports[1].Notes, n => n.Contains("vocabulary expanded"));
        // stage 1 trained only embeddings and head: every other weight equals the base model's
        using var b = ModelIO.Load(reports[0].WeightsDir, CpuBackend.Instance);
        using var e = ModelIO.Load(reports[1].WeightsDir, CpuBackend.Instance);
        foreach (var (name, t) in b.Parameters)
            if (!Engine.Model.LlamaModel.IsEmbeddingOrHead(name)) Assert.Equal(t.ToArray(), e[name].ToArray());
        using var l = ModelIO.Load(reports[3].WeightsDir, CpuBackend.Instance);
        Assert.Equal(Engine.Core.RopeScalingKind.Linear, l.Config.RopeScaling);
        Assert.Equal(96, l.Config.MaxPositionEmbeddings);
    }

    [Fact]
    public void DataSelectionKeepsTheRequestedFractionOfTheMostSimilarDocuments()
    {
        using var dir = new TempDir();
        var cfg = Tiny(dir.Path);
        var st = Stage("selected", "random", new() { ["fin_zh"] = 1 }, steps: 1);
        st.SelectTop = 0.1; st.SelectSource = "fin_zh";
        cfg.Stages = [st];
        cfg.Eval.MaxExamples = 1;
        var r = new RecipeRunner(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken).Single();
        var note = Assert.Single(r.Notes, n => n.StartsWith("selected", StringComparison.Ordinal));
        Assert.Contains("/57 fin_zh", note); // 60 documents, 3 held out
        Assert.StartsWith("selected 6/", note);
    }

    [Fact]
    public void LossMaskCoversExactlyTheAnswerTokens()
    {
        var tok = new ByteTokenizer();
        var ex = new InstructionExample("Add.", "2+2", "4 exactly");
        var stream = new InstructionStream([ex], tok, 64, 1, name: "inst");
        var batch = new StreamBatches(stream).Next(1, 64);
        var answer = tok.Encode("4 exactly").Append(tok.EosId).ToArray();
        var counted = batch.Targets.Where(t => t != -100).ToArray();
        Assert.Equal(answer, counted);
        // and the counted targets are the last tokens before the padding: the prompt itself is never a target
        string prompt = ChatTemplate.Default.RenderPrompt(ex.Instruction, ex.Input);
        int first = Array.FindIndex(batch.Targets, t => t != -100);
        Assert.Equal(tok.Encode(prompt).Length - 1, first);
    }

    [Fact]
    public void RecipeValidationNamesTheProblem()
    {
        var cfg = Tiny("/tmp/x");
        cfg.Stages = [Stage("a", "nope", new() { ["missing"] = 1 })];
        var e = Assert.Throws<ConfigException>(cfg.Validate);
        Assert.Contains("unknown source 'missing'", e.Message);
        Assert.Contains("init 'nope'", e.Message);
    }

    [Fact]
    public void TheShippedDemoRecipeIsValid()
    {
        string path = FindUp("configs/demo_finance.toml") ?? throw new FileNotFoundException("configs/demo_finance.toml not found above the test binary");
        var cfg = RecipeConfig.Load(path);
        Assert.Equal(4, cfg.Stages.Length);
        foreach (var s in cfg.Sources.Values) Assert.All(s.Files, f => Assert.True(File.Exists(cfg.Resolve(f)), f));
    }

    [Fact]
    public void EveryShippedRecipeConfigIsValid()
    {
        string dir = Path.GetDirectoryName(FindUp("configs/demo_finance.toml")!)!;
        var files = Directory.GetFiles(Path.Combine(dir, "recipes"), "*.toml");
        Assert.True(files.Length >= 4, "configs/recipes/*.toml");
        foreach (var f in files)
        {
            var cfg = RecipeConfig.Load(f);
            Assert.True(cfg.Stages.Length >= 2, f);
            foreach (var s in cfg.Sources.Values) Assert.All(s.Files, x => Assert.True(File.Exists(cfg.Resolve(x)), $"{f}: {x}"));
        }
    }

    static string? FindUp(string rel)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, rel))) return Path.Combine(d.FullName, rel);
        return null;
    }
}
