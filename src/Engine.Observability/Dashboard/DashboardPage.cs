using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Engine.Observability.Results;
using static Engine.Observability.Dashboard.SvgChart;

namespace Engine.Observability.Dashboard;

/*
 * `engine dashboard`: one static HTML page, no external asset (inline CSS, inline SVG, ~10 lines of inline JS for
 * legend toggling). Sections, each a chart or a sentence saying why it is absent:
 *   throughput  tokens/s of the train suite per commit, one series per (device, benchmark), peers dashed
 *   mfu         the same runs as MFU (Mfu.Compute): GPU against its dense bf16 peak, CPU against the measured SGEMM roof
 *   ratios      every run's peer ratios over time: geometric mean per (suite, device, peer); 1 = parity
 *   roofline-*  per device: arithmetic intensity (FLOP/byte) vs achieved FLOP/s of the newest run of each suite, with
 *               the measured compute roof (best GEMM), the measured memory roof (device-to-device copy) and, on a GPU,
 *               the datasheet bf16 peak
 *   loss        the demo's training loss per stage (metrics.jsonl)
 * plus the newest demo table and a provenance table of every run read.
 */

/// <summary>Builds the dashboard HTML from results (pure: the same input gives the same page).</summary>
public static class DashboardPage
{
    /// <summary>Ids of the charts a page drew, in order (the Chromium test checks each is non-blank).</summary>
    public static IReadOnlyList<string> ChartIds(string html) =>
        Regex.Matches(html, "<svg class=\"plot\" id=\"([^\"]+)\"").Select(m => m.Groups[1].Value).ToList();

    public static string Render(DashboardInput input, DateTimeOffset generated)
    {
        var body = new StringBuilder();
        var runs = input.Runs;
        body.Append(CultureInfo.InvariantCulture, $"<header><h1>Engine benchmarks</h1><p>{runs.Count} result file(s) read, generated {generated.ToUniversalTime():yyyy-MM-dd HH:mm} UTC. Hover a point for its figures; click a legend entry to hide its series.</p></header>");
        body.Append("<section><h2>Training throughput</h2><div class=\"row\">");
        body.Append(Throughput(runs));
        body.Append(MfuChart(runs));
        body.Append("</div></section>");
        body.Append("<section><h2>Against peers</h2><div class=\"row\">");
        body.Append(Ratios(runs));
        body.Append("</div></section>");
        body.Append("<section><h2>Rooflines</h2><div class=\"row\">");
        body.Append(Rooflines(runs));
        body.Append("</div></section>");
        body.Append("<section><h2>Demo</h2>");
        body.Append(input.Demo is { } demo
            ? $"<div class=\"demo\"><p class=\"src\">{Esc(demo.File)}</p>{Markdown(demo.Markdown)}</div>"
            : "<p class=\"absent\">absent: no demo-*.md in the results folder</p>");
        body.Append("<div class=\"row\">");
        body.Append(Loss(input));
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

    static IEnumerable<(BenchResult Run, BenchEntry Entry)> TrainRates(IReadOnlyList<LoadedRun> runs) =>
        runs.Where(r => r.Result.Suite == "train")
            .SelectMany(r => r.Result.Benchmarks.Where(e => e.Error is null && e.Unit == "tokens/s" && e.Median > 0).Select(e => (r.Result, e)));

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

    static string Throughput(IReadOnlyList<LoadedRun> runs)
    {
        var rows = TrainRates(runs).ToList();
        if (rows.Count == 0) return Absent("throughput", "Tokens/s per device and commit", "absent: no train-suite result with tokens/s");
        var (x, ticks) = CommitAxis(rows.Select(r => r.Run));
        var series = new SeriesSet();
        foreach (var (run, e) in rows)
        {
            string dev = DeviceLabel(run, e.Device);
            string at = $"{Short(run.Commit)} {DashboardInput.Date(run.Date)}";
            series.Add($"{dev} · {e.Name}", new ChartPoint(x[run.Commit], e.Median, $"{dev} {e.Name} @ {at}: {Num(e.Median)} tokens/s{Spread(e)}"));
            if (e.Peer is { } p)
                series.Add($"{dev} · {p.Name}", new ChartPoint(x[run.Commit], p.Median, $"{p.Name} ({p.Version}) @ {at}: {Num(p.Median)} tokens/s"), peer: true);
        }
        return Figure("throughput", "Tokens/s per device and commit (solid: engine, dashed: peer in the same run)",
            new ChartAxis("commit") { Ticks = ticks }, new ChartAxis("tokens/s") { Include = [0] }, series.ToList(), null);
    }

    /// <summary>Peak FLOP/s for MFU: a GPU's dense bf16 peak, or the CPU's measured SGEMM roof; null when unknown.</summary>
    public static (double Flops, string Source)? MfuPeak(IReadOnlyList<LoadedRun> runs, BenchResult run, string device)
    {
        if (BenchResultIO.GpuIndex(device) is { } g && g < run.Machine.Gpus.Count)
        {
            var gpu = run.Machine.Gpus[g];
            return (gpu.PeakBf16Tflops ?? Mfu.PeakBf16Tflops(gpu.Name)) is { } t ? (t * 1e12, $"{gpu.Name} dense bf16 peak {t:0} TFLOP/s") : null;
        }
        return ComputeRoof(runs, DeviceLabel(run, device)) is { } roof ? (roof, $"measured SGEMM roof {Num(roof)}FLOP/s") : null;
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
            if (MfuPeak(runs, run, e.Device) is not { } peak) { missing.Add(dev); continue; }
            peaks.Add($"{dev}: {peak.Source}");
            double mfu = 100 * Mfu.Compute(e.Median, e.Flops!.Value, peak.Flops);
            string at = $"{Short(run.Commit)} {DashboardInput.Date(run.Date)}";
            series.Add($"{dev} · {e.Name}", new ChartPoint(x[run.Commit], mfu, $"{dev} {e.Name} @ {at}: MFU {mfu:0.0}% ({Num(e.Median)} tokens/s × {Num(e.Flops.Value)} FLOP/token ÷ {Num(peak.Flops)}FLOP/s)"));
            if (e.Peer is { } p)
            {
                double pm = 100 * Mfu.Compute(p.Median, e.Flops.Value, peak.Flops);
                series.Add($"{dev} · {p.Name}", new ChartPoint(x[run.Commit], pm, $"{p.Name} @ {at}: MFU {pm:0.0}%"), peer: true);
            }
        }
        string note = $"Peaks: {string.Join("; ", peaks)}.{(missing.Count > 0 ? $" No peak known for {string.Join(", ", missing)} (not drawn)." : "")}";
        if (series.Count == 0) return Absent("mfu", title, $"absent: {note}");
        return Figure("mfu", title, new ChartAxis("commit") { Ticks = ticks }, new ChartAxis("MFU %") { Include = [0] }, series.ToList(), null, note);
    }

    static string Ratios(IReadOnlyList<LoadedRun> runs)
    {
        var series = new SeriesSet();
        var dates = new SortedSet<double>();
        foreach (var lr in runs)
        {
            var r = lr.Result;
            foreach (var g in r.Benchmarks.Where(e => e.Ratio is > 0 && e.Error is null && e.Peer is not null)
                         .GroupBy(e => (Dev: DeviceLabel(r, e.Device), Peer: e.Peer!.Name)))
            {
                var ratios = g.Select(e => e.Ratio!.Value).ToList();
                double geo = Math.Exp(ratios.Average(Math.Log));
                double day = Math.Floor(r.Date.ToUnixTimeSeconds() / 86400.0);
                dates.Add(day);
                series.Add($"{r.Suite} · {g.Key.Dev} vs {g.Key.Peer}", new ChartPoint(r.Date.ToUnixTimeSeconds() / 86400.0, geo,
                    $"{r.Suite} vs {g.Key.Peer} @ {Short(r.Commit)} {DashboardInput.Date(r.Date)} ({lr.File}): geometric mean {geo:0.000} over {ratios.Count} " +
                    $"benchmark(s), range {ratios.Min():0.000}–{ratios.Max():0.000}"));
            }
        }
        const string title = "Speed relative to peers over time (geometric mean per run; > 1: engine faster)";
        if (series.Count == 0) return Absent("ratios", title, "absent: no result has a peer measured in the same run");
        var ticks = dates.Select(d => (d, DateTimeOffset.FromUnixTimeSeconds((long)(d * 86400)).ToString("yyyy-MM-dd", CultureInfo.InvariantCulture))).ToList();
        return Figure("ratios", title, new ChartAxis("date (UTC)") { Ticks = ticks }, new ChartAxis("engine speed / peer speed") { Include = [1, 0] },
            series.ToList(), [new ChartRule(1, "parity", "#555")]);
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
        var sb = new StringBuilder("<table class=\"runs\"><thead><tr><th>file</th><th>suite</th><th>date (UTC)</th><th>commit</th><th>machine</th><th>benchmarks</th><th>source</th><th>notes</th></tr></thead><tbody>");
        foreach (var lr in input.Runs.Reverse())
        {
            var r = lr.Result;
            string machine = DeviceLabel(r, "cpu") + string.Concat(r.Machine.Gpus.Select(g => $"; {g.Name}{(g.Driver is { } d ? $" (driver {d})" : "")}"));
            sb.Append(CultureInfo.InvariantCulture,
                $"<tr><td>{Esc(lr.File)}</td><td>{Esc(r.Suite)}</td><td>{r.Date.ToUniversalTime():yyyy-MM-dd HH:mm}</td><td><code>{Esc(Short(r.Commit))}</code></td>" +
                $"<td>{Esc(machine)}</td><td>{r.Benchmarks.Count}</td><td>{Esc(r.ConvertedFrom is { } c ? $"converted ({c.Shape})" : r.Schema)}</td><td>{Esc(string.Join(" ", r.Notes))}</td></tr>");
        }
        foreach (var s in input.Skipped)
            sb.Append(CultureInfo.InvariantCulture, $"<tr class=\"skipped\"><td>{Esc(s.File)}</td><td colspan=\"7\">skipped: {Esc(s.Reason)}</td></tr>");
        return sb.Append("</tbody></table>").ToString();
    }

    static string Spread(BenchEntry e) =>
        e.Min is { } lo && e.Max is { } hi ? $" (median of {e.Repeats}, {Num(lo)}–{Num(hi)})" : e.Repeats > 0 ? $" (median of {e.Repeats})" : "";

    static double? Max(double? a, double? b) => a is null ? b : b is null ? a : Math.Max(a.Value, b.Value);

    static string Figure(string id, string title, ChartAxis x, ChartAxis y, IReadOnlyList<ChartSeries> series, IReadOnlyList<ChartRule>? rules, string? note = null) =>
        $"<figure class=\"chart\" data-chart=\"{Esc(id)}\"><figcaption>{Esc(title)}</figcaption>{SvgChart.Render(id, x, y, series, rules)}" +
        $"{Legend(id, series)}{(note is null ? "" : $"<p class=\"note\">{Esc(note)}</p>")}</figure>";

    static string Absent(string id, string title, string why) =>
        $"<figure class=\"chart absent\" data-chart=\"{Esc(id)}\"><figcaption>{Esc(title)}</figcaption><p class=\"absent\">{Esc(why)}</p></figure>";

    /// <summary>The subset of Markdown the result tables use: # headings, paragraphs, pipe tables, **bold**, `code`.</summary>
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
                for (; i < lines.Length && lines[i].TrimStart().StartsWith('|'); i++)
                    rows.Add(lines[i].Trim().Trim('|').Split('|').Select(c => c.Trim()).ToArray());
                i--;
                bool header = rows.Count > 1 && rows[1].All(c => Regex.IsMatch(c, "^:?-+:?$"));
                var align = header ? rows[1].Select(c => c.EndsWith(':')).ToArray() : [];
                sb.Append("<table class=\"md\">");
                for (int r = 0; r < rows.Count; r++)
                {
                    if (header && r == 1) continue;
                    string tag = header && r == 0 ? "th" : "td";
                    sb.Append("<tr>");
                    for (int c = 0; c < rows[r].Length; c++)
                        sb.Append(CultureInfo.InvariantCulture, $"<{tag}{(c < align.Length && align[c] ? " class=\"num\"" : "")}>{Inline(rows[r][c])}</{tag}>");
                    sb.Append("</tr>");
                }
                sb.Append("</table>");
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
        body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
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
        table{border-collapse:collapse;font-size:12px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 6px;text-align:left}
        td.num,th.num{text-align:right}tr.skipped td{color:#8a6d3b}code{font-size:12px}
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
