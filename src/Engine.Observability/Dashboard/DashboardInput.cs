using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Observability.Results;

namespace Engine.Observability.Dashboard;

/// <summary>A results file read into the schema.</summary>
public sealed record LoadedRun(string File, BenchResult Result);

/// <summary>A JSON file in the results folder that is no benchmark result (shown on the page, not dropped silently).</summary>
public sealed record SkippedFile(string File, string Reason);

/// <summary>The newest demo-*.md, as text.</summary>
public sealed record DemoTable(string File, string Markdown);

/// <summary>Training loss per step, one series per stage (a plain `engine train` run has one, named "train").</summary>
public sealed record LossCurves(string File, IReadOnlyList<(string Stage, IReadOnlyList<(double Step, double Loss)> Points)> Stages);

/// <summary>Everything the page is drawn from.</summary>
public sealed record DashboardInput(IReadOnlyList<LoadedRun> Runs, IReadOnlyList<SkippedFile> Skipped, DemoTable? Demo, LossCurves? Loss,
    string? LossAbsent)
{
    /// <summary>The Markdown reports in the results folder (demo-*.md, recipe-*.md), file names in order.</summary>
    public IReadOnlyList<string> Reports { get; init; } = [];
    /// <summary>The folder read (sections that read files of their own, e.g. <see cref="LadderSection"/>).</summary>
    public string? ResultsDir { get; init; }

    /// <summary>
    /// Reads every *.json in <paramref name="resultsDir"/> (engine.bench/1 or a legacy shape; a file of no known shape is
    /// listed as skipped, a broken one is an error), the newest demo-*.md, and the loss curves: <paramref name="metricsPath"/>
    /// when given, else demo-&lt;date&gt;-metrics.jsonl beside the newest table, else the newest demo-*-metrics.jsonl in the
    /// folder. Only the results folder is read: the page is the same on a fresh clone as on the machine that ran the demo.
    /// </summary>
    public static DashboardInput Load(string resultsDir, string? metricsPath = null)
    {
        if (!Directory.Exists(resultsDir)) throw new DirectoryNotFoundException($"results folder {resultsDir} not found");
        var runs = new List<LoadedRun>();
        var skipped = new List<SkippedFile>();
        foreach (string file in Directory.EnumerateFiles(resultsDir, "*.json").Order(StringComparer.Ordinal))
        {
            string json = File.ReadAllText(file);
            JsonObject root;
            try { root = JsonNode.Parse(json) as JsonObject ?? throw new InvalidDataException($"{file}: expected a JSON object"); }
            catch (JsonException e) { throw new InvalidDataException($"{file}: not JSON: {e.Message}", e); }
            if (!BenchResultIO.IsSchemaFile(root) && LegacyResults.ShapeOf(root) is null)
            {
                skipped.Add(new SkippedFile(Path.GetFileName(file), "not an engine.bench result nor a known legacy shape"));
                continue;
            }
            runs.Add(new LoadedRun(Path.GetFileName(file), BenchResultIO.IsSchemaFile(root) ? BenchResultIO.Parse(json, file) : LegacyResults.Convert(root, file)));
        }
        runs.Sort((a, b) => a.Result.Date != b.Result.Date ? a.Result.Date.CompareTo(b.Result.Date) : string.CompareOrdinal(a.File, b.File));

        string? demoMd = Directory.EnumerateFiles(resultsDir, "demo-*.md").Order(StringComparer.Ordinal).LastOrDefault();
        var demo = demoMd is null ? null : new DemoTable(Path.GetFileName(demoMd), File.ReadAllText(demoMd));

        string? metrics = metricsPath;
        if (metrics is not null && !File.Exists(metrics)) throw new FileNotFoundException($"metrics file {metrics} not found", metrics);
        // the demo's metrics ship gzip-compressed (demo-<date>-metrics.jsonl.gz, regen_demo.sh) or plain
        string? beside = demoMd is null ? null : new[] { ".jsonl.gz", ".jsonl" }
            .Select(ext => Path.Combine(Path.GetDirectoryName(demoMd)!, Path.GetFileNameWithoutExtension(demoMd) + "-metrics" + ext)).FirstOrDefault(File.Exists);
        metrics ??= beside ?? Directory.EnumerateFiles(resultsDir, "demo-*-metrics.jsonl*")
            .Where(f => f.EndsWith(".jsonl", StringComparison.Ordinal) || f.EndsWith(".jsonl.gz", StringComparison.Ordinal)).Order(StringComparer.Ordinal).LastOrDefault();
        string? absent = metrics is not null ? null
            : $"absent: no demo-*-metrics.jsonl(.gz) in {resultsDir} (benchmarks/scripts/regen_demo.sh ships one with each demo table; or pass --metrics FILE)";
        return new DashboardInput(runs, skipped, demo, metrics is null ? null : ReadLoss(metrics), absent)
        {
            ResultsDir = resultsDir,
            Reports = Directory.EnumerateFiles(resultsDir, "*.md").Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList(),
        };
    }

    /// <summary>Reads step and loss (and stage, when present) from each line of a metrics.jsonl (or .jsonl.gz); `train`
    /// and `recipe` once spelled keys differently, so keys match case-insensitively.</summary>
    public static LossCurves ReadLoss(string path)
    {
        var byStage = new Dictionary<string, List<(double, double)>>();
        var order = new List<string>();
        int lineNo = 0;
        using var stream = File.OpenRead(path);
        using var reader = new StreamReader(path.EndsWith(".gz", StringComparison.Ordinal) ? new System.IO.Compression.GZipStream(stream, System.IO.Compression.CompressionMode.Decompress) : stream);
        while (NextLine(reader, path) is { } line)
        {
            lineNo++;
            if (line.Trim().Length == 0) continue;
            JsonObject o;
            try { o = JsonNode.Parse(line) as JsonObject ?? throw new InvalidDataException($"{path}:{lineNo}: expected a JSON object"); }
            catch (JsonException e) { throw new InvalidDataException($"{path}:{lineNo}: not JSON: {e.Message}", e); }
            double? step = Field(o, "step"), loss = Field(o, "loss");
            if (step is null || loss is null) throw new InvalidDataException($"{path}:{lineNo}: a metrics line needs numeric \"step\" and \"loss\"");
            string stage = o.FirstOrDefault(kv => kv.Key.Equals("stage", StringComparison.OrdinalIgnoreCase)).Value is JsonValue sv &&
                sv.TryGetValue(out string? s) ? s : "train";
            if (!byStage.TryGetValue(stage, out var list)) { byStage[stage] = list = []; order.Add(stage); }
            list.Add((step.Value, loss.Value));
        }
        if (order.Count == 0) throw new InvalidDataException($"{path}: no metrics lines");
        return new LossCurves(path, order.Select(s => (s, (IReadOnlyList<(double, double)>)byStage[s])).ToList());
    }

    /// <summary>The next line, or null at the end; a damaged gzip stream is one error naming the file.</summary>
    static string? NextLine(StreamReader reader, string path)
    {
        try { return reader.ReadLine(); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{path}: not a readable gzip file: {e.Message}", e); }
    }

    static double? Field(JsonObject o, string name)
    {
        foreach (var (k, v) in o)
            if (k.Equals(name, StringComparison.OrdinalIgnoreCase) && v is JsonValue jv && jv.GetValueKind() == JsonValueKind.Number)
                return LegacyResults.AsDouble(jv);
        return null;
    }

    internal static string Date(DateTimeOffset d) => d.ToUniversalTime().ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
}
