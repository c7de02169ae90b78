using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Engine.Data.Prepare;

/// <summary>Documents (or examples) and bytes entering and leaving one phase for one source, with its rule counts.</summary>
public sealed record StageCount(string Stage, string Source, long DocumentsIn, long DocumentsOut, long BytesIn, long BytesOut)
{
    public SortedDictionary<string, long> Counts { get; init; } = new(StringComparer.Ordinal);
}

/// <summary>One written output file (path relative to the output folder).</summary>
public sealed record OutputFile(string Source, string Path, string Kind, long Documents, long Tokens, bool Valid, IReadOnlyList<string> Problems);

/// <summary>Duplicates removed per source, by stage (exact, line/paragraph, near within the source, near across sources).</summary>
public sealed record DedupCounts(string Source, long Input, long ExactLocal, long ExactGlobal, long LinesRemoved, long LineEmptied,
    long NearLocal, long NearGlobal, long NearLocalClusters, long NearGlobalClusters, long Output);

/// <summary>
/// The summary of <c>engine prepare</c>, written as report.json: only counts, so it is the same bytes whatever the
/// number of ranks and the order tasks finished in (times and throughput are in timing.json).
/// </summary>
public sealed record PrepareReport(
    int Units, IReadOnlyList<StageCount> Stages, IReadOnlyList<string> SkippedFiles, SortedDictionary<string, long> Extraction,
    IReadOnlyList<DedupCounts> Dedup, long FrequentLines, string NormalizationMethod, string Tokenizer, int VocabSize,
    IReadOnlyList<int> AddedTokenIds, long Tokens, IReadOnlyList<OutputFile> Outputs)
{
    /// <summary>The output folder (not written to report.json: the report is the same wherever it is).</summary>
    [System.Text.Json.Serialization.JsonIgnore] public string OutputDir { get; init; } = "";
    [System.Text.Json.Serialization.JsonIgnore] public string TokenizerPath => System.IO.Path.Combine(OutputDir, Tokenizer);
}

/// <summary>How one process takes part in a prepare run.</summary>
public sealed record PrepareRunOptions
{
    /// <summary>This process's ranks (one process by default; MPI ranks, thread ranks or <see cref="FileGroup"/>).</summary>
    public IPrepareGroup Group { get; init; } = SingleGroup.Instance;
    /// <summary>Run only this phase's tasks of this rank and return (Slurm arrays: one job per phase); null runs all.</summary>
    public string? Phase { get; init; }
    /// <summary>Tasks run at once in this process; 0 = the config's <c>threads</c>.</summary>
    public int Threads { get; init; }
    public IProgress<string>? Progress { get; init; }
    public CancellationToken Cancel { get; init; }
    /// <summary>When set, this rank starts its tasks in an order shuffled by this seed (tests: outputs must not depend on it).</summary>
    public ulong? TaskOrderSeed { get; init; }
    /// <summary>Called after a task wrote its files and before its manifest (tests inject a kill -9 here).</summary>
    public Action<string, int>? BeforeCommit { get; init; }
}

/// <summary>
/// <c>engine prepare</c> as a staged, resumable, multi-rank pipeline in datatrove's manner: every phase is a list of
/// tasks (work units of input files, hash ranges, or one task), each task's files go to the shared work folder with a
/// manifest, ranks split the tasks (task mod ranks) and meet at the end of each phase. Phases:
/// extract (read, HTML/PDF extraction, clean, quality filter; exact-hash and line-hash records per unit) →
/// exact (hash ranges: first of each identical group kept, within a source then across sources) →
/// lines (hash ranges: lines/paragraphs in at least min_documents distinct documents) →
/// minhash (per unit: frequent lines removed, MinHash signatures, band records, tokenizer-training sample) →
/// near_local (band × hash-range buckets: candidate pairs within a source checked on the signatures) → near_local_clusters
/// (union-find; the earliest document of each cluster kept) → near_global / near_global_clusters (across sources) →
/// tokenizer (train on the sample, or load; expand) → tokenize (per unit shards) → merge (one .bin/.idx per source) →
/// report. Memory per rank is bounded by the unit size and the merge-task count, not by the corpus (docs/DATA.md).
/// </summary>
public static class PreparePipeline
{
    public static PrepareReport Run(PrepareConfig cfg, IProgress<string>? progress = null, CancellationToken cancel = default) =>
        Run(cfg, new PrepareRunOptions { Progress = progress, Cancel = cancel })!;

    /// <summary>Runs this process's part; the report, or null when only a phase before the report was asked for.</summary>
    public static PrepareReport? Run(PrepareConfig cfg, PrepareRunOptions options)
    {
        ArgumentNullException.ThrowIfNull(cfg);
        ArgumentNullException.ThrowIfNull(options);
        var run = new PrepareRun(cfg, options);
        return run.Execute();
    }

    /// <summary>The phases in order.</summary>
    public static IReadOnlyList<string> Phases { get; } =
        ["extract", "exact", "lines", "minhash", "near_local", "near_local_clusters", "near_global", "near_global_clusters", "tokenizer", "tokenize", "merge", "report"];

    internal static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    internal static readonly JsonSerializerOptions Compact = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
}

/// <summary>What one task wrote: files under their temporary names (or in place), and its counts.</summary>
sealed record TaskResult(List<string> Outputs, JsonObject Stats)
{
    public HashSet<string> InPlace { get; } = new(StringComparer.Ordinal);
}

/// <summary>One phase: its task count, a weight per task for progress (input bytes or 1) and the task body.</summary>
sealed record PhaseSpec(string Name, int Tasks, Func<int, long> Weight, Func<int, TaskResult> Run);

/// <summary>Per-phase progress of this rank's tasks with a rate and an ETA.</summary>
sealed class PhaseProgress(string phase, int tasks, long weight, IProgress<string>? sink, int rank)
{
    readonly Stopwatch _clock = Stopwatch.StartNew();
    long _doneWeight, _doneTasks, _skippedWeight;
    readonly Lock _gate = new();

    public void Done(long w, bool skipped)
    {
        lock (_gate)
        {
            _doneTasks++;
            _doneWeight += w;
            if (skipped) _skippedWeight += w;
            if (sink == null) return;
            double secs = _clock.Elapsed.TotalSeconds;
            long ran = _doneWeight - _skippedWeight;
            double rate = ran / Math.Max(1e-9, secs);
            string eta = ran > 0 && _doneWeight < weight ? $", ETA {TimeSpan.FromSeconds((weight - _doneWeight) / rate):hh\\:mm\\:ss}" : "";
            string who = rank > 0 ? $" (rank {rank})" : "";
            sink.Report($"{phase}{who}: {_doneTasks}/{tasks} tasks{(skipped ? " (finished before: skipped)" : "")}, {_clock.Elapsed:hh\\:mm\\:ss} elapsed{eta}");
        }
    }
}
