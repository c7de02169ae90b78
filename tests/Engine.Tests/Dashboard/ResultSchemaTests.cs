using System.Text.Json.Nodes;
using Engine.Observability.Results;

namespace Engine.Tests.Dashboard;

/// <summary>engine.bench/1: round trip, the runner API, and one clear error per kind of bad file.</summary>
public class ResultSchemaTests
{
    static BenchResult Full() => new()
    {
        Suite = "gemm",
        Date = new DateTimeOffset(2026, 11, 23, 8, 9, 32, TimeSpan.Zero),
        Commit = "1db089582744b988c6385ec0817b9f144c5c681d",
        Dirty = false,
        Command = "engine bench gemm",
        Machine = new MachineRecord
        {
            CpuModel = "AMD EPYC",
            Cores = 2,
            CpuMhzMax = 3700,
            Os = "Debian",
            Runtime = ".NET 10",
            Avx512 = true,
            Host = "box",
            Gpus = [new GpuRecord { Name = "NVIDIA H100 80GB HBM3", Driver = "570.86.15", MemoryBytes = 85520809984, SmClockMhzMax = 1980, PeakBf16Tflops = 989 }],
        },
        Config = new JsonObject { ["threads"] = 2, ["shapes"] = new JsonArray("square", "model") },
        Method = "median of 15 samples after warm-up",
        Notes = ["machine shared with other builds"],
        Benchmarks =
        [
            BenchEntries.FromSamples("square512", "cpu", "ms", BenchSchema.Lower, [1.5, 1.25, 1.75, 1.5], warmup: 3)
                .WithPeer(BenchEntries.Peer("openblas", [1.5, 1.55, 1.6], "0.3.21")) with
            { Flops = 2.0 * 512 * 512 * 512, Bytes = 4.0 * 3 * 512 * 512, Roof = "compute", Params = new JsonObject { ["m"] = 512 } },
            BenchEntries.FromSamples("train_step", "cuda:0", "tokens/s", BenchSchema.Higher, [40000, 41000, 39000]) with { Flops = 7.5e9 },
            BenchEntries.Failed("swiglu_bwd", "cuda:0", "ms", BenchSchema.Lower, "out of memory"),
        ],
        Extra = new JsonObject { ["load_avg"] = "1.5 2.0 3.0" },
    };

    [Fact]
    public void RoundTripKeepsEveryField()
    {
        var r = Full();
        string json = BenchResultIO.ToJson(r);
        var back = BenchResultIO.Parse(json, "mem.json");
        Assert.Equal(json, BenchResultIO.ToJson(back));
        Assert.Equal(r.Date, back.Date);
        Assert.Equal(r.Machine.Gpus[0].Driver, back.Machine.Gpus[0].Driver);
        var e = back.Benchmarks[0];
        Assert.Equal(1.5, e.Median);
        Assert.Equal((1.25, 1.75, 4, 3), (e.Min!.Value, e.Max!.Value, e.Repeats, e.Warmup!.Value));
        Assert.Equal([1.5, 1.25, 1.75, 1.5], e.Samples!);
        Assert.Equal(1.55 / 1.5, e.Ratio!.Value, 12);
        Assert.Equal("0.3.21", e.Peer!.Version);
        Assert.Equal(512, (int)e.Params!["m"]!);
        Assert.Equal("out of memory", back.Benchmarks[2].Error);
        Assert.Equal("1.5 2.0 3.0", (string?)back.Extra!["load_avg"]);
        Assert.Contains("\"schema\": \"engine.bench/1\"", json);
        Assert.Contains("\"cpu_model\": \"AMD EPYC\"", json);
    }

    [Fact]
    public void WriteNamesBySuiteAndTimeAndNeverOverwrites()
    {
        using var dir = new TempDir();
        string a = BenchResultIO.Write(Full(), dir.Path);
        string b = BenchResultIO.Write(Full(), dir.Path);
        Assert.Equal("gemm-2026-11-23-080932.json", Path.GetFileName(a));
        Assert.Equal("gemm-2026-11-23-080932-2.json", Path.GetFileName(b));
        Assert.Equal(BenchResultIO.ToJson(Full()), BenchResultIO.ToJson(BenchResultIO.Read(b)));
    }

    [Fact]
    public void StatsAndRatiosFollowTheDirectionOfBetter()
    {
        Assert.Equal(new BenchStats(2, 1, 3, 3), BenchStats.Of([3, 1, 2]));
        Assert.Equal(2.5, BenchStats.Of([4, 1, 2, 3]).Median);
        Assert.Equal(2.0, BenchStats.Ratio(BenchSchema.Lower, ours: 1, peer: 2));   // half the time: twice as fast
        Assert.Equal(2.0, BenchStats.Ratio(BenchSchema.Higher, ours: 2, peer: 1));  // twice the rate
        Assert.Null(BenchStats.Ratio(BenchSchema.Higher, 0, 1));
        Assert.Throws<ArgumentException>(() => BenchStats.Of([]));
        Assert.Throws<ArgumentException>(() => BenchStats.Of([1, double.NaN]));
        Assert.Throws<ArgumentException>(() => BenchStats.Ratio("faster", 1, 1));
    }

    [Fact]
    public void AchievedFlopsPerTimeAndPerRate()
    {
        var gemm = new BenchEntry { Name = "g", Device = "cpu", Unit = "ms", Better = "lower", Median = 2, Flops = 4e9, Bytes = 1e6 };
        Assert.Equal(2e12, gemm.AchievedFlops!.Value, 1);
        Assert.Equal(5e8, gemm.AchievedBytes!.Value, 1);
        var train = new BenchEntry { Name = "t", Device = "cpu", Unit = "tokens/s", Better = "higher", Median = 1000, Flops = 8e7 };
        Assert.Equal(8e10, train.AchievedFlops!.Value, 1);
        Assert.Null((train with { Unit = "perplexity" }).AchievedFlops);
        Assert.Null((train with { Error = "failed" }).AchievedFlops);
    }

    [Theory]
    [InlineData("{\"suite\": \"gemm\"}", "no \"schema\"")]
    [InlineData("[1, 2]", "expected a JSON object")]
    [InlineData("{\"schema\": \"engine.bench/1\", \"date\": \"2026-11-23T00:00:00Z\", \"commit\": \"abc\", \"machine\": {\"cpu_model\": \"x\", \"cores\": 2}, \"benchmarks\": []}", "suite")]
    [InlineData("{\"schema\": \"engine.bench/x\"}", "no integer version")]
    public void BadFilesNameTheFileAndTheProblem(string json, string expected)
    {
        var e = Assert.Throws<InvalidDataException>(() => BenchResultIO.Parse(json, "bad.json"));
        Assert.StartsWith("bad.json: ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void InvalidEntriesAreRefusedWithTheirIndex()
    {
        string good = BenchResultIO.ToJson(Full());
        Assert.Throws<NotSupportedException>(() => BenchResultIO.Parse(good.Replace("engine.bench/1", "engine.bench/2"), "f.json"));
        var cases = new (string From, string To, string Expected)[]
        {
            ("\"better\": \"lower\"", "\"better\": \"faster\"", "benchmarks[0] (square512): better must be"),
            ("\"device\": \"cuda:0\"", "\"device\": \"cuda:3\"", "device 'cuda:3'"),
            ("\"roof\": \"compute\"", "\"roof\": \"disk\"", "roof must be"),
            ("\"median\": 1.5", "\"median\": 9.5", "outside [min"),
        };
        foreach (var (from, to, expected) in cases)
        {
            Assert.Contains(from, good);
            int at = good.IndexOf(from, StringComparison.Ordinal);
            string bad = good[..at] + to + good[(at + from.Length)..];
            var e = Assert.Throws<InvalidDataException>(() => BenchResultIO.Parse(bad, "f.json"));
            Assert.Contains(expected, e.Message);
        }
        var wrongRatio = Full() with { Benchmarks = [Full().Benchmarks[0] with { Ratio = 3.0 }] };
        Assert.Contains("ratio 3 disagrees", Assert.Throws<InvalidDataException>(() => BenchResultIO.ToJson(wrongRatio)).Message);
        var dup = Full() with { Benchmarks = [Full().Benchmarks[0], Full().Benchmarks[0]] };
        Assert.Contains("duplicate name", Assert.Throws<InvalidDataException>(() => BenchResultIO.ToJson(dup)).Message);
    }

    [Fact]
    public void NvidiaSmiLinesBecomeGpuRecords()
    {
        var gpus = MachineProbe.ParseNvidiaSmi("NVIDIA H100 80GB HBM3, 570.86.15, 81559, 1980, 2619\nNVIDIA H200, 570.86.15, 143771, [N/A], 3201\n");
        Assert.Equal(2, gpus.Count);
        Assert.Equal("NVIDIA H100 80GB HBM3", gpus[0].Name);
        Assert.Equal("570.86.15", gpus[0].Driver);
        Assert.Equal(81559L * 1024 * 1024, gpus[0].MemoryBytes);
        Assert.Equal(1980, gpus[0].SmClockMhzMax);
        Assert.Null(gpus[1].SmClockMhzMax);
        Assert.Equal(3201, gpus[1].MemClockMhzMax);
        var here = MachineProbe.Describe(probeGpus: false);
        Assert.True(here.Cores > 0);
        Assert.False(string.IsNullOrWhiteSpace(here.CpuModel));
        Assert.Equal("AuthenticAMD family 26 model 2 stepping 0", MachineProbe.CpuId(
            ["processor	: 0", "vendor_id	: AuthenticAMD", "cpu family	: 26", "model		: 2", "model name	: AMD EPYC", "stepping	: 0", "", "processor	: 1", "cpu family	: 99"]));
        Assert.Null(MachineProbe.CpuId(["processor	: 0", "model name	: ARMv8"]));
    }
}
