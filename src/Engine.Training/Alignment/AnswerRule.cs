using System.Globalization;
using System.Text.RegularExpressions;

namespace Engine.Training.Alignment;

/// <summary>What a reference answer is, which decides how an answer is checked against it.</summary>
public enum AnswerKind { Label, Number, Text }

/// <summary>
/// The rule that stands in for human raters: an answer is scored in [0, 1] against the data set's reference answer.
/// Labels (sentiment): 1 for the reference label, 0.25 for another valid label, 0 otherwise. Numbers (a reference that is one number): 1 when equal at
/// the reference's two-decimal precision (relative 1e-4), else 0.5·exp(−relative error) for any number, 0 for none.
/// Text: 1 for an exact (case- and space-normalised) match, else 0.9 × token F1 (words; CJK characters one by one).
/// It is verifiable, not a judgement of helpfulness or style: that is all the shipped files support.
/// </summary>
public static partial class AnswerRule
{
    public static readonly string[] SentimentLabels = ["negative", "neutral", "positive"];

    [GeneratedRegex(@"-?\d[\d,]*(\.\d+)?")]
    private static partial Regex NumberPattern();

    /// <summary>A reference that is one number: optional sign or currency, an optional %, or a scale word.</summary>
    [GeneratedRegex(@"^\s*[-$€£¥]*\s*\d[\d,]*(\.\d+)?\s*(%|million|billion|thousand|万|亿)?\s*$", RegexOptions.IgnoreCase)]
    private static partial Regex WholeNumber();

    /// <summary>Labels for sentiment sources; a reference that parses as a number is a number; text otherwise.</summary>
    public static AnswerKind KindOf(string sourceKind, string reference) =>
        sourceKind == "sentiment" ? AnswerKind.Label : WholeNumber().IsMatch(reference) ? AnswerKind.Number : AnswerKind.Text;

    public static double Score(AnswerKind kind, string reference, string answer) => kind switch
    {
        AnswerKind.Label => LabelScore(reference, answer),
        AnswerKind.Number => NumberScore(reference, answer),
        _ => TextScore(reference, answer),
    };

    /// <summary>
    /// A rule-made wrong answer to set against the reference (a hard negative beside the sampled ones): another label;
    /// the reference's number moved by 10–50% (same decimals); the first half of a text answer.
    /// </summary>
    public static string Corrupt(AnswerKind kind, string reference, Core.Rng rng)
    {
        switch (kind)
        {
            case AnswerKind.Label:
                {
                    var others = SentimentLabels.Where(l => l != reference.Trim().ToLowerInvariant()).ToArray();
                    return others[rng.NextInt(others.Length)];
                }
            case AnswerKind.Number:
                {
                    var m = NumberPattern().Match(reference);
                    if (!m.Success || ParseNumber(reference) is not { } r) goto default;
                    int dot = m.Value.IndexOf('.', StringComparison.Ordinal);
                    int decimals = dot < 0 ? 0 : m.Value.Length - dot - 1;
                    double f = 1 + (0.1 + 0.4 * rng.NextDouble()) * (rng.NextInt(2) == 0 ? -1 : 1);
                    double v = r == 0 ? 1 + rng.NextInt(9) : r * f;
                    return reference[..m.Index] + v.ToString("F" + decimals, CultureInfo.InvariantCulture) + reference[(m.Index + m.Length)..];
                }
            default:
                {
                    var s = reference.Trim();
                    return s[..(s.Length / 2)];
                }
        }
    }

    /// <summary>The label an answer gives: its leading letters, lower-cased ("Positive." → "positive").</summary>
    public static string LeadingWord(string answer)
    {
        var s = answer.TrimStart();
        int n = 0;
        while (n < s.Length && char.IsLetter(s[n])) n++;
        return s[..n].ToLowerInvariant();
    }

    static double LabelScore(string reference, string answer)
    {
        string w = LeadingWord(answer);
        if (w == reference.Trim().ToLowerInvariant()) return 1;
        return Array.IndexOf(SentimentLabels, w) >= 0 ? 0.25 : 0;
    }

    public static double? ParseNumber(string s)
    {
        var m = NumberPattern().Match(s);
        return m.Success && double.TryParse(m.Value.Replace(",", "", StringComparison.Ordinal), NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v : null;
    }

    static double NumberScore(string reference, string answer)
    {
        if (ParseNumber(reference) is not { } r) return TextScore(reference, answer);
        if (ParseNumber(answer) is not { } a) return 0;
        double err = Math.Abs(a - r), rel = err / Math.Max(Math.Abs(r), 1e-9);
        if (err <= 0.005 + 1e-9 || rel <= 1e-4) return 1;
        return 0.5 * Math.Exp(-rel);
    }

    static double TextScore(string reference, string answer)
    {
        string a = Normalize(answer), r = Normalize(reference);
        if (a.Length == 0) return 0;
        if (a == r) return 1;
        var ta = Tokens(a);
        var tr = Tokens(r);
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var t in tr) counts[t] = counts.GetValueOrDefault(t) + 1;
        int common = 0;
        foreach (var t in ta)
            if (counts.TryGetValue(t, out int c) && c > 0) { common++; counts[t] = c - 1; }
        if (common == 0) return 0;
        double p = (double)common / ta.Count, rc = (double)common / tr.Count;
        return 0.9 * 2 * p * rc / (p + rc);
    }

    static string Normalize(string s) => string.Join(' ', s.ToLowerInvariant().Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));

    static List<string> Tokens(string s)
    {
        var list = new List<string>();
        var word = new System.Text.StringBuilder();
        foreach (var ch in s)
        {
            bool cjk = ch >= '\u3400' && ch <= '\u9fff';
            if (cjk || char.IsWhiteSpace(ch) || char.IsPunctuation(ch))
            {
                if (word.Length > 0) { list.Add(word.ToString()); word.Clear(); }
                if (cjk) list.Add(ch.ToString());
            }
            else word.Append(ch);
        }
        if (word.Length > 0) list.Add(word.ToString());
        return list;
    }
}
