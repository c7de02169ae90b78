using Engine.Cuda.Kernels;

namespace Engine.Cuda.Bench;

/// <summary>Shapes of the memory-bound kernels for one model size (one row per token: tokens = batch × sequence).</summary>
public sealed record ModelShapes
{
    /// <summary>Label in the JSON ("llama7b", "small", "tiny").</summary>
    public required string Name { get; init; }
    /// <summary>Tokens per micro-batch (rows of every activation).</summary>
    public required int Tokens { get; init; }
    public required int Hidden { get; init; }
    public required int Ffn { get; init; }
    public required int Heads { get; init; }
    /// <summary>KV-head counts benchmarked for RoPE on k (GQA and MHA).</summary>
    public required int[] KvHeads { get; init; }
    public required int HeadDim { get; init; }
    /// <summary>Vocabulary sizes of the cross-entropy benchmark; the first is also the embedding table's.</summary>
    public required int[] Vocabs { get; init; }
    /// <summary>Elements of the AdamW update (one flat parameter buffer).</summary>
    public required long AdamWParams { get; init; }
    /// <summary>Sequence length of the RoPE benchmark (positions 0..T-1); tokens / T sequences.</summary>
    public int RopeSeqLen => Math.Min(Tokens, 4096);

    /// <summary>A 7B Llama training step: 16384 tokens, hidden 4096, FFN 11008, 32 heads of 128, kv heads 8 and 32,
    /// vocab 32000 (Llama 2) and 128256 (Llama 3); AdamW over one layer's MLP weights (3·4096·11008).</summary>
    public static ModelShapes Llama7B => new()
    {
        Name = "llama7b",
        Tokens = 16384,
        Hidden = 4096,
        Ffn = 11008,
        Heads = 32,
        KvHeads = [8, 32],
        HeadDim = 128,
        Vocabs = [32000, 128256],
        AdamWParams = 3L * 4096 * 11008,
    };

    /// <summary>A small model (launch overhead and L2 matter here): 2048 tokens, hidden 1024, FFN 2816, 8 heads of 128.</summary>
    public static ModelShapes Small => new()
    {
        Name = "small",
        Tokens = 2048,
        Hidden = 1024,
        Ffn = 2816,
        Heads = 8,
        KvHeads = [2, 8],
        HeadDim = 128,
        Vocabs = [32000],
        AdamWParams = 3L * 1024 * 2816,
    };

    /// <summary>Seconds-long smoke configuration for the GPU test.</summary>
    public static ModelShapes Tiny => new()
    {
        Name = "tiny",
        Tokens = 64,
        Hidden = 128,
        Ffn = 256,
        Heads = 2,
        KvHeads = [1, 2],
        HeadDim = 64,
        Vocabs = [512],
        AdamWParams = 4096,
    };

    public void Validate()
    {
        if (Tokens <= 0 || Hidden <= 0 || Ffn <= 0 || Heads <= 0 || HeadDim <= 0 || AdamWParams <= 0)
            throw new ArgumentException($"shapes '{Name}': tokens, hidden, ffn, heads, head dim and AdamW size must be positive");
        if (HeadDim % 2 != 0) throw new ArgumentException($"shapes '{Name}': head dim {HeadDim} must be even (RoPE pairs)");
        if (Tokens % RopeSeqLen != 0) throw new ArgumentException($"shapes '{Name}': tokens {Tokens} must be a multiple of {RopeSeqLen}");
        if (KvHeads.Length == 0 || KvHeads.Any(k => k <= 0 || Heads % k != 0))
            throw new ArgumentException($"shapes '{Name}': kv heads [{string.Join(", ", KvHeads)}] must divide heads {Heads}");
        if (Vocabs.Length == 0 || Vocabs.Any(v => v <= 0)) throw new ArgumentException($"shapes '{Name}': vocab sizes must be positive");
    }
}

/// <summary>
/// Attention benchmark grid: for every T and D, batch = TokensPerBatch / T (the FlashAttention-2 benchmark's fixed
/// token count), Heads query heads and each of KvHeads. Must match benchmarks/scripts/sdpa_bench.py's defaults for the
/// ratio against PyTorch to be filled in (a CPU test compares them). Every case is timed with both kernel families
/// (attention.cu where it has the head dim, attention_v2.cu always), each row beside the same SDPA number.
/// </summary>
public sealed record AttentionGrid(int TokensPerBatch, int Heads, int[] KvHeads, int[] SeqLens, int[] HeadDims, bool Causal = true)
{
    public static AttentionGrid Default => new(16384, 32, [8, 32], [1024, 2048, 4096, 8192], [64, 128]);
    public static AttentionGrid Tiny => new(256, 4, [1, 4], [128], [64, 128]);

    public IEnumerable<(int Batch, int SeqLen, int KvHeads, int HeadDim)> Cases()
    {
        foreach (int d in HeadDims)
            foreach (int t in SeqLens)
                foreach (int kv in KvHeads)
                    yield return (Math.Max(1, TokensPerBatch / t), t, kv, d);
    }

    public void Validate()
    {
        if (TokensPerBatch <= 0 || Heads <= 0) throw new ArgumentException("attention grid: tokens per batch and heads must be positive");
        if (KvHeads.Any(k => k <= 0 || Heads % k != 0)) throw new ArgumentException($"attention grid: kv heads must divide heads {Heads}");
        if (SeqLens.Any(t => t <= 0)) throw new ArgumentException("attention grid: sequence lengths must be positive");
        if (HeadDims.Any(d => Array.IndexOf(KernelTraits.AttnV2HeadDims, d) < 0))
            throw new ArgumentException("attention grid: the kernels take head dims 32, 64, 96 and 128 (attention.cu: 64 and 128)");
    }
}

/// <summary>Timing: warm-up calls, then Repeats timed groups of Iters calls between two CUDA events; Iters is chosen
/// from one timed call so a group lasts about TargetMsPerRepeat (clamped to [MinIters, MaxIters]); the median per-call
/// time of the groups is reported, with the fastest and slowest group as the spread.</summary>
public sealed record TimingOptions(int Warmup = 3, int Repeats = 7, double TargetMsPerRepeat = 20, int MinIters = 2, int MaxIters = 1000)
{
    public void Validate()
    {
        if (Warmup < 0 || Repeats < 1 || MinIters < 1 || MaxIters < MinIters || TargetMsPerRepeat <= 0)
            throw new ArgumentException($"timing: warmup >= 0, repeats >= 1, 1 <= min iters <= max iters, target > 0 (got {this})");
    }
}

/// <summary>What <see cref="KernelBenchmarks.Run"/> measures.</summary>
public sealed record KernelBenchOptions
{
    public required string Preset { get; init; }
    public required IReadOnlyList<ModelShapes> Shapes { get; init; }
    /// <summary>Null: no attention benchmark.</summary>
    public AttentionGrid? Attention { get; init; }
    /// <summary>Bytes of the reference device-to-device copy.</summary>
    public long CopyBytes { get; init; } = 1L << 30;
    /// <summary>M = N = K of the cuBLAS sanity GEMM; 0 skips it.</summary>
    public int GemmSize { get; init; } = 8192;
    public TimingOptions Timing { get; init; } = new();
    /// <summary>Recorded in the JSON.</summary>
    public string Commit { get; init; } = "unknown";
    /// <summary>PyTorch SDPA results of the same run (see <see cref="SdpaResults"/>); null: no ratio.</summary>
    public SdpaResults? Sdpa { get; init; }
    /// <summary>Seed of the random inputs (nothing is timed on zeros).</summary>
    public int Seed { get; init; } = 1234;

    /// <summary>"full": 7B-step and small shapes, the attention grid, 1 GiB copy, 8192³ GEMM. "tiny": a few seconds.</summary>
    public static KernelBenchOptions ForPreset(string preset) => preset switch
    {
        "full" => new() { Preset = "full", Shapes = [ModelShapes.Llama7B, ModelShapes.Small], Attention = AttentionGrid.Default },
        "tiny" => new()
        {
            Preset = "tiny",
            Shapes = [ModelShapes.Tiny],
            Attention = AttentionGrid.Tiny,
            CopyBytes = 16L << 20,
            GemmSize = 256,
            Timing = new TimingOptions(Warmup: 1, Repeats: 3, TargetMsPerRepeat: 2, MinIters: 1, MaxIters: 50),
        },
        _ => throw new ArgumentException($"unknown preset '{preset}' (full or tiny)"),
    };

    public void Validate()
    {
        foreach (var s in Shapes) s.Validate();
        Attention?.Validate();
        Timing.Validate();
        if (CopyBytes <= 0) throw new ArgumentException($"copy bytes must be positive, got {CopyBytes}");
        if (GemmSize < 0) throw new ArgumentException($"GEMM size must be >= 0, got {GemmSize}");
    }
}
