using System.Text.RegularExpressions;

namespace Engine.Data.Tokenization;

/// <summary>
/// Splits text into the pieces BPE runs on, following a tokenizer.json pre-tokenizer: <c>Split</c> (regex or
/// literal, behavior Isolated or Removed), <c>Digits</c>, <c>ByteLevel</c> (GPT-2 regex when use_regex) and
/// <c>Sequence</c> of those. Other kinds are refused by <see cref="BpeTokenizer.Load"/>.
/// </summary>
internal sealed class PreTokenizer
{
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    internal abstract record Step;
    internal sealed record SplitStep(Regex Regex, string Pattern, bool IsRegex, bool Remove) : Step;
    internal sealed record DigitsStep(bool Individual) : Step;
    internal sealed record ByteLevelStep(bool AddPrefixSpace, bool UseRegex, Regex? Regex) : Step;

    public IReadOnlyList<Step> Steps { get; }
    public bool AddPrefixSpace { get; }
    readonly Step[] _exec;

    public PreTokenizer(IReadOnlyList<Step> steps)
    {
        Steps = steps;
        AddPrefixSpace = steps.OfType<ByteLevelStep>().Any(s => s.AddPrefixSpace);
        // ByteLevel without its regex does not split: leave it out of the work.
        _exec = steps.Where(s => s is not ByteLevelStep { UseRegex: false }).ToArray();
    }

    public static Regex Compile(string pattern) => new(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);

    /// <summary>Appends (start, length) of each piece of <paramref name="text"/> to <paramref name="pieces"/>.</summary>
    public void Split(ReadOnlySpan<char> text, List<(int Start, int Length)> pieces)
    {
        int first = pieces.Count;
        if (_exec.Length == 1) { Apply(_exec[0], text, 0, pieces); return; }
        pieces.Add((0, text.Length));
        var scratch = new List<(int, int)>();
        foreach (var step in _exec)
        {
            scratch.Clear();
            for (int i = first; i < pieces.Count; i++)
            {
                var (s, l) = pieces[i];
                Apply(step, text.Slice(s, l), s, scratch);
            }
            pieces.RemoveRange(first, pieces.Count - first);
            pieces.AddRange(scratch);
        }
    }

    static void Apply(Step step, ReadOnlySpan<char> piece, int offset, List<(int, int)> output)
    {
        switch (step)
        {
            case SplitStep sp:
                MatchSplit(sp.Regex, piece, offset, output, keepGaps: true, keepMatches: !sp.Remove);
                break;
            case ByteLevelStep { UseRegex: true } bl:
                MatchSplit(bl.Regex!, piece, offset, output, keepGaps: true, keepMatches: true);
                break;
            case ByteLevelStep:
                output.Add((offset, piece.Length));
                break;
            case DigitsStep d:
                int i = 0;
                while (i < piece.Length)
                {
                    int j = i;
                    if (char.IsAsciiDigit(piece[i]) || char.IsDigit(piece[i]))
                    {
                        j = i + 1;
                        if (!d.Individual) while (j < piece.Length && char.IsDigit(piece[j])) j++;
                    }
                    else while (j < piece.Length && !char.IsDigit(piece[j])) j++;
                    output.Add((offset + i, j - i));
                    i = j;
                }
                break;
        }
    }

    static void MatchSplit(Regex regex, ReadOnlySpan<char> piece, int offset, List<(int, int)> output, bool keepGaps, bool keepMatches)
    {
        int pos = 0;
        foreach (var m in regex.EnumerateMatches(piece))
        {
            if (m.Length == 0) continue;
            if (m.Index > pos && keepGaps) output.Add((offset + pos, m.Index - pos));
            if (keepMatches) output.Add((offset + m.Index, m.Length));
            pos = m.Index + m.Length;
        }
        if (pos < piece.Length && keepGaps) output.Add((offset + pos, piece.Length - pos));
    }
}
