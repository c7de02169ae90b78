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
        var set = new Option<string[]>("--set") { Description = "override a config key: --set train.steps=50 (repeatable; a relative path is relative to the working directory)", AllowMultipleArgumentsPerToken = true };
        var dryRun = new Option<bool>("--dry-run") { Description = "print the per-device memory estimate of the configured layout and the resolved output directory, and exit (refuses a layout that cannot fit)" };
        var profile = new Option<bool>("--profile") { Description = "per-op time, calls and bytes (CPU: Stopwatch per backend op; CUDA: event pairs), NVTX ranges when libnvToolsExt is present; printed at the end and written to output.dir/profile.txt" };
        var resume = new Option<string?>("--resume") { Description = "continue exactly from a checkpoint: a directory, 'latest' (the newest under output.dir/checkpoints) or 'auto' (the newest that validates; a fresh start when none)" };
        var initFrom = new Option<string?>("--init-from") { Description = "start a new run from these weights only (a checkpoint or Hugging Face directory): fresh optimizer, schedule and data" };
        var peak = PeakOption.Create();
        var stop = StopOptions.Create();
        var skip = new Option<string?>("--skip-batches") { Description = "A-B: draw but do not train on the batches of steps A..B (bad data found after a crash)" };
        var cmd = new Command("train", "train a Llama model from a config") { config, device, set, resume, initFrom, skip, dryRun, profile, peak };
        stop.AddTo(cmd);
        cmd.SetAction(parse => Cli.Guard(() =>
        {
            PeakOption.Apply(parse, peak);
            var overrides = (parse.GetValue(set) ?? []).ToList();
            if (parse.GetValue(device) is { } d) overrides.Add($"train.device=\"{d}\"");
            if (parse.GetValue(initFrom) is { } from)
            {
                // --resume auto may join it (a restarted job: the checkpoint wins when there is one)
                if (parse.GetValue(resume) is { } r && r != "auto") throw new ArgumentException("--init-from and --resume exclude each other: --resume continues a run, --init-from starts a new one from its weights");
                if (!Directory.Exists(from)) throw new DirectoryNotFoundException($"--init-from: directory not found: {from}");
                overrides.Add($"model.init_from={System.Text.Json.JsonSerializer.Serialize(Path.GetFullPath(from))}");
            }
            var cfg = TrainConfig.Load(parse.GetValue(config)!.FullName, overrides);
            var (backend, comm) = Cli.Distributed(cfg.Train.Device);
            using var _ = comm;
            using var control = stop.Control(parse, comm.Rank == 0);
            var trainer = new Trainer(cfg, backend) { Resume = parse.GetValue(resume), Communicator = comm, Control = control, SkipBatches = ParseRange(parse.GetValue(skip)) };
            if (parse.GetValue(dryRun))
            {
                string plan = trainer.DryRun(comm.WorldSize);
                if (comm.Rank == 0)
                {
                    Console.WriteLine(plan);
                    // where the run would write, as resolved (paths in the file: its folder; in --set: the working directory)
                    Console.WriteLine($"output: {cfg.Resolve(cfg.Output.Dir)}");
                }
                return 0;
            }
            if (parse.GetValue(profile)) Engine.Core.Profiler.Enabled = true;
            StepRecord? last = null;
            var result = Cli.OnRank(comm, () => RunWithProgress(trainer, cfg, interactive: comm.Rank == 0, onRecord: r => last = r));
            if (comm.Rank != 0) return 0;
            if (result.StoppedReason != null)
            {
                AnsiConsole.MarkupLine($"[yellow]stopped[/]: {Markup.Escape(result.StoppedReason)} after step {result.Steps[^1].Step}; checkpoint: [blue]{Markup.Escape(result.Checkpoint ?? "")}[/] (continue with --resume latest)");
                return 0;
            }
            AnsiConsole.MarkupLine($"[green]done[/]: {result.Steps.Count} steps, final train loss {result.Steps[^1].Loss:F4}" +
                (result.FinalValidLoss is { } v ? $", valid loss {v:F4}" : "") + $", {result.TokensPerSecond:F0} tokens/s on average" +
                (last?.Mfu is { } mfu ? FormattableString.Invariant($", MFU {mfu * 100:F1}%") : ""));
            if (Engine.Core.Profiler.Enabled)
            {
                string report = ProfileSummary(result.Steps.Sum(s => s.StepSeconds), result.Steps.Count, cfg.Model.NumLayers);
                Console.WriteLine(report);
                File.WriteAllText(Path.Combine(result.OutputDir, "profile.txt"), report);
            }
            AnsiConsole.MarkupLine($"weights: [blue]{Markup.Escape(result.WeightsDir)}[/]  metrics: [blue]{Markup.Escape(Path.Combine(result.OutputDir, "metrics.jsonl"))}[/]");
            return 0;
        }));
        return cmd;
    }

    /// <summary>"A-B" or "A" (1-based steps, inclusive).</summary>
    static (int, int)? ParseRange(string? text)
    {
        if (text == null) return null;
        var parts = text.Split('-');
        if (parts.Length is 1 or 2 && int.TryParse(parts[0], out int a) && int.TryParse(parts[^1], out int b) && a >= 1 && b >= a) return (a, b);
        throw new ArgumentException($"--skip-batches '{text}': expected A-B with 1 <= A <= B (steps, 1-based)");
    }

    /// <summary>A live progress bar (loss, tokens/s, ETA) on a terminal; plain log lines when output is redirected.</summary>
    public static TrainResult RunWithProgress(Trainer trainer, TrainConfig cfg, bool interactive = true, Action<StepRecord>? onRecord = null)
    {
        trainer.OnMessage = m => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(m)}[/]");
        if (!interactive || Console.IsOutputRedirected || !AnsiConsole.Profile.Capabilities.Interactive)
        {
            trainer.OnStep = m =>
            {
                onRecord?.Invoke(m);
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
                    onRecord?.Invoke(m);
                    task.Description = FormattableString.Invariant($"step {m.Step}/{m.TotalSteps} loss {m.Loss:F3} {m.TokensPerSCurrent:F0} tok/s (avg {m.TokensPerS:F0})") +
                        (m.MfuCurrent is { } mfu ? FormattableString.Invariant($" MFU {mfu * 100:F1}%") : "");
                    task.Value = m.Step;
                    if (m.ValidLoss != null) AnsiConsole.MarkupLine(Markup.Escape(FormatStep(m)));
                };
                result = trainer.Run();
            });
        return result!;
    }

    /// <summary>The profiler's per-op table and how much of the steps' wall time the ops account for.</summary>
    public static string ProfileSummary(double stepSeconds, int steps = 0, int layers = 0)
    {
        double ops = Engine.Core.Profiler.TotalOpSeconds("step"), all = Engine.Core.Profiler.TotalOpSeconds();
        string launches = Engine.Core.Profiler.LaunchSummary(steps, layers) is { } l ? l + "\n" : "";
        return Engine.Core.Profiler.Report() + launches + FormattableString.Invariant(
            $"backend ops inside the steps {ops:F3} s of {stepSeconds:F3} s step wall time ({ops / Math.Max(stepSeconds, 1e-12):P1}; the rest is host work between ops); {all - ops:F3} s outside the steps (setup, validation, saving)\n") +
            $"NVTX ranges: {(Engine.Core.Nvtx.Available ? "on" : "off (libnvToolsExt.so.1 not found)")}\n";
    }

    /// <summary>One console line of a step: the metrics.jsonl record's figures (current tokens/s over the last steps and
    /// the average, MFU of the current rate, memory, rank spread, skips, ETA).</summary>
    public static string FormatStep(StepRecord m)
    {
        var line = new System.Text.StringBuilder(FormattableString.Invariant(
            $"step {m.Step,5}/{m.TotalSteps} loss {m.Loss:F4} lr {m.Lr:E2} gnorm {m.GradNorm:F3} {m.TokensPerSCurrent,7:F0} tok/s (avg {m.TokensPerS:F0}"));
        if (m.TokensPerSPerDevice != m.TokensPerS) line.Append(FormattableString.Invariant($", {m.TokensPerSPerDevice:F0}/device"));
        line.Append(')');
        if (m.MfuCurrent is { } mfu) line.Append(FormattableString.Invariant($" MFU {mfu * 100:F1}%"));
        line.Append(FormattableString.Invariant($" host {m.HostMemBytes / (double)(1 << 30):F2} GiB"));
        if (m.DeviceMemBytes is { } dm) line.Append(FormattableString.Invariant($" dev {dm / (double)(1 << 30):F2} GiB"));
        if (m.ComputeSMin is { } cmin && m.ComputeSMax is { } cmax) line.Append(FormattableString.Invariant($" ranks {cmin:F3}-{cmax:F3} s"));
        if (m.SkippedSteps > 0) line.Append(FormattableString.Invariant($" skipped {m.SkippedSteps}"));
        line.Append($" eta {TimeSpan.FromSeconds(m.EtaS):hh\\:mm\\:ss}");
        if (m.ValidLoss is { } v) line.Append(FormattableString.Invariant($" valid {v:F4}"));
        return line.ToString();
    }
}
