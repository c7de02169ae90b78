using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Model;
using Engine.Tests.Dashboard;
using Engine.Tests.Training;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Metrics;

namespace Engine.Tests.Metrics;

/// <summary>
/// The metrics.jsonl record shared by `engine train` and `engine recipe`: every field against what the run did (MFU
/// against the hand computation with a stated peak), the TensorBoard events the trainer writes read back by the
/// independent reader, the per-rank step-time spread over a thread world, and the CPU roof cache.
/// </summary>
[Collection(CpuPeakCollection.Name)]
public class MetricsTests
{
    static TrainConfig Small(string outDir, int steps) => new()
    {
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
        Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 4, Steps = steps, Seed = 5, EvalBatches = 2 },
        Optim = new AdamWOptions { Lr = 1e-2, WeightDecay = 0.01 },
        Output = new OutputSection { Dir = outDir, Tensorboard = true },
    };

    [Fact]
    public void TrainWritesTheSharedRecordWithMfuAndTensorBoardEvents()
    {
        using var dir = new TempDir();
        using var peak = new CpuPeak("50");   // 50 GFLOP/s stated, so MFU is checkable by hand
        var cfg = Small(dir.Path, 4);
        cfg.Validate();
        var records = new List<StepRecord>();
        var result = new Trainer(cfg, CpuBackend.Instance) { OnStep = records.Add }.Run(TestContext.Current.CancellationToken);
        var lines = File.ReadAllLines(Path.Combine(dir.Path, "metrics.jsonl"));
        Assert.Equal(4, lines.Length);
        // PaLM FLOPs/token of this model by hand: D=32, L=2, H=4, Q=8, KV=2 heads, F=64, V=258 (byte tokenizer), T=32
        // per layer: q 32·32 + k 32·16 + v 32·16 + o 32·32 + 3·32·64 + 2·32 = 9,280; N = 2·9,280 + 32 + head 258·32 = 26,848
        // 6N = 161,088; 12·L·H·Q·T = 12·2·4·8·32 = 24,576; total 185,664
        Assert.Equal(185_664, Throughput.For(CpuBackend.Instance, new LlamaConfig
        { VocabSize = 258, HiddenSize = 32, IntermediateSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 }.Validate(), 32).FlopsPerToken);
        for (int i = 0; i < 4; i++)
        {
            var raw = JsonNode.Parse(lines[i])!.AsObject();
            foreach (string key in new[] { "step", "total_steps", "loss", "grad_norm", "lr", "tokens", "tokens_per_s", "tokens_per_s_per_device", "tokens_per_s_current", "mfu", "mfu_current",
                "mfu_peak_flops", "elapsed_s", "eta_s", "step_s", "host_mem_bytes", "skipped_steps" })
                Assert.True(raw.ContainsKey(key), $"metrics.jsonl line {i + 1} lacks \"{key}\": {lines[i]}");
            Assert.False(raw.ContainsKey("stage"));         // engine train: no stage
            Assert.False(raw.ContainsKey("step_s_max"));    // one rank: no spread
            var r = StepRecord.Parse(lines[i], "metrics.jsonl");
            var m = result.Steps[i];
            Assert.Equal(i + 1, r.Step);
            Assert.Equal(4, r.TotalSteps);
            Assert.Equal(m.Loss, r.Loss);
            Assert.Equal(m.GradNorm, r.GradNorm);
            Assert.Equal((i + 1) * 4 * 32, r.Tokens);
            Assert.Equal(r.TokensPerS, r.TokensPerSPerDevice);
            Assert.Equal(m.TokensPerSecond * 185_664 / 50e9, r.Mfu!.Value, 12);
            // the peak MFU divides by is in every line, where it comes from in the run's first
            Assert.Equal(50e9, r.MfuPeakFlops);
            if (i == 0) Assert.Contains("pinned by --peak / ENGINE_PEAK_GFLOPS=50", r.MfuPeak);
            else Assert.False(raw.ContainsKey("mfu_peak"));
            // current tokens/s: the steps since the first (the window of 10 is not full here) over their own wall times
            double current = i == 0 ? m.TokensPerSecond : i * 4 * 32 / result.Steps.Skip(1).Take(i).Sum(x => x.StepSeconds);
            Assert.Equal(current, r.TokensPerSCurrent, 9);
            Assert.Equal(current * 185_664 / 50e9, r.MfuCurrent!.Value, 12);
            Assert.True(r.HostMemBytes > 1 << 20 && r.StepS > 0 && r.StepS <= r.ElapsedS);
            Assert.Equal(0, r.SkippedSteps);
            Assert.Equal(r.ElapsedS / (i + 1) * (4 - (i + 1)), r.EtaS, 9);
            Assert.Equal(records[i], r with { SourceLoss = records[i].SourceLoss });   // the console gets the same record
        }
        Assert.NotNull(StepRecord.Parse(lines[3], "m").ValidLoss);

        string node = TensorBoardTests.SkipUnlessReader();
        var file = Directory.GetFiles(Path.Combine(dir.Path, "tensorboard"), "events.out.tfevents.*").Single();
        var events = TensorBoardTests.Read(node, file);
        Assert.Equal(5, events.Count);   // the version record + one per step
        for (int i = 0; i < 4; i++)
        {
            var values = events[i + 1]["values"]!.AsArray().ToDictionary(v => (string)v!["tag"]!, v => (double)v!["simple_value"]!);
            Assert.Equal(i + 1, (double)events[i + 1]["step"]!);
            Assert.Equal((float)result.Steps[i].Loss, (float)values["train/loss"]);
            Assert.Equal((float)records[i].Mfu!.Value, (float)values["train/mfu"]);
            Assert.Equal((float)records[i].TokensPerS, (float)values["train/tokens_per_s"]);
            Assert.Contains("train/grad_norm", values.Keys);
        }
    }

    [Fact]
    public void RanksReportTheirStepTimeSpread()
    {
        using var dir = new TempDir();
        var path = Path.Combine(dir.Path, "metrics.jsonl");
        var records = Engine.Parallel.ThreadCommunicator.Run(2, comm =>
        {
            using var log = new MetricsLog(comm, CpuBackend.Instance, new Throughput(1000, 1e9, 1, "stated"), path);
            log.BeginStage("s1", new Throughput(1000, 1e9, 1, "stated"));
            // rank 1 is the straggler: 0.5 s of compute against rank 0's 0.2 s
            var m = new StepMetrics(1, 3, 2.5, 1e-3, 0.7, 2048, 4096, 0.6, null, StepSeconds: 0.6 + comm.Rank * 0.01, ComputeSeconds: 0.2 + comm.Rank * 0.3);
            var first = log.Record(m);
            var second = log.Record(m with { Step = 2, GradNorm = double.NaN, ElapsedSeconds = 1.2 });
            return (first, second);
        });
        foreach (var (first, second) in records)
        {
            Assert.Equal(0.2, first.ComputeSMin!.Value, 12);
            Assert.Equal(0.5, first.ComputeSMax!.Value, 12);
            Assert.Equal(0.6, first.StepSMin!.Value, 12);
            Assert.Equal(0.61, first.StepSMax!.Value, 12);
            Assert.Equal(2048, first.TokensPerSPerDevice);   // 4096 tokens/s over 2 ranks
            Assert.Equal(4096 * 1000 / 1e9, first.Mfu!.Value, 12);
            Assert.Equal("s1", first.Stage);
            Assert.Equal(0, first.SkippedSteps);
            Assert.Equal(1, second.SkippedSteps);   // a non-finite norm: AdamW wrote nothing
            Assert.Equal(0.6 * 2, first.EtaS, 12);  // 2 steps left at 0.6 s each
        }
        var lines = File.ReadAllLines(path);
        Assert.Equal(2, lines.Length);   // only the lead rank writes
        Assert.Contains("\"stage\":\"s1\"", lines[0]);
        Assert.Contains("\"compute_s_max\":0.5", lines[0]);
    }

    [Fact]
    public void CurrentTokensPerSecondIsOverTheLastTenStepsAndRestartsWithAStage()
    {
        using var log = new MetricsLog(new Engine.Parallel.SingleRankCommunicator(CpuBackend.Instance), CpuBackend.Instance, new Throughput(1000, 1e9, 1, "stated"), null);
        // 1,000 tokens per step; step k takes k/100 s, so the average and the window part ways as the steps slow down
        var recs = new List<StepRecord>();
        double elapsed = 0;
        for (int k = 1; k <= 15; k++)
        {
            elapsed += k / 100.0;
            recs.Add(log.Record(new StepMetrics(k, 15, 1, 1e-3, 1, 1000L * k, 1000.0 * k / elapsed, elapsed, null, StepSeconds: k / 100.0)));
        }
        Assert.Equal(recs[0].TokensPerS, recs[0].TokensPerSCurrent);                       // the first step: the average only
        Assert.Equal(1000 / 0.02, recs[1].TokensPerSCurrent, 9);                             // step 2 alone
        Assert.Equal(10 * 1000 / Enumerable.Range(6, 10).Sum(k => k / 100.0), recs[14].TokensPerSCurrent, 9);   // steps 6..15
        Assert.True(recs[14].TokensPerSCurrent < recs[14].TokensPerS);                       // slowing down: below the average
        Assert.Equal(recs[14].TokensPerSCurrent * 1000 / 1e9, recs[14].MfuCurrent!.Value, 12);
        Assert.Equal((1e9, "stated"), (recs[0].MfuPeakFlops!.Value, recs[0].MfuPeak));
        Assert.Equal((1e9, null), (recs[14].MfuPeakFlops!.Value, recs[14].MfuPeak));          // described once per run or stage
        log.BeginStage("next", new Throughput(1000, null, 1, "no peak"));
        var first = log.Record(new StepMetrics(1, 3, 1, 1e-3, 1, 500, 123, 4, null, StepSeconds: 1));
        Assert.Equal(123, first.TokensPerSCurrent);                                        // a stage starts its own window
        Assert.Null(first.MfuCurrent);
        Assert.Null(first.MfuPeakFlops);
        Assert.Equal("no peak", first.MfuPeak);
    }

    [Fact]
    public void MfuAgainstTheHandComputationOnCpuAndGpu()
    {
        var cfg = new LlamaConfig { VocabSize = 8192, HiddenSize = 384, IntermediateSize = 1024, NumLayers = 6, NumHeads = 6, NumKvHeads = 2, MaxPositionEmbeddings = 256 }.Validate();
        using (new CpuPeak("200"))
        {
            var cpu = Throughput.For(CpuBackend.Instance, cfg, 256);
            Assert.Equal(82_605_312, cpu.FlopsPerToken);   // MfuTests' hand computation of the 12M model
            Assert.Equal(0.41302656, cpu.Mfu(1000)!.Value, 12);   // 1,000 tok/s × 82,605,312 / 200 GFLOP/s
            Assert.Contains("ENGINE_PEAK_GFLOPS=200", cpu.PeakSource);
            Assert.Equal(0.41302656 / 2, Throughput.For(CpuBackend.Instance, cfg, 256, ranks: 4, nodes: 2).Mfu(1000)!.Value, 12);
        }
        var h100 = Throughput.ForDevice("NVIDIA H100 80GB HBM3", cfg, 256, ranks: 8);
        Assert.Equal(1e6 * 82_605_312 / (989e12 * 8), h100.Mfu(1e6)!.Value, 12);
        Assert.Contains("datasheet", h100.PeakSource);
        Assert.Null(Throughput.ForDevice("NVIDIA GeForce GTX 1080", cfg, 256).Mfu(1e6));
        // --peak pins a GPU too (an unknown one, or a power-capped one): per device, T = TFLOP/s
        using (new CpuPeak("165T"))
        {
            var pinned = Throughput.ForDevice("NVIDIA GeForce RTX 4090", cfg, 256, ranks: 2);
            Assert.Equal(1e6 * 82_605_312 / (165e12 * 2), pinned.Mfu(1e6)!.Value, 12);
            Assert.Equal(1e6 * 82_605_312 / (165e12 * 8), Throughput.ForDevice("NVIDIA H100 80GB HBM3", cfg, 256, ranks: 8).Mfu(1e6)!.Value, 12);
        }
        using (new CpuPeak("fast"))
            Assert.Contains("ENGINE_PEAK_GFLOPS", Assert.Throws<ArgumentException>(() => CpuRoof.Get()).Message);
        Assert.Equal(362, CpuRoof.ParseGflops("362", "--peak"));
        Assert.Equal(362, CpuRoof.ParseGflops("362G", "--peak"));
        Assert.Equal(989_000, CpuRoof.ParseGflops("989T", "--peak"));
        foreach (string bad in new[] { "0", "-3", "x", "1e999", "NaN" })
            Assert.StartsWith("--peak must be a positive number", Assert.Throws<ArgumentException>(() => CpuRoof.ParseGflops(bad, "--peak")).Message);
    }

    [Fact]
    public void TheCpuPeakIsAStoredCalibrationWithItsDateAndMachineNeverAMeasurementUnderLoad()
    {
        using var dir = new TempDir();
        string cache = dir.File("roof.json");
        // a busy machine with no calibration: no MFU rather than a figure that moves with the load, and nothing stored
        var busy = CpuRoof.Get(cache, maxLoadPerCore: -1);
        Assert.Null(busy.FlopsPerSecond);
        Assert.Contains("MFU not computed", busy.Source);
        Assert.Contains("--peak", busy.Source);
        Assert.False(File.Exists(cache));
        // a quiet one (any load counts as quiet here: the 2-core CI box is busy) calibrates once and stores it
        var first = CpuRoof.Get(cache, maxLoadPerCore: double.MaxValue);
        Assert.True(first.FlopsPerSecond > 1e8, $"roof {first.FlopsPerSecond}");
        Assert.Contains("made now", first.Source);
        var entry = JsonNode.Parse(File.ReadAllText(cache))!.AsObject()[CpuRoof.Key()]!.AsObject();
        Assert.Equal(DateTime.UtcNow.ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture), (string?)entry["date"]);
        Assert.Equal(Environment.MachineName, (string?)entry["host"]);
        // later runs read the pin, whatever the load: the same figure, its date and machine in the source
        var second = CpuRoof.Get(cache, maxLoadPerCore: -1);
        // the cache holds the figure as JSON text: equal to a relative 1e-12, not to the last bit
        static void Near(double expected, double actual) => Assert.Equal(expected, actual, tolerance: Math.Abs(expected) * 1e-12);
        Near(first.FlopsPerSecond!.Value, second.FlopsPerSecond!.Value);
        Assert.Contains($"calibration of {(string?)entry["date"]} on {Environment.MachineName} ({CpuRoof.Key()}", second.Source);
        Assert.DoesNotContain("made now", second.Source);
        CpuRoof.Offer(first.FlopsPerSecond.Value / 2, "slower", cache);       // a lower figure does not replace the calibration
        Near(first.FlopsPerSecond.Value, CpuRoof.Get(cache).FlopsPerSecond!.Value);
        CpuRoof.Offer(first.FlopsPerSecond.Value * 3, "best GEMM of engine bench gemm", cache);
        Near(first.FlopsPerSecond.Value * 3, CpuRoof.Get(cache).FlopsPerSecond!.Value);
        Assert.Contains("best GEMM of engine bench gemm", CpuRoof.Get(cache).Source);
        File.WriteAllText(cache, "{ not json");
        Assert.Contains("made now", CpuRoof.Get(cache, maxLoadPerCore: double.MaxValue).Source);     // a damaged file is calibrated again
    }

    /// <summary>Sets ENGINE_PEAK_GFLOPS (what --peak sets) for the scope (tests using it share a non-parallel collection).</summary>
    sealed class CpuPeak : IDisposable
    {
        readonly string? before = Environment.GetEnvironmentVariable(CpuRoof.Variable);
        public CpuPeak(string value) => Environment.SetEnvironmentVariable(CpuRoof.Variable, value);
        public void Dispose() => Environment.SetEnvironmentVariable(CpuRoof.Variable, before);
    }
}

/// <summary>Tests that set process-wide profiler or CPU-peak state run alone.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class CpuPeakCollection
{
    public const string Name = "process-wide observability state";
}
