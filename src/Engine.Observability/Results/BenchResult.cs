using System.Text.Json.Nodes;

namespace Engine.Observability.Results;

/*
 * engine.bench/1: one JSON file per benchmark run (docs/BENCHMARKS.md is the field-by-field description).
 *   run     = { schema, suite, date (UTC), commit, dirty?, command?, machine, config, method?, notes, benchmarks, extra?, converted_from? }
 *   machine = { cpu_model, cpu_id?, cores, cpu_mhz_max?, os?, runtime?, avx512?, host?, gpus: [{ name, driver?, ..., peak_bf16_tflops? }] }
 *   entry   = { name, group?, device ("cpu" | "cuda:N"), unit, better ("lower" | "higher"),
 *               median, min?, max?, repeats, warmup?, samples?,            ← ours, after warm-up
 *               peer? { name, version?, median, min?, max?, repeats? },    ← measured in the same run
 *               ratio?,                                                     ← ours over peer in speed: > 1 = we are faster
 *               flops?, bytes?, roof? ("compute" | "memory"), params?, error? }
 * flops and bytes are the work of one unit the metric counts: one timed call for a time unit (ms, s, us), one counted
 * item for a rate unit (tokens/s → per token). Achieved FLOP/s and B/s follow from them (BenchEntry.AchievedFlops).
 * A minor addition keeps "/1" (readers ignore fields they do not know); a change of meaning bumps it to "/2".
 */

/// <summary>One benchmark run: where, on what commit, with which configuration, and its measurements.</summary>
public sealed record BenchResult
{
    public string Schema { get; init; } = BenchSchema.Id;
    /// <summary>gemm, kernels, train, eval, data, comm, demo, ... (the `engine bench` suite or the legacy file's kind).</summary>
    public required string Suite { get; init; }
    /// <summary>When the run started, UTC.</summary>
    public required DateTimeOffset Date { get; init; }
    public required string Commit { get; init; }
    /// <summary>Whether the working tree had uncommitted changes (null: not recorded).</summary>
    public bool? Dirty { get; init; }
    /// <summary>The command line that produced the file.</summary>
    public string? Command { get; init; }
    public required MachineRecord Machine { get; init; }
    /// <summary>The run's configuration (model shape, batch, threads, ...), free-form.</summary>
    public JsonObject Config { get; init; } = new();
    /// <summary>How timing was done (warm-up, repeats, clock), one sentence.</summary>
    public string? Method { get; init; }
    /// <summary>Caveats a reader must see, e.g. "machine shared with other builds".</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];
    public required IReadOnlyList<BenchEntry> Benchmarks { get; init; }
    /// <summary>Anything the run recorded that the fields above do not model (kept so a conversion loses nothing).</summary>
    public JsonObject? Extra { get; init; }
    /// <summary>Set by the converter: the legacy file this result was read from and the shape it had.</summary>
    public ConvertedFrom? ConvertedFrom { get; init; }
}

/// <summary>Where a run happened. Fields a machine does not expose stay null.</summary>
public sealed record MachineRecord
{
    public required string CpuModel { get; init; }
    /// <summary>Vendor, family, model and stepping (x86 /proc/cpuinfo), e.g. "AuthenticAMD family 26 model 2 stepping 1".</summary>
    public string? CpuId { get; init; }
    /// <summary>Logical cores the run could use (null only in converted files that did not record them).</summary>
    public int? Cores { get; init; }
    /// <summary>Highest CPU clock (cpufreq's cpuinfo_max_freq), MHz.</summary>
    public double? CpuMhzMax { get; init; }
    public string? Os { get; init; }
    public string? Runtime { get; init; }
    public bool? Avx512 { get; init; }
    public string? Host { get; init; }
    /// <summary>GPUs in CUDA order: a benchmark on "cuda:N" ran on Gpus[N].</summary>
    public IReadOnlyList<GpuRecord> Gpus { get; init; } = [];
}

/// <summary>One GPU as nvidia-smi / the driver describe it.</summary>
public sealed record GpuRecord
{
    public required string Name { get; init; }
    /// <summary>Driver version (nvidia-smi's driver_version, e.g. "570.86.15").</summary>
    public string? Driver { get; init; }
    /// <summary>CUDA driver API version ("12.8").</summary>
    public string? CudaDriverApi { get; init; }
    public string? ComputeCapability { get; init; }
    public int? Multiprocessors { get; init; }
    public long? MemoryBytes { get; init; }
    public long? L2Bytes { get; init; }
    public double? SmClockMhzMax { get; init; }
    public double? MemClockMhzMax { get; init; }
    /// <summary>Dense bf16 tensor-core peak, TFLOP/s; null means Mfu.PeakBf16Tflops' table decides.</summary>
    public double? PeakBf16Tflops { get; init; }
}

/// <summary>One measured quantity: ours (median and spread over repeats after warm-up), the peer's, and their ratio.</summary>
public sealed record BenchEntry
{
    public required string Name { get; init; }
    public string? Group { get; init; }
    /// <summary>"cpu" or "cuda:N" (N indexes Machine.Gpus).</summary>
    public required string Device { get; init; }
    /// <summary>ms, s, us, tokens/s, MB/s, docs/s, GB/s, perplexity, accuracy, ...</summary>
    public required string Unit { get; init; }
    /// <summary>"lower" (times, perplexity) or "higher" (rates, accuracy).</summary>
    public required string Better { get; init; }
    public required double Median { get; init; }
    public double? Min { get; init; }
    public double? Max { get; init; }
    /// <summary>Timed repeats the median is over (warm-up excluded); 0 when the source did not record it.</summary>
    public int Repeats { get; init; }
    public int? Warmup { get; init; }
    /// <summary>The timed samples themselves, when the runner keeps them.</summary>
    public IReadOnlyList<double>? Samples { get; init; }
    public PeerFigure? Peer { get; init; }
    /// <summary>Our speed over the peer's: peer/ours for "lower", ours/peer for "higher"; > 1 means we are faster.</summary>
    public double? Ratio { get; init; }
    /// <summary>Floating-point operations per unit of the metric (per timed call, or per counted item of a rate).</summary>
    public double? Flops { get; init; }
    /// <summary>Bytes moved per unit of the metric (same convention as Flops).</summary>
    public double? Bytes { get; init; }
    /// <summary>"compute" or "memory" when this entry measures the device's roof (SGEMM, device-to-device copy).</summary>
    public string? Roof { get; init; }
    /// <summary>Shape and options of this benchmark (m, n, k, batch, ...), free-form.</summary>
    public JsonObject? Params { get; init; }
    /// <summary>Why this benchmark has no valid figure (then Median is 0 and is not plotted).</summary>
    public string? Error { get; init; }

    /// <summary>Achieved FLOP/s of the median, or null without Flops / with an error.</summary>
    public double? AchievedFlops => Achieved(Flops, Median);

    /// <summary>Achieved bytes/s of the median.</summary>
    public double? AchievedBytes => Achieved(Bytes, Median);

    /// <summary>The peer's achieved FLOP/s on the same work.</summary>
    public double? PeerAchievedFlops => Peer is { } p ? Achieved(Flops, p.Median) : null;

    double? Achieved(double? work, double value)
    {
        if (work is not > 0 || Error is not null || value <= 0) return null;
        double? seconds = BenchUnits.SecondsPerUnit(Unit);
        if (seconds is { } s) return work.Value / (value * s);
        return BenchUnits.IsRate(Unit) ? work.Value * value : null;
    }
}

/// <summary>The peer's figure for the same benchmark, measured in the same run.</summary>
public sealed record PeerFigure
{
    /// <summary>openblas, pytorch, pytorch-compile, sdpa-flash, mlnet-tokenizers, ...</summary>
    public required string Name { get; init; }
    public string? Version { get; init; }
    public required double Median { get; init; }
    public double? Min { get; init; }
    public double? Max { get; init; }
    public int? Repeats { get; init; }
}

/// <summary>Provenance of a converted legacy file.</summary>
public sealed record ConvertedFrom(string File, string Shape);

/// <summary>The schema's name and version.</summary>
public static class BenchSchema
{
    public const string Name = "engine.bench";
    public const int Version = 1;
    public const string Id = "engine.bench/1";
    public const string Lower = "lower";
    public const string Higher = "higher";
    /// <summary>How a result's note begins when its peer ran with kernels pinned below its best (the dashboard and
    /// docs/results mark such peers; issue 24).</summary>
    public const string PeerPinnedNote = "peer pinned:";
}

/// <summary>What a unit string means: a time per call, or a rate of counted items per second.</summary>
public static class BenchUnits
{
    /// <summary>Seconds per unit for a time unit (ms → 1e-3), null otherwise.</summary>
    public static double? SecondsPerUnit(string unit) => unit switch
    {
        "s" => 1,
        "ms" => 1e-3,
        "us" => 1e-6,
        "ns" => 1e-9,
        _ => null,
    };

    /// <summary>Counted items per second ("tokens/s", "MB/s", "docs/s").</summary>
    public static bool IsRate(string unit) => unit.EndsWith("/s", StringComparison.Ordinal);
}
