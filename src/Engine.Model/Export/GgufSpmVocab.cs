using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Engine.Model.Export;

/// <summary>
/// A SentencePiece-style BPE tokenizer.json (Llama 2, Mistral, Baichuan 2: ▁ for spaces through a Prepend/Replace
/// normalizer or Metaspace, byte_fallback to &lt;0xNN&gt; tokens) as llama.cpp's "llama" (SPM) vocabulary, the form
/// convert_hf_to_gguf writes from tokenizer.model: tokens in id order, one score per token, token types (byte tokens
/// BYTE, the unknown token UNKNOWN, special added tokens CONTROL, other added tokens USER_DEFINED), special ids and
/// add_space_prefix.
/// <para>
/// Scores: llama.cpp's SPM tokenizer repeatedly merges the adjacent pair whose concatenation is the vocabulary token of
/// highest score. tokenizer.json keeps merges instead of SentencePiece's scores, ordered by the merged piece's score
/// (transformers' SentencePieceExtractor), so a token's score here is −(rank of its first merge) − 1 — the same order of
/// merges — and tokens no merge produces (single characters, bytes, specials) score 0; llama.cpp never ranks those.
/// </para>
/// </summary>
public static class GgufSpmVocab
{
    static readonly Regex ByteToken = new(@"^<0x[0-9A-Fa-f]{2}>$", RegexOptions.CultureInvariant);

    /// <summary>Whether tokenizer.json is SentencePiece-style (byte_fallback, a Metaspace step, or a ▁ Prepend normalizer).</summary>
    public static bool IsSentencePiece(JsonObject root) =>
        root["model"]?["byte_fallback"]?.GetValueKind() == JsonValueKind.True || Has(root["pre_tokenizer"], "Metaspace")
        || Has(root["decoder"], "Metaspace") || Has(root["normalizer"], "Prepend");

    static bool Has(JsonNode? node, string type) => GgufVocab.Mentions(node, type);

    /// <summary>Reads a SentencePiece-style tokenizer.json; tokenizer_config.json text (optional) names the special tokens,
    /// add_bos_token/add_eos_token and the chat template.</summary>
    public static GgufVocab FromTokenizerJson(string path, string? tokenizerConfig = null)
    {
        InvalidDataException Bad(string why) => new($"{path}: {why}");
        JsonObject root;
        try { root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw Bad("not a JSON object"); }
        catch (JsonException e) { throw Bad($"not valid JSON ({e.Message})"); }
        try
        {
            var model = root["model"] as JsonObject ?? throw Bad("no 'model' object (not a tokenizer.json)");
            if ((model["type"]?.GetValue<string>() ?? "BPE") != "BPE") throw new NotSupportedException($"{path}: GGUF export writes BPE tokenizers; this one is {model["type"]}");
            var vocab = model["vocab"] as JsonObject ?? throw Bad("model.vocab is not an object");
            var text = new SortedDictionary<int, string>();
            foreach (var (tok, idNode) in vocab)
            {
                int id = idNode!.GetValue<int>();
                if (id < 0 || !text.TryAdd(id, tok)) throw Bad($"vocabulary id {id} of '{tok}' is negative or used twice");
            }
            var special = new HashSet<int>();
            var userDefined = new HashSet<int>();
            if (root["added_tokens"] is JsonArray added)
                foreach (var a in added)
                {
                    int id = a!["id"]!.GetValue<int>();
                    if (id < 0) throw Bad($"added token '{a["content"]}' has a negative id");
                    text[id] = a["content"]!.GetValue<string>();
                    (a["special"]?.GetValue<bool>() == true ? special : userDefined).Add(id);
                }
            var byText = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var (id, t) in text) byText.TryAdd(t, id);

            // a token's score: minus the rank of the first merge that makes it (merges are in SentencePiece score order)
            var scoreOf = new Dictionary<string, float>(StringComparer.Ordinal);
            if (model["merges"] is JsonArray merges)
                for (int r = 0; r < merges.Count; r++)
                {
                    string merged = merges[r] switch
                    {
                        JsonValue v when v.GetValue<string>() is var s && s.IndexOf(' ') is int sp and > 0 => s[..sp] + s[(sp + 1)..],
                        JsonArray pair when pair.Count == 2 => pair[0]!.GetValue<string>() + pair[1]!.GetValue<string>(),
                        _ => throw Bad($"merge {r} is neither \"a b\" nor [a, b]"),
                    };
                    scoreOf.TryAdd(merged, -r - 1f);
                }

            JsonObject? tc = null;
            if (tokenizerConfig != null)
            {
                try { tc = JsonNode.Parse(tokenizerConfig) as JsonObject; }
                catch (JsonException je) { throw new InvalidDataException($"tokenizer_config.json: not valid JSON ({je.Message})"); }
            }
            int? Named(string key, string fallback)
            {
                string? name = tc?[key] switch
                {
                    JsonValue v when v.TryGetValue<string>(out var s) => s,
                    JsonObject o => o["content"]?.GetValue<string>(),
                    _ => null,
                } ?? (key == "unk_token" ? model["unk_token"]?.GetValue<string>() : null) ?? fallback;
                if (name.Length == 0) return null;
                return byText.TryGetValue(name, out int id) ? id
                    : tc?[key] != null ? throw new InvalidDataException($"tokenizer_config.json: {key} '{name}' is not in {path}") : null;
            }
            int? unk = Named("unk_token", "<unk>"), bos = Named("bos_token", "<s>"), eos = Named("eos_token", "</s>"), pad = Named("pad_token", "");

            int n = text.Count == 0 ? 0 : text.Keys.Max() + 1;
            var tokens = new string[n];
            var types = new int[n];
            var scores = new float[n];
            for (int i = 0; i < n; i++)
            {
                if (!text.TryGetValue(i, out var t)) { (tokens[i], types[i], scores[i]) = ($"[PAD{i}]", GgufTokenType.Unused, -1000f); continue; }
                tokens[i] = t;
                types[i] = i == unk ? GgufTokenType.Unknown
                    : special.Contains(i) ? GgufTokenType.Control
                    : userDefined.Contains(i) ? GgufTokenType.UserDefined
                    : ByteToken.IsMatch(t) ? GgufTokenType.Byte
                    : GgufTokenType.Normal;
                scores[i] = types[i] == GgufTokenType.Normal && scoreOf.TryGetValue(t, out float s) ? s : 0f;
            }
            // SentencePiece's add_dummy_prefix: a ▁ Prepend normalizer, or Metaspace prepending (llama.cpp's add_space_prefix)
            bool spacePrefix = Has(root["normalizer"], "Prepend") || Prepends(root["pre_tokenizer"]);
            var single = GgufVocab.FindTemplate(root["post_processor"])?["single"] as JsonArray;
            string? Edge(bool last) => (last ? single?.LastOrDefault() : single?.FirstOrDefault())?["SpecialToken"]?["id"]?.GetValue<string>();
            return new GgufVocab
            {
                Model = "llama",
                Pre = "default",
                PreNote = "SentencePiece vocabulary: llama.cpp's SPM tokenizer (scores from the merge order)",
                Tokens = tokens,
                TokenTypes = types,
                Scores = scores,
                Merges = [],
                UnkId = unk,
                BosId = bos,
                EosId = eos,
                PadId = pad,
                AddBos = tc?["add_bos_token"]?.GetValue<bool>() ?? (bos is { } b && Edge(false) == tokens[b]),
                AddEos = tc?["add_eos_token"]?.GetValue<bool>() ?? (eos is { } e && Edge(true) == tokens[e]),
                AddSpacePrefix = spacePrefix,
                ChatTemplate = tc?["chat_template"] is JsonValue ct && ct.TryGetValue<string>(out var tpl) ? tpl : null,
            };
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
        {
            throw Bad($"unexpected structure ({e.Message})");
        }
    }

    static bool Prepends(JsonNode? node) => node switch
    {
        JsonObject o when o["type"]?.GetValue<string>() == "Metaspace" =>
            o["prepend_scheme"]?.GetValue<string>() is { } scheme ? scheme != "never" : o["add_prefix_space"]?.GetValue<bool>() ?? true,
        JsonObject o => o.Any(kv => Prepends(kv.Value)),
        JsonArray a => a.Any(Prepends),
        _ => false,
    };
}
