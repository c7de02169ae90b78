using System.Text.Json;
using System.Text.Json.Serialization;

namespace Engine.Training.Metrics;

/// <summary>
/// One line of metrics.jsonl, the same for `engine train` and `engine recipe` (docs/BENCHMARKS.md, "metrics.jsonl"):
/// snake_case keys, absent = not applicable. Tokens/s exclude validation time; tokens_per_s is the average since the
/// run (or stage) started and counts every rank, tokens_per_s_per_device divides it by the ranks, tokens_per_s_current
/// is over the last <see cref="MetricsLog.CurrentWindow"/> steps. MFU is against mfu_peak_flops (every line), the pinned
/// peak (<see cref="CpuRoof"/>) that mfu_peak describes on the first line of a run or stage. step_s/compute_s min and max are over the ranks (compute = up to the
/// gradient wait: the slowest rank is the straggler the others wait for).
/// </summary>
public sealed record StepRecord
{
    /// <summary>The recipe stage (null for `engine train`).</summary>
    public string? Stage { get; init; }
    public int Step { get; init; }
    public int TotalSteps { get; init; }
    public double Loss { get; init; }
    public double GradNorm { get; init; }
    public double Lr { get; init; }
    /// <summary>Tokens consumed so far (all ranks, including steps before a resume).</summary>
    public long Tokens { get; init; }
    /// <summary>Average since the start (of the stage), all ranks.</summary>
    public double TokensPerS { get; init; }
    public double TokensPerSPerDevice { get; init; }
    /// <summary>Over the last few steps (<see cref="MetricsLog.CurrentWindow"/>), all ranks.</summary>
    public double TokensPerSCurrent { get; init; }
    /// <summary>Model FLOPs utilization of tokens_per_s (0.45 = 45 %); null when no peak is pinned.</summary>
    public double? Mfu { get; init; }
    /// <summary>Model FLOPs utilization of tokens_per_s_current.</summary>
    public double? MfuCurrent { get; init; }
    /// <summary>The peak FLOP/s of all devices the MFU divides by (null: none pinned).</summary>
    public double? MfuPeakFlops { get; init; }
    /// <summary>Where that peak comes from (datasheet, the CPU calibration with its date and machine, --peak, or why
    /// there is none): on the first line of a run (or of a resumed run) and of each recipe stage.</summary>
    public string? MfuPeak { get; init; }
    public double ElapsedS { get; init; }
    /// <summary>Estimated seconds to the last step at this run's mean pace so far.</summary>
    public double EtaS { get; init; }
    /// <summary>This (lead) rank's wall time of the step.</summary>
    public double StepS { get; init; }
    public double? StepSMin { get; init; }
    public double? StepSMax { get; init; }
    public double? ComputeSMin { get; init; }
    public double? ComputeSMax { get; init; }
    /// <summary>Resident set of this process (bytes).</summary>
    public long HostMemBytes { get; init; }
    /// <summary>Device memory in use by tensors now and at most so far (GPU only).</summary>
    public long? DeviceMemBytes { get; init; }
    public long? DeviceMemPeakBytes { get; init; }
    /// <summary>Steps so far whose gradient norm was not finite (AdamW writes nothing for them).</summary>
    public int SkippedSteps { get; init; }
    /// <summary>True on a step the numeric guard skipped (weights untouched); absent otherwise.</summary>
    public bool? Skipped { get; init; }
    public double? ValidLoss { get; init; }
    public IReadOnlyDictionary<string, double>? SourceLoss { get; init; }
    public double? EwcPenalty { get; init; }

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    /// <summary>Reads one metrics.jsonl line; a malformed line is one error naming the file and line.</summary>
    public static StepRecord Parse(string line, string source)
    {
        try { return JsonSerializer.Deserialize<StepRecord>(line, Json) ?? throw new InvalidDataException($"{source}: empty metrics line"); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: not a metrics record: {e.Message}", e); }
    }
}
