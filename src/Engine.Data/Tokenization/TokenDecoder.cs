using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Engine.Data.Tokenization;

/// <summary>
/// A tokenizer.json <c>decoder</c>: token strings → text, step by step on the list of tokens as Hugging Face's
/// <c>decode_chain</c>: <c>ByteLevel</c> (GPT-2 characters → bytes, lossy UTF-8), <c>Replace</c> (▁ → space),
/// <c>ByteFallback</c> (runs of &lt;0xNN&gt; → UTF-8, one U+FFFD per byte when invalid), <c>Fuse</c>, <c>Strip</c>,
/// <c>Metaspace</c> and <c>Sequence</c>. The text is the concatenation of what the chain leaves.
/// </summary>
internal abstract class TokenDecoder
{
    public abstract List<string> DecodeChain(List<string> tokens);

    public string Decode(List<string> tokens) => string.Concat(DecodeChain(tokens));

    public static TokenDecoder? Parse(JsonElement e, string path)
    {
        if (e.ValueKind == JsonValueKind.Null) return null;
        string type = e.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";
        switch (type)
        {
            case "Sequence":
                if (!e.TryGetProperty("decoders", out var list) || list.ValueKind != JsonValueKind.Array)
                    throw new InvalidDataException($"{path}: decoder Sequence without 'decoders'");
                return new SequenceDecoder([.. list.EnumerateArray().Select(d => Parse(d, path)).OfType<TokenDecoder>()]);
            case "ByteLevel": return new ByteLevelDecoder();
            case "ByteFallback": return new ByteFallbackDecoder();
            case "Fuse": return new FuseDecoder();
            case "Replace":
                var (literal, regex) = Normalizer.ReplacePattern(e, path, "decoder");
                return new ReplaceDecoder(literal, regex, Normalizer.ReplaceContent(e, path, "decoder"));
            case "Strip":
                string content = e.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString()! : " ";
                if (content.Length != 1) throw new NotSupportedException($"{path}: decoder Strip content '{content}' is not one UTF-16 character");
                int Count(string name) => !e.TryGetProperty(name, out var n) ? 0
                    : n.ValueKind == JsonValueKind.Number && n.TryGetInt32(out int v) && v >= 0 ? v
                    : throw new InvalidDataException($"{path}: decoder Strip '{name}' = {n.GetRawText()} is not a count (an integer >= 0)");
                return new StripDecoder(content[0], Count("start"), Count("stop"));
            case "Metaspace":
                var (rep, scheme, _) = MetaspaceOptions(e, path, "decoder");
                return new MetaspaceDecoder(rep, scheme);
            default:
                throw new NotSupportedException($"{path}: decoder type '{type}' is not supported (Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace)");
        }
    }

    /// <summary>Metaspace's replacement, prepend_scheme (legacy add_prefix_space read as Hugging Face does) and split.</summary>
    internal static (char Replacement, string Scheme, bool Split) MetaspaceOptions(JsonElement e, string path, string where)
    {
        string rep = e.TryGetProperty("replacement", out var r) && r.ValueKind == JsonValueKind.String ? r.GetString()! : "▁";
        if (rep.Length != 1) throw new NotSupportedException($"{path}: {where} Metaspace replacement '{rep}' is not one UTF-16 character");
        string scheme = e.TryGetProperty("prepend_scheme", out var ps) && ps.ValueKind == JsonValueKind.String ? ps.GetString()! : "always";
        if (scheme is not ("always" or "first" or "never")) throw new InvalidDataException($"{path}: {where} Metaspace prepend_scheme '{scheme}' is not always, first or never");
        if (e.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.False)
        {
            if (scheme != "never" && e.TryGetProperty("prepend_scheme", out _))
                throw new InvalidDataException($"{path}: {where} Metaspace add_prefix_space = false does not match prepend_scheme '{scheme}'");
            scheme = "never";
        }
        bool split = !e.TryGetProperty("split", out var sp) || sp.ValueKind != JsonValueKind.False;
        return (rep[0], scheme, split);
    }
}

internal sealed class SequenceDecoder(TokenDecoder[] items) : TokenDecoder
{
    public IReadOnlyList<TokenDecoder> Items => items;

    public override List<string> DecodeChain(List<string> tokens)
    {
        foreach (var d in items) tokens = d.DecodeChain(tokens);
        return tokens;
    }
}

internal sealed class ByteLevelDecoder : TokenDecoder
{
    /// <summary>A token's bytes: its GPT-2 characters mapped back, or its UTF-8 when one character is outside the table.</summary>
    public static byte[] TokenBytes(string token) => ByteLevel.TryDecode(token, out var b) ? b : Encoding.UTF8.GetBytes(token);

    public override List<string> DecodeChain(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var t in tokens) bytes.AddRange(TokenBytes(t));
        return [Encoding.UTF8.GetString(bytes.ToArray())];
    }
}

internal sealed class ByteFallbackDecoder : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var output = new List<string>(tokens.Count);
        var pending = new List<byte>();
        foreach (var t in tokens)
        {
            if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>' && IsHex(t[3]) && IsHex(t[4]))
            {
                pending.Add(Convert.ToByte(t.Substring(3, 2), 16));
                continue;
            }
            Flush();
            output.Add(t);
        }
        Flush();
        return output;

        void Flush()
        {
            if (pending.Count == 0) return;
            try { output.Add(new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(pending.ToArray())); }
            catch (DecoderFallbackException) { for (int i = 0; i < pending.Count; i++) output.Add("\uFFFD"); }
            pending.Clear();
        }
    }

    static bool IsHex(char c) => char.IsAsciiHexDigit(c);
}

internal sealed class FuseDecoder : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens) => [string.Concat(tokens)];
}

internal sealed class ReplaceDecoder(string? literal, Regex? regex, string content) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        for (int i = 0; i < tokens.Count; i++) tokens[i] = Normalizer.Replace(tokens[i], literal, regex, content);
        return tokens;
    }
}

/// <summary>Removes up to <c>start</c> leading and <c>stop</c> trailing <c>content</c> characters from every token.</summary>
internal sealed class StripDecoder(char content, int start, int stop) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        for (int i = 0; i < tokens.Count; i++)
        {
            string t = tokens[i];
            int a = 0, b = t.Length;
            while (a < start && a < t.Length && t[a] == content) a++;
            for (int k = 0; k < stop && b > a && t[b - 1] == content; k++) b--;
            tokens[i] = t[a..b];
        }
        return tokens;
    }
}

/// <summary>▁ → space; in the first token every ▁ is dropped unless prepend_scheme is never (as Hugging Face).</summary>
internal sealed class MetaspaceDecoder(char replacement, string scheme) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        for (int i = 0; i < tokens.Count; i++)
        {
            bool drop = i == 0 && scheme != "never";
            var sb = new StringBuilder(tokens[i].Length);
            foreach (char c in tokens[i])
            {
                if (c != replacement) sb.Append(c);
                else if (!drop) sb.Append(' ');
            }
            tokens[i] = sb.ToString();
        }
        return tokens;
    }
}
