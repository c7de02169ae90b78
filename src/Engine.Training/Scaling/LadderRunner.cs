using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Data;
using Engine.Parallel;
using Engine.Training.Config;
using Engine.Training.Recipes;

namespace Engine.Training.Scaling;

/// <summary>
/// Trains a ladder's points and collects them. Each point is a one-stage recipe (<see cref="LadderConfig.ToRecipe"/>)
/// run by <see cref="RecipeRunner"/> — so through the one run assembler, on the [parallel] layout — on a group of
/// ladder.ranks_per_point ranks split from the job (<see cref="ICommunicator.Split"/>); groups train different points
/// at once. Work is handed out in chains (with bases: a size's base, then its points; from scratch: one point each),
/// longest first to the least-loaded group, the same on every rank. A Slurm array task takes its share of the chains
/// the same way (<see cref="Share"/>). A finished point's result.json is written atomically; a rerun skips it (after
/// checking it was made with today's settings) and resumes an unfinished point from its checkpoint.
/// </summary>
public sealed class LadderRunner(LadderConfig cfg, IBackend backend)
{
    /// <summary>Messages (rank 0 of the job, and of each group for its points).</summary>
    public Action<string>? Log { get; set; }
    /// <summary>Every training step of a point (rank 0 of its group).</summary>
    public Action<string, Metrics.StepRecord>? OnStep { get; set; }
    public RunControl? Control { get; set; }
    /// <summary>This process's share of a Slurm array (task index, task count); null = every point.</summary>
    public (int Index, int Count)? Share { get; set; }
    /// <summary>Why the ladder stopped before its points finished; null when it did not.</summary>
    public string? StoppedReason { get; private set; }

    public string OutDir => cfg.Resolve(cfg.Output.Dir);
    public string TokenizerFile => Path.Combine(OutDir, "tokenizer.json");
    public string PointDir(LadderPoint p) => Path.Combine(OutDir, "points", p.Id);
    public string ResultPath(LadderPoint p) => Path.Combine(PointDir(p), "result.json");
    /// <summary>A base point's weights (its stage's saved model).</summary>
    string BaseWeights(string size) => Path.Combine(OutDir, "points", $"base_{size}", "stages", LadderConfig.StageName);

    /// <summary>Trains this process's points; on a whole ladder (no <see cref="Share"/>) rank 0 then collects.
    /// Returns the summary (rank 0, whole ladder, finished), else null.</summary>
    public LadderSummary? Run(ICommunicator world)
    {
        var wall = System.Diagnostics.Stopwatch.StartNew();
        int per = cfg.Ladder.RanksPerPoint;
        if (world.WorldSize % per != 0)
            throw new ConfigException($"ladder.ranks_per_point = {per} does not divide the job's {world.WorldSize} rank(s)");
        bool lead = world.Rank == 0;
        if (lead) Directory.CreateDirectory(OutDir);
        world.Barrier();
        string? tokenizer = PrepareTokenizer(world);
        var chains = Chains();
        if (Share is { } share)
        {
            if (share.Count < 1 || share.Index < 0 || share.Index >= share.Count) throw new ArgumentException($"--point {share.Index}/{share.Count}: the index must be in [0, {share.Count})");
            chains = Assign(chains, share.Count)[share.Index];
        }
        int groups = world.WorldSize / per, group = world.Rank / per;
        if (lead) Log?.Invoke($"ladder {cfg.Name}: {chains.Sum(c => c.Count)} point(s) here in {chains.Count} chain(s) over {groups} group(s) of {per} rank(s)" +
            (Share is { } s2 ? $" (Slurm share {s2.Index}/{s2.Count})" : ""));
        using (var sub = world.Split(group, world.Rank))
        {
            foreach (var chain in Assign(chains, groups)[group])
            {
                foreach (var p in chain)
                    if (RunPoint(p, sub, tokenizer) == null) break;
                if (StoppedReason != null) break;
            }
        }
        // one stop anywhere: no collect
        Span<double> stopped = [StoppedReason != null ? 1 : 0];
        world.AllReduce(stopped, ReduceOp.Max);
        if (stopped[0] > 0)
        {
            StoppedReason ??= "another rank group stopped";
            return null;
        }
        world.Barrier();
        if (Share != null || !lead) return null;
        return Collect(wall.Elapsed.TotalSeconds);
    }

    /// <summary>Fits, report, plots and ladder.json from the point files (`--collect`, or the end of a whole run).
    /// Every point must have finished: a missing one is named.</summary>
    public LadderSummary Collect(double wallSeconds = 0)
    {
        var missing = cfg.Points().Where(p => !File.Exists(ResultPath(p))).Select(p => p.Id).ToList();
        if (missing.Count > 0)
            throw new InvalidDataException($"{OutDir}: {missing.Count} point(s) have no result yet: {string.Join(", ", missing.Take(12))}{(missing.Count > 12 ? ", …" : "")} (run the ladder, or its remaining Slurm tasks, first)");
        var results = cfg.Points().Select(p => LadderSummary.ReadPoint(ResultPath(p))).ToList();
        int vocab = Vocabulary();
        var summary = LadderAnalysis.Analyze(cfg, results, vocab) with { WallSeconds = wallSeconds };
        LadderReport.Write(OutDir, summary);
        return summary;
    }

    int Vocabulary() => cfg.Tokenizer.Kind == "byte" ? new ByteTokenizer().VocabSize
        : BpeTokenizer.Load(cfg.Tokenizer.Path != null ? cfg.Resolve(cfg.Tokenizer.Path) : TokenizerFile).VocabSize;

    /// <summary>The ladder's one tokenizer: a BPE trained once by rank 0 on the recipe's pretraining sources (kept across
    /// reruns), a loaded file, or byte-level (null: each point builds it).</summary>
    string? PrepareTokenizer(ICommunicator world)
    {
        if (cfg.Tokenizer.Kind == "byte") return null;
        if (cfg.Tokenizer.Path != null) return cfg.Resolve(cfg.Tokenizer.Path);
        if (world.Rank == 0 && !File.Exists(TokenizerFile))
        {
            var recipe = cfg.ToRecipe(cfg.Points()[0], OutDir, null);
            var sources = cfg.Sources.Where(kv => kv.Value.Kind == "pretrain").ToDictionary(kv => kv.Key, kv => RecipeSources.Load(kv.Key, kv.Value, recipe), StringComparer.Ordinal);
            // trained into a scratch folder and renamed: a killed run never leaves half a tokenizer
            string scratch = Path.Combine(OutDir, ".tokenizer.tmp");
            Directory.CreateDirectory(scratch);
            RecipeTokenizers.Build(recipe, sources, scratch, Log);
            Durable.SyncFile(Path.Combine(scratch, "tokenizer.json"));
            File.Move(Path.Combine(scratch, "tokenizer.json"), TokenizerFile, overwrite: true);
            Durable.SyncDirectory(OutDir);
            Directory.Delete(scratch, recursive: true);
        }
        world.Barrier();
        return TokenizerFile;
    }

    /// <summary>Units of work: with bases, a size's base then its points (they need it); from scratch, each point.</summary>
    List<List<LadderPoint>> Chains()
    {
        var points = cfg.Points();
        if (cfg.Ladder.Init != "base") return points.Select(p => new List<LadderPoint> { p }).ToList();
        return points.GroupBy(p => p.Size).Select(g => g.OrderBy(p => p.Kind == LadderPointKind.Base ? 0 : 1).ToList()).ToList();
    }

    /// <summary>Estimated cost of a point: the engine's training FLOPs (the vocabulary of [model] or the tokenizer's).</summary>
    double Cost(LadderPoint p) => cfg.Shape(p.Size).TrainingFlopsPerToken(cfg.Train.SeqLen) * cfg.Steps(p.Tokens) * cfg.SequencesPerStep * cfg.Train.SeqLen;

    /// <summary>Longest chain first to the least-loaded bin (ties: the lower bin); deterministic.</summary>
    List<List<List<LadderPoint>>> Assign(List<List<LadderPoint>> chains, int bins)
    {
        var result = Enumerable.Range(0, bins).Select(_ => new List<List<LadderPoint>>()).ToList();
        var load = new double[bins];
        foreach (var c in chains.Select((c, i) => (c, i)).OrderByDescending(x => x.c.Sum(Cost)).ThenBy(x => x.i))
        {
            int b = Array.IndexOf(load, load.Min());
            result[b].Add(c.c);
            load[b] += c.c.Sum(Cost);
        }
        return result;
    }

    /// <summary>Trains and evaluates one point on its group (or takes its finished result); null when stopped early.</summary>
    PointResult? RunPoint(LadderPoint p, ICommunicator group, string? tokenizer)
    {
        string dir = PointDir(p), resultPath = ResultPath(p);
        string? baseWeights = cfg.Ladder.Init == "base" && p.Kind != LadderPointKind.Base ? BaseWeights(p.Size) : null;
        var recipe = cfg.ToRecipe(p, dir, baseWeights, tokenizer);
        string settings = Settings(recipe, tokenizer, baseWeights);
        void Say(string m) { if (group.Rank == 0) Log?.Invoke(m); }
        if (File.Exists(resultPath))
        {
            var done = LadderSummary.ReadPoint(resultPath);
            if (done.Settings != settings)
                throw new InvalidDataException($"{resultPath}: made with other settings than this config's for point {p.Id} (the config, data, tokenizer or base changed); remove the file to retrain the point, or use another output.dir");
            Say($"point {p.Id}: finished earlier (general {done.GeneralLoss:F4}, domain {done.DomainLoss:F4})");
            return done;
        }
        var shape = cfg.Shape(p.Size, tokenizer != null ? BpeTokenizer.Load(tokenizer).VocabSize : new ByteTokenizer().VocabSize);
        Say($"point {p.Id}: {shape.ParameterCount():N0} parameters, {cfg.Steps(p.Tokens)} steps, domain ratio {p.Ratio}, lr {p.Lr}" +
            (baseWeights != null ? $", from {Path.GetRelativePath(OutDir, baseWeights)}" : ", from random weights"));
        bool started = Directory.Exists(Path.Combine(dir, "checkpoints")) || Directory.Exists(Path.Combine(dir, "stages"));
        group.Barrier();
        var runner = new RecipeRunner(recipe, backend)
        {
            Communicator = group,
            Resume = started ? "auto" : null,
            Control = Control,
            Log = Log,
            OnStep = (_, r) => OnStep?.Invoke(p.Id, r),
        };
        var report = runner.Run().SingleOrDefault();
        if (runner.StoppedReason != null || report == null)
        {
            StoppedReason = runner.StoppedReason ?? "stopped";
            return null;
        }
        var (general, domain) = cfg.DomainNames;
        double Nll(string k) => report.Perplexity.TryGetValue(k, out var ppl) ? Math.Log(ppl)
            : throw new InvalidDataException($"point {p.Id}: no held-out '{k}' text to evaluate (eval.perplexity_tokens too large for the held-out documents, or no held-out share)");
        long tokens = (long)cfg.Steps(p.Tokens) * cfg.SequencesPerStep * cfg.Train.SeqLen;
        double baseFlops = baseWeights != null ? LadderSummary.ReadPoint(Path.Combine(OutDir, "points", $"base_{p.Size}", "result.json")).Flops : 0;
        var result = new PointResult
        {
            Id = p.Id,
            Kind = p.Kind.ToString().ToLowerInvariant(),
            Size = p.Size,
            Parameters = shape.ParameterCount(),
            NonEmbeddingParameters = shape.NonEmbeddingParameterCount(),
            FlopsPerToken = shape.TrainingFlopsPerToken(cfg.Train.SeqLen),
            Tokens = tokens,
            Steps = cfg.Steps(p.Tokens),
            Ratio = p.Ratio,
            Lr = p.Lr,
            Flops = shape.TrainingFlopsPerToken(cfg.Train.SeqLen) * tokens,
            BaseFlops = baseFlops,
            GeneralLoss = Nll(general),
            DomainLoss = Nll(domain),
            Losses = report.Perplexity.ToDictionary(kv => kv.Key, kv => Math.Log(kv.Value), StringComparer.Ordinal),
            BitsPerByte = report.BitsPerByte.Where(kv => double.IsFinite(kv.Value)).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal),
            TrainSeconds = report.TrainSeconds,
            EvalSeconds = report.EvalSeconds,
            Ranks = group.WorldSize,
            Init = baseWeights != null ? Path.GetRelativePath(OutDir, baseWeights) : "random",
            Settings = settings,
        };
        if (group.Rank == 0) Durable.ReplaceAllText(resultPath, JsonSerializer.Serialize(result, LadderSummary.Json));
        group.Barrier();
        Say($"point {p.Id}: general loss {result.GeneralLoss:F4}, domain loss {result.DomainLoss:F4}, {result.Flops:G3} FLOPs in {result.TrainSeconds:F0} s");
        return result;
    }

    /// <summary>SHA-256 of what determines a point's result: its recipe (model, sources, stage, evaluation, seed — not
    /// the output folder or the layout), the tokenizer's bytes and, continuing a base, the base's settings.</summary>
    string Settings(RecipeConfig recipe, string? tokenizer, string? baseWeights)
    {
        var st = recipe.Stages[0];
        var o = new JsonSerializerOptions { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };
        var text = new StringBuilder();
        text.Append(JsonSerializer.Serialize(new
        {
            recipe.Seed,
            Model = JsonSerializer.Serialize(recipe.Model, o),
            Sources = recipe.Sources.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => new { kv.Key, Section = JsonSerializer.Serialize(kv.Value, o), Files = kv.Value.Files.Select(f => FileStamp(recipe.Resolve(f))) }),
            Eval = JsonSerializer.Serialize(recipe.Eval, o),
            st.Weights,
            st.Steps,
            st.SeqLen,
            st.ZLoss,
            Optim = JsonSerializer.Serialize(st.Optim, o),
            Schedule = JsonSerializer.Serialize(st.Schedule, o),
            SequencesPerStep = cfg.SequencesPerStep,
            Tokenizer = tokenizer != null ? Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(tokenizer))) : recipe.Tokenizer.Kind,
        }, o));
        if (baseWeights != null)
        {
            string baseResult = Path.Combine(Path.GetDirectoryName(Path.GetDirectoryName(baseWeights)!)!, "result.json");
            text.Append(File.Exists(baseResult) ? LadderSummary.ReadPoint(baseResult).Settings : "no base result");
        }
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    static string FileStamp(string path) => File.Exists(path) ? $"{Path.GetFileName(path)} {new FileInfo(path).Length.ToString(CultureInfo.InvariantCulture)}" : $"{path} missing";
}
