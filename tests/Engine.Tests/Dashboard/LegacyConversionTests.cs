using System.Text.Json.Nodes;
using Engine.Cuda.Bench;
using Engine.Observability.Results;

namespace Engine.Tests.Dashboard;

/// <summary>Every results file in benchmarks/results/ (all the older shapes) converts into engine.bench/1 without losing figures.</summary>
public class LegacyConversionTests
{
    static IEnumerable<string> Files() =>
        Directory.EnumerateFiles(RepoFiles.Path("benchmarks", "results"), "*.json").Order(StringComparer.Ordinal).Select(f => Path.GetFileName(f));

    public static TheoryData<string> ResultFiles() => new(Files());

    [Fact]
    public void TheResultsFolderHasEveryKnownShape()
    {
        var shapes = Files().Select(f => LegacyResults.ShapeOf(Load(f))).ToHashSet();
        Assert.Superset(new HashSet<string?> { "gemm", "data", "train-step", "eval-generate", "recipe-report" }, shapes);
    }

    [Theory]
    [MemberData(nameof(ResultFiles))]
    public void EveryResultFileConvertsAndRoundTrips(string file)
    {
        string path = RepoFiles.Path("benchmarks", "results", file);
        var r = LegacyResults.ReadAny(path);
        Assert.NotEmpty(r.Benchmarks);
        Assert.NotEqual("unknown", r.Commit);
        string json = BenchResultIO.ToJson(r);
        Assert.Equal(json, BenchResultIO.ToJson(BenchResultIO.Parse(json, file)));
        if (r.ConvertedFrom is { } c)
        {
            Assert.Equal(file, c.File);
            Assert.True(JsonNode.DeepEquals(Load(file), r.Extra!["legacy"]), "the original object is kept whole under extra.legacy");
        }
    }

    [Fact]
    public void GemmKeepsEveryShapeAndTheRatios()
    {
        var src = Load("gemm-2026-11-23.json");
        var r = LegacyResults.ReadAny(RepoFiles.Path("benchmarks", "results", "gemm-2026-11-23.json"));
        var rows = src["results"]!.AsArray();
        Assert.Equal(rows.Count, r.Benchmarks.Count);
        foreach (var row in rows)
        {
            var e = r.Benchmarks.Single(b => b.Name == (string)row!["name"]!);
            Assert.Equal((double)row!["ours_ms"]!, e.Median);
            Assert.Equal((double)row["openblas_ms"]!, e.Peer!.Median);
            Assert.Equal((double)row["ratio"]!, e.Ratio!.Value, 3);                       // legacy ratio was rounded to 3 digits
            Assert.Equal((double)row["ours_gflops"]! * 1e9, e.AchievedFlops!.Value, (double)row["ours_gflops"]! * 1e9 * 1e-3);
            Assert.Equal(15, e.Repeats);
        }
        Assert.Equal("OpenBLAS 0.3.21 via numpy 1.24.2", r.Benchmarks[0].Peer!.Version);
        Assert.Equal(new DateTimeOffset(2026, 11, 23, 8, 9, 32, TimeSpan.Zero), r.Date);
    }

    [Fact]
    public void DataTrainEvalAndDemoFiguresSurvive()
    {
        var data = LegacyResults.ReadAny(RepoFiles.Path("benchmarks", "results", "data-2026-11-23.json"));
        var warm = data.Benchmarks.Single(b => b.Name == "tokenize_warm");
        Assert.Equal(31.091318900812354, warm.Median);                                // median of the three repeats
        Assert.Equal((30.713931493659555, 36.070657946519006, 3), (warm.Min!.Value, warm.Max!.Value, warm.Repeats));
        Assert.Equal(10.076399056701845, warm.Peer!.Median);
        Assert.Equal(warm.Median / warm.Peer.Median, warm.Ratio!.Value, 12);
        Assert.Equal(34637.900855544, data.Benchmarks.Single(b => b.Name == "dedup").Median);

        var train = LegacyResults.ReadAny(RepoFiles.Path("benchmarks", "results", "train-cpu-2026-11-23.json")).Benchmarks.Single();
        Assert.Equal(1911.5130017418287, train.Median);
        Assert.Equal(800.367084611641, train.Peer!.Median);
        Assert.Equal(2.388295369079733, train.Ratio!.Value, 9);
        Assert.Equal(82_605_312, train.Flops!.Value, 1e-3 * 82_605_312 / 1e6);      // achieved_gflops / tokens/s = the PaLM FLOPs/token
        Assert.Equal((6, 2), (train.Repeats, train.Warmup!.Value));

        var eval = LegacyResults.ReadAny(RepoFiles.Path("benchmarks", "results", "eval-cpu-2026-11-23.json"));
        Assert.Equal(170.89790292251436, eval.Benchmarks.Single(b => b.Name == "generate_kv_cache").Median);

        var demo = LegacyResults.ReadAny(RepoFiles.Path("benchmarks", "results", "demo-2026-11-23.json"));
        Assert.Equal(4 * (1 + 6 + 4), demo.Benchmarks.Count);
        Assert.Equal(163.40750908341718, demo.Benchmarks.Single(b => b.Name == "naive/ppl_finance").Median);
        Assert.Equal("perplexity", demo.Benchmarks.Single(b => b.Name == "naive/ppl_finance").Unit);
    }

    [Fact]
    public void KernelBenchReportsConvertWithRoofsAndSdpaPeer()
    {
        var sdpa = SdpaResults.Parse("""
            {"torch": "2.5.1", "measurements": [{"kernel": "sdpa_flash_fwd", "shape": "B=1 T=128 H=4 Hkv=1 D=64 causal", "ms": 0.02, "tflops": 0.4194304, "gqa": "native"}]}
            """);
        var options = KernelBenchOptions.ForPreset("tiny") with { Commit = "abc1234", Sdpa = sdpa };
        var device = new BenchDeviceInfo("NVIDIA H100 80GB HBM3", 9, 0, 132, 80L << 30, 50L << 20, 12080);
        var t = new TimingResult(0.01, 0.009, 0.012, 100, 3);
        var measurements = new List<Measurement>
        {
            new("reference", KernelCosts.Copy(16L << 20), t),
            new("reference", KernelCosts.Gemm(256, 256, 256), t),
            new("attention", KernelCosts.Attention(false, 1, 128, 4, 1, 64, true), new TimingResult(0.025, 0.024, 0.027, 100, 3)),
            new("tiny", KernelCosts.RmsNormForward(256, 64), t),
            new("tiny", KernelCosts.AdamW(1000), null, "CUDA_ERROR_OUT_OF_MEMORY"),
        };
        var report = BenchReport.Build(device, options, measurements, new DateTime(2026, 11, 23, 12, 0, 0, DateTimeKind.Utc));
        var r = LegacyResults.Convert(report, "kernels-nvidia-h100-2026-11-23.json");
        Assert.Equal("kernels", r.Suite);
        Assert.Equal("NVIDIA H100 80GB HBM3", r.Machine.Gpus.Single().Name);
        Assert.Equal("12.8", r.Machine.Gpus[0].CudaDriverApi);
        var copy = r.Benchmarks.Single(b => b.Name.StartsWith("copy_dtod", StringComparison.Ordinal));
        Assert.Equal("memory", copy.Roof);
        Assert.Equal(2.0 * (16 << 20) / 0.01e-3, copy.AchievedBytes!.Value, 1);
        var gemm = r.Benchmarks.Single(b => b.Name.StartsWith("cublas_gemm_bf16", StringComparison.Ordinal));
        Assert.Equal(("compute", 2.0 * 3 * 256 * 256), (gemm.Roof, gemm.Bytes!.Value));   // bytes derived from M, N, K
        var att = r.Benchmarks.Single(b => b.Name.StartsWith("attention_fwd", StringComparison.Ordinal));
        Assert.Equal("pytorch-sdpa-flash", att.Peer!.Name);
        Assert.Equal((double)report["measurements"]![2]!["ratio_vs_sdpa"]!, att.Ratio!.Value, 3);
        Assert.Equal((0.024, 0.027, 3), (att.Min!.Value, att.Max!.Value, att.Repeats));
        Assert.Equal("CUDA_ERROR_OUT_OF_MEMORY", r.Benchmarks.Single(b => b.Name.StartsWith("adamw", StringComparison.Ordinal)).Error);
        BenchResultIO.Parse(BenchResultIO.ToJson(r), "k.json");
    }

    [Fact]
    public void UnknownShapesAndBrokenFilesAreNamed()
    {
        var e = Assert.Throws<InvalidDataException>(() => LegacyResults.Convert(new JsonObject { ["torch"] = "2.5" }, "sdpa.json"));
        Assert.StartsWith("sdpa.json: ", e.Message);
        Assert.Contains("legacy shapes", e.Message);
        var gemm = Load("gemm-2026-11-23-rerun-dw.json");
        gemm["results"]![0]!.AsObject().Remove("ours_ms");
        var missing = Assert.Throws<InvalidDataException>(() => LegacyResults.Convert(gemm, "g.json"));
        Assert.Equal("g.json: missing number \"ours_ms\" in \"dx_out1024\"", missing.Message);
        using var dir = new TempDir();
        File.WriteAllText(dir.File("x.json"), "{not json");
        Assert.Contains("x.json: not JSON", Assert.Throws<InvalidDataException>(() => LegacyResults.ReadAny(dir.File("x.json"))).Message);
        Assert.Throws<FileNotFoundException>(() => LegacyResults.ReadAny(dir.File("none.json")));
    }

    static JsonObject Load(string file) => JsonNode.Parse(File.ReadAllText(RepoFiles.Path("benchmarks", "results", file)))!.AsObject();
}
