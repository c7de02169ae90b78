using Engine.Training.Config;
using Engine.Training.Parallel;
using Engine.Training.Planning;

namespace Engine.Training.Run;

/// <summary>What a run kind asks of its layout beyond the model ("train", "stage hybrid", "reward model", …): the
/// layout refuses, naming the run, what it cannot do for it.</summary>
public sealed record RunNeeds(string What)
{
    /// <summary>LoRA adapters on a frozen base (null: none).</summary>
    public LoraSection? Lora { get; init; }
    /// <summary>Token-by-token sampling from the trained model inside the run (PPO's rollouts).</summary>
    public bool Sampling { get; init; }
}

/// <summary>
/// A run's layout (TorchTitan's ParallelDims): the [parallel] section — pipeline stages × data-parallel replicas, ZeRO
/// stage, buckets, schedule, micro-batches, layer split — and the activation recompute mode. <see cref="Validate"/> is
/// the one place that checks it and refuses, by name, what the engine cannot do; <see cref="MicroBatches"/> the one
/// micro-batch rule; <see cref="Plan"/> the one description the memory model, the fit check, <c>--dry-run</c> and
/// <c>engine plan</c> read — so they all describe the run that trains.
/// </summary>
public sealed record RunLayout(ParallelSection Parallel, string Recompute = "none")
{
    public static readonly string[] RecomputeModes = ["none", "full", "selective"];

    /// <summary>From a config: <c>model.recompute</c> when set, else the older <c>model.checkpoint_activations</c>
    /// (true = "full"); a contradiction between the two is refused by <see cref="Validate"/>.</summary>
    public static RunLayout From(ParallelSection parallel, ModelSection model) =>
        new(parallel, model.Recompute is { Length: > 0 } r ? r : model.CheckpointActivations ? "full" : "none")
        {
            LegacyCheckpointFlag = model.CheckpointActivations,
        };

    /// <summary><c>model.checkpoint_activations</c> as the config set it (checked against an explicit recompute mode).</summary>
    public bool LegacyCheckpointFlag { get; init; }

    /// <summary>Whether activations are recomputed in backward (full: each block keeps only its input).</summary>
    public bool Recomputes => Recompute != "none";

    /// <summary>
    /// Refuses a layout the engine cannot run, one message listing every problem by its key. Without
    /// <paramref name="worldSize"/> (a config being loaded) the checks that need the job's ranks are left for the run;
    /// without <paramref name="modelLayers"/> those that need the model's depth; <paramref name="gradAccum"/> is the
    /// run's train.grad_accum (null where each stage has its own and checks it through its own call).
    /// </summary>
    public void Validate(int? worldSize = null, int? modelLayers = null, int? gradAccum = null, RunNeeds? needs = null)
    {
        var p = Parallel;
        var errors = new List<string>();
        string who = needs != null ? $"{needs.What}: " : "";
        if (p.Pp < 1) errors.Add($"parallel.pp must be >= 1 (got {p.Pp})");
        else if (p.Dp < 0) errors.Add($"parallel.dp must be >= 0 (got {p.Dp}; 0 = the job's ranks ÷ pp)");
        else if (worldSize is int world)
        {
            if (world % p.Pp != 0) errors.Add($"parallel.pp = {p.Pp} does not divide the job's {world} rank(s) (ranks = pp × dp)");
            else if (p.Dp != 0 && p.Dp * p.Pp != world)
                errors.Add($"parallel.dp = {p.Dp} but the job has {world} rank(s){(p.Pp > 1 ? $" for {p.Pp} pipeline stages" : "")}: launch {p.Dp * p.Pp} ranks (engine launch --nproc-per-node {p.Dp * p.Pp} -- ...) or set parallel.dp = {world / Math.Max(1, p.Pp)}");
        }
        if (p.Zero == 3) errors.Add("parallel.zero = 3 (fully sharded weights) is not available in this build: use zero = 1 or 2");
        else if (p.Zero is < 0 or > 2) errors.Add($"parallel.zero must be 0, 1 or 2 (got {p.Zero})");
        if (p.Zero == 2 && p.Pp > 1) errors.Add("parallel.zero = 2 is not supported with pipeline stages (pp > 1): use zero = 1, as Megatron does inside each data-parallel group");
        if (!(p.BucketMb > 0) || double.IsInfinity(p.BucketMb)) errors.Add($"parallel.bucket_mb must be positive (got {p.BucketMb})");
        if (p.MicroBatches < 0) errors.Add($"parallel.micro_batches must be >= 0 (got {p.MicroBatches}; 0 = train.grad_accum)");
        else if (gradAccum is int accum && p.MicroBatches > 0 && accum != 1 && accum != p.MicroBatches)
            errors.Add($"{who}parallel.micro_batches = {p.MicroBatches} and grad_accum = {accum} both set the micro-batches each replica runs per step: set one of them");
        if (p.Schedule is not ("1f1b" or "gpipe")) errors.Add($"parallel.schedule must be \"1f1b\" or \"gpipe\" (got \"{p.Schedule}\")");
        if (p.Layers.Length > 0 && p.Layers.Length != p.Pp) errors.Add($"parallel.layers names {p.Layers.Length} stages but parallel.pp = {p.Pp}");
        if (modelLayers is int n && p.Pp >= 1 && (p.Layers.Length == 0 ? n < p.Pp : p.Layers.Any(l => l < 1) || p.Layers.Sum() != n))
            errors.Add(p.Layers.Length == 0 ? $"parallel.pp = {p.Pp} needs at least {p.Pp} layers, the model has {n}"
                : $"parallel.layers [{string.Join(", ", p.Layers)}] must give every stage at least one layer and sum to the model's {n}");
        if (!RecomputeModes.Contains(Recompute)) errors.Add($"model.recompute must be \"none\", \"full\" or \"selective\" (got \"{Recompute}\")");
        else if (Recompute == "selective")
            errors.Add("model.recompute = \"selective\" (recompute the attention core and SwiGLU, keep the GEMM outputs) is not available in this build: use \"full\" or \"none\"");
        else if (LegacyCheckpointFlag && Recompute == "none")
            errors.Add("model.checkpoint_activations = true contradicts model.recompute = \"none\": set model.recompute alone");
        if (needs?.Lora is { Dropout: > 0 } lora && p.Pp > 1)
            errors.Add($"{who}lora.dropout = {lora.Dropout} with pipeline stages (parallel.pp = {p.Pp}): each stage would draw its own dropout masks, not the whole model's; use dropout = 0 or pp = 1");
        if (needs?.Sampling == true && p.Pp > 1)
            errors.Add($"{who}parallel.pp = {p.Pp}: PPO samples its rollouts token by token with a KV cache through the whole actor, which pipeline stages split (every new token would cross all stages); " +
                "run the alignment with parallel.pp = 1 (PPO is data-parallel over the ranks), or set alignment.ppo.steps = 0 to align with the reward model and DPO only");
        if (errors.Count > 0) throw new ConfigException(string.Join("; ", errors));
    }

    /// <summary>Data-parallel replicas of a job of <paramref name="worldSize"/> ranks (ranks ÷ pipeline stages).</summary>
    public int Replicas(int worldSize) => Math.Max(1, worldSize / Math.Max(1, Parallel.Pp));

    /// <summary>The one micro-batch rule: micro-batches each replica runs per optimizer step, at every pp —
    /// parallel.micro_batches when set, else the run's grad_accum (<see cref="Validate"/> refuses the two disagreeing).</summary>
    public int MicroBatches(int gradAccum) => Parallel.MicroBatches > 0 ? Parallel.MicroBatches : gradAccum;

    /// <summary>Sequences per optimizer step over the job: replicas × micro-batches × rows per micro-batch.</summary>
    public long GlobalBatch(int worldSize, int microBatchRows, int gradAccum) => (long)Replicas(worldSize) * MicroBatches(gradAccum) * microBatchRows;

    /// <summary>The run as the memory model and the planner see it.</summary>
    public PlanLayout Plan(int worldSize, int microBatchRows, int gradAccum, int seqLen) =>
        new(Replicas(worldSize), Parallel.Pp, Parallel.Zero, microBatchRows, MicroBatches(gradAccum), seqLen, Recomputes, Parallel.Schedule, Parallel.BucketMb);

    /// <summary>parallel.layers, or null for the balanced split.</summary>
    public IReadOnlyList<int>? LayerSplit => Parallel.Layers.Length > 0 ? Parallel.Layers : null;
}
