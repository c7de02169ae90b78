using Engine.Core;

namespace Engine.Model;

/// <summary>
/// Something that adds to the output of the model's Linear layers (LoRA adapters, <see cref="Lora.LoraAdapters"/>).
/// <see cref="LlamaModel"/> calls it wherever it applies a weight, by the weight's Hugging Face name.
/// </summary>
public interface ILinearAdapter
{
    /// <summary>Returns y = x Wᵀ of the Linear layer whose weight is named <paramref name="weight"/> (e.g.
    /// "model.layers.0.self_attn.q_proj.weight", "lm_head.weight") unchanged, or y plus the adapter's term.</summary>
    Tensor Apply(string weight, Tensor x, Tensor y);

    /// <summary>Whether <see cref="Apply"/> adds a term for <paramref name="weight"/> (a projection the model would
    /// otherwise fuse with its neighbours into one GEMM runs on its own when targeted). Conservative default: yes.</summary>
    bool Targets(string weight) => true;

    /// <summary>The adapter parameters read inside transformer block <paramref name="layer"/> (activation checkpointing
    /// names them so data-parallel buckets know when their gradients are complete).</summary>
    IEnumerable<Tensor> LayerParameters(int layer);
}
