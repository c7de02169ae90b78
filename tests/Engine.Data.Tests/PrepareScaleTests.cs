using Engine.Data.Dedup;
using Engine.Data.Prepare;
using Engine.Data.Shards;

namespace Engine.Data.Tests;

/// <summary>
/// engine prepare's staged pipeline: the same outputs at any number of ranks and in any task order, resume after a
/// crash in each phase, and duplicate recall/precision on a generated corpus with planted copies.
/// </summary>
public class PrepareScaleTests
{
    /// <summary>A generated two-source corpus (several units each) plus an instruction source, and its config.</summary>
    internal static (string Config, SyntheticCorpus Corpus) Setup(string dir, string extra = "", int docs = 400, string outDir = "out")
    {
        var corpus = SyntheticCorpusGenerator.Generate(Path.Combine(dir, "corpus"), new SyntheticCorpusOptions { Documents = docs, FilesPerSource = 3, BoilerplateFraction = 0.3, Seed = 5 });
        string cfg = SyntheticCorpusGenerator.Config(Path.Combine(dir, "corpus"), outDir, extraBooks: [DataPaths.File("general_en/wikitext2_valid.txt")],
            instructions: DataPaths.File("instruct/fin_en_formula.jsonl"), extra: extra);
        string path = Path.Combine(dir, outDir + ".toml");
        File.WriteAllText(path, cfg);
        return (path, corpus);
    }

    static readonly string[] Outputs = ["web.bin", "web.idx", "books.bin", "books.idx", "sft.jsonl", "tokenizer.json", "report.json"];

    static void AssertSameOutputs(string a, string b, string what)
    {
        foreach (var name in Outputs)
        {
            byte[] x = File.ReadAllBytes(Path.Combine(a, name)), y = File.ReadAllBytes(Path.Combine(b, name));
            Assert.True(x.AsSpan().SequenceEqual(y), $"{name} differs ({what}): {x.Length} vs {y.Length} bytes");
        }
    }

    static void RunRanks(PrepareConfig cfg, int ranks, ulong? order)
    {
        var errors = new Exception?[ranks];
        var threads = Enumerable.Range(0, ranks).Select(r => new Thread(() =>
        {
            try { PreparePipeline.Run(cfg, new PrepareRunOptions { Group = new FileGroup(r, ranks), Threads = 2, TaskOrderSeed = order, Cancel = TestContext.Current.CancellationToken }); }
            catch (Exception e) { errors[r] = e; }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.All(errors, e => Assert.Null(e));
    }

    [Fact]
    public void One_two_and_four_ranks_in_any_task_order_write_byte_identical_outputs()
    {
        string dir = TestData.TempDir();
        var runs = new (int Ranks, ulong? Order)[] { (1, null), (2, 7), (4, 11) };
        var outs = new List<string>();
        foreach (var (ranks, order) in runs)
        {
            var (path, _) = Setup(dir, outDir: $"out{ranks}");
            var cfg = PrepareConfig.Load(path);
            RunRanks(cfg, ranks, order);
            outs.Add(cfg.OutputDir);
        }
        var report = System.Text.Json.JsonSerializer.Deserialize<PrepareReport>(File.ReadAllText(Path.Combine(outs[0], "report.json")))!;
        Assert.True(report.Units >= 8, $"{report.Units} units: the test needs several per source");
        Assert.True(report.Dedup.Sum(d => d.ExactLocal + d.ExactGlobal) > 10 && report.Dedup.Sum(d => d.NearLocal + d.NearGlobal) > 10, string.Join("\n", report.Dedup));
        Assert.True(report.Dedup.Sum(d => d.ExactGlobal + d.NearGlobal) > 0, "copies across sources are found");
        Assert.True(report.FrequentLines >= 3 && report.Dedup.Sum(d => d.LinesRemoved) > 20, $"{report.FrequentLines} frequent lines");
        for (int i = 1; i < outs.Count; i++) AssertSameOutputs(outs[0], outs[i], $"1 rank vs {runs[i].Ranks} ranks");
        Assert.True(ShardValidator.Validate(Path.Combine(outs[2], "web")).Ok);
        Assert.False(Directory.Exists(Path.Combine(outs[0], "work", "docs")), "spill files are removed after a finished run (keep_work = false)");
    }

    public static TheoryData<string> PhaseNames => [.. PreparePipeline.Phases];

    [Theory]
    [MemberData(nameof(PhaseNames))]
    public void A_crash_in_any_phase_resumes_to_the_uninterrupted_outputs(string phase)
    {
        string dir = TestData.TempDir();
        var (refPath, _) = Setup(dir, docs: 150, outDir: "ref");
        var reference = PrepareConfig.Load(refPath);
        PreparePipeline.Run(reference, null, TestContext.Current.CancellationToken);

        var (path, _) = Setup(dir, docs: 150, outDir: "crash");
        var cfg = PrepareConfig.Load(path);
        int seen = 0;
        var crash = Assert.Throws<IOException>(() => PreparePipeline.Run(cfg, new PrepareRunOptions
        {
            Threads = 1,
            BeforeCommit = (p, _) => { if (p == phase && ++seen == 2 - (phase is "tokenizer" or "report" or "near_local_clusters" or "near_global_clusters" ? 1 : 0)) throw new IOException("crash"); },
            Cancel = TestContext.Current.CancellationToken,
        }));
        Assert.Equal("crash", crash.Message);
        var report = PreparePipeline.Run(cfg, null, TestContext.Current.CancellationToken);
        AssertSameOutputs(reference.OutputDir, cfg.OutputDir, $"resumed after a crash in {phase}");
        Assert.True(report.Tokens > 0);
    }

    [Fact]
    public void Resume_refuses_a_work_folder_made_by_another_config()
    {
        string dir = TestData.TempDir();
        var (path, _) = Setup(dir, docs: 60);
        var cfg = PrepareConfig.Load(path);
        Assert.Throws<IOException>(() => PreparePipeline.Run(cfg, new PrepareRunOptions { BeforeCommit = (_, _) => throw new IOException("crash") }));
        var changed = cfg with { Dedup = cfg.Dedup with { Threshold = 0.7 } };
        var e = Assert.Throws<PrepareException>(() => PreparePipeline.Run(changed, null, TestContext.Current.CancellationToken));
        Assert.Contains("another prepare config", e.Message);
    }

    [Fact]
    public void Planted_duplicates_are_found_with_recall_095_and_precision_099_at_the_threshold()
    {
        // MinHash with 128 permutations estimates J with sd √(J(1−J)/128): 0.027 at J = 0.9, 0.040 at J = 0.7. Copies
        // with J ≥ 0.9 sit 3.7 sd above the 0.8 threshold and must be found; copies with J ≤ 0.7 sit 2.5 sd below it and
        // must be kept; the band between is the estimator's noise, left out of both measures.
        string dir = TestData.TempDir();
        var corpus = SyntheticCorpusGenerator.Generate(Path.Combine(dir, "corpus"), new SyntheticCorpusOptions
        {
            Documents = 1500,
            ExactFraction = 0.1,
            NearFraction = 0.4,
            EditRates = [0.003, 0.01, 0.02, 0.03, 0.15, 0.2, 0.25],
            Seed = 21,
        });
        string F(string p) => p.Replace("\\", "/");
        File.WriteAllText(Path.Combine(dir, "p.toml"), $$"""
            output_dir = "out"
            unit_bytes = 200000
            [[sources]]
            name = "a"
            files = ["{{F(Path.Combine(dir, "corpus"))}}/s0_*.jsonl"]
            [[sources]]
            name = "b"
            files = ["{{F(Path.Combine(dir, "corpus"))}}/s1_*.jsonl"]
            [cleaning]
            enabled = false
            [line_dedup]
            enabled = false
            [dedup]
            permutations = 128
            bands = 16
            rows = 8
            threshold = 0.8
            [tokenizer]
            vocab_size = 300
            train_max_bytes = 200000
            """);
        var cfg = PrepareConfig.Load(Path.Combine(dir, "p.toml"));
        var report = PreparePipeline.Run(cfg, null, TestContext.Current.CancellationToken);
        var tok = BpeTokenizer.Load(report.TokenizerPath);
        var output = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var s in new[] { "a", "b" })
        {
            using var shard = ShardReader.Open(Path.Combine(cfg.OutputDir, s));
            for (int d = 0; d < shard.DocumentCount; d++) output[tok.Decode(shard.Document(d))] = output.GetValueOrDefault(tok.Decode(shard.Document(d))) + 1;
        }
        var positives = corpus.Copies.Where(c => c.Jaccard >= 0.9).ToList();
        var negatives = corpus.Copies.Where(c => c.Jaccard <= 0.7).ToList();
        Assert.True(positives.Count > 300 && negatives.Count > 100 && positives.Count(c => !c.Exact) > 150, $"{positives.Count} positives, {negatives.Count} negatives");
        // per distinct text: copies planted with it (an exact copy shares its original's text) vs copies removed
        var input = new Dictionary<string, int>(StringComparer.Ordinal);
        var planted = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var c in corpus.Copies) input[c.OriginalText] = 1;
        foreach (var c in negatives) input[c.Text] = input.GetValueOrDefault(c.Text) + 1;
        foreach (var c in positives) { input[c.Text] = input.GetValueOrDefault(c.Text) + 1; planted[c.Text] = planted.GetValueOrDefault(c.Text) + 1; }
        long truePos = 0, falsePos = 0;
        foreach (var (text, n) in input)
        {
            int removed = n - output.GetValueOrDefault(text);
            int expected = planted.GetValueOrDefault(text);
            truePos += Math.Min(removed, expected);
            falsePos += Math.Max(0, removed - expected);
        }
        double recall = truePos / (double)positives.Count, precision = truePos / (double)Math.Max(1, truePos + falsePos);
        Assert.True(recall >= 0.95, $"recall {recall:F4} ({truePos} of {positives.Count} copies with J >= 0.9 removed; {string.Join("; ", report.Dedup)})");
        Assert.True(precision >= 0.99, $"precision {precision:F4} ({falsePos} originals or copies with J <= 0.7 removed)");
        TestContext.Current.SendDiagnosticMessage($"recall {recall:F4}, precision {precision:F4}: {positives.Count} positives, {negatives.Count} negatives");
        Assert.True(report.Dedup.Sum(d => d.NearGlobal + d.ExactGlobal) > 0 && report.Dedup.Sum(d => d.NearLocal + d.ExactLocal) > 0);
    }
}
