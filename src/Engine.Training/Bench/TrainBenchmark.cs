using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;
using Engine.Model.IO;
using Engine.Observability.Results;
using Engine.Training.Run;

namespace Engine.Training.Bench;

/// <summary>Shape of the end-to-end training benchmark (defaults: the ~12M-parameter config of the foundation issue).</summary>
public sealed record TrainBenchOptions
{
    public int Hidden { get; init; } = 384;
    public int Layers { get; init; } = 6;
    public int Heads { get; init; } = 6;
    public int KvHeads { get; init; } = 2;
    public int Ffn { get; init; } = 1024;
    public int Vocab { get; init; } = 8192;
    public int Seq { get; init; } = 256;
    public int Batch { get; init; } = 8;
    public int Steps { get; init; } = 6;
    public int Warmup { get; init; } = 2;

    public LlamaConfig ToLlamaConfig(int maxPositions) => new LlamaConfig
    {
        VocabSize = Vocab,
        HiddenSize = Hidden,
        IntermediateSize = Ffn,
        NumLayers = Layers,
        NumHeads = Heads,
        NumKvHeads = KvHeads,
        MaxPositionEmbeddings = maxPositions,
    }.Validate();
}

/// <summary>
/// `engine bench train`: tokens/s of full training steps (forward, backward, clip, AdamW) on random tokens, and the
/// identical Llama in PyTorch (Debian's python3-torch, eager, OMP_NUM_THREADS = cores) measured in the same run: the
/// engine initializes the model, exports it (config.json + model.safetensors, F32) and writes its token batches; the
/// peer loads both, so the two train the same weights on the same batches and the first step's losses must agree
/// (recorded, and a disagreement above 1e-3 becomes the entry's error). MFU uses <see cref="Metrics.Throughput"/>.
/// </summary>
public static class TrainBenchmark
{
    public static SuiteOutput Run(IBackend backend, TrainBenchOptions o, string? python, Action<string>? log = null)
    {
        var cfg = o.ToLlamaConfig(o.Seq);
        int n = o.Batch * o.Seq, total = o.Warmup + o.Steps;
        var rng = new Rng(1);
        var all = new int[total * 2 * n];
        for (int i = 0; i < all.Length; i++) all[i] = rng.NextInt(o.Vocab);
        // the benchmark is a run like any other: one process, the model of its options, these batches, AdamW at 1e-4
        var spec = new RunSpec
        {
            Name = "bench train",
            Layout = new RunLayout(new Parallel.ParallelSection()),
            Model = ModelSource.Fresh(cfg, backend, 0),
            Optim = new AdamWOptions { Lr = 1e-4 },
            Data = _ => new FixedBatches(all, n, o.Batch),
            MicroBatchRows = o.Batch,
            SeqLen = o.Seq,
            Steps = total,
            OnStep = (m, _) => log?.Invoke($"engine step {m.Step}/{total}: {m.StepSeconds:F3} s, loss {m.Loss:F4}{(m.Step <= o.Warmup ? " (warmup)" : "")}"),
        };
        using var run = RunAssembler.Assemble(spec, new Engine.Parallel.SingleRankCommunicator(backend), backend);
        var model = run.Model;
        string work = Directory.CreateTempSubdirectory("engine-bench-train-").FullName;
        try
        {
            ModelIO.Save(model, work);   // before any step: the peer starts from these weights
            string tokens = Path.Combine(work, "tokens.i32");
            File.WriteAllBytes(tokens, System.Runtime.InteropServices.MemoryMarshal.AsBytes(all.AsSpan()).ToArray());
            var steps = run.Train().Steps;
            var rates = steps.Skip(o.Warmup).Select(m => n / m.StepSeconds).ToList();
            double firstLoss = steps[0].Loss, loss = steps[^1].Loss;
            if (Profiler.Enabled)
            {
                log?.Invoke("per-op time over all steps:\n" + Profiler.Report());
                if (Profiler.LaunchSummary(steps.Count, cfg.NumLayers) is { } launches) log?.Invoke(launches);
            }
            var throughput = Metrics.Throughput.For(backend, cfg, o.Seq);
            string device = backend is IDeviceStats ? "cuda:0" : "cpu";
            var entry = BenchEntries.FromSamples("train_step", device, "tokens/s", BenchSchema.Higher, rates, o.Warmup) with
            {
                Group = "train",
                Flops = throughput.FlopsPerToken,
                Params = new JsonObject
                {
                    ["parameters"] = model.ParameterCount,
                    ["backend"] = backend.Name,
                    ["engine_first_loss"] = firstLoss,
                    ["engine_final_loss"] = loss,
                    ["mfu"] = throughput.Mfu(BenchStats.Of(rates).Median),
                    ["mfu_peak"] = throughput.PeakSource,
                    ["mfu_peak_flops"] = throughput.PeakFlops,
                },
            };
            log?.Invoke(FormattableString.Invariant($"engine: {entry.Median:F0} tokens/s (median of {rates.Count}), MFU {Pct(entry.Params!["mfu"])} of {throughput.PeakSource}"));
            var notes = new List<string>();
            if (python != null)
            {
                string script = FindScript("torch_llama_train.py");
                string args = $"{script} --weights {work} --tokens {tokens} --seq {o.Seq} --batch {o.Batch} --steps {o.Steps} --warmup {o.Warmup}";
                log?.Invoke($"running PyTorch peer: {python} {args}");
                var threads = Environment.ProcessorCount.ToString(System.Globalization.CultureInfo.InvariantCulture);
                var (code, stdout, stderr) = MachineInfo.Run(python, args, new Dictionary<string, string> { ["OMP_NUM_THREADS"] = threads, ["MKL_NUM_THREADS"] = threads }, peer: true);
                notes.Add(MachineInfo.UnpinNote("the PyTorch peer"));
                if (code != 0) notes.Add($"PyTorch peer failed: exit {code}: {stderr.Trim().Split('\n').LastOrDefault()}");
                else
                {
                    var peer = JsonNode.Parse(stdout.Trim().Split('\n').Last())!.AsObject();
                    var seconds = peer["step_seconds"]!.AsArray().Select(x => x!.GetValue<double>()).ToList();
                    double peerFirst = peer["first_loss"]!.GetValue<double>();
                    // the peer's BLAS and kernels, as its own process reports them (benchmarks/scripts/blas_kernel.py)
                    var kernel = peer["blas"]?["openblas"];
                    string version = (string?)peer["framework"] + (kernel != null ? $", OpenBLAS {(string?)kernel["corename"]} kernels" : "") +
                        (peer["cpu_capability"] is { } cap ? $", ATen {(string?)cap}" : "");
                    entry = entry.WithPeer(BenchEntries.Peer("pytorch", seconds.Select(t => n / t).ToList(), version: version));
                    entry.Params!["pytorch_blas"] = peer["blas"]?.DeepClone();
                    entry.Params!["pytorch_cpu_capability"] = peer["cpu_capability"]?.DeepClone();
                    entry.Params!["pytorch_first_loss"] = peerFirst;
                    entry.Params!["pytorch_threads"] = peer["threads"]?.DeepClone();
                    entry.Params!["peer_mfu"] = throughput.Mfu(entry.Peer!.Median);
                    if (!(Math.Abs(peerFirst - firstLoss) <= 1e-3 * Math.Max(1, Math.Abs(firstLoss))))
                        entry = entry with { Error = FormattableString.Invariant($"first-step losses differ: engine {firstLoss:F6}, pytorch {peerFirst:F6}: not the same model") };
                    log?.Invoke(FormattableString.Invariant($"pytorch: {entry.Peer.Median:F0} tokens/s, first loss {peerFirst:F6} vs engine {firstLoss:F6}; ratio {entry.Ratio:F2}"));
                }
            }
            else notes.Add("no PyTorch peer (--python none)");
            var config = JsonSerializer.SerializeToNode(o)!.AsObject();
            config["threads"] = Environment.ProcessorCount;
            return new SuiteOutput([entry], config,
                $"{o.Warmup} warm-up + {o.Steps} timed steps each side (Stopwatch / time.perf_counter around zero-grad, forward, backward, clip, AdamW); tokens/s per step, median over the timed steps; peer trains the engine's exported weights on the same batches",
                notes);
        }
        finally
        {
            try { Directory.Delete(work, recursive: true); }
            catch (IOException) { }
        }
    }

    /// <summary>Step i's batch: ids then targets, n tokens each, from the written token file's layout.</summary>
    sealed class FixedBatches(int[] all, int n, int rows) : IBatchSource
    {
        int step;

        public Batch Next(int batch, int seqLen)
        {
            var ids = all.AsSpan(step * 2 * n, n).ToArray();
            var tg = all.AsSpan(step * 2 * n + n, n).ToArray();
            step++;
            return new Batch(ids, tg, Enumerable.Repeat("train", rows).ToArray());
        }
    }

    static string Pct(JsonNode? mfu) => mfu is null ? "n/a" : FormattableString.Invariant($"{mfu.GetValue<double>() * 100:F1}%");

    /// <summary>benchmarks/scripts/NAME, searched upwards from the working directory and the binary.</summary>
    public static string FindScript(string name)
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var d = new DirectoryInfo(start); d != null; d = d.Parent)
            {
                var p = Path.Combine(d.FullName, "benchmarks", "scripts", name);
                if (File.Exists(p)) return p;
            }
        throw new FileNotFoundException($"benchmarks/scripts/{name} not found above {Directory.GetCurrentDirectory()}");
    }
}
