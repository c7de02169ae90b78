using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;

namespace Engine.Training.Eval;

/// <summary>Decoding settings: temperature 0 is greedy; top-p keeps the smallest set of tokens with mass ≥ p.</summary>
public sealed record SamplingOptions(int MaxNewTokens = 64, double Temperature = 0, double TopP = 1.0, ulong Seed = 0, int StopToken = -1)
{
    /// <summary>Refuses settings that cannot sample (one line naming the option): max new tokens at least 1, temperature
    /// finite and >= 0, top-p in (0, 1] — what transformers' generate and llama.cpp refuse or clamp.</summary>
    public SamplingOptions Validate()
    {
        if (MaxNewTokens < 1) throw new ArgumentException($"max new tokens must be at least 1 (got {MaxNewTokens})");
        if (!(Temperature >= 0) || double.IsInfinity(Temperature)) throw new ArgumentException($"temperature must be a finite number >= 0 (0 = greedy; got {Temperature})");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"top-p must be in (0, 1] (got {TopP})");
        return this;
    }
}

public static class Generator
{
    /// <summary>Generates after the prompt; useCache=false recomputes the whole sequence each step (the reference).</summary>
    public static List<int> Generate(LlamaModel model, IReadOnlyList<int> prompt, SamplingOptions o, bool useCache = true)
    {
        if (prompt.Count == 0) throw new ArgumentException("prompt is empty");
        o.Validate();
        int context = model.Config.MaxPositionEmbeddings;
        if (prompt.Count >= context)
            throw new ArgumentException($"the prompt is {prompt.Count} tokens but the model's context is {context} positions: no room to generate (shorten the prompt)");
        foreach (int id in prompt)
            if ((uint)id >= (uint)model.Config.VocabSize) throw new ArgumentException($"prompt token id {id} is outside the model's vocabulary of {model.Config.VocabSize}");
        var be = model.Backend;
        var rng = new Rng(o.Seed);
        var seq = new List<int>(prompt);
        var output = new List<int>();
        int maxLen = Math.Min(model.Config.MaxPositionEmbeddings, prompt.Count + o.MaxNewTokens);
        using var cache = useCache ? new KvCache(model.Config, be, maxLen) : null;
        using var ng = Grad.NoGrad();
        int fed = 0;
        while (seq.Count < maxLen)
        {
            float[] last;
            using (var scope = new TensorScope())
            {
                if (cache != null)
                {
                    var ids = be.Empty([seq.Count - fed], DType.I32);
                    be.Upload(ids, seq.ToArray().AsSpan(fed));
                    var lg = model.LogitsWithCache(ids, cache);
                    last = lg.Narrow0(seq.Count - fed - 1, 1).ToArray();
                    fed = seq.Count;
                }
                else
                {
                    var ids = be.Empty([seq.Count], DType.I32);
                    be.Upload(ids, seq.ToArray());
                    var lg = model.Logits(ids, 1, seq.Count);
                    last = lg.Narrow0(seq.Count - 1, 1).ToArray();
                }
            }
            int next = Sample(last, o, rng);
            seq.Add(next);
            output.Add(next);
            if (next == o.StopToken) break;
        }
        return output;
    }

    public static int Sample(float[] logits, SamplingOptions o, Rng rng)
    {
        if (o.Temperature <= 0)
        {
            int best = 0;
            for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
            return best;
        }
        double m = logits.Max();
        var probs = logits.Select(l => Math.Exp((l - m) / o.Temperature)).ToArray();
        double sum = probs.Sum();
        var order = Enumerable.Range(0, probs.Length).OrderByDescending(i => probs[i]).ToArray();
        double mass = 0;
        int keep = 0;
        while (keep < order.Length)
        {
            mass += probs[order[keep]] / sum;
            keep++;
            if (mass >= o.TopP) break;
        }
        double total = 0;
        for (int i = 0; i < keep; i++) total += probs[order[i]];
        double u = rng.NextDouble() * total;
        for (int i = 0; i < keep; i++)
        {
            u -= probs[order[i]];
            if (u <= 0) return order[i];
        }
        return order[keep - 1];
    }
}
