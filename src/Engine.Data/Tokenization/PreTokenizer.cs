using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Engine.Data.Tokenization;

/// <summary>
/// Splits text into the pieces BPE runs on, following a tokenizer.json pre-tokenizer: <c>Split</c> (regex or literal,
/// any delimiter behavior, invert), <c>Digits</c>, <c>ByteLevel</c> (GPT-2 regex when use_regex, a leading space
/// when add_prefix_space), <c>Metaspace</c> (spaces → ▁, ▁ prepended always / first / never, split before each ▁)
/// and <c>Sequence</c> of those, with Hugging Face's semantics. Other kinds are refused by <see cref="BpeTokenizer.Load"/>.
/// Pure splitting steps return spans of the input; ByteLevel-with-prefix and Metaspace rewrite it (see <see cref="Split"/>).
/// </summary>
internal sealed class PreTokenizer
{
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>Hugging Face's SplitDelimiterBehavior.</summary>
    internal enum Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

    internal abstract record Step;
    internal sealed record SplitStep(Regex Regex, string Pattern, bool IsRegex, Behavior Behavior, bool Invert) : Step;
    internal sealed record DigitsStep(bool Individual) : Step;
    internal sealed record ByteLevelStep(bool AddPrefixSpace, bool UseRegex, Regex? Regex) : Step;
    internal sealed record MetaspaceStep(char Replacement, string PrependScheme, bool SplitPieces) : Step;

    public IReadOnlyList<Step> Steps { get; }
    readonly Step[] _exec;

    public PreTokenizer(IReadOnlyList<Step> steps)
    {
        Steps = steps;
        // ByteLevel without its regex and without a prefix space neither splits nor rewrites: leave it out of the work.
        _exec = steps.Where(s => s is not ByteLevelStep { UseRegex: false, AddPrefixSpace: false }).ToArray();
    }

    /// <summary>
    /// Time limit of one regex match. A tokenizer.json regex can backtrack catastrophically (e.g. <c>(a+)+$</c> on a run of
    /// a's): past the limit .NET throws <see cref="RegexMatchTimeoutException"/>, which <see cref="BpeTokenizer"/> turns
    /// into an error naming the file. Pre-tokenizer patterns match a few characters at a time; 2 s is far beyond any
    /// legitimate match (the NonBacktracking engine is not used: it lacks the lookarounds GPT-2-style patterns need).
    /// </summary>
    public static readonly TimeSpan MatchTimeout = TimeSpan.FromSeconds(2);

    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, Regex> Compiled = new(StringComparer.Ordinal);

    /// <summary>A compiled, culture-invariant regex with <see cref="MatchTimeout"/> (cached by pattern: loading a tokenizer again does not recompile).</summary>
    public static Regex Compile(string pattern)
    {
        if (Compiled.TryGetValue(pattern, out var cached)) return cached;
        var regex = new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant, MatchTimeout);
        if (Compiled.Count >= 64) Compiled.Clear();   // a bound: few distinct patterns exist in practice
        Compiled.TryAdd(pattern, regex);
        return regex;
    }

    static bool Rewrites(Step s) => s is MetaspaceStep or ByteLevelStep { AddPrefixSpace: true };

    /// <summary>
    /// Clears <paramref name="pieces"/> and fills it with (start, length) of each piece; returns the text they index:
    /// <paramref name="text"/> itself, or a rewritten copy when a step rewrites (Metaspace, ByteLevel add_prefix_space).
    /// <paramref name="atStart"/>: the text begins at offset 0 of the input (Metaspace prepend_scheme "first").
    /// </summary>
    public ReadOnlySpan<char> Split(ReadOnlySpan<char> text, bool atStart, List<(int Start, int Length)> pieces)
    {
        pieces.Clear();
        if (text.IsEmpty) return text;
        if (_exec.Length == 0) { pieces.Add((0, text.Length)); return text; }
        if (_exec.Length == 1 && !Rewrites(_exec[0])) { Apply(_exec[0], text, 0, pieces); return text; }
        pieces.Add((0, text.Length));
        bool firstAtOrigin = atStart;   // pieces[0] begins at offset 0 of the input
        var cur = text;
        var next = new List<(int, int)>();
        foreach (var step in _exec)
        {
            next.Clear();
            if (Rewrites(step))
            {
                var sb = new StringBuilder(cur.Length + pieces.Count + 1);
                var ranges = new List<(int, int)>(pieces.Count);
                for (int k = 0; k < pieces.Count; k++)
                {
                    var (s, l) = pieces[k];
                    var piece = cur.Slice(s, l);
                    int start = sb.Length;
                    if (step is MetaspaceStep m)
                    {
                        bool startsWith = piece[0] == ' ' || piece[0] == m.Replacement;
                        bool prepend = !startsWith && (m.PrependScheme == "always" || (m.PrependScheme == "first" && k == 0 && firstAtOrigin));
                        if (prepend) sb.Append(m.Replacement);
                        foreach (char c in piece) sb.Append(c == ' ' ? m.Replacement : c);
                    }
                    else
                    {
                        if (piece[0] != ' ') sb.Append(' ');
                        sb.Append(piece);
                    }
                    ranges.Add((start, sb.Length - start));
                }
                cur = sb.ToString();
                foreach (var (s, l) in ranges)
                {
                    var piece = cur.Slice(s, l);
                    switch (step)
                    {
                        case MetaspaceStep { SplitPieces: true } m:
                            SplitChars(piece, s, c => c.Value == m.Replacement, Behavior.MergedWithNext, false, next);
                            break;
                        case ByteLevelStep { UseRegex: true } bl:
                            MatchSplit(bl.Regex!, piece, s, next, keepMatches: true);
                            break;
                        default:
                            next.Add((s, l));
                            break;
                    }
                }
            }
            else
            {
                int firstStart = pieces.Count > 0 ? pieces[0].Start : -1;
                foreach (var (s, l) in pieces) Apply(step, cur.Slice(s, l), s, next);
                firstAtOrigin = firstAtOrigin && next.Count > 0 && next[0].Item1 == firstStart;
            }
            pieces.Clear();
            pieces.AddRange(next);
        }
        return cur;
    }

    static void Apply(Step step, ReadOnlySpan<char> piece, int offset, List<(int, int)> output)
    {
        switch (step)
        {
            case SplitStep { Behavior: Behavior.Isolated or Behavior.Removed, Invert: false } sp:
                MatchSplit(sp.Regex, piece, offset, output, keepMatches: sp.Behavior == Behavior.Isolated);
                break;
            case SplitStep sp:
                var events = new List<(int Start, int End, bool Match)>();
                RegexEvents(sp.Regex, piece, events);
                Fold(events, offset, sp.Behavior, sp.Invert, output);
                break;
            case ByteLevelStep { UseRegex: true } bl:
                MatchSplit(bl.Regex!, piece, offset, output, keepMatches: true);
                break;
            case DigitsStep d:
                SplitChars(piece, offset, Rune.IsNumber, d.Individual ? Behavior.Isolated : Behavior.Contiguous, false, output);
                break;
            default:
                output.Add((offset, piece.Length));
                break;
        }
    }

    /// <summary>Regex split keeping the gaps (Isolated) or dropping the matches (Removed); the hot path, no event list.</summary>
    static void MatchSplit(Regex regex, ReadOnlySpan<char> piece, int offset, List<(int, int)> output, bool keepMatches)
    {
        if (piece.ContainsAnyInRange('\uD800', '\uDFFF'))
        {
            var events = new List<(int Start, int End, bool Match)>();
            SurrogateSafeMatches(regex, piece, events);
            Fold(events, offset, keepMatches ? Behavior.Isolated : Behavior.Removed, false, output);
            return;
        }
        int pos = 0;
        foreach (var m in regex.EnumerateMatches(piece))
        {
            if (m.Length == 0) continue;
            if (m.Index > pos) output.Add((offset + pos, m.Index - pos));
            if (keepMatches) output.Add((offset + m.Index, m.Length));
            pos = m.Index + m.Length;
        }
        if (pos < piece.Length) output.Add((offset + pos, piece.Length - pos));
    }

    /// <summary>Matches and gaps of a regex over a piece, as (start, end, is match).</summary>
    static void RegexEvents(Regex regex, ReadOnlySpan<char> piece, List<(int Start, int End, bool Match)> events)
    {
        if (piece.ContainsAnyInRange('\uD800', '\uDFFF')) { SurrogateSafeMatches(regex, piece, events); return; }
        int pos = 0;
        foreach (var m in regex.EnumerateMatches(piece))
        {
            if (m.Length == 0) continue;
            if (m.Index > pos) events.Add((pos, m.Index, false));
            events.Add((m.Index, m.Index + m.Length, true));
            pos = m.Index + m.Length;
        }
        if (pos < piece.Length) events.Add((pos, piece.Length, false));
    }

    /// <summary>
    /// .NET regexes see UTF-16 units, Hugging Face's (Oniguruma) code points: an emoji or a CJK Extension B character
    /// is two surrogates to .NET, neither a letter nor one character, so <c>[^\p{L}]?\p{L}+</c> splits differently.
    /// The regex runs on a stand-in where each supplementary code point is one BMP character of the same Unicode
    /// category (a lone surrogate reads as U+FFFD, as in UTF-8), and the matches are mapped back.
    /// </summary>
    static void SurrogateSafeMatches(Regex regex, ReadOnlySpan<char> piece, List<(int Start, int End, bool Match)> events)
    {
        var stand = new StringBuilder(piece.Length);
        var map = new List<int>(piece.Length + 1);   // stand-in index → piece index
        for (int i = 0; i < piece.Length;)
        {
            map.Add(i);
            if (!char.IsSurrogate(piece[i])) { stand.Append(piece[i]); i++; continue; }
            if (Rune.DecodeFromUtf16(piece[i..], out var r, out int used) != System.Buffers.OperationStatus.Done) { r = Rune.ReplacementChar; used = 1; }
            stand.Append(StandIn(Rune.GetUnicodeCategory(r)));
            i += used;
        }
        map.Add(piece.Length);
        string text = stand.ToString();
        int pos = 0;
        foreach (var m in regex.EnumerateMatches(text))
        {
            if (m.Length == 0) continue;
            if (m.Index > pos) events.Add((map[pos], map[m.Index], false));
            events.Add((map[m.Index], map[m.Index + m.Length], true));
            pos = m.Index + m.Length;
        }
        if (pos < text.Length) events.Add((map[pos], piece.Length, false));
    }

    /// <summary>A BMP character of the given category, outside ASCII and the CJK ranges patterns name explicitly.</summary>
    static char StandIn(UnicodeCategory c) => c switch
    {
        UnicodeCategory.UppercaseLetter => '\u0181',
        UnicodeCategory.LowercaseLetter => '\u0180',
        UnicodeCategory.TitlecaseLetter => '\u01C5',
        UnicodeCategory.ModifierLetter => '\u02B0',
        UnicodeCategory.OtherLetter => '\u01BB',
        UnicodeCategory.NonSpacingMark => '\u0300',
        UnicodeCategory.SpacingCombiningMark => '\u0903',
        UnicodeCategory.EnclosingMark => '\u0488',
        UnicodeCategory.DecimalDigitNumber => '\u0660',
        UnicodeCategory.LetterNumber => '\u16EE',
        UnicodeCategory.OtherNumber => '\u00B2',
        UnicodeCategory.ConnectorPunctuation => '\u203F',
        UnicodeCategory.DashPunctuation => '\u2010',
        UnicodeCategory.OpenPunctuation => '\u2045',
        UnicodeCategory.ClosePunctuation => '\u2046',
        UnicodeCategory.InitialQuotePunctuation => '\u00AB',
        UnicodeCategory.FinalQuotePunctuation => '\u00BB',
        UnicodeCategory.OtherPunctuation => '\u00B7',
        UnicodeCategory.MathSymbol => '\u00AC',
        UnicodeCategory.CurrencySymbol => '\u00A2',
        UnicodeCategory.ModifierSymbol => '\u02C2',
        UnicodeCategory.OtherSymbol => '\u00A6',
        UnicodeCategory.SpaceSeparator => '\u2007',
        UnicodeCategory.Format => '\u00AD',
        UnicodeCategory.PrivateUse => '\uE000',
        _ => '\u0378',   // unassigned
    };

    /// <summary>A character pattern: every matching character is one match (as Hugging Face's <c>Fn(char) -> bool</c> pattern).</summary>
    static void SplitChars(ReadOnlySpan<char> piece, int offset, Func<Rune, bool> isMatch, Behavior behavior, bool invert, List<(int, int)> output)
    {
        var events = new List<(int Start, int End, bool Match)>();
        int last = 0;
        for (int i = 0; i < piece.Length;)
        {
            if (Rune.DecodeFromUtf16(piece[i..], out var r, out int used) != System.Buffers.OperationStatus.Done) r = Rune.ReplacementChar;
            if (isMatch(r))
            {
                if (last < i) events.Add((last, i, false));
                events.Add((i, i + used, true));
                last = i + used;
            }
            i += used;
        }
        if (last < piece.Length) events.Add((last, piece.Length, false));
        Fold(events, offset, behavior, invert, output);
    }

    /// <summary>Hugging Face's <c>NormalizedString::split</c>: matches and gaps folded by the delimiter behavior.</summary>
    static void Fold(List<(int Start, int End, bool Match)> events, int offset, Behavior behavior, bool invert, List<(int, int)> output)
    {
        var acc = new List<(int Start, int End, bool Remove)>(events.Count);
        bool previous = false;
        if (behavior == Behavior.MergedWithNext)
        {
            for (int i = events.Count - 1; i >= 0; i--)
            {
                var (s, e, match) = events[i];
                match ^= invert;
                if (match && !previous && acc.Count > 0) acc[^1] = (s, acc[^1].End, false);
                else acc.Add((s, e, false));
                previous = match;
            }
            acc.Reverse();
        }
        else
        {
            foreach (var (s, e, m) in events)
            {
                bool match = m ^ invert;
                switch (behavior)
                {
                    case Behavior.Isolated: acc.Add((s, e, false)); break;
                    case Behavior.Removed: acc.Add((s, e, match)); break;
                    case Behavior.Contiguous:
                        if (match == previous && acc.Count > 0) acc[^1] = (acc[^1].Start, e, false);
                        else acc.Add((s, e, false));
                        break;
                    case Behavior.MergedWithPrevious:
                        if (match && !previous && acc.Count > 0) acc[^1] = (acc[^1].Start, e, false);
                        else acc.Add((s, e, false));
                        break;
                }
                previous = match;
            }
        }
        foreach (var (s, e, remove) in acc)
            if (!remove && e > s) output.Add((offset + s, e - s));
    }
}
