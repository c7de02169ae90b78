namespace Engine.Data;

/// <summary>
/// Instruction samples, one example per sample, rendered with a <see cref="ChatTemplate"/>: the loss mask is true
/// only on answer targets (the output tokens and the EOS closing them); the rest of the window is padded with EOS,
/// masked false. Examples are shuffled per epoch from the seed (or kept in order).
/// <para>Truncation when prompt + answer + EOS exceed T+1 tokens: the answer keeps
/// <c>min(|answer|+1, max(T+1 − |prompt|, (T+1)/2))</c> tokens (cut at its end, EOS then dropped); the prompt gets the
/// rest, cut first from the end of the input, then from the end of the instruction; the assistant marker is always
/// kept. <see cref="Truncated"/> counts truncated examples.</para>
/// </summary>
public sealed class InstructionStream : ISampleStream
{
    const string Kind = "instruction";
    readonly IReadOnlyList<InstructionExample> _examples;
    readonly ITokenizer _tok;
    readonly ChatTemplate _template;
    readonly int _seqLen;
    readonly ulong _seed;
    readonly bool _shuffle;
    readonly string _name;
    int[] _order = [];
    long _epoch, _samples;
    int _pos;

    public InstructionStream(IReadOnlyList<InstructionExample> examples, ITokenizer tokenizer, int seqLen, ulong seed,
        ChatTemplate? template = null, bool shuffle = true, string name = "instruction")
    {
        ArgumentNullException.ThrowIfNull(examples);
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (examples.Count == 0) throw new ArgumentException("no instruction examples", nameof(examples));
        _template = template ?? ChatTemplate.Default;
        int marker = tokenizer.Encode(_template.AssistantPrefix).Length;
        if ((seqLen + 1) / 2 < marker + 1)
            throw new ArgumentOutOfRangeException(nameof(seqLen), seqLen, $"too short for the chat template (assistant marker is {marker} tokens)");
        _examples = examples;
        _tok = tokenizer;
        _seqLen = seqLen;
        _seed = seed;
        _shuffle = shuffle;
        _name = name;
        StartEpoch(0);
    }

    /// <summary>Examples that had to be truncated so far (not saved in the state).</summary>
    public long Truncated { get; private set; }

    void StartEpoch(long epoch)
    {
        _epoch = epoch;
        int n = _examples.Count;
        if (_shuffle) _order = SplitMix64.Permutation(n, SplitMix64.Derive(_seed, epoch));
        else if (_order.Length != n) { _order = new int[n]; for (int i = 0; i < n; i++) _order[i] = i; }
    }

    public TrainingSample Next()
    {
        var ex = _examples[_order[_pos]];
        if (++_pos == _order.Length) { _pos = 0; StartEpoch(_epoch + 1); }
        _samples++;
        var (sample, truncated) = Render(ex, _tok, _template, _seqLen, _name);
        if (truncated) Truncated++;
        return sample;
    }

    /// <summary>Renders one example into a T+1 window (see the class remarks for the truncation rule).</summary>
    public static (TrainingSample Sample, bool Truncated) Render(InstructionExample ex, ITokenizer tok, ChatTemplate template, int seqLen, string source)
    {
        ArgumentNullException.ThrowIfNull(ex);
        int window = seqLen + 1;
        var (head, input, marker) = template.EncodeParts(tok, ex.Instruction, ex.Input);
        int[] answer = [.. tok.Encode(ex.Output), tok.EosId];
        int prompt = head.Length + input.Length + marker.Length;
        bool truncated = prompt + answer.Length > window;
        int ansKeep = answer.Length, headKeep = head.Length, inputKeep = input.Length;
        if (truncated)
        {
            ansKeep = Math.Min(answer.Length, Math.Max(window - prompt, window / 2));
            int room = window - ansKeep - marker.Length;
            inputKeep = Math.Min(input.Length, Math.Max(0, room - head.Length));
            headKeep = Math.Min(head.Length, room - inputKeep);
        }
        var tokens = new int[window];
        var mask = new bool[seqLen];
        int p = 0;
        head.AsSpan(0, headKeep).CopyTo(tokens.AsSpan(p)); p += headKeep;
        input.AsSpan(0, inputKeep).CopyTo(tokens.AsSpan(p)); p += inputKeep;
        marker.CopyTo(tokens.AsSpan(p)); p += marker.Length;
        // Target i is tokens[i+1]: answer tokens at positions p..p+ansKeep-1 are targets p-1..p+ansKeep-2.
        for (int i = 0; i < ansKeep; i++) { tokens[p + i] = answer[i]; if (p + i >= 1) mask[p + i - 1] = true; }
        p += ansKeep;
        for (; p < window; p++) tokens[p] = tok.EosId;
        return (new TrainingSample(tokens, mask, source), truncated);
    }

    public SamplerState SaveState() => new()
    {
        Kind = Kind,
        Values = new()
        {
            ["epoch"] = _epoch,
            ["pos"] = _pos,
            ["samples"] = _samples,
            ["seed"] = unchecked((long)_seed),
            ["seq_len"] = _seqLen,
            ["examples"] = _examples.Count,
            ["shuffle"] = _shuffle ? 1 : 0,
        },
    };

    public void LoadState(SamplerState s)
    {
        ArgumentNullException.ThrowIfNull(s);
        s.Expect(Kind, ("seed", unchecked((long)_seed)), ("seq_len", _seqLen), ("examples", _examples.Count), ("shuffle", _shuffle ? 1 : 0));
        long epoch = s.Get("epoch"), pos = s.Get("pos");
        if (epoch < 0 || pos < 0 || pos >= _examples.Count) throw new InvalidDataException($"sampler state ({Kind}): position out of range (epoch {epoch}, pos {pos})");
        StartEpoch(epoch);
        _pos = (int)pos;
        _samples = s.Get("samples");
    }
}
