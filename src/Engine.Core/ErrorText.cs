using System.Text;
using System.Text.RegularExpressions;

#if ENGINE_DATA
namespace Engine.Data;
#else
namespace Engine.Core;
#endif

/// <summary>
/// Error messages the CLI prints as one line: text taken from a file (a tensor name, a JSON literal a parser quotes) or a
/// parser's multi-line report is made one line — line breaks and other control characters shown as escapes, the length
/// capped — so a hostile file cannot spread an error over the terminal. Engine.Data, which depends on nothing, compiles
/// this same file as its internal <c>Engine.Data.ErrorText</c> (ENGINE_DATA, see Engine.Data.csproj).
/// </summary>
#if ENGINE_DATA
internal static class ErrorText
#else
public static class ErrorText
#endif
{
    /// <summary>Longest message piece kept.</summary>
    public const int MaxChars = 600;

    /// <summary><paramref name="text"/> on one line: \n, \r, \t and other control characters escaped, cut at <paramref name="max"/> characters.</summary>
    public static string OneLine(string text, int max = MaxChars)
    {
        var sb = new StringBuilder(Math.Min(text.Length, max) + 8);
        foreach (char c in text)
        {
            if (sb.Length >= max) { sb.Append('…'); break; }
            switch (c)
            {
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (char.IsControl(c) || c is '\u2028' or '\u2029') sb.Append($"\\u{(int)c:X4}");
                    else sb.Append(c);
                    break;
            }
        }
        return sb.ToString();
    }

    /// <summary>A parser report of one error per line (Tomlyn's): the first error, then how many more there were.</summary>
    public static string FirstOfLines(string text)
    {
        var lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (lines.Length == 0) return "";
        return OneLine(lines[0]) + (lines.Length > 1 ? $" (and {lines.Length - 1} more error{(lines.Length > 2 ? "s" : "")})" : "");
    }

    /// <summary>
    /// Tomlyn's report ("source(L,C) : error : text" per line) as "line L, column C: text" for the first error (and how
    /// many more there were): duplicate keys and tables, which TOML forbids, are reported this way too.
    /// </summary>
    public static string Toml(string report)
    {
        string first = FirstOfLines(report);
        var m = Regex.Match(first, @"^.*?\((\d+),(\d+)\) : error : (.*)$");
        return m.Success ? $"line {m.Groups[1].Value}, column {m.Groups[2].Value}: {m.Groups[3].Value}" : first;
    }
}
