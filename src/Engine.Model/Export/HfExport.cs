using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model.IO;

namespace Engine.Model.Export;

/// <summary>
/// `engine export --format safetensors`: a directory transformers, vLLM or TGI load as a LlamaForCausalLM — BF16 or
/// F16 (or F32) shards with their index, config.json, and the model's tokenizer files, special ids and name
/// (<see cref="ModelArtifacts"/>, written by <see cref="ModelIO.Save"/> as for every saved directory). Unlike a
/// checkpoint it carries nothing transformers would misread: a NormHead model gets its row-normalised head baked into
/// lm_head.weight and no "norm_head" flag. A Baichuan model is written in Baichuan's layout instead
/// (BaichuanForCausalLM: W_pack, model_max_length, auto_map to Baichuan 2's modeling code — its NormHead normalises the
/// head again, which leaves the baked rows as they are — so transformers with trust_remote_code, vLLM and
/// convert_hf_to_gguf read it as a Baichuan 2 checkpoint).
/// </summary>
public static class HfExport
{
    /// <summary>Writes the serving directory.</summary>
    public static void Write(LlamaModel model, string outDir, string dtype, long maxShardBytes)
    {
        if (dtype is not ("BF16" or "F16" or "F32")) throw new ArgumentException($"safetensors export type must be bf16, f16 or f32 (got {dtype})");
        var c = model.Config;
        var cfg = c.Family == ModelFamily.Baichuan ? c : c with { NormHead = false };   // Baichuan's code always normalises its head
        var tensors = model.Parameters.Select(p => new ModelIO.TensorSource(p.Name, p.Tensor.Shape.Select(d => (long)d).ToArray(), () =>
        {
            if (p.Name != "lm_head.weight" || !c.NormHead) return p.Tensor.ToArray();
            using var scope = new TensorScope();
            using var ng = Grad.NoGrad();
            return F.RowNormalize(p.Tensor).ToArray();
        })).ToList();
        ModelIO.Save(cfg, tensors, outDir, dtype, null, maxShardBytes);
    }
}
