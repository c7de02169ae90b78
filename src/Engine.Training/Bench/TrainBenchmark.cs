using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;

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
/// Tokens/s of full training steps (forward, backward, clip, AdamW) on random tokens, median over steps, and the same
/// model in PyTorch (Debian's python3-torch, OMP_NUM_THREADS = cores) measured in the same run.
/// </summary>
public static class TrainBenchmark
{
    public static JsonObject Run(IBackend backend, TrainBenchOptions o, string? python, Action<string>? log = null)
    {
        var cfg = o.ToLlamaConfig(o.Seq);
        using var model = new LlamaModel(cfg, backend);
        model.InitializeWeights(0);
        using var opt = new AdamW(model, new AdamWOptions());
        var rng = new Rng(1);
        int n = o.Batch * o.Seq;
        var ids = new int[n];
        var tg = new int[n];
        var times = new List<double>();
        double loss = 0;
        for (int step = 0; step < o.Warmup + o.Steps; step++)
        {
            for (int i = 0; i < n; i++) { ids[i] = rng.NextInt(o.Vocab); tg[i] = rng.NextInt(o.Vocab); }
            var sw = Stopwatch.StartNew();
            model.ZeroGrad();
            using (var scope = new TensorScope())
            {
                var idT = backend.Empty([n], DType.I32);
                var tgT = backend.Empty([n], DType.I32);
                backend.Upload(idT, ids);
                backend.Upload(tgT, tg);
                var (l, _) = model.Loss(idT, tgT, o.Batch, o.Seq, n);
                loss = l.Item();
                Grad.Backward(l);
            }
            opt.Update(1e-4);
            sw.Stop();
            if (step >= o.Warmup) times.Add(sw.Elapsed.TotalSeconds);
            log?.Invoke($"engine step {step + 1}/{o.Warmup + o.Steps}: {sw.Elapsed.TotalSeconds:F3} s{(step < o.Warmup ? " (warmup)" : "")}");
        }
        if (Profiler.Enabled) log?.Invoke("per-op time over all steps:\n" + Profiler.Report());
        times.Sort();
        double median = times[times.Count / 2];
        double ours = n / median;
        double flops = cfg.TrainingFlopsPerToken(o.Seq);
        var result = new JsonObject
        {
            ["benchmark"] = "cpu-train-step",
            ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd"),
            ["commit"] = MachineInfo.GitCommit(),
            ["machine"] = JsonSerializer.SerializeToNode(MachineInfo.Describe()),
            ["config"] = JsonSerializer.SerializeToNode(o),
            ["parameters"] = model.ParameterCount,
            ["engine"] = new JsonObject
            {
                ["backend"] = backend.Name,
                ["step_seconds_median"] = median,
                ["tokens_per_s"] = ours,
                ["achieved_gflops"] = ours * flops / 1e9,
                ["final_loss"] = loss,
            },
        };
        if (python != null)
        {
            string script = FindScript("torch_llama_train.py");
            string args = $"{script} --hidden {o.Hidden} --layers {o.Layers} --heads {o.Heads} --kv-heads {o.KvHeads} --ffn {o.Ffn} --vocab {o.Vocab} --seq {o.Seq} --batch {o.Batch} --steps {o.Steps} --warmup {o.Warmup}";
            log?.Invoke($"running PyTorch peer: {python} {args}");
            var threads = Environment.ProcessorCount.ToString(System.Globalization.CultureInfo.InvariantCulture);
            var (code, stdout, stderr) = MachineInfo.Run(python, args, new Dictionary<string, string> { ["OMP_NUM_THREADS"] = threads, ["MKL_NUM_THREADS"] = threads });
            if (code != 0) result["pytorch_error"] = $"exit {code}: {stderr.Trim().Split('\n').LastOrDefault()}";
            else
            {
                var peer = JsonNode.Parse(stdout.Trim().Split('\n').Last())!.AsObject();
                result["pytorch"] = peer;
                result["ratio_engine_over_pytorch"] = ours / peer["tokens_per_s"]!.GetValue<double>();
            }
        }
        return result;
    }

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
