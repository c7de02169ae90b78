using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model.IO;

namespace Engine.Model.Export;

/// <summary>
/// `engine export --format safetensors`: a directory transformers, vLLM or TGI load as a LlamaForCausalLM — BF16 or
/// F16 (or F32) shards with their index, config.json, generation_config.json, the tokenizer files. Unlike a
/// checkpoint it carries nothing transformers would misread: a NormHead model gets its row-normalised head baked into
/// lm_head.weight and no "norm_head" flag; an engine-made model's bos/eos ids come from its tokenizer.
/// A Baichuan model is written in Baichuan's layout instead (BaichuanForCausalLM: W_pack, model_max_length, auto_map
/// to Baichuan 2's modeling code — its NormHead normalises the head again, which leaves the baked rows as they are —
/// so transformers with trust_remote_code, vLLM and convert_hf_to_gguf read it as a Baichuan 2 checkpoint).
/// </summary>
public static class HfExport
{
    /// <summary>
    /// Writes the serving directory. tokenizerJson (a tokenizer.json path, or null) is copied beside the weights;
    /// vocab (its GGUF reading, or the engine's byte tokenizer) supplies special-token ids and names.
    /// </summary>
    public static void Write(LlamaModel model, string outDir, string dtype, long maxShardBytes, string? tokenizerJson, GgufVocab? vocab)
    {
        if (dtype is not ("BF16" or "F16" or "F32")) throw new ArgumentException($"safetensors export type must be bf16, f16 or f32 (got {dtype})");
        var c = model.Config;
        var cfg = c.Family == ModelFamily.Baichuan ? c : c with { NormHead = false };   // Baichuan's code always normalises its head
        if (vocab != null && c.Hf == null)
            cfg = cfg with { BosTokenId = vocab.BosId ?? cfg.BosTokenId, EosTokenId = vocab.EosId ?? cfg.EosTokenId };
        if (vocab != null && c.Hf?.TokenizerConfig == null)
            cfg = cfg with { Hf = (cfg.Hf ?? new HfExtras()) with { TokenizerConfig = MinimalTokenizerConfig(vocab, cfg) } };
        if (c.Hf?.GenerationConfig == null)
            cfg = cfg with
            {
                Hf = (cfg.Hf ?? new HfExtras()) with
                {
                    GenerationConfig = new JsonObject { ["bos_token_id"] = cfg.BosTokenId, ["eos_token_id"] = cfg.EosTokenId, ["_from_model_config"] = true }
                        .ToJsonString(new JsonSerializerOptions { WriteIndented = true }),
                },
            };
        var tensors = model.Parameters.Select(p => new ModelIO.TensorSource(p.Name, p.Tensor.Shape.Select(d => (long)d).ToArray(), () =>
        {
            if (p.Name != "lm_head.weight" || !c.NormHead) return p.Tensor.ToArray();
            using var scope = new TensorScope();
            using var ng = Grad.NoGrad();
            return F.RowNormalize(p.Tensor).ToArray();
        })).ToList();
        ModelIO.Save(cfg, tensors, outDir, dtype, null, maxShardBytes);
        string tokOut = Path.Combine(outDir, "tokenizer.json");
        if (tokenizerJson != null)
        {
            if (!Path.GetFullPath(tokenizerJson).Equals(Path.GetFullPath(tokOut), StringComparison.Ordinal)) File.Copy(tokenizerJson, tokOut, overwrite: true);
        }
        else if (vocab != null && vocab.Merges.Count == 0 && vocab.Tokens.Count == 258 && vocab.EosId == 256)
            File.WriteAllText(tokOut, ByteTokenizerJson());
    }

    static string MinimalTokenizerConfig(GgufVocab v, LlamaConfig c)
    {
        var o = new JsonObject
        {
            ["tokenizer_class"] = "PreTrainedTokenizerFast",
            ["model_max_length"] = c.MaxPositionEmbeddings,
            ["clean_up_tokenization_spaces"] = false,
        };
        if (v.BosId is { } b) o["bos_token"] = v.Tokens[b];
        if (v.EosId is { } e) o["eos_token"] = v.Tokens[e];
        if (v.ChatTemplate != null) o["chat_template"] = v.ChatTemplate;
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>
    /// The engine's byte tokenizer as a Hugging Face tokenizer.json: a byte-level BPE with the 256 byte tokens at ids
    /// 0–255 and no merges (so every byte is its own token, as in the engine), EOS 256 and BOS 257 as special tokens.
    /// </summary>
    public static string ByteTokenizerJson()
    {
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[GgufVocab.ByteChar((byte)b).ToString()] = b;
        JsonObject Added(int id, string content) => new()
        {
            ["id"] = id,
            ["content"] = content,
            ["single_word"] = false,
            ["lstrip"] = false,
            ["rstrip"] = false,
            ["normalized"] = false,
            ["special"] = true,
        };
        var o = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(Added(256, "<|endoftext|>"), Added(257, "<|startoftext|>")),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false },
            ["post_processor"] = null,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = null,
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = false,
                ["byte_fallback"] = false,
                ["ignore_merges"] = false,
                ["vocab"] = vocab,
                ["merges"] = new JsonArray(),
            },
        };
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
    }
}
