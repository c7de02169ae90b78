using System.CommandLine;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Metrics;
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
        var cmd = new Command("train", "train a Llama model from a config") { config, device, set, resume };
        cmd.SetAction(parse => Cli.Guard(() =>
        {
            var overrides = (parse.GetValue(set) ?? []).ToList();
            if (parse.GetValue(device) is { } d) overrides.Add($"train.device=\"{d}\"");
            var cfg = TrainConfig.Load(parse.GetValue(config)!.FullName, overrides);
            var (backend, comm) = Cli.Distributed(cfg.Train.Device);
            using var _ = comm;
            var trainer = new Trainer(cfg, backend) { Resume = parse.GetValue(resume), Communicator = comm };
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
                    task.Description = FormattableString.Invariant($"step {m.Step}/{m.TotalSteps} loss {m.Loss:F3} {m.TokensPerS:F0} tok/s") +
                        (m.Mfu is { } mfu ? FormattableString.Invariant($" MFU {mfu * 100:F1}%") : "");
                    task.Value = m.Step;
                    if (m.ValidLoss != null) AnsiConsole.MarkupLine(Markup.Escape(FormatStep(m)));
                };
                result = trainer.Run();
            });
        return result!;
    }

    /// <summary>One console line of a step: the metrics.jsonl record's figures (MFU, memory, rank spread, skips, ETA).</summary>
    public static string FormatStep(StepRecord m)
    {
        var line = new System.Text.StringBuilder(FormattableString.Invariant(
            $"step {m.Step,5}/{m.TotalSteps} loss {m.Loss:F4} lr {m.Lr:E2} gnorm {m.GradNorm:F3} {m.TokensPerS,7:F0} tok/s"));
        if (m.TokensPerSPerDevice != m.TokensPerS) line.Append(FormattableString.Invariant($" ({m.TokensPerSPerDevice:F0}/device)"));
        if (m.Mfu is { } mfu) line.Append(FormattableString.Invariant($" MFU {mfu * 100:F1}%"));
        line.Append(FormattableString.Invariant($" host {m.HostMemBytes / (double)(1 << 30):F2} GiB"));
        if (m.DeviceMemBytes is { } dm) line.Append(FormattableString.Invariant($" dev {dm / (double)(1 << 30):F2} GiB"));
        if (m.ComputeSMin is { } cmin && m.ComputeSMax is { } cmax) line.Append(FormattableString.Invariant($" ranks {cmin:F3}-{cmax:F3} s"));
        if (m.SkippedSteps > 0) line.Append(FormattableString.Invariant($" skipped {m.SkippedSteps}"));
        line.Append($" eta {TimeSpan.FromSeconds(m.EtaS):hh\\:mm\\:ss}");
        if (m.ValidLoss is { } v) line.Append(FormattableString.Invariant($" valid {v:F4}"));
        return line.ToString();
    }
}
