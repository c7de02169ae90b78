using System.Text.Json;
using System.Text.Json.Nodes;

namespace Engine.Model.Export;

/// <summary>llama.cpp token types (<c>enum llama_token_type</c> / gguf-py <c>TokenType</c>).</summary>
public static class GgufTokenType
{
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;
}

/// <summary>
/// A tokenizer as llama.cpp reads it from GGUF metadata (tokenizer.ggml.*): for byte-level BPE the "gpt2" model —
/// tokens in id order as byte-level strings, their types, merges as "a b" ranked by position, special ids — and a
/// pre-tokenizer name from llama.cpp's list. Built from a Hugging Face tokenizer.json the way convert_hf_to_gguf.py
/// does (base vocabulary NORMAL, special added tokens CONTROL, other added tokens USER_DEFINED, ids the vocabulary
/// does not use and padding up to the model's vocab_size "[PAD{id}]" UNUSED).
/// </summary>
public sealed record GgufVocab
{
    public required string Model { get; init; }
    public required string Pre { get; init; }
    public required IReadOnlyList<string> Tokens { get; init; }
    public required IReadOnlyList<int> TokenTypes { get; init; }
    public required IReadOnlyList<string> Merges { get; init; }
    public int? BosId { get; init; }
    public int? EosId { get; init; }
    public int? UnkId { get; init; }
    public int? PadId { get; init; }
    public bool AddBos { get; init; }
    public bool AddEos { get; init; }
    public string? ChatTemplate { get; init; }
    /// <summary>Per-token scores of a "llama" (SentencePiece) vocabulary, the merge priorities llama.cpp's SPM tokenizer
    /// uses; null for "gpt2".</summary>
    public IReadOnlyList<float>? Scores { get; init; }

    /// <summary>"llama" vocabulary: a space is put before the text (SentencePiece's add_dummy_prefix, a Prepend("▁") normalizer).</summary>
    public bool? AddSpacePrefix { get; init; }

    /// <summary>Why the pre-tokenizer name was chosen (shown by the export command).</summary>
    public string PreNote { get; init; } = "";

    static readonly string[] EosNames = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "<|eot_id|>"];
    static readonly string[] BosNames = ["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"];

    /// <summary>
    /// Pre-tokenizer regexes of tokenizer.json files that llama.cpp knows by name (Split, then ByteLevel without
    /// regex): as Hugging Face files spell them, and as llama.cpp's llama-vocab.cpp spells them (the contractions with
    /// explicit case classes, the form the engine trains with: <c>BpeTokenizer.DefaultPattern</c> is the second qwen2).
    /// </summary>
    static readonly (string Name, string Regex)[] KnownSplits =
    [
        ("llama-bpe", @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
        ("llama-bpe", @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
        ("qwen2", @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
        ("qwen2", @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    ];

    /// <summary>GPT-2's byte → printable-character map (bytes_to_unicode), as byte-level BPE vocabularies spell bytes.</summary>
    public static char ByteChar(byte b)
    {
        if (b is >= (byte)'!' and <= (byte)'~' or >= 0xA1 and <= 0xAC or >= 0xAE) return (char)b;
        int n = 0;
        for (int x = 0; x < b; x++)
            if (!(x is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE)) n++;
        return (char)(256 + n);
    }

    /// <summary>
    /// The engine's byte-level tokenizer (ids 0–255 = bytes, 256 = EOS, 257 = BOS) as a "gpt2" vocabulary without merges:
    /// llama.cpp then encodes text byte by byte, the same ids the engine produces.
    /// </summary>
    public static GgufVocab EngineBytes() => new()
    {
        Model = "gpt2",
        Pre = "default",
        PreNote = "byte tokenizer: no merges, so any pre-tokenizer gives the engine's ids",
        Tokens = [.. Enumerable.Range(0, 256).Select(b => ByteChar((byte)b).ToString()), "<|endoftext|>", "<|startoftext|>"],
        TokenTypes = [.. Enumerable.Repeat(GgufTokenType.Normal, 256), GgufTokenType.Control, GgufTokenType.Control],
        Merges = [],
        EosId = 256,
        BosId = 257,
    };

    /// <summary>Pads the token list to n entries with "[PAD{id}]" UNUSED tokens (the model's vocab_size may exceed the tokenizer's).</summary>
    public GgufVocab PadTo(int n)
    {
        if (n < Tokens.Count) throw new ArgumentException($"the tokenizer has {Tokens.Count} tokens but the model's vocab_size is only {n}");
        if (n == Tokens.Count) return this;
        return this with
        {
            Tokens = [.. Tokens, .. Enumerable.Range(Tokens.Count, n - Tokens.Count).Select(i => $"[PAD{i}]")],
            TokenTypes = [.. TokenTypes, .. Enumerable.Repeat(GgufTokenType.Unused, n - Tokens.Count)],
            Scores = Scores == null ? null : [.. Scores, .. Enumerable.Repeat(-1000f, n - Tokens.Count)],
        };
    }

    /// <summary>
    /// Reads a BPE tokenizer.json as convert_hf_to_gguf.py would: a byte-level one (ByteLevel pre-tokenizer or
    /// decoder) as the "gpt2" vocabulary; a SentencePiece-style one (byte_fallback, ▁ for spaces: Llama 2, Mistral) as
    /// the "llama" vocabulary, whose scores are the merge priorities (see <see cref="SentencePieceScores"/>).
    /// tokenizerConfig (tokenizer_config.json text) supplies bos/eos/pad names, add_bos_token/add_eos_token and the chat
    /// template; without it EOS/BOS are the first usual names found among the added tokens (as the engine's BPE loader
    /// picks them). A "gpt2" vocabulary without BOS gets BOS = EOS (not added: add_bos_token false), as Qwen's GGUF
    /// files have, instead of llama.cpp's default id 11.
    /// </summary>
    public static GgufVocab FromTokenizerJson(string path, string? tokenizerConfig = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer file not found: {path}", path);
        return FromTokenizerJsonText(File.ReadAllText(path), tokenizerConfig, path);
    }

    /// <summary>As <see cref="FromTokenizerJson"/>, from tokenizer.json text; <paramref name="path"/> names it in messages.</summary>
    public static GgufVocab FromTokenizerJsonText(string json, string? tokenizerConfig, string path)
    {
        JsonObject root;
        try { root = JsonNode.Parse(json) as JsonObject ?? throw new JsonException("not an object"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})"); }
        InvalidDataException Bad(string why) => new($"{path}: {why}");
        try
        {
            var model = root["model"] as JsonObject ?? throw Bad("no 'model' object (not a tokenizer.json)");
            string type = model["type"]?.GetValue<string>() ?? "BPE";
            if (type != "BPE") throw new NotSupportedException($"{path}: GGUF export writes BPE tokenizers; this one is {type}");
            bool spm = model["byte_fallback"]?.GetValue<bool>() == true || Mentions(root["pre_tokenizer"], "Metaspace") || Mentions(root["decoder"], "Metaspace")
                || ReplacesSpace(root["normalizer"]);
            if (!spm && !Mentions(root["pre_tokenizer"], "ByteLevel") && !Mentions(root["decoder"], "ByteLevel"))
                throw new NotSupportedException($"{path}: neither a byte-level BPE (no ByteLevel pre-tokenizer or decoder) nor a SentencePiece-style one (byte_fallback, ▁ for spaces)");
            var vocab = model["vocab"] as JsonObject ?? throw Bad("model.vocab is not an object");
            var byId = new SortedDictionary<int, (string Text, int Type)>();
            string? unk = model["unk_token"]?.GetValue<string>();
            foreach (var (tok, idNode) in vocab)
            {
                int id = idNode!.GetValue<int>();
                int tt = spm && tok == unk ? GgufTokenType.Unknown : spm && IsByteToken(tok) ? GgufTokenType.Byte : GgufTokenType.Normal;
                if (id < 0 || !byId.TryAdd(id, (tok, tt))) throw Bad($"vocabulary id {id} of '{tok}' is negative or used twice");
            }
            var addedByContent = new Dictionary<string, int>(StringComparer.Ordinal);
            if (root["added_tokens"] is JsonArray added)
                foreach (var a in added)
                {
                    int id = a!["id"]!.GetValue<int>();
                    string content = a["content"]!.GetValue<string>();
                    bool special = a["special"]?.GetValue<bool>() ?? false;
                    if (id < 0) throw Bad($"added token '{content}' has a negative id");
                    int tt = content == unk && spm ? GgufTokenType.Unknown : special ? GgufTokenType.Control : GgufTokenType.UserDefined;
                    byId[id] = (content, tt);
                    addedByContent[content] = id;
                }
            int n = byId.Count == 0 ? 0 : byId.Keys.Max() + 1;
            var tokens = new string[n];
            var types = new int[n];
            for (int i = 0; i < n; i++)
                (tokens[i], types[i]) = byId.TryGetValue(i, out var e) ? e : ($"[PAD{i}]", GgufTokenType.Unused);
            var merges = new List<string>();
            if (model["merges"] is JsonArray ms)
                foreach (var m in ms)
                    merges.Add(m switch
                    {
                        JsonValue v => v.GetValue<string>(),
                        JsonArray pair when pair.Count == 2 => pair[0]!.GetValue<string>() + " " + pair[1]!.GetValue<string>(),
                        _ => throw Bad($"merge {merges.Count} is neither \"a b\" nor [a, b]"),
                    });

            JsonObject? tc = null;
            if (tokenizerConfig != null)
            {
                try { tc = JsonNode.Parse(tokenizerConfig) as JsonObject; }
                catch (JsonException e) { throw new InvalidDataException($"tokenizer_config.json: not valid JSON ({e.Message})"); }
            }
            int? Special(string key, string[] fallbackNames)
            {
                string? name = tc?[key] switch
                {
                    JsonValue v when v.TryGetValue<string>(out var s) => s,
                    JsonObject o => o["content"]?.GetValue<string>(),
                    _ => null,
                };
                if (name != null)
                {
                    if (addedByContent.TryGetValue(name, out int id)) return id;
                    if (vocab[name] is JsonValue vv) return vv.GetValue<int>();
                    throw new InvalidDataException($"tokenizer_config.json: {key} '{name}' is not in {path}");
                }
                foreach (var f in fallbackNames)
                    if (addedByContent.TryGetValue(f, out int id)) return id;
                return null;
            }
            string? template = tc?["chat_template"] switch
            {
                JsonValue v when v.TryGetValue<string>(out var s) => s,
                JsonArray list => list.FirstOrDefault(x => x?["name"]?.GetValue<string>() == "default")?["template"]?.GetValue<string>(),
                _ => null,
            };
            int? bos = Special("bos_token", BosNames), eos = Special("eos_token", EosNames);
            // add_bos/add_eos: tokenizer_config.json, else what the post-processor template puts around a single text
            var template1 = FindTemplate(root["post_processor"])?["single"] as JsonArray;
            string? TemplateEdge(bool last) => (last ? template1?.LastOrDefault() : template1?.FirstOrDefault())?["SpecialToken"]?["id"]?.GetValue<string>();
            bool addBos = tc?["add_bos_token"]?.GetValue<bool>() ?? (bos is { } b && TemplateEdge(false) == tokens[b]);
            bool addEos = tc?["add_eos_token"]?.GetValue<bool>() ?? (eos is { } e2 && TemplateEdge(true) == tokens[e2]);
            int? unkId = Special("unk_token", []) ?? (unk != null && vocab[unk] is JsonValue uv ? uv.GetValue<int>() : null);
            if (spm)
            {
                var (prefix, note) = SentencePieceSpaces(root);
                return new GgufVocab
                {
                    Model = "llama",
                    Pre = "default",
                    PreNote = note,
                    Tokens = tokens,
                    TokenTypes = types,
                    Merges = [],
                    Scores = SentencePieceScores(tokens, merges),
                    AddSpacePrefix = prefix,
                    EosId = eos,
                    BosId = bos,
                    UnkId = unkId,
                    PadId = Special("pad_token", []),
                    AddBos = addBos,
                    AddEos = addEos,
                    ChatTemplate = template,
                };
            }
            var (pre, preNote) = PreName(root);
            return new GgufVocab
            {
                Model = "gpt2",
                Pre = pre,
                PreNote = preNote,
                Tokens = tokens,
                TokenTypes = types,
                Merges = merges,
                EosId = eos,
                BosId = bos ?? (addBos ? null : eos),
                UnkId = unkId,
                PadId = Special("pad_token", []),
                AddBos = addBos,
                AddEos = addEos,
                ChatTemplate = template,
            };
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
        {
            throw Bad($"unexpected structure ({e.Message})");
        }
    }

    static bool IsByteToken(string t) => t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>' && Uri.IsHexDigit(t[3]) && Uri.IsHexDigit(t[4]);

    /// <summary>
    /// Scores for llama.cpp's SentencePiece tokenizer, which merges the adjacent pair whose concatenation is the
    /// highest-scoring token: −(rank of the first merge that makes the token), 0 for tokens no merge makes (characters,
    /// bytes, specials: never a pair's concatenation). Hugging Face's SentencePiece conversion lists a merge for every
    /// split of every token, ordered by the token's SentencePiece score, so ranking pairs by their token's first merge
    /// is the order Hugging Face's BPE merges them in (convert_hf_to_gguf's tokenizer.json-only path writes −1000 for
    /// every token, which merges left to right instead).
    /// </summary>
    public static float[] SentencePieceScores(IReadOnlyList<string> tokens, IReadOnlyList<string> merges)
    {
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < tokens.Count; i++) index.TryAdd(tokens[i], i);
        var scores = new float[tokens.Count];
        var seen = new bool[tokens.Count];
        for (int r = 0; r < merges.Count; r++)
        {
            int sp = merges[r].IndexOf(' ', 1);
            if (sp < 0) continue;
            string joined = string.Concat(merges[r].AsSpan(0, sp), merges[r].AsSpan(sp + 1));
            if (index.TryGetValue(joined, out int id) && !seen[id]) { seen[id] = true; scores[id] = -r; }
        }
        return scores;
    }

    /// <summary>A SentencePiece-style file's space handling as llama.cpp's: ▁ for spaces (always, in its SPM
    /// tokenizer) and whether a ▁ is prepended (Prepend normalizer, or Metaspace with prepend_scheme always/first).</summary>
    static (bool AddSpacePrefix, string Note) SentencePieceSpaces(JsonObject root)
    {
        bool prepend = Mentions(root["normalizer"], "Prepend");
        foreach (var key in new[] { "pre_tokenizer", "normalizer" })
            if (FindType(root[key], "Metaspace") is { } m)
            {
                string scheme = m["prepend_scheme"]?.GetValue<string>() ?? (m["add_prefix_space"]?.GetValue<bool>() == false ? "never" : "always");
                prepend |= scheme != "never";
            }
        return (prepend, "SentencePiece vocabulary (llama): spaces as ▁" + (prepend ? ", a ▁ prepended" : "") + ", merge priorities as scores");
    }

    static bool ReplacesSpace(JsonNode? normalizer) => normalizer switch
    {
        JsonObject o when o["type"]?.GetValue<string>() == "Replace" => o["pattern"]?["String"]?.GetValue<string>() == " " && o["content"]?.GetValue<string>() == "\u2581",
        JsonObject o when o["normalizers"] is JsonArray list => list.Any(ReplacesSpace),
        _ => false,
    };

    static JsonObject? FindType(JsonNode? node, string type) => node switch
    {
        JsonObject o when o["type"]?.GetValue<string>() == type => o,
        JsonObject o => o.Select(kv => FindType(kv.Value, type)).FirstOrDefault(x => x != null),
        JsonArray a => a.Select(x => FindType(x, type)).FirstOrDefault(x => x != null),
        _ => null,
    };

    /// <summary>The TemplateProcessing post-processor, alone or inside a Sequence.</summary>
    internal static JsonObject? FindTemplate(JsonNode? node) => node switch
    {
        JsonObject o when o["type"]?.GetValue<string>() == "TemplateProcessing" => o,
        JsonObject o when o["processors"] is JsonArray list => list.Select(FindTemplate).FirstOrDefault(t => t != null),
        _ => null,
    };

    internal static bool Mentions(JsonNode? node, string type) => node switch
    {
        JsonObject o => o["type"]?.GetValue<string>() == type || o.Any(kv => Mentions(kv.Value, type)),
        JsonArray a => a.Any(x => Mentions(x, type)),
        _ => false,
    };

    /// <summary>
    /// llama.cpp's name for the pre-tokenizer: GPT-2's (a regex ByteLevel alone), or a Split regex llama.cpp knows
    /// (Llama 3, Qwen 2) followed by ByteLevel; otherwise "default" — text encoded by llama.cpp may then split
    /// differently from the engine, so prompts should be given as token ids (the engine's own BPE regex is one of these).
    /// </summary>
    static (string Name, string Note) PreName(JsonObject root)
    {
        string normNote = "";
        if (root["normalizer"] is JsonObject norm)
        {
            // Qwen's NFC: llama.cpp's qwen2 does not normalize either (text already in NFC, as most is, splits alike)
            if (norm["type"]?.GetValue<string>() != "NFC") return ("default", "tokenizer.json has a normalizer llama.cpp does not apply");
            normNote = "; its NFC normalizer is not applied by llama.cpp (text not in NFC may split differently)";
        }
        var pre = root["pre_tokenizer"] as JsonObject;
        var steps = pre?["type"]?.GetValue<string>() == "Sequence" ? (pre["pretokenizers"] as JsonArray)?.OfType<JsonObject>().ToList() : pre != null ? [pre] : [];
        steps ??= [];
        if (steps.Count == 1 && steps[0]["type"]?.GetValue<string>() == "ByteLevel" && steps[0]["use_regex"]?.GetValue<bool>() != false
            && steps[0]["add_prefix_space"]?.GetValue<bool>() != true)
            return ("gpt-2", "GPT-2 ByteLevel regex");
        if (steps.Count == 2 && steps[0]["type"]?.GetValue<string>() == "Split" && steps[1]["type"]?.GetValue<string>() == "ByteLevel"
            && steps[1]["use_regex"]?.GetValue<bool>() == false && steps[0]["pattern"]?["Regex"]?.GetValue<string>() is { } rx)
            foreach (var (name, known) in KnownSplits)
                if (rx == known) return (name, $"Split regex is llama.cpp's '{name}'{normNote}");
        return ("default", "pre-tokenizer has no llama.cpp equivalent: give llama.cpp token ids, or expect different splits of raw text");
    }
}
