using System.Text.Json;
using System.Text.Json.Nodes;

namespace Engine.Data;

/// <summary>
/// A tokenizer as the files Hugging Face keeps beside a model's weights — tokenizer.json (the tokenizer itself) and
/// tokenizer_config.json (special-token names, the chat template) — and the rule that a model directory's tokenizer
/// is the one used with it: <see cref="ForModel"/> takes the directory's by default and refuses, by name, one given by
/// hand whose vocabulary differs (unless forced).
/// </summary>
public static class TokenizerFiles
{
    public const string JsonFile = "tokenizer.json", ConfigFile = "tokenizer_config.json";

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>"byte", a tokenizer.json, or a model directory holding one. The engine's byte tokenizer written as
    /// tokenizer.json loads back as <see cref="ByteTokenizer"/>.</summary>
    public static ITokenizer Load(string spec)
    {
        ArgumentException.ThrowIfNullOrEmpty(spec);
        if (spec == "byte") return new ByteTokenizer();
        if (Directory.Exists(spec))
            return FromDirectory(spec) ?? throw new FileNotFoundException($"{spec} holds no {JsonFile}", Path.Combine(spec, JsonFile));
        if (!File.Exists(spec)) throw new FileNotFoundException($"neither \"byte\" nor an existing tokenizer.json or model directory: {spec}", spec);
        return Recognize(WithConfig(BpeTokenizer.Load(spec), Path.Combine(Path.GetDirectoryName(Path.GetFullPath(spec))!, ConfigFile)));
    }

    /// <summary>Decoding options tokenizer_config.json sets (clean_up_tokenization_spaces), from the file when it exists.</summary>
    static BpeTokenizer WithConfig(BpeTokenizer t, string configPath)
    {
        if (!File.Exists(configPath)) return t;
        try
        {
            if (JsonNode.Parse(File.ReadAllText(configPath))?["clean_up_tokenization_spaces"] is JsonValue v && v.TryGetValue<bool>(out bool clean))
                t.CleanUpTokenizationSpaces = clean;
        }
        catch (JsonException e) { throw new InvalidDataException($"{configPath}: not valid JSON ({e.Message})", e); }
        return t;
    }

    /// <summary>A tokenizer from tokenizer.json text (<paramref name="source"/> names it in messages).</summary>
    public static ITokenizer Parse(string json, string source) => Recognize(BpeTokenizer.FromJson(json, source));

    static ITokenizer Recognize(BpeTokenizer t) => ByteTokenizer.Is(t) ? new ByteTokenizer() : t;

    /// <summary>The tokenizer.json of a model directory, or null when it has none.</summary>
    public static ITokenizer? FromDirectory(string directory)
    {
        string path = Path.Combine(directory, JsonFile);
        return File.Exists(path) ? Recognize(WithConfig(BpeTokenizer.Load(path), Path.Combine(directory, ConfigFile))) : null;
    }

    /// <summary>tokenizer.json text of a tokenizer (what <see cref="Parse"/> reads back to the same ids).</summary>
    public static string ToJson(ITokenizer tokenizer) => tokenizer switch
    {
        ByteTokenizer => ByteTokenizer.ToTokenizerJson(),
        BpeTokenizer bpe => bpe.ToJson(),
        _ => throw new NotSupportedException($"{tokenizer.GetType().Name} has no tokenizer.json form"),
    };

    /// <summary>
    /// The special ids a model trained with this tokenizer uses: BOS (null when the tokenizer has none, as for
    /// GPT-2/Qwen-style vocabularies the engine trains), EOS, and PAD — EOS, which is what the engine pads with.
    /// </summary>
    public static (int? Bos, int Eos, int? Pad) SpecialIds(ITokenizer tokenizer) =>
        (tokenizer.BosId >= 0 ? tokenizer.BosId : null, tokenizer.EosId, tokenizer.EosId);

    /// <summary>
    /// tokenizer_config.json for a tokenizer: <paramref name="carried"/> (the file a Hugging Face directory came
    /// with) is kept as it is; otherwise one is written with the special-token names, add_bos/add_eos false (the
    /// engine adds no special tokens when it encodes), clean_up_tokenization_spaces false and model_max_length. A
    /// chat template, when given, is set in either (the model was tuned on that format).
    /// </summary>
    public static string ConfigJson(ITokenizer tokenizer, string? chatTemplate, int modelMaxLength, string? carried = null)
    {
        JsonObject o;
        if (carried != null)
        {
            try { o = JsonNode.Parse(carried) as JsonObject ?? throw new JsonException("not an object"); }
            catch (JsonException e) { throw new InvalidDataException($"{ConfigFile}: not a JSON object ({e.Message})", e); }
            if (chatTemplate == null) return carried;
        }
        else
        {
            var (bos, eos, pad) = SpecialIds(tokenizer);
            string? Name(int? id) => id is { } i ? tokenizer.IdToToken(i) : null;
            var specials = tokenizer is BpeTokenizer bpe
                ? bpe.AddedTokens.Where(t => t.Special && t.Id != eos && t.Id != bos).Select(t => t.Content).ToList()
                : [];
            o = new JsonObject
            {
                ["tokenizer_class"] = "PreTrainedTokenizerFast",
                ["bos_token"] = Name(bos),
                ["eos_token"] = Name(eos),
                ["pad_token"] = Name(pad),
                ["unk_token"] = tokenizer is BpeTokenizer { UnkId: >= 0 } b ? b.IdToToken(b.UnkId) : null,
                ["additional_special_tokens"] = new JsonArray(specials.Select(s => (JsonNode)s).ToArray()),
                ["add_bos_token"] = false,
                ["add_eos_token"] = false,
                ["clean_up_tokenization_spaces"] = false,
                ["model_max_length"] = modelMaxLength,
            };
        }
        if (chatTemplate != null) o["chat_template"] = chatTemplate;
        return o.ToJsonString(Indented);
    }

    /// <summary>
    /// How <paramref name="given"/> differs from <paramref name="expected"/> (a model's own tokenizer): the vocabulary
    /// size, the first id whose token differs, EOS/BOS, or the merges; null when they encode and decode alike.
    /// </summary>
    public static string? Difference(ITokenizer expected, ITokenizer given)
    {
        if (expected.VocabSize != given.VocabSize) return $"{given.VocabSize} ids against the model's {expected.VocabSize}";
        for (int id = 0; id < expected.VocabSize; id++)
        {
            string? a = expected.IdToToken(id), b = given.IdToToken(id);
            if (!string.Equals(a, b, StringComparison.Ordinal))
                return $"id {id} is {Show(b)}, the model's is {Show(a)}";
        }
        if (expected.EosId != given.EosId) return $"EOS is id {given.EosId}, the model's is {expected.EosId}";
        if (expected.BosId != given.BosId) return $"BOS is id {given.BosId}, the model's is {expected.BosId}";
        int Merges(ITokenizer t) => t is BpeTokenizer b ? b.MergeCount : 0;
        if (Merges(expected) != Merges(given)) return $"{Merges(given)} merges against the model's {Merges(expected)}";
        if (expected is BpeTokenizer x && given is BpeTokenizer y)
        {
            int r = 0;
            foreach (var (m1, m2) in x.Merges.Zip(y.Merges))
            {
                if (m1 != m2) return $"merge {r} is '{m2.Left} {m2.Right}', the model's is '{m1.Left} {m1.Right}'";
                r++;
            }
        }
        return null;
    }

    static string Show(string? token) => token == null ? "unused" : JsonSerializer.Serialize(token, Indented);

    /// <summary>
    /// The tokenizer to use with a model directory: its own tokenizer.json when <paramref name="given"/> is null; a
    /// given one ("byte", a tokenizer.json or a directory) only when its vocabulary is the model's — or the directory has
    /// none, or <paramref name="force"/> — otherwise refused naming both and the first difference.
    /// </summary>
    public static ITokenizer ForModel(string modelDirectory, string? given, bool force, string option = "--tokenizer", string forceOption = "--force-tokenizer")
    {
        var own = FromDirectory(modelDirectory);
        if (given == null)
            return own ?? throw new FileNotFoundException(
                $"model directory {modelDirectory} has no {JsonFile} (saved before models carried their tokenizer): give {option} (a tokenizer.json, or byte)",
                Path.Combine(modelDirectory, JsonFile));
        ITokenizer tok;
        try { tok = Load(given); }
        catch (FileNotFoundException e) { throw new FileNotFoundException($"{option}: {e.Message}", e.FileName, e); }
        if (own != null && !force && Difference(own, tok) is { } why)
            throw new ArgumentException($"{option} {given} is not the model's tokenizer ({Path.Combine(modelDirectory, JsonFile)}): {why}; " +
                $"leave {option} out to use the model's, or add {forceOption} to use this one anyway");
        return tok;
    }
}
