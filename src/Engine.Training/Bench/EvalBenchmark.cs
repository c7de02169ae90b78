using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Model;
using Engine.Training.Eval;

namespace Engine.Training.Bench;

/// <summary>
/// Inference-side throughput on a fixed random model (the 12M training-benchmark shape): perplexity evaluation
/// tokens/s, and greedy generation tokens/s with the KV cache against the no-cache reference path in the same run.
/// </summary>
public static class EvalBenchmark
{
    public static JsonObject Run(IBackend backend, Action<string>? log = null, int seqLen = 256, int newTokens = 64)
    {
        var o = new TrainBenchOptions();
        var cfg = o.ToLlamaConfig(512);
        using var model = new LlamaModel(cfg, backend);
        model.InitializeWeights(0);
        var rng = new Rng(2);
        var tokens = Enumerable.Range(0, 8 * seqLen * 4 + 1).Select(_ => rng.NextInt(o.Vocab)).ToList();
        Evaluator.Perplexity(model, tokens.Take(seqLen * 8 + 1).ToList(), seqLen, 8); // warm-up
        var ppl = Evaluator.Perplexity(model, tokens, seqLen, 8);
        log?.Invoke($"perplexity eval: {ppl.TokensPerSecond:F0} tokens/s");
        var prompt = tokens.Take(32).ToList();
        var so = new SamplingOptions(newTokens);
        Generator.Generate(model, prompt, so with { MaxNewTokens = 4 });
        var sw = Stopwatch.StartNew();
        var a = Generator.Generate(model, prompt, so, useCache: true);
        double cached = a.Count / sw.Elapsed.TotalSeconds;
        sw.Restart();
        var b = Generator.Generate(model, prompt, so, useCache: false);
        double uncached = b.Count / sw.Elapsed.TotalSeconds;
        log?.Invoke($"generation: {cached:F1} tokens/s with KV cache, {uncached:F1} without (same tokens: {a.SequenceEqual(b)})");
        return new JsonObject
        {
            ["benchmark"] = "cpu-eval-generate",
            ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd"),
            ["commit"] = MachineInfo.GitCommit(),
            ["machine"] = JsonSerializer.SerializeToNode(MachineInfo.Describe()),
            ["backend"] = backend.Name,
            ["parameters"] = model.ParameterCount,
            ["perplexity_tokens_per_s"] = ppl.TokensPerSecond,
            ["perplexity_seq_len"] = seqLen,
            ["generate_prompt_tokens"] = prompt.Count,
            ["generate_new_tokens"] = newTokens,
            ["generate_tokens_per_s_kv_cache"] = cached,
            ["generate_tokens_per_s_no_cache"] = uncached,
            ["kv_cache_speedup"] = cached / uncached,
            ["same_tokens"] = a.SequenceEqual(b),
        };
    }
}
