using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Data;
using Engine.Model;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Training.Eval;
using Engine.Training.Recipes;
using Engine.Training.Run;

namespace Engine.Training.Alignment;

/// <summary>What the alignment phase of a recipe produced: the preference data, the reward model's pair accuracy and
/// each policy's evaluation (tuned, ppo, dpo).</summary>
public sealed record AlignmentReport
{
    public required string Policy { get; init; }
    public int TrainPrompts { get; init; }
    public int HeldOutPrompts { get; init; }
    public int TrainPairs { get; init; }
    public int HeldOutPairs { get; init; }
    /// <summary>Pairs by where the chosen and rejected answers came from ("reference&gt;tuned", ...).</summary>
    public Dictionary<string, int> PairOrigins { get; init; } = new();
    /// <summary>Held-out pair accuracy of the reward model (pairs of held-out prompts only).</summary>
    public double RmPairAccuracy { get; init; }
    public double RmTrainPairAccuracy { get; init; }
    public double RmHeldOutLoss { get; init; }
    public Dictionary<string, PolicyEval> Policies { get; init; } = new();
    public Dictionary<string, double> Seconds { get; init; } = new();
    public List<string> Notes { get; init; } = new();
}

/// <summary>
/// The recipe's alignment phase: tuned model → preference pairs (rule-ranked, split by prompt) → reward model → PPO
/// (actor, critic, frozen reference, reward model: four full models) and DPO → the same evaluation of tuned, PPO and
/// DPO. The reward model and DPO are runs of <see cref="RunAssembler"/> on the recipe's layout (data-parallel
/// replicas and pipeline stages); PPO is data-parallel over the ranks. Whatever trains split over the ranks is saved
/// and read back whole, so pairs, reward scores and evaluation are those of one process (each rank computes them).
/// Only backend ops and host math: every backend runs it.
/// </summary>
public sealed class AlignmentRunner(RecipeConfig cfg, AlignmentSection a, IBackend backend, IReadOnlyDictionary<string, LoadedSource> sources,
    Func<string, string> modelDirectory, ITokenizer tok)
{
    public Action<string>? Log { get; set; }

    /// <summary>The job's ranks (null = this process alone); rank 0 writes the files and messages.</summary>
    public ICommunicator? Communicator { get; set; }

    public AlignmentReport Run(string outDir)
    {
        a.Validate(sources.ContainsKey, s => !sources[s].IsPretrain);
        var comm = Communicator ?? new SingleRankCommunicator(backend);
        bool lead = comm.Rank == 0;
        var layout = cfg.Layout;
        var seconds = new Dictionary<string, double>(StringComparer.Ordinal);
        var sw = Stopwatch.StartNew();
        void Lap(string what) { seconds[what] = Math.Round(sw.Elapsed.TotalSeconds, 1); sw.Restart(); }
        void Say(string m) { if (lead) Log?.Invoke(m); }
        string dir = Path.Combine(outDir, "alignment");
        if (lead) Directory.CreateDirectory(dir);
        comm.Barrier();
        using var metrics = lead ? new StreamWriter(Path.Combine(dir, "metrics.jsonl")) : null;
        void Metric(object o) { metrics?.WriteLine(JsonSerializer.Serialize(o)); metrics?.Flush(); }
        ulong seed = cfg.Seed ^ 0xA11C;

        string policyDir = modelDirectory(a.Policy);
        using var tuned = ModelIO.Load(policyDir, backend);
        if (tok.VocabSize > tuned.Config.VocabSize) throw new Config.ConfigException($"alignment.policy: the model's vocabulary ({tuned.Config.VocabSize}) is smaller than the tokenizer's ({tok.VocabSize})");
        int maxPrompt = Math.Min(a.MaxPromptTokens, tuned.Config.MaxPositionEmbeddings - a.MaxNewTokens - 1);
        var split = PreferenceData.Prompts(a.Sources.SelectMany(s => sources[s].Examples.Select(e => (s, sources[s].Section.Kind, e))), tok,
            a.MaxPrompts, a.HeldOut, maxPrompt, a.MaxNewTokens + 1, seed);
        var notes = new List<string>(split.Notes);
        Say($"alignment: {split.Train.Count} training prompts, {split.HeldOut.Count} held out (split by prompt); answers ≤ {a.MaxNewTokens} tokens");

        var compare = a.Compare.Select(c => (Name: c, Model: ModelIO.Load(modelDirectory(c), backend))).ToList();
        List<Preference> trainPairs, heldPairs;
        try
        {
            var samplers = new List<PreferenceData.Sampler> { new("tuned", tuned) };
            samplers.AddRange(compare.Select(c => new PreferenceData.Sampler(c.Name, c.Model)));
            var sampling = new SamplingOptions(a.MaxNewTokens, a.Temperature, a.TopP, seed, tok.EosId);
            trainPairs = PreferenceData.Build(split.Train, tok, samplers, a.SamplesPerModel, sampling, a.MaxPairsPerPrompt, a.RuleNegatives);
            heldPairs = PreferenceData.Build(split.HeldOut, tok, samplers, a.SamplesPerModel, sampling with { Seed = seed ^ 0x4E1D }, a.MaxPairsPerPrompt, a.RuleNegatives);
        }
        finally { foreach (var c in compare) c.Model.Dispose(); }
        var origins = trainPairs.Concat(heldPairs).GroupBy(p => p.Origin).OrderBy(g => g.Key, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.Count());
        Say($"preference pairs: {trainPairs.Count} train, {heldPairs.Count} held out ({string.Join(", ", origins.Select(kv => $"{kv.Key} {kv.Value}"))})");
        Lap("pairs");

        // reward model: the tuned model's weights (or fresh ones) and a new head, trained on the recipe's layout
        string rmDir = Path.Combine(dir, "reward_model");
        var rmBody = a.Reward.Init == "policy" ? ModelSource.Load(policyDir, backend) : ModelSource.Fresh(tuned.Config, backend, seed);
        using (var run = RunAssembler.Assemble(RewardModelTrainer.Spec(rmBody, seed ^ 0x5C0, trainPairs, a.Reward, tok.EosId, seed, layout, l =>
        {
            Metric(new { phase = "reward", step = l.Step, loss = l.Loss, accuracy = l.Accuracy, grad_norm = l.GradNorm });
            if (l.Step % 10 == 0 || l.Step == a.Reward.Steps) Say($"[reward] step {l.Step}/{a.Reward.Steps} loss {l.Loss:F4} batch acc {l.Accuracy:P0}");
        }, Log), comm, backend))
        {
            run.Train();
            RunArtifacts.Rename(run.Model, $"{RunArtifacts.RunName(outDir)}-reward_model");
            RewardModelTrainer.Save(run, rmDir);
        }
        using var rm = ScalarHeadModel.Load(rmDir, backend);
        rm.SetTrainable(false);
        var (heldAcc, heldLoss) = RewardModelTrainer.Evaluate(rm, heldPairs, tok.EosId);
        var (trainAcc, _) = RewardModelTrainer.Evaluate(rm, trainPairs, tok.EosId);
        Say($"reward model: held-out pair accuracy {heldAcc:P1} ({heldPairs.Count} pairs), train {trainAcc:P1}");
        Lap("reward_model");
        double[] Reward(IReadOnlyList<PromptResponse> seqs) => PolicyOps.Scores(rm, seqs, tok.EosId);

        // PPO: actor, critic (tuned body + value head), frozen reference, reward model; data-parallel over the ranks
        using var actor = PolicyOps.Clone(tuned);
        if (a.Ppo.Steps > 0)
        {
            using (var critic = new ScalarHeadModel(PolicyOps.Clone(tuned), seed ^ 0xC417))
            using (var reference = PolicyOps.Clone(tuned))
            using (var ppo = new PpoTrainer(actor, critic, reference, Reward, a.Ppo, tok.EosId, tok.EosId, a.MaxNewTokens, seed ^ 0x990, comm, layout))
            {
                ppo.Train(split.Train.Select(p => p.Ids).ToList(), l =>
                {
                    Metric(new
                    {
                        phase = "ppo",
                        step = l.Step,
                        reward = l.Reward,
                        kl = l.Kl,
                        kl_coef = l.KlCoef,
                        entropy = l.Entropy,
                        clip_fraction = l.ClipFraction,
                        value_clip_fraction = l.ValueClipFraction,
                        approx_kl = l.ApproxKl,
                        policy_loss = l.PolicyLoss,
                        value_loss = l.ValueLoss,
                        response_length = l.ResponseLength,
                        seconds = l.Seconds
                    });
                    Say($"[ppo] step {l.Step}/{a.Ppo.Steps} reward {l.Reward:F3} kl {l.Kl:F3} (β {l.KlCoef:F4}) entropy {l.Entropy:F2} clipfrac {l.ClipFraction:F3} len {l.ResponseLength:F1} {l.Seconds:F1} s");
                });
            }
            RunArtifacts.Rename(actor, $"{RunArtifacts.RunName(outDir)}-ppo");
            if (lead) ModelIO.Save(actor, Path.Combine(dir, "ppo"));
            comm.Barrier();
        }
        else notes.Add("alignment.ppo.steps = 0: no PPO");
        Lap("ppo");

        // DPO on the same training pairs, the tuned model as the frozen reference, on the recipe's layout
        var refC = PolicyOps.SequenceLogProbs(tuned, trainPairs.Select(p => p.ChosenSequence).ToList(), tok.EosId);
        var refR = PolicyOps.SequenceLogProbs(tuned, trainPairs.Select(p => p.RejectedSequence).ToList(), tok.EosId);
        string dpoDir = Path.Combine(dir, "dpo");
        using (var run = RunAssembler.Assemble(DpoTrainer.Spec(ModelSource.Load(policyDir, backend), trainPairs, refC, refR, a.Dpo, tok.EosId, seed ^ 0xD90, layout, l =>
        {
            Metric(new { phase = "dpo", step = l.Step, loss = l.Loss, accuracy = l.Accuracy, margin = l.Margin, grad_norm = l.GradNorm });
            if (l.Step % 10 == 0 || l.Step == a.Dpo.Steps) Say($"[dpo] step {l.Step}/{a.Dpo.Steps} loss {l.Loss:F4} reward acc {l.Accuracy:P0} margin {l.Margin:F3}");
        }, Log), comm, backend))
        {
            run.Train();
            RunArtifacts.Rename(run.Model, $"{RunArtifacts.RunName(outDir)}-dpo");
            run.SaveWeights(dpoDir);
        }
        using var dpo = ModelIO.Load(dpoDir, backend);
        Lap("dpo");

        // the same evaluation for the policies
        var held = split.HeldOut.Take(a.Eval.MaxPrompts).ToList();
        var sentimentFile = a.Eval.SentimentFile ?? cfg.Eval.FewShotFile;
        var sentiment = sentimentFile != null ? LabeledData.Read(cfg.Resolve(sentimentFile)).Examples.Take(a.Eval.SentimentExamples).ToList() : [];
        if (sentimentFile == null) notes.Add("no sentiment file (alignment.eval.sentiment_file or eval.few_shot_file): sentiment accuracy not measured");
        var baseline = AlignmentEval.Greedy(tuned, held.Select(p => p.Ids).ToList(), a.MaxNewTokens, tok.EosId);
        tuned.SetTrainable(_ => false);
        var policies = new Dictionary<string, PolicyEval>(StringComparer.Ordinal);
        var evaluated = a.Ppo.Steps > 0 ? new[] { ("tuned", tuned), ("ppo", actor), ("dpo", dpo) } : [("tuned", tuned), ("dpo", dpo)];
        foreach (var (name, m) in evaluated)
        {
            var r = AlignmentEval.Evaluate(name, m, tuned, rm, held, baseline, tok, sentiment, Perplexity, a.MaxNewTokens, seed ^ 0xE7A1);
            policies[name] = r;
            Say($"{name}: reward {r.MeanReward:F3} (sampled {r.MeanRewardSampled:F3}), rule {r.RuleScore:F3}, win rate vs tuned {r.WinRate:P1}, KL {r.Kl:F3}, sentiment {r.SentimentAccuracy:P1}, " +
                string.Join(", ", r.Perplexity.Where(p => !p.Key.Contains('_')).Select(p => $"ppl[{p.Key}] {p.Value:F2}")));
        }
        Lap("eval");
        notes.Add("four full models (actor, critic = Llama + value head, frozen reference, reward model), no LoRA adapters");
        return new AlignmentReport
        {
            Policy = a.Policy,
            TrainPrompts = split.Train.Count,
            HeldOutPrompts = split.HeldOut.Count,
            TrainPairs = trainPairs.Count,
            HeldOutPairs = heldPairs.Count,
            PairOrigins = origins,
            RmPairAccuracy = heldAcc,
            RmTrainPairAccuracy = trainAcc,
            RmHeldOutLoss = heldLoss,
            Policies = policies,
            Seconds = seconds,
            Notes = notes,
        };
    }

    /// <summary>Held-out perplexity per (domain, language) group and per domain (geometric mean over its languages),
    /// as the recipe's stages are scored.</summary>
    Dictionary<string, double> Perplexity(LlamaModel model)
    {
        var ppl = new Dictionary<string, double>(StringComparer.Ordinal);
        var nll = new List<(string Domain, double Nll)>();
        foreach (var g in sources.Values.Where(s => s.IsPretrain && s.HeldOutDocs.Count > 0).GroupBy(s => s.Group).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            var tokens = Evaluator.TokenStream(g.SelectMany(s => s.HeldOutDocs), tok, cfg.Eval.PerplexityTokens + 1);
            if (tokens.Count <= cfg.Eval.SeqLen) continue;
            var r = Evaluator.Perplexity(model, tokens, cfg.Eval.SeqLen, cfg.Eval.Batch, cfg.Eval.PerplexityTokens);
            ppl[g.Key] = r.Perplexity;
            nll.Add((g.First().Section.Domain, r.MeanNll));
        }
        foreach (var d in nll.GroupBy(v => v.Domain)) ppl[d.Key] = Math.Exp(d.Average(v => v.Nll));
        return ppl;
    }

    /// <summary>The alignment table (markdown): one row per policy.</summary>
    public static string Table(AlignmentReport r)
    {
        var domains = r.Policies.Values.SelectMany(p => p.Perplexity.Keys).Where(k => !k.Contains('_')).Distinct().OrderBy(k => k, StringComparer.Ordinal).ToList();
        var sb = new StringBuilder();
        sb.Append("| policy | held-out reward (greedy) | (sampled) | rule score | win rate vs tuned | KL from reference | sentiment acc |");
        foreach (var d in domains) sb.Append($" ppl {d} |");
        sb.Append(" answer tokens |\n|---|---:|---:|---:|---:|---:|---:|");
        foreach (var _ in domains) sb.Append("---:|");
        sb.Append("---:|\n");
        var inv = CultureInfo.InvariantCulture;
        foreach (var p in r.Policies.Values)
        {
            sb.Append(inv, $"| {p.Name} | {p.MeanReward:F3} | {p.MeanRewardSampled:F3} | {p.RuleScore:F3} | {p.WinRate * 100:F1}% | {p.Kl:F3} | ");
            sb.Append(p.SentimentAccuracy is { } s ? string.Create(inv, $"{s * 100:F1}% ({p.SentimentCount}) |") : "– |");
            foreach (var d in domains) sb.Append(p.Perplexity.TryGetValue(d, out var v) ? string.Create(inv, $" {v:F2} |") : " – |");
            sb.Append(inv, $" {p.MeanResponseLength:F1} |\n");
        }
        sb.Append(inv, $"\nReward model held-out pair accuracy {r.RmPairAccuracy * 100:F1}% ({r.HeldOutPairs} pairs; train {r.RmTrainPairAccuracy * 100:F1}% of {r.TrainPairs}).\n");
        return sb.ToString();
    }
}
