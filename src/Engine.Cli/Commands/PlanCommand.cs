using System.CommandLine;
using System.Diagnostics;
using Engine.Core;
using Engine.Model;
using Engine.Model.IO;
using Engine.Training.Config;
using Engine.Training.Planning;
using Engine.Training.Run;

namespace Engine.Cli.Commands;

/// <summary>
/// `engine plan`: ranks the (dp, pp, ZeRO 0-3, micro-batch, recompute none/selective/full) layouts of a model on a cluster by predicted
/// tokens/s per GPU, with the memory each needs per GPU (the model of src/Engine.Training/Planning, checked against
/// measured peaks on CPU ranks) and the step-time breakdown under a stated link model.
/// </summary>
public static class PlanCommand
{
    /// <summary>Published Llama shapes (Touvron et al. 2023; Meta's config.json files).</summary>
    static readonly Dictionary<string, LlamaConfig> Presets = new(StringComparer.OrdinalIgnoreCase)
    {
        ["llama2-7b"] = new() { VocabSize = 32000, HiddenSize = 4096, IntermediateSize = 11008, NumLayers = 32, NumHeads = 32, NumKvHeads = 32, MaxPositionEmbeddings = 4096 },
        ["llama2-13b"] = new() { VocabSize = 32000, HiddenSize = 5120, IntermediateSize = 13824, NumLayers = 40, NumHeads = 40, NumKvHeads = 40, MaxPositionEmbeddings = 4096 },
        ["llama2-70b"] = new() { VocabSize = 32000, HiddenSize = 8192, IntermediateSize = 28672, NumLayers = 80, NumHeads = 64, NumKvHeads = 8, MaxPositionEmbeddings = 4096 },
        ["llama3-8b"] = new() { VocabSize = 128256, HiddenSize = 4096, IntermediateSize = 14336, NumLayers = 32, NumHeads = 32, NumKvHeads = 8, MaxPositionEmbeddings = 8192 },
        ["llama3-70b"] = new() { VocabSize = 128256, HiddenSize = 8192, IntermediateSize = 28672, NumLayers = 80, NumHeads = 64, NumKvHeads = 8, MaxPositionEmbeddings = 8192 },
        ["llama3.1-405b"] = new() { VocabSize = 128256, HiddenSize = 16384, IntermediateSize = 53248, NumLayers = 126, NumHeads = 128, NumKvHeads = 8, MaxPositionEmbeddings = 8192 },
    };

    /// <summary>A preset name, a Hugging Face config.json (or its directory), or a run config's [model] section.</summary>
    public static LlamaConfig LoadModel(string spec)
    {
        if (Presets.TryGetValue(spec, out var preset)) return preset;
        if (Directory.Exists(spec)) return ModelIO.LoadConfig(spec);
        if (!File.Exists(spec))
            throw new FileNotFoundException($"--model: '{spec}' is neither a preset ({string.Join(", ", Presets.Keys)}), a directory nor a file", spec);
        if (spec.EndsWith(".toml", StringComparison.OrdinalIgnoreCase))
        {
            var cfg = TrainConfig.Load(spec, []);
            return cfg.Model.InitFrom is { } from ? ModelIO.LoadConfig(cfg.Resolve(from)) : cfg.ToLlamaConfig(Engine.Training.Trainer.LoadTokenizer(cfg).VocabSize);
        }
        return ModelIO.LoadConfig(Path.GetDirectoryName(Path.GetFullPath(spec))!);
    }

    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "preset (llama2-7b, llama2-13b, llama2-70b, llama3-8b, llama3-70b, llama3.1-405b), an HF config.json or its directory, or a run config (.toml)", Required = true };
        var gpus = new Option<int>("--gpus") { Description = "GPUs in the job", Required = true };
        var nodes = new Option<int?>("--nodes") { Description = "nodes (default: gpus / 8)" };
        var gpu = new Option<string>("--gpu") { Description = "h100, h200, a100 or a800 (peak, memory, bandwidth, and the node's links)", DefaultValueFactory = _ => "h100" };
        var memory = new Option<double?>("--gpu-memory") { Description = "GB of memory per GPU (overrides --gpu's)" };
        var tflops = new Option<double?>("--tflops") { Description = "achieved dense bf16 TFLOP/s per GPU in model FLOPs (from engine bench train on that GPU)" };
        var mfu = new Option<double>("--mfu") { Description = "without --tflops or --measure: assumed achieved share of the GPU's peak, recomputed FLOPs counted (hardware FLOP utilization)", DefaultValueFactory = _ => 0.45 };
        var measure = new Option<bool>("--measure") { Description = "time one layer's forward + backward on this machine's backend and plan for it (devices = this backend)" };
        var device = new Option<string>("--device") { Description = "backend for --measure: cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var globalBatch = new Option<int>("--global-batch") { Description = "sequences per optimizer step", DefaultValueFactory = _ => 1024 };
        var seqLen = new Option<int>("--seq-len") { Description = "tokens per sequence", DefaultValueFactory = _ => 4096 };
        var schedule = new Option<string>("--schedule") { Description = "1f1b or gpipe (the interleaved schedule is ranked beside it)", DefaultValueFactory = _ => "1f1b" };
        var nvlink = new Option<double?>("--nvlink-gbps") { Description = "intra-node bandwidth per GPU, GB/s (default: the --gpu's node: DGX H100 360, DGX A100 230, A800 150)" };
        var ib = new Option<double?>("--ib-gbps") { Description = "inter-node bandwidth per GPU, GB/s (default: DGX H100 40, DGX A100/A800 22)" };
        var context = new Option<double>("--cuda-context-gib") { Description = "memory per GPU the CUDA context takes (PyTorch measured ~0.7 GiB)", DefaultValueFactory = _ => RuntimeOverheads.Gpu.CudaContextGiB };
        var nccl = new Option<double>("--nccl-gib") { Description = "NCCL buffers per communicator a rank belongs to (NVIDIA/nccl#964: 0.54-0.69 GiB)", DefaultValueFactory = _ => RuntimeOverheads.Gpu.NcclPerCommunicatorGiB };
        var fragmentation = new Option<double>("--fragmentation") { Description = "caching-allocator fragmentation as a share of the tensors' bytes (GMLake: 15% on average)", DefaultValueFactory = _ => RuntimeOverheads.Gpu.Fragmentation };
        var top = new Option<int>("--top") { Description = "rows to print", DefaultValueFactory = _ => 12 };
        var onlyDp = new Option<int?>("--dp") { Description = "only layouts with this many data-parallel replicas" };
        var onlyPp = new Option<int?>("--pp") { Description = "only layouts with this many pipeline stages" };
        var onlyTp = new Option<int?>("--tp") { Description = "only layouts with this many tensor-parallel ranks" };
        var onlyCp = new Option<int?>("--cp") { Description = "only layouts with this many context-parallel ranks" };
        var onlyZero = new Option<int?>("--zero") { Description = "only layouts at this ZeRO stage (0-3)" };
        var onlyMb = new Option<int?>("--micro-batch") { Description = "only layouts with this micro-batch size" };
        var onlyRecompute = new Option<string?>("--recompute") { Description = "only layouts with this recompute: none, selective or full" };
        var cmd = new Command("plan", "rank data/pipeline/ZeRO layouts of a model on a cluster: memory per GPU, step time, tokens/s per GPU, scaling efficiency")
        {
            model, gpus, nodes, gpu, memory, tflops, mfu, measure, device, globalBatch, seqLen, schedule, nvlink, ib, context, nccl, fragmentation, top,
            onlyDp, onlyPp, onlyTp, onlyCp, onlyZero, onlyMb, onlyRecompute,
        };
        cmd.SetAction(parse => Cli.Guard(() =>
        {
            var c = LoadModel(parse.GetValue(model)!);
            int n = parse.GetValue(gpus);
            if (n < 1) throw new ArgumentException($"--gpus must be >= 1 (got {n})");
            int nodeCount = parse.GetValue(nodes) ?? Math.Max(1, n / 8);
            if (nodeCount < 1 || n % nodeCount != 0) throw new ArgumentException($"--nodes {nodeCount} does not divide --gpus {n}");
            int T = parse.GetValue(seqLen), gb = parse.GetValue(globalBatch);
            if (T < 1 || gb < 1) throw new ArgumentException("--seq-len and --global-batch must be >= 1");
            var sched = parse.GetValue(schedule)!;
            if (sched is not ("1f1b" or "gpipe")) throw new ArgumentException($"--schedule must be 1f1b or gpipe, got '{sched}'");

            DeviceSpec spec;
            double achieved;
            string source;
            if (parse.GetValue(measure))
            {
                var be = Cli.Backend(parse.GetValue(device)!);
                achieved = MeasureTflops(c, be, T);
                double mem = be.AvailableMemoryBytes() / 1e9 * (1e9 / (1 << 30));
                spec = new DeviceSpec(be.Name, achieved, parse.GetValue(memory) ?? mem, 20, be.Name != "cpu");
                source = $"measured on this machine's {be.Name} backend: one layer forward + backward at micro-batch 1 × {T}";
            }
            else
            {
                spec = DeviceSpec.ByName(parse.GetValue(gpu)!);
                if (parse.GetValue(memory) is { } gbMem) spec = spec with { MemoryGiB = gbMem * 1e9 / (1 << 30) };
                achieved = parse.GetValue(tflops) ?? spec.PeakTflops * parse.GetValue(mfu);
                source = parse.GetValue(tflops) != null ? "given (--tflops)" : $"assumed {parse.GetValue(mfu):P0} of the {spec.PeakTflops:F0} TFLOP/s peak (--mfu; pass --tflops from `engine bench train` on that GPU)";
            }
            var node = LinkModel.For(spec);
            var link = node with { GpusPerNode = n / nodeCount, NvlinkGBps = parse.GetValue(nvlink) ?? node.NvlinkGBps, IbGBps = parse.GetValue(ib) ?? node.IbGBps };
            var runtime = spec.Gpu ? new RuntimeOverheads(parse.GetValue(context), parse.GetValue(nccl), parse.GetValue(fragmentation)) : RuntimeOverheads.None;
            if (runtime.CudaContextGiB < 0 || runtime.NcclPerCommunicatorGiB < 0 || runtime.Fragmentation is < 0 or >= 1)
                throw new ArgumentException("--cuda-context-gib and --nccl-gib must be >= 0 and --fragmentation in [0, 1)");
            var results = Planner.Rank(c, n, gb, T, spec, link, achieved, sched, runtime);
            string? configured = Configured(parse.GetValue(model)!, c, n, spec, link, achieved, runtime);
            var recompute = parse.GetValue(onlyRecompute) is { } rc ? rc switch
            {
                "none" => RecomputeMode.None,
                "selective" => RecomputeMode.Selective,
                "full" => RecomputeMode.Full,
                _ => throw new ArgumentException($"--recompute must be none, selective or full, got '{rc}'"),
            } : (RecomputeMode?)null;
            results = results.Where(r => (parse.GetValue(onlyDp) ?? r.Layout.Dp) == r.Layout.Dp && (parse.GetValue(onlyPp) ?? r.Layout.Pp) == r.Layout.Pp
                && (parse.GetValue(onlyTp) ?? r.Layout.Tp) == r.Layout.Tp && (parse.GetValue(onlyCp) ?? r.Layout.Cp) == r.Layout.Cp
                && (parse.GetValue(onlyZero) ?? r.Layout.Zero) == r.Layout.Zero && (parse.GetValue(onlyMb) ?? r.Layout.MicroBatch) == r.Layout.MicroBatch
                && (recompute ?? r.Layout.Recompute) == r.Layout.Recompute).ToList();
            if (results.Count == 0) throw new ArgumentException("no layout of the engine matches --dp/--pp/--tp/--cp/--zero/--micro-batch/--recompute on these GPUs");
            Console.WriteLine($"model: {c.ParameterCount() / 1e9:F2}B parameters ({c.NumLayers} layers, hidden {c.HiddenSize}, {c.NumHeads}/{c.NumKvHeads} heads, vocab {c.VocabSize})");
            Console.WriteLine($"cluster: {n} × {spec.Name} ({spec.MemoryGiB:F0} GiB) on {nodeCount} node(s); {link.Describe()}");
            Console.WriteLine($"compute: {achieved:F1} TFLOP/s achieved per device, {source}");
            Console.WriteLine($"batch: {gb} sequences × {T} tokens per step ({(double)gb * T / 1e6:F2}M tokens); {sched} (and interleaved where the layers and micro-batches allow); tensor ranks inside a node");
            Console.WriteLine($"memory beyond the tensors: {(spec.Gpu ? runtime.Describe() : "none on the CPU")}");
            Console.WriteLine($"layouts: {results.Count(r => r.Fits)} of {results.Count} fit in 90% of device memory");
            if (configured != null) Console.WriteLine(configured);
            Console.Write(Planner.Format(results, parse.GetValue(top)));
            if (results.FirstOrDefault(r => r.Fits) is { } best)
                Console.WriteLine($"best: {best.Layout.Describe()}: {best.TokensPerSecondPerDevice:N0} tokens/s per GPU, MFU {best.Mfu:P1}, pipeline efficiency {best.PipelineEfficiency:P1}, data-parallel scaling efficiency {best.ScalingEfficiency:P1} " +
                    $"(bubble {best.BubbleSeconds:F2} s, p2p {best.P2pSeconds:F3} s, gradients {best.GradientSeconds:F3} s, AdamW {best.OptimizerSeconds:F3} s of a {best.StepSeconds:F2} s step); memory {best.Memory.Describe()}");
            else Console.WriteLine("no layout fits: more GPUs, a shorter sequence or a smaller global batch");
            return 0;
        }));
        return cmd;
    }

    /// <summary>
    /// With a run config (.toml) for <c>--model</c>: the layout that config trains on <paramref name="gpus"/> ranks — its
    /// [parallel] section, batch and recompute through <see cref="RunLayout"/>, the same validation, micro-batch rule
    /// and memory model as <c>engine train</c> and <c>--dry-run</c> — evaluated on the cluster; null otherwise.
    /// </summary>
    static string? Configured(string spec, LlamaConfig c, int gpus, DeviceSpec device, LinkModel link, double achieved, RuntimeOverheads runtime)
    {
        if (!spec.EndsWith(".toml", StringComparison.OrdinalIgnoreCase) || !File.Exists(spec)) return null;
        var cfg = TrainConfig.Load(spec, []);
        var layout = RunLayout.From(cfg.Parallel, cfg.Model);
        layout.Validate(gpus, c.NumLayers, cfg.Train.GradAccum, cfg.Needs);
        var plan = layout.Plan(gpus, cfg.Train.BatchSize, cfg.Train.GradAccum, cfg.Train.SeqLen);
        var r = Planner.Evaluate(c, plan, device, link, achieved, layout.LayerSplit, runtime);
        return $"configured layout ({Path.GetFileName(spec)} on {gpus} ranks): {plan.Describe()}; global batch: {plan.GlobalBatch} sequences × {plan.SeqLen} tokens per step; " +
            $"memory {r.Memory.Describe()} per GPU ({(r.Fits ? "fits" : "does NOT fit")}), {r.TokensPerSecondPerDevice:N0} tokens/s per GPU predicted";
    }

    /// <summary>Model TFLOP/s of one layer's forward + backward at micro-batch 1 × seqLen on <paramref name="be"/> (median
    /// of 3 after a warm-up), counted as the planner counts them.</summary>
    static double MeasureTflops(LlamaConfig c, IBackend be, int seqLen)
    {
        var one = c with { NumLayers = 1, VocabSize = Math.Min(c.VocabSize, 256), MaxPositionEmbeddings = Math.Max(c.MaxPositionEmbeddings, seqLen) };
        using var model = new LlamaModel(one, be);
        model.InitializeWeights(1);
        var ids = new int[seqLen];
        for (int i = 0; i < seqLen; i++) ids[i] = i % one.VocabSize;
        var times = new List<double>();
        for (int r = 0; r < 4; r++)
        {
            var sw = Stopwatch.StartNew();
            using (new TensorScope())
            {
                var idT = be.Empty([seqLen], DType.I32);
                var tgT = be.Empty([seqLen], DType.I32);
                be.Upload(idT, ids);
                be.Upload(tgT, ids);
                var (loss, _) = model.Loss(idT, tgT, 1, seqLen, seqLen, 0);
                Engine.Core.Autograd.Grad.Backward(loss);
                loss.Item();
            }
            if (r > 0) times.Add(sw.Elapsed.TotalSeconds);
        }
        times.Sort();
        double flops = seqLen * one.TrainingFlopsPerToken(seqLen);
        return flops / times[times.Count / 2] / 1e12;
    }
}
