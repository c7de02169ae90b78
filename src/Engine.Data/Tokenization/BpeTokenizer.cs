using System.Text;
using System.Text.RegularExpressions;
using Engine.Data.Tokenization;

namespace Engine.Data;

/// <summary>Options for <see cref="BpeTokenizer.Train"/>.</summary>
public sealed record BpeTrainOptions
{
    /// <summary>Total ids: 256 byte tokens + merges + special tokens.</summary>
    public int VocabSize { get; init; } = 8000;

    /// <summary>A pair seen fewer times than this is never merged (training may then stop below VocabSize).</summary>
    public int MinFrequency { get; init; } = 2;

    /// <summary>No token longer than this many UTF-8 bytes is created: keeps long Chinese runs from filling the vocabulary.</summary>
    public int MaxTokenBytes { get; init; } = 16;

    /// <summary>Special tokens, given ids after the merges; the first is EOS.</summary>
    public IReadOnlyList<string> SpecialTokens { get; init; } = ["<|endoftext|>", "<|user|>", "<|assistant|>"];

    /// <summary>Pre-tokenizer regex; null takes <see cref="BpeTokenizer.DefaultPattern"/>.</summary>
    public string? Pattern { get; init; }
}

/// <summary>
/// A token matched in the text before pre-tokenization (special tokens and vocabulary-expansion tokens), with
/// tokenizer.json's flags: <see cref="Normalized"/> tokens are matched in normalized text (default: not special),
/// <see cref="LStrip"/>/<see cref="RStrip"/> take in neighbouring whitespace, <see cref="SingleWord"/> matches only
/// between non-word characters. Special tokens are skipped when decoding.
/// </summary>
public sealed record AddedToken(int Id, string Content, bool Special)
{
    public bool Normalized { get; init; } = !Special;
    public bool LStrip { get; init; }
    public bool RStrip { get; init; }
    public bool SingleWord { get; init; }
}

/// <summary>
/// BPE tokenizer with Hugging Face tokenizer.json's pipeline and results: added tokens split out → normalizer →
/// pre-tokenizer → BPE model → ids; ids → tokens → decoder chain → text. Two model families:
/// <list type="bullet">
/// <item>byte-level (GPT-2, Llama 3, Qwen): a piece's UTF-8 bytes start as 256 byte tokens. The engine trains this
/// kind (<see cref="Train"/>) with Qwen2's split rule (<see cref="DefaultPattern"/>: single digits, as Baichuan 2
/// splits numbers), which llama.cpp implements under the name "qwen2".</item>
/// <item>SentencePiece-style (Llama 2, Mistral, Baichuan 2): spaces become ▁ (Prepend/Replace normalizers or a
/// Metaspace pre-tokenizer), symbols are Unicode characters, and a character outside the vocabulary falls back to
/// &lt;0xNN&gt; byte tokens (byte_fallback) or the unknown token; decoded by Replace / ByteFallback / Fuse / Strip.</item>
/// </list>
/// Loaded files encode and decode as Hugging Face's Rust tokenizers do (checked id for id on the shipped data against
/// the real Llama-2-family, Llama 3 and Qwen3 files); see <see cref="Load"/> for what is refused.
/// Encoding is thread-safe (per-thread scratch; pieces of up to 32 characters are cached); <see cref="AddTokens"/> is not.
/// </summary>
public sealed partial class BpeTokenizer : ITokenizer
{
    /// <summary>
    /// Qwen2's split rule, spelled as llama.cpp spells it (<c>LLAMA_VOCAB_PRE_TYPE_QWEN2</c>: the contractions with
    /// explicit case classes instead of <c>(?i:…)</c>, so .NET, Hugging Face's Oniguruma and llama.cpp's std::regex read
    /// the same characters): English contractions; letter runs with one optional leading non-letter (space or
    /// punctuation); single digits (as Baichuan 2 splits numbers); punctuation runs with their trailing newlines;
    /// newlines; other whitespace. A GGUF export names it <c>tokenizer.ggml.pre = "qwen2"</c>, so llama.cpp (and
    /// ollama, llama-server) split raw text exactly as the engine does.
    /// </summary>
    public const string DefaultPattern =
        @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    static readonly string[] EosNames = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "<|eot_id|>"];
    static readonly string[] BosNames = ["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"];

    readonly BpeModel _model;
    readonly PreTokenizer _pre;
    readonly Normalizer? _normalizer;
    readonly TokenDecoder? _decoder;
    readonly AddedVocabulary _added = new();
    readonly RawSections? _raw;                 // sections of a loaded tokenizer.json written back unchanged by Save
    readonly char? _spaceMarker;                // SentencePiece's ▁ when spaces are replaced by one
    HashSet<string> _specialContents = new(StringComparer.Ordinal);
    byte[]?[]? _decodeBytes;                    // per id, when the decoder is ByteLevel alone; null entry: skipped

    BpeTokenizer(BpeModel model, PreTokenizer pre, Normalizer? normalizer, TokenDecoder? decoder, IEnumerable<AddedToken> added,
        string? eosToken, string? bosToken, RawSections? raw)
    {
        _model = model;
        _pre = pre;
        _normalizer = normalizer;
        _decoder = decoder;
        _raw = raw;
        foreach (var t in added) _added.Add(t);
        _spaceMarker = FindSpaceMarker(normalizer, pre);
        RebuildTables();
        EosId = Find(eosToken, EosNames);
        BosId = Find(bosToken, BosNames);
    }

    int Find(string? explicitName, string[] names)
    {
        if (explicitName != null)
            return TokenToId(explicitName) ?? throw new ArgumentException($"special token '{explicitName}' is not in the vocabulary");
        foreach (var n in names)
            if (_added.TryGet(n, out var t)) return t.Id;
        return -1;
    }

    static char? FindSpaceMarker(Normalizer? normalizer, PreTokenizer pre)
    {
        foreach (var step in pre.Steps)
            if (step is PreTokenizer.MetaspaceStep m) return m.Replacement;
        IReadOnlyList<Normalizer> items = normalizer is SequenceNormalizer s ? s.Items : normalizer != null ? [normalizer] : [];
        foreach (var n in items)
            if (n is ReplaceNormalizer { Literal: " ", Content.Length: 1 } r) return r.Content[0];
        return null;
    }

    public int VocabSize { get; private set; }
    public int EosId { get; }
    public int BosId { get; }
    public int MergeCount => _model.Merges.Count;
    public IReadOnlyList<AddedToken> AddedTokens => _added.Tokens;

    /// <summary>The unknown token's id, or -1 (byte-level models have none).</summary>
    public int UnkId => _model.UnkId;

    /// <summary>True for byte-level BPE (GPT-2 byte table); false for SentencePiece-style character BPE.</summary>
    public bool IsByteLevel => _model.IsByteLevel;

    /// <summary>True when characters outside the vocabulary become &lt;0xNN&gt; byte tokens.</summary>
    public bool ByteFallback => _model.ByteFallback;

    /// <summary>The token string of an id as tokenizer.json spells it (added token content, or the model token), or null.</summary>
    public string? IdToToken(int id) => _added.TryGet(id, out var t) ? t.Content : _model.IdToToken(id);

    /// <summary>The merges in rank order, as token strings.</summary>
    public IEnumerable<(string Left, string Right)> Merges => _model.Merges.Select(m => (_model.IdToToken(m.A)!, _model.IdToToken(m.B)!));

    /// <summary>Id of a token: an added token by content, else a model token by its byte-level spelling of the text, else as written.</summary>
    public int? TokenToId(string token)
    {
        if (_added.TryGet(token, out var t)) return t.Id;
        if (_model.IsByteLevel && _model.Vocab.TryGetValue(ByteLevel.Encode(Encoding.UTF8.GetBytes(token)), out int id)) return id;
        return _model.Vocab.TryGetValue(token, out id) ? id : null;
    }

    void RebuildTables()
    {
        int max = _model.IdCount - 1;
        foreach (var t in _added.Tokens) max = Math.Max(max, t.Id);
        VocabSize = max + 1;
        _added.Rebuild(_normalizer);
        _specialContents = new HashSet<string>(_added.Tokens.Where(t => t.Special).Select(t => t.Content), StringComparer.Ordinal);
        _decodeBytes = null;
        if (_decoder is ByteLevelDecoder)
        {
            var bytes = new byte[]?[VocabSize];
            for (int id = 0; id < VocabSize; id++)
            {
                string? tok = TokenForDecode(id);
                bytes[id] = tok == null ? null : ByteLevelDecoder.TokenBytes(tok);
            }
            _decodeBytes = bytes;
        }
    }

    /// <summary>The token string Hugging Face hands the decoder for an id (skip_special_tokens = true), or null when skipped.</summary>
    string? TokenForDecode(int id)
    {
        string? tok = _added.TryGet(id, out var t) ? _added.DecodeForm(t) : _model.IdToToken(id);
        return tok == null || _specialContents.Contains(tok) ? null : tok;
    }

    // ---------------------------------------------------------------- encode / decode

    /// <summary>Per-thread lists for one Encode call (the outer split, the normalized split, the pieces).</summary>
    sealed class EncodeScratch
    {
        [ThreadStatic] static EncodeScratch? t_current;
        public readonly List<(int Start, int End, int Id)> Raw = [], Normalized = [];
        public readonly List<(int Start, int Length)> Pieces = [];
        public readonly List<int> Ids = [];
        public static EncodeScratch Get() => t_current ??= new EncodeScratch();
    }

    /// <summary>The tokenizer.json this tokenizer was loaded from (null when trained or built in memory).</summary>
    public string? SourcePath { get; private set; }

    /// <summary>
    /// A regex of the file ran past <see cref="PreTokenizer.MatchTimeout"/> on a text of <paramref name="inputChars"/>
    /// characters (.NET reports an empty input for span matches, so the caller gives the length). On a long text the
    /// input is the likely cause (a line of megabytes), on a short one the pattern (catastrophic backtracking).
    /// </summary>
    InvalidDataException RegexTimeout(RegexMatchTimeoutException e, long inputChars)
    {
        string limit = $"{e.MatchTimeout.TotalSeconds:0.#} s";
        return inputChars > LongInputChars
            ? new($"{SourcePath ?? "tokenizer"}: pre-tokenizing a text of {inputChars:N0} characters ran past the {limit} regex match limit: " +
                $"the input is too long for one match (one very long line or document), not a fault of the pattern; break the text into lines of at most {TextDecoding.MaxLineBytes:N0} bytes", e)
            : new($"{SourcePath ?? "tokenizer"}: regex '{e.Pattern}' ran past its {limit} match limit on a {inputChars:N0}-character input " +
                "(catastrophic backtracking): fix the pattern in the tokenizer.json", e);
    }

    /// <summary>Above this many characters a regex time-out is blamed on the input's length rather than the pattern.</summary>
    const int LongInputChars = 1 << 20;

    public int[] Encode(string text)
    {
        try { return EncodeCore(text); }
        catch (RegexMatchTimeoutException e) { throw RegexTimeout(e, text.Length); }
    }

    int[] EncodeCore(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var scratch = EncodeScratch.Get();
        var ids = scratch.Ids;
        ids.Clear();
        if (!_added.HasRaw) EncodeSegment(text, 0, text.Length, ids, scratch);
        else
        {
            _added.FindMatches(text, normalized: false, scratch.Raw);
            foreach (var (s, e, id) in scratch.Raw)
            {
                if (id >= 0) ids.Add(id);
                else EncodeSegment(text, s, e - s, ids, scratch);
            }
        }
        int[] result = [.. ids];
        if (ids.Capacity > 1 << 20) { ids.Clear(); ids.Capacity = 1 << 16; }   // do not keep a huge document's buffer per thread
        return result;
    }

    /// <summary>A stretch between raw-matched added tokens: normalize, split out normalized added tokens, pre-tokenize, BPE.</summary>
    void EncodeSegment(string text, int start, int length, List<int> ids, EncodeScratch scratch)
    {
        if (length == 0) return;
        bool atStart = start == 0;
        if (_normalizer == null && !_added.HasNormalized)
        {
            EncodePieces(text.AsSpan(start, length), atStart, ids, scratch);
            return;
        }
        string norm = text.Substring(start, length);
        if (_normalizer != null) norm = _normalizer.Normalize(norm);
        if (!_added.HasNormalized) { EncodePieces(norm, atStart, ids, scratch); return; }
        _added.FindMatches(norm, normalized: true, scratch.Normalized);
        foreach (var (s, e, id) in scratch.Normalized)
        {
            if (id >= 0) ids.Add(id);
            else if (e > s) EncodePieces(norm.AsSpan(s, e - s), atStart && s == 0, ids, scratch);
        }
    }

    void EncodePieces(ReadOnlySpan<char> text, bool atStart, List<int> ids, EncodeScratch scratch)
    {
        var pieces = scratch.Pieces;
        var src = _pre.Split(text, atStart, pieces);
        foreach (var (s, l) in pieces) _model.Tokenize(src.Slice(s, l), ids);
    }

    /// <summary>Hugging Face's decode(ids, skip_special_tokens = true); an id outside the vocabulary is an error.</summary>
    public string Decode(ReadOnlySpan<int> ids)
    {
        try { return CleanUpTokenizationSpaces ? CleanUpSpaces(DecodeCore(ids)) : DecodeCore(ids); }
        catch (RegexMatchTimeoutException e) { throw RegexTimeout(e, e.Input.Length); }
    }

    /// <summary>
    /// tokenizer_config.json's clean_up_tokenization_spaces (Llama 3 sets it): decoded text loses the space before
    /// <c>? ! . ,</c>, around a lone <c>'</c>, and before <c>'s 'm 're 've</c> — as llama.cpp's detokenizer does
    /// (<see cref="CleanUpSpaces"/>). <see cref="TokenizerFiles"/> sets it from the file beside tokenizer.json.
    /// </summary>
    public bool CleanUpTokenizationSpaces { get; set; }

    /// <summary>
    /// llama.cpp's clean_spaces passes (llama_vocab::impl::detokenize), character for character: its rendition of
    /// transformers' clean_up_tokenization (which also joins " n't"; llama.cpp does not, and neither does this).
    /// </summary>
    public static string CleanUpSpaces(string decoded)
    {
        var t = decoded.ToCharArray();
        int total = t.Length;
        // first pass: " ?", " !", " .", " ,"
        int n = total; total = n > 0 ? 1 : 0;
        for (int i = 1; i < n; i++)
        {
            char x = t[i];
            if (t[i - 1] == ' ' && x is '?' or '!' or '.' or ',') total--;
            t[total++] = x;
        }
        // second pass: " ' " -> "'"
        n = total; total = n > 0 ? 1 : 0;
        for (int i = 1; i < n; i++)
        {
            char x = t[i];
            if (x == '\'' && i + 1 < n && t[i - 1] == ' ' && t[i + 1] == ' ') { total--; t[++i] = '\0'; }
            t[total++] = x;
        }
        // third pass: " 's", " 'm", " 're", " 've"
        n = total; total = n > 0 ? 1 : 0;
        for (int i = 1; i < n; i++)
        {
            char x = t[i];
            if (t[i - 1] == ' ' && x == '\'' && i + 1 < n)
            {
                char x1 = t[i + 1];
                if (x1 is 's' or 'm') total--;
                else if (x1 is not ('t' or 'd') && i + 2 < n && ((x1 == 'r' && t[i + 2] == 'e') || (x1 == 'v' && t[i + 2] == 'e'))) total--;
            }
            t[total++] = x;
        }
        return new string(t, 0, total);
    }

    string DecodeCore(ReadOnlySpan<int> ids)
    {
        foreach (int id in ids)
            if ((uint)id >= (uint)VocabSize) throw new ArgumentOutOfRangeException(nameof(ids), id, $"token id outside the vocabulary (size {VocabSize})");
        if (_decodeBytes != null)
        {
            var bytes = new List<byte>(ids.Length * 4);
            foreach (int id in ids)
                if (_decodeBytes[id] is { } b) bytes.AddRange(b);
            return Encoding.UTF8.GetString(bytes.ToArray());
        }
        var tokens = new List<string>(ids.Length);
        foreach (int id in ids)
            if (TokenForDecode(id) is { } tok) tokens.Add(tok);
        return _decoder == null ? string.Join(" ", tokens) : _decoder.Decode(tokens);
    }

    // ---------------------------------------------------------------- vocabulary expansion

    /// <summary>
    /// Vocabulary expansion (XuanYuan-style: domain terms, Chinese characters and words). Returns the id of each token,
    /// in order; a token already present keeps its id, and no existing id changes. The embedding matrix must be resized
    /// to <see cref="VocabSize"/> by the model side.
    /// <list type="bullet">
    /// <item>Special tokens, and every token of a byte-level tokenizer, become added tokens (as Hugging Face's
    /// <c>add_tokens</c>): matched in the text before pre-tokenization, always one id; a token whose exact string is a
    /// model token takes that id, any other the next free id.</item>
    /// <item>A SentencePiece-style tokenizer grows its model instead, as XuanYuan and Chinese-LLaMA grew Llama's: a
    /// character becomes a base symbol (always one id, where it fell back to bytes before); a longer term becomes a
    /// token reached by merges appended after the existing ones (its characters first, then each prefix of it),
    /// so it is one id wherever BPE reaches it — neighbours merged earlier can still split it, as in SentencePiece.
    /// (Added tokens would break there: each stretch after one gets its own ▁ prefix.)</item>
    /// </list>
    /// </summary>
    public int[] AddTokens(IEnumerable<string> tokens, bool special = false)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        var list = tokens.ToList();
        if (list.Any(string.IsNullOrEmpty)) throw new ArgumentException("an added token is null or empty", nameof(tokens));
        var result = new List<int>(list.Count);
        foreach (var tok in list)
        {
            if (_added.TryGet(tok, out var existing)) { result.Add(existing.Id); continue; }
            if (special || _model.IsByteLevel)
            {
                // Hugging Face looks the content up in the model vocabulary as written (not its byte-level spelling).
                int id = _model.Vocab.TryGetValue(tok, out int v) ? v : VocabSize;
                _added.Add(new AddedToken(id, tok, special));
                if (id == VocabSize) VocabSize++;
                result.Add(id);
            }
            else result.Add(AddModelToken(tok));
        }
        RebuildTables();
        return [.. result];
    }

    int AddModelToken(string term)
    {
        string piece = _spaceMarker is char m ? term.Replace(' ', m) : term;
        if (_model.Vocab.TryGetValue(piece, out int known)) return known;
        MoveAddedTokensIntoModel();
        foreach (var rune in piece.EnumerateRunes())
        {
            string ch = rune.ToString();
            if (!_model.Vocab.ContainsKey(ch)) _model.AddToken(ch, NextId());
        }
        var parts = new List<int>();
        _model.Tokenize(piece, parts);
        int cur = parts[0];
        for (int i = 1; i < parts.Count; i++)
        {
            string joined = _model.IdToToken(cur) + _model.IdToToken(parts[i]);
            if (!_model.Vocab.TryGetValue(joined, out int id)) _model.AddToken(joined, id = NextId());
            if (!_model.HasMerge(cur, parts[i])) _model.AddMerge(cur, parts[i]);
            cur = id;
        }
        return cur;

        int NextId() => VocabSize++;
    }

    /// <summary>
    /// Before the model vocabulary grows past added tokens that live outside it (ids above the model's), those become
    /// model tokens too at their ids: Hugging Face numbers out-of-vocabulary added tokens from the model's size, so a
    /// grown model would otherwise shift them when the file is loaded there.
    /// </summary>
    void MoveAddedTokensIntoModel()
    {
        foreach (var t in _added.Tokens.OrderBy(t => t.Id))
            if (!_model.Vocab.ContainsKey(t.Content) && _model.IdToToken(t.Id) == null) _model.AddToken(t.Content, t.Id);
    }
}
