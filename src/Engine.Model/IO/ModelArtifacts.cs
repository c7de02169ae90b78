using System.Text.Json;
using System.Text.Json.Nodes;

namespace Engine.Model.IO;

/// <summary>
/// What makes a saved model directory self-contained beside config.json and the weights, as a Hugging Face
/// directory is: tokenizer.json, tokenizer_config.json (special-token names; the chat template of a model tuned on a
/// chat format), generation_config.json and config.json with the tokenizer's BOS/EOS/PAD ids, and the run's name
/// (config.json _name_or_path, GGUF general.name).
/// <para>A run attaches them to its model once (<see cref="LlamaModel.Attach"/>); they ride in the model's config
/// (<see cref="LlamaConfig.Hf"/>, as a Hub directory's side files do from load to save) so that every save — final
/// weights, checkpoints, recipe stages, alignment policies, merged LoRA exports, `engine export` — writes them through
/// <see cref="ModelIO.Save"/>, the one writer, and a model loaded from such a directory carries them on.</para>
/// </summary>
public sealed record ModelArtifacts
{
    public required string TokenizerJson { get; init; }
    public required string TokenizerConfig { get; init; }
    /// <summary>generation_config.json; null: written from the special ids (<see cref="GenerationConfigJson"/>).</summary>
    public string? GenerationConfig { get; init; }
    /// <summary>chat_template.jinja of a Hub directory, kept only while its tokenizer_config.json is kept.</summary>
    public string? ChatTemplateJinja { get; init; }
    public int? BosTokenId { get; init; }
    public required int EosTokenId { get; init; }
    public int? PadTokenId { get; init; }
    /// <summary>The run's name; null keeps the config's.</summary>
    public string? Name { get; init; }

    /// <summary>The config carrying these artifacts (architecture unchanged).</summary>
    public LlamaConfig ApplyTo(LlamaConfig c) => c with
    {
        BosTokenId = BosTokenId,
        EosTokenId = EosTokenId,
        PadTokenId = PadTokenId,
        NameOrPath = Name ?? c.NameOrPath,
        Hf = (c.Hf ?? new HfExtras()) with
        {
            TokenizerJson = TokenizerJson,
            TokenizerConfig = TokenizerConfig,
            GenerationConfig = GenerationConfig,
            ChatTemplateJinja = ChatTemplateJinja,
        },
    };

    /// <summary>generation_config.json from a config's special ids (what transformers derives from config.json).</summary>
    public static string GenerationConfigJson(LlamaConfig c) => new JsonObject
    {
        ["bos_token_id"] = c.BosTokenId,
        ["eos_token_id"] = c.EosTokenId,
        ["pad_token_id"] = c.PadTokenId,
    }.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
}
