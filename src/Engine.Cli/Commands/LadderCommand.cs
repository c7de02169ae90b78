using System.CommandLine;
using System.Globalization;
using Engine.Training.Scaling;
using Spectre.Console;

namespace Engine.Cli.Commands;

/// <summary>
/// `engine ladder --config ladder.toml`: trains a grid of small runs (sizes × token budgets × domain ratios × learning
/// rates; one point per rank group of the launch), fits the scaling and mixture laws to their held-out losses, checks
/// the fits on the held-out largest point and writes ladder.json, report.md and plots. `--point i/N` (or `--point
/// slurm`) trains one Slurm array task's share; `--collect` fits once every share has finished.
/// </summary>
public static class LadderCommand
{
    public static Command Create()
    {
        var config = new Option<FileInfo>("--config", "-c") { Description = "ladder TOML/JSON", Required = true };
        var set = new Option<string[]>("--set") { Description = "override a key, e.g. output.dir=runs/x or fit.bootstrap=50", AllowMultipleArgumentsPerToken = true };
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var point = new Option<string?>("--point") { Description = "train one share of the points: i/N (share i of N, 0-based) or 'slurm' (SLURM_ARRAY_TASK_ID of the array's task count); collect afterwards with --collect" };
        var collect = new Option<bool>("--collect") { Description = "fit and report from the finished points' files (no training)" };
        var stop = StopOptions.Create();
        var cmd = new Command("ladder", "scaling and mixture laws from a ladder of small runs: predict a large run's loss and choose the domain ratio") { config, set, device, point, collect };
        stop.AddTo(cmd);
        cmd.SetAction(p => Cli.Guard(() => Run(p.GetValue(config)!.FullName, p.GetValue(set) ?? [], p.GetValue(device)!, p.GetValue(point), p.GetValue(collect), stop, p)));
        return cmd;
    }

    /// <summary>"i/N", or "slurm" from the array's environment.</summary>
    public static (int Index, int Count) ParseShare(string text, Func<string, string?>? env = null)
    {
        env ??= Environment.GetEnvironmentVariable;
        if (text == "slurm")
        {
            string? id = env("SLURM_ARRAY_TASK_ID"), count = env("SLURM_ARRAY_TASK_COUNT"), min = env("SLURM_ARRAY_TASK_MIN") ?? "0";
            if (id == null || count == null) throw new ArgumentException("--point slurm: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT are not set (not inside an sbatch --array job)");
            return (int.Parse(id, CultureInfo.InvariantCulture) - int.Parse(min, CultureInfo.InvariantCulture), int.Parse(count, CultureInfo.InvariantCulture));
        }
        var parts = text.Split('/');
        if (parts.Length != 2 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int i) || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 1 || i >= n)
            throw new ArgumentException($"--point '{text}': expected i/N with 0 <= i < N (e.g. 3/16) or 'slurm'");
        return (i, n);
    }

    static int Run(string path, IEnumerable<string> overrides, string device, string? point, bool collect, StopOptions stop, ParseResult parse)
    {
        var cfg = LadderConfig.Load(path, overrides);
        if (collect && point != null) throw new ArgumentException("--collect and --point exclude each other: collect once every share has finished");
        var (backend, comm) = Cli.Distributed(device);
        using var _ = comm;
        using var control = stop.Control(parse, comm.Rank == 0);
        var runner = new LadderRunner(cfg, backend)
        {
            Log = m => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(m)}[/]"),
            Control = control,
            Share = point != null ? ParseShare(point) : null,
            OnStep = (id, m) =>
            {
                if (m.Step % 25 == 0 || m.Step == m.TotalSteps) Console.WriteLine($"[{id}] " + TrainCommand.FormatStep(m));
            },
        };
        LadderSummary? summary;
        if (collect)
        {
            if (comm.Rank != 0) return 0;
            summary = runner.Collect();
        }
        else summary = runner.Run(comm);
        if (comm.Rank != 0) return 0;
        if (runner.StoppedReason != null)
        {
            Console.WriteLine($"stopped: {runner.StoppedReason}; finished points are kept, run the same command again to continue");
            return 0;
        }
        if (summary == null)
        {
            Console.WriteLine($"share {point} finished; when every share has, run: engine ladder -c {path} --collect");
            return 0;
        }
        Console.WriteLine();
        Console.WriteLine(LadderReport.Markdown(summary));
        Console.WriteLine($"ladder.json, report.md and plots: {runner.OutDir}");
        return 0;
    }
}
