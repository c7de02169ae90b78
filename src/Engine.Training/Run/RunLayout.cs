using Engine.Model;
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
    /// <summary>The LoRA adapters are merged into the base at the end of the run (a recipe's LoRA stage).</summary>
    public bool MergesLora { get; init; }
    /// <summary>An EWC penalty, whose Fisher estimate needs each rank's whole gradients.</summary>
    public bool Ewc { get; init; }
    /// <summary>A loss of its own that reads whole logits or a scalar head's hidden states (the alignment phases), not the
    /// language model's cross-entropy.</summary>
    public bool OwnLoss { get; init; }
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

    /// <summary>The recompute mode the model runs with.</summary>
    public RecomputeMode Mode => Recompute switch
    {
        "full" => RecomputeMode.Full,
        "selective" => RecomputeMode.Selective,
        _ => RecomputeMode.None,
    };

    /// <summary>
    /// Refuses a layout the engine cannot run, one message listing every problem by its key. Without
    /// <paramref name="worldSize"/> (a config being loaded) the checks that need the job's ranks are left for the run;
    /// without <paramref name="modelLayers"/> those that need the model's depth; <paramref name="gradAccum"/> is the
    /// run's train.grad_accum (null where each stage has its own and checks it through its own call).
    /// </summary>
    /// <param name="model">The model's shape, for the checks that split it (heads, key/value heads, widths and the
    /// vocabulary over tensor ranks; its layers over pipeline chunks).</param>
    public void Validate(int? worldSize = null, int? modelLayers = null, int? gradAccum = null, RunNeeds? needs = null, LlamaConfig? model = null)
    {
        var p = Parallel;
        var errors = new List<string>();
        string who = needs != null ? $"{needs.What}: " : "";
        modelLayers ??= model?.NumLayers;
        if (p.Tp < 1) errors.Add($"parallel.tp must be >= 1 (got {p.Tp})");
        if (p.Cp < 1) errors.Add($"parallel.cp must be >= 1 (got {p.Cp})");
        if (p.VirtualStages < 1) errors.Add($"parallel.virtual_stages must be >= 1 (got {p.VirtualStages})");
        int inner = Math.Max(1, p.Pp) * Math.Max(1, p.Tp) * Math.Max(1, p.Cp);
        string dims = $"pp {p.Pp} × cp {p.Cp} × tp {p.Tp}";
        if (p.Pp < 1) errors.Add($"parallel.pp must be >= 1 (got {p.Pp})");
        else if (p.Dp < 0) errors.Add($"parallel.dp must be >= 0 (got {p.Dp}; 0 = the job's ranks ÷ (pp × cp × tp))");
        else if (worldSize is int world)
        {
            if (world % inner != 0) errors.Add(p.Tp == 1 && p.Cp == 1 ? $"parallel.pp = {p.Pp} does not divide the job's {world} rank(s) (ranks = pp × dp)"
                : $"{dims} = {inner} does not divide the job's {world} rank(s) (ranks = pp × dp × cp × tp)");
            else if (p.Dp != 0 && p.Dp * inner != world)
                errors.Add($"parallel.dp = {p.Dp} but the job has {world} rank(s){(inner > 1 ? $" for {dims}" : "")}: launch {p.Dp * inner} ranks (engine launch --nproc-per-node {p.Dp * inner} -- ...) or set parallel.dp = {world / inner}");
        }
        if (model is { } m && p.Tp > 1)
        {
            // Megatron's rules: whole heads per rank; key/value heads split the same way, or (fewer than tp) one copy per
            // group of tp ÷ kv ranks; the MLP width and the vocabulary split evenly
            if (m.NumHeads % p.Tp != 0) errors.Add($"parallel.tp = {p.Tp} must divide num_attention_heads ({m.NumHeads}): each tensor rank holds whole heads");
            if (m.NumKvHeads % p.Tp != 0 && p.Tp % m.NumKvHeads != 0)
                errors.Add($"parallel.tp = {p.Tp} and num_key_value_heads ({m.NumKvHeads}): one must divide the other (key/value heads split across the tensor ranks, or each replicated on tp ÷ kv of them)");
            if (m.IntermediateSize % p.Tp != 0) errors.Add($"parallel.tp = {p.Tp} must divide intermediate_size ({m.IntermediateSize})");
            if (m.VocabSize % p.Tp != 0)
                errors.Add($"parallel.tp = {p.Tp} must divide vocab_size ({m.VocabSize}) for the vocabulary-parallel embedding and head: set model.vocab_size to a multiple of {p.Tp} (Megatron pads it to a multiple of 128 × tp)");
        }
        if (model is { } mz && p.Tp > 1 && mz.MaxZLossWeight > 0)
            errors.Add($"parallel.tp = {p.Tp} with Baichuan 2's max-z loss (z_loss_weight = {mz.MaxZLossWeight}) is not supported yet: its max over the whole vocabulary is not built for the vocabulary-parallel loss; use tp = 1");
        if (model is { } ma && p.Cp > 1 && ma.Position == PositionEmbedding.Alibi)
            errors.Add($"parallel.cp = {p.Cp} with ALiBi positions is not supported: context-parallel attention merges key blocks at positions relative to each block, and ALiBi's bias needs the global distance; use cp = 1");
        if (p.Tp > 1 || p.Cp > 1)
        {
            string what = p.Tp > 1 && p.Cp > 1 ? $"parallel.tp = {p.Tp} and parallel.cp = {p.Cp}" : p.Tp > 1 ? $"parallel.tp = {p.Tp}" : $"parallel.cp = {p.Cp}";
            if (needs?.Lora != null)
                errors.Add($"{who}lora with {what} is not supported yet (adapters on tensor-parallel layers need their own row/column split); use tp = cp = 1 for LoRA");
            if (needs?.OwnLoss == true)
                errors.Add($"{who}{what}: this phase's loss reads whole logits or a scalar head's hidden states, which tensor and context parallelism split; run the alignment with tp = cp = 1");
            if (needs?.Sampling == true)
                errors.Add($"{who}{what}: PPO samples token by token with a KV cache through the whole actor on each rank; run the alignment with tp = cp = 1");
            if (needs?.Ewc == true)
                errors.Add($"{who}ewc_lambda > 0 with {what} is not supported (the Fisher estimate and the penalty are over whole per-rank gradients)");
        }
        if (p.Zero is < 0 or > 3) errors.Add($"parallel.zero must be 0, 1, 2 or 3 (got {p.Zero})");
        if (p.Zero == 2 && p.Pp > 1) errors.Add("parallel.zero = 2 is not supported with pipeline stages (pp > 1): use zero = 1, as Megatron does inside each data-parallel group, or zero = 3");
        if (p.Zero == 3 && needs?.Ewc == true)
            errors.Add($"{who}ewc_lambda > 0 cannot be combined with parallel.zero = 3 (the Fisher estimate needs each rank's whole gradients): use zero = 1 or 2");
        if (p.Zero == 3 && needs?.MergesLora == true)
            errors.Add($"{who}lora is not supported with parallel.zero = 3 in recipes yet (the merge writes the sharded base): use zero = 1 or 2 (engine train supports LoRA at ZeRO-3)");
        if (!(p.BucketMb > 0) || double.IsInfinity(p.BucketMb)) errors.Add($"parallel.bucket_mb must be positive (got {p.BucketMb})");
        if (p.MicroBatches < 0) errors.Add($"parallel.micro_batches must be >= 0 (got {p.MicroBatches}; 0 = train.grad_accum)");
        else if (gradAccum is int accum && p.MicroBatches > 0 && accum != 1 && accum != p.MicroBatches)
            errors.Add($"{who}parallel.micro_batches = {p.MicroBatches} and grad_accum = {accum} both set the micro-batches each replica runs per step: set one of them");
        if (p.Schedule is not ("1f1b" or "gpipe" or "interleaved")) errors.Add($"parallel.schedule must be \"1f1b\", \"gpipe\" or \"interleaved\" (got \"{p.Schedule}\")");
        if (p.Schedule == "interleaved")
        {
            if (p.VirtualStages < 2) errors.Add($"parallel.schedule = \"interleaved\" needs parallel.virtual_stages >= 2 model chunks per stage (got {p.VirtualStages})");
            if (p.Pp < 2) errors.Add($"parallel.schedule = \"interleaved\" needs parallel.pp >= 2 (got {p.Pp})");
            if (p.Layers.Length > 0) errors.Add("parallel.layers splits whole stages: leave it empty with the interleaved schedule (each stage's chunks are balanced)");
            if (p.Zero >= 2) errors.Add($"parallel.zero = {p.Zero} with the interleaved schedule is not supported: use zero = 0 or 1");
            int micro = gradAccum is int ga ? MicroBatches(ga) : p.MicroBatches;
            if (micro > 0 && p.Pp >= 2 && micro % p.Pp != 0)
                errors.Add($"the interleaved schedule runs micro-batches in groups of pp = {p.Pp}: {(p.MicroBatches > 0 ? "parallel.micro_batches" : "grad_accum")} = {micro} must be a multiple of it (Megatron's rule)");
        }
        else if (p.VirtualStages > 1) errors.Add($"parallel.virtual_stages = {p.VirtualStages} needs parallel.schedule = \"interleaved\"");
        if (p.Layers.Length > 0 && p.Layers.Length != p.Pp) errors.Add($"parallel.layers names {p.Layers.Length} stages but parallel.pp = {p.Pp}");
        int chunks = p.Pp * Math.Max(1, p.VirtualStages);
        if (modelLayers is int n && p.Pp >= 1 && (p.Layers.Length == 0 ? n < chunks : p.Layers.Any(l => l < 1) || p.Layers.Sum() != n))
            errors.Add(p.Layers.Length > 0 ? $"parallel.layers [{string.Join(", ", p.Layers)}] must give every stage at least one layer and sum to the model's {n}"
                : p.VirtualStages > 1 ? $"parallel.pp = {p.Pp} × virtual_stages = {p.VirtualStages} needs at least {chunks} layers, the model has {n}"
                : $"parallel.pp = {p.Pp} needs at least {p.Pp} layers, the model has {n}");
        if (!RecomputeModes.Contains(Recompute)) errors.Add($"model.recompute must be \"none\", \"full\" or \"selective\" (got \"{Recompute}\")");
        else if (LegacyCheckpointFlag && Recompute != "full")
            errors.Add($"model.checkpoint_activations = true (full recompute) contradicts model.recompute = \"{Recompute}\": set model.recompute alone");
        if (needs?.Lora is { Dropout: > 0 } lora && p.Pp > 1)
            errors.Add($"{who}lora.dropout = {lora.Dropout} with pipeline stages (parallel.pp = {p.Pp}): each stage would draw its own dropout masks, not the whole model's; use dropout = 0 or pp = 1");
        if (needs?.Sampling == true && p.Zero == 3)
            errors.Add($"{who}parallel.zero = 3: PPO's rollouts decode token by token on each rank for its own share of the prompts, and ZeRO-3 would make every decoding step a collective the other ranks may not join; use zero = 1 or 2 for the alignment");
        if (needs?.Sampling == true && p.Pp > 1)
            errors.Add($"{who}parallel.pp = {p.Pp}: PPO samples its rollouts token by token with a KV cache through the whole actor, which pipeline stages split (every new token would cross all stages); " +
                "run the alignment with parallel.pp = 1 (PPO is data-parallel over the ranks), or set alignment.ppo.steps = 0 to align with the reward model and DPO only");
        if (errors.Count > 0) throw new ConfigException(string.Join("; ", errors));
    }

    /// <summary>Data-parallel replicas of a job of <paramref name="worldSize"/> ranks (ranks ÷ (pp × cp × tp)).</summary>
    public int Replicas(int worldSize) => Math.Max(1, worldSize / (Math.Max(1, Parallel.Pp) * Math.Max(1, Parallel.Cp) * Math.Max(1, Parallel.Tp)));

    /// <summary>The one micro-batch rule: micro-batches each replica runs per optimizer step, at every pp —
    /// parallel.micro_batches when set, else the run's grad_accum (<see cref="Validate"/> refuses the two disagreeing).</summary>
    public int MicroBatches(int gradAccum) => Parallel.MicroBatches > 0 ? Parallel.MicroBatches : gradAccum;

    /// <summary>Sequences per optimizer step over the job: replicas × micro-batches × rows per micro-batch.</summary>
    public long GlobalBatch(int worldSize, int microBatchRows, int gradAccum) => (long)Replicas(worldSize) * MicroBatches(gradAccum) * microBatchRows;

    /// <summary>The run as the memory model and the planner see it.</summary>
    public PlanLayout Plan(int worldSize, int microBatchRows, int gradAccum, int seqLen) =>
        new(Replicas(worldSize), Parallel.Pp, Parallel.Zero, microBatchRows, MicroBatches(gradAccum), seqLen, Mode, Parallel.Schedule, Parallel.BucketMb)
        {
            Tp = Math.Max(1, Parallel.Tp),
            Cp = Math.Max(1, Parallel.Cp),
            VirtualStages = Math.Max(1, Parallel.VirtualStages),
            SequenceParallel = Parallel.SequenceParallel,
        };

    /// <summary>parallel.layers, or null for the balanced split.</summary>
    public IReadOnlyList<int>? LayerSplit => Parallel.Layers.Length > 0 ? Parallel.Layers : null;
}
