using Engine.Data;
using Engine.Model;
using Engine.Model.IO;
using Engine.Training.Config;

namespace Engine.Training;

/// <summary>
/// Which tokenizer, chat format and name a run's model carries into every directory it is saved to (see
/// <see cref="ModelArtifacts"/>; <see cref="ModelIO.Save"/> writes them). Every run attaches them once, where its model
/// is built: `engine train` (fresh, init_from, resumed), each recipe stage, the alignment policies.
/// </summary>
public static class RunArtifacts
{
    /// <summary>
    /// Attaches <paramref name="tokenizer"/> (tokenizer.json, tokenizer_config.json with <paramref name="chat"/>'s
    /// template when the run trains on that chat format, the special ids) and the run's name to the model. A tokenizer
    /// the model already carries — a Hub directory's, an earlier stage's — is kept, files and ids as they were, when it
    /// is the same tokenizer; a chat template it carries stays unless a new one is given. When <paramref name="refuseAs"/>
    /// is set, a carried tokenizer that differs (or, with <paramref name="expands"/>, is not a prefix of the new one:
    /// vocabulary expansion) is refused: the message starts with <paramref name="refuseAs"/> and names the first difference.
    /// </summary>
    public static void Attach(LlamaModel model, ITokenizer tokenizer, string? name, ChatTemplate? chat = null, string? refuseAs = null, bool expands = false)
    {
        var c = model.Config;
        var hf = c.Hf;
        var (same, problem) = hf?.TokenizerJson is { } carried ? Compare(carried, tokenizer, expands) : (false, null);
        if (problem != null && refuseAs != null) throw new ConfigException($"{refuseAs}: {problem}");
        // the side files a directory came with stay while its tokenizer does (or it had no tokenizer.json to say otherwise)
        bool keep = same || hf?.TokenizerJson == null;
        string? template = chat?.ToJinja() ?? (keep ? null : hf?.ChatTemplate);
        var (bos, eos, pad) = same ? (c.BosTokenId, c.EosTokenId, c.PadTokenId) : TokenizerFiles.SpecialIds(tokenizer);
        model.Attach(new ModelArtifacts
        {
            TokenizerJson = same ? hf!.TokenizerJson! : TokenizerFiles.ToJson(tokenizer),
            TokenizerConfig = TokenizerFiles.ConfigJson(tokenizer, template, c.MaxPositionEmbeddings, keep ? hf?.TokenizerConfig : null),
            GenerationConfig = keep ? hf?.GenerationConfig : null,
            ChatTemplateJinja = keep && chat == null ? hf?.ChatTemplateJinja : null,
            BosTokenId = bos,
            EosTokenId = eos,
            PadTokenId = pad,
            Name = name,
        });
    }

    /// <summary>Whether the carried tokenizer.json is <paramref name="tokenizer"/> (Same), or else what is wrong with
    /// using it on that model (null for a vocabulary expansion when <paramref name="expands"/>).</summary>
    static (bool Same, string? Problem) Compare(string carriedJson, ITokenizer tokenizer, bool expands)
    {
        if (carriedJson == TokenizerFiles.ToJson(tokenizer)) return (true, null);
        ITokenizer carried;
        try { carried = TokenizerFiles.Parse(carriedJson, "the model's tokenizer.json"); }
        catch (Exception e) when (e is InvalidDataException or NotSupportedException) { return (false, $"its tokenizer.json cannot be read ({e.Message})"); }
        if (expands && tokenizer.VocabSize > carried.VocabSize) return (false, Prefix(carried, tokenizer));
        var why = TokenizerFiles.Difference(carried, tokenizer);
        return (why == null, why);
    }

    /// <summary>The model under another name (an alignment policy made from a tuned stage), its other artifacts unchanged.</summary>
    public static void Rename(LlamaModel model, string name)
    {
        if (model.Config.Hf?.TokenizerJson is not { } json) { return; }
        var c = model.Config;
        model.Attach(new ModelArtifacts
        {
            TokenizerJson = json,
            TokenizerConfig = c.Hf.TokenizerConfig ?? "{}",
            GenerationConfig = c.Hf.GenerationConfig,
            ChatTemplateJinja = c.Hf.ChatTemplateJinja,
            BosTokenId = c.BosTokenId,
            EosTokenId = c.EosTokenId,
            PadTokenId = c.PadTokenId,
            Name = name,
        });
    }

    /// <summary>How <paramref name="grown"/> fails to extend <paramref name="baseTok"/> (its first ids the base's), or null.</summary>
    static string? Prefix(ITokenizer baseTok, ITokenizer grown)
    {
        for (int id = 0; id < baseTok.VocabSize; id++)
            if (!string.Equals(baseTok.IdToToken(id), grown.IdToToken(id), StringComparison.Ordinal))
                return $"id {id} is '{grown.IdToToken(id)}' in the expanded tokenizer but '{baseTok.IdToToken(id)}' in the model's";
        return baseTok.EosId == grown.EosId ? null : $"EOS is id {grown.EosId} in the expanded tokenizer, {baseTok.EosId} in the model's";
    }

    /// <summary>
    /// `engine train`'s tokenizer: data.tokenizer is "byte", a tokenizer.json, or "model" — the tokenizer of
    /// model.init_from's directory (for fine-tuning a model with its own tokenizer).
    /// </summary>
    public static ITokenizer TrainTokenizer(TrainConfig cfg)
    {
        if (TrainTokenizerFile(cfg) is not { } path) return new ByteTokenizer();
        if (cfg.Data.Tokenizer == "model")
        {
            string dir = Path.GetDirectoryName(path)!;
            return TokenizerFiles.FromDirectory(dir) ?? throw new ConfigException($"data.tokenizer = \"model\": model.init_from {dir} has no {TokenizerFiles.JsonFile}");
        }
        if (!File.Exists(path)) throw new ConfigException($"data.tokenizer: neither \"byte\", \"model\" nor an existing tokenizer.json: {path}");
        return TokenizerFiles.Load(path);
    }

    /// <summary>The tokenizer.json a train config reads (init_from's for "model"; null for bytes): what
    /// <see cref="TrainTokenizer"/> loads and a resume hashes.</summary>
    public static string? TrainTokenizerFile(TrainConfig cfg) => cfg.Data.Tokenizer switch
    {
        "byte" => null,
        "model" => Path.Combine(cfg.Resolve(cfg.Model.InitFrom ?? throw new ConfigException("data.tokenizer = \"model\" takes model.init_from's tokenizer, but model.init_from is not set")), TokenizerFiles.JsonFile),
        var spec => cfg.Resolve(spec),
    };

    /// <summary>A run's name: its output folder's name (runs/tiny_shakespeare → tiny_shakespeare); a recipe stage is
    /// "RUN-STAGE", an alignment policy "RUN-ppo".</summary>
    public static string RunName(string outputDir) => Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(outputDir)));
}
