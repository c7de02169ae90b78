namespace Engine.Data;

/// <summary>
/// Pretraining samples packed to the context length: documents (shuffled per epoch from the seed, or in order)
/// are concatenated as <c>doc EOS doc EOS …</c> and cut into windows of T+1 tokens; consecutive windows share one
/// token (the last target of one sample is the first input of the next), so every token is a target exactly once.
/// Every loss-mask entry is true. Empty documents are skipped. Endless: a new epoch starts with a new permutation.
/// </summary>
public sealed class PackedPretrainStream : ISampleStream
{
    const string Kind = "packed_pretrain";
    readonly ITokenSource _source;
    readonly int _seqLen, _eos;
    readonly ulong _seed;
    readonly bool _shuffle;
    readonly string _name;
    int[] _order = [];
    long _epoch;
    int _docPos, _offset, _last = -1;
    long _samples;

    public PackedPretrainStream(ITokenSource source, int seqLen, int eosId, ulong seed, bool shuffle = true, string name = "pretrain")
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentOutOfRangeException.ThrowIfLessThan(seqLen, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(eosId);
        if (source.TokenCount == 0) throw new ArgumentException("the token source holds no tokens", nameof(source));
        _source = source;
        _seqLen = seqLen;
        _eos = eosId;
        _seed = seed;
        _shuffle = shuffle;
        _name = name;
        StartEpoch(0);
    }

    public int SeqLen => _seqLen;
    public long Epoch => _epoch;

    void StartEpoch(long epoch)
    {
        _epoch = epoch;
        int n = _source.DocumentCount;
        if (_shuffle) _order = SplitMix64.Permutation(n, SplitMix64.Derive(_seed, epoch));
        else if (_order.Length != n) { _order = new int[n]; for (int i = 0; i < n; i++) _order[i] = i; }
    }

    public TrainingSample Next()
    {
        var tokens = new int[_seqLen + 1];
        int filled = 0;
        if (_last >= 0) tokens[filled++] = _last;
        while (filled < tokens.Length)
        {
            int doc = _order[_docPos];
            int len = _source.DocumentLength(doc);
            if (len == 0) { Advance(); continue; }
            if (_offset < len)
            {
                int n = Math.Min(tokens.Length - filled, len - _offset);
                _source.Read(doc, _offset, tokens.AsSpan(filled, n));
                filled += n;
                _offset += n;
            }
            else
            {
                tokens[filled++] = _eos;
                Advance();
            }
        }
        _last = tokens[_seqLen];
        _samples++;
        var mask = new bool[_seqLen];
        Array.Fill(mask, true);
        return new TrainingSample(tokens, mask, _name);
    }

    void Advance()
    {
        _offset = 0;
        if (++_docPos == _order.Length) { _docPos = 0; StartEpoch(_epoch + 1); }
    }

    public SamplerState SaveState() => new()
    {
        Kind = Kind,
        Values = new()
        {
            ["epoch"] = _epoch,
            ["doc_pos"] = _docPos,
            ["offset"] = _offset,
            ["last_token"] = _last,
            ["samples"] = _samples,
            ["seed"] = unchecked((long)_seed),
            ["seq_len"] = _seqLen,
            ["documents"] = _source.DocumentCount,
            ["tokens"] = _source.TokenCount,
            ["shuffle"] = _shuffle ? 1 : 0,
        },
    };

    public void LoadState(SamplerState s)
    {
        ArgumentNullException.ThrowIfNull(s);
        s.Expect(Kind, ("seed", unchecked((long)_seed)), ("seq_len", _seqLen), ("documents", _source.DocumentCount),
            ("tokens", _source.TokenCount), ("shuffle", _shuffle ? 1 : 0));
        long epoch = s.Get("epoch"), docPos = s.Get("doc_pos"), offset = s.Get("offset"), last = s.Get("last_token");
        if (epoch < 0 || docPos < 0 || docPos >= _source.DocumentCount) throw new InvalidDataException($"sampler state ({Kind}): position out of range (epoch {epoch}, doc_pos {docPos})");
        StartEpoch(epoch);
        if (offset < 0 || offset > _source.DocumentLength(_order[docPos])) throw new InvalidDataException($"sampler state ({Kind}): offset {offset} outside document");
        _docPos = (int)docPos;
        _offset = (int)offset;
        _last = (int)last;
        _samples = s.Get("samples");
    }
}
