namespace Engine.Core;

/*
 * Device-neutral parameters of the op families, as IBackend and F take them. Each backend maps them onto its
 * kernels' own parameter structs (Engine.Cpu's span kernels, Engine.Cuda's mirrored params structs).
 */

/// <summary>How RoPE positions are scaled for context extension.</summary>
public enum RopeScalingKind { None, Linear, Ntk }

/// <summary>Rotary embedding parameters (Hugging Face Llama "rotate_half" convention).</summary>
public readonly record struct RopeParams(int HeadDim, double Theta, RopeScalingKind Scaling = RopeScalingKind.None, double Factor = 1.0)
{
    /// <summary>inv_freq[i] = base^(-2i/D), computed in double and stored as fp32; NTK scaling raises the base
    /// (base · factor^(D/(D−2))).</summary>
    public float[] InverseFrequencies()
    {
        if (HeadDim <= 0 || HeadDim % 2 != 0) throw new ArgumentException($"head dim must be even and positive, got {HeadDim}");
        double b = Theta;
        if (Scaling == RopeScalingKind.Ntk) b = Theta * Math.Pow(Factor, HeadDim / (HeadDim - 2.0));
        var inv = new float[HeadDim / 2];
        for (int i = 0; i < inv.Length; i++) inv[i] = (float)(1.0 / Math.Pow(b, 2.0 * i / HeadDim));
        return inv;
    }

    /// <summary>Positions are divided by this fp32 value before the angle (the factor for linear scaling, else 1).</summary>
    public float PositionDivisor => Scaling == RopeScalingKind.Linear ? (float)Factor : 1f;
}

/// <summary>Causal grouped-query attention shape: q [B*T, H*D], k/v [B*T, Hkv*D]; query head h reads kv head h/(H/Hkv).
/// AlibiMaxBias &gt; 0 adds ALiBi's linear distance bias (slopes from it and H, see Engine.Cpu.Ops.AttentionCpu.AlibiSlopes).
/// <see cref="Causal"/> = false: every query sees every key of its sequence (context parallelism's blocks of a query
/// chunk against an earlier chunk's keys).</summary>
public readonly record struct AttentionDims(int Batch, int SeqLen, int Heads, int KvHeads, int HeadDim, float AlibiMaxBias = 0f)
{
    public bool Causal { get; init; } = true;

    /// <summary>The first of these heads among the model's (a tensor-parallel rank's share starts past 0): ALiBi's slopes
    /// are those of heads HeadOffset.. of <see cref="TotalHeads"/>.</summary>
    public int HeadOffset { get; init; }

    /// <summary>The model's query heads (0: <see cref="Heads"/>, all of them here).</summary>
    public int TotalHeads { get => totalHeads == 0 ? Heads : totalHeads; init => totalHeads = value; }
    readonly int totalHeads;

    /// <summary>Whether these are all the model's heads (false on a tensor-parallel rank).</summary>
    public bool AllHeads => HeadOffset == 0 && TotalHeads == Heads;

    public int QRow => Heads * HeadDim;
    public int KvRow => KvHeads * HeadDim;
    public int Group => Heads / KvHeads;

    public void Validate()
    {
        if (Batch <= 0 || SeqLen <= 0 || Heads <= 0 || KvHeads <= 0 || HeadDim <= 0)
            throw new ArgumentException($"attention dims must be positive: {this}");
        if (Heads % KvHeads != 0) throw new ArgumentException($"heads ({Heads}) must be a multiple of kv heads ({KvHeads})");
        if (!(AlibiMaxBias >= 0) || float.IsInfinity(AlibiMaxBias)) throw new ArgumentException($"ALiBi max bias must be finite and >= 0, got {AlibiMaxBias}");
        if (HeadOffset < 0 || HeadOffset + Heads > TotalHeads) throw new ArgumentException($"heads {HeadOffset}..{HeadOffset + Heads - 1} are not among the model's {TotalHeads}");
    }
}

/// <summary>AdamW hyper-parameters for one step; Step counts from 1; GradScale multiplies the gradient (global-norm
/// clipping, loss normalization).</summary>
public readonly record struct AdamWStep(float Lr, float Beta1, float Beta2, float Eps, float WeightDecay, int Step, float GradScale = 1f);

/// <summary>One contiguous run of a multi-tensor AdamW over flat buffers: master[Master, Master + Count) updated from
/// grad[Grad ..] and the moments m/v[State ..] (element offsets), with its own weight decay.</summary>
public readonly record struct AdamWRun(long Master, long Grad, long State, long Count, float WeightDecay);

/// <summary>Sequences of one micro-batch as a rank holds them: <see cref="Blocks"/> laid one after another along the
/// token rows, each a batch of equally long sequences at consecutive positions from its offset. One block for a
/// whole micro-batch; context parallelism's load-balanced chunks are two blocks per rank (chunk i and 2·cp − 1 − i of
/// every sequence).</summary>
public sealed record SequenceLayout(IReadOnlyList<SequenceBlock> Blocks)
{
    /// <summary>One batch of <paramref name="batch"/> sequences of <paramref name="seqLen"/> tokens from <paramref name="offset"/>.</summary>
    public static SequenceLayout Contiguous(int batch, int seqLen, int offset = 0) => new([new SequenceBlock(batch, seqLen, offset)]);

    /// <summary>The whole sequences' length when the blocks are padded past it (positions from it on are padding);
    /// null: every position is a token.</summary>
    public int? WholeLength { get; init; }

    /// <summary>The last position a token sits at, plus one.</summary>
    public int End => WholeLength ?? Blocks.Max(b => b.Offset + b.SeqLen);

    /// <summary>Token rows over all blocks.</summary>
    public int Tokens
    {
        get
        {
            int n = 0;
            foreach (var b in Blocks) n += b.Tokens;
            return n;
        }
    }

    /// <summary>The one block of a whole micro-batch; a layout of several blocks needs an attention that joins them.</summary>
    public SequenceBlock Single => Blocks.Count == 1 ? Blocks[0]
        : throw new InvalidOperationException($"a layout of {Blocks.Count} sequence blocks (context parallelism) needs the plan's attention");

    public override string ToString() => string.Join(" + ", Blocks.Select(b => $"{b.Batch}×{b.SeqLen}@{b.Offset}"));
}

/// <summary><see cref="Batch"/> sequences of <see cref="SeqLen"/> tokens at positions Offset..Offset+SeqLen−1.</summary>
public readonly record struct SequenceBlock(int Batch, int SeqLen, int Offset)
{
    public int Tokens => Batch * SeqLen;
}
