using System.Collections.Concurrent;
using System.Text;

namespace Engine.Data.Tokenization;

/// <summary>
/// The <c>model</c> of a BPE tokenizer.json: vocabulary, ranked merges, and how a piece of text becomes ids.
/// A piece starts as symbols — its UTF-8 bytes through GPT-2's byte table (<see cref="IsByteLevel"/>), or its Unicode
/// characters (SentencePiece style), where a character missing from the vocabulary becomes its <c>&lt;0xNN&gt;</c> byte
/// tokens (<c>byte_fallback</c>) or the unknown token (runs fused when <c>fuse_unk</c>) or, with neither, is dropped —
/// then adjacent symbols are merged, lowest rank first and leftmost on ties, exactly as Hugging Face's <c>Word::merge_all</c>.
/// With <c>ignore_merges</c> a piece that is itself a vocabulary token is that token (Llama 3).
/// Thread-safe for encoding; pieces of up to <see cref="CacheMaxChars"/> characters are cached.
/// </summary>
internal sealed class BpeModel
{
    public const int CacheMaxChars = 32;   // longer pieces (Han runs) rarely repeat: caching them made cold and warm encoding slower (measured 12-64)
    const int MaxCacheEntries = 1 << 20;
    const int SmallPiece = 16;
    /// <summary>Unused ids tolerated in model.vocab beyond its entry count (the id table is sized by the largest id).</summary>
    public const int MaxIdGap = 65536;   // up to this many symbols: array scan, beyond it a heap (16-64 measured alike)

    public Dictionary<string, int> Vocab { get; }
    public List<(int A, int B)> Merges { get; }
    public bool IsByteLevel { get; }
    public bool ByteFallback { get; }
    public bool FuseUnk { get; }
    public bool IgnoreMerges { get; }
    public string? UnkToken { get; }
    public int UnkId { get; } = -1;

    readonly MergeTable _table;
    readonly int[] _byteIds = new int[256];     // byte-level: the byte's character token; otherwise <0xNN> or -1
    readonly int[] _charIds = new int[65536];   // character models: BMP character → id or -1
    readonly Dictionary<int, int> _runeIds = []; // character models: supplementary code point → id
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocabLookup;
    string?[] _tokens;                          // id → model token (null where the id is not a model token)
    readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    int _cacheCount;

    public BpeModel(Dictionary<string, int> vocab, List<(int A, int B)> merges, bool byteLevel, string? unkToken, bool byteFallback, bool fuseUnk, bool ignoreMerges)
    {
        Vocab = vocab;
        Merges = merges;
        IsByteLevel = byteLevel;
        UnkToken = unkToken;
        ByteFallback = byteFallback;
        FuseUnk = fuseUnk;
        IgnoreMerges = ignoreMerges;
        _vocabLookup = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        int max = -1;
        foreach (var (tok, id) in vocab)
        {
            if (id < 0) throw new InvalidDataException($"vocabulary id {id} of '{tok}' is negative");
            // ids may leave gaps, but the id table is allocated up to the largest: bound it by the entries the file holds
            if (id >= (long)vocab.Count + MaxIdGap)
                throw new InvalidDataException($"vocabulary id {id} of '{tok}' is far beyond the vocabulary's {vocab.Count} entries (ids must be below entries + {MaxIdGap})");
            max = Math.Max(max, id);
        }
        _tokens = new string?[max + 1];
        foreach (var (tok, id) in vocab)
        {
            if (_tokens[id] != null) throw new InvalidDataException($"vocabulary id {id} is used by both '{_tokens[id]}' and '{tok}'");
            _tokens[id] = tok;
        }
        if (unkToken != null)
            UnkId = vocab.TryGetValue(unkToken, out int u) ? u : throw new InvalidDataException($"model.unk_token '{unkToken}' is not in the vocabulary");
        Array.Fill(_charIds, -1);
        for (int b = 0; b < 256; b++)
        {
            if (byteLevel)
            {
                string s = ByteLevel.Char((byte)b).ToString();
                if (!vocab.TryGetValue(s, out _byteIds[b])) throw new InvalidDataException($"byte-level vocabulary lacks the token for byte 0x{b:X2} ('{s}')");
            }
            else _byteIds[b] = byteFallback && vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        }
        if (!byteLevel)
            foreach (var (tok, id) in vocab) IndexCharacter(tok, id);
        _table = new MergeTable(merges.Count);
        for (int r = 0; r < merges.Count; r++)
        {
            var (a, b) = merges[r];
            string merged = _tokens[a] + _tokens[b];
            if (!vocab.TryGetValue(merged, out int id)) throw new InvalidDataException($"merge {r} ('{_tokens[a]}' '{_tokens[b]}') makes '{merged}', which is not in the vocabulary");
            _table.Set(a, b, r, id);
        }
    }

    void IndexCharacter(string tok, int id)
    {
        if (tok.Length == 1 && !char.IsSurrogate(tok[0])) _charIds[tok[0]] = id;
        else if (tok.Length == 2 && char.IsSurrogatePair(tok[0], tok[1])) _runeIds[char.ConvertToUtf32(tok[0], tok[1])] = id;
    }

    /// <summary>Ids are 0..Count-1 with possible gaps (ids held by added tokens only).</summary>
    public int IdCount => _tokens.Length;

    public string? IdToToken(int id) => (uint)id < (uint)_tokens.Length ? _tokens[id] : null;

    public bool TryGetId(ReadOnlySpan<char> token, out int id) => _vocabLookup.TryGetValue(token, out id);

    // ---------------------------------------------------------------- encoding

    /// <summary>Appends the ids of one pre-tokenized piece.</summary>
    public void Tokenize(ReadOnlySpan<char> piece, List<int> ids)
    {
        if (piece.IsEmpty) return;
        bool cacheable = piece.Length <= CacheMaxChars;
        if (cacheable)
        {
            var lookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
            if (lookup.TryGetValue(piece, out var hit)) { ids.AddRange(hit); return; }
            var result = TokenizeUncached(piece);
            // (ConcurrentDictionary.Count takes every lock: keep a count of our own)
            if (_cacheCount < MaxCacheEntries && lookup.TryAdd(piece, result)) Interlocked.Increment(ref _cacheCount);
            ids.AddRange(result);
            return;
        }
        var s = Scratch.Get(piece.Length);
        if (IgnoreMerges && WholePiece(piece, s, out int whole)) { ids.Add(whole); return; }
        int n = Merge(s, Symbols(piece, s));
        ids.AddRange(s.Sym.AsSpan(0, n));
    }

    int[] TokenizeUncached(ReadOnlySpan<char> piece)
    {
        var s = Scratch.Get(piece.Length);
        if (IgnoreMerges && WholePiece(piece, s, out int whole)) return [whole];
        int n = Symbols(piece, s);
        n = Merge(s, n);
        return s.Sym.AsSpan(0, n).ToArray();
    }

    /// <summary>ignore_merges: the piece as one vocabulary token (its byte-level spelling for byte-level models).</summary>
    bool WholePiece(ReadOnlySpan<char> piece, Scratch s, out int id)
    {
        if (!IsByteLevel) return _vocabLookup.TryGetValue(piece, out id);
        int nb = Encoding.UTF8.GetBytes(piece, s.Bytes);
        var chars = s.Chars.AsSpan(0, nb);
        for (int i = 0; i < nb; i++) chars[i] = ByteLevel.Char(s.Bytes[i]);
        return _vocabLookup.TryGetValue(chars, out id);
    }

    /// <summary>The initial symbols of a piece into <c>s.Sym</c>; returns their count.</summary>
    int Symbols(ReadOnlySpan<char> piece, Scratch s)
    {
        var sym = s.Sym;
        if (IsByteLevel)
        {
            int nb = Encoding.UTF8.GetBytes(piece, s.Bytes);
            var bytes = s.Bytes;
            for (int i = 0; i < nb; i++) sym[i] = _byteIds[bytes[i]];
            return nb;
        }
        int n = 0;
        bool pendingUnk = false;
        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i < piece.Length; i++)
        {
            char c = piece[i];
            int id;
            int rune;
            if (!char.IsSurrogate(c)) { id = _charIds[c]; rune = c; }
            else if (char.IsHighSurrogate(c) && i + 1 < piece.Length && char.IsLowSurrogate(piece[i + 1]))
            {
                rune = char.ConvertToUtf32(c, piece[++i]);
                id = _runeIds.GetValueOrDefault(rune, -1);
            }
            else { rune = 0xFFFD; id = _charIds[0xFFFD]; }   // a lone surrogate reads as U+FFFD, as in UTF-8
            if (id >= 0)
            {
                if (pendingUnk) { sym[n++] = UnkId; pendingUnk = false; }
                sym[n++] = id;
                continue;
            }
            if (ByteFallback)
            {
                int nb = new Rune(rune).EncodeToUtf8(utf8);
                bool all = true;
                for (int k = 0; k < nb; k++) all &= _byteIds[utf8[k]] >= 0;
                if (all)
                {
                    // As Hugging Face: byte tokens go out at once, a pending unknown token only later.
                    for (int k = 0; k < nb; k++) sym[n++] = _byteIds[utf8[k]];
                    continue;
                }
            }
            if (UnkId >= 0)
            {
                if (pendingUnk && !FuseUnk) sym[n++] = UnkId;
                pendingUnk = true;
            }
        }
        if (pendingUnk) sym[n++] = UnkId;
        return n;
    }

    /// <summary>Merges <c>s.Sym[0..n)</c> in place; returns the new count.</summary>
    int Merge(Scratch s, int n)
    {
        if (n < 2) return n;
        return n <= SmallPiece ? MergeSmall(s.Sym, n) : MergeHeap(s, n);
    }

    /// <summary>Words: the rank of each adjacent pair in an array, the lowest found by a scan, the pair removed by a shift.</summary>
    int MergeSmall(int[] symArray, int n)
    {
        var sym = symArray.AsSpan(0, n);
        Span<int> rank = stackalloc int[n - 1];
        Span<int> merged = stackalloc int[n - 1];
        for (int i = 0; i < n - 1; i++)
            rank[i] = _table.TryGet(sym[i], sym[i + 1], out int r, out merged[i]) ? r : int.MaxValue;
        int len = n;
        while (len > 1)
        {
            int best = -1, br = int.MaxValue;
            for (int i = 0; i < len - 1; i++)
                if (rank[i] < br) { br = rank[i]; best = i; }
            if (best < 0) break;
            sym[best] = merged[best];
            int tail = len - best - 2;                 // symbols after best + 1
            if (tail > 0) sym.Slice(best + 2, tail).CopyTo(sym.Slice(best + 1));
            if (tail > 1)
            {
                rank.Slice(best + 2, tail - 1).CopyTo(rank.Slice(best + 1));
                merged.Slice(best + 2, tail - 1).CopyTo(merged.Slice(best + 1));
            }
            len--;
            if (best < len - 1) rank[best] = _table.TryGet(sym[best], sym[best + 1], out int r1, out merged[best]) ? r1 : int.MaxValue;
            if (best > 0) rank[best - 1] = _table.TryGet(sym[best - 1], sym[best], out int r0, out merged[best - 1]) ? r0 : int.MaxValue;
        }
        return len;
    }

    /// <summary>
    /// Long pieces (Han runs, whole SentencePiece segments): symbols in a linked list, candidate merges in a binary
    /// min-heap keyed (rank, position) with lazy invalidation — O(n log n).
    /// </summary>
    int MergeHeap(Scratch s, int n)
    {
        var sym = s.Sym; var nxt = s.Next; var prv = s.Prev; var rank = s.Rank; var merged = s.Merged;
        var heap = new MinHeap(s.Heap);
        for (int i = 0; i < n; i++) { nxt[i] = i + 1; prv[i] = i - 1; }
        for (int i = 0; i < n; i++) SetRank(i, ref heap);
        int count = n;
        while (count > 1 && heap.Count > 0)
        {
            long key = heap.Pop();
            int best = (int)(uint)key;
            // stale entry: the symbol was absorbed (rank -1), or its pair changed since it was queued
            if (rank[best] != (int)(key >> 32)) continue;
            int j = nxt[best];
            sym[best] = merged[best];
            rank[j] = -1;
            nxt[best] = nxt[j];
            if (nxt[j] < n) prv[nxt[j]] = best;
            count--;
            SetRank(best, ref heap);
            if (prv[best] >= 0) SetRank(prv[best], ref heap);
        }
        s.Heap = heap.Buffer;
        int k = 0;
        for (int i = 0; i < n; i = nxt[i]) sym[k++] = sym[i];
        return k;

        void SetRank(int i, ref MinHeap h)
        {
            int j = nxt[i];
            if (j < n && _table.TryGet(sym[i], sym[j], out int r, out merged[i]))
            {
                rank[i] = r;
                h.Push(((long)r << 32) | (uint)i);
            }
            else rank[i] = int.MaxValue;
        }
    }

    struct MinHeap(long[] buffer)
    {
        public long[] Buffer = buffer;
        public int Count;

        public void Push(long v)
        {
            if (Count == Buffer.Length) Array.Resize(ref Buffer, Buffer.Length * 2);
            int i = Count++;
            while (i > 0)
            {
                int p = (i - 1) >> 1;
                if (Buffer[p] <= v) break;
                Buffer[i] = Buffer[p];
                i = p;
            }
            Buffer[i] = v;
        }

        public long Pop()
        {
            long top = Buffer[0];
            long v = Buffer[--Count];
            int i = 0;
            while (true)
            {
                int c = 2 * i + 1;
                if (c >= Count) break;
                if (c + 1 < Count && Buffer[c + 1] < Buffer[c]) c++;
                if (Buffer[c] >= v) break;
                Buffer[i] = Buffer[c];
                i = c;
            }
            if (Count > 0) Buffer[i] = v;
            return top;
        }
    }

    /// <summary>Per-thread work arrays, grown to the longest piece seen.</summary>
    sealed class Scratch
    {
        [ThreadStatic] static Scratch? t_current;
        public int[] Sym = [], Next = [], Prev = [], Rank = [], Merged = [];
        public byte[] Bytes = [];
        public char[] Chars = [];
        public long[] Heap = new long[64];

        public static Scratch Get(int chars)
        {
            var s = t_current ??= new Scratch();
            int bytes = chars * 3 + 4;   // UTF-8 bytes of a UTF-16 span: at most 3 per char
            if (s.Bytes.Length < bytes)
            {
                int size = Math.Max(bytes, s.Bytes.Length * 2);
                s.Bytes = new byte[size];
                s.Chars = new char[size];
                s.Sym = new int[size];
                s.Next = new int[size];
                s.Prev = new int[size];
                s.Rank = new int[size];
                s.Merged = new int[size];
            }
            return s;
        }
    }

    // ---------------------------------------------------------------- vocabulary expansion

    /// <summary>Adds a model token with the given id (not yet used by the model); characters become base symbols.</summary>
    public void AddToken(string token, int id)
    {
        if (Vocab.ContainsKey(token)) throw new InvalidOperationException($"'{token}' is already in the vocabulary");
        if (id < _tokens.Length && _tokens[id] != null) throw new InvalidOperationException($"id {id} is already a model token");
        if (id >= _tokens.Length) Array.Resize(ref _tokens, id + 1);
        _tokens[id] = token;
        Vocab[token] = id;
        if (!IsByteLevel) IndexCharacter(token, id);
        ClearCache();
    }

    /// <summary>Appends a merge (lowest priority); the merged token must already be in the vocabulary.</summary>
    public void AddMerge(int a, int b)
    {
        string merged = _tokens[a] + _tokens[b];
        if (!Vocab.TryGetValue(merged, out int id)) throw new InvalidOperationException($"merge makes '{merged}', which is not in the vocabulary");
        _table.Set(a, b, Merges.Count, id);
        Merges.Add((a, b));
        ClearCache();
    }

    void ClearCache()
    {
        _cache.Clear();
        _cacheCount = 0;
    }

    public bool HasMerge(int a, int b) => _table.TryGet(a, b, out _, out _);

    public ReadOnlySpan<string?> TokensSpan => _tokens;
}
