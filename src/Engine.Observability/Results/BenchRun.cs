using System.Globalization;
using System.Text.Json.Nodes;

namespace Engine.Observability.Results;

/// <summary>What one suite of `engine bench` measured: its entries, configuration, method and caveats.</summary>
public sealed record SuiteOutput(IReadOnlyList<BenchEntry> Entries, JsonObject Config, string Method, IReadOnlyList<string>? Notes = null,
    JsonObject? Extra = null);

/// <summary>
/// The one writer behind every `engine bench` suite: stamps machine, commit, date, command and the load the machine
/// was under, writes engine.bench/1 through <see cref="BenchResultIO.Write"/>, and prints one summary table.
/// </summary>
public static class BenchRun
{
    /// <summary>Note recorded when the caller says the machine is shared (timings are then not for reporting).</summary>
    public const string SharedNote = "machine shared with other builds/tests while measuring: figures are indicative only";

    /// <summary>The 1-minute load average now (null off Linux).</summary>
    public static double? LoadAverage()
    {
        try
        {
            var f = File.ReadAllText("/proc/loadavg").Split(' ');
            return double.Parse(f[0], CultureInfo.InvariantCulture);
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
        catch (FormatException) { return null; }
    }

    /// <summary>The result of one suite run started at <paramref name="start"/> (machine probed now).</summary>
    public static BenchResult Build(string suite, DateTimeOffset start, SuiteOutput output, string? command, bool shared,
        double? loadBefore, MachineRecord? machine = null)
    {
        var (commit, dirty) = MachineProbe.Git();
        var notes = new List<string>(output.Notes ?? []);
        if (shared) notes.Add(SharedNote);
        double? loadAfter = LoadAverage();
        if (loadBefore is { } lb)
            notes.Add(string.Create(CultureInfo.InvariantCulture, $"load average {lb:F2} before, {loadAfter:F2} after, on {Environment.ProcessorCount} cores"));
        return new BenchResult
        {
            Suite = suite,
            Date = start,
            Commit = commit,
            Dirty = dirty,
            Command = command,
            Machine = machine ?? MachineProbe.Describe(),
            Config = output.Config,
            Method = output.Method,
            Notes = notes,
            Benchmarks = output.Entries,
            Extra = output.Extra,
        };
    }

    /// <summary>One line per entry: median [min, max] unit, peer median and the ratio.</summary>
    public static IEnumerable<string> Table(BenchResult r)
    {
        yield return $"{"benchmark",-28} {"device",-7} {"median",12} {"min",11} {"max",11} {"unit",-9} {"peer",-18} {"peer median",12} {"ratio",6}";
        foreach (var e in r.Benchmarks)
        {
            if (e.Error is not null)
            {
                yield return $"{e.Name,-28} {e.Device,-7} error: {e.Error}";
                continue;
            }
            yield return string.Create(CultureInfo.InvariantCulture,
                $"{e.Name,-28} {e.Device,-7} {e.Median,12:G5} {e.Min,11:G4} {e.Max,11:G4} {e.Unit,-9} {e.Peer?.Name ?? "-",-18} {(e.Peer is { } p ? p.Median.ToString("G5", CultureInfo.InvariantCulture) : "-"),12} {(e.Ratio is { } x ? x.ToString("F2", CultureInfo.InvariantCulture) : "-"),6}");
        }
    }
}
