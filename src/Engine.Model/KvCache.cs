using Engine.Core;

namespace Engine.Model;

/// <summary>Per-layer keys and values (after RoPE) of the tokens seen so far, for incremental decoding of one sequence.</summary>
public sealed class KvCache : IDisposable
{
    public KvCache(LlamaConfig cfg, IBackend backend, int maxLength)
    {
        if (maxLength <= 0) throw new ArgumentOutOfRangeException(nameof(maxLength));
        MaxLength = maxLength;
        int kv = cfg.NumKvHeads * cfg.HeadDim;
        K = new Tensor[cfg.NumLayers];
        V = new Tensor[cfg.NumLayers];
        for (int i = 0; i < cfg.NumLayers; i++)
        {
            K[i] = backend.Zeros([maxLength, kv], backend.ActivationDType).Keep();
            V[i] = backend.Zeros([maxLength, kv], backend.ActivationDType).Keep();
        }
    }

    public Tensor[] K { get; }
    public Tensor[] V { get; }
    public int MaxLength { get; }
    /// <summary>Positions already cached.</summary>
    public int Length { get; internal set; }

    public void Reset() => Length = 0;

    /// <summary>Forgets positions from length on (e.g. to score another continuation of the same prompt).</summary>
    public void Truncate(int length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length), $"cannot truncate a cache of {Length} positions to {length}");
        Length = length;
    }

    public void Dispose()
    {
        foreach (var t in K) t.Dispose();
        foreach (var t in V) t.Dispose();
    }
}
