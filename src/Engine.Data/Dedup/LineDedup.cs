using System.Text;

namespace Engine.Data.Dedup;

/// <summary>
/// Line- and paragraph-level dedup (Baichuan 2): the pieces of a document — lines, or blank-line paragraphs — are
/// hashed; a piece found in many distinct documents (navigation, disclaimers, boilerplate) is then removed from all of
/// them. Pieces shorter than the minimum (after trimming) are never counted or removed.
/// </summary>
public static class LineDedup
{
    /// <summary>The distinct piece hashes of <paramref name="text"/>.</summary>
    public static IEnumerable<ulong> Hashes(string text, bool paragraphs, int minChars)
    {
        var seen = new HashSet<ulong>();
        foreach (var piece in Pieces(text, paragraphs))
        {
            var t = piece.Trim();
            if (t.Length >= minChars && seen.Add(Hash(t))) yield return Hash(t);
        }
    }

    static IEnumerable<string> Pieces(string text, bool paragraphs) => paragraphs ? Paragraphs(text) : text.Split('\n');

    static IEnumerable<string> Paragraphs(string text)
    {
        var cur = new StringBuilder();
        foreach (var line in text.Split('\n'))
        {
            if (string.IsNullOrWhiteSpace(line))
            {
                if (cur.Length > 0) { yield return cur.ToString(); cur.Clear(); }
                continue;
            }
            if (cur.Length > 0) cur.Append('\n');
            cur.Append(line);
        }
        if (cur.Length > 0) yield return cur.ToString();
    }

    /// <summary>FNV-1a 64 over the UTF-16 units with a final avalanche (SplitMix64's).</summary>
    public static ulong Hash(ReadOnlySpan<char> s)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (char c in s) h = (h ^ c) * 0x100000001B3UL;
        h ^= h >> 30; h *= 0xBF58476D1CE4E5B9UL; h ^= h >> 27; h *= 0x94D049BB133111EBUL; h ^= h >> 31;
        return h;
    }

    /// <summary>The text without its frequent pieces; <paramref name="removed"/> counts them.</summary>
    public static string Remove(string text, bool paragraphs, int minChars, Func<ulong, bool> frequent, out int removed)
    {
        removed = 0;
        var sb = new StringBuilder(text.Length);
        string sep = paragraphs ? "\n\n" : "\n";
        foreach (var piece in Pieces(text, paragraphs))
        {
            var t = piece.AsSpan().Trim();
            if (t.Length >= minChars && frequent(Hash(t))) { removed++; continue; }
            if (sb.Length > 0) sb.Append(sep);
            sb.Append(piece);
        }
        return removed == 0 ? text : sb.ToString().Trim();
    }
}
