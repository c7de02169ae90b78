using Engine.Model;
using Engine.Parallel;

namespace Engine.Training.Parallel;

/// <summary>
/// Llama's tensor-parallel plan (TorchTitan's parallelize_llama, Megatron-LM's layers), as data over the Hugging Face
/// parameter and module names the model declares:
/// <list type="bullet">
/// <item>column-parallel (rows of the [out, in] weight split, Shard(0)): q_proj, k_proj, v_proj, gate_proj, up_proj —
/// whole attention heads per rank; key/value heads split the same way, or, when there are fewer of them than tensor
/// ranks, one head per group of tp ÷ kv ranks (the head the rank's query heads read), its gradient summed over that
/// group;</item>
/// <item>row-parallel (columns split, Shard(1)): o_proj, down_proj;</item>
/// <item>vocabulary-parallel (rows split): embed_tokens and lm_head (the loss parallel over the vocabulary);</item>
/// <item>replicated: the RMSNorm weights — under sequence parallelism each rank applies them to its own tokens, so
/// their gradients are summed over the tensor group (Megatron's sequence-parallel norm all-reduce).</item>
/// </list>
/// Module boundaries: every self_attn and mlp is a column-in/row-out block, lm_head keeps its output split by
/// vocabulary, embed_tokens sums its vocabulary shards' rows.
/// </summary>
public static class LlamaParallelPlan
{
    public static TensorParallelRules Rules(LlamaConfig config, int tp, bool sequenceParallel) => new(
        (name, whole) =>
        {
            if (name.EndsWith(".q_proj.weight", StringComparison.Ordinal) || name.EndsWith(".gate_proj.weight", StringComparison.Ordinal)
                || name.EndsWith(".up_proj.weight", StringComparison.Ordinal))
                return new TensorParameter(Placement.Shard(0, tp));
            if (name.EndsWith(".k_proj.weight", StringComparison.Ordinal) || name.EndsWith(".v_proj.weight", StringComparison.Ordinal))
                return config.NumKvHeads >= tp ? new TensorParameter(Placement.Shard(0, tp))
                    : new TensorParameter(Placement.Shard(0, config.NumKvHeads), PartialGradient: true);
            if (name.EndsWith(".o_proj.weight", StringComparison.Ordinal) || name.EndsWith(".down_proj.weight", StringComparison.Ordinal))
                return new TensorParameter(Placement.Shard(1, tp));
            if (name is "model.embed_tokens.weight" or "lm_head.weight") return new TensorParameter(Placement.Shard(0, tp));
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) return new TensorParameter(Placement.Replicate, PartialGradient: sequenceParallel);
            throw new InvalidOperationException($"the Llama tensor-parallel plan has no rule for parameter {name}");
        },
        module => module.EndsWith(".self_attn", StringComparison.Ordinal) || module.EndsWith(".mlp", StringComparison.Ordinal) ? ModuleStyle.Block
            : module == "lm_head" ? ModuleStyle.Head
            : module == "model.embed_tokens" ? ModuleStyle.Embedding
            : ModuleStyle.None);
}
