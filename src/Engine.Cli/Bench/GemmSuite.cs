using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Cpu;

using Engine.Observability.Results;

namespace Engine.Cli.Bench;

/// <summary>Options of `engine bench gemm` (defaults: 3 rounds of 5 samples of at least 0.1 s).</summary>
public sealed record GemmOptions
{
    public int Rounds { get; init; } = 3;
    public int Samples { get; init; } = 5;
    public double MinSampleS { get; init; } = 0.1;
    public string? Only { get; init; }
    public bool OpenBlas { get; init; } = true;
    public double WaitIdleS { get; init; }

    public static GemmOptions Quick => new() { Rounds = 1, Samples = 3, MinSampleS = 0.05 };
}


/// <summary>
/// `engine bench gemm`: our Gemm.Sgemm / SgemmStridedBatched against OpenBLAS sgemm (numpy, benchmarks/scripts/sgemm_openblas.py)
/// on the same shapes with the same manual timing method (BenchmarkDotNet's process-per-benchmark runs are too
/// slow for a 2-core box). Per shape, `rounds` rounds alternate ours and OpenBLAS (so load drift from other
/// processes hits both alike); a round is a warm-up (≥ 2 calls, ≥ 0.25 s), iterations calibrated so one sample
/// lasts ≥ min-sample-s, then `samples` samples; the reported time is the median per-call time over all samples
/// of all rounds. Each shape's result is spot-checked against double dot products.
/// Options: --quick (1 round of 3 samples of ≥ 0.05 s), --rounds R (3), --samples S (5), --min-sample-s T (0.1),
///          --only name,name, --threads N, --no-openblas, --out FILE,
///          --wait-idle S: before each round wait (at most S seconds) until the CPUs were ≥ 90% idle for 0.5 s, for
///          shared machines; the idle fraction seen before each round is recorded.
/// </summary>
public static class GemmSuite
{
    public sealed record Shape(string Name, bool TransA, bool TransB, int M, int N, int K, int Batch, string Role)
    {
        public double Flops => 2.0 * M * N * K * Batch;
        public string Spec => $"{Name}:{(TransA ? 1 : 0)}:{(TransB ? 1 : 0)}:{M}:{N}:{K}:{Batch}";
        public string Op => (TransA ? "T" : "N") + (TransB ? "T" : "N");
    }

    // The 12M-parameter benchmark model: hidden 384, FFN 1024, vocab 8192, 2048 tokens per batch, 6 heads of 64,
    // sequence 256 (8 sequences). Linear weights W are [out, in] row-major.
    public static readonly Shape[] Shapes =
    [
        new("square512", false, false, 512, 512, 512, 1, "square"),
        new("square1024", false, false, 1024, 1024, 1024, 1, "square"),
        new("square2048", false, false, 2048, 2048, 2048, 1, "square"),
        new("fwd_out384", false, true, 2048, 384, 384, 1, "forward x·Wᵀ, W [384,384] (q/o proj)"),
        new("fwd_out128", false, true, 2048, 128, 384, 1, "forward x·Wᵀ, W [128,384] (k/v proj)"),
        new("fwd_out1024", false, true, 2048, 1024, 384, 1, "forward x·Wᵀ, W [1024,384] (FFN up/gate)"),
        new("fwd_ffn_down", false, true, 2048, 384, 1024, 1, "forward h·Wᵀ, W [384,1024] (FFN down)"),
        new("fwd_lm_head", false, true, 2048, 8192, 384, 1, "forward x·Wᵀ, W [8192,384] (LM head)"),
        new("dx_out384", false, false, 2048, 384, 384, 1, "backward dX = dY·W, W [384,384]"),
        new("dx_out128", false, false, 2048, 384, 128, 1, "backward dX = dY·W, W [128,384]"),
        new("dx_out1024", false, false, 2048, 384, 1024, 1, "backward dX = dY·W, W [1024,384]"),
        new("dx_ffn_down", false, false, 2048, 1024, 384, 1, "backward dH = dY·W, W [384,1024]"),
        new("dx_lm_head", false, false, 2048, 384, 8192, 1, "backward dX = dY·W, W [8192,384]"),
        new("dw_out384", true, false, 384, 384, 2048, 1, "backward dW = dYᵀ·X, [384,384]"),
        new("dw_out128", true, false, 128, 384, 2048, 1, "backward dW = dYᵀ·X, [128,384]"),
        new("dw_out1024", true, false, 1024, 384, 2048, 1, "backward dW = dYᵀ·X, [1024,384]"),
        new("dw_ffn_down", true, false, 384, 1024, 2048, 1, "backward dW = dYᵀ·H, [384,1024]"),
        new("dw_lm_head", true, false, 8192, 384, 2048, 1, "backward dW = dYᵀ·X, [8192,384]"),
        new("attn_qk", false, true, 256, 256, 64, 48, "attention S = Q·Kᵀ per head, 48 x [256,64]·[64,256]"),
        new("attn_pv", false, false, 256, 64, 256, 48, "attention O = P·V per head, 48 x [256,256]·[256,64]"),
    ];

    public static SuiteOutput Run(GemmOptions o)
    {
        int samples = o.Samples, rounds = o.Rounds;
        double minSampleS = o.MinSampleS, waitIdleS = o.WaitIdleS;
        string? only = o.Only;
        bool openBlas = o.OpenBlas;
        Shape[] shapes = only is null ? Shapes : Shapes.Where(s => only.Split(',').Contains(s.Name)).ToArray();
        string root = RepoRoot();
        string loadBefore = File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Trim() : "";
        Console.WriteLine($"gemm: {CpuModel()}, {Environment.ProcessorCount} cores, Gemm.MaxThreads={Gemm.MaxThreads}, " +
            $"kernel {Gemm.Kernel}, load avg {loadBefore}");
        Console.WriteLine($"timing: manual Stopwatch, {rounds} rounds alternating ours/OpenBLAS, each warm-up >= 0.25 s + " +
            $"{samples} samples of >= {minSampleS} s; median per call over all samples");

        using var blasProc = openBlas ? OpenBlasServer.TryStart(root, samples, minSampleS) : null;
        JsonNode? blas = blasProc?.Info;
        var ours = new Dictionary<string, (double Ms, double Gflops, double MaxErr)>();
        var oursMs = new Dictionary<string, List<double>>();
        var theirsMs = new Dictionary<string, List<double>>();
        var theirs = new Dictionary<string, (double Ms, double Gflops)>();
        var idleBefore = new Dictionary<string, double[]>();
        foreach (var s in shapes)
        {
            var run = new OurRun(s);
            List<double> oursSec = [], theirsSec = [];
            var idle = new List<double>();
            for (int round = 0; round < rounds; round++)
            {
                if (waitIdleS > 0) idle.Add(WaitIdle(waitIdleS));
                oursSec.AddRange(TimeCall(run.Call, samples, minSampleS));
                if (blasProc?.TimeSamples(s) is { } t) theirsSec.AddRange(t);
            }
            double sec = Median(oursSec);
            oursMs[s.Name] = oursSec.Select(x => x * 1e3).ToList();
            if (theirsSec.Count > 0) theirsMs[s.Name] = theirsSec.Select(x => x * 1e3).ToList();
            var r = (Ms: sec * 1e3, Gflops: s.Flops / sec / 1e9, MaxErr: run.SpotCheck());
            ours[s.Name] = r;
            idleBefore[s.Name] = idle.ToArray();
            string line = $"  {s.Name,-14} ours {r.Gflops,7:F1} GFLOP/s ({r.Ms:F3} ms, spot-check rel err {r.MaxErr:E1})";
            if (theirsSec.Count > 0)
            {
                double tsec = Median(theirsSec);
                theirs[s.Name] = (tsec * 1e3, s.Flops / tsec / 1e9);
                line += $"   OpenBLAS {s.Flops / tsec / 1e9,7:F1} GFLOP/s ({tsec * 1e3:F3} ms)";
            }
            Console.WriteLine(line);
        }
        var entries = new List<BenchEntry>();
        foreach (var s in shapes)
        {
            var o2 = ours[s.Name];
            var e = BenchEntries.FromSamples(s.Name, "cpu", "ms", BenchSchema.Lower, oursMs[s.Name], warmup: 0) with
            {
                Group = "gemm",
                Flops = s.Flops,
                Bytes = 4.0 * s.Batch * ((double)s.M * s.K + (double)s.K * s.N + (double)s.M * s.N),
                Roof = "compute",
                Params = new JsonObject
                {
                    ["role"] = s.Role,
                    ["trans_a"] = s.TransA,
                    ["trans_b"] = s.TransB,
                    ["m"] = s.M,
                    ["n"] = s.N,
                    ["k"] = s.K,
                    ["batch"] = s.Batch,
                    ["spot_check_max_rel_err"] = o2.MaxErr,
                    ["cpu_idle_before_rounds"] = new JsonArray(idleBefore[s.Name].Select(x => (JsonNode?)Math.Round(x, 3)).ToArray()),
                },
            };
            if (theirsMs.TryGetValue(s.Name, out var t)) e = e.WithPeer(BenchEntries.Peer("openblas", t, version: PeerVersion(blas)));
            if (!(o2.MaxErr < 1e-3)) e = e with { Error = $"spot check failed: max relative error {o2.MaxErr:E2}" };
            entries.Add(e);
        }
        var config = new JsonObject
        {
            ["rounds"] = rounds,
            ["samples_per_round"] = samples,
            ["min_sample_s"] = minSampleS,
            ["wait_idle_s"] = waitIdleS,
            ["gemm_max_threads"] = Gemm.MaxThreads,
            ["gemm_kernel"] = Gemm.Kernel.ToString(),
            ["only"] = only,
        };
        return new SuiteOutput(entries, config,
            "Stopwatch / time.perf_counter; rounds alternate ours and OpenBLAS; per round a warm-up >= 0.25 s (dropped), iterations calibrated to >= min_sample_s, then samples; per-call ms per sample, median over all samples of all rounds",
            blas != null ? [Engine.Training.Bench.MachineInfo.UnpinNote("the OpenBLAS peer")] : null,
            Extra: new JsonObject { ["openblas"] = blas?.DeepClone() });
    }

    /// <summary>"numpy 1.24.2, libopenblasp-r0.3.21.so, Cooperlake kernels": the peer's library and the kernels it picked.</summary>
    static string? PeerVersion(JsonNode? blas) => blas?["numpy"] is not { } np ? null
        : $"numpy {np}, {string.Join(", ", blas["mapped"]?.AsArray().Select(x => Path.GetFileName((string?)x)) ?? [])}" +
          (blas["openblas"]?["corename"] is { } core ? $", {(string?)core} kernels" : "");

    /// <summary>One shape's operands (uniform [-1, 1], fixed seed) and the call under test.</summary>
    sealed class OurRun
    {
        readonly Shape _s;
        readonly float[] _a, _b, _c;
        readonly int _lda, _ldb, _ldc;
        readonly long _sa, _sb, _sc;
        public readonly Action Call;

        public OurRun(Shape s)
        {
            _s = s;
            var rng = new Random(0);
            _lda = s.TransA ? s.M : s.K; _ldb = s.TransB ? s.K : s.N; _ldc = s.N;
            _sa = (long)s.M * s.K; _sb = (long)s.K * s.N; _sc = (long)s.M * s.N;
            _a = Fill(rng, _sa * s.Batch); _b = Fill(rng, _sb * s.Batch); _c = new float[_sc * s.Batch];
            Call = s.Batch == 1
                ? () => Gemm.Sgemm(s.TransA, s.TransB, s.M, s.N, s.K, 1f, _a, _lda, _b, _ldb, 0f, _c, _ldc)
                : () => Gemm.SgemmStridedBatched(s.TransA, s.TransB, s.M, s.N, s.K, 1f, _a, _lda, _sa, _b, _ldb, _sb, 0f,
                    _c, _ldc, _sc, s.Batch);
        }

        /// <summary>Max relative error of 32 random entries of the last result against double dot products.</summary>
        public double SpotCheck()
        {
            var rng = new Random(1);
            double maxErr = 0;
            for (int t = 0; t < 32; t++)
            {
                int item = rng.Next(_s.Batch), i = rng.Next(_s.M), j = rng.Next(_s.N);
                double dot = 0, mag = 0;
                for (int p = 0; p < _s.K; p++)
                {
                    double av = _a[item * _sa + (_s.TransA ? (long)p * _lda + i : (long)i * _lda + p)];
                    double bv = _b[item * _sb + (_s.TransB ? (long)j * _ldb + p : (long)p * _ldb + j)];
                    dot += av * bv; mag += Math.Abs(av * bv);
                }
                maxErr = Math.Max(maxErr, Math.Abs(_c[item * _sc + (long)i * _ldc + j] - dot) / Math.Max(mag, 1e-30));
            }
            return maxErr;
        }
    }

    /// <summary>Waits until the CPUs were ≥ 90% idle over 0.5 s (from /proc/stat), at most maxS; returns the last idle fraction.</summary>
    static double WaitIdle(double maxS)
    {
        if (!File.Exists("/proc/stat")) return double.NaN;
        static (long Idle, long Total) Read()
        {
            var f = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries)[1..]
                .Select(x => long.Parse(x, CultureInfo.InvariantCulture)).ToArray();
            return (f[3] + f[4], f.Take(8).Sum());
        }
        long t0 = Stopwatch.GetTimestamp();
        while (true)
        {
            var a = Read();
            Thread.Sleep(500);
            var b = Read();
            double idle = (double)(b.Idle - a.Idle) / Math.Max(1, b.Total - a.Total);
            if (idle >= 0.9 || Stopwatch.GetElapsedTime(t0).TotalSeconds >= maxS) return idle;
        }
    }

    static double Median(List<double> x)
    {
        var sorted = x.Order().ToArray();
        return sorted[sorted.Length / 2];
    }

    /// <summary>
    /// Warm-up (≥ 2 calls and ≥ 0.25 s, so tiered JIT and per-thread buffers have settled), iterations calibrated
    /// to ≥ minSampleS per sample; returns the per-call time of each sample (seconds).
    /// </summary>
    static double[] TimeCall(Action call, int samples, double minSampleS)
    {
        long w0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < 2 || Stopwatch.GetElapsedTime(w0).TotalSeconds < 0.25; i++) call();
        long iters = 1;
        while (true)
        {
            long t0 = Stopwatch.GetTimestamp();
            for (long i = 0; i < iters; i++) call();
            double dt = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            if (dt >= minSampleS) break;
            iters = Math.Max(iters * 2, (long)(iters * minSampleS / Math.Max(dt, 1e-9) * 1.2));
        }
        var perCall = new double[samples];
        for (int r = 0; r < samples; r++)
        {
            long t0 = Stopwatch.GetTimestamp();
            for (long i = 0; i < iters; i++) call();
            perCall[r] = Stopwatch.GetElapsedTime(t0).TotalSeconds / iters;
        }
        return perCall;
    }

    static float[] Fill(Random rng, long n)
    {
        var x = GC.AllocateUninitializedArray<float>((int)n);
        for (long i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }

    /// <summary>The numpy/OpenBLAS timing script in --serve mode: one spec line in, one JSON result line out.</summary>
    sealed class OpenBlasServer : IDisposable
    {
        readonly Process _p;
        public JsonNode? Info { get; }

        OpenBlasServer(Process p, JsonNode? info) { _p = p; Info = info; }

        public static OpenBlasServer? TryStart(string root, int samples, double minSampleS)
        {
            var psi = new ProcessStartInfo("/usr/bin/python3")
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                UseShellExecute = false,
                WorkingDirectory = root,
            };
            string threads = Gemm.MaxThreads.ToString(CultureInfo.InvariantCulture);
            psi.Environment["OMP_NUM_THREADS"] = threads;
            psi.Environment["OPENBLAS_NUM_THREADS"] = threads;
            Engine.Training.Bench.MachineInfo.Unpin(psi.Environment);   // OpenBLAS picks its kernels for this CPU
            psi.ArgumentList.Add(Path.Combine(root, "benchmarks", "scripts", "sgemm_openblas.py"));
            psi.ArgumentList.Add("--samples"); psi.ArgumentList.Add(samples.ToString(CultureInfo.InvariantCulture));
            psi.ArgumentList.Add("--min-sample-s"); psi.ArgumentList.Add(minSampleS.ToString(CultureInfo.InvariantCulture));
            psi.ArgumentList.Add("--serve");
            try
            {
                var p = Process.Start(psi)!;
                var info = JsonNode.Parse(p.StandardOutput.ReadLine() ?? "null")?["blas"];
                var mapped = info?["mapped"]?.AsArray().Select(x => (string?)x).ToArray() ?? [];
                Console.WriteLine($"OpenBLAS via numpy ({threads} threads), mapped: {string.Join(", ", mapped)}; kernels: {(string?)info?["openblas"]?["corename"] ?? "unknown"}");
                if (!mapped.Any(x => x is not null && x.Contains("openblas", StringComparison.Ordinal)))
                    Console.Error.WriteLine("gemm: warning: numpy did not map an OpenBLAS library");
                return new OpenBlasServer(p, info);
            }
            catch (Exception e)
            {
                Console.Error.WriteLine($"gemm: could not start the OpenBLAS script: {e.Message}");
                return null;
            }
        }

        /// <summary>One round for the shape: per-call seconds of each sample, or null if the script died.</summary>
        public double[]? TimeSamples(Shape s)
        {
            _p.StandardInput.WriteLine(s.Spec);
            _p.StandardInput.Flush();
            string? line = _p.StandardOutput.ReadLine();
            if (line is null) return null;
            return JsonNode.Parse(line)!["samples_s"]!.AsArray().Select(x => (double)x!).ToArray();
        }

        public void Dispose()
        {
            _p.StandardInput.Close();
            if (!_p.WaitForExit(10_000)) _p.Kill();
            _p.Dispose();
        }
    }

    static string CpuModel()
    {
        if (!File.Exists("/proc/cpuinfo")) return RuntimeInformation.ProcessArchitecture.ToString();
        var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
        return line is null ? "unknown" : line[(line.IndexOf(':') + 1)..].Trim();
    }

    static string RepoRoot()
    {
        for (var d = new DirectoryInfo(Directory.GetCurrentDirectory()); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Engine.sln"))) return d.FullName;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Engine.sln"))) return d.FullName;
        return Directory.GetCurrentDirectory();
    }
}
