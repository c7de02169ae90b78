using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Engine.Cli.Commands;
using Engine.Cuda.Bench;

namespace Engine.Cuda.Tests.Bench;

/// <summary>The microbenchmark harness's pure parts: byte/FLOP accounting, timing statistics, the JSON report,
/// SDPA parsing, file naming, the no-GPU path and the shapes shared with sdpa_bench.py.</summary>
public class KernelBenchCpuTests
{
    private const long R = 16384, C = 4096;

    [Fact]
    public void CopyCountsReadAndWrite() => Assert.Equal(2L << 30, KernelCosts.Copy(1L << 30).Bytes);

    [Fact]
    public void RmsNormBytes()
    {
        Assert.Equal(2 * R * C * 2 + C * 2 + R * 4, KernelCosts.RmsNormForward((int)R, (int)C).Bytes);
        // G = 256 partial blocks of C fp32, written by the backward and read by the reduce.
        Assert.Equal(3 * R * C * 2 + C * 2 + R * 4 + 2 * 256 * C * 4 + C * 4, KernelCosts.RmsNormBackward((int)R, (int)C).Bytes);
        Assert.Equal(3L * 5 * 7 * 2 + 7 * 2 + 5 * 4 + 2 * 5 * 7 * 4 + 7 * 4, KernelCosts.RmsNormBackward(5, 7).Bytes);   // G = rows when rows < 256
    }

    [Fact]
    public void ElementwiseFamilyBytes()
    {
        long n = R * 11008;
        Assert.Equal(6 * n, KernelCosts.SwiGluForward((int)R, 11008).Bytes);
        Assert.Equal(10 * n, KernelCosts.SwiGluBackward((int)R, 11008).Bytes);
        long e = R * C;
        Assert.Equal(6 * e, KernelCosts.CastF32ToBf16(e).Bytes);
        Assert.Equal(6 * e, KernelCosts.CastBf16ToF32(e).Bytes);
        Assert.Equal(6 * e, KernelCosts.AddBf16(e).Bytes);
        Assert.Equal(10 * e, KernelCosts.AccumulateBf16F32(e).Bytes);
        Assert.Equal(30 * e, KernelCosts.AdamW(e).Bytes);
    }

    [Fact]
    public void RopeBytes()
    {
        var c = KernelCosts.Rope(false, 4, 4096, 8, 128);
        Assert.Equal(2L * 4 * 4096 * 8 * 128 * 2 + 64 * 4, c.Bytes);
        Assert.Equal("rope_fwd", c.Kernel);
        Assert.Equal("rope_bwd", KernelCosts.Rope(true, 4, 4096, 8, 128).Kernel);
    }

    [Fact]
    public void EmbeddingBytes()
    {
        Assert.Equal(R * 4 + 2 * R * C * 2, KernelCosts.EmbeddingForward((int)R, 32000, (int)C).Bytes);
        const long U = 12000;
        Assert.Equal(R * C * 2 + R * 4 + (2 * U + 1) * 4 + 2 * U * C * 4, KernelCosts.EmbeddingBackward((int)R, 32000, (int)C, (int)U).Bytes);
    }

    [Fact]
    public void CrossEntropyCountsOnePassAndIssuedTwoReads()
    {
        const long V = 128256;
        var c = KernelCosts.CrossEntropyForwardBackward((int)R, (int)V);
        Assert.Equal(2 * R * V * 2 + R * 4 + 2 * R * 4, c.Bytes);
        Assert.Equal(3 * R * V * 2 + R * 4 + 2 * R * 4, c.IssuedBytes);
    }

    [Fact]
    public void AttentionFlopsFollowTheFa2Convention()
    {
        double full = 4.0 * 2 * 32 * 8192.0 * 8192 * 128;
        Assert.Equal(full, KernelCosts.AttentionFlops(2, 8192, 32, 128, causal: false, backward: false));
        Assert.Equal(full / 2, KernelCosts.AttentionFlops(2, 8192, 32, 128, causal: true, backward: false));
        Assert.Equal(2.5 * full / 2, KernelCosts.AttentionFlops(2, 8192, 32, 128, causal: true, backward: true));
        Assert.Equal(2.0 * 8192 * 8192 * 8192, KernelCosts.Gemm(8192, 8192, 8192).Flops);
        Assert.Equal("B=2 T=8192 H=32 Hkv=8 D=128 causal", KernelCosts.AttentionShapeKey(2, 8192, 32, 8, 128, true));
    }

    [Fact]
    public void RatesAreDecimal()
    {
        Assert.Equal(2000.0, KernelCosts.GBps(2_000_000_000, 1.0), 9);
        Assert.Equal(500.0, KernelCosts.Tflops(1e12, 2.0), 9);
        Assert.Equal(0.0, KernelCosts.GBps(100, 0));
    }

    [Fact]
    public void TimerStatistics()
    {
        Assert.Equal(2.0, GpuTimer.Median([3.0, 1.0, 2.0]));
        Assert.Equal(2.5, GpuTimer.Median([4.0, 1.0, 2.0, 3.0]));
        Assert.Throws<ArgumentException>(() => GpuTimer.Median([]));
        Assert.Equal(20, GpuTimer.ItersFor(1.0, 20, 2, 1000));
        Assert.Equal(2, GpuTimer.ItersFor(50.0, 20, 2, 1000));     // slow calls: at least MinIters
        Assert.Equal(1000, GpuTimer.ItersFor(0.001, 20, 2, 1000)); // fast calls: at most MaxIters
        Assert.Equal(1000, GpuTimer.ItersFor(0.0, 20, 2, 1000));   // below event resolution
    }

    private static readonly BenchDeviceInfo Device = new("NVIDIA H100 80GB HBM3", 9, 0, 132, 80L << 30, 50L << 20, 13000);

    [Fact]
    public void ReportHasShareOfCopyRatioVsSdpaAndErrors()
    {
        var attn = KernelCosts.Attention(false, 2, 8192, 32, 8, 128, true);
        var attnBwd = KernelCosts.Attention(true, 2, 8192, 32, 8, 128, true);
        var sdpa = SdpaResults.Parse($$"""
            {"torch": "2.11.0", "device": "NVIDIA H100 80GB HBM3", "measurements": [
              {"kernel": "sdpa_flash_fwd", "shape": "{{attn.Shape}}", "ms": 1.0, "tflops": 400.0, "gqa": "enable_gqa"},
              {"kernel": "sdpa_flash_bwd", "shape": "{{attn.Shape}}", "error": "RuntimeError: out of memory"}]}
            """);
        var options = KernelBenchOptions.ForPreset("full") with { Commit = "abc123", Sdpa = sdpa };
        double attnMs = attn.Flops / 200e9;   // 200 TFLOP/s
        var rms = KernelCosts.RmsNormForward(16384, 4096);
        var ms = new List<Measurement>
        {
            new("reference", KernelCosts.Copy(1L << 30), new TimingResult(2 * (double)(1L << 30) / 3e9, 0.7, 0.8, 10, 7)),   // 3000 GB/s
            new("llama7b", rms, new TimingResult(rms.Bytes / 1.5e9, 0.1, 0.2, 50, 7)),                                    // 1500 GB/s
            new("llama7b", KernelCosts.RmsNormForward(2, 8), new TimingResult(0.002, 0.002, 0.003, 1000, 7)),
            new("attention", attn, new TimingResult(attnMs, attnMs, attnMs, 5, 7)),
            new("attention", attnBwd, new TimingResult(attnMs, attnMs, attnMs, 5, 7)),
            new("llama7b", KernelCosts.AdamW(100), null, "CudaException: cuLaunchKernel failed"),
        };
        var report = BenchReport.Build(Device, options, ms, new DateTime(2026, 11, 23, 8, 0, 0, DateTimeKind.Utc));
        string text = report.ToJsonString();   // serializable: no NaN/Infinity slipped in
        var back = JsonNode.Parse(text)!.AsObject();

        Assert.Equal(BenchReport.Schema, (string?)back["schema"]);
        Assert.Equal("2026-11-23T08:00:00Z", (string?)back["date"]);
        Assert.Equal("abc123", (string?)back["commit"]);
        Assert.Equal("NVIDIA H100 80GB HBM3", (string?)back["device"]!["name"]);
        Assert.Equal("13.0", (string?)back["device"]!["cuda_driver_api"]);
        Assert.Equal(3000.0, (double)back["copy_gbps"]!, 1);
        Assert.Equal("2.11.0", (string?)back["sdpa"]!["torch"]);
        var rows = back["measurements"]!.AsArray();
        Assert.Equal(ms.Count, rows.Count);

        var copy = rows[0]!;
        Assert.Equal(1.0, (double)copy["share_of_copy"]!, 3);
        var r = rows[1]!;
        Assert.Equal("rmsnorm_fwd", (string?)r["kernel"]);
        Assert.Equal(1500.0, (double)r["gbps"]!, 1);
        Assert.Equal(0.5, (double)r["share_of_copy"]!, 3);
        Assert.Equal(rms.Bytes, (long)r["bytes"]!);
        Assert.False((bool)r["fits_l2"]!);
        Assert.True((bool)rows[2]!["fits_l2"]!);
        foreach (string key in new[] { "ms", "ms_min", "ms_max", "iters", "repeats", "formula" }) Assert.NotNull(r[key]);

        var f = rows[3]!;
        Assert.Equal(200.0, (double)f["tflops"]!, 2);
        Assert.Equal(400.0, (double)f["sdpa_tflops"]!, 2);
        Assert.Equal(0.5, (double)f["ratio_vs_sdpa"]!, 3);
        Assert.Equal("enable_gqa", (string?)f["sdpa_gqa"]);
        Assert.Null(f["gbps"]);
        var b = rows[4]!.AsObject();
        Assert.True(b.ContainsKey("ratio_vs_sdpa"));   // present, null: PyTorch's backward failed for this shape
        Assert.Null(b["ratio_vs_sdpa"]);

        var err = rows[5]!;
        Assert.StartsWith("CudaException", (string?)err["error"]);
        Assert.Null(err["ms"]);

        var table = BenchReport.Table(report).ToList();
        Assert.Equal(ms.Count + 1, table.Count);
        Assert.Contains("error:", table[^1]);
    }

    [Fact]
    public void ShareOfCopyIsNullWithoutACopyMeasurement()
    {
        var rms = KernelCosts.RmsNormForward(16, 16);
        var report = BenchReport.Build(Device, KernelBenchOptions.ForPreset("tiny"),
            [new Measurement("tiny", rms, new TimingResult(0.01, 0.01, 0.01, 1, 1))], DateTime.UtcNow);
        var row = report["measurements"]!.AsArray()[0]!.AsObject();
        Assert.True(row.ContainsKey("share_of_copy"));
        Assert.Null(row["share_of_copy"]);
        Assert.Null(report["copy_gbps"]);
    }

    [Fact]
    public void SdpaParsingRejectsWhatIsNotItsOutput()
    {
        Assert.Throws<InvalidDataException>(() => SdpaResults.Parse("not json"));
        Assert.Throws<InvalidDataException>(() => SdpaResults.Parse("""{"error": "no CUDA device"}"""));
        var r = SdpaResults.Parse("""
            {"measurements": [{"kernel": "sdpa_flash_fwd", "shape": "s", "ms": 2, "tflops": 3},
                              {"kernel": "something_else", "shape": "s", "ms": 1, "tflops": 1},
                              {"kernel": "sdpa_flash_bwd", "shape": "s", "error": "x"}]}
            """);
        Assert.Equal(1, r.Count);
        Assert.True(r.TryGet(false, "s", out var t));
        Assert.Equal(new SdpaTiming(2, 3, ""), t);
        Assert.False(r.TryGet(true, "s", out _));
    }

    [Theory]
    [InlineData("NVIDIA H100 80GB HBM3", "kernels-nvidia-h100-80gb-hbm3-2026-11-23.json")]
    [InlineData("  NVIDIA  H200 ", "kernels-nvidia-h200-2026-11-23.json")]
    [InlineData("", "kernels-gpu-2026-11-23.json")]
    public void FileNameIsASlugOfTheDeviceAndTheDate(string device, string expected) =>
        Assert.Equal(expected, BenchReport.FileName(device, new DateTime(2026, 11, 23, 23, 59, 0, DateTimeKind.Utc)));

    [Fact]
    public void PresetsValidateAndUnknownPresetIsRejected()
    {
        var full = KernelBenchOptions.ForPreset("full");
        full.Validate();
        Assert.Equal(["llama7b", "small"], full.Shapes.Select(s => s.Name));
        Assert.Equal(16, full.Attention!.Cases().Count());
        Assert.All(full.Attention.Cases(), c => Assert.Equal(16384, c.Batch * c.SeqLen));
        KernelBenchOptions.ForPreset("tiny").Validate();
        Assert.Throws<ArgumentException>(() => KernelBenchOptions.ForPreset("huge"));
        Assert.Throws<ArgumentException>(() => (ModelShapes.Tiny with { KvHeads = [3] }).Validate());
        Assert.Throws<ArgumentException>(() => (AttentionGrid.Tiny with { HeadDims = [48] }).Validate());
        Assert.Throws<ArgumentException>(() => new TimingOptions(Repeats: 0).Validate());
    }

    [Fact]
    public void NoDeviceMessageHasTheDocumentedPrefix() =>
        Assert.Equal("no CUDA device: no CUDA driver (libcuda.so.1 not found)", KernelBenchmarks.NoDeviceMessage("no CUDA driver (libcuda.so.1 not found)"));

    [Fact]
    public void BenchKernelsWithoutAGpuPrintsNoCudaDeviceAndExits2()
    {
        if (CudaDevice.TryCreate(out var dev, out _))
        {
            dev!.Dispose();
            Assert.Skip("a CUDA device is present: the no-GPU path is not reachable here");
        }
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int rc = GpuBenchCommand.Execute(new GpuBenchCommand.Args(null, null, "tiny", "unknown"), stdout, stderr);
        Assert.Equal(2, rc);
        Assert.StartsWith("no CUDA device: ", stderr.ToString());
        Assert.Equal("", stdout.ToString());
    }

    [Fact]
    public void BenchKernelsRejectsAnUnknownPresetBeforeOpeningTheDevice() =>
        Assert.Throws<ArgumentException>(() => GpuBenchCommand.Execute(new GpuBenchCommand.Args(null, null, "huge", "x"), TextWriter.Null, TextWriter.Null));

    [Fact]
    public void CommandIsNamedKernelsWithItsOptions()
    {
        var cmd = GpuBenchCommand.Create();
        Assert.Equal("kernels", cmd.Name);
        Assert.Equal(["--commit", "--out", "--preset", "--sdpa"], cmd.Options.Select(o => o.Name).Order());
    }

    /// <summary>sdpa_bench.py's defaults and shape key must equal AttentionGrid.Default and AttentionShapeKey, or no
    /// ratio_vs_sdpa is ever filled in.</summary>
    [Fact]
    public void SdpaScriptDefaultsMatchTheAttentionGrid()
    {
        string root = Repo.Root() ?? throw new InvalidOperationException("repository root (native/ + CMakeLists.txt) not found above " + AppContext.BaseDirectory);
        string py = File.ReadAllText(Path.Combine(root, "benchmarks", "scripts", "sdpa_bench.py"));
        int[] Ints(string name)
        {
            var m = Regex.Match(py, $@"^{name} = \(?([0-9, ]+)\)?\s*$", RegexOptions.Multiline);
            Assert.True(m.Success, $"{name} not found in sdpa_bench.py");
            return m.Groups[1].Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        }
        var g = AttentionGrid.Default;
        Assert.Equal([g.TokensPerBatch], Ints("DEFAULT_TOKENS"));
        Assert.Equal([g.Heads], Ints("DEFAULT_HEADS"));
        Assert.Equal(g.KvHeads, Ints("DEFAULT_KV_HEADS"));
        Assert.Equal(g.SeqLens, Ints("DEFAULT_SEQ_LENS"));
        Assert.Equal(g.HeadDims, Ints("DEFAULT_HEAD_DIMS"));
        Assert.True(g.Causal);
        Assert.Contains("""f"B={b} T={t} H={h} Hkv={hkv} D={d} {'causal' if causal else 'full'}" """.TrimEnd(), py);
        Assert.Contains("max(1, a.tokens // t)", py);   // batch rule of AttentionGrid.Cases
    }
}
