using Engine.Data;
using Engine.Model;
using Engine.Training.Eval;

namespace Engine.Training.Alignment;

/// <summary>One prompt of the alignment set: its source, how its answers are checked, the example and its prompt ids.</summary>
public sealed record AlignmentPrompt(int Index, string Source, AnswerKind Kind, InstructionExample Example, int[] Ids);

/// <summary>A ranked pair for one prompt: chosen scored higher than rejected by <see cref="AnswerRule"/>. Origin names
/// where each answer came from ("reference&gt;tuned", "tuned&gt;base", ...).</summary>
public sealed record Preference(AlignmentPrompt Prompt, int[] Chosen, int[] Rejected, double ChosenScore, double RejectedScore, string Origin)
{
    public PromptResponse ChosenSequence => new(Prompt.Ids, Chosen);
    public PromptResponse RejectedSequence => new(Prompt.Ids, Rejected);
}

/// <summary>The alignment prompts split by prompt (never by pair) into training and held-out sets.</summary>
public sealed record PromptSplit(List<AlignmentPrompt> Train, List<AlignmentPrompt> HeldOut, List<string> Notes);

/// <summary>
/// Preference pairs the shipped files support without human raters: for each prompt, the data set's reference answer
/// and answers sampled from the tuned model and from the other named models (earlier stages, other sizes) are scored
/// by <see cref="AnswerRule"/>; every pair of distinct answers whose scores differ becomes a candidate (higher =
/// chosen), the widest gaps first and one per origin pair before a second, at most maxPairs per prompt. A sampled answer the rule scores as high as the
/// reference makes no pair with it. With rule negatives, two rule-made answers join the candidates: an empty answer
/// (EOS only) and a corrupted reference (<see cref="AnswerRule.Corrupt"/>: another label, a moved number, half a text),
/// so the reward model sees wrong content and not only the sampled models' style.
/// </summary>
public static class PreferenceData
{
    /// <summary>A named model whose sampled answers enter the ranking.</summary>
    public sealed record Sampler(string Name, LlamaModel Model);

    /// <summary>Prompts from instruction/sentiment examples: rendered with the chat template the instruction stream
    /// trains with; prompts over maxPromptTokens and references over maxAnswerTokens are skipped (counted in Notes).</summary>
    public static PromptSplit Prompts(IEnumerable<(string Source, string Kind, InstructionExample Example)> examples, ITokenizer tok,
        int maxPrompts, double heldOut, int maxPromptTokens, int maxAnswerTokens, ulong seed)
    {
        var all = new List<AlignmentPrompt>();
        var skipped = new Dictionary<string, int>(StringComparer.Ordinal);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (src, kind, ex) in examples)
        {
            var ids = ChatTemplate.Default.EncodePrompt(tok, ex.Instruction, ex.Input);
            if (ids.Length > maxPromptTokens || tok.Encode(ex.Output).Length + 1 > maxAnswerTokens)
            {
                skipped[src] = skipped.GetValueOrDefault(src) + 1;
                continue;
            }
            if (!seen.Add(ex.Instruction + "\u0001" + ex.Input)) continue;     // one prompt, one entry: the split is by prompt
            all.Add(new AlignmentPrompt(0, src, AnswerRule.KindOf(kind, ex.Output), ex, ids));
        }
        if (all.Count < 2) throw new InvalidDataException($"alignment: only {all.Count} prompts fit max_prompt_tokens {maxPromptTokens} and max_new_tokens {maxAnswerTokens - 1}");
        var order = Recipes.RecipeSources.Permutation(all.Count, seed);
        var picked = order.Take(Math.Min(maxPrompts, all.Count)).Select((o, i) => all[o] with { Index = i }).ToList();
        int held = Math.Clamp((int)Math.Round(picked.Count * heldOut), 1, picked.Count - 1);
        var notes = skipped.Select(kv => $"{kv.Key}: {kv.Value} prompts skipped (prompt over {maxPromptTokens} tokens or reference over {maxAnswerTokens - 1})").ToList();
        return new PromptSplit(picked.Skip(held).ToList(), picked.Take(held).ToList(), notes);
    }

    /// <summary>Scored candidates for each prompt, then the pairs (see the class remarks).</summary>
    public static List<Preference> Build(IReadOnlyList<AlignmentPrompt> prompts, ITokenizer tok, IReadOnlyList<Sampler> samplers,
        int samplesPerModel, SamplingOptions sampling, int maxPairs, bool ruleNegatives = false)
    {
        var pairs = new List<Preference>();
        foreach (var p in prompts)
        {
            var cands = new List<(string Origin, int[] Ids, double Score)>();
            int[] reference = [.. tok.Encode(p.Example.Output), tok.EosId];
            cands.Add(("reference", reference, AnswerRule.Score(p.Kind, p.Example.Output, p.Example.Output)));
            if (ruleNegatives)
            {
                var rng = new Core.Rng(sampling.Seed ^ (ulong)p.Index * 0xD1B54A32D192ED03UL);
                string wrong = AnswerRule.Corrupt(p.Kind, p.Example.Output, rng);
                cands.Add(("corrupted", [.. tok.Encode(wrong), tok.EosId], AnswerRule.Score(p.Kind, p.Example.Output, wrong)));
                cands.Add(("empty", [tok.EosId], 0));
            }
            foreach (var s in samplers)
                for (int k = 0; k < samplesPerModel; k++)
                {
                    var o = sampling with { Seed = sampling.Seed ^ ((ulong)p.Index * 0x9E3779B97F4A7C15UL) ^ ((ulong)k << 40) ^ Recipes.RecipeSources.StableHash(s.Name) };
                    var ids = Generator.Generate(s.Model, p.Ids, o).ToArray();
                    cands.Add((s.Name, ids, AnswerRule.Score(p.Kind, p.Example.Output, Decode(tok, ids))));
                }
            var list = new List<Preference>();
            for (int i = 0; i < cands.Count; i++)
                for (int j = 0; j < cands.Count; j++)
                {
                    var (a, b) = (cands[i], cands[j]);
                    if (a.Score <= b.Score + 1e-9 || a.Ids.AsSpan().SequenceEqual(b.Ids)) continue;
                    list.Add(new Preference(p, a.Ids, b.Ids, a.Score, b.Score, $"{a.Origin}>{b.Origin}"));
                }
            // widest gaps first, one pair per origin before a second of any; the same pair of texts (an answer sampled
            // twice) once
            var ordered = list.OrderByDescending(x => x.ChosenScore - x.RejectedScore).ThenBy(x => x.Origin, StringComparer.Ordinal).ToList();
            var taken = new HashSet<string>(StringComparer.Ordinal);
            var origins = new HashSet<string>(StringComparer.Ordinal);
            foreach (bool firstPass in new[] { true, false })
                foreach (var pr in ordered)
                {
                    if (taken.Count >= maxPairs) break;
                    if (firstPass && !origins.Add(pr.Origin)) continue;
                    if (taken.Add(string.Join(',', pr.Chosen) + "|" + string.Join(',', pr.Rejected))) pairs.Add(pr);
                }
        }
        return pairs;
    }

    /// <summary>The answer text (EOS and anything after it dropped).</summary>
    public static string Decode(ITokenizer tok, IReadOnlyList<int> ids)
    {
        int n = 0;
        while (n < ids.Count && ids[n] != tok.EosId) n++;
        return tok.Decode(ids.Take(n).ToArray());
    }
}
