using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Engine.Data.Tokenization;

/// <summary>
/// A tokenizer.json <c>normalizer</c>, applied to each stretch of text between added tokens before pre-tokenization:
/// <c>NFC</c>/<c>NFD</c>/<c>NFKC</c>/<c>NFKD</c>, <c>Lowercase</c>, <c>Prepend</c> (SentencePiece's dummy prefix ▁, only
/// on non-empty text), <c>Replace</c> (literal or regex; Llama-2's space → ▁), <c>Strip</c> and <c>Sequence</c> of those.
/// Others (Precompiled, BertNormalizer, …) are refused by name.
/// </summary>
internal abstract class Normalizer
{
    public abstract string Normalize(string text);

    public static Normalizer? Parse(JsonElement e, string path)
    {
        if (e.ValueKind == JsonValueKind.Null) return null;
        string type = e.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";
        switch (type)
        {
            case "Sequence":
                if (!e.TryGetProperty("normalizers", out var list) || list.ValueKind != JsonValueKind.Array)
                    throw new InvalidDataException($"{path}: normalizer Sequence without 'normalizers'");
                return new SequenceNormalizer([.. list.EnumerateArray().Select(n => Parse(n, path)).OfType<Normalizer>()]);
            case "NFC": return new UnicodeNormalizer(NormalizationForm.FormC);
            case "NFD": return new UnicodeNormalizer(NormalizationForm.FormD);
            case "NFKC": return new UnicodeNormalizer(NormalizationForm.FormKC);
            case "NFKD": return new UnicodeNormalizer(NormalizationForm.FormKD);
            case "Lowercase": return new LowercaseNormalizer();
            case "Prepend":
                return new PrependNormalizer(e.TryGetProperty("prepend", out var p) && p.ValueKind == JsonValueKind.String
                    ? p.GetString()! : throw new InvalidDataException($"{path}: normalizer Prepend without a string 'prepend'"));
            case "Replace":
                var (literal, regex) = ReplacePattern(e, path, "normalizer");
                return new ReplaceNormalizer(literal, regex, ReplaceContent(e, path, "normalizer"));
            case "Strip":
                return new StripNormalizer(!e.TryGetProperty("strip_left", out var l) || l.ValueKind != JsonValueKind.False,
                    !e.TryGetProperty("strip_right", out var r) || r.ValueKind != JsonValueKind.False);
            default:
                throw new NotSupportedException($"{path}: normalizer type '{type}' is not supported (Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip)");
        }
    }

    /// <summary>A Replace pattern: {"String": s} (literal) or {"Regex": r}.</summary>
    internal static (string? Literal, Regex? Regex) ReplacePattern(JsonElement e, string path, string where)
    {
        if (!e.TryGetProperty("pattern", out var pat) || pat.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: {where} Replace without a 'pattern' object");
        if (pat.TryGetProperty("String", out var s) && s.ValueKind == JsonValueKind.String)
        {
            string lit = s.GetString()!;
            if (lit.Length == 0) throw new InvalidDataException($"{path}: {where} Replace with an empty pattern");
            return (lit, null);
        }
        if (pat.TryGetProperty("Regex", out var r) && r.ValueKind == JsonValueKind.String)
        {
            try { return (null, PreTokenizer.Compile(r.GetString()!)); }
            catch (ArgumentException ex) { throw new NotSupportedException($"{path}: {where} Replace regex is not valid in .NET ({ErrorText.OneLine(ex.Message)})", ex); }
        }
        throw new InvalidDataException($"{path}: {where} Replace pattern has neither 'String' nor 'Regex'");
    }

    internal static string ReplaceContent(JsonElement e, string path, string where) =>
        e.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString()!
            : throw new InvalidDataException($"{path}: {where} Replace without a string 'content'");

    internal static string Replace(string text, string? literal, Regex? regex, string content) =>
        literal != null ? text.Replace(literal, content, StringComparison.Ordinal) : regex!.Replace(text, _ => content);
}

internal sealed class SequenceNormalizer(Normalizer[] items) : Normalizer
{
    public IReadOnlyList<Normalizer> Items => items;

    public override string Normalize(string text)
    {
        foreach (var n in items) text = n.Normalize(text);
        return text;
    }
}

/// <summary>NFC/NFD/NFKC/NFKD through <see cref="UnicodeNormalization"/> (string.Normalize is a no-op under InvariantGlobalization).</summary>
internal sealed class UnicodeNormalizer(NormalizationForm form) : Normalizer
{
    public override string Normalize(string text) => UnicodeNormalization.Normalize(text, form);
}

/// <summary>Hugging Face lower-cases with Rust's full Unicode mapping; .NET's invariant mapping differs only for a few characters (e.g. 'İ').</summary>
internal sealed class LowercaseNormalizer : Normalizer
{
    public override string Normalize(string text) => text.ToLowerInvariant();
}

internal sealed class PrependNormalizer(string prepend) : Normalizer
{
    public string Prefix => prepend;
    public override string Normalize(string text) => text.Length == 0 ? text : prepend + text;
}

internal sealed class ReplaceNormalizer(string? literal, Regex? regex, string content) : Normalizer
{
    public string? Literal => literal;
    public string Content => content;
    public override string Normalize(string text) => Replace(text, literal, regex, content);
}

internal sealed class StripNormalizer(bool left, bool right) : Normalizer
{
    public override string Normalize(string text) => left && right ? text.Trim() : left ? text.TrimStart() : right ? text.TrimEnd() : text;
}
