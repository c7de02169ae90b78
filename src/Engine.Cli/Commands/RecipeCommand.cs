using System.CommandLine;
using Engine.Training.Recipes;
using Spectre.Console;

namespace Engine.Cli.Commands;

/// <summary>`engine recipe --config x.toml` runs any recipe; `engine demo` runs the shipped finance demo.</summary>
public static class RecipeCommand
{
    public const string DemoConfig = "configs/demo_finance.toml";

    public static Command Create()
    {
        var config = new Option<FileInfo>("--config", "-c") { Description = "recipe TOML/JSON", Required = true };
        var set = new Option<string[]>("--set") { Description = "override a key, e.g. output.dir=runs/x (relative to the working directory) or eval.max_examples=50 (stage keys: use --scale)", AllowMultipleArgumentsPerToken = true };
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var scale = new Option<double>("--scale") { Description = "multiply every stage's steps (e.g. 0.1 for a smoke run)", DefaultValueFactory = _ => 1.0 };
        var resume = ResumeOption();
        var peak = PeakOption.Create();
        var stop = StopOptions.Create();
        var cmd = new Command("recipe", "run a multi-stage domain-adaptation recipe and its evaluation") { config, set, device, scale, resume, peak };
        stop.AddTo(cmd);
        cmd.SetAction(p => Cli.Guard(() =>
        {
            PeakOption.Apply(p, peak);
            return Run(p.GetValue(config)!.FullName, p.GetValue(set) ?? [], p.GetValue(device)!, p.GetValue(scale), p.GetValue(resume), stop, p);
        }));
        return cmd;
    }

    public static Command CreateDemo()
    {
        var set = new Option<string[]>("--set") { Description = "override a key of the demo recipe (e.g. output.dir=runs/x, relative to the working directory)", AllowMultipleArgumentsPerToken = true };
        var scale = new Option<double>("--scale") { Description = "multiply every stage's steps (e.g. 0.1 for a smoke run)", DefaultValueFactory = _ => 1.0 };
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var resume = ResumeOption();
        var peak = PeakOption.Create();
        var stop = StopOptions.Create();
        var cmd = new Command("demo", "the finance demo: base → naive → mixed → hybrid-tuning on the shipped data, one comparison table") { set, scale, device, resume, peak };
        stop.AddTo(cmd);
        cmd.SetAction(p => Cli.Guard(() =>
        {
            PeakOption.Apply(p, peak);
            string path = FindDemo();
            return Run(path, p.GetValue(set) ?? [], p.GetValue(device)!, p.GetValue(scale), p.GetValue(resume), stop, p);
        }));
        return cmd;
    }

    static Option<string?> ResumeOption() => new("--resume")
    {
        Description = "continue a stopped run exactly: 'latest' or 'auto' (finished stages kept, the current one from its newest checkpoint — auto skips damaged ones) or a stage checkpoint directory",
    };

    static string FindDemo()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var d = new DirectoryInfo(start); d != null; d = d.Parent)
            {
                var p = Path.Combine(d.FullName, DemoConfig);
                if (File.Exists(p)) return p;
            }
        throw new FileNotFoundException($"{DemoConfig} not found above {Directory.GetCurrentDirectory()}");
    }

    static int Run(string path, IEnumerable<string> overrides, string device, double scale, string? resume, StopOptions stop, ParseResult parse)
    {
        var cfg = RecipeConfig.Load(path, overrides);
        if (scale != 1.0)
        {
            if (!(scale > 0)) throw new ArgumentException($"--scale must be positive (got {scale})");
            foreach (var s in cfg.Stages) s.Steps = Math.Max(1, (int)Math.Round(s.Steps * scale));
            if (cfg.Alignment is { } al)
                (al.Reward.Steps, al.Ppo.Steps, al.Dpo.Steps) = (Math.Max(1, (int)Math.Round(al.Reward.Steps * scale)), al.Ppo.Steps == 0 ? 0 : Math.Max(1, (int)Math.Round(al.Ppo.Steps * scale)), Math.Max(1, (int)Math.Round(al.Dpo.Steps * scale)));
        }
        var (backend, comm) = Cli.Distributed(device);
        using var _ = comm;
        using var control = stop.Control(parse, comm.Rank == 0);
        var runner = new RecipeRunner(cfg, backend)
        {
            Log = m => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(m)}[/]"),
            Communicator = comm,
            Resume = resume,
            Control = control,
        };
        // the whole run's progress: every stage's planned steps, seconds per step and per evaluation measured so far
        var progress = new RecipeProgress(cfg);
        runner.OnStageDone = r => progress.StageFinished(r.TrainSeconds, r.EvalSeconds);
        runner.OnStep = (stage, m) =>
        {
            if (m.Step % 25 == 0 || m.Step == m.TotalSteps)
                Console.WriteLine($"[{stage}] " + TrainCommand.FormatStep(m) + " | " + progress.Describe(m.Step, m.ElapsedS) +
                    (m.SourceLoss is { Count: > 0 } sl ? "  " + string.Join(" ", sl.OrderBy(k => k.Key).Select(k => $"{k.Key}:{k.Value:F2}")) : ""));
        };
        var wall = System.Diagnostics.Stopwatch.StartNew();
        if (comm.Rank == 0) Console.WriteLine($"output: {cfg.Resolve(cfg.Output.Dir)}");
        if (comm.Rank == 0)
            Console.WriteLine(Engine.Data.DataPaths.TryFind() is { } data ? $"data: names resolve under {data}"
                : $"data: names have no data folder (no data/{Engine.Data.DataPaths.SourcesFile} above the binary or here, {Engine.Data.DataPaths.EnvironmentVariable} unset or missing)");
        var reports = Cli.OnRank(comm, () => runner.Run());
        if (comm.Rank != 0) return 0;
        if (runner.StoppedReason != null)
        {
            Console.WriteLine($"stopped: {runner.StoppedReason}; checkpoint {control.LastCheckpoint} (continue with --resume latest)");
            return 0;
        }
        Console.WriteLine();
        Console.WriteLine(RecipeReportWriter.Table(reports));
        foreach (var r in reports.Where(r => r.Notes.Count > 0)) Console.WriteLine($"{r.Name}: {string.Join("; ", r.Notes)}");
        if (runner.Alignment is { } alignment) Console.WriteLine(Engine.Training.Alignment.AlignmentRunner.Table(alignment));
        Console.WriteLine($"report, loss curves and weights: {cfg.Resolve(cfg.Output.Dir)}");
        Console.WriteLine($"wall time: {RecipeProgress.Clock(wall.Elapsed.TotalSeconds)} ({wall.Elapsed.TotalSeconds:F0} s: data, tokenizer, every stage's training and evaluation)");
        return 0;
    }
}
