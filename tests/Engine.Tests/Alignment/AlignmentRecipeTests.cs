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
    }
}
