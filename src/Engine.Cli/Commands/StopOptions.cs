using System.CommandLine;
using Engine.Training;
using Spectre.Console;

namespace Engine.Cli.Commands;

/// <summary>
/// `--time-limit` and `--stop-after` of train, recipe and demo, and the SIGTERM/SIGINT handler: each stops the run at a
/// step boundary (all ranks together), saves a checkpoint and exits 0 (<see cref="RunControl"/>).
/// </summary>
public sealed class StopOptions
{
    readonly Option<string?> timeLimit = new("--time-limit") { Description = "HH:MM:SS or seconds: save a checkpoint and exit 0 before this wall-clock budget (margin: the slowest step + the save)" };
    readonly Option<int> stopAfter = new("--stop-after") { Description = "save a checkpoint and exit 0 after this many steps (0 = off)", Hidden = true };

    public static StopOptions Create() => new();

    public void AddTo(Command cmd)
    {
        cmd.Options.Add(timeLimit);
        cmd.Options.Add(stopAfter);
    }

    /// <summary>The run's control: limits from the options, the restart-test fault from the environment, the signal
    /// handlers installed (rank 0 announces a signal).</summary>
    public RunControl Control(ParseResult parse, bool lead)
    {
        var limit = parse.GetValue(timeLimit) is { } t ? RunControl.ParseTimeLimit(t) : (TimeSpan?)null;
        int after = parse.GetValue(stopAfter);
        if (after < 0) throw new ArgumentException($"--stop-after must be >= 0 (got {after})");
        var control = RunControl.FromEnvironment(limit, after);
        control.InstallSignalHandlers(lead ? m => AnsiConsole.MarkupLine($"[yellow]{Markup.Escape(m)}[/]") : null);
        return control;
    }
}
