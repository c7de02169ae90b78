using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Engine.Cli.Bench;
using Engine.Core;
using Engine.Observability.Results;
using Engine.Training.Bench;

namespace Engine.Cli.Commands;

/// <summary>
/// `engine bench SUITE` (gemm, kernels, train, eval, data, comm, dp, all): every suite measures ours and, where one
/// exists, a peer in the same run, and writes one engine.bench/1 file (docs/BENCHMARKS.md) through
/// <see cref="BenchRun"/> + <see cref="BenchResultIO.Write"/>: benchmarks/results/&lt;suite&gt;-&lt;UTC time&gt;.json.
/// </summary>
public static class BenchCommand
{
    /// <summary>The suites `bench all` runs, in order (kernels only with a GPU; comm and dp need `engine launch`).</summary>
    public static readonly string[] AllSuites = ["gemm", "data", "train", "eval", "kernels"];

    static Option<string?> Out() => new("--out") { Description = "results folder ('-' = print only, write nothing)", DefaultValueFactory = _ => "benchmarks/results" };
    static Option<bool> Shared() => new("--shared") { Description = "record that the machine was shared while measuring (figures indicative only)" };

    public static Command Create()
    {
        var cmd = new Command("bench", "benchmarks, each against a peer measured in the same run, written as engine.bench/1 JSON (docs/BENCHMARKS.md)");
        cmd.Subcommands.Add(CreateGemm());
        cmd.Subcommands.Add(CreateTrain());
        cmd.Subcommands.Add(CreateEval());
        cmd.Subcommands.Add(CreateData());
        cmd.Subcommands.Add(CreatePrepare());
        cmd.Subcommands.Add(GpuBenchCommand.Create());
        cmd.Subcommands.Add(CreateDataParallel());
        cmd.Subcommands.Add(CommBenchCommand.Create());
        cmd.Subcommands.Add(CreateAll());
        return cmd;
    }

    /// <summary>Runs one suite and writes its result; returns the exit code (1 when an entry recorded an error).</summary>
    public static int RunSuite(string suite, Func<SuiteOutput> measure, string? outDir, bool shared, TextWriter stdout, MachineRecord? machine = null,
        DateTimeOffset? started = null)
    {
        var start = started ?? DateTimeOffset.UtcNow;
        double? load = BenchRun.LoadAverage();
        var output = measure();
        var result = BenchRun.Build(suite, start, output, "engine " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1)), shared, load, machine);
        foreach (string line in BenchRun.Table(result)) stdout.WriteLine(line);
        if (outDir is { Length: > 0 } dir && dir != "-") stdout.WriteLine($"wrote {BenchResultIO.Write(result, dir)}");
        else stdout.Write(BenchResultIO.ToJson(result));
        // the best compute roof measured here becomes the CPU's MFU peak (CpuRoof keeps the highest seen)
        double best = result.Benchmarks.Where(e => e.Device == "cpu" && e.Roof == "compute").Select(e => e.AchievedFlops ?? 0).DefaultIfEmpty(0).Max();
        if (best > 0 && !shared) Engine.Training.Metrics.CpuRoof.Offer(best, $"best GEMM of engine bench {suite}");
        int failed = result.Benchmarks.Count(e => e.Error != null);
        if (failed > 0) Console.Error.WriteLine($"{failed} benchmark(s) recorded an error: see their \"error\" fields");
        return failed > 0 ? 1 : 0;
    }

    static Command CreateGemm()
    {
        var quick = new Option<bool>("--quick") { Description = "1 round of 3 samples of >= 0.05 s" };
        var rounds = new Option<int?>("--rounds") { Description = "rounds alternating ours and OpenBLAS (3)" };
        var samples = new Option<int?>("--samples") { Description = "samples per round (5)" };
        var only = new Option<string?>("--only") { Description = "comma-separated shape names" };
        var threads = new Option<int?>("--threads") { Description = "GEMM threads (default: all cores)" };
        var noPeer = new Option<bool>("--no-openblas") { Description = "skip the numpy/OpenBLAS peer" };
        var waitIdle = new Option<double>("--wait-idle") { Description = "before each round wait up to S seconds for >= 90% idle CPUs" };
        var output = Out();
        var shared = Shared();
        var cmd = new Command("gemm", "SGEMM on square and training-step shapes vs OpenBLAS (numpy), ms per call, spot-checked")
            { quick, rounds, samples, only, threads, noPeer, waitIdle, output, shared };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            if (p.GetValue(threads) is { } t) Engine.Cpu.Gemm.MaxThreads = t;
            var o = p.GetValue(quick) ? GemmOptions.Quick : new GemmOptions();
            o = o with
            {
                Rounds = p.GetValue(rounds) ?? o.Rounds,
                Samples = p.GetValue(samples) ?? o.Samples,
                Only = p.GetValue(only),
                OpenBlas = !p.GetValue(noPeer),
                WaitIdleS = p.GetValue(waitIdle),
            };
            if (o.Rounds < 1 || o.Samples < 1) throw new ArgumentException("--rounds and --samples must be at least 1");
            return RunSuite("gemm", () => GemmSuite.Run(o), p.GetValue(output), p.GetValue(shared), Console.Out, MachineProbe.Describe(probeGpus: false));
        }));
        return cmd;
    }

    static Command CreateTrain()
    {
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var python = new Option<string?>("--python") { Description = "interpreter with torch for the PyTorch peer ('none' to skip)", DefaultValueFactory = _ => "/usr/bin/python3" };
        var steps = new Option<int>("--steps") { Description = "timed steps (median reported)", DefaultValueFactory = _ => 6 };
        var profile = new Option<bool>("--profile") { Description = "print per-op time, calls and bytes over the steps" };
        var peak = PeakOption.Create();
        var output = Out();
        var shared = Shared();
        var cmd = new Command("train", "tokens/s and MFU of a full training step (~12M-parameter Llama), engine vs PyTorch on the same exported weights and batches")
            { device, python, steps, profile, peak, output, shared };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            PeakOption.Apply(p, peak);
            string? py = p.GetValue(python);
            if (py == "none") py = null;
            if (p.GetValue(steps) < 1) throw new ArgumentException("--steps must be at least 1");
            if (p.GetValue(profile)) Profiler.Enabled = true;
            var o = new TrainBenchOptions { Steps = p.GetValue(steps) };
            var backend = Cli.Backend(p.GetValue(device)!);
            return RunSuite("train", () => TrainBenchmark.Run(backend, o, py, Console.WriteLine), p.GetValue(output), p.GetValue(shared), Console.Out,
                MachineProbe.Describe(probeGpus: backend is IDeviceStats));
        }));
        return cmd;
    }

    static Command CreateEval()
    {
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var output = Out();
        var shared = Shared();
        var cmd = new Command("eval", "evaluation tokens/s (perplexity) and generation tokens/s with and without KV cache") { device, output, shared };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            var backend = Cli.Backend(p.GetValue(device)!);
            return RunSuite("eval", () => EvalBenchmark.Run(backend, Console.WriteLine), p.GetValue(output), p.GetValue(shared), Console.Out,
                MachineProbe.Describe(probeGpus: backend is IDeviceStats));
        }));
        return cmd;
    }

    static Command CreateData()
    {
        var vocab = new Option<int>("--vocab") { Description = "BPE vocabulary trained on the shipped corpus", DefaultValueFactory = _ => 8000 };
        var repeats = new Option<int>("--repeats") { Description = "timed repeats", DefaultValueFactory = _ => 3 };
        var output = Out();
        var shared = Shared();
        var cmd = new Command("data", "tokenization MB/s vs Microsoft.ML.Tokenizers (same tokenizer.json, ids checked equal), prepare-style encoding, dedup docs/s")
            { vocab, repeats, output, shared };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            if (p.GetValue(repeats) < 1 || p.GetValue(vocab) < 300) throw new ArgumentException("--repeats must be >= 1 and --vocab >= 300");
            return RunSuite("data", () => DataSuite.Run(p.GetValue(vocab), p.GetValue(repeats)), p.GetValue(output), p.GetValue(shared), Console.Out,
                MachineProbe.Describe(probeGpus: false));
        }));
        return cmd;
    }

    static Command CreatePrepare()
    {
        var mb = new Option<double>("--mb") { Description = "size of the generated corpus in MB (about 2000 for the real run; 20 for a smoke run)", DefaultValueFactory = _ => 20 };
        var ranks = new Option<int>("--ranks") { Description = "largest rank count (1, 2, 4, … up to it)", DefaultValueFactory = _ => 2 };
        var work = new Option<string?>("--work") { Description = "folder for the corpus and the runs (kept); default a temporary folder, removed after" };
        var output = Out();
        var shared = Shared();
        var cmd = new Command("prepare", "engine prepare on a generated corpus: MB per core-second of each phase, 1 → N ranks wall time and speed-up, peak memory per rank")
            { mb, ranks, work, output, shared };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            if (p.GetValue(mb) <= 0 || p.GetValue(ranks) < 1) throw new ArgumentException("--mb must be positive and --ranks >= 1");
            return RunSuite("prepare", () => PrepareSuite.Run(p.GetValue(mb), p.GetValue(ranks), p.GetValue(work)), p.GetValue(output), p.GetValue(shared), Console.Out,
                MachineProbe.Describe(probeGpus: false));
        }));
        return cmd;
    }

    static Command CreateAll()
    {
        var device = new Option<string>("--device") { Description = "cpu or cuda (train and eval)", DefaultValueFactory = _ => "cpu" };
        var quick = new Option<bool>("--quick") { Description = "short versions (gemm --quick, 3 train steps, 1 data repeat)" };
        var peak = PeakOption.Create();
        var output = Out();
        var shared = Shared();
        var cmd = new Command("all", "gemm, data, train, eval and (with a GPU) kernels, one result file each; comm and dp run under engine launch")
            { device, quick, peak, output, shared };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            PeakOption.Apply(p, peak);
            string? dir = p.GetValue(output);
            bool sh = p.GetValue(shared), q = p.GetValue(quick);
            int rc = 0;
            rc |= RunSuite("gemm", () => GemmSuite.Run(q ? GemmOptions.Quick : new GemmOptions()), dir, sh, Console.Out, MachineProbe.Describe(probeGpus: false));
            rc |= RunSuite("data", () => DataSuite.Run(repeats: q ? 1 : 3), dir, sh, Console.Out, MachineProbe.Describe(probeGpus: false));
            var backend = Cli.Backend(p.GetValue(device)!);
            var machine = MachineProbe.Describe(probeGpus: backend is IDeviceStats);
            rc |= RunSuite("train", () => TrainBenchmark.Run(backend, new TrainBenchOptions { Steps = q ? 3 : 6 }, "/usr/bin/python3", Console.WriteLine), dir, sh, Console.Out, machine);
            rc |= RunSuite("eval", () => EvalBenchmark.Run(backend, Console.WriteLine), dir, sh, Console.Out, machine);
            if (backend is IDeviceStats)
                rc |= GpuBenchCommand.Execute(new GpuBenchCommand.Args(dir, null, q ? "tiny" : "full", MachineProbe.Git().Commit), Console.Out, Console.Error);
            else Console.WriteLine("kernels: skipped (no CUDA device for this run)");
            Console.WriteLine("comm and dp: run them under the launcher, e.g. engine launch --nproc-per-node 2 -- bench dp");
            return rc;
        }));
        return cmd;
    }

    /// <summary>`engine bench dp`: data parallelism and ZeRO in this process's world (start it under engine launch).</summary>
    static Command CreateDataParallel()
    {
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var steps = new Option<int>("--steps") { Description = "timed steps per ZeRO stage", DefaultValueFactory = _ => 6 };
        var stages = new Option<string>("--stages") { Description = "ZeRO stages to run, comma-separated", DefaultValueFactory = _ => "0,1,2" };
        var bucket = new Option<double>("--bucket-mb") { Description = "gradient bucket size", DefaultValueFactory = _ => 25 };
        var baseline = new Option<string?>("--baseline") { Description = "a one-rank dp result file of the same shape: scaling efficiency against it" };
        var output = Out();
        var shared = Shared();
        var cmd = new Command("dp", "data parallelism / ZeRO-1 / ZeRO-2: step time, tokens/s, bytes per rank per step vs analytic, scaling efficiency (run under engine launch)")
            { device, steps, stages, bucket, baseline, output, shared };
        cmd.SetAction(parse => Cli.Guard(() =>
        {
            var (backend, comm) = Cli.Distributed(parse.GetValue(device)!);
            using var _ = comm;
            int[] st;
            try { st = parse.GetValue(stages)!.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(x => int.Parse(x.Trim(), CultureInfo.InvariantCulture)).ToArray(); }
            catch (FormatException) { throw new ArgumentException($"--stages must be comma-separated integers, got '{parse.GetValue(stages)}'"); }
            var o = new DataParallelBenchOptions { Steps = parse.GetValue(steps), Stages = st, BucketMb = parse.GetValue(bucket) };
            double? load = BenchRun.LoadAverage();
            var result = DataParallelBenchmark.Run(backend, comm, o, parse.GetValue(baseline), comm.Rank == 0 ? Console.WriteLine : null);
            if (result == null) return 0;
            var measured = new SuiteOutput(result.Benchmarks, result.Config, result.Method ?? "", result.Notes, result.Extra);
            return RunSuite(DataParallelBenchmark.Suite, () => measured, parse.GetValue(output), parse.GetValue(shared), Console.Out, result.Machine, result.Date);
        }));
        return cmd;
    }

    static double Num(JsonNode? n) => double.Parse((n ?? throw new InvalidDataException("comm report row lacks a field")).ToJsonString(), CultureInfo.InvariantCulture);

    /// <summary>The comm suite's entries from CommBenchmark's rows: bus bandwidth per operation and size.</summary>
    public static SuiteOutput CommEntries(JsonObject report, string device)
    {
        var entries = new List<BenchEntry>();
        foreach (var row in report["results"]!.AsArray())
        {
            string op = (string)row!["op"]!;
            long bytes = (long)Num(row["bytes"]);
            double busbw = Num(row["busbw_gbps"]);
            var e = BenchEntries.FromSamples($"{op}_{bytes}", device, "GB/s", BenchSchema.Higher, [busbw]) with
            {
                Group = "comm",
                Repeats = (int)Num(row["iters"]),
                Params = new JsonObject { ["op"] = op, ["bytes"] = bytes, ["time_us"] = row["time_us"]!.DeepClone(), ["algbw_gbps"] = row["algbw_gbps"]!.DeepClone() },
            };
            if ((string?)row["check"] != "ok") e = e with { Error = $"result check failed: {(string?)row["check"]}" };
            entries.Add(e);
        }
        var config = new JsonObject
        {
            ["kind"] = report["kind"]?.DeepClone(),
            ["world_size"] = report["world_size"]?.DeepClone(),
            ["backend"] = report["backend"]?.DeepClone(),
            ["dtype"] = report["dtype"]?.DeepClone(),
        };
        return new SuiteOutput(entries, config,
            $"nccl-tests' definitions: {(string?)report["definitions"]}; median = the bus bandwidth of the mean time over the iterations (repeats), no per-iteration spread");
    }
}
