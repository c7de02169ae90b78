using System.Globalization;
using System.Text;
using System.Text.Json;
using Engine.Core;
using Engine.Model;
using Engine.Training;
using Engine.Training.Alignment;
using Engine.Training.Config;
using Engine.Training.Recipes;

namespace Engine.Tests.Alignment;

/// <summary>The alignment phase of a recipe end to end, on a task whose rule is learnable by a tiny model.</summary>
public class AlignmentRecipeTests
{
    static string Data(string rel) => Engine.Data.DataPaths.File(rel);

    static readonly string[] Companies = ["Acme", "Nokia", "Kone", "Fortum", "Elisa", "Wartsila", "Orion", "Sampo", "Neste", "Stora"];

    /// <summary>label,sentence rows where the verb decides the label ("rose" positive, "fell" negative, "held" neutral).</summary>
    static void WriteTask(string path, int rows, ulong seed)
    {
        var rng = new Rng(seed);
        var sb = new StringBuilder("label,sentence\n");
        for (int i = 0; i < rows; i++)
        {
            int k = rng.NextInt(3);
            string verb = k switch { 0 => "fell", 1 => "held", _ => "rose" };
            sb.Append(CultureInfo.InvariantCulture, $"{AnswerRule.SentimentLabels[k]},{Companies[rng.NextInt(Companies.Length)]} {verb} {1 + rng.NextInt(9)}%\n");
        }
        File.WriteAllText(path, sb.ToString());
    }

    static RecipeConfig Config(string dir)
    {
        WriteTask(Path.Combine(dir, "task.csv"), 400, 1);
        WriteTask(Path.Combine(dir, "task_test.csv"), 30, 2);
        return new RecipeConfig
        {
            Name = "alignment-test",
            Seed = 5,
            Tokenizer = new TokenizerSection { Kind = "byte" },
            Model = new ModelSection { HiddenSize = 48, IntermediateSize = 96, NumLayers = 1, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 160 },
            Sources = new()
            {
                ["gen_en"] = new SourceSection { Files = [Data("general_en/wikitext2_test_a.txt")], Domain = "general", Language = "en", MaxDocs = 40 },
                ["task"] = new SourceSection { Kind = "sentiment", Files = [Path.Combine(dir, "task.csv")] },
            },
            Stages =
            [
                new StageSection
                {
                    Name = "tuned", Init = "random", Weights = new() { ["task"] = 0.9, ["gen_en"] = 0.1 }, Steps = 150, BatchSize = 8, SeqLen = 128,
                    Optim = new AdamWOptions { Lr = 5e-3, WeightDecay = 0 }, Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
                },
            ],
            Alignment = new AlignmentSection
            {
                Policy = "tuned",
                Sources = ["task"],
                MaxPrompts = 96,
                HeldOut = 0.25,
                MaxNewTokens = 9,
                SamplesPerModel = 2,
                Reward = new RewardSection { Steps = 40, BatchSize = 8, Optim = new AdamWOptions { Lr = 2e-3, WeightDecay = 0 } },
                Ppo = new PpoSection { Steps = 10, RolloutBatch = 8, MiniBatch = 4, Epochs = 2, Optim = new AdamWOptions { Lr = 2e-3, WeightDecay = 0 }, CriticOptim = new AdamWOptions { Lr = 2e-3, WeightDecay = 0 } },
                Dpo = new DpoSection { Beta = 0.2, Steps = 40, BatchSize = 8, Optim = new AdamWOptions { Lr = 1e-3, WeightDecay = 0 } },
                Eval = new AlignmentEvalSection { MaxPrompts = 24, SentimentFile = Path.Combine(dir, "task_test.csv"), SentimentExamples = 30 },
            },
            Eval = new EvalSection { SeqLen = 64, Batch = 4, PerplexityTokens = 512 },
            Output = new RecipeOutput { Dir = Path.Combine(dir, "run") },
        };
    }

    [Fact]
    public void RecipeAlignsTheTunedModelAndRaisesHeldOutReward()
    {
        using var tmp = new TempDir();
        var cfg = Config(tmp.Path);
        cfg.Validate();
        var runner = new RecipeRunner(cfg, CpuBackend.Instance);
        runner.Run(TestContext.Current.CancellationToken);
        var a = runner.Alignment!;
        string outDir = cfg.Resolve(cfg.Output.Dir);
        var metrics = File.ReadAllLines(Path.Combine(outDir, "alignment", "metrics.jsonl"));
        TestContext.Current.TestOutputHelper?.WriteLine(AlignmentRunner.Table(a) + string.Join("\n", metrics.Where(l => !l.Contains("\"reward\",\"step\"", StringComparison.Ordinal))));
        Assert.True(a.TrainPairs > 0 && a.HeldOutPairs > 0, $"pairs: {a.TrainPairs} train, {a.HeldOutPairs} held out");
        // the reward model learned the rule's ranking on prompts it never saw
        Assert.True(a.RmPairAccuracy > 0.7, $"held-out pair accuracy {a.RmPairAccuracy}");
        var (tuned, ppo, dpo) = (a.Policies["tuned"], a.Policies["ppo"], a.Policies["dpo"]);
        // PPO maximises the reward model's expected score: held-out, on the policy's own samples
        Assert.True(ppo.MeanRewardSampled > tuned.MeanRewardSampled, $"PPO held-out reward {ppo.MeanRewardSampled} vs tuned {tuned.MeanRewardSampled}");
        Assert.True(dpo.MeanRewardSampled > tuned.MeanRewardSampled, $"DPO held-out reward {dpo.MeanRewardSampled} vs tuned {tuned.MeanRewardSampled}");
        Assert.Equal(0.5, tuned.WinRate);
        Assert.True(Math.Abs(tuned.Kl) < 1e-9, $"the tuned model's KL from itself is {tuned.Kl}");
        Assert.True(ppo.Kl > 0 && dpo.Kl > 0, $"KL ppo {ppo.Kl}, dpo {dpo.Kl}");

        // report.json carries the keys a user looks for; the weights and the per-step PPO log are written
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "report.json")));
        var al = doc.RootElement.GetProperty("alignment");
        Assert.Equal(a.RmPairAccuracy, al.GetProperty("rm_pair_accuracy").GetDouble(), 9);
        foreach (var name in new[] { "tuned", "ppo", "dpo" })
        {
            var p = al.GetProperty("policies").GetProperty(name);
            foreach (var key in new[] { "mean_reward", "win_rate", "kl", "sentiment_accuracy", "perplexity" }) Assert.True(p.TryGetProperty(key, out _), $"{name}.{key} missing");
        }
        var ppoLines = metrics.Where(l => l.Contains("\"ppo\"", StringComparison.Ordinal)).ToList();
        Assert.Equal(10, ppoLines.Count);
        foreach (var key in new[] { "reward", "kl", "entropy", "clip_fraction", "response_length" }) Assert.Contains($"\"{key}\"", ppoLines[0], StringComparison.Ordinal);
        foreach (var d in new[] { "reward_model", "ppo", "dpo" })
        {
            // every policy directory is self-contained: the tokenizer, the chat format the tuned stage learned, its name
            string pd = Path.Combine(outDir, "alignment", d);
            Assert.True(File.Exists(Path.Combine(pd, "config.json")), d);
            Assert.IsType<Engine.Data.ByteTokenizer>(Engine.Data.TokenizerFiles.FromDirectory(pd));
            Assert.Equal(Engine.Data.ChatTemplate.Default.ToJinja(),
                System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(pd, "tokenizer_config.json")))!["chat_template"]!.GetValue<string>());
            Assert.Equal($"{Path.GetFileName(outDir)}-{d}", Engine.Model.IO.ModelIO.LoadConfig(pd).NameOrPath);
            Assert.True(File.Exists(Path.Combine(pd, "generation_config.json")), d);
        }
        Assert.True(File.Exists(Path.Combine(outDir, "alignment", "reward_model", ScalarHeadModel.HeadFile)));
        Assert.Contains("Alignment of tuned", File.ReadAllText(Path.Combine(outDir, "report.md")), StringComparison.Ordinal);
    }

    [Fact]
    public void BadAlignmentSectionsAreRefusedByName()
    {
        using var tmp = new TempDir();
        var cfg = Config(tmp.Path);
        cfg.Alignment!.Sources = ["gen_en"];
        Assert.Contains("pretrain source", Assert.Throws<ConfigException>(cfg.Validate).Message, StringComparison.Ordinal);
        cfg = Config(tmp.Path);
        cfg.Alignment!.Policy = "nope";
        Assert.Contains("alignment.policy 'nope'", Assert.Throws<ConfigException>(cfg.Validate).Message, StringComparison.Ordinal);
        cfg = Config(tmp.Path);
        cfg.Alignment!.Dpo.Beta = 0;
        Assert.Contains("alignment.dpo.beta", Assert.Throws<ConfigException>(cfg.Validate).Message, StringComparison.Ordinal);
        // PPO samples through the whole actor: refused with pipeline stages, by name, with the way out
        cfg = Config(tmp.Path);
        cfg.Parallel = new Engine.Training.Parallel.ParallelSection { Pp = 2 };
        var ppo = Assert.Throws<ConfigException>(cfg.Validate).Message;
        Assert.Contains("alignment.ppo: parallel.pp = 2", ppo, StringComparison.Ordinal);
        Assert.Contains("alignment.ppo.steps = 0", ppo, StringComparison.Ordinal);
        cfg.Alignment!.Ppo.Steps = 0;
        cfg.Validate();
    }

    /// <summary>The whole recipe with its alignment phase on 2 thread ranks — data-parallel (PPO included), and as 2
    /// pipeline stages (reward model and DPO through the stages; PPO off) — reports what one process reports: the
    /// reward model's pair accuracies and every policy's evaluation (their weights compared in AlignmentLayoutTests).</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void RecipeWithAlignmentOnTwoRanksReportsWhatOneProcessReports(int pp)
    {
        RecipeConfig Short(string dir, int accum, int stages)
        {
            var cfg = Config(dir);
            cfg.Model.NumLayers = 2;
            var st = cfg.Stages[0];
            (st.Steps, st.BatchSize, st.GradAccum) = (20, 4, accum);
            var al = cfg.Alignment!;
            al.MaxPrompts = 24;
            (al.Reward.Steps, al.Reward.BatchSize, al.Dpo.Steps, al.Dpo.BatchSize) = (6, 4, 6, 4);
            (al.Ppo.Steps, al.Ppo.RolloutBatch, al.Ppo.MiniBatch, al.Ppo.Epochs) = (pp > 1 ? 0 : 2, 4, 2, 1);   // PPO: data-parallel only
            (al.Eval.MaxPrompts, al.Eval.SentimentExamples) = (6, 6);
            cfg.Parallel = new Engine.Training.Parallel.ParallelSection { Pp = stages, Zero = 1, BucketMb = 0.01 };
            cfg.Validate();
            return cfg;
        }
        var ct = TestContext.Current.CancellationToken;
        using var one = new TempDir();
        using var two = new TempDir();
        // the same global batch: 2 micro-batches per step (2 replicas × 1, or 1 pipeline × 2)
        var singleRunner = new RecipeRunner(Short(one.Path, 2, 1), CpuBackend.Instance);
        var single = singleRunner.Run(ct);
        var configs = new[] { Short(two.Path, pp == 1 ? 1 : 2, pp), Short(two.Path, pp == 1 ? 1 : 2, pp) };   // written before the ranks start
        var ranks = Engine.Parallel.ThreadCommunicator.Run(2, c =>
        {
            var runner = new RecipeRunner(configs[c.Rank], CpuBackend.Instance) { Communicator = c };
            return (Reports: runner.Run(ct), Alignment: runner.Alignment!);
        });
        // relative to the figure, or to 1 for scores and log-ratios near zero (rewards are O(1) per answer, averaged)
        static void Close(double a, double b, string what) => Assert.True(Math.Abs(a - b) <= 1e-4 * Math.Max(Math.Abs(a), 1), $"{what}: {b} vs {a}");
        var (x, y) = (singleRunner.Alignment!, ranks[0].Alignment);
        foreach (var (group, ppl) in single[0].Perplexity) Close(ppl, ranks[0].Reports[0].Perplexity[group], $"tuned ppl {group}");
        Assert.Equal((x.TrainPairs, x.HeldOutPairs), (y.TrainPairs, y.HeldOutPairs));
        Close(x.RmPairAccuracy, y.RmPairAccuracy, "reward model held-out pair accuracy");
        Close(x.RmTrainPairAccuracy, y.RmTrainPairAccuracy, "reward model train pair accuracy");
        Close(x.RmHeldOutLoss, y.RmHeldOutLoss, "reward model held-out loss");
        Assert.Equal(x.Policies.Keys.Order(), y.Policies.Keys.Order());
        Assert.Equal(pp == 1 ? 3 : 2, y.Policies.Count);
        foreach (var (name, p) in x.Policies)
        {
            var q = y.Policies[name];
            Close(p.MeanReward, q.MeanReward, $"{name} reward");
            Close(p.MeanRewardSampled, q.MeanRewardSampled, $"{name} sampled reward");
            Close(p.RuleScore, q.RuleScore, $"{name} rule score");
            Close(p.Kl, q.Kl, $"{name} KL");
        }
        // rank 0 alone wrote the alignment's files
        Assert.True(File.Exists(Path.Combine(two.Path, "run", "alignment", "reward_model", ScalarHeadModel.HeadFile)));
    }
}
