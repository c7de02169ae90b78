using System.Diagnostics;
using System.Runtime.ExceptionServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Data.Cleaning;
using Engine.Data.Dedup;

namespace Engine.Data.Prepare;

/// <summary>One process's part in a prepare run: the phase loop, resume checks and the shared helpers of the phases.</summary>
sealed partial class PrepareRun
{
    readonly PrepareConfig _cfg;
    readonly PrepareRunOptions _o;
    readonly WorkDir _work;
    readonly WorkPlan _plan;
    readonly IPrepareGroup _group;
    readonly int _threads;
    readonly DateTime _started = DateTime.UtcNow.AddSeconds(-1);
    readonly Lazy<QualityClassifier?> _quality;
    readonly Lazy<HashSet<ulong>> _frequentLines;
    readonly Lazy<BpeTokenizer> _tokenizer;
    readonly Lazy<double[]> _sampleRates;
    readonly Lazy<HashSet<ulong>> _nearLocalRemoved;

    public PrepareRun(PrepareConfig cfg, PrepareRunOptions o)
    {
        _cfg = cfg;
        _o = o;
        _group = o.Group;
        _work = new WorkDir(cfg.WorkDir.Length > 0 ? cfg.WorkDir : Path.Combine(cfg.OutputDir, "work"));
        _plan = WorkPlan.Build(cfg);
        int t = o.Threads > 0 ? o.Threads : cfg.Threads;
        _threads = t > 0 ? t : Math.Max(1, Environment.ProcessorCount);
        _quality = new(TrainQuality);
        _frequentLines = new(() => LoadSet(Enumerable.Range(0, _cfg.MergeTasks).Select(FrequentPath)));
        _tokenizer = new(() => BpeTokenizer.Load(TokenizerPath));
        _sampleRates = new(SampleRates);
        _nearLocalRemoved = new(() => LoadSet([RemovedPath("near_local")]));
    }

    int Units => _plan.Units.Count;
    int Bands => _cfg.Dedup.Bands;
    int RangesPerBand => Math.Max(1, _cfg.MergeTasks / Bands);
    bool Near => _cfg.DedupEnabled && _cfg.Dedup.Near;
    string TokenizerPath => Path.Combine(_cfg.OutputDir, "tokenizer.json");

    public PrepareReport? Execute()
    {
        Directory.CreateDirectory(_cfg.OutputDir);
        Directory.CreateDirectory(_work.Root);
        CheckFingerprint();
        _work.ClearFailed(_group.Rank);
        if (_o.Phase == null && _work.Finished("report", 0, verifyHashes: true) != null) return LoadReport();
        var phases = Specs();
        if (_o.Phase != null && phases.All(p => p.Name != _o.Phase))
            throw new ArgumentException($"unknown prepare phase '{_o.Phase}' (phases: {string.Join(", ", phases.Select(p => p.Name))})");
        for (int i = 0; i < phases.Count; i++)
        {
            var p = phases[i];
            if (_o.Phase != null && p.Name != _o.Phase) continue;
            if (_o.Phase != null && i > 0)
            {
                var prev = phases[i - 1];
                int missing = Enumerable.Range(0, prev.Tasks).Count(t => !_work.IsFinished(prev.Name, t));
                if (missing > 0) throw new PrepareException($"phase '{p.Name}' needs phase '{prev.Name}' finished: {missing} of its {prev.Tasks} tasks are not (run it first)");
            }
            RunPhase(p);
        }
        // one phase alone: the report exists once the report task ran (on whichever array task had it)
        if (_o.Phase != null && !(_o.Phase == "report" && _work.IsFinished("report", 0))) return null;
        if (_group.Rank == 0 && !_cfg.KeepWork) RemoveSpills();
        return LoadReport();
    }

    List<PhaseSpec> Specs() =>
    [
        new("extract", Units, u => _plan.Units[u].Bytes, Extract),
        new("exact", _cfg.MergeTasks, _ => 1, Exact),
        new("lines", _cfg.MergeTasks, _ => 1, Lines),
        new("minhash", Units, u => _plan.Units[u].Bytes, MinHash),
        new("near_local", Bands * RangesPerBand, _ => 1, t => Buckets(t, "near_local")),
        new("near_local_clusters", 1, _ => 1, _ => Clusters("near_local")),
        new("near_global", Bands * RangesPerBand, _ => 1, t => Buckets(t, "near_global")),
        new("near_global_clusters", 1, _ => 1, _ => Clusters("near_global")),
        new("tokenizer", 1, _ => 1, _ => Tokenizer()),
        new("tokenize", Units, u => _plan.Units[u].Bytes, Tokenize),
        new("merge", _cfg.Sources.Count, _ => 1, Merge),
        new("report", 1, _ => 1, _ => Report()),
    ];

    void RunPhase(PhaseSpec p)
    {
        _o.Cancel.ThrowIfCancellationRequested();
        var mine = Enumerable.Range(0, p.Tasks).Where(t => t % _group.Size == _group.Rank).ToList();
        if (_o.TaskOrderSeed is { } order) mine = SplitMix64.Permutation(mine.Count, order ^ (ulong)p.Name.Length).Select(i => mine[i]).ToList();
        var progress = new PhaseProgress(p.Name, mine.Count, mine.Sum(p.Weight), _o.Progress, _group.Rank);
        var clock = Stopwatch.StartNew();
        int ran = 0;
        Exception? error = null;
        try
        {
            Parallel.ForEach(mine, new ParallelOptions { MaxDegreeOfParallelism = _threads, CancellationToken = _o.Cancel }, t =>
            {
                if (_work.Finished(p.Name, t, verifyHashes: true) != null) { progress.Done(p.Weight(t), skipped: true); return; }
                var sw = Stopwatch.StartNew();
                var r = p.Run(t);
                _o.BeforeCommit?.Invoke(p.Name, t);
                _work.Commit(p.Name, t, r.Outputs, r.Stats, sw.Elapsed.TotalSeconds, r.InPlace);
                Interlocked.Increment(ref ran);
                progress.Done(p.Weight(t), skipped: false);
            });
        }
        catch (AggregateException e) { error = e.InnerExceptions[0]; }
        catch (Exception e) { error = e; }
        WriteRankTiming(p.Name, clock.Elapsed.TotalSeconds, ran);
        if (error != null) _work.MarkFailed(_group.Rank, $"{p.Name}: {ErrorText.OneLine(error.Message)}");
        if (_o.Phase != null)
        {
            // one phase alone (a job array's task): no waiting for the others; the next phase checks they all finished
            if (error != null) ExceptionDispatchInfo.Capture(error).Throw();
            return;
        }
        bool ok = _group.Barrier(error == null, new PhaseState(() => Enumerable.Range(0, p.Tasks).All(t => _work.IsFinished(p.Name, t)), () => _work.FailureSince(_started)));
        if (error != null) ExceptionDispatchInfo.Capture(error).Throw();
        if (!ok) throw new PrepareException($"prepare stopped in phase '{p.Name}': another rank failed ({_work.FailureSince(_started) ?? "see its output"})");
    }

    void WriteRankTiming(string phase, double seconds, int tasks)
    {
        string path = _work.File(Path.Combine("ranks", phase, $"rank{_group.Rank:D5}.json"));
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var o = new JsonObject
        {
            ["rank"] = _group.Rank,
            ["ranks"] = _group.Size,
            ["wall_seconds"] = seconds,
            ["tasks_run"] = tasks,
            ["peak_rss_bytes"] = Process.GetCurrentProcess().PeakWorkingSet64,
            ["threads"] = _threads,
        };
        File.WriteAllText(path + $".{Environment.ProcessId}", o.ToJsonString());
        File.Move(path + $".{Environment.ProcessId}", path, overwrite: true);
    }

    /// <summary>A resumed run must have the same settings and the same inputs as the run that made the work folder.</summary>
    void CheckFingerprint()
    {
        var cfgJson = JsonSerializer.Serialize(_cfg with { Threads = 0 }, PreparePipeline.Compact);
        string fp = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(cfgJson + "\n" + _plan.Fingerprint)));
        string path = _work.File("run.json");
        if (File.Exists(path))
        {
            var old = JsonNode.Parse(File.ReadAllText(path))?["fingerprint"]?.GetValue<string>();
            if (old != fp)
                throw new PrepareException($"{_work.Root}: this work folder was made by another prepare config or other input files (fingerprint {old?[..12]} vs {fp[..12]}); use a new output_dir/work_dir or delete it");
            return;
        }
        string tmp = path + $".{Environment.ProcessId}.{_group.Rank}";
        File.WriteAllText(tmp, new JsonObject { ["fingerprint"] = fp, ["units"] = Units, ["plan"] = _plan.Fingerprint }.ToJsonString());
        File.Move(tmp, path, overwrite: true);
    }

    // ---- paths of the exchange files ----
    string Unit(string dir, int u, string ext) => _work.File(Path.Combine(dir, $"u{u:D5}{ext}"));
    string FrequentPath(int r) => _work.File(Path.Combine("lines", $"frequent_r{r:D4}.rec"));
    string ExactRemovedPath(int r) => _work.File(Path.Combine("exact", $"removed_r{r:D4}.rec"));
    string RemovedPath(string stage) => _work.File(Path.Combine(stage, "removed.rec"));
    string EdgesPath(string stage, int t) => _work.File(Path.Combine(stage, $"edges_t{t:D5}.rec"));
    string BandPath(int b, int u) => _work.File(Path.Combine("minhash", $"b{b:D3}", $"u{u:D5}.rec"));

    static HashSet<ulong> LoadSet(IEnumerable<string> files)
    {
        var set = new HashSet<ulong>();
        foreach (var f in files)
            foreach (var r in RecordFile.Range(f, 1, 0, ulong.MaxValue)) set.Add(r.A);
        return set;
    }

    /// <summary>Indices in unit <paramref name="u"/> listed in sorted removed-document files.</summary>
    static HashSet<uint> RemovedIn(IEnumerable<string> files, int u)
    {
        var set = new HashSet<uint>();
        ulong lo = WorkPlan.DocId(u, 0), hi = WorkPlan.DocId(u, uint.MaxValue);
        foreach (var f in files)
            foreach (var r in RecordFile.Range(f, 1, lo, hi)) set.Add((uint)r.A);
        return set;
    }

    static JsonObject Counts(IReadOnlyDictionary<string, long> values)
    {
        var o = new JsonObject();
        foreach (var (k, v) in values) o[k] = v;
        return o;
    }

    QualityClassifier? TrainQuality()
    {
        if (!_cfg.Quality.Enabled) return null;
        var readOptions = new DocumentReadOptions { InvalidUtf8 = _cfg.InvalidUtf8 };
        List<string> Load(IEnumerable<string> files)
        {
            var list = new List<string>();
            foreach (var f in files) list.AddRange(Documents.Read(f, readOptions, null));
            var order = SplitMix64.Permutation(list.Count, _cfg.Seed);
            return order.Take(_cfg.Quality.MaxExamples).Select(i => list[i]).ToList();
        }
        return QualityClassifier.Train(Load(_cfg.Quality.Curated), Load(_cfg.Quality.Web), seed: _cfg.Seed);
    }

    void RemoveSpills()
    {
        foreach (var d in new[] { "docs", "exact", "lines", "minhash", "near_local", "near_global", "tokenize" })
        {
            string p = _work.File(d);
            if (Directory.Exists(p)) Directory.Delete(p, recursive: true);
        }
    }

    PrepareReport LoadReport()
    {
        var r = JsonSerializer.Deserialize<PrepareReport>(File.ReadAllText(Path.Combine(_cfg.OutputDir, "report.json")))
            ?? throw new InvalidDataException($"{_cfg.OutputDir}/report.json: empty");
        return r with { OutputDir = _cfg.OutputDir };
    }
}
