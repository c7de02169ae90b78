using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Cpu;
using Engine.Observability.Results;

namespace Engine.Training.Metrics;

/// <summary>
/// The MFU peak, pinned: a figure that does not move with the load of the moment, so MFU figures of two runs compare.
/// <list type="number">
/// <item>The user's pin, <c>--peak</c> (train, recipe, demo, bench) or ENGINE_PEAK_GFLOPS: GFLOP/s per device (per
/// machine on the CPU), a T suffix for TFLOP/s. It overrides a GPU's datasheet figure too.</item>
/// <item>On the CPU, the stored calibration of this machine (~/.cache/engine/cpu_sgemm_roof.json, one entry per CPU
/// model, cores and GEMM threads, with its date, host and how it was measured): the best SGEMM rate
/// `engine bench gemm` measured here (it only ever raises the entry), or a calibration made by the first run on a
/// quiet machine (best of 5 timed 768³ Gemm.Sgemm after a warm-up, when the 1-minute load average is at most one
/// per core).</item>
/// <item>Otherwise no MFU: a figure measured under load would be too low and overstate every MFU after it (on one
/// loaded machine 88.9, 27.9 and 58.5 GFLOP/s gave 21.8%, 85.1% and 33.2% MFU for the same work).</item>
/// </list>
/// The peak's figure and source go into every metrics.jsonl line (mfu_peak_flops, mfu_peak) and bench result.
/// </summary>
public static class CpuRoof
{
    public const string Variable = "ENGINE_PEAK_GFLOPS";
    const int N = 768;

    /// <summary>Peak FLOP/s (null: none pinned, MFU is not computed) and a short statement of its source.</summary>
    public sealed record Figure(double? FlopsPerSecond, string Source);

    static readonly Lock Gate = new();
    static Figure? cached;

    public static string DefaultCacheFile =>
        Path.Combine(Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x ? x
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "engine", "cpu_sgemm_roof.json");

    /// <summary>"362", "362G" (GFLOP/s) or "989T" (TFLOP/s) as GFLOP/s; an error naming <paramref name="what"/> otherwise.</summary>
    public static double ParseGflops(string text, string what)
    {
        string s = text.Trim();
        double scale = 1;
        if (s.EndsWith('T') || s.EndsWith('t')) (s, scale) = (s[..^1], 1000);
        else if (s.EndsWith('G') || s.EndsWith('g')) s = s[..^1];
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double g) || !(g > 0) || !double.IsFinite(g))
            throw new ArgumentException($"{what} must be a positive number of GFLOP/s (or TFLOP/s with a T suffix, e.g. 989T), got '{text}'");
        return g * scale;
    }

    /// <summary>The user's pinned peak per device (ENGINE_PEAK_GFLOPS, which --peak sets), or null when unset.</summary>
    public static Figure? Override() =>
        Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } s
            ? new Figure(ParseGflops(s, Variable) * 1e9, $"pinned by --peak / {Variable}={s}")
            : null;

    /// <summary>The override, else this machine's stored calibration, else a calibration made now — stored, and used,
    /// only when the 1-minute load average is at most <paramref name="maxLoadPerCore"/> × cores (default 1); else a
    /// figure with no FLOP/s saying how to pin one.</summary>
    public static Figure Get(string? cacheFile = null, double maxLoadPerCore = 1.0)
    {
        if (Override() is { } pinned) return pinned;
        lock (Gate)
        {
            if (cached != null && cacheFile == null) return cached;
            string file = cacheFile ?? DefaultCacheFile;
            string key = Key();
            var root = ReadCache(file);
            if (root[key] is JsonObject e && e["gflops"] is JsonValue v && v.TryGetValue(out double gf) && gf > 0)
                return Remember(new Figure(gf * 1e9, Describe(e, key, file)), cacheFile);
            double? load = BenchRun.LoadAverage();
            if (load > maxLoadPerCore * Environment.ProcessorCount)
                return Remember(new Figure(null, FormattableString.Invariant(
                    $"no CPU calibration for this machine ({key}) in {file}, and load average {load:F1} on {Environment.ProcessorCount} cores is too busy to make one: MFU not computed (run engine bench gemm on a quiet machine, or pass --peak GFLOPS)")), cacheFile);
            double flops = Measure();
            var entry = Entry(flops, $"best of 5 {N}³ Gemm.Sgemm at the first run", load);
            root[key] = entry;
            try
            {
                Directory.CreateDirectory(Path.GetDirectoryName(file)!);
                File.WriteAllText(file, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                return Remember(new Figure(flops, Describe(entry, key, file) + ", made now"), cacheFile);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                // not stored: the next run would calibrate again, so this one is not a pin either
                return Remember(new Figure(null, $"no CPU calibration for this machine ({key}) and {file} cannot be written ({ex.Message}): MFU not computed (pass --peak GFLOPS)"), cacheFile);
            }
        }
    }

    /// <summary>Records a roof measured elsewhere (`engine bench gemm`'s best GEMM on this machine) when it beats the
    /// stored calibration: a roof is the best the machine did, and a measurement on a busy machine must not lower it.</summary>
    public static void Offer(double flopsPerSecond, string how, string? cacheFile = null)
    {
        if (!(flopsPerSecond > 0)) return;
        lock (Gate)
        {
            string file = cacheFile ?? DefaultCacheFile;
            var root = ReadCache(file);
            string key = Key();
            if (root[key] is JsonObject e && e["gflops"] is JsonValue v && v.TryGetValue(out double gf) && gf * 1e9 >= flopsPerSecond) return;
            root[key] = Entry(flopsPerSecond, how, BenchRun.LoadAverage());
            try
            {
                Directory.CreateDirectory(Path.GetDirectoryName(file)!);
                File.WriteAllText(file, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            }
            catch (IOException) { return; }
            catch (UnauthorizedAccessException) { return; }
            if (cacheFile == null) cached = null;
        }
    }

    static JsonObject Entry(double flops, string how, double? load) => new()
    {
        ["gflops"] = flops / 1e9,
        ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
        ["host"] = Environment.MachineName,
        ["how"] = how,
        ["load_average"] = load,
    };

    static string Describe(JsonObject e, string key, string file) => string.Create(CultureInfo.InvariantCulture,
        $"calibration of {(string?)e["date"] ?? "an unknown date"} on {(string?)e["host"] ?? "this machine"} ({key}; {(string?)e["how"] ?? $"{N}³ SGEMM"}) in {file}");

    static Figure Remember(Figure f, string? cacheFile)
    {
        if (cacheFile == null) cached = f;
        return f;
    }

    /// <summary>"cpu model | cores | gemm threads": a roof belongs to the machine and the thread count.</summary>
    public static string Key() => string.Create(CultureInfo.InvariantCulture, $"{MachineProbe.CpuModel()} | {Environment.ProcessorCount} cores | {Gemm.MaxThreads} threads");

    static JsonObject ReadCache(string file)
    {
        try { return File.Exists(file) && JsonNode.Parse(File.ReadAllText(file)) is JsonObject o ? o : new JsonObject(); }
        catch (JsonException) { return new JsonObject(); }   // a damaged cache is calibrated again and rewritten
        catch (IOException) { return new JsonObject(); }
    }

    /// <summary>Best FLOP/s of <paramref name="repeats"/> timed n³ SGEMMs after one warm-up call.</summary>
    public static double Measure(int n = N, int repeats = 5)
    {
        var a = new float[n * n];
        var b = new float[n * n];
        var c = new float[n * n];
        var rng = new Random(1);
        for (int i = 0; i < a.Length; i++) { a[i] = (float)rng.NextDouble() - 0.5f; b[i] = (float)rng.NextDouble() - 0.5f; }
        Gemm.Sgemm(false, false, n, n, n, 1f, a, n, b, n, 0f, c, n);
        double best = double.MaxValue;
        for (int r = 0; r < repeats; r++)
        {
            long t0 = Stopwatch.GetTimestamp();
            Gemm.Sgemm(false, false, n, n, n, 1f, a, n, b, n, 0f, c, n);
            best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
        return 2.0 * n * n * n / best;
    }
}
