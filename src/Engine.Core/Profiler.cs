using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;

namespace Engine.Core;

/*
 * `--profile` (or ENGINE_PROFILE=1): where a step's time goes.
 *   regions  Profiler.Time("linear.bwd"), Profiler.Time("step"): inclusive wall time, an NVTX range when
 *            libnvToolsExt is present, and the name the backend ops inside are filed under
 *   ops      Profiler.Op("matmul", a, b, c) in every backend method: one call (a "launch": one backend op, ≥ 1 kernel
 *            on a GPU), the bytes of its tensor arguments (each read or written once: a lower bound of the traffic), and
 *            its time — a Stopwatch on the CPU (ops are issued from one thread and never nest, so their times add up
 *            to the step's compute), a CUDA event pair on the GPU (IOpClock, resolved by Flush)
 * Rows are keyed (region, op) and reported summed per op and per region/op, largest first. Disabled, a scope costs
 * one branch. Ranks run as threads in one process (the thread communicator) share the totals.
 */

/// <summary>Times an op on a device whose work is asynchronous (CUDA events); resolved on <see cref="Profiler.Flush"/>.</summary>
public interface IOpClock
{
    /// <summary>Marks the start of an op on the device's stream; the token goes back to <see cref="End"/>.</summary>
    int Begin();

    /// <summary>Marks the end of the op begun with <paramref name="token"/>.</summary>
    void End(int token, Profiler.OpKey key, long bytes);

    /// <summary>Waits for the device and reports every finished op (key, seconds, bytes) once.</summary>
    void Drain(Action<Profiler.OpKey, double, long> record);
}

/// <summary>Per-op and per-region time, calls and bytes while <see cref="Enabled"/> (ENGINE_PROFILE=1, `--profile`).</summary>
public static class Profiler
{
    /// <summary>One aggregated row: backend op <see cref="Op"/> called inside region <see cref="Region"/> ("" = none),
    /// whose outermost region was <see cref="Root"/> ("step" for the training steps).</summary>
    public readonly record struct OpRow(string Root, string Region, string Op, double Seconds, long Calls, long Bytes);

    /// <summary>Where an op ran: outermost region, innermost region, op name.</summary>
    public sealed record OpKey(string Root, string Region, string Op);

    sealed class Acc
    {
        public long Ticks, Calls, Bytes;
        public double DeviceSeconds;
    }

    static readonly ConcurrentDictionary<OpKey, Acc> OpTotals = new();
    static readonly ConcurrentDictionary<string, (long Ticks, long Calls)> RegionTotals = new();
    static readonly ConcurrentDictionary<IOpClock, byte> Clocks = new();
    [ThreadStatic] static string? currentRegion;
    [ThreadStatic] static string? rootRegion;

    public static bool Enabled { get; set; } = Environment.GetEnvironmentVariable("ENGINE_PROFILE") == "1";

    /// <summary>A region (inclusive wall time, NVTX range); backend ops inside are filed under its name.</summary>
    public static Scope Time(string name)
    {
        if (!Enabled) return default;
        Nvtx.Push(name);
        var previous = currentRegion;
        bool root = rootRegion == null;
        currentRegion = name;
        if (root) rootRegion = name;
        return new Scope(name, previous, root, Stopwatch.GetTimestamp());
    }

    public readonly struct Scope(string? name, string? previous, bool root, long start) : IDisposable
    {
        public void Dispose()
        {
            if (name == null) return;
            long dt = Stopwatch.GetTimestamp() - start;
            currentRegion = previous;
            if (root) rootRegion = null;
            Nvtx.Pop();
            RegionTotals.AddOrUpdate(name, (dt, 1), (_, v) => (v.Ticks + dt, v.Calls + 1));
        }
    }

    /// <summary>A backend op on the host's clock; its bytes are the sizes of the tensors given.</summary>
    public static OpScope Op(string op, params ReadOnlySpan<Tensor?> tensors) => Enabled ? Start(op, Bytes(tensors), null) : default;

    /// <summary>A backend op with a known byte count, timed on <paramref name="clock"/> (null = the host's Stopwatch).</summary>
    public static OpScope Op(string op, long bytes, IOpClock? clock = null) => Enabled ? Start(op, bytes, clock) : default;

    /// <summary>Σ numel × element size of the tensors (null entries skipped).</summary>
    public static long Bytes(params ReadOnlySpan<Tensor?> tensors)
    {
        long b = 0;
        foreach (var t in tensors)
            if (t != null) b += t.Numel * t.DType.Size();
        return b;
    }

    static OpScope Start(string op, long bytes, IOpClock? clock)
    {
        var key = new OpKey(rootRegion ?? "", currentRegion ?? "", op);
        if (clock != null)
        {
            Clocks.TryAdd(clock, 0);
            return new OpScope(key, bytes, clock, clock.Begin());
        }
        return new OpScope(key, bytes, null, Stopwatch.GetTimestamp());
    }

    public readonly struct OpScope(OpKey? key, long bytes, IOpClock? clock, long startOrToken) : IDisposable
    {
        public void Dispose()
        {
            if (key == null) return;
            if (clock != null)
            {
                clock.End((int)startOrToken, key, bytes);
                return;
            }
            long dt = Stopwatch.GetTimestamp() - startOrToken;
            var acc = OpTotals.GetOrAdd(key, _ => new Acc());
            Interlocked.Add(ref acc.Ticks, dt);
            Interlocked.Increment(ref acc.Calls);
            Interlocked.Add(ref acc.Bytes, bytes);
        }
    }

    /// <summary>Resolves every device clock's finished ops into the totals (waits for the devices).</summary>
    public static void Flush()
    {
        foreach (var clock in Clocks.Keys)
            clock.Drain((key, seconds, bytes) =>
            {
                var acc = OpTotals.GetOrAdd(key, _ => new Acc());
                lock (acc)
                {
                    acc.DeviceSeconds += seconds;
                    acc.Calls++;
                    acc.Bytes += bytes;
                }
            });
    }

    public static void Reset()
    {
        Flush();
        OpTotals.Clear();
        RegionTotals.Clear();
        LaunchTotals.Clear();
    }

    /// <summary>What a device puts on its stream: a hand-written kernel, a library GEMM (≥ 1 kernel inside), an
    /// asynchronous copy or memset.</summary>
    public enum LaunchKind { Kernel, Gemm, Copy }

    static readonly ConcurrentDictionary<(string Root, LaunchKind Kind), long> LaunchTotals = new();

    /// <summary>Counts one launch under the current outermost region (a device backend calls this when <see cref="Enabled"/>).</summary>
    public static void CountLaunch(LaunchKind kind)
    {
        if (!Enabled) return;
        LaunchTotals.AddOrUpdate((rootRegion ?? "", kind), 1, (_, v) => v + 1);
    }

    /// <summary>Launches of <paramref name="kind"/> inside regions rooted at <paramref name="root"/> (null: all).</summary>
    public static long Launches(LaunchKind kind, string? root = "step") =>
        LaunchTotals.Where(kv => kv.Key.Kind == kind && (root == null || kv.Key.Root == root)).Sum(kv => kv.Value);

    /// <summary>"device launches per step: …; per layer: …" over <paramref name="steps"/> steps of a model of
    /// <paramref name="layers"/> layers (the head, embedding and optimizer counted in, so "per layer" is an upper
    /// bound of a block's own), or null when nothing was launched (the CPU).</summary>
    public static string? LaunchSummary(int steps, int layers, string? root = "step")
    {
        long k = Launches(LaunchKind.Kernel, root), g = Launches(LaunchKind.Gemm, root), c = Launches(LaunchKind.Copy, root);
        if (k + g + c == 0 || steps < 1) return null;
        double perStep = (double)(k + g + c) / steps;
        return FormattableString.Invariant(
            $"device launches per step: {perStep:F0} ({k / (double)steps:F0} kernels, {g / (double)steps:F0} GEMMs, {c / (double)steps:F0} copies/memsets); per layer: {perStep / Math.Max(1, layers):F1} ({layers} layers)");
    }

    /// <summary>Every (region, op) row, largest time first (device clocks flushed first).</summary>
    public static List<OpRow> OpRows()
    {
        Flush();
        return OpTotals.Select(kv => new OpRow(kv.Key.Root, kv.Key.Region, kv.Key.Op,
                kv.Value.Ticks / (double)Stopwatch.Frequency + kv.Value.DeviceSeconds, kv.Value.Calls, kv.Value.Bytes))
            .OrderByDescending(r => r.Seconds).ThenBy(r => r.Op, StringComparer.Ordinal).ToList();
    }

    /// <summary>Rows summed per op name over regions, largest first.</summary>
    public static List<OpRow> ByOp() =>
        OpRows().GroupBy(r => r.Op, StringComparer.Ordinal)
            .Select(g => new OpRow("", "", g.Key, g.Sum(r => r.Seconds), g.Sum(r => r.Calls), g.Sum(r => r.Bytes)))
            .OrderByDescending(r => r.Seconds).ThenBy(r => r.Op, StringComparer.Ordinal).ToList();

    /// <summary>Total seconds of the backend ops, all of them or only those inside regions rooted at <paramref name="root"/>.</summary>
    public static double TotalOpSeconds(string? root = null) => OpRows().Where(r => root == null || r.Root == root).Sum(r => r.Seconds);

    /// <summary>(region, inclusive seconds, calls), largest first.</summary>
    public static List<(string Region, double Seconds, long Calls)> Snapshot() =>
        RegionTotals.Select(kv => (kv.Key, kv.Value.Ticks / (double)Stopwatch.Frequency, kv.Value.Calls)).OrderByDescending(x => x.Item2).ToList();

    /// <summary>The per-op table (sorted by time, with calls, bytes and GB/s), then the top region/op rows.</summary>
    public static string Report(int regionRows = 25)
    {
        var byOp = ByOp();
        var rows = OpRows();
        double total = byOp.Sum(r => r.Seconds);
        var sb = new StringBuilder();
        sb.AppendLine(FormattableString.Invariant($"{"op",-26} {"seconds",9} {"share",6} {"calls",8} {"MB",10} {"GB/s",7}"));
        foreach (var r in byOp) sb.AppendLine(Row(r.Op, r, total));
        sb.AppendLine(FormattableString.Invariant($"{"total",-26} {total,9:F3}"));
        sb.AppendLine();
        sb.AppendLine(FormattableString.Invariant($"{"region/op",-40} {"seconds",9} {"share",6} {"calls",8}"));
        var byRegion = rows.GroupBy(r => r.Region.Length == 0 ? r.Op : r.Region + "/" + r.Op, StringComparer.Ordinal)
            .Select(g => (Key: g.Key, Seconds: g.Sum(r => r.Seconds), Calls: g.Sum(r => r.Calls)))
            .OrderByDescending(r => r.Seconds).ThenBy(r => r.Key, StringComparer.Ordinal);
        foreach (var (key, seconds, calls) in byRegion.Take(regionRows))
            sb.AppendLine(FormattableString.Invariant($"{key,-40} {seconds,9:F3} {seconds / Math.Max(total, 1e-12),6:P0} {calls,8}"));
        return sb.ToString();
    }

    static string Row(string name, OpRow r, double total) => FormattableString.Invariant(
        $"{name,-26} {r.Seconds,9:F3} {r.Seconds / Math.Max(total, 1e-12),6:P0} {r.Calls,8} {r.Bytes / 1e6,10:F1} {(r.Seconds > 0 ? r.Bytes / r.Seconds / 1e9 : 0),7:F2}");
}
