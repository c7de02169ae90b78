using System.Collections.Concurrent;
using System.Diagnostics;

namespace Engine.Core;

/// <summary>
/// Wall-time per op (forward and backward separately) when enabled (ENGINE_PROFILE=1 or Profiler.Enabled): a
/// performance engineer's first look at where a step goes. Disabled, a scope costs one branch.
/// </summary>
public static class Profiler
{
    static readonly ConcurrentDictionary<string, (long Ticks, long Calls)> Totals = new();

    public static bool Enabled { get; set; } = Environment.GetEnvironmentVariable("ENGINE_PROFILE") == "1";

    public static Scope Time(string name) => Enabled ? new Scope(name, Stopwatch.GetTimestamp()) : default;

    public readonly struct Scope(string? name, long start) : IDisposable
    {
        public void Dispose()
        {
            if (name == null) return;
            long dt = Stopwatch.GetTimestamp() - start;
            Totals.AddOrUpdate(name, (dt, 1), (_, v) => (v.Ticks + dt, v.Calls + 1));
        }
    }

    public static void Reset() => Totals.Clear();

    /// <summary>(op, total seconds, calls), largest first.</summary>
    public static List<(string Op, double Seconds, long Calls)> Snapshot() =>
        Totals.Select(kv => (kv.Key, kv.Value.Ticks / (double)Stopwatch.Frequency, kv.Value.Calls)).OrderByDescending(x => x.Item2).ToList();

    public static string Report()
    {
        var rows = Snapshot();
        double total = rows.Sum(r => r.Seconds);
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"{"op",-28} {"seconds",9} {"share",6} {"calls",7}");
        foreach (var (op, s, c) in rows) sb.AppendLine($"{op,-28} {s,9:F3} {s / Math.Max(total, 1e-12),6:P0} {c,7}");
        return sb.ToString();
    }
}
