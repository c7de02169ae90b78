using Engine.Data;
using Engine.Model;
using Engine.Training.Eval;

namespace Engine.Training.Alignment;

/// <summary>How one policy (the tuned model, PPO, DPO) scored on the held-out prompts, evaluated identically.</summary>
public sealed record PolicyEval
{
    public required string Name { get; init; }
    /// <summary>Mean reward-model score of the greedy answers to the held-out prompts.</summary>
    public double MeanReward { get; init; }
    /// <summary>Mean reward-model score of the sampled answers (temperature 1, the ones the KL is measured on): the
    /// policy's expected reward, which PPO maximises and which moves before the greedy answers flip.</summary>
    public double MeanRewardSampled { get; init; }
    /// <summary>Mean rule score (<see cref="AnswerRule"/>) of those answers.</summary>
    public double RuleScore { get; init; }
    /// <summary>Share of held-out prompts where the rule scores this policy's answer above the tuned model's (ties ½).</summary>
    public double WinRate { get; init; }
    /// <summary>Mean Σ_t (log π − log π_ref) over one sampled answer (temperature 1) per held-out prompt: KL(π ‖ reference), nats per answer.</summary>
    public double Kl { get; init; }
    /// <summary>Greedy answers to sentiment rows in the instruction format whose leading word is the label.</summary>
    public double? SentimentAccuracy { get; init; }
    public int SentimentCount { get; init; }
    /// <summary>Held-out perplexity per domain (and per domain_language group): the alignment tax.</summary>
    public Dictionary<string, double> Perplexity { get; init; } = new();
    public double MeanResponseLength { get; init; }
}

public static class AlignmentEval
{
    public static List<int[]> Greedy(LlamaModel m, IReadOnlyList<int[]> prompts, int maxNew, int eos) =>
        prompts.Select(p => Generator.Generate(m, p, new SamplingOptions(maxNew, 0, 1, 0, eos)).ToArray()).ToList();

    /// <param name="baseline">The tuned model's greedy answers to the same prompts (the win-rate opponent).</param>
    /// <param name="perplexity">Held-out perplexity per domain of a model.</param>
    public static PolicyEval Evaluate(string name, LlamaModel policy, LlamaModel reference, ScalarHeadModel rm, IReadOnlyList<AlignmentPrompt> prompts,
        IReadOnlyList<int[]> baseline, ITokenizer tok, IReadOnlyList<LabeledExample> sentiment, Func<LlamaModel, Dictionary<string, double>> perplexity,
        int maxNew, ulong seed)
    {
        var ids = prompts.Select(p => p.Ids).ToList();
        var greedy = Greedy(policy, ids, maxNew, tok.EosId);
        var seqs = ids.Zip(greedy, (p, r) => new PromptResponse(p, r)).ToList();
        var rewards = PolicyOps.Scores(rm, seqs, tok.EosId);
        double rule = 0, win = 0;
        for (int i = 0; i < prompts.Count; i++)
        {
            var p = prompts[i];
            double mine = AnswerRule.Score(p.Kind, p.Example.Output, PreferenceData.Decode(tok, greedy[i]));
            double theirs = AnswerRule.Score(p.Kind, p.Example.Output, PreferenceData.Decode(tok, baseline[i]));
            rule += mine;
            win += mine > theirs + 1e-9 ? 1 : Math.Abs(mine - theirs) <= 1e-9 ? 0.5 : 0;
        }
        // KL(π ‖ ref) needs answers sampled from π itself
        var sampled = ids.Select((p, i) => new PromptResponse(p, Generator.Generate(policy, p, new SamplingOptions(maxNew, 1.0, 1.0, seed ^ (ulong)i, tok.EosId)).ToArray())).ToList();
        double sampledReward = PolicyOps.Scores(rm, sampled, tok.EosId).Average();
        double kl = 0;
        for (int s = 0; s < sampled.Count; s += 16)
        {
            var part = sampled.Skip(s).Take(16).ToList();
            var (a, _) = PolicyOps.AnswerLogProbs(policy, part, tok.EosId);
            var (r, _) = PolicyOps.AnswerLogProbs(reference, part, tok.EosId);
            for (int i = 0; i < part.Count; i++) kl += a[i].Sum() - r[i].Sum();
        }
        int correct = 0, counted = 0;
        int labelTokens = AnswerRule.SentimentLabels.Max(l => tok.Encode(l).Length) + 1;
        foreach (var ex in sentiment)
        {
            var p = ChatTemplate.Default.EncodePrompt(tok, Recipes.RecipeSources.SentimentInstruction, ex.Text);
            if (p.Length + labelTokens > policy.Config.MaxPositionEmbeddings) continue;
            var ans = Generator.Generate(policy, p, new SamplingOptions(labelTokens, 0, 1, 0, tok.EosId));
            counted++;
            if (AnswerRule.LeadingWord(PreferenceData.Decode(tok, ans)) == ex.Label.Trim().ToLowerInvariant()) correct++;
        }
        return new PolicyEval
        {
            Name = name,
            MeanReward = rewards.Average(),
            MeanRewardSampled = sampledReward,
            RuleScore = rule / prompts.Count,
            WinRate = win / prompts.Count,
            Kl = kl / sampled.Count,
            SentimentAccuracy = counted > 0 ? (double)correct / counted : null,
            SentimentCount = counted,
            Perplexity = perplexity(policy),
            MeanResponseLength = greedy.Average(g => g.Length),
        };
    }
}
