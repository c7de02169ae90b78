using System.Text.Json.Nodes;
using Engine.Cli.Commands;
using Engine.Core;
using Engine.Observability.Results;
using Engine.Training.Bench;

namespace Engine.Tests.Metrics;

/// <summary>
/// `engine bench`: every suite goes through one writer (BenchRun + BenchResultIO) and reads back as the same result;
/// comm rows become entries; the train suite's PyTorch peer trains the engine's exported weights on its batches
/// (first-step losses equal).
/// </summary>
[Collection(CpuPeakCollection.Name)]
public class BenchHarnessTests
{
    static SuiteOutput Sample() => new(
        [
            BenchEntries.FromSamples("square512", "cpu", "ms", BenchSchema.Lower, [2.0, 1.0, 3.0], warmup: 2)
                .WithPeer(BenchEntries.Peer("openblas", [1.5, 1.6, 1.4], "numpy 1.24.2")) with { Flops = 2.0 * 512 * 512 * 512, Roof = "compute" },
            BenchEntries.FromSamples("train_step", "cpu", "tokens/s", BenchSchema.Higher, [900, 1000, 1100]) with { Params = new JsonObject { ["mfu"] = 0.25 } },
        ],
        new JsonObject { ["threads"] = 2 }, "3 samples after 2 warm-up calls", ["a caveat"]);

    [Fact]
    public void ASuiteRunWritesOneSchemaFileThatReadsBackTheSame()
    {
        using var dir = new TempDir();
        var output = new StringWriter();
        int rc = BenchCommand.RunSuite("gemm", Sample, dir.Path, shared: true, output, MachineProbe.Describe(probeGpus: false),
            new DateTimeOffset(2026, 11, 27, 21, 0, 0, TimeSpan.Zero));
        Assert.Equal(0, rc);
        string file = Directory.GetFiles(dir.Path).Single();
        Assert.Equal("gemm-2026-11-27-210000.json", Path.GetFileName(file));
        var back = BenchResultIO.Read(file);
        Assert.Equal(BenchSchema.Id, back.Schema);
        Assert.Equal("gemm", back.Suite);
        Assert.NotEqual("", back.Commit);
        Assert.Contains(BenchRun.SharedNote, back.Notes);
        Assert.Contains("a caveat", back.Notes);
        Assert.Contains(back.Notes, n => n.StartsWith("load average", StringComparison.Ordinal));
        var gemm = back.Benchmarks[0];
        Assert.Equal((2.0, 1.0, 3.0, 3, 2), (gemm.Median, gemm.Min!.Value, gemm.Max!.Value, gemm.Repeats, gemm.Warmup!.Value));
        Assert.Equal(1.5 / 2.0, gemm.Ratio!.Value, 12);   // the peer is faster: ratio < 1
        Assert.Equal(1000, back.Benchmarks[1].Median);
        Assert.Equal(BenchResultIO.ToJson(BenchResultIO.Read(file)), File.ReadAllText(file));   // round trip is exact
        Assert.Contains("square512", output.ToString());
        Assert.Contains("wrote", output.ToString());
    }

    [Fact]
    public void AnEntryWithAnErrorMakesTheRunFail()
    {
        using var dir = new TempDir();
        var failed = Sample() with { Entries = [BenchEntries.Failed("train_step", "cpu", "tokens/s", BenchSchema.Higher, "first-step losses differ")] };
        Assert.Equal(1, BenchCommand.RunSuite("train", () => failed, dir.Path, false, TextWriter.Null, MachineProbe.Describe(probeGpus: false)));
        Assert.Equal("first-step losses differ", BenchResultIO.Read(Directory.GetFiles(dir.Path).Single()).Benchmarks[0].Error);
    }

    [Fact]
    public void CommRowsBecomeBusBandwidthEntries()
    {
        var report = new JsonObject
        {
            ["kind"] = "threads",
            ["world_size"] = 2,
            ["backend"] = "cpu",
            ["dtype"] = "F32",
            ["definitions"] = "nccl-tests",
            ["results"] = new JsonArray(
                new JsonObject { ["op"] = "all_reduce", ["bytes"] = 4096, ["iters"] = 50, ["time_us"] = 10.0, ["algbw_gbps"] = 0.4096, ["busbw_gbps"] = 0.4096, ["check"] = "ok" },
                new JsonObject { ["op"] = "all_gather", ["bytes"] = 4096, ["iters"] = 50, ["time_us"] = 20.0, ["algbw_gbps"] = 0.2048, ["busbw_gbps"] = 0.1024, ["check"] = "rank 1 differs" }),
        };
        var s = BenchCommand.CommEntries(report, "cpu");
        Assert.Equal(["all_reduce_4096", "all_gather_4096"], s.Entries.Select(e => e.Name));
        Assert.Equal((0.4096, "GB/s", 50), (s.Entries[0].Median, s.Entries[0].Unit, s.Entries[0].Repeats));
        Assert.Null(s.Entries[0].Error);
        Assert.Contains("rank 1 differs", s.Entries[1].Error);
        BenchResultIO.Validate(BenchRun.Build("comm", DateTimeOffset.UtcNow, s, null, false, null, MachineProbe.Describe(probeGpus: false)), "comm");
    }

    [Fact]
    public void TrainPeerTrainsTheEnginesExportOnTheSameBatches()
    {
        if (!File.Exists("/usr/bin/python3") || Engine.Training.Bench.MachineInfo.Run("/usr/bin/python3", "-c \"import torch\"").Code != 0)
            Assert.Skip("/usr/bin/python3 with torch is not installed (.ci/run installs python3-torch)");
        var o = new TrainBenchOptions { Hidden = 64, Layers = 2, Heads = 4, KvHeads = 2, Ffn = 128, Vocab = 256, Seq = 32, Batch = 2, Steps = 2, Warmup = 1 };
        using var peak = new EnvVar(Engine.Training.Metrics.CpuRoof.Variable, "10");
        using var pin = new EnvVar("OPENBLAS_CORETYPE", "Prescott");   // the peer must run without it
        var s = TrainBenchmark.Run(CpuBackend.Instance, o, "/usr/bin/python3");
        var e = s.Entries.Single();
        Assert.True(e.Error is null, e.Error);   // the first-step losses agree (else the entry carries the error)
        Assert.Equal("pytorch", e.Peer!.Name);
        // the peer's BLAS as its own process saw it: not the pinned kernels, and named in the peer's version
        // (.ci/run installs Debian's python3-torch with libopenblas0-pthread: its generic BLAS is OpenBLAS)
        var kernel = Assert.IsType<JsonObject>(e.Params!["pytorch_blas"]?["openblas"]);
        Assert.NotEqual("Prescott", (string?)kernel["corename"]);
        Assert.Contains($"OpenBLAS {(string?)kernel["corename"]} kernels", e.Peer.Version);
        Assert.False(e.Params["pytorch_blas"]!["environment"]!.AsObject().ContainsKey("OPENBLAS_CORETYPE"));
        Assert.Equal(2, e.Repeats);
        Assert.Equal(2, e.Peer.Repeats);
        double engineFirst = (double)e.Params!["engine_first_loss"]!, torchFirst = (double)e.Params["pytorch_first_loss"]!;
        Assert.True(Math.Abs(engineFirst - torchFirst) < 1e-4, $"{engineFirst} vs {torchFirst}");
        Assert.True(Math.Abs(engineFirst - Math.Log(256)) < 0.5, $"first loss {engineFirst} should be near ln 256");
        Assert.Equal(e.Median * e.Flops!.Value / 10e9, (double)e.Params["mfu"]!, 9);
        Assert.Equal(10e9, (double)e.Params["mfu_peak_flops"]!);   // the pinned peak travels with the result
    }

    /// <summary>Python 3 with numpy (and torch when asked) at /usr/bin/python3, else the test is skipped with the reason.</summary>
    static void SkipWithoutPython(string module)
    {
        if (!File.Exists("/usr/bin/python3") || MachineInfo.Run("/usr/bin/python3", $"-c \"import {module}\"").Code != 0)
            Assert.Skip($"/usr/bin/python3 with {module} is not installed (.ci/run installs python3-torch and python3-numpy)");
    }

    [Fact]
    public void PinsAreRemovedFromAPeersEnvironmentAlone()
    {
        var env = new Dictionary<string, string?> { ["OPENBLAS_CORETYPE"] = "Haswell", ["OPENBLAS_L2_SIZE"] = "1048576", ["OPENBLAS_NUM_THREADS"] = "2", ["PATH"] = "/usr/bin" };
        MachineInfo.Unpin(env);
        Assert.Equal(["OPENBLAS_NUM_THREADS", "PATH"], env.Keys.Order());   // the thread count is the harness's own setting
        using (new EnvVar("OPENBLAS_CORETYPE", "Haswell"))
        {
            Assert.Contains("OPENBLAS_CORETYPE=Haswell, set on this machine, removed from its environment alone", MachineInfo.UnpinNote("the peer"));
            Assert.Equal("Haswell", Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE"));   // the engine's process keeps it
        }
    }

    [Fact]
    public void TheOpenBlasPeerRunsItsOwnKernelsAndTheResultNamesThem()
    {
        SkipWithoutPython("numpy");
        // pin OpenBLAS to the oldest kernels it has (SSE3): a peer that inherited this would report them
        using var pin = new EnvVar("OPENBLAS_CORETYPE", "Prescott");
        var s = Engine.Cli.Bench.GemmSuite.Run(Engine.Cli.Bench.GemmOptions.Quick with { Only = "square512" });
        var e = s.Entries.Single();
        Assert.Null(e.Error);
        string core = (string?)s.Extra!["openblas"]!["openblas"]!["corename"] ?? "";
        Assert.False(core is "" or "Prescott", $"peer kernels '{core}'");
        Assert.EndsWith($", {core} kernels", e.Peer!.Version);
        Assert.False(s.Extra["openblas"]!["environment"]!.AsObject().ContainsKey("OPENBLAS_CORETYPE"));
        Assert.Contains(s.Notes!, n => n.Contains("OPENBLAS_CORETYPE=Prescott", StringComparison.Ordinal));
    }

    sealed class EnvVar : IDisposable
    {
        readonly string name;
        readonly string? before;

        public EnvVar(string name, string value)
        {
            this.name = name;
            before = Environment.GetEnvironmentVariable(name);
            Environment.SetEnvironmentVariable(name, value);
        }

        public void Dispose() => Environment.SetEnvironmentVariable(name, before);
    }
}
