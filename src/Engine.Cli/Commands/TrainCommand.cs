using System.CommandLine;
using Engine.Training;
using Engine.Training.Config;
using Spectre.Console;

namespace Engine.Cli.Commands;

public static class TrainCommand
{
    public static Command Create()
    {
        var config = new Option<FileInfo>("--config", "-c") { Description = "TOML or JSON run config", Required = true };
        var device = new Option<string?>("--device") { Description = "cpu or cuda (overrides train.device)" };
        var set = new Option<string[]>("--set") { Description = "override a config key: --set train.steps=50 (repeatable)", AllowMultipleArgumentsPerToken = true };
        var resume = new Option<string?>("--resume") { Description = "resume from a checkpoint directory, or 'latest' under output.dir/checkpoints" };
        var dryRun = new Option<bool>("--dry-run") { Description = "print the per-device memory estimate of the configured layout and exit (refuses one that cannot fit)" };
        var cmd = new Command("train", "train a Llama model from a config") { config, device, set, resume, dryRun };
        cmd.SetAction(parse => Cli.Guard(() =>
        {
            var overrides = (parse.GetValue(set) ?? []).ToList();
            if (parse.GetValue(device) is { } d) overrides.Add($"train.device=\"{d}\"");
            var cfg = TrainConfig.Load(parse.GetValue(config)!.FullName, overrides);
            var (backend, comm) = Cli.Distributed(cfg.Train.Device);
            using var _ = comm;
            var trainer = new Trainer(cfg, backend) { Resume = parse.GetValue(resume), Communicator = comm };
            if (parse.GetValue(dryRun))
            {
                string plan = trainer.DryRun(comm.WorldSize);
                if (comm.Rank == 0) Console.WriteLine(plan);
                return 0;
            }
            var result = RunWithProgress(trainer, cfg, interactive: comm.Rank == 0);
            if (comm.Rank != 0) return 0;
            AnsiConsole.MarkupLine($"[green]done[/]: {result.Steps.Count} steps, final train loss {result.Steps[^1].Loss:F4}" +
                (result.FinalValidLoss is { } v ? $", valid loss {v:F4}" : "") + $", {result.TokensPerSecond:F0} tokens/s");
            AnsiConsole.MarkupLine($"weights: [blue]{Markup.Escape(result.WeightsDir)}[/]  metrics: [blue]{Markup.Escape(Path.Combine(result.OutputDir, "metrics.jsonl"))}[/]");
            return 0;
        }));
        return cmd;
    }

    /// <summary>A live progress bar (loss, tokens/s, ETA) on a terminal; plain log lines when output is redirected.</summary>
    public static TrainResult RunWithProgress(Trainer trainer, TrainConfig cfg, bool interactive = true)
    {
        trainer.OnMessage = m => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(m)}[/]");
        if (!interactive || Console.IsOutputRedirected || !AnsiConsole.Profile.Capabilities.Interactive)
        {
            trainer.OnStep = m =>
            {
                if (m.Step % Math.Max(1, cfg.Train.LogEvery) == 0 || m.Step == m.TotalSteps || m.ValidLoss != null)
                    Console.WriteLine(FormatStep(m));
            };
            return trainer.Run();
        }
        TrainResult? result = null;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("training", maxValue: cfg.Train.Steps);
                trainer.OnStep = m =>
                {
                    task.Description = $"step {m.Step}/{m.TotalSteps} loss {m.Loss:F3} {m.TokensPerSecond:F0} tok/s";
                    task.Value = m.Step;
                    if (m.ValidLoss != null) AnsiConsole.MarkupLine(Markup.Escape(FormatStep(m)));
                };
                result = trainer.Run();
            });
        return result!;
    }

    public static string FormatStep(StepMetrics m)
    {
        double eta = m.Step > 0 ? m.ElapsedSeconds / m.Step * (m.TotalSteps - m.Step) : 0;
        return $"step {m.Step,5}/{m.TotalSteps} loss {m.Loss:F4} lr {m.Lr:E2} gnorm {m.GradNorm:F3} {m.TokensPerSecond,7:F0} tok/s eta {TimeSpan.FromSeconds(eta):mm\\:ss}" +
            (m.ValidLoss is { } v ? $" valid {v:F4}" : "");
    }
}
