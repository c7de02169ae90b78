using System.Diagnostics;
using System.Text.Json.Nodes;

namespace Engine.Cuda.Tests.GpuRun;

/// <summary>
/// benchmarks/scripts/gpu_run.sh in its dry mode: a copy of the script in a scratch repository, fakes of nvidia-smi,
/// nvcc, cmake, ninja, python3, compute-sanitizer and the carried test app/CLI on PATH (GpuRun/fakes/, driven by a
/// plan of per-step actions: ok, fail, skip, crash, hang), and a fake clock that the fakes move on. Real timeouts are
/// capped at 2 s in dry mode and a step killed by one is charged its whole timeout on the fake clock, so the budget
/// arithmetic is checked without waiting: nothing here depends on how fast the machine is.
/// </summary>
public class GpuRunScriptTests
{
    const string Ns = "Engine.Cuda.Tests.";
    static readonly string[] Classes =
    [
        Ns + "Gpu.ElementwiseGpuTests", Ns + "Gpu.RopeGpuTests", Ns + "Gpu.AttentionV2GpuTests", Ns + "Gpu.GemmGpuTests",
        Ns + "Gpu.AttentionV2DebugGpuTests", Ns + "Gpu.ZetaGpuTests", Ns + "KernelParamsTests",
    ];

    sealed record DryRun(int ExitCode, string Output, JsonObject Summary, List<JsonObject> Snapshots, string[] OutFiles, string[] Calls, string Root)
    {
        public JsonObject Step(string name) =>
            Summary["steps"]!.AsArray().Select(s => s!.AsObject()).SingleOrDefault(s => (string)s["name"]! == name)
            ?? throw new Xunit.Sdk.XunitException($"no step '{name}' in the summary:\n{Summary}");
        public string[] AppCalls => [.. Calls.Where(c => c.StartsWith("app ", StringComparison.Ordinal))];
    }

    /// <summary>A scratch repository with the script, a carry (fake app, CLI, one fatbin, COMMIT) and a fake
    /// site-packages with CUDA 13's wheel layout; returns its root.</summary>
    static string Scratch()
    {
        string repo = Repo.Root() ?? throw new InvalidOperationException("repository root not found");
        string root = Directory.CreateTempSubdirectory("engine-gpurun-").FullName;
        string fakes = Path.Combine(repo, "tests", "Engine.Cuda.Tests", "GpuRun", "fakes");
        Directory.CreateDirectory(Path.Combine(root, "repo", "benchmarks", "scripts"));
        File.Copy(Path.Combine(repo, "benchmarks", "scripts", "gpu_run.sh"), Path.Combine(root, "repo", "benchmarks", "scripts", "gpu_run.sh"));
        string bin = Directory.CreateDirectory(Path.Combine(root, "bin")).FullName;
        foreach (var f in new[] { "nvidia-smi", "nvcc", "ninja", "cmake", "python3", "compute-sanitizer" })
            File.CreateSymbolicLink(Path.Combine(bin, f), Path.Combine(fakes, f));
        string carry = Path.Combine(root, "carry");
        Directory.CreateDirectory(Path.Combine(carry, "app"));
        Directory.CreateDirectory(Path.Combine(carry, "kernels-nvcc11.8"));
        File.Copy(Path.Combine(fakes, "app-Engine.Cuda.Tests"), Path.Combine(carry, "app", "Engine.Cuda.Tests"));
        File.Copy(Path.Combine(fakes, "app-engine"), Path.Combine(carry, "app", "engine"));
        File.WriteAllText(Path.Combine(carry, "kernels-nvcc11.8", "elementwise.fatbin"), "");
        File.WriteAllText(Path.Combine(carry, "COMMIT"), "0123456789abcdef\n");
        Directory.CreateDirectory(Path.Combine(root, "repo", ".device-carry"));
        Bash(root, $"tar -C '{carry}' -cJf '{root}/repo/.device-carry/engine-gpu.tar.xz' .");
        string site = Path.Combine(root, "site");
        Directory.CreateDirectory(Path.Combine(site, "nvidia", "cu13", "lib"));
        Directory.CreateDirectory(Path.Combine(site, "nvidia", "nccl", "lib"));
        foreach (var f in new[] { "nvidia/cu13/lib/libcublas.so.13", "nvidia/cu13/lib/libcublasLt.so.13", "nvidia/nccl/lib/libnccl.so.2" })
            File.WriteAllText(Path.Combine(site, f), "");
        File.WriteAllLines(Path.Combine(root, "classes"), Classes);
        File.WriteAllText(Path.Combine(root, "calls"), "");
        return root;
    }

    static void Bash(string cwd, string command)
    {
        var psi = new ProcessStartInfo("bash", ["-c", command]) { WorkingDirectory = cwd, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{command}: {err}");
    }

    static DryRun Run(string root, string phase, int budget, string plan, int clockStart = 1000)
    {
        string fakes = Path.Combine(Repo.Root()!, "tests", "Engine.Cuda.Tests", "GpuRun", "fakes");
        File.WriteAllText(Path.Combine(root, "plan"), plan);
        File.WriteAllText(Path.Combine(root, "clock"), clockStart.ToString(System.Globalization.CultureInfo.InvariantCulture));
        string snaps = Path.Combine(root, "snaps-" + phase), outDir = Path.Combine(root, "out-" + phase);
        var psi = new ProcessStartInfo("bash", [Path.Combine(root, "repo", "benchmarks", "scripts", "gpu_run.sh"), "--phase", phase, "--budget", budget.ToString(System.Globalization.CultureInfo.InvariantCulture)])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = root,
        };
        var env = new Dictionary<string, string>
        {
            ["PATH"] = Path.Combine(root, "bin") + ":" + Environment.GetEnvironmentVariable("PATH"),
            ["FAKE_DIR"] = fakes,
            ["FAKE_PLAN"] = Path.Combine(root, "plan"),
            ["FAKE_CALLS"] = Path.Combine(root, "calls"),
            ["FAKE_CLASSES"] = Path.Combine(root, "classes"),
            ["FAKE_SITE"] = Path.Combine(root, "site"),
            ["FAKE_REAL_PYTHON"] = "/usr/bin/python3",
            ["ENGINE_GPU_RUN_FAKE_CLOCK"] = Path.Combine(root, "clock"),
            ["ENGINE_GPU_RUN_SNAPSHOTS"] = snaps,
            ["OUT"] = outDir,
        };
        foreach (var (k, v) in env) psi.Environment[k] = v;
        foreach (var k in new[] { "ENGINE_LIBCUBLAS", "ENGINE_LIBNCCL", "ENGINE_KERNELS_DIR", "ENGINE_ATTENTION", "ENGINE_ATTENTION_SM90" })
            psi.Environment.Remove(k);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        // a hang guard, not a timing assertion: every real wait in dry mode is capped at 2 s
        if (!p.WaitForExit(TimeSpan.FromMinutes(3))) { p.Kill(true); Assert.Fail("gpu_run.sh --dry did not finish within 3 minutes"); }
        string output = stdout.Result + stderr.Result;
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "gpu_summary.json")))!.AsObject();
        var snapshots = Directory.GetFiles(snaps).Order(StringComparer.Ordinal).Select(f => JsonNode.Parse(File.ReadAllText(f))!.AsObject()).ToList();
        return new DryRun(p.ExitCode, output, summary, snapshots, [.. Directory.GetFiles(outDir).Select(Path.GetFileName).Order()!],
            File.ReadAllLines(Path.Combine(root, "calls")), root);
    }

    static int Steps(JsonObject summary) => summary["steps"]!.AsArray().Count;

    static void SummaryIsRewrittenAfterEveryStep(DryRun r)
    {
        Assert.Equal("running", (string)r.Snapshots[0]["verdict"]!);
        Assert.Equal(0, Steps(r.Snapshots[0]));
        for (int i = 1; i < r.Snapshots.Count - 1; i++)
        {
            Assert.Equal(i, Steps(r.Snapshots[i]));   // exactly one more finished step per rewrite
            Assert.Equal("running", (string)r.Snapshots[i]["verdict"]!);
        }
        Assert.Equal(r.Summary.ToJsonString(), r.Snapshots[^1].ToJsonString());
        Assert.Equal(Steps(r.Summary), r.Snapshots.Count - 2);   // the first write, one per step, the final verdict
    }

    [Fact]
    public void PhaseOneRecordsEachStepAndSurvivesAHangAFailureAndSkips()
    {
        string root = Scratch();
        try
        {
            var r = Run(root, "1", 420, """
                build:werror-ON fail 30
                test:Engine.Cuda.Tests.Gpu.RopeGpuTests hang
                test:Engine.Cuda.Tests.Gpu.AttentionV2GpuTests fail 20 5
                test:Engine.Cuda.Tests.Gpu.GemmGpuTests skip 3 2
                """);
            Assert.True(r.ExitCode == 1, r.Output);
            Assert.Equal("fail", (string)r.Summary["verdict"]!);
            Assert.Equal(["gpu_summary.json", "logs.tar.gz"], r.OutFiles);   // at most 3 files come back
            SummaryIsRewrittenAfterEveryStep(r);
            Assert.Equal("0123456789abcdef", (string)r.Summary["commit"]!);
            Assert.Equal("carry", (string)r.Summary["commit_source"]!);

            // the libraries found in the CUDA 13 wheel layout and exported to every test run
            string cublas = Path.Combine(root, "site", "nvidia", "cu13", "lib", "libcublas.so.13");
            string nccl = Path.Combine(root, "site", "nvidia", "nccl", "lib", "libnccl.so.2");
            Assert.Equal(cublas, (string)r.Summary["libraries"]!["cublas"]!);
            Assert.Equal(nccl, (string)r.Summary["libraries"]!["nccl"]!);
            Assert.All(r.AppCalls, c => Assert.Contains($"|CUBLAS={cublas}|NCCL={nccl}|", c));

            // -Werror failed, the retry without it built (a soft failure: the run is not failed by it alone)
            Assert.Equal("failed", (string)r.Step("build_kernels_werror_ON")["status"]!);
            Assert.Contains("fallback", (string)r.Step("build_kernels_werror_ON")["note"]!);
            Assert.Equal("ok", (string)r.Step("build_kernels_werror_OFF")["status"]!);
            Assert.Equal("built (nvcc 13.0, sm_90, without -Werror)", (string)r.Summary["kernels"]!["source"]!);
            Assert.Contains(r.Calls, c => c.Contains("-G Ninja") && c.Contains("-DENGINE_NVCC_THREADS=0") && c.Contains("-DENGINE_CUDA_ARCHS=90"));

            // the hang: killed at the class's timeout, charged that timeout, later classes still ran
            var rope = r.Step("test RopeGpuTests");
            Assert.Equal(("timeout", "124", 90, 90), ((string)rope["status"]!, (string)rope["rc"]!, (int)rope["timeout_s"]!, (int)rope["seconds"]!));
            Assert.Equal("ok", (string)r.Step("test ZetaGpuTests")["status"]!);
            // a failure names the failing test; skips with a GPU present count as failures
            var v2 = r.Step("test AttentionV2GpuTests");
            Assert.Equal("failed", (string)v2["status"]!);
            Assert.Equal("Engine.Cuda.Tests.Gpu.AttentionV2GpuTests.Fails(d: 64)", (string)v2["tests"]!["failed_tests"]![0]!);
            Assert.Equal("failed", (string)r.Step("test GemmGpuTests")["status"]!);
            Assert.Equal(2, (int)r.Summary["tests"]!["skips_counted_as_failures"]!);

            // GPU classes only, cheapest first, each alone; the wgmma forward off for them and then tested alone
            var selected = r.AppCalls.Select(c => c[4..c.IndexOf('|')]).ToList();
            Assert.Equal([Ns + "Gpu.ElementwiseGpuTests", Ns + "Gpu.RopeGpuTests", Ns + "Gpu.GemmGpuTests", Ns + "Gpu.AttentionV2GpuTests",
                Ns + "Gpu.ZetaGpuTests", Ns + "Backend.BackendOpGpuTests", Ns + "Gpu.AttentionV2GpuTests.HopperForwardMatchesFp64Reference"], selected);
            Assert.All(r.AppCalls[..^1], c => Assert.Contains("|SM90=0|", c));
            Assert.Contains("-method- Engine.Cuda.Tests.Gpu.AttentionV2GpuTests.HopperForwardMatchesFp64Reference", r.AppCalls[3]);
            Assert.Contains("|ATTN=v2|", r.AppCalls[5]);
            Assert.Contains("-class Engine.Cuda.Tests.Backend.TrainingStepGpuTests", r.AppCalls[5]);
            Assert.Contains("|SM90=1|", r.AppCalls[^1]);
            Assert.Equal("ok", (string)r.Step("build_sm90a")["status"]!);

            int elapsed = (int)r.Summary["elapsed_s"]!;
            // the fakes' seconds: configure 1 + build 30 (failed), configure 1 + build 1, Elementwise 1, Rope's timeout 90,
            // Gemm 3, AttentionV2 20, Zeta 1, backend on v2 1, sm_90a build 1 and test 1
            Assert.Equal(1 + 30 + 1 + 1 + 1 + 90 + 3 + 20 + 1 + 1 + 1 + 1, elapsed);
            Assert.True(elapsed <= 420);
            // logs: one per step that ran something, the test XMLs beside them
            string list = Path.Combine(root, "logs.txt");
            Bash(root, $"tar -tzf '{root}/out-1/logs.tar.gz' > '{list}'");
            var logs = File.ReadAllLines(list);
            foreach (var f in new[] { "./unpack.log", "./probe.log", "./build_kernels.log", "./RopeGpuTests.log", "./AttentionV2GpuTests.xml", "./sm90a_forward.xml" })
                Assert.Contains(f, logs);
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void TheBudgetHoldsWhenStepsRunLongOrHang()
    {
        string root = Scratch();
        try
        {
            var r = Run(root, "1", 420, """
                test:Engine.Cuda.Tests.Gpu.ElementwiseGpuTests pass 330 4
                test:Engine.Cuda.Tests.Gpu.RopeGpuTests hang
                """);
            Assert.True(r.ExitCode == 1, r.Output);
            SummaryIsRewrittenAfterEveryStep(r);
            // the hang gets what is left (420 - 15 reserved - what ran before it), not its 90 s cap
            var rope = r.Step("test RopeGpuTests");
            int elapsedBefore = 1 + 1 + 330;   // configure, build, Elementwise
            Assert.Equal(420 - 15 - elapsedBefore, (int)rope["timeout_s"]!);
            Assert.Equal("timeout", (string)rope["status"]!);
            foreach (var name in new[] { "test GemmGpuTests", "test AttentionV2GpuTests", "test ZetaGpuTests", "test backend on attention v2", "build_sm90a" })
            {
                Assert.Equal("not_run", (string)r.Step(name)["status"]!);
                Assert.StartsWith("time budget", (string)r.Step(name)["note"]!);
            }
            Assert.True((int)r.Summary["elapsed_s"]! <= 420, r.Summary.ToJsonString());
            Assert.Equal("fail", (string)r.Summary["verdict"]!);
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void WithoutAGpuOrABuildTheCarriedFatbinsRunAndSkipsAreOnlySkips()
    {
        string root = Scratch();
        try
        {
            var r = Run(root, "1", 420, """
                gpu absent
                build:werror-ON fail 5
                build:werror-OFF fail 5
                test:Engine.Cuda.Tests.Gpu.GemmGpuTests skip 1 2
                """);
            Assert.True(r.ExitCode == 1, r.Output);   // no_device is not a pass
            Assert.Equal("no_device", (string)r.Summary["verdict"]!);
            Assert.False((bool)r.Summary["device"]!["present"]!);
            Assert.Equal("carried (nvcc 11.8, sm_80/sm_90 + compute_90 PTX)", (string)r.Summary["kernels"]!["source"]!);
            Assert.EndsWith(".device-carry/unpacked/kernels-nvcc11.8", (string)r.Summary["kernels"]!["dir"]!);
            Assert.Equal("ok", (string)r.Step("test GemmGpuTests")["status"]!);
            Assert.Equal(0, (int)r.Summary["tests"]!["skips_counted_as_failures"]!);
            Assert.Equal("skipped", (string)r.Step("build_sm90a")["status"]!);
            Assert.All(r.AppCalls, c => Assert.Contains("KERNELS=" + Path.Combine(root, "repo", ".device-carry", "unpacked", "kernels-nvcc11.8") + "|", c));
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void PhaseTwoReusesPhaseOneAndReturnsItsResultsInAThirdFile()
    {
        string root = Scratch();
        try
        {
            var first = Run(root, "1", 420, "");
            Assert.True(first.ExitCode == 0, first.Output + first.Summary);
            Assert.Equal("pass", (string)first.Summary["verdict"]!);
            int phase1Calls = first.Calls.Length;

            var r = Run(root, "2", 240, """
                racecheck:test:Engine.Cuda.Tests.Gpu.SanitizerShapesGpuTests fail 10 3
                python:peft_parity.py fail 4
                """);
            Assert.True(r.ExitCode == 1, r.Output);
            Assert.Equal(["gpu_summary.json", "logs.tar.gz", "results.tar.gz"], r.OutFiles);
            SummaryIsRewrittenAfterEveryStep(r);
            Assert.Equal("already unpacked (same carry)", (string)r.Step("unpack")["note"]!);
            Assert.StartsWith("reused the earlier phase's kernels: built (nvcc 13.0, sm_90)", (string)r.Step("build_kernels")["note"]!);
            var calls = r.Calls[phase1Calls..];
            Assert.DoesNotContain(calls, c => c.Contains("--target engine_kernels ") || c.EndsWith("--target engine_kernels", StringComparison.Ordinal));
            Assert.Contains(calls, c => c.StartsWith("compute-sanitizer --tool memcheck", StringComparison.Ordinal));
            Assert.Equal("ok", (string)r.Step("memcheck small shapes")["status"]!);
            Assert.Equal("failed", (string)r.Step("racecheck small shapes")["status"]!);
            Assert.Equal("ok", (string)r.Step("memcheck sm90a forward")["status"]!);
            Assert.Contains(calls, c => c.StartsWith("app " + Ns + "Gpu.AttentionV2DebugGpuTests|", StringComparison.Ordinal)
                && c.Contains("|DEBUG=" + Path.Combine(root, "repo", "build", "native-gpu-debug", "kernels") + "|"));
            Assert.Contains(calls, c => c.StartsWith("cmake -S", StringComparison.Ordinal) && c.Contains("-DENGINE_DEBUG_KERNELS=ON"));
            Assert.Equal("ok", (string)r.Step("hf_parity")["status"]!);
            Assert.Equal("failed", (string)r.Step("peft_parity")["status"]!);
            Assert.Contains(calls, c => c.StartsWith("engine bench kernels --preset tiny", StringComparison.Ordinal) && c.Contains("--sdpa"));
            Assert.Contains(calls, c => c.StartsWith("engine bench train --device cuda", StringComparison.Ordinal));
            Assert.True((int)r.Summary["elapsed_s"]! <= 240);

            string list = Path.Combine(root, "results.txt");
            Bash(root, $"tar -tzf '{root}/out-2/results.tar.gz' > '{list}'");
            Assert.Contains("./hf_parity.json", File.ReadAllLines(list));
        }
        finally { Directory.Delete(root, true); }
    }
}
