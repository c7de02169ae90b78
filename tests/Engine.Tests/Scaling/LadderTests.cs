using System.Text.Json;
using Engine.Core;
using Engine.Parallel;
using Engine.Tests.Training;
using Engine.Training.Config;
using Engine.Training.Scaling;

namespace Engine.Tests.Scaling;

/// <summary>
/// `engine ladder` end to end on a micro ladder (2 fitted sizes × 3 budgets × 2 ratios + a held-out larger size; tiny
/// models, a few steps, byte tokenizer): the points' results, the fits and the report; the same results and fits on 1
/// rank and on 2 thread ranks (two groups training different points at once); resumed after kill -9 of a child
/// `engine ladder` (finished points skipped, the killed one continued) with the same results as one uninterrupted run.
/// </summary>
public class LadderTests
{
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(5);

    public static string MicroConfig(string dir, string outName, int bootstrap = 20) =>
        WriteConfig(dir, outName, $"""
            name = "micro ladder"
            seed = 7
            [tokenizer]
            kind = "byte"
            [model]
            max_position_embeddings = 64
            tie_word_embeddings = true
            [sources.general_en]
            files = ["data:general_en/wikitext2_valid.txt"]
            domain = "general"
            max_docs = 120
            held_out = 0.1
            [sources.finance_en]
            files = ["data:finance_en/fomc_statements.jsonl"]
            domain = "finance"
            max_docs = 120
            held_out = 0.1
            [ladder]
            general = {"{"} general_en = 1 {"}"}
            domain = {"{"} finance_en = 1 {"}"}
            ratios = [0.2, 0.6]
            tokens = [768, 1536, 3072]
            reference_ratio = 0.2
            [ladder.sizes.s]
            hidden_size = 16
            intermediate_size = 32
            num_layers = 1
            num_heads = 2
            [ladder.sizes.m]
            hidden_size = 32
            intermediate_size = 64
            num_layers = 1
            num_heads = 2
            [ladder.sizes.l]
            hidden_size = 48
            intermediate_size = 96
            num_layers = 1
            num_heads = 2
            [train]
            batch_size = 4
            seq_len = 32
            optim = {"{"} lr = 1e-2, weight_decay = 0.0 {"}"}
            schedule = {"{"} kind = "cosine", warmup_steps = 2, min_lr = 1e-3 {"}"}
            [eval]
            seq_len = 32
            batch = 4
            perplexity_tokens = 384
            [fit]
            bootstrap = {bootstrap}
            [output]
            dir = "{outName}"
            checkpoint_every = 4
            """);

    static string WriteConfig(string dir, string name, string text)
    {
        string path = Path.Combine(dir, name + ".toml");
        File.WriteAllText(path, text);
        return path;
    }

    static Dictionary<string, (double General, double Domain)> Losses(LadderSummary s) =>
        s.Points.ToDictionary(p => p.Id, p => (p.GeneralLoss, p.DomainLoss));

    [Fact]
    public void PointsAreTheGridThenTheHoldoutWhoseSizeNoFitSees()
    {
        using var dir = new TempDir();
        var cfg = LadderConfig.Load(MicroConfig(dir.Path, "out"));
        var points = cfg.Points();
        Assert.Equal(13, points.Count);
        var hold = Assert.Single(points, p => p.Kind == LadderPointKind.Holdout);
        Assert.Equal(("l", 3072L, 0.2), (hold.Size, hold.Tokens, hold.Ratio));
        Assert.DoesNotContain(points, p => p.Size == "l" && p.Kind != LadderPointKind.Holdout);
        Assert.Equal(["s", "m"], cfg.GridSizes);
        // 768 tokens = 6 steps of 4 × 32; the mixture puts the ratio on the domain sources
        Assert.Equal(6, cfg.Steps(768));
        Assert.Equal(new Dictionary<string, double> { ["general_en"] = 0.8, ["finance_en"] = 0.2 }, cfg.Weights(0.2));
        var recipe = cfg.ToRecipe(hold, "x", null);
        Assert.Equal("random", recipe.Stages[0].Init);
        Assert.Equal(24, recipe.Stages[0].Steps);
    }

    [Fact]
    public void BadLaddersAreRefusedByName()
    {
        using var dir = new TempDir();
        string cfg = MicroConfig(dir.Path, "out");
        void Refused(string set, string expect, string? also = null)
        {
            var e = Assert.Throws<ConfigException>(() => LadderConfig.Load(cfg, also == null ? [set] : [set, also]));
            Assert.Contains(expect, e.Message);
        }
        Refused("ladder.reference_ratio=0.5", "ladder.reference_ratio (0.5) must be one of ladder.ratios");
        Refused("ladder.ratios=[0.2, 1.0]", "domain ratio in [0, 1)");
        Refused("ladder.init=\"base\"", "needs a [base] section");
        Refused("ladder.domain={ nope = 1 }", "ladder.domain: unknown source 'nope'");
        Refused("train.batch_size=3", "train.batch_size (3, sequences per step) must be a multiple of the 2 data-parallel replica(s)", "ladder.ranks_per_point=2");
        Refused("ladder.holdout={ size = \"xxl\", tokens = 10 }", "ladder.holdout.size 'xxl' is not one of ladder.sizes");
        Refused("fit.resampling=\"jackknife\"", "fit.resampling must be residuals or cases");
        Refused("ladder.sizes.s.num_heads=3", "ladder.sizes.s: invalid Llama config: hidden_size (16) must be divisible by num_attention_heads (3)");
        Refused("eval.perplexity_tokens=0", "point s_t768");
    }

    [Fact]
    public void TheChosenRatioIsTheBestFeasibleOne()
    {
        // general loss rises with r, domain falls: the constraint binds where general(r) = limit
        double General(double r) => 2 + r;
        double Domain(double r) => 3 - r;
        Assert.Equal(0.5, LadderAnalysis.OptimalRatio(General, Domain, 2.5, 0, 1), 3);
        Assert.Equal(1.0, LadderAnalysis.OptimalRatio(General, Domain, 10, 0, 1), 3);
        Assert.True(double.IsNaN(LadderAnalysis.OptimalRatio(General, Domain, 1.9, 0, 1)));
        // an interior optimum of the domain loss itself wins when feasible
        Assert.Equal(0.3, LadderAnalysis.OptimalRatio(General, r => (r - 0.3) * (r - 0.3), 10, 0, 1), 3);
    }

    [Fact]
    public void MicroLadderRunsEndToEndAndGivesTheSameFitOnOneAndTwoRanks()
    {
        using var dir = new TempDir();
        var one = new LadderRunner(LadderConfig.Load(MicroConfig(dir.Path, "one")), CpuBackend.Instance).Run(new SingleRankCommunicator(CpuBackend.Instance))!;
        string outOne = Path.Combine(dir.Path, "one");
        Assert.Equal(13, one.Points.Count);
        foreach (var f in new[] { LadderReport.SummaryFile, LadderReport.ReportFile, LadderReport.ComputePlot, LadderReport.RatioPlot, "points/l_t3072_r0.2_lr1e-2_holdout/result.json" })
            Assert.True(File.Exists(Path.Combine(outOne, f)), $"{f} missing");
        Assert.All(one.Points, p => Assert.True(p.GeneralLoss > 0 && p.DomainLoss > 0 && p.Flops > 0 && p.Tokens > 0, p.Id));
        // a bigger model on the same tokens costs more FLOPs (the engine's count)
        Assert.True(one.Points.Single(p => p.Kind == "holdout").FlopsPerToken > one.Points.Where(p => p.Kind == "grid").Max(p => p.FlopsPerToken));
        // Chinchilla (6 points at the reference ratio) and D-CPT (12) are fitted; L(C) has 2 points and is refused by name
        Assert.Contains(one.Fits, f => f.Law == "dcpt" && f.Loss == "domain" && f.Skipped == null);
        Assert.Contains(one.Fits, f => f.Law == "chinchilla" && f.Loss == "general" && f.Skipped == null);
        Assert.Contains("needs at least 4 points", one.Fits.First(f => f.Law == "compute").Skipped);
        Assert.Equal(4, one.Validation.Count);
        Assert.All(one.Validation, v => Assert.NotNull(v.Observed));
        Assert.NotNull(one.Ratio);
        var read = LadderSummary.Read(Path.Combine(outOne, LadderReport.SummaryFile));
        Assert.Equal(LadderSummary.CurrentSchema, read.Schema);
        // the dashboard's section finds it under the results folder and draws both charts and the holdout table
        string html = Engine.Observability.Dashboard.LadderSection.Render(dir.Path);
        Assert.Contains("data-chart=\"ladder-ratio\"", html);
        Assert.Contains("data-chart=\"ladder-compute\"", html);
        Assert.Contains("<td>dcpt</td><td>domain</td>", html);

        // two thread ranks: two groups of one rank each train different points at once; every result and fit equal
        var two = ThreadCommunicator.Run(2, comm =>
            new LadderRunner(LadderConfig.Load(MicroConfig(dir.Path, "two")), CpuBackend.Instance).Run(comm), limit: Limit);
        Assert.Null(two[1]);
        var s2 = two[0]!;
        Assert.Equal(Losses(one), Losses(s2));
        Assert.Equal(JsonSerializer.Serialize(one.Fits, LadderSummary.Json), JsonSerializer.Serialize(s2.Fits, LadderSummary.Json));
        Assert.Equal(JsonSerializer.Serialize(one.Validation, LadderSummary.Json), JsonSerializer.Serialize(s2.Validation, LadderSummary.Json));
        Assert.Equal(JsonSerializer.Serialize(one.Ratio, LadderSummary.Json), JsonSerializer.Serialize(s2.Ratio, LadderSummary.Json));

        // a rerun skips every point; a point file made with other settings is refused by name
        var again = new LadderRunner(LadderConfig.Load(MicroConfig(dir.Path, "one")), CpuBackend.Instance) { Log = _ => { } }.Run(new SingleRankCommunicator(CpuBackend.Instance))!;
        Assert.Equal(Losses(one), Losses(again));
        var changed = LadderConfig.Load(MicroConfig(dir.Path, "one"), ["train.optim.weight_decay=0.01"]);
        var e = Assert.Throws<InvalidDataException>(() => new LadderRunner(changed, CpuBackend.Instance).Run(new SingleRankCommunicator(CpuBackend.Instance)));
        Assert.Contains("made with other settings", e.Message);
    }

    [Fact]
    public async Task KillNineThenRerunSkipsFinishedPointsAndEqualsAnUninterruptedLadder()
    {
        using var dir = new TempDir();
        string cfg = MicroConfig(dir.Path, "killed", bootstrap: 5);
        // killed as the fourth point starts (three result files written, the fourth maybe a step or two in)
        int done = 0;
        var killed = await ChildEngine.RunAndKill(["ladder", "-c", cfg], line =>
        {
            if (line.Contains(": general loss", StringComparison.Ordinal)) done++;
            return done >= 3 && line.Contains(" parameters, ", StringComparison.Ordinal);
        }, Limit);
        Assert.True(killed.Killed, "the ladder finished before it could be killed: " + killed.All);
        string outDir = Path.Combine(dir.Path, "killed");
        Assert.False(File.Exists(Path.Combine(outDir, LadderReport.SummaryFile)), "a killed ladder wrote its summary");
        int finished = Directory.GetFiles(Path.Combine(outDir, "points"), "result.json", SearchOption.AllDirectories).Length;
        Assert.InRange(finished, 3, 12);

        var resumed = await ChildEngine.Run(["ladder", "-c", cfg], Limit);
        Assert.True(resumed.ExitCode == 0, resumed.All);
        Assert.Equal(finished, resumed.Stdout.Split('\n').Count(l => l.Contains("finished earlier", StringComparison.Ordinal)));
        var s = LadderSummary.Read(Path.Combine(outDir, LadderReport.SummaryFile));

        var straight = new LadderRunner(LadderConfig.Load(MicroConfig(dir.Path, "straight", bootstrap: 5)), CpuBackend.Instance).Run(new SingleRankCommunicator(CpuBackend.Instance))!;
        Assert.Equal(Losses(straight), Losses(s));
        Assert.Equal(JsonSerializer.Serialize(straight.Fits, LadderSummary.Json), JsonSerializer.Serialize(s.Fits, LadderSummary.Json));
    }
}
