using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Engine.Observability.Results;
using static Engine.Observability.Dashboard.SvgChart;

namespace Engine.Observability.Dashboard;

/*
 * `engine dashboard`: one static HTML page, no external asset (inline CSS, inline SVG, ~10 lines of inline JS for
 * legend toggling), at most 1400 px wide (two 640 px charts a row; wide tables split). Sections, each a chart or a
 * sentence saying why it is absent:
 *   regressions  every benchmark whose speed dropped more than 5% between consecutive commits on one device (table;
 *                the point is ringed red in its chart)
 *   throughput   tokens/s of the train suite per commit, one series per (device, benchmark), peers dashed
 *   mfu          the same runs as MFU (Mfu.Compute) against the peak the run recorded (--peak, the CPU calibration),
 *                else a GPU's dense bf16 datasheet peak or the CPU's best measured GEMM
 *   ratios       every run's speed ratios against software peers over time: geometric mean per (suite, device, peer)
 *   gemm-*       per-shape GFLOP/s of the newest gemm run per device, ours and the peer's
 *   tokenizer    the data suite's MB/s per commit (ours and ML.Tokenizers)
 *   eval         the eval suite's tokens/s per commit (perplexity, generation with and without KV cache)
 *   dp           data-parallel tokens/s against ranks per ZeRO stage (scaling efficiency in the tips)
 *   pipeline     measured pipeline idle share against the (P-1)/(M+P-1) theory, on its own axis
 *   demo-speed   the demo's training tokens/s per stage and commit
 *   roofline-*   per device: arithmetic intensity (FLOP/byte) vs achieved FLOP/s of the newest run of each suite, with
 *                the measured compute roof (best GEMM), the measured memory roof (device-to-device copy) and, on a GPU,
 *                the datasheet bf16 peak
 *   suite-*      any other suite (kernels, comm, ...): its newest run per device, one point per benchmark
 *   loss         the demo's training loss per stage (the metrics.jsonl shipped beside the demo table)
 * Every point with a recorded min and max has an error bar. Then the newest demo table and a table of every run read
 * with its software (.NET, the peer's BLAS and its kernels, CUDA).
 */

/// <summary>Builds the dashboard HTML from results (pure: the same input gives the same page).</summary>
public static class DashboardPage
{
    /// <summary>Ids of the charts a page drew, in order (the Chromium test checks each is non-blank).</summary>
    public static IReadOnlyList<string> ChartIds(string html) =>
        Regex.Matches(html, "<svg class=\"plot\" id=\"([^\"]+)\"").Select(m => m.Groups[1].Value).ToList();

    /// <summary>A drop of more than this share of speed between consecutive commits is flagged.</summary>
    public const double RegressionThreshold = 0.05;

    /// <summary>Suites with a chart of their own; any other suite gets the generic per-benchmark chart.</summary>
    static readonly string[] Charted = ["train", "gemm", "data", "eval", "dp", "pipeline", "demo"];

    public static string Render(DashboardInput input, DateTimeOffset generated)
    {
        var body = new StringBuilder();
        var runs = input.Runs;
        var regressions = FindRegressions(runs);
        var flagged = regressions.Select(r => (r.Key, r.To.Commit)).ToHashSet();
        body.Append(CultureInfo.InvariantCulture, $"<header><h1>Engine benchmarks</h1><p>{runs.Count} result file(s) read, generated {generated.ToUniversalTime():yyyy-MM-dd HH:mm} UTC. Hover a point for its figures; bars are the min–max over the repeats; click a legend entry to hide its series.</p></header>");
        body.Append("<section><h2>Regressions</h2>");
        body.Append(RegressionTable(regressions));
        body.Append("</section>");
        body.Append("<section><h2>Training throughput</h2><div class=\"row\">");
        body.Append(Throughput(runs, flagged));
        body.Append(MfuChart(runs));
        body.Append("</div></section>");
        body.Append("<section><h2>Against peers</h2><div class=\"row\">");
        body.Append(Ratios(runs));
        body.Append("</div></section>");
        body.Append("<section><h2>GEMM per shape</h2><div class=\"row\">");
        body.Append(GemmShapes(runs));
        body.Append("</div></section>");
        body.Append("<section><h2>Data, evaluation and generation</h2><div class=\"row\">");
        body.Append(OverCommits("tokenizer", "Tokenization MB/s per commit (data suite; dashed: Microsoft.ML.Tokenizers)", runs,
            (r, e) => r.Suite == "data" && e.Unit == "MB/s", "MB/s", flagged, "absent: no data-suite result with MB/s"));
        body.Append(OverCommits("eval", "Evaluation and generation tokens/s per commit (eval suite)", runs,
            (r, e) => r.Suite == "eval" && e.Unit == "tokens/s", "tokens/s", flagged, "absent: no eval-suite result"));
        body.Append("</div></section>");
        body.Append("<section><h2>Parallelism</h2><div class=\"row\">");
        body.Append(DataParallel(runs));
        body.Append(Pipeline(runs));
        body.Append("</div></section>");
        body.Append("<section><h2>Rooflines</h2><div class=\"row\">");
        body.Append(Rooflines(runs));
        body.Append("</div></section>");
        string others = OtherSuites(runs);
        if (others.Length > 0) body.Append("<section><h2>Other suites</h2><div class=\"row\">").Append(others).Append("</div></section>");
        body.Append("<section><h2>Demo</h2>");
        body.Append(input.Demo is { } demo
            ? $"<div class=\"demo\"><p class=\"src\">{Esc(demo.File)}</p>{Markdown(demo.Markdown)}</div>"
            : "<p class=\"absent\">absent: no demo-*.md in the results folder</p>");
        body.Append("<div class=\"row\">");
        body.Append(Loss(input));
        body.Append(OverCommits("demo-speed", "Demo training tokens/s per stage and commit", runs,
            (r, e) => r.Suite == "demo" && e.Unit == "tokens/s", "tokens/s", flagged, "absent: no demo report"));
        body.Append("</div></section>");
        body.Append(LadderSection.Render(input.ResultsDir));
        body.Append("<section><h2>Runs</h2>");
        body.Append(RunsTable(input));
        body.Append("</section>");
        return Page(body.ToString());
    }

    /// <summary>"AMD EPYC (2 cores)" for the CPU, the GPU's name for cuda:N.</summary>
    public static string DeviceLabel(BenchResult r, string device) =>
        BenchResultIO.GpuIndex(device) is { } g && g < r.Machine.Gpus.Count
            ? r.Machine.Gpus[g].Name
            : r.Machine.Cores is { } c ? $"{r.Machine.CpuModel} ({c} cores)" : r.Machine.CpuModel;

    static string Short(string commit) => commit.Length > 7 ? commit[..7] : commit;

    static string At(BenchResult run) => $"{Short(run.Commit)} {DashboardInput.Date(run.Date)}";

    /// <summary>A speed figure (a time per call or a rate), whose drop is a regression and whose peer ratio is a speed ratio.</summary>
    static bool IsSpeed(BenchEntry e) => BenchUnits.SecondsPerUnit(e.Unit) is not null || BenchUnits.IsRate(e.Unit);

    /// <summary>The identity of a measured series across runs.</summary>
    public sealed record SeriesKey(string Suite, string Device, string Name, string Unit);

    /// <summary>A drop of speed between two consecutive commits of one series.</summary>
    public sealed record Regression(SeriesKey Key, BenchResult From, BenchEntry Before, BenchResult To, BenchEntry After, double Change)
    {
        /// <summary>Whether the two runs' min–max ranges overlap (the drop may be noise).</summary>
        public bool Overlaps => Before.Min is { } b0 && Before.Max is { } b1 && After.Min is { } a0 && After.Max is { } a1 && a0 <= b1 && b0 <= a1;
    }

    /// <summary>
    /// Every series (suite, device, benchmark, unit) of speed figures, in date order, its figure per commit (the last run
    /// at a commit), and each step from one commit to the next whose speed fell by more than <see cref="RegressionThreshold"/>
    /// (higher-is-better: after &lt; 0.95 × before; lower-is-better: after &gt; before ÷ 0.95), newest first.
    /// </summary>
    public static List<Regression> FindRegressions(IReadOnlyList<LoadedRun> runs)
    {
        var series = new Dictionary<SeriesKey, List<(BenchResult Run, BenchEntry Entry)>>();
        foreach (var lr in runs)
            foreach (var e in lr.Result.Benchmarks.Where(e => e.Error is null && e.Median > 0 && IsSpeed(e)))
            {
                var key = new SeriesKey(lr.Result.Suite, DeviceLabel(lr.Result, e.Device), e.Name, e.Unit);
                if (!series.TryGetValue(key, out var list)) series[key] = list = [];
                if (list.Count > 0 && list[^1].Run.Commit == lr.Result.Commit) list[^1] = (lr.Result, e);   // the last run at a commit
                else list.Add((lr.Result, e));
            }
        var found = new List<Regression>();
        foreach (var (key, list) in series)
            for (int i = 1; i < list.Count; i++)
            {
                var (a, b) = (list[i - 1], list[i]);
                if (a.Run.Commit == b.Run.Commit) continue;
                double speed = a.Entry.Better == BenchSchema.Lower ? a.Entry.Median / b.Entry.Median : b.Entry.Median / a.Entry.Median;
                if (speed < 1 - RegressionThreshold) found.Add(new Regression(key, a.Run, a.Entry, b.Run, b.Entry, speed - 1));
            }
        return found.OrderByDescending(r => r.To.Date).ThenBy(r => r.Change).ToList();
    }

    /// <summary>Regressions of one suite on one device between one pair of commits: how many fell, the geometric mean of
    /// their speed changes, the worst.</summary>
    public sealed record RegressionGroup(string Suite, string Device, IReadOnlyList<Regression> Members, Regression Worst, double MeanChange)
    {
        public int Count => Members.Count;
    }

    /// <summary><paramref name="regressions"/> grouped by (suite, device, commit pair), in their order.</summary>
    public static List<RegressionGroup> GroupRegressions(IEnumerable<Regression> regressions) =>
        regressions.GroupBy(r => (r.Key.Suite, r.Key.Device, From: r.From.Commit, To: r.To.Commit))
            .Select(g => new RegressionGroup(g.Key.Suite, g.Key.Device, g.ToList(), g.MinBy(r => r.Change)!, Math.Exp(g.Average(r => Math.Log(1 + r.Change))) - 1))
            .ToList();

    /// <summary>The regressions, one row per (suite, device, commit pair): how many benchmarks fell, by how much (geometric
    /// mean of their speed changes, the worst one), and whether the runs' min–max ranges overlap (noise).</summary>
    static string RegressionTable(List<Regression> regressions)
    {
        if (regressions.Count == 0)
            return $"<p class=\"ok\">No benchmark's speed fell by more than {RegressionThreshold:P0} between consecutive commits on one device.</p>";

        var sb = new StringBuilder(string.Create(CultureInfo.InvariantCulture,
            $"<p class=\"regress\">{regressions.Count} benchmark(s) fell by more than {RegressionThreshold:P0} between consecutive commits on one device (ringed red in the charts):</p>"));
        sb.Append("<table class=\"regressions\"><thead><tr><th>suite</th><th>device</th><th>from</th><th>to</th><th class=\"num\">fell</th><th class=\"num\">mean change</th><th>worst</th><th>spread</th></tr></thead><tbody>");
        foreach (var g in GroupRegressions(regressions))
        {
            var (rs, worst, mean) = (g.Members, g.Worst, g.MeanChange);
            int overlapping = rs.Count(r => r.Overlaps);
            string names = string.Join(", ", rs.Select(r => $"{r.Key.Name} {r.Change:+0.0%;-0.0%}"));
            sb.Append(CultureInfo.InvariantCulture,
                $"<tr title=\"{Esc(names)}\"><td>{Esc(g.Suite)}</td><td>{Esc(g.Device)}</td><td><code>{Esc(At(worst.From))}</code></td><td><code>{Esc(At(worst.To))}</code></td>" +
                $"<td class=\"num\">{rs.Count}</td><td class=\"num\">{mean:+0.0%;-0.0%}</td>" +
                $"<td>{Esc(worst.Key.Name)}: {Num(worst.Before.Median)} → {Num(worst.After.Median)} {Esc(worst.Key.Unit)} ({worst.Change:+0.0%;-0.0%})</td>" +
                $"<td>{(overlapping == rs.Count ? "min–max ranges overlap" : overlapping > 0 ? $"{rs.Count - overlapping} of {rs.Count} ranges apart" : rs.All(r => r.Before.Min is null || r.After.Min is null) ? "no spread recorded" : "ranges apart")}</td></tr>");
        }
        return sb.Append("</tbody></table>").ToString();
    }

    /// <summary>x positions: one per commit, in the order commits first appear.</summary>
    static (Dictionary<string, int> X, List<(double, string)> Ticks) CommitAxis(IEnumerable<BenchResult> runs)
    {
        var x = new Dictionary<string, int>();
        var ticks = new List<(double, string)>();
        foreach (var r in runs)
            if (!x.ContainsKey(r.Commit))
            {
                x[r.Commit] = x.Count;
                ticks.Add((x.Count - 1, $"{Short(r.Commit)} {r.Date.ToUniversalTime():MM-dd}"));
            }
        return (x, ticks);
    }

    static IEnumerable<(BenchResult Run, BenchEntry Entry)> TrainRates(IReadOnlyList<LoadedRun> runs) =>
        runs.Where(r => r.Result.Suite == "train")
            .SelectMany(r => r.Result.Benchmarks.Where(e => e.Error is null && e.Unit == "tokens/s" && e.Median > 0).Select(e => (r.Result, e)));

    static string Throughput(IReadOnlyList<LoadedRun> runs, HashSet<(SeriesKey, string)> flagged) =>
        OverCommits("throughput", "Tokens/s per device and commit (solid: engine, dashed: peer in the same run)", runs,
            (r, e) => r.Suite == "train" && e.Unit == "tokens/s", "tokens/s", flagged, "absent: no train-suite result with tokens/s");

    /// <summary>
    /// One figure per commit for every entry <paramref name="pick"/> selects: a series per (device, benchmark), the peer
    /// dashed, min–max error bars, regressions ringed.
    /// </summary>
    static string OverCommits(string id, string title, IReadOnlyList<LoadedRun> runs, Func<BenchResult, BenchEntry, bool> pick, string unit,
        HashSet<(SeriesKey, string)> flagged, string absent)
    {
        var rows = runs.SelectMany(lr => lr.Result.Benchmarks.Where(e => e.Error is null && e.Median > 0 && pick(lr.Result, e)).Select(e => (Run: lr.Result, Entry: e))).ToList();
        if (rows.Count == 0) return Absent(id, title, absent);
        var (x, ticks) = CommitAxis(rows.Select(r => r.Run));
        var series = new SeriesSet();
        foreach (var (run, e) in rows)
        {
            string dev = DeviceLabel(run, e.Device);
            bool flag = flagged.Contains((new SeriesKey(run.Suite, dev, e.Name, e.Unit), run.Commit));
            series.Add($"{dev} · {e.Name}", new ChartPoint(x[run.Commit], e.Median, $"{dev} {e.Name} @ {At(run)}: {Num(e.Median)} {unit}{Spread(e)}{(flag ? " — regression" : "")}",
                e.Min, e.Max, flag));
            if (e.Peer is { } p)
                series.Add($"{dev} · {p.Name}", new ChartPoint(x[run.Commit], p.Median, $"{p.Name}{(p.Version is { } v ? $" ({v})" : "")} @ {At(run)}: {Num(p.Median)} {unit}", p.Min, p.Max), peer: true);
        }
        return Figure(id, title, new ChartAxis("commit") { Ticks = ticks }, new ChartAxis(unit) { Include = [0] }, series.ToList(), null);
    }

    /// <summary>Peak FLOP/s for MFU: the peak the run recorded (mfu_peak_flops: --peak, the CPU calibration), else a GPU's
    /// dense bf16 peak, else the CPU's best measured GEMM; null when unknown.</summary>
    public static (double Flops, string Source)? MfuPeak(IReadOnlyList<LoadedRun> runs, BenchResult run, BenchEntry entry)
    {
        if (entry.Params?["mfu_peak_flops"] is System.Text.Json.Nodes.JsonValue v && v.TryGetValue(out double pinned) && pinned > 0)
            return (pinned, $"the run's pinned peak {Num(pinned)}FLOP/s ({(string?)entry.Params["mfu_peak"] ?? "recorded"})");
        if (BenchResultIO.GpuIndex(entry.Device) is { } g && g < run.Machine.Gpus.Count)
        {
            var gpu = run.Machine.Gpus[g];
            return (gpu.PeakBf16Tflops ?? Mfu.PeakBf16Tflops(gpu.Name)) is { } t ? (t * 1e12, $"{gpu.Name} dense bf16 peak {t:0} TFLOP/s") : null;
        }
        return ComputeRoof(runs, DeviceLabel(run, entry.Device)) is { } roof ? (roof, $"measured SGEMM roof {Num(roof)}FLOP/s") : null;
    }

    /// <summary>The best achieved FLOP/s (ours or the peer's) of any compute-roof entry (GEMM) measured on this device, over all runs:
    /// a roof is a property of the machine, and a partial rerun must not lower it.</summary>
    static double? ComputeRoof(IReadOnlyList<LoadedRun> runs, string deviceLabel)
    {
        var roofs = runs.SelectMany(lr => lr.Result.Benchmarks
                .Where(e => e.Roof == "compute" && DeviceLabel(lr.Result, e.Device) == deviceLabel)
                .SelectMany(e => new[] { e.AchievedFlops, e.PeerAchievedFlops }))
            .OfType<double>().ToList();
        return roofs.Count > 0 ? roofs.Max() : null;
    }

    static double? MemoryRoof(BenchResult r, string deviceLabel) =>
        r.Benchmarks.Where(e => e.Roof == "memory" && DeviceLabel(r, e.Device) == deviceLabel)
            .Select(e => e.AchievedBytes).OfType<double>().DefaultIfEmpty().Max() is > 0 and var m ? m : null;

    static string MfuChart(IReadOnlyList<LoadedRun> runs)
    {
        var rows = TrainRates(runs).Where(r => r.Entry.Flops is > 0).ToList();
        const string title = "MFU per device and commit (PaLM 6N + 12·L·H·Q·T FLOPs/token)";
        if (rows.Count == 0) return Absent("mfu", title, "absent: no train-suite result records FLOPs per token");
        var (x, ticks) = CommitAxis(rows.Select(r => r.Run));
        var series = new SeriesSet();
        var peaks = new SortedSet<string>(StringComparer.Ordinal);
        var missing = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var (run, e) in rows)
        {
            string dev = DeviceLabel(run, e.Device);
            if (MfuPeak(runs, run, e) is not { } peak) { missing.Add(dev); continue; }
            peaks.Add($"{dev}: {peak.Source}");
            double mfu = 100 * Mfu.Compute(e.Median, e.Flops!.Value, peak.Flops);
            double? lo = e.Min is { } mn ? 100 * Mfu.Compute(mn, e.Flops.Value, peak.Flops) : null, hi = e.Max is { } mx ? 100 * Mfu.Compute(mx, e.Flops.Value, peak.Flops) : null;
            series.Add($"{dev} · {e.Name}", new ChartPoint(x[run.Commit], mfu, $"{dev} {e.Name} @ {At(run)}: MFU {mfu:0.0}% ({Num(e.Median)} tokens/s × {Num(e.Flops.Value)} FLOP/token ÷ {Num(peak.Flops)}FLOP/s)", lo, hi));
            if (e.Peer is { } p)
            {
                double pm = 100 * Mfu.Compute(p.Median, e.Flops.Value, peak.Flops);
                series.Add($"{dev} · {p.Name}", new ChartPoint(x[run.Commit], pm, $"{p.Name} @ {At(run)}: MFU {pm:0.0}%"), peer: true);
            }
        }
        string note = $"Peaks: {string.Join("; ", peaks)}.{(missing.Count > 0 ? $" No peak known for {string.Join(", ", missing)} (not drawn)." : "")}";
        if (series.Count == 0) return Absent("mfu", title, $"absent: {note}");
        return Figure("mfu", title, new ChartAxis("commit") { Ticks = ticks }, new ChartAxis("MFU %") { Include = [0] }, series.ToList(), null, note);
    }

    /// <summary>Speed ratios against software peers (a time or a rate); a ratio against a formula (the pipeline's idle
    /// share against its theory) is no speed and has its own chart.</summary>
    static string Ratios(IReadOnlyList<LoadedRun> runs)
    {
        var series = new SeriesSet();
        var dates = new SortedSet<double>();
        var pinned = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var lr in runs)
        {
            var r = lr.Result;
            bool peerPinned = r.Notes.Any(n => n.StartsWith(BenchSchema.PeerPinnedNote, StringComparison.Ordinal));
            foreach (var g in r.Benchmarks.Where(e => e.Ratio is > 0 && e.Error is null && e.Peer is not null && IsSpeed(e))
                         .GroupBy(e => (Dev: DeviceLabel(r, e.Device), Peer: e.Peer!.Name)))
            {
                var ratios = g.Select(e => e.Ratio!.Value).ToList();
                double geo = Math.Exp(ratios.Average(Math.Log));
                double day = Math.Floor(r.Date.ToUnixTimeSeconds() / 86400.0);
                dates.Add(day);
                if (peerPinned) pinned.Add(lr.File);
                series.Add($"{r.Suite} · {g.Key.Dev} vs {g.Key.Peer}", new ChartPoint(r.Date.ToUnixTimeSeconds() / 86400.0, geo,
                    $"{r.Suite} vs {g.Key.Peer} @ {At(r)} ({lr.File}): geometric mean {geo:0.000} over {ratios.Count} " +
                    $"benchmark(s), range {ratios.Min():0.000}–{ratios.Max():0.000}{(peerPinned ? "; PEER PINNED below its best (see the run's notes)" : "")}",
                    ratios.Count > 1 ? ratios.Min() : null, ratios.Count > 1 ? ratios.Max() : null, peerPinned));
            }
        }
        const string title = "Speed relative to peers over time (geometric mean per run, bar = range over its benchmarks; > 1: engine faster)";
        if (series.Count == 0) return Absent("ratios", title, "absent: no result has a software peer measured in the same run");
        var ticks = dates.Select(d => (d, DateTimeOffset.FromUnixTimeSeconds((long)(d * 86400)).ToString("yyyy-MM-dd", CultureInfo.InvariantCulture))).ToList();
        return Figure("ratios", title, new ChartAxis("date (UTC)") { Ticks = ticks }, new ChartAxis("engine speed / peer speed") { Include = [1, 0] },
            series.ToList(), [new ChartRule(1, "parity", "#555")],
            pinned.Count > 0 ? $"Ringed: the peer ran with its kernels pinned below its best, so the ratio overstates the engine ({string.Join(", ", pinned)})." : null);
    }

    /// <summary>Per-shape GFLOP/s of the newest gemm run on each device: ours filled, the peer hollow, min–max bars.</summary>
    static string GemmShapes(IReadOnlyList<LoadedRun> runs)
    {
        var newest = new Dictionary<string, LoadedRun>();
        foreach (var lr in runs.Where(r => r.Result.Suite == "gemm"))
            foreach (var e in lr.Result.Benchmarks.Where(e => e.Error is null && e.AchievedFlops is > 0))
                newest[DeviceLabel(lr.Result, e.Device)] = lr;
        if (newest.Count == 0) return Absent("gemm", "GEMM per shape", "absent: no gemm-suite result with FLOPs");
        var sb = new StringBuilder();
        foreach (var (dev, lr) in newest.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var r = lr.Result;
            var entries = r.Benchmarks.Where(e => e.Error is null && e.AchievedFlops is > 0 && DeviceLabel(r, e.Device) == dev).ToList();
            var series = new SeriesSet();
            var ticks = new List<(double, string)>();
            string peerName = entries.FirstOrDefault(e => e.Peer is not null)?.Peer!.Name ?? "peer";
            for (int i = 0; i < entries.Count; i++)
            {
                var e = entries[i];
                ticks.Add((i, e.Name));
                double g = e.AchievedFlops!.Value / 1e9;
                // a time's min is the rate's max
                double? lo = Rate(e, e.Max), hi = Rate(e, e.Min);
                series.Add("engine", new ChartPoint(i, g, $"{e.Name}: {g:0.#} GFLOP/s{Spread(e)}{(e.Ratio is { } q ? $", {q:0.00}× {peerName}" : "")}", lo, hi), line: false);
                if (e.PeerAchievedFlops is { } pf)
                    series.Add(e.Peer!.Name + (e.Peer.Version is { } v ? $" ({v})" : ""), new ChartPoint(i, pf / 1e9, $"{e.Peer.Name} {e.Name}: {pf / 1e9:0.#} GFLOP/s",
                        Rate(e, e.Peer.Max), Rate(e, e.Peer.Min)), peer: true, line: false);
            }
            bool pinned = r.Notes.Any(n => n.StartsWith(BenchSchema.PeerPinnedNote, StringComparison.Ordinal));
            sb.Append(Figure("gemm-" + BenchResultIO.Slug(dev), $"GEMM GFLOP/s per shape · {dev} · {At(r)}", new ChartAxis("shape") { Ticks = ticks },
                new ChartAxis("GFLOP/s") { Include = [0] }, series.ToList(), null,
                $"{lr.File}: {entries.Count} shapes.{(pinned ? " The peer ran with its kernels pinned below its best (see the run's notes): its figures are low." : "")}"));
        }
        return sb.ToString();

        static double? Rate(BenchEntry e, double? time) => time is > 0 && BenchUnits.SecondsPerUnit(e.Unit) is { } s && e.Flops is { } f ? f / (time.Value * s) / 1e9 : null;
    }

    /// <summary>Data-parallel tokens/s against ranks, one series per ZeRO stage, from the newest commit's dp runs.</summary>
    static string DataParallel(IReadOnlyList<LoadedRun> runs)
    {
        const string title = "Data parallelism: tokens/s against ranks per ZeRO stage (dp suite, newest commit)";
        var dp = runs.Where(r => r.Result.Suite == "dp").ToList();
        if (dp.Count == 0) return Absent("dp", title, "absent: no dp-suite result (engine launch --nproc-per-node N -- bench dp)");
        string commit = dp[^1].Result.Commit;
        var series = new SeriesSet();
        var ranks = new SortedSet<int>();
        foreach (var lr in dp.Where(r => r.Result.Commit == commit))
            foreach (var e in lr.Result.Benchmarks.Where(e => e.Error is null && e.Median > 0))
            {
                int n = (int?)e.Params?["ranks"] ?? 1;
                int zero = (int?)e.Params?["zero"] ?? 0;
                ranks.Add(n);
                double? eff = (double?)e.Params?["scaling_efficiency"];
                series.Add($"ZeRO-{zero}" + (n == 1 ? "" : ""), new ChartPoint(n, e.Median,
                    $"{e.Name} ({lr.File}): {Num(e.Median)} {e.Unit}{Spread(e)}{(eff is { } f ? $", scaling efficiency {f:P0}" : "")}", e.Min, e.Max));
            }
        return Figure("dp", title, new ChartAxis("ranks") { Ticks = ranks.Select(n => ((double)n, n.ToString(CultureInfo.InvariantCulture))).ToList() },
            new ChartAxis("tokens/s") { Include = [0] }, series.ToList(), null,
            $"Commit {Short(commit)}; every round is a point (weak scaling: a fixed batch per rank).");
    }

    /// <summary>The measured pipeline idle share against the (P-1)/(M+P-1) bubble theory, newest run per device.</summary>
    static string Pipeline(IReadOnlyList<LoadedRun> runs)
    {
        const string title = "Pipeline idle share per (stages P, micro-batches M): measured against theory";
        var newest = runs.LastOrDefault(r => r.Result.Suite == "pipeline");
        if (newest is null) return Absent("pipeline", title, "absent: no pipeline-suite result (benchmarks/scripts/pipeline_bench.sh)");
        var r = newest.Result;
        var entries = r.Benchmarks.Where(e => e.Error is null).ToList();
        var series = new SeriesSet();
        var ticks = new List<(double, string)>();
        for (int i = 0; i < entries.Count; i++)
        {
            var e = entries[i];
            string label = e.Params?["pp"] is { } pp && e.Params["micro_batches"] is { } m ? $"P={pp} M={m}" : e.Name;
            ticks.Add((i, label));
            series.Add("measured idle share", new ChartPoint(i, e.Median, $"{e.Name}: idle {e.Median:P1}{Spread(e)}", e.Min, e.Max), line: false);
            if (e.Peer is { } p) series.Add(p.Name, new ChartPoint(i, p.Median, $"{p.Name}: {p.Median:P1}"), peer: true, line: false);
        }
        return Figure("pipeline", title, new ChartAxis("layout") { Ticks = ticks }, new ChartAxis("idle share of the step") { Include = [0] }, series.ToList(), null,
            $"{newest.File} @ {At(r)}{(r.Notes.Count > 0 ? "; " + string.Join("; ", r.Notes) : "")}.");
    }

    /// <summary>A chart for each suite without its own (kernels, comm, ...): its newest run per device, one point per benchmark.</summary>
    static string OtherSuites(IReadOnlyList<LoadedRun> runs)
    {
        var sb = new StringBuilder();
        var newest = new Dictionary<(string Suite, string Dev, string Unit), LoadedRun>();
        foreach (var lr in runs.Where(r => !Charted.Contains(r.Result.Suite)))
            foreach (var e in lr.Result.Benchmarks.Where(e => e.Error is null && e.Median > 0))
                newest[(lr.Result.Suite, DeviceLabel(lr.Result, e.Device), e.Unit)] = lr;
        foreach (var ((suite, dev, unit), lr) in newest.OrderBy(kv => kv.Key.Suite, StringComparer.Ordinal).ThenBy(kv => kv.Key.Dev, StringComparer.Ordinal).ThenBy(kv => kv.Key.Unit, StringComparer.Ordinal))
        {
            var r = lr.Result;
            var entries = r.Benchmarks.Where(e => e.Error is null && e.Median > 0 && e.Unit == unit && DeviceLabel(r, e.Device) == dev).ToList();
            var series = new SeriesSet();
            var ticks = new List<(double, string)>();
            for (int i = 0; i < entries.Count; i++)
            {
                var e = entries[i];
                ticks.Add((i, e.Name));
                series.Add("engine", new ChartPoint(i, e.Median, $"{e.Name}: {Num(e.Median)} {unit}{Spread(e)}", e.Min, e.Max), line: false);
                if (e.Peer is { } p) series.Add(p.Name, new ChartPoint(i, p.Median, $"{p.Name} {e.Name}: {Num(p.Median)} {unit}", p.Min, p.Max), peer: true, line: false);
            }
            double lo = entries.Min(e => e.Min ?? e.Median), hi = entries.Max(e => e.Max ?? e.Median);
            sb.Append(Figure($"suite-{BenchResultIO.Slug(suite)}-{BenchResultIO.Slug(dev)}-{BenchResultIO.Slug(unit)}", $"{suite} · {dev} · {unit} · {At(r)}",
                new ChartAxis("benchmark") { Ticks = ticks }, new ChartAxis(unit, Log: hi > 100 * lo), series.ToList(), null, $"{lr.File}: {entries.Count} benchmark(s)."));
        }
        return sb.ToString();
    }

    static string Rooflines(IReadOnlyList<LoadedRun> runs)
    {
        // device label → newest run per suite with roofline points on it
        var newest = new Dictionary<(string Dev, string Suite), BenchResult>();
        foreach (var lr in runs)
            foreach (var e in lr.Result.Benchmarks)
                if (e.Error is null && e.Flops is > 0 && e.Bytes is > 0 && e.AchievedFlops is > 0)
                    newest[(DeviceLabel(lr.Result, e.Device), lr.Result.Suite)] = lr.Result;
        if (newest.Count == 0) return Absent("roofline", "Roofline", "absent: no result records FLOPs and bytes per call");
        var sb = new StringBuilder();
        foreach (var dev in newest.Keys.Select(k => k.Dev).Distinct().Order(StringComparer.Ordinal))
        {
            var series = new SeriesSet();
            double? memRoof = null, nominal = null;
            var notes = new List<string>();
            foreach (var ((d, suite), r) in newest.Where(kv => kv.Key.Dev == dev).OrderBy(kv => kv.Key.Suite, StringComparer.Ordinal))
            {
                memRoof = Max(memRoof, MemoryRoof(r, dev));
                foreach (var e in r.Benchmarks.Where(e => DeviceLabel(r, e.Device) == dev && e.Error is null && e.Flops is > 0 && e.Bytes is > 0))
                {
                    double ai = e.Flops!.Value / e.Bytes!.Value;
                    string group = $"{suite} · {e.Group ?? e.Name}";
                    if (e.AchievedFlops is { } a)
                        series.Add(group, new ChartPoint(ai, a, $"{e.Name}: {Num(a)}FLOP/s at {ai:0.##} FLOP/B ({Short(r.Commit)} {DashboardInput.Date(r.Date)})"), line: false);
                    if (e.PeerAchievedFlops is { } pa)
                        series.Add($"{group} · {e.Peer!.Name}", new ChartPoint(ai, pa, $"{e.Peer.Name} {e.Name}: {Num(pa)}FLOP/s"), peer: true, line: false);
                }
                var run = r;
                foreach (var e in r.Benchmarks.Where(e => DeviceLabel(run, e.Device) == dev))
                    if (BenchResultIO.GpuIndex(e.Device) is { } g && g < r.Machine.Gpus.Count)
                        nominal = r.Machine.Gpus[g].PeakBf16Tflops is { } t ? t * 1e12 : Mfu.PeakBf16Tflops(r.Machine.Gpus[g].Name) * 1e12;
            }
            int unplaced = newest.Where(kv => kv.Key.Dev == dev).Sum(kv => kv.Value.Benchmarks.Count(e =>
                DeviceLabel(kv.Value, e.Device) == dev && e.Error is null && !(e.Flops is > 0 && e.Bytes is > 0)));
            if (unplaced > 0) notes.Add($"{unplaced} benchmark(s) of these runs record no FLOPs or no bytes (memory-bound kernels, copies) and are not placed");
            double? compute = ComputeRoof(runs, dev);
            var rules = new List<ChartRule>();
            if (compute is { } c) rules.Add(new ChartRule(c, $"measured compute roof {Num(c)}FLOP/s", "#333"));
            else notes.Add("no compute-roof benchmark (GEMM) on this device");
            if (nominal is { } n) rules.Add(new ChartRule(n, $"bf16 dense peak {Num(n)}FLOP/s (datasheet)", "#999"));
            var ais = series.Points.Select(p => p.X).ToList();
            if (memRoof is { } bw)
            {
                double top = compute ?? nominal ?? series.Points.Max(p => p.Y);
                double ridge = top / bw, lo = Math.Pow(10, Math.Floor(Math.Log10(Math.Min(ais.Min(), ridge))));
                series.AddRoof($"measured memory roof {Num(bw)}B/s", [new ChartPoint(lo, bw * lo, null), new ChartPoint(ridge, top, $"ridge at {ridge:0.#} FLOP/B")]);
            }
            else notes.Add("memory roof not measured on this device (no device-to-device copy benchmark)");
            string id = "roofline-" + BenchResultIO.Slug(dev);
            sb.Append(Figure(id, $"Roofline · {dev}", new ChartAxis("arithmetic intensity (FLOP/byte)", Log: true),
                new ChartAxis("achieved FLOP/s", Log: true), series.ToList(), rules,
                "Filled: engine, hollow: peer. " + (notes.Count > 0 ? string.Join("; ", notes) + "." : "")));
        }
        return sb.ToString();
    }

    static string Loss(DashboardInput input)
    {
        const string title = "Demo training loss per stage";
        if (input.Loss is not { } loss) return Absent("loss", title, input.LossAbsent ?? "absent");
        var series = new SeriesSet();
        foreach (var (stage, points) in loss.Stages)
            foreach (var (step, l) in points)
                series.Add(stage, new ChartPoint(step, l, $"{stage} step {step:0}: loss {l:0.000}"), markers: points.Count <= 40);
        return Figure("loss", title, new ChartAxis("step"), new ChartAxis("training loss"), series.ToList(), null, $"from {loss.File}");
    }

    static string RunsTable(DashboardInput input)
    {
        var sb = new StringBuilder("<table class=\"runs\"><thead><tr><th>file</th><th>suite</th><th>date (UTC)</th><th>commit</th><th>machine</th>" +
            "<th>.NET</th><th>peer BLAS (kernels)</th><th>CUDA</th><th class=\"num\">benchmarks</th><th>notes</th></tr></thead><tbody>");
        foreach (var lr in input.Runs.Reverse())
        {
            var r = lr.Result;
            var sw = Software(r);
            string machine = DeviceLabel(r, "cpu") + (r.Machine.CpuId is { } id ? $", {id}" : "") + string.Concat(r.Machine.Gpus.Select(g => $"; {g.Name}"));
            string file = lr.File + (r.ConvertedFrom is { } c ? $" (converted {c.Shape})" : "");
            sb.Append(CultureInfo.InvariantCulture,
                $"<tr><td>{Esc(file)}</td><td>{Esc(r.Suite)}</td><td>{r.Date.ToUniversalTime():yyyy-MM-dd HH:mm}</td><td><code>{Esc(Short(r.Commit))}</code></td>" +
                $"<td>{Esc(machine)}</td><td>{Esc(sw.Dotnet)}</td><td>{Esc(sw.Blas)}</td><td>{Esc(sw.Cuda)}</td><td class=\"num\">{r.Benchmarks.Count}</td><td class=\"notes\" title=\"{Esc(string.Join(" ", r.Notes))}\">{Esc(Abbreviate(r.Notes))}</td></tr>");
        }
        foreach (var s in input.Skipped)
            sb.Append(CultureInfo.InvariantCulture, $"<tr class=\"skipped\"><td>{Esc(s.File)}</td><td colspan=\"9\">skipped: {Esc(s.Reason)}</td></tr>");
        return sb.Append("</tbody></table>").ToString();
    }

    /// <summary>The notes of a run, each cut to its first 140 characters (the whole text is the cell's hover title).</summary>
    static string Abbreviate(IReadOnlyList<string> notes) =>
        string.Join(" ", notes.Select(n => n.Length <= 140 ? n : n[..140].TrimEnd() + "…"));

    /// <summary>The software a run measured with: the .NET runtime, the peer's BLAS with the kernels it ran (what the
    /// peer reported from its own process: the gemm peer's extra.openblas, the train peer's params.pytorch_blas, or the
    /// library a legacy gemm file mapped), and the CUDA driver of its GPUs. "not recorded" where a run that had one did
    /// not record it, "—" where it had none.</summary>
    public static (string Dotnet, string Blas, string Cuda) Software(BenchResult r)
    {
        string dotnet = r.Machine.Runtime ?? "not recorded";
        string? Kernel(System.Text.Json.Nodes.JsonNode? blas) => blas?["openblas"] is { } o
            ? $"{(((string?)o["config"])?.Split(' ') is { Length: >= 2 } v ? $"{v[0]} {v[1]}" : "OpenBLAS")} ({(string?)o["corename"]})"
            : null;
        string? blas = Kernel(r.Extra?["openblas"])
            ?? r.Benchmarks.Select(e => Kernel(e.Params?["pytorch_blas"])).FirstOrDefault(k => k is not null)
            ?? (r.Extra?["legacy"]?["openblas"]?["mapped"] is System.Text.Json.Nodes.JsonArray mapped
                ? string.Join(", ", mapped.Select(m => Path.GetFileName((string?)m))) + " (kernels not recorded)" : null);
        bool blasPeer = r.Benchmarks.Any(e => e.Peer?.Name is "openblas" or "pytorch");
        string cuda = r.Machine.Gpus.Count == 0 ? "—"
            : string.Join("; ", r.Machine.Gpus.Select(g => g.Driver is null && g.CudaDriverApi is null ? "not recorded"
                : $"driver {g.Driver ?? "?"}{(g.CudaDriverApi is { } api ? $", CUDA {api}" : "")}").Distinct());
        return (dotnet, blas ?? (blasPeer ? "not recorded" : "—"), cuda);
    }

    static string Spread(BenchEntry e) =>
        e.Min is { } lo && e.Max is { } hi ? $" (median of {e.Repeats}, {Num(lo)}–{Num(hi)})" : e.Repeats > 0 ? $" (median of {e.Repeats})" : "";

    static double? Max(double? a, double? b) => a is null ? b : b is null ? a : Math.Max(a.Value, b.Value);

    static string Figure(string id, string title, ChartAxis x, ChartAxis y, IReadOnlyList<ChartSeries> series, IReadOnlyList<ChartRule>? rules, string? note = null) =>
        $"<figure class=\"chart\" data-chart=\"{Esc(id)}\"><figcaption>{Esc(title)}</figcaption>{SvgChart.Render(id, x, y, series, rules)}" +
        $"{Legend(id, series)}{(note is null ? "" : $"<p class=\"note\">{Esc(note)}</p>")}</figure>";

    static string Absent(string id, string title, string why) =>
        $"<figure class=\"chart absent\" data-chart=\"{Esc(id)}\"><figcaption>{Esc(title)}</figcaption><p class=\"absent\">{Esc(why)}</p></figure>";

    /// <summary>Columns of a table the page shows side by side (a wider Markdown table is split, see <see cref="Markdown"/>).</summary>
    public const int MaxTableColumns = 10;
    /// <summary>The leading columns every part of a split table repeats (the demo's model and init).</summary>
    const int KeyColumns = 2;

    /// <summary>The subset of Markdown the result tables use: # headings, paragraphs, pipe tables (wider than
    /// <see cref="MaxTableColumns"/>: split into parts that repeat the first two columns), **bold**, `code`.</summary>
    public static string Markdown(string md)
    {
        var sb = new StringBuilder();
        var lines = md.Replace("\r\n", "\n").Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].TrimEnd();
            if (line.Length == 0) continue;
            if (line.StartsWith('#'))
            {
                int level = Math.Min(6, line.TakeWhile(c => c == '#').Count() + 2);
                sb.Append(CultureInfo.InvariantCulture, $"<h{level}>{Inline(line.TrimStart('#').Trim())}</h{level}>");
            }
            else if (line.StartsWith('|'))
            {
                var rows = new List<string[]>();
                for (; i < lines.Length && lines[i].TrimStart().StartsWith('|'); i++) rows.Add(MarkdownTables.Cells(lines[i]));
                i--;
                bool header = rows.Count > 1 && rows[1].All(c => Regex.IsMatch(c, "^:?-+:?$"));
                var align = header ? rows[1].Select(c => c.EndsWith(':')).ToArray() : [];
                // a wide table (the demo's has 20 columns) becomes several that fit the page, each repeating the key columns
                var chunks = MarkdownTables.Chunks(rows, MaxTableColumns, KeyColumns);
                foreach (var cols in chunks)
                {
                    sb.Append("<table class=\"md\">");
                    for (int r = 0; r < rows.Count; r++)
                    {
                        if (header && r == 1) continue;
                        string tag = header && r == 0 ? "th" : "td";
                        sb.Append("<tr>");
                        foreach (int c in cols.Where(c => c < rows[r].Length))
                            sb.Append(CultureInfo.InvariantCulture, $"<{tag}{(c < align.Length && align[c] ? " class=\"num\"" : "")}>{Inline(rows[r][c])}</{tag}>");
                        sb.Append("</tr>");
                    }
                    sb.Append("</table>");
                }
            }
            else
            {
                sb.Append(CultureInfo.InvariantCulture, $"<p>{Inline(line)}</p>");
            }
        }
        return sb.ToString();
    }

    static string Inline(string s)
    {
        string e = Esc(s);
        e = Regex.Replace(e, @"\*\*(.+?)\*\*", "<strong>$1</strong>");
        return Regex.Replace(e, "`(.+?)`", "<code>$1</code>");
    }

    /// <summary>Series keyed by name, colours from the palette in first-seen order (a peer takes its own colour, dashed and hollow).</summary>
    sealed class SeriesSet
    {
        readonly List<(string Name, List<ChartPoint> Points, bool Peer, bool Line, bool Markers, bool Roof)> _list = [];

        public int Count => _list.Count;
        public IEnumerable<ChartPoint> Points => _list.Where(s => !s.Roof).SelectMany(s => s.Points);

        public void Add(string name, ChartPoint p, bool peer = false, bool line = true, bool markers = true)
        {
            int i = _list.FindIndex(s => s.Name == name);
            if (i < 0) { _list.Add((name, [], peer, line, markers, false)); i = _list.Count - 1; }
            _list[i].Points.Add(p);
        }

        public void AddRoof(string name, List<ChartPoint> points) => _list.Add((name, points, false, true, false, true));

        public List<ChartSeries> ToList()
        {
            int color = 0;
            return _list.Select(s => new ChartSeries(s.Name, s.Roof ? "#333" : Palette[color++ % Palette.Length], s.Points)
            {
                Dashed = s.Peer || s.Roof,
                Hollow = s.Peer,
                Line = s.Line,
                Markers = s.Markers,
            }).ToList();
        }
    }

    static string Page(string body) => $$"""
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>Engine benchmarks</title>
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <style>
        body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff;max-width:1336px}
        h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
        .row{display:flex;flex-wrap:wrap;gap:24px}
        figure.chart{margin:0;width:640px}figcaption{font-weight:600;margin-bottom:6px}
        svg.plot{display:block;background:#fff}svg .frame{fill:none;stroke:#bbb}svg .grid{stroke:#eee}
        svg .tick{font-size:11px;fill:#555}svg .axis{font-size:12px;fill:#333}
        svg .line{stroke-width:2}svg .dashed{stroke-dasharray:6 4}svg .rule{stroke-width:1.5;stroke-dasharray:4 3}svg .rule-label{font-size:11px}
        ul.legend{list-style:none;padding:0;margin:6px 0;display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px}
        ul.legend li{cursor:pointer;user-select:none}ul.legend li.off{opacity:.35}
        .swatch{display:inline-block;width:18px;height:0;border-top:3px solid;margin-right:5px;vertical-align:middle}.swatch.dashed{border-top-style:dashed}
        .note,.src{font-size:12px;color:#666}.absent{color:#8a6d3b;background:#fcf8e3;padding:8px 10px;border-radius:4px}
        table{border-collapse:collapse;font-size:12px;margin:8px 0;max-width:1336px}th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
        td.num,th.num{text-align:right}tr.skipped td{color:#8a6d3b}code{font-size:12px}td.notes{max-width:420px}
        .ok{color:#2c662d;background:#eef8ee;padding:8px 10px;border-radius:4px}.regress{color:#a00;font-weight:600}
        table.regressions td{color:#a00}svg .errorbar{stroke-width:1.5}
        </style></head>
        <body>
        {{body}}
        <script>
        document.querySelectorAll('ul.legend li').forEach(function (li) {
          li.addEventListener('click', function () {
            var svg = document.getElementById(li.parentElement.dataset.for);
            var g = svg && svg.querySelector('g[data-series="' + li.dataset.series + '"]');
            if (!g) return;
            var hide = g.style.display !== 'none';
            g.style.display = hide ? 'none' : '';
            li.classList.toggle('off', hide);
          });
        });
        </script>
        </body></html>

        """;
}
