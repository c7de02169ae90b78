using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Cpu;
using Engine.Observability.Results;

namespace Engine.Training.Metrics;

/// <summary>
/// The CPU's MFU peak: the measured SGEMM roof (a CPU has no datasheet figure that means anything for this code).
/// Measured once per (CPU model, cores, GEMM threads) — best of 5 timed 768³ Gemm.Sgemm calls after a warm-up — and
/// cached in ~/.cache/engine/cpu_sgemm_roof.json; ENGINE_CPU_PEAK_GFLOPS overrides it (e.g. the roof `engine bench
/// gemm` measured on a quiet machine). The figure and where it came from are printed with every MFU.
/// </summary>
public static class CpuRoof
{
    public const string Variable = "ENGINE_CPU_PEAK_GFLOPS";
    const int N = 768;

    /// <summary>Peak FLOP/s and a short statement of its source.</summary>
    public sealed record Figure(double FlopsPerSecond, string Source);

    static readonly Lock Gate = new();
    static Figure? cached;

    public static string DefaultCacheFile =>
        Path.Combine(Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x ? x
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "engine", "cpu_sgemm_roof.json");

    /// <summary>The override, else the cache entry for this machine, else a fresh measurement — cached only when the
    /// 1-minute load average was at most <paramref name="maxLoadPerCore"/> × cores (default 1): a roof measured on a
    /// busy machine is too low and would overstate every MFU after it, so it serves this process only, and says so.</summary>
    public static Figure Get(string? cacheFile = null, double maxLoadPerCore = 1.0)
    {
        if (Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } s)
        {
            if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double g) || !(g > 0))
                throw new ArgumentException($"{Variable} must be a positive number of GFLOP/s, got '{s}'");
            return new Figure(g * 1e9, $"{Variable}={s}");
        }
        lock (Gate)
        {
            if (cached != null && cacheFile == null) return cached;
            string file = cacheFile ?? DefaultCacheFile;
            string key = Key();
            var root = ReadCache(file);
            if (root[key] is JsonObject e && e["gflops"] is JsonValue v && v.TryGetValue(out double gf) && gf > 0)
                return Remember(new Figure(gf * 1e9, $"SGEMM roof measured {(string?)e["date"]} ({(string?)e["how"] ?? $"{N}³"}), cached in {file}"), cacheFile);
            double? load = Observability.Results.BenchRun.LoadAverage();
            double flops = Measure();
            if (load > maxLoadPerCore * Environment.ProcessorCount)
                return Remember(new Figure(flops, FormattableString.Invariant(
                    $"SGEMM {N}³ roof measured now under load average {load:F1} on {Environment.ProcessorCount} cores: too busy to cache, MFU overstated; set {Variable} or run engine bench gemm on a quiet machine")), cacheFile);
            root[key] = new JsonObject { ["gflops"] = flops / 1e9, ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture), ["how"] = $"best of 5 {N}³ Gemm.Sgemm" };
            string source = $"SGEMM {N}³ roof measured now";
            try
            {
                Directory.CreateDirectory(Path.GetDirectoryName(file)!);
                File.WriteAllText(file, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                source += $", cached in {file}";
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
            return Remember(new Figure(flops, source), cacheFile);
        }
    }

    /// <summary>Records a roof measured elsewhere (`engine bench gemm`'s best GEMM on this machine) when it beats the cached
    /// one: a roof is the best the machine did, and a measurement on a busy machine must not lower it.</summary>
    public static void Offer(double flopsPerSecond, string how, string? cacheFile = null)
    {
        if (!(flopsPerSecond > 0)) return;
        lock (Gate)
        {
            string file = cacheFile ?? DefaultCacheFile;
            var root = ReadCache(file);
            string key = Key();
            if (root[key] is JsonObject e && e["gflops"] is JsonValue v && v.TryGetValue(out double gf) && gf * 1e9 >= flopsPerSecond) return;
            root[key] = new JsonObject { ["gflops"] = flopsPerSecond / 1e9, ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture), ["how"] = how };
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
        catch (JsonException) { return new JsonObject(); }   // a damaged cache is measured again and rewritten
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
