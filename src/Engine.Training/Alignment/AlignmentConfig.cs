using Engine.Training.Config;

namespace Engine.Training.Alignment;

/// <summary>
/// A recipe's <c>[alignment]</c> section: after the stages, the tuned model (a stage or a model directory) is aligned
/// with a reward model + PPO (four full models: actor, critic, frozen reference, reward model) and with DPO, on
/// preference pairs the rule builds from the named instruction/sentiment sources; both policies and the tuned model
/// are evaluated identically on held-out prompts.
/// </summary>
public sealed class AlignmentSection
{
    /// <summary>The tuned model: a stage name or a model directory.</summary>
    [ConfigPath(NameOrPath = true)]
    public string Policy { get; set; } = "";
    /// <summary>Other models (stages or directories) whose sampled answers are ranked into pairs too.</summary>
    [ConfigPath(NameOrPath = true)]
    public string[] Compare { get; set; } = [];
    /// <summary>Instruction or sentiment sources of the recipe whose examples are the prompts.</summary>
    public string[] Sources { get; set; } = [];
    public int MaxPrompts { get; set; } = 256;
    /// <summary>Share of prompts held out (pairs and evaluation), split by prompt.</summary>
    public double HeldOut { get; set; } = 0.25;
    public int MaxPromptTokens { get; set; } = 256;
    public int MaxNewTokens { get; set; } = 12;
    public int SamplesPerModel { get; set; } = 2;
    public double Temperature { get; set; } = 1.0;
    public double TopP { get; set; } = 0.9;
    public int MaxPairsPerPrompt { get; set; } = 3;
    /// <summary>Add rule-made negatives (an empty answer, a corrupted reference) to each prompt's candidates.</summary>
    public bool RuleNegatives { get; set; } = true;
    public RewardSection Reward { get; set; } = new();
    public PpoSection Ppo { get; set; } = new();
    public DpoSection Dpo { get; set; } = new();
    public AlignmentEvalSection Eval { get; set; } = new();

    public void Validate(Func<string, bool> knownSource, Func<string, bool> isInstructionSource)
    {
        var e = new List<string>();
        if (string.IsNullOrWhiteSpace(Policy)) e.Add("alignment.policy must name the tuned model (a stage or a model directory)");
        if (Sources.Length == 0) e.Add("alignment.sources must name at least one instruct or sentiment source");
        foreach (var s in Sources)
            if (!knownSource(s)) e.Add($"alignment.sources: unknown source '{s}'");
            else if (!isInstructionSource(s)) e.Add($"alignment.sources: '{s}' is a pretrain source; prompts come from instruct or sentiment sources");
        if (MaxPrompts < 4) e.Add("alignment.max_prompts must be >= 4");
        if (HeldOut is <= 0 or >= 1) e.Add("alignment.held_out must be in (0, 1)");
        if (MaxPromptTokens < 1 || MaxNewTokens < 1 || SamplesPerModel < 1 || MaxPairsPerPrompt < 1) e.Add("alignment: max_prompt_tokens, max_new_tokens, samples_per_model and max_pairs_per_prompt must be positive");
        if (!(Temperature > 0) || TopP is <= 0 or > 1) e.Add("alignment: temperature must be > 0 and top_p in (0, 1]");
        if (Reward.Steps < 1 || Reward.BatchSize < 1) e.Add("alignment.reward: steps and batch_size must be positive");
        if (Reward.Init is not ("policy" or "random")) e.Add($"alignment.reward.init must be policy or random (got {Reward.Init})");
        if (Ppo.Steps < 0) e.Add($"alignment.ppo.steps must be >= 0 (got {Ppo.Steps}; 0 = no PPO)");
        if (Ppo.RolloutBatch < 1 || Ppo.MiniBatch < 1 || Ppo.Epochs < 1) e.Add("alignment.ppo: rollout_batch, mini_batch and epochs must be positive");
        if (Ppo.ClipRange <= 0 || Ppo.ValueClip <= 0) e.Add("alignment.ppo: clip_range and value_clip must be positive");
        if (Ppo.Gamma is < 0 or > 1 || Ppo.Lambda is < 0 or > 1) e.Add("alignment.ppo: gamma and lambda must be in [0, 1]");
        if (Ppo.InitKlCoef < 0 || Ppo.TargetKl < 0) e.Add("alignment.ppo: init_kl_coef and target_kl must be >= 0");
        if (!(Ppo.Temperature > 0) || Ppo.TopP is <= 0 or > 1) e.Add("alignment.ppo: temperature must be > 0 and top_p in (0, 1]");
        if (!(Dpo.Beta > 0)) e.Add($"alignment.dpo.beta must be positive (got {Dpo.Beta})");
        if (Dpo.Steps < 1 || Dpo.BatchSize < 1) e.Add("alignment.dpo: steps and batch_size must be positive");
        if (Eval.MaxPrompts < 1) e.Add("alignment.eval.max_prompts must be positive");
        if (e.Count > 0) throw new ConfigException(string.Join("; ", e));
    }

    /// <summary>What each training phase asks of the recipe's layout (PPO samples from the actor inside its run).</summary>
    public IEnumerable<Run.RunNeeds> Needs
    {
        get
        {
            yield return new Run.RunNeeds("alignment.reward");
            if (Ppo.Steps > 0) yield return new Run.RunNeeds("alignment.ppo") { Sampling = true };
            yield return new Run.RunNeeds("alignment.dpo");
        }
    }
}

/// <summary>Reward model training (pairwise Bradley–Terry loss on the last answer token's score).</summary>
public sealed class RewardSection
{
    /// <summary>policy: the body starts from the tuned model (DeepSpeed-Chat, OpenRLHF); random: from scratch.</summary>
    public string Init { get; set; } = "policy";
    public int Steps { get; set; } = 60;
    public int BatchSize { get; set; } = 8;
    public AdamWOptions Optim { get; set; } = new() { Lr = 1e-3, WeightDecay = 0 };
}

/// <summary>PPO with a per-token KL penalty (adaptive coefficient), GAE and clipped policy and value losses.</summary>
public sealed class PpoSection
{
    public int Steps { get; set; } = 20;
    /// <summary>Prompts (one rollout each) per PPO step.</summary>
    public int RolloutBatch { get; set; } = 8;
    public int MiniBatch { get; set; } = 4;
    /// <summary>PPO epochs over each rollout batch.</summary>
    public int Epochs { get; set; } = 4;
    public double Temperature { get; set; } = 1.0;
    public double TopP { get; set; } = 1.0;
    public double InitKlCoef { get; set; } = 0.05;
    /// <summary>Target KL (nats per answer) of the adaptive controller; 0 keeps the coefficient fixed.</summary>
    public double TargetKl { get; set; } = 6;
    public double KlHorizon { get; set; } = 10000;
    public double Gamma { get; set; } = 1.0;
    public double Lambda { get; set; } = 0.95;
    public double ClipRange { get; set; } = 0.2;
    public double ValueClip { get; set; } = 0.2;
    public bool WhitenAdvantages { get; set; } = true;
    public AdamWOptions Optim { get; set; } = new() { Lr = 1e-4, WeightDecay = 0 };
    public AdamWOptions CriticOptim { get; set; } = new() { Lr = 5e-4, WeightDecay = 0 };
}

/// <summary>DPO on the same pairs (sequence log-probs of the answer tokens; the tuned model as the frozen reference).</summary>
public sealed class DpoSection
{
    public double Beta { get; set; } = 0.1;
    public int Steps { get; set; } = 60;
    public int BatchSize { get; set; } = 8;
    public AdamWOptions Optim { get; set; } = new() { Lr = 1e-4, WeightDecay = 0 };
}

public sealed class AlignmentEvalSection
{
    /// <summary>Held-out prompts evaluated per policy (greedy answers; one sampled answer each for the KL).</summary>
    public int MaxPrompts { get; set; } = 64;
    /// <summary>Sentiment rows (csv label,sentence or jsonl) asked in the instruction format; default eval.few_shot_file.</summary>
    [ConfigPath]
    public string? SentimentFile { get; set; }
    public int SentimentExamples { get; set; } = 100;
}
