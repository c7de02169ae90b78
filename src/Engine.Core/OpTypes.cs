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
/// AlibiMaxBias &gt; 0 adds ALiBi's linear distance bias (slopes from it and H, see Engine.Cpu.Ops.AttentionCpu.AlibiSlopes).</summary>
public readonly record struct AttentionDims(int Batch, int SeqLen, int Heads, int KvHeads, int HeadDim, float AlibiMaxBias = 0f)
{
    public int QRow => Heads * HeadDim;
    public int KvRow => KvHeads * HeadDim;
    public int Group => Heads / KvHeads;

    public void Validate()
    {
        if (Batch <= 0 || SeqLen <= 0 || Heads <= 0 || KvHeads <= 0 || HeadDim <= 0)
            throw new ArgumentException($"attention dims must be positive: {this}");
        if (Heads % KvHeads != 0) throw new ArgumentException($"heads ({Heads}) must be a multiple of kv heads ({KvHeads})");
        if (!(AlibiMaxBias >= 0) || float.IsInfinity(AlibiMaxBias)) throw new ArgumentException($"ALiBi max bias must be finite and >= 0, got {AlibiMaxBias}");
    }
}

/// <summary>AdamW hyper-parameters for one step; Step counts from 1; GradScale multiplies the gradient (global-norm
/// clipping, loss normalization).</summary>
public readonly record struct AdamWStep(float Lr, float Beta1, float Beta2, float Eps, float WeightDecay, int Step, float GradScale = 1f);

/// <summary>One contiguous run of a multi-tensor AdamW over flat buffers: master[Master, Master + Count) updated from
/// grad[Grad ..] and the moments m/v[State ..] (element offsets), with its own weight decay.</summary>
public readonly record struct AdamWRun(long Master, long Grad, long State, long Count, float WeightDecay);
