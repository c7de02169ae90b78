using System.CommandLine;
using Engine.Observability.Dashboard;

namespace Engine.Cli.Commands;

/// <summary>`engine dashboard`: benchmarks/results/ → one static HTML page, and with --docs the Markdown tables of
/// docs/results/ (Engine.Observability.Dashboard).</summary>
public static class DashboardCommand
{
    public static Command Create()
    {
        var results = new Option<string>("--results") { Description = "results folder (engine.bench/1 files and the older shapes)", DefaultValueFactory = _ => "benchmarks/results" };
        var output = new Option<string?>("--out") { Description = "HTML file to write (default dashboard.html; with --docs only when given)" };
        var metrics = new Option<string?>("--metrics") { Description = "metrics.jsonl for the loss curves (default: the demo-*-metrics.jsonl shipped in the results folder)" };
        var docs = new Option<string?>("--docs") { Description = "also (or only) write the measurement tables as Markdown into this folder (docs/results)" };
        var cmd = new Command("dashboard", "one static HTML page: regressions, tokens/s and MFU per commit, peer ratios, every suite, rooflines, the demo table and loss curves; --docs writes docs/results/*.md")
        {
            results, output, metrics, docs,
        };
        cmd.SetAction(parse => Cli.Guard(() => Execute(parse.GetValue(results)!, parse.GetValue(output), parse.GetValue(metrics), Console.Out, Console.Error, parse.GetValue(docs))));
        return cmd;
    }

    public static int Execute(string resultsDir, string? outPath, string? metricsPath, TextWriter stdout, TextWriter stderr, string? docsDir = null)
    {
        var input = DashboardInput.Load(resultsDir, metricsPath);
        foreach (var s in input.Skipped) stderr.WriteLine($"skipped {Path.Combine(resultsDir, s.File)}: {s.Reason}");
        if (docsDir != null)
            stdout.WriteLine($"wrote {string.Join(", ", ResultsDocs.Write(input, docsDir).Select(Path.GetFileName))} in {docsDir}");
        outPath ??= docsDir == null ? "dashboard.html" : null;
        if (outPath == null) return 0;
        string html = DashboardPage.Render(input, DateTimeOffset.UtcNow);
        if (Path.GetDirectoryName(Path.GetFullPath(outPath)) is { } dir) Directory.CreateDirectory(dir);
        File.WriteAllText(outPath, html);
        var charts = DashboardPage.ChartIds(html);
        stdout.WriteLine($"wrote {outPath}: {input.Runs.Count} result file(s), {charts.Count} chart(s) ({string.Join(", ", charts)})" +
            (input.LossAbsent is { } why ? $"; loss curves {why}" : ""));
        return 0;
    }
}
