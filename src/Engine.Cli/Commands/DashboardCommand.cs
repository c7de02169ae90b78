using System.CommandLine;
using Engine.Observability.Dashboard;

namespace Engine.Cli.Commands;

/// <summary>`engine dashboard`: benchmarks/results/ → one static HTML page (Engine.Observability.Dashboard).</summary>
public static class DashboardCommand
{
    public static Command Create()
    {
        var results = new Option<string>("--results") { Description = "results folder (engine.bench/1 files and the older shapes)", DefaultValueFactory = _ => "benchmarks/results" };
        var output = new Option<string>("--out") { Description = "HTML file to write", DefaultValueFactory = _ => "dashboard.html" };
        var metrics = new Option<string?>("--metrics") { Description = "metrics.jsonl for the loss curves (default: beside the newest demo table, or the run its report names)" };
        var cmd = new Command("dashboard", "one static HTML page: tokens/s and MFU per commit, peer ratios, rooflines, the demo table and loss curves")
        {
            results, output, metrics,
        };
        cmd.SetAction(parse => Cli.Guard(() => Execute(parse.GetValue(results)!, parse.GetValue(output)!, parse.GetValue(metrics), Console.Out, Console.Error)));
        return cmd;
    }

    public static int Execute(string resultsDir, string outPath, string? metricsPath, TextWriter stdout, TextWriter stderr)
    {
        var input = DashboardInput.Load(resultsDir, metricsPath);
        foreach (var s in input.Skipped) stderr.WriteLine($"skipped {Path.Combine(resultsDir, s.File)}: {s.Reason}");
        string html = DashboardPage.Render(input, DateTimeOffset.UtcNow);
        if (Path.GetDirectoryName(Path.GetFullPath(outPath)) is { } dir) Directory.CreateDirectory(dir);
        File.WriteAllText(outPath, html);
        var charts = DashboardPage.ChartIds(html);
        stdout.WriteLine($"wrote {outPath}: {input.Runs.Count} result file(s), {charts.Count} chart(s) ({string.Join(", ", charts)})" +
            (input.LossAbsent is { } why ? $"; loss curves {why}" : ""));
        return 0;
    }
}
