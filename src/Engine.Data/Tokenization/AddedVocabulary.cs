using System.Text;

namespace Engine.Data.Tokenization;

/// <summary>
/// The added tokens of a tokenizer.json and how they are found in text, as Hugging Face's <c>AddedVocabulary</c>:
/// tokens with <c>normalized = false</c> (special tokens, usually) are matched in the raw text first; the stretches
/// between them are normalized, and tokens with <c>normalized = true</c> are matched there by their normalized
/// content. Matching is leftmost-longest; <c>single_word</c> skips a match touching a word character, <c>lstrip</c> /
/// <c>rstrip</c> take in the whitespace on that side.
/// </summary>
internal sealed class AddedVocabulary
{
    readonly List<AddedToken> _tokens = [];
    readonly Dictionary<int, AddedToken> _byId = [];
    readonly Dictionary<string, AddedToken> _byContent = new(StringComparer.Ordinal);
    readonly Dictionary<int, string> _normalizedContent = [];   // normalized tokens whose normalized form differs
    Trie _raw = new([]), _normalized = new([]);

    public IReadOnlyList<AddedToken> Tokens => _tokens;
    public int Count => _tokens.Count;

    public bool TryGet(int id, out AddedToken token) => _byId.TryGetValue(id, out token!);
    public bool TryGet(string content, out AddedToken token) => _byContent.TryGetValue(content, out token!);

    /// <summary>Adds a token, or replaces the one with the same content (Hugging Face keeps one entry per content).</summary>
    public void Add(AddedToken t)
    {
        if (string.IsNullOrEmpty(t.Content)) throw new InvalidDataException($"added token {t.Id} has empty content");
        if (_byContent.TryGetValue(t.Content, out var old))
        {
            _tokens.Remove(old);
            _byId.Remove(old.Id);
        }
        if (_byId.TryGetValue(t.Id, out var sameId)) { _tokens.Remove(sameId); _byContent.Remove(sameId.Content); }
        _tokens.Add(t);
        _byId[t.Id] = t;
        _byContent[t.Content] = t;
    }

    /// <summary>Rebuilds both tries; normalized tokens are matched by their content passed through <paramref name="normalizer"/>.</summary>
    public void Rebuild(Normalizer? normalizer)
    {
        _normalizedContent.Clear();
        var raw = new List<(string, AddedToken)>();
        var norm = new List<(string, AddedToken)>();
        foreach (var t in _tokens)
        {
            if (!t.Normalized) { raw.Add((t.Content, t)); continue; }
            string n = normalizer?.Normalize(t.Content) ?? t.Content;
            if (n != t.Content) _normalizedContent[t.Id] = n;
            if (n.Length > 0) norm.Add((n, t));
        }
        _raw = new Trie(raw);
        _normalized = new Trie(norm);
    }

    /// <summary>The string a token contributes when decoding: its normalized form for normalized tokens (Hugging Face ≥ 0.23).</summary>
    public string DecodeForm(AddedToken t) => _normalizedContent.TryGetValue(t.Id, out var n) ? n : t.Content;

    public bool HasRaw => _raw.Count > 0;
    public bool HasNormalized => _normalized.Count > 0;

    /// <summary>Splits <paramref name="text"/> by the raw (or normalized) tokens: (start, end, token id or -1 for text between).</summary>
    public void FindMatches(ReadOnlySpan<char> text, bool normalized, List<(int Start, int End, int Id)> output)
    {
        output.Clear();
        var trie = normalized ? _normalized : _raw;
        int startOffset = 0;
        if (trie.Count > 0)
        {
            for (int i = 0; i < text.Length;)
            {
                var t = trie.Match(text, i, out int len);
                if (t == null) { i++; continue; }
                int start = i, stop = i + len;
                // the next search starts after this match whether or not it is used (non-overlapping matches)
                i = stop;
                if (t.SingleWord)
                {
                    bool startSpace = start == 0 || !IsWordChar(text, start, before: true);
                    bool stopSpace = stop == text.Length || !IsWordChar(text, stop, before: false);
                    if (!startSpace || !stopSpace) continue;
                }
                if (t.LStrip)
                {
                    int s = start;
                    while (s > 0 && char.IsWhiteSpace(text[s - 1])) s--;
                    start = Math.Max(s, startOffset);
                }
                if (t.RStrip)
                    while (stop < text.Length && char.IsWhiteSpace(text[stop])) stop++;
                if (startOffset < start) output.Add((startOffset, start, -1));
                output.Add((start, stop, t.Id));
                startOffset = stop;
            }
        }
        if (startOffset < text.Length || output.Count == 0) output.Add((startOffset, text.Length, -1));
    }

    /// <summary>Is the character just before (or at) <paramref name="at"/> a word character (letter, mark, digit, connector)?</summary>
    static bool IsWordChar(ReadOnlySpan<char> text, int at, bool before)
    {
        Rune r;
        if (before) { if (Rune.DecodeLastFromUtf16(text[..at], out r, out _) != System.Buffers.OperationStatus.Done) return false; }
        else if (Rune.DecodeFromUtf16(text[at..], out r, out _) != System.Buffers.OperationStatus.Done) return false;
        var cat = Rune.GetUnicodeCategory(r);
        return Rune.IsLetterOrDigit(r) || cat is System.Globalization.UnicodeCategory.NonSpacingMark or System.Globalization.UnicodeCategory.SpacingCombiningMark
            or System.Globalization.UnicodeCategory.EnclosingMark or System.Globalization.UnicodeCategory.ConnectorPunctuation
            or System.Globalization.UnicodeCategory.LetterNumber;
    }

    /// <summary>Longest match at a position, entered only at characters that start a token.</summary>
    sealed class Trie
    {
        sealed class Node { public Dictionary<char, Node>? Next; public AddedToken? Token; }
        readonly Node _root = new();
        readonly bool[] _first = new bool[65536];

        public int Count { get; }

        public Trie(IEnumerable<(string Pattern, AddedToken Token)> tokens)
        {
            foreach (var (p, t) in tokens)
            {
                var n = _root;
                foreach (char c in p)
                {
                    n.Next ??= [];
                    if (!n.Next.TryGetValue(c, out var child)) n.Next[c] = child = new Node();
                    n = child;
                }
                n.Token ??= t;
                _first[p[0]] = true;
                Count++;
            }
        }

        public AddedToken? Match(ReadOnlySpan<char> text, int start, out int length)
        {
            length = 0;
            if (!_first[text[start]]) return null;
            AddedToken? best = null;
            var n = _root;
            for (int i = start; i < text.Length; i++)
            {
                if (n.Next == null || !n.Next.TryGetValue(text[i], out n)) break;
                if (n.Token != null) { best = n.Token; length = i - start + 1; }
            }
            return best;
        }
    }
}
