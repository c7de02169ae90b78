using System.Collections.Concurrent;
using System.Text;
using System.Text.Json;
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

/// <summary>A token matched in the text before pre-tokenization (special tokens and vocabulary-expansion tokens).</summary>
public sealed record AddedToken(int Id, string Content, bool Special);

/// <summary>
/// Byte-level BPE (GPT-2 family): text is split by a regex pre-tokenizer, each piece's UTF-8 bytes start as 256
/// byte tokens and are merged by rank. The default pattern splits digits into single digits (as Baichuan 2 does)
/// and keeps runs of Han characters apart from Latin words; byte-level bases mean Chinese never needs a token per
/// character (frequent characters and words are learned as merges, capped by <see cref="BpeTrainOptions.MaxTokenBytes"/>).
/// Saves and loads Hugging Face tokenizer.json (model BPE with a ByteLevel pre-tokenizer or decoder).
/// Encoding is thread-safe and caches piece → ids.
/// </summary>
public sealed class BpeTokenizer : ITokenizer
{
    /// <summary>
    /// English contractions; Han runs; letter runs with one optional leading non-letter (space or punctuation);
    /// single digits; punctuation runs; newlines; other whitespace. Valid in .NET and Oniguruma (HF tokenizers).
    /// </summary>
    public const string DefaultPattern =
        @"'(?i:[sdmt]|ll|ve|re)|[\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF]+|[^\r\n\p{L}\p{N}]?(?:(?![\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF])[\p{L}\p{M}])+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    static readonly string[] EosNames = ["<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "<|eot_id|>"];
    static readonly string[] BosNames = ["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"];
    const int MaxCacheEntries = 1 << 20;

    readonly Dictionary<string, int> _vocab;                 // model tokens (byte-level strings) → id
    readonly List<(int A, int B)> _mergeList;                // in rank order
    readonly Dictionary<long, (int Rank, int Id)> _merges;   // (a, b) → rank and merged id
    readonly int[] _byteIds = new int[256];
    readonly PreTokenizer _pre;
    readonly string? _normalizer;                             // null, or a form name applied with string.Normalize / lower-casing
    readonly List<AddedToken> _added = [];
    readonly Dictionary<int, AddedToken> _addedById = [];
    readonly Dictionary<string, AddedToken> _addedByContent = new(StringComparer.Ordinal);
    AddedTrie _trie = new([]);
    byte[]?[] _idBytes = [];
    readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);

    BpeTokenizer(Dictionary<string, int> vocab, List<(int, int)> merges, PreTokenizer pre, string? normalizer, IEnumerable<AddedToken> added, string? eosToken, string? bosToken)
    {
        _vocab = vocab;
        _mergeList = merges;
        _pre = pre;
        _normalizer = normalizer;
        _merges = new Dictionary<long, (int, int)>(merges.Count);
        var idToToken = new Dictionary<int, string>(vocab.Count);
        foreach (var (tok, id) in vocab)
        {
            if (id < 0) throw new InvalidDataException($"vocabulary id {id} of '{tok}' is negative");
            if (!idToToken.TryAdd(id, tok)) throw new InvalidDataException($"vocabulary id {id} is used by both '{idToToken[id]}' and '{tok}'");
        }
        for (int b = 0; b < 256; b++)
        {
            string s = ByteLevel.Char((byte)b).ToString();
            if (!vocab.TryGetValue(s, out _byteIds[b])) throw new InvalidDataException($"byte-level vocabulary lacks the token for byte 0x{b:X2} ('{s}')");
        }
        for (int r = 0; r < merges.Count; r++)
        {
            var (a, b) = merges[r];
            string merged = idToToken[a] + idToToken[b];
            if (!vocab.TryGetValue(merged, out int id)) throw new InvalidDataException($"merge {r} ('{idToToken[a]}' '{idToToken[b]}') makes '{merged}', which is not in the vocabulary");
            _merges.TryAdd(Key(a, b), (r, id));
        }
        foreach (var t in added) Register(t);
        RebuildTables(idToToken);
        EosId = Find(eosToken, EosNames);
        BosId = Find(bosToken, BosNames);
    }

    int Find(string? explicitName, string[] names)
    {
        if (explicitName != null)
            return TokenToId(explicitName) ?? throw new ArgumentException($"special token '{explicitName}' is not in the vocabulary");
        foreach (var n in names)
            if (_addedByContent.TryGetValue(n, out var t)) return t.Id;
        return -1;
    }

    static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    public int VocabSize { get; private set; }
    public int EosId { get; }
    public int BosId { get; }
    public int MergeCount => _mergeList.Count;
    public IReadOnlyList<AddedToken> AddedTokens => _added;

    /// <summary>Id of a token: an added token by content, else a model token by its byte-level spelling of the text.</summary>
    public int? TokenToId(string token)
    {
        if (_addedByContent.TryGetValue(token, out var t)) return t.Id;
        if (_vocab.TryGetValue(ByteLevel.Encode(Encoding.UTF8.GetBytes(token)), out int id)) return id;
        return _vocab.TryGetValue(token, out id) ? id : null;
    }

    void Register(AddedToken t)
    {
        if (string.IsNullOrEmpty(t.Content)) throw new InvalidDataException($"added token {t.Id} has empty content");
        if (_addedByContent.ContainsKey(t.Content)) return;
        _added.Add(t);
        _addedById[t.Id] = t;
        _addedByContent[t.Content] = t;
    }

    void RebuildTables(Dictionary<int, string>? idToToken = null)
    {
        idToToken ??= _vocab.ToDictionary(kv => kv.Value, kv => kv.Key);
        int max = -1;
        foreach (var id in idToToken.Keys) max = Math.Max(max, id);
        foreach (var t in _added) max = Math.Max(max, t.Id);
        VocabSize = max + 1;
        var bytes = new byte[]?[VocabSize];
        foreach (var (id, tok) in idToToken)
            bytes[id] = ByteLevel.TryDecode(tok, out var b) ? b : Encoding.UTF8.GetBytes(tok);
        foreach (var t in _added) bytes[t.Id] = t.Special ? null : Encoding.UTF8.GetBytes(t.Content);
        _idBytes = bytes;
        _trie = new AddedTrie(_added);
    }

    // ---------------------------------------------------------------- encode / decode

    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (_normalizer != null) text = Normalize(text, _normalizer);
        var ids = new List<int>(text.Length / 3 + 4);
        int pos = 0;
        if (_added.Count > 0)
        {
            for (int i = 0; i < text.Length;)
            {
                var m = _trie.Match(text, i);
                if (m == null) { i++; continue; }
                if (i > pos) EncodeOrdinary(text.AsSpan(pos, i - pos), ids, pos == 0);
                ids.Add(m.Id);
                i += m.Content.Length;
                pos = i;
            }
        }
        if (pos < text.Length) EncodeOrdinary(text.AsSpan(pos), ids, pos == 0);
        return [.. ids];
    }

    void EncodeOrdinary(ReadOnlySpan<char> text, List<int> ids, bool atStart)
    {
        if (_pre.AddPrefixSpace && atStart && text.Length > 0 && text[0] != ' ')
        {
            text = (" " + text.ToString()).AsSpan();
        }
        var pieces = new List<(int Start, int Length)>();
        _pre.Split(text, pieces);
        var lookup = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
        foreach (var (s, l) in pieces)
        {
            var piece = text.Slice(s, l);
            if (!lookup.TryGetValue(piece, out var cached))
            {
                cached = Bpe(piece);
                if (_cache.Count < MaxCacheEntries) lookup.TryAdd(piece, cached);
            }
            ids.AddRange(cached);
        }
    }

    /// <summary>
    /// Merges one piece: symbols in a linked list, the rank of each adjacent pair cached, candidate merges in a min-heap
    /// keyed (rank, position) with lazy invalidation — O(n log n) per piece, so long runs of Han characters (one piece)
    /// stay cheap. Lowest rank first, leftmost on ties — the same result as Hugging Face's BPE.
    /// </summary>
    int[] Bpe(ReadOnlySpan<char> piece)
    {
        int max = Encoding.UTF8.GetMaxByteCount(piece.Length);
        Span<byte> buf = max <= 512 ? stackalloc byte[max] : new byte[max];
        int n = Encoding.UTF8.GetBytes(piece, buf);
        var sym = new int[n];
        var nxt = new int[n];
        var prv = new int[n];
        var rank = new int[n];
        var merged = new int[n];
        var alive = new bool[n];
        var heap = new PriorityQueue<int, long>(n);
        for (int i = 0; i < n; i++) { sym[i] = _byteIds[buf[i]]; nxt[i] = i + 1; prv[i] = i - 1; alive[i] = true; }
        for (int i = 0; i < n; i++) SetRank(i);
        int count = n;
        while (count > 1 && heap.TryDequeue(out int best, out long key))
        {
            // stale entry: the symbol was absorbed, or its pair changed rank since it was queued
            if (!alive[best] || rank[best] != (int)(key >> 32)) continue;
            int j = nxt[best];
            sym[best] = merged[best];
            alive[j] = false;
            nxt[best] = nxt[j];
            if (nxt[j] < n) prv[nxt[j]] = best;
            count--;
            SetRank(best);
            if (prv[best] >= 0) SetRank(prv[best]);
        }
        var result = new int[count];
        for (int i = 0, k = 0; i < n; i = nxt[i]) result[k++] = sym[i];
        return result;

        void SetRank(int i)
        {
            int j = nxt[i];
            if (j < n && _merges.TryGetValue(Key(sym[i], sym[j]), out var m))
            {
                rank[i] = m.Rank;
                merged[i] = m.Id;
                heap.Enqueue(i, ((long)m.Rank << 32) | (uint)i);
            }
            else rank[i] = int.MaxValue;
        }
    }

    public string Decode(ReadOnlySpan<int> ids)
    {
        var bytes = new List<byte>(ids.Length * 4);
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)_idBytes.Length) throw new ArgumentOutOfRangeException(nameof(ids), id, $"token id outside the vocabulary (size {VocabSize})");
            if (_addedById.TryGetValue(id, out var t) && t.Special) continue;
            var b = _idBytes[id];
            if (b != null) bytes.AddRange(b);
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    static string Normalize(string text, string form) => form switch
    {
        "NFC" => text.Normalize(NormalizationForm.FormC),
        "NFKC" => text.Normalize(NormalizationForm.FormKC),
        "NFD" => text.Normalize(NormalizationForm.FormD),
        "NFKD" => text.Normalize(NormalizationForm.FormKD),
        "Lowercase" => text.ToLowerInvariant(),
        _ => text.Normalize(NormalizationForm.FormC),
    };

    // ---------------------------------------------------------------- vocabulary expansion

    /// <summary>
    /// Vocabulary expansion (XuanYuan-style: domain terms, Chinese characters and words): each token is matched in the
    /// text before pre-tokenization and always encodes to one id. A token already added keeps its id; one the model
    /// vocabulary already spells gets that id; every other token gets the next free id. Returns the id of each token,
    /// in order. The embedding matrix must be resized to <see cref="VocabSize"/> by the model side.
    /// </summary>
    public int[] AddTokens(IEnumerable<string> tokens, bool special = false)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        var result = new List<int>();
        foreach (var tok in tokens)
        {
            if (string.IsNullOrEmpty(tok)) throw new ArgumentException("an added token is null or empty", nameof(tokens));
            if (_addedByContent.TryGetValue(tok, out var existing)) { result.Add(existing.Id); continue; }
            int id = _vocab.TryGetValue(ByteLevel.Encode(Encoding.UTF8.GetBytes(tok)), out int v) ? v : VocabSize;
            Register(new AddedToken(id, tok, special));
            if (id == VocabSize) VocabSize++;
            result.Add(id);
        }
        RebuildTables();
        return [.. result];
    }

    // ---------------------------------------------------------------- training

    /// <summary>
    /// Trains on <paramref name="corpus"/>: pieces are counted once (in parallel), then merges are chosen with an
    /// incremental pair index — pair counts, the words each pair occurs in, and a max-priority queue with lazy
    /// updates — so each merge touches only the words that contain its pair. Ties break on the smaller pair ids.
    /// </summary>
    public static BpeTokenizer Train(IEnumerable<string> corpus, BpeTrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(corpus);
        ArgumentNullException.ThrowIfNull(options);
        var specials = options.SpecialTokens ?? [];
        if (specials.Any(string.IsNullOrEmpty)) throw new ArgumentException("special tokens must be non-empty", nameof(options));
        if (options.VocabSize < 256 + specials.Count)
            throw new ArgumentOutOfRangeException(nameof(options), options.VocabSize, $"VocabSize must be at least 256 + {specials.Count} special tokens");
        if (options.MinFrequency < 1) throw new ArgumentOutOfRangeException(nameof(options), options.MinFrequency, "MinFrequency must be >= 1");
        if (options.MaxTokenBytes < 2) throw new ArgumentOutOfRangeException(nameof(options), options.MaxTokenBytes, "MaxTokenBytes must be >= 2");
        string pattern = options.Pattern ?? DefaultPattern;
        var pre = DefaultPre(pattern);

        var counts = CountPieces(corpus, pre);
        var merges = BpeTrainer.Learn(counts, options.VocabSize - 256 - specials.Count, options.MinFrequency, options.MaxTokenBytes);

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        var tokenBytes = new List<byte[]>();
        for (int b = 0; b < 256; b++) { vocab[ByteLevel.Char((byte)b).ToString()] = b; tokenBytes.Add([(byte)b]); }
        var mergeIds = new List<(int, int)>(merges.Count);
        foreach (var (a, b) in merges)
        {
            byte[] nb = [.. tokenBytes[a], .. tokenBytes[b]];
            vocab[ByteLevel.Encode(nb)] = tokenBytes.Count;
            tokenBytes.Add(nb);
            mergeIds.Add((a, b));
        }
        var added = new List<AddedToken>();
        foreach (var s in specials)
        {
            int id = vocab.Count;
            vocab[s] = id;
            added.Add(new AddedToken(id, s, true));
        }
        return new BpeTokenizer(vocab, mergeIds, pre, null, added, specials.Count > 0 ? specials[0] : null, null);
    }

    static PreTokenizer DefaultPre(string pattern) => new(
    [
        new PreTokenizer.SplitStep(PreTokenizer.Compile(pattern), pattern, true, false),
        new PreTokenizer.ByteLevelStep(false, false, null),
    ]);

    static Dictionary<string, long> CountPieces(IEnumerable<string> corpus, PreTokenizer pre)
    {
        var total = new Dictionary<string, long>(StringComparer.Ordinal);
        var gate = new object();
        Parallel.ForEach(corpus, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Environment.ProcessorCount) },
            () => new Dictionary<string, long>(StringComparer.Ordinal),
            (doc, _, local) =>
            {
                if (doc == null) return local;
                var pieces = new List<(int, int)>();
                pre.Split(doc, pieces);
                var lookup = local.GetAlternateLookup<ReadOnlySpan<char>>();
                foreach (var (s, l) in pieces)
                {
                    var span = doc.AsSpan(s, l);
                    if (lookup.TryGetValue(span, out long c)) lookup[span] = c + 1;
                    else lookup[span] = 1;
                }
                return local;
            },
            local =>
            {
                lock (gate)
                    foreach (var (k, v) in local) total[k] = total.GetValueOrDefault(k) + v;
            });
        return total;
    }

    // ---------------------------------------------------------------- tokenizer.json

    /// <summary>Writes Hugging Face tokenizer.json (model BPE, Split + ByteLevel pre-tokenizer, ByteLevel decoder).</summary>
    public void Save(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir != null) Directory.CreateDirectory(dir);
        var idToToken = _vocab.OrderBy(kv => kv.Value).ToList();
        var byId = _vocab.ToDictionary(kv => kv.Value, kv => kv.Key);
        using var stream = File.Create(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        w.WriteStartObject();
        w.WriteString("version", "1.0");
        w.WriteNull("truncation");
        w.WriteNull("padding");
        w.WriteStartArray("added_tokens");
        foreach (var t in _added.OrderBy(t => t.Id))
        {
            w.WriteStartObject();
            w.WriteNumber("id", t.Id);
            w.WriteString("content", t.Content);
            w.WriteBoolean("single_word", false);
            w.WriteBoolean("lstrip", false);
            w.WriteBoolean("rstrip", false);
            w.WriteBoolean("normalized", !t.Special);
            w.WriteBoolean("special", t.Special);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        if (_normalizer == null) w.WriteNull("normalizer");
        else { w.WriteStartObject("normalizer"); w.WriteString("type", _normalizer); w.WriteEndObject(); }
        w.WritePropertyName("pre_tokenizer");
        WritePre(w, _pre);
        w.WriteNull("post_processor");
        w.WriteStartObject("decoder");
        w.WriteString("type", "ByteLevel");
        w.WriteBoolean("add_prefix_space", true);
        w.WriteBoolean("trim_offsets", true);
        w.WriteBoolean("use_regex", true);
        w.WriteEndObject();
        w.WriteStartObject("model");
        w.WriteString("type", "BPE");
        w.WriteNull("dropout");
        w.WriteNull("unk_token");
        w.WriteNull("continuing_subword_prefix");
        w.WriteNull("end_of_word_suffix");
        w.WriteBoolean("fuse_unk", false);
        w.WriteBoolean("byte_fallback", false);
        w.WriteBoolean("ignore_merges", false);
        w.WriteStartObject("vocab");
        foreach (var (tok, id) in idToToken) w.WriteNumber(tok, id);
        w.WriteEndObject();
        w.WriteStartArray("merges");
        foreach (var (a, b) in _mergeList) w.WriteStringValue(byId[a] + " " + byId[b]);
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
    }

    static void WritePre(Utf8JsonWriter w, PreTokenizer pre)
    {
        w.WriteStartObject();
        w.WriteString("type", "Sequence");
        w.WriteStartArray("pretokenizers");
        foreach (var step in pre.Steps)
        {
            w.WriteStartObject();
            switch (step)
            {
                case PreTokenizer.SplitStep s:
                    w.WriteString("type", "Split");
                    w.WriteStartObject("pattern");
                    w.WriteString(s.IsRegex ? "Regex" : "String", s.Pattern);
                    w.WriteEndObject();
                    w.WriteString("behavior", s.Remove ? "Removed" : "Isolated");
                    w.WriteBoolean("invert", false);
                    break;
                case PreTokenizer.DigitsStep d:
                    w.WriteString("type", "Digits");
                    w.WriteBoolean("individual_digits", d.Individual);
                    break;
                case PreTokenizer.ByteLevelStep b:
                    w.WriteString("type", "ByteLevel");
                    w.WriteBoolean("add_prefix_space", b.AddPrefixSpace);
                    w.WriteBoolean("trim_offsets", true);
                    w.WriteBoolean("use_regex", b.UseRegex);
                    break;
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    /// <summary>
    /// Reads a Hugging Face tokenizer.json: model type BPE, byte-level (a ByteLevel pre-tokenizer or decoder), merges as
    /// "a b" strings or [a, b] pairs. Anything else (WordPiece, Unigram, SentencePiece-style Metaspace BPE, unknown
    /// pre-tokenizers or normalizers) is refused with an error naming the file and the part. EOS/BOS are the given
    /// names, else the first of the usual names (&lt;|endoftext|&gt;, &lt;/s&gt;, …) found among added tokens, else -1.
    /// </summary>
    public static BpeTokenizer Load(string path, string? eosToken = null, string? bosToken = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer file not found: {path}", path);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e); }
        using (doc)
        {
            try { return FromJson(doc.RootElement, path, eosToken, bosToken); }
            catch (InvalidDataException e) when (!e.Message.StartsWith(path, StringComparison.Ordinal))
            {
                throw new InvalidDataException($"{path}: {e.Message}", e);
            }
        }
    }

    static BpeTokenizer FromJson(JsonElement root, string path, string? eos, string? bos)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: no 'model' object (not a tokenizer.json)");
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(missing)";
        if (type != "BPE") throw new NotSupportedException($"{path}: tokenizer model type '{type}' is not supported (only byte-level BPE)");
        foreach (var opt in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model.TryGetProperty(opt, out var v) && v.ValueKind == JsonValueKind.String && v.GetString()!.Length > 0)
                throw new NotSupportedException($"{path}: model.{opt} is set; only byte-level BPE without subword affixes is supported");
        if (!model.TryGetProperty("vocab", out var vocabEl) || vocabEl.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: model.vocab missing or not an object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabEl.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id)) throw new InvalidDataException($"{path}: model.vocab['{p.Name}'] is not an integer id");
            vocab[p.Name] = id;
        }
        var merges = new List<(int, int)>();
        if (model.TryGetProperty("merges", out var mergesEl))
        {
            if (mergesEl.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{path}: model.merges is not an array");
            int r = 0;
            foreach (var m in mergesEl.EnumerateArray())
            {
                string? a, b;
                if (m.ValueKind == JsonValueKind.String)
                {
                    var s = m.GetString()!;
                    int sp = s.IndexOf(' ', 1);
                    if (sp < 0) throw new InvalidDataException($"{path}: merge {r} '{s}' is not 'a b'");
                    a = s[..sp]; b = s[(sp + 1)..];
                }
                else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2) { a = m[0].GetString(); b = m[1].GetString(); }
                else throw new InvalidDataException($"{path}: merge {r} is neither 'a b' nor [a, b]");
                if (a == null || b == null || !vocab.TryGetValue(a, out int ia) || !vocab.TryGetValue(b, out int ib))
                    throw new InvalidDataException($"{path}: merge {r} ('{a}' '{b}') uses a token that is not in the vocabulary");
                merges.Add((ia, ib));
                r++;
            }
        }
        bool byteLevel = false;
        var steps = new List<PreTokenizer.Step>();
        if (root.TryGetProperty("pre_tokenizer", out var preEl) && preEl.ValueKind == JsonValueKind.Object)
            ParsePre(preEl, steps, path, ref byteLevel);
        if (root.TryGetProperty("decoder", out var dec) && dec.ValueKind == JsonValueKind.Object)
        {
            string dt = dec.TryGetProperty("type", out var d) ? d.GetString() ?? "" : "";
            if (dt == "ByteLevel") byteLevel = true;
        }
        if (!byteLevel) throw new NotSupportedException($"{path}: BPE without a ByteLevel pre-tokenizer or decoder (e.g. SentencePiece-style Metaspace) is not supported");
        string? normalizer = null;
        if (root.TryGetProperty("normalizer", out var normEl) && normEl.ValueKind == JsonValueKind.Object)
        {
            string nt = normEl.TryGetProperty("type", out var n) ? n.GetString() ?? "" : "";
            if (nt is not ("NFC" or "NFKC" or "NFD" or "NFKD" or "Lowercase"))
                throw new NotSupportedException($"{path}: normalizer type '{nt}' is not supported (NFC, NFKC, NFD, NFKD, Lowercase or none)");
            normalizer = nt;
        }
        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var addedEl) && addedEl.ValueKind == JsonValueKind.Array)
        {
            foreach (var a in addedEl.EnumerateArray())
            {
                if (!a.TryGetProperty("id", out var idEl) || !idEl.TryGetInt32(out int id) || !a.TryGetProperty("content", out var c) || c.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{path}: an added_tokens entry lacks an integer 'id' or a string 'content'");
                bool special = a.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True;
                added.Add(new AddedToken(id, c.GetString()!, special));
            }
        }
        return new BpeTokenizer(vocab, merges, new PreTokenizer(steps), normalizer, added, eos, bos);
    }

    static void ParsePre(JsonElement e, List<PreTokenizer.Step> steps, string path, ref bool byteLevel)
    {
        string type = e.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";
        switch (type)
        {
            case "Sequence":
                if (!e.TryGetProperty("pretokenizers", out var list) || list.ValueKind != JsonValueKind.Array)
                    throw new InvalidDataException($"{path}: pre_tokenizer Sequence without 'pretokenizers'");
                foreach (var p in list.EnumerateArray()) ParsePre(p, steps, path, ref byteLevel);
                break;
            case "ByteLevel":
                byteLevel = true;
                bool prefix = e.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True;
                bool useRegex = !e.TryGetProperty("use_regex", out var ur) || ur.ValueKind != JsonValueKind.False;
                steps.Add(new PreTokenizer.ByteLevelStep(prefix, useRegex, useRegex ? PreTokenizer.Compile(PreTokenizer.Gpt2Pattern) : null));
                break;
            case "Digits":
                steps.Add(new PreTokenizer.DigitsStep(e.TryGetProperty("individual_digits", out var ind) && ind.ValueKind == JsonValueKind.True));
                break;
            case "Split":
                if (!e.TryGetProperty("pattern", out var pat) || pat.ValueKind != JsonValueKind.Object)
                    throw new InvalidDataException($"{path}: pre_tokenizer Split without a 'pattern' object");
                string behavior = e.TryGetProperty("behavior", out var bh) ? bh.GetString() ?? "" : "";
                if (behavior is not ("Isolated" or "Removed")) throw new NotSupportedException($"{path}: Split behavior '{behavior}' is not supported (Isolated or Removed)");
                if (e.TryGetProperty("invert", out var inv) && inv.ValueKind == JsonValueKind.True) throw new NotSupportedException($"{path}: Split with invert = true is not supported");
                bool isRegex = pat.TryGetProperty("Regex", out var rx);
                string? source = isRegex ? rx.GetString() : pat.TryGetProperty("String", out var str) ? str.GetString() : null;
                if (source == null) throw new InvalidDataException($"{path}: Split pattern has neither 'Regex' nor 'String'");
                System.Text.RegularExpressions.Regex regex;
                try { regex = PreTokenizer.Compile(isRegex ? source : System.Text.RegularExpressions.Regex.Escape(source)); }
                catch (ArgumentException ex) { throw new NotSupportedException($"{path}: Split regex is not valid in .NET ({ex.Message})", ex); }
                steps.Add(new PreTokenizer.SplitStep(regex, source, isRegex, behavior == "Removed"));
                break;
            default:
                throw new NotSupportedException($"{path}: pre_tokenizer type '{type}' is not supported (Sequence, ByteLevel, Split, Digits)");
        }
    }

    /// <summary>Longest-match lookup of added tokens, entered only at characters that start one.</summary>
    sealed class AddedTrie
    {
        sealed class Node { public Dictionary<char, Node>? Next; public AddedToken? Token; }
        readonly Node _root = new();
        readonly HashSet<char> _first = [];

        public AddedTrie(IEnumerable<AddedToken> tokens)
        {
            foreach (var t in tokens)
            {
                var n = _root;
                foreach (char c in t.Content)
                {
                    n.Next ??= [];
                    if (!n.Next.TryGetValue(c, out var child)) n.Next[c] = child = new Node();
                    n = child;
                }
                n.Token = t;
                _first.Add(t.Content[0]);
            }
        }

        public AddedToken? Match(string text, int start)
        {
            if (!_first.Contains(text[start])) return null;
            AddedToken? best = null;
            var n = _root;
            for (int i = start; i < text.Length; i++)
            {
                if (n.Next == null || !n.Next.TryGetValue(text[i], out n)) break;
                if (n.Token != null) best = n.Token;
            }
            return best;
        }
    }
}
