using System.Diagnostics;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Model;
using Engine.Observability.Results;
using Engine.Training.Eval;

namespace Engine.Training.Bench;

/// <summary>
/// `engine bench eval`: inference-side throughput on a fixed random model (the training-benchmark shape): perplexity
/// evaluation tokens/s, and greedy generation tokens/s with the KV cache and without it (the reference path: same
/// tokens required). No external peer: the no-cache path is the comparison, recorded as its own entry.
/// </summary>
public static class EvalBenchmark
{
    public static SuiteOutput Run(IBackend backend, Action<string>? log = null, int seqLen = 256, int newTokens = 64, int repeats = 3)
    {
        var o = new TrainBenchOptions();
        var cfg = o.ToLlamaConfig(512);
        using var model = new LlamaModel(cfg, backend);
        model.InitializeWeights(0);
        var rng = new Rng(2);
        var tokens = Enumerable.Range(0, 8 * seqLen * 4 + 1).Select(_ => rng.NextInt(o.Vocab)).ToList();
        string device = backend is IDeviceStats ? "cuda:0" : "cpu";
        Evaluator.Perplexity(model, tokens.Take(seqLen * 8 + 1).ToList(), seqLen, 8); // warm-up
        var ppl = Enumerable.Range(0, repeats).Select(_ => Evaluator.Perplexity(model, tokens, seqLen, 8).TokensPerSecond).ToList();
        log?.Invoke($"perplexity eval: {BenchStats.Of(ppl).Median:F0} tokens/s");
        var prompt = tokens.Take(32).ToList();
        var so = new SamplingOptions(newTokens);
        Generator.Generate(model, prompt, so with { MaxNewTokens = 4 }); // warm-up
        List<int> a = [], b = [];
        var cached = Enumerable.Range(0, repeats).Select(_ =>
        {
            var sw = Stopwatch.StartNew();
            a = Generator.Generate(model, prompt, so, useCache: true);
            return a.Count / sw.Elapsed.TotalSeconds;
        }).ToList();
        var uncached = Enumerable.Range(0, Math.Max(1, repeats / 2)).Select(_ =>
        {
            var sw = Stopwatch.StartNew();
            b = Generator.Generate(model, prompt, so, useCache: false);
            return b.Count / sw.Elapsed.TotalSeconds;
        }).ToList();
        bool same = a.SequenceEqual(b);
        log?.Invoke($"generation: {BenchStats.Of(cached).Median:F1} tokens/s with KV cache, {BenchStats.Of(uncached).Median:F1} without (same tokens: {same})");
        var p = new JsonObject { ["parameters"] = model.ParameterCount, ["prompt_tokens"] = prompt.Count, ["new_tokens"] = newTokens };
        var entries = new List<BenchEntry>
        {
            BenchEntries.FromSamples("perplexity_eval", device, "tokens/s", BenchSchema.Higher, ppl, 1) with
                { Group = "eval", Params = new JsonObject { ["seq_len"] = seqLen, ["batch"] = 8 } },
            BenchEntries.FromSamples("generate_kv_cache", device, "tokens/s", BenchSchema.Higher, cached, 1) with { Group = "eval", Params = p },
            BenchEntries.FromSamples("generate_no_cache", device, "tokens/s", BenchSchema.Higher, uncached, 1) with { Group = "eval", Params = p.DeepClone().AsObject() },
        };
        if (!same) entries[1] = entries[1] with { Error = "KV-cache generation produced other tokens than the no-cache path" };
        return new SuiteOutput(entries, System.Text.Json.JsonSerializer.SerializeToNode(o)!.AsObject(),
            $"one warm-up, then {repeats} timed repeats (no-cache path: {Math.Max(1, repeats / 2)}); tokens/s per repeat, median");
    }
}
