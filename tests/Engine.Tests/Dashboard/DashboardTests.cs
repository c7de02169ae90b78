using System.Diagnostics;
using System.Text.RegularExpressions;
using Engine.Cli.Commands;
using Engine.Observability.Dashboard;
using SkiaSharp;

namespace Engine.Tests.Dashboard;

/// <summary>
/// `engine dashboard` from the checked-in fixture (Fixtures/results: engine.bench/1 files for two commits on a CPU and
/// an H100, a legacy train file, a legacy kernel-bench report, a file of no known shape, a demo table and its
/// metrics.jsonl), then the page in headless Chromium: no console message, and every chart has drawn pixels.
/// </summary>
public class DashboardTests
{
    static readonly DateTimeOffset Generated = new(2026, 12, 1, 0, 0, 0, TimeSpan.Zero);
    static readonly string[] ExpectedCharts = ["throughput", "mfu", "ratios", "gemm-fixture-cpu-4-cores", "roofline-fixture-cpu-4-cores", "roofline-nvidia-h100-80gb-hbm3",
        "suite-kernels-nvidia-h100-80gb-hbm3-ms", "loss"];

    /// <summary>What a fresh clone ships: the results folder of this repository, nothing else.</summary>
    static string ShippedPage() => DashboardPage.Render(DashboardInput.Load(RepoFiles.Path("benchmarks", "results")), Generated);

    static string FixturePage() => DashboardPage.Render(DashboardInput.Load(RepoFiles.Fixtures), Generated);

    [Fact]
    public void FixturePageHasEveryChartAndTheHandComputedMfu()
    {
        string html = FixturePage();
        Assert.Equal(ExpectedCharts, DashboardPage.ChartIds(html));
        string text = System.Net.WebUtility.HtmlDecode(html);
        // CPU: 1,000 tokens/s × 82,605,312 FLOP/token ÷ the measured SGEMM roof (square1024: 2·1024³ FLOP in 8 ms = 268.435456 GFLOP/s) = 30.77 %
        Assert.Contains("MFU 30.8% (1000 tokens/s × 82.6M FLOP/token ÷ 268GFLOP/s)", text);
        // H100: 40,000 tokens/s × 7.5e9 FLOP/token ÷ 989 TFLOP/s = 30.33 %
        Assert.Contains("MFU 30.3%", html);
        Assert.Contains("No peak known for AMD EPYC (2 cores)", html);          // the legacy CPU has no SGEMM result in the fixture
        Assert.Contains("measured memory roof 2.68TB/s", html);                  // 2 GiB copied in 0.8 ms (kernel-bench copy_dtod)
        Assert.Contains("skipped: not an engine.bench result nor a known legacy shape", html);
        Assert.Contains("<td>hybrid</td>", html);                                // the demo table
        Assert.Contains("demo-2026-11-30-metrics.jsonl", html);                  // loss curves found beside the table
        Assert.DoesNotMatch(new Regex(@"\b(src|href)\s*=|@import|url\(", RegexOptions.IgnoreCase), html);   // no external asset
        Assert.Equal(html, FixturePage());                                       // deterministic
    }

    [Fact]
    public void ShippedResultsChartEverySuiteWithLossCurvesRegressionsAndSoftware()
    {
        string html = ShippedPage();
        var charts = DashboardPage.ChartIds(html);
        // every suite in benchmarks/results, and the demo's loss curves from the metrics shipped beside its table
        foreach (string id in new[] { "throughput", "mfu", "ratios", "gemm-amd-epyc-2-cores", "tokenizer", "eval", "dp", "pipeline", "roofline-amd-epyc-2-cores", "loss", "demo-speed" })
            Assert.Contains(id, charts);
        string text = System.Net.WebUtility.HtmlDecode(html);
        Assert.Contains("train_step: 2800 → 2553 tokens/s (-8.8%)", text);        // the regression of 2026-11-28, flagged
        Assert.Matches("<circle class=\"flag\"", html);
        Assert.Contains("class=\"errorbar\"", html);                              // min/max drawn
        // the pipeline's idle share against its theory is no speed ratio: its own chart and axis, not the ratios chart
        string ratios = Regex.Match(html, "<figure class=\"chart\" data-chart=\"ratios\">.*?</figure>", RegexOptions.Singleline).Value;
        Assert.DoesNotContain("pipeline", ratios);
        Assert.Contains("idle share of the step", html);
        // software per run: .NET, the peer's BLAS, CUDA ("—" on a CPU-only run)
        Assert.Contains("<td>.NET 10.0.12</td>", html);
        Assert.Contains("libblas.so.3, liblapack.so.3, libopenblasp-r0.3.21.so (kernels not recorded)", text);
        // the older runs whose peer was pinned to AVX2 are ringed in the ratios chart; the newest name the peer's kernels
        Assert.Contains("Ringed: the peer ran with its kernels pinned below its best, so the ratio overstates the engine (gemm-2026-11-23-rerun-dw.json", text);
        Assert.Contains("OpenBLAS Cooperlake kernels", text);
        // the 20-column demo table is split into tables of at most 10 columns, each led by model and init
        int demoPieces = 0;
        foreach (Match t in Regex.Matches(html, "<table class=\"md\"><tr>(.*?)</tr>", RegexOptions.Singleline))
        {
            var heads = Regex.Matches(t.Groups[1].Value, "<th[^>]*>(.*?)</th>").Select(m => m.Groups[1].Value).ToList();
            Assert.InRange(heads.Count, 1, DashboardPage.MaxTableColumns);
            if (heads.Contains("init")) { Assert.Equal(["model", "init"], heads[..2]); demoPieces++; }   // a piece of the demo table (the ladder's tables are led by their own keys)
        }
        Assert.True(demoPieces >= 2, $"{demoPieces} pieces of the demo table");
        Assert.Equal(html, ShippedPage());                                       // deterministic
    }

    [Fact]
    public void ARegressionIsADropOfMoreThanFivePercentBetweenConsecutiveCommitsOnOneDevice()
    {
        static LoadedRun Run(string commit, int day, string device, params (string Name, string Unit, string Better, double Median)[] e) => new($"{commit}.json", new Engine.Observability.Results.BenchResult
        {
            Suite = "s",
            Date = new DateTimeOffset(2026, 12, day, 0, 0, 0, TimeSpan.Zero),
            Commit = commit,
            Machine = new Engine.Observability.Results.MachineRecord { CpuModel = device, Cores = 2 },
            Benchmarks = e.Select(x => new Engine.Observability.Results.BenchEntry { Name = x.Name, Device = "cpu", Unit = x.Unit, Better = x.Better, Median = x.Median, Repeats = 1 }).ToList(),
        });
        var runs = new[]
        {
            Run("a", 1, "cpu1", ("rate", "tokens/s", "higher", 1000), ("time", "ms", "lower", 10), ("edge", "tokens/s", "higher", 1000)),
            Run("b", 2, "cpu1", ("rate", "tokens/s", "higher", 2000)),                       // a rerun at b: only the last run of a commit counts
            Run("b", 3, "cpu1", ("rate", "tokens/s", "higher", 940), ("time", "ms", "lower", 10.6), ("edge", "tokens/s", "higher", 951)),
            Run("c", 4, "cpu2", ("rate", "tokens/s", "higher", 10)),                         // another machine: not compared with cpu1
            Run("d", 5, "cpu1", ("ppl", "perplexity", "lower", 99)),                         // no speed: never a regression
        };
        var found = DashboardPage.FindRegressions(runs);
        // rate 1000 → 940 (-6%) and time 10 → 10.6 ms (speed -5.7%) fall; edge 1000 → 951 (-4.9%) does not
        Assert.Equal(["rate", "time"], found.Select(r => r.Key.Name).Order());
        Assert.All(found, r => Assert.Equal(("a", "b"), (r.From.Commit, r.To.Commit)));
        Assert.Equal(-0.06, found.Single(r => r.Key.Name == "rate").Change, 12);
        Assert.Equal(10 / 10.6 - 1, found.Single(r => r.Key.Name == "time").Change, 12);
    }

    [Fact]
    public void LossCurvesComeFromTheResultsFolderAlone()
    {
        using var dir = new TempDir();
        File.Copy(Path.Combine(RepoFiles.Fixtures, "demo-2026-11-30.md"), dir.File("demo-2026-12-01.md"));
        File.Copy(Path.Combine(RepoFiles.Fixtures, "demo-2026-11-30-metrics.jsonl"), dir.File("demo-2026-11-30-metrics.jsonl"));
        // a report naming a developer's run folder is not followed: the page must be the same on a fresh clone
        File.WriteAllText(dir.File("demo-2026-12-01.json"), "{\"recipe\": \"r\", \"date\": \"2026-12-01\", \"commit\": \"x\", \"machine\": {\"cpu\": \"c\", \"cores\": 2}, \"stages\": [{\"name\": \"base\", \"weights_dir\": \"/home/dev/runs/demo/stages/base\"}]}");
        var input = DashboardInput.Load(dir.Path);
        Assert.Equal(dir.File("demo-2026-11-30-metrics.jsonl"), input.Loss!.File);     // the newest shipped metrics, though older than the table
        File.Copy(Path.Combine(RepoFiles.Fixtures, "demo-2026-11-30-metrics.jsonl"), dir.File("demo-2026-12-01-metrics.jsonl"));
        Assert.Equal(dir.File("demo-2026-12-01-metrics.jsonl"), DashboardInput.Load(dir.Path).Loss!.File);   // the table's own, when shipped
        // as regen_demo.sh ships it: gzip-compressed, the same curves
        using (var gz = new System.IO.Compression.GZipStream(File.Create(dir.File("demo-2026-12-01-metrics.jsonl.gz")), System.IO.Compression.CompressionLevel.Optimal))
            gz.Write(File.ReadAllBytes(dir.File("demo-2026-12-01-metrics.jsonl")));
        var fromGz = DashboardInput.Load(dir.Path).Loss!;
        Assert.Equal(dir.File("demo-2026-12-01-metrics.jsonl.gz"), fromGz.File);
        Assert.Equal(input.Loss.Stages.SelectMany(s => s.Points), fromGz.Stages.SelectMany(s => s.Points));
    }

    [Fact]
    public void MissingInputsSaySoInsteadOfDrawing()
    {
        using var dir = new TempDir();
        File.Copy(Path.Combine(RepoFiles.Fixtures, "demo-2026-11-30.md"), dir.File("demo-2026-11-30.md"));
        var input = DashboardInput.Load(dir.Path);
        string html = DashboardPage.Render(input, Generated);
        Assert.Empty(DashboardPage.ChartIds(html));
        Assert.Contains("absent: no train-suite result with tokens/s", html);
        Assert.Contains("absent: no demo-*-metrics.jsonl(.gz) in", html);
        File.WriteAllText(dir.File("m.jsonl"), "{\"step\": 1, \"loss\": 2.5}\n{\"step\": 2}\n");
        var e = Assert.Throws<InvalidDataException>(() => DashboardInput.Load(dir.Path, dir.File("m.jsonl")));
        Assert.Equal($"{dir.File("m.jsonl")}:2: a metrics line needs numeric \"step\" and \"loss\"", e.Message);
    }

    [Fact]
    public void CommandWritesThePageAndBadFoldersAreOneLine()
    {
        using var dir = new TempDir();
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.Equal(0, DashboardCommand.Execute(RepoFiles.Fixtures, dir.File("d.html"), null, stdout, stderr));
        Assert.Contains($"{ExpectedCharts.Length} chart(s)", stdout.ToString());
        Assert.Contains("skipped", stderr.ToString());
        Assert.Equal(ExpectedCharts, DashboardPage.ChartIds(File.ReadAllText(dir.File("d.html"))));
        var e = Assert.Throws<DirectoryNotFoundException>(() => DashboardCommand.Execute("/nowhere/results", dir.File("x.html"), null, stdout, stderr));
        Assert.Equal("results folder /nowhere/results not found", e.Message);
        File.WriteAllText(dir.File("broken.json"), "{\"schema\": \"engine.bench/1\", \"suite\": \"gemm\"}");
        var bad = Assert.Throws<InvalidDataException>(() => DashboardInput.Load(dir.Path));
        Assert.StartsWith(dir.File("broken.json"), bad.Message);
    }

    [Fact]
    public void RendersInChromiumWithoutConsoleMessagesAndNoBlankChart()
    {
        string chromium = Tools.Find("chromium") ?? Tools.Find("chromium-browser") ?? "";
        if (chromium.Length == 0) Assert.Skip("chromium is not installed (Debian package chromium; .ci/run installs it): the page was not rendered");
        using var dir = new TempDir();

        // Control: a page with one blank chart and a console.error must be caught by both checks.
        string control = "<!DOCTYPE html><html><body><svg class=\"plot\" id=\"blank\" width=\"640\" height=\"320\"></svg>" +
            "<svg class=\"plot\" id=\"drawn\" width=\"640\" height=\"320\"><circle cx=\"320\" cy=\"160\" r=\"40\" fill=\"#1f77b4\"/></svg>" +
            "<script>console.error('control error')</script></body></html>";
        var c = Render(chromium, dir, "control", control);
        Assert.Contains(c.Console, l => l.Contains("control error", StringComparison.Ordinal));
        Assert.Equal(["blank"], c.Blank);

        string html = FixturePage();
        var r = Render(chromium, dir, "dashboard", html);
        Assert.True(r.Console.Count == 0, "console messages:\n" + string.Join("\n", r.Console));
        Assert.Equal(ExpectedCharts, r.Charts);
        Assert.True(r.Blank.Count == 0, "blank charts: " + string.Join(", ", r.Blank));

        // the page a fresh clone builds: every chart drawn, nothing wider than the 1400 px window (tables included)
        html = ShippedPage();
        r = Render(chromium, dir, "shipped", html);
        Assert.True(r.Console.Count == 0, "console messages:\n" + string.Join("\n", r.Console));
        Assert.Equal(DashboardPage.ChartIds(html), r.Charts);
        Assert.True(r.Blank.Count == 0, "blank charts: " + string.Join(", ", r.Blank));
        Assert.True(r.PageWidth <= 1400, $"the page is {r.PageWidth} px wide at a 1400 px window (widest: {r.Widest})");
    }

    sealed record Rendered(List<string> Console, List<string> Charts, List<string> Blank, int PageWidth, string Widest);

    /// <summary>
    /// Loads <paramref name="html"/> (plus a script that records each svg.plot's page box) with --dump-dom to get the boxes,
    /// screenshots the whole page at the same width, and counts saturated pixels (data marks; axes and text are grey) in each box.
    /// </summary>
    static Rendered Render(string chromium, TempDir dir, string name, string html)
    {
        const int width = 1400;
        const string probe = "<script>document.querySelectorAll('svg.plot').forEach(function (s) { var r = s.getBoundingClientRect();" +
            " s.setAttribute('data-box', [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round).join(',')); });" +
            " document.body.setAttribute('data-page-height', document.documentElement.scrollHeight);" +
            " document.body.setAttribute('data-page-width', document.documentElement.scrollWidth);" +
            " var w = null; document.querySelectorAll('table, figure, svg').forEach(function (e) { var r = e.getBoundingClientRect(); if (!w || r.right > w.r) w = { r: r.right, t: e.tagName + ' ' + (e.getAttribute('class') || '') + ' ' + (e.getAttribute('id') || e.getAttribute('data-chart') || '') }; });" +
            " document.body.setAttribute('data-widest', w ? w.t + ' right edge ' + Math.round(w.r) : '');</script>";
        int at = html.LastIndexOf("</body>", StringComparison.Ordinal);
        File.WriteAllText(dir.File(name + ".html"), html[..at] + probe + html[at..]);
        string url = new Uri(dir.File(name + ".html")).AbsoluteUri;

        var (dom, err1) = Chromium(chromium, dir, $"--window-size={width},1000", "--hide-scrollbars", "--dump-dom", url);
        int height = int.Parse(Regex.Match(dom, "data-page-height=\"(\\d+)\"").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        string png = dir.File(name + ".png");
        var (_, err2) = Chromium(chromium, dir, $"--window-size={width},{height}", "--hide-scrollbars", $"--screenshot={png}", url);
        var console = (err1 + "\n" + err2).Split('\n').Where(l => l.Contains(":CONSOLE", StringComparison.Ordinal)).ToList();

        using var bmp = SKBitmap.Decode(png) ?? throw new InvalidDataException($"{png}: Chromium wrote no PNG");
        var charts = new List<string>();
        var blank = new List<string>();
        foreach (Match m in Regex.Matches(dom, "<svg class=\"plot\" id=\"([^\"]+)\"[^>]*data-box=\"(\\d+),(\\d+),(\\d+),(\\d+)\""))
        {
            string id = m.Groups[1].Value;
            int x = int.Parse(m.Groups[2].Value), y = int.Parse(m.Groups[3].Value), w = int.Parse(m.Groups[4].Value), h = int.Parse(m.Groups[5].Value);
            charts.Add(id);
            Assert.True(x + w <= bmp.Width && y + h <= bmp.Height, $"chart {id} at {x},{y} {w}x{h} lies outside the {bmp.Width}x{bmp.Height} screenshot");
            int marks = 0;
            for (int yy = y; yy < y + h; yy++)
                for (int xx = x; xx < x + w; xx++)
                {
                    var p = bmp.GetPixel(xx, yy);
                    if (Math.Max(p.Red, Math.Max(p.Green, p.Blue)) - Math.Min(p.Red, Math.Min(p.Green, p.Blue)) > 80) marks++;
                }
            if (marks < 50) blank.Add(id);
        }
        int pageWidth = int.Parse(Regex.Match(dom, "data-page-width=\"(\\d+)\"").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        return new Rendered(console, charts, blank, pageWidth, Regex.Match(dom, "data-widest=\"([^\"]*)\"").Groups[1].Value);
    }

    static (string Out, string Err) Chromium(string chromium, TempDir dir, params string[] args)
    {
        var psi = new ProcessStartInfo(chromium) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in (string[])["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     $"--user-data-dir={dir.File("profile")}", "--enable-logging=stderr", "--v=0", .. args])
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException($"chromium {string.Join(' ', args)} did not finish in 120 s"); }
        Assert.True(p.ExitCode == 0, $"chromium exited {p.ExitCode}: {se.Result}");
        return (so.Result, se.Result);
    }
}
