using Engine.Core;

namespace Engine.Model;

/// <summary>
/// Llama architecture hyper-parameters. Field meanings and JSON names are those of Hugging Face's LlamaConfig, so a
/// config.json round-trips with transformers. NormHead (Baichuan 2) is our extension, written as "norm_head".
/// </summary>
public sealed record LlamaConfig
{
    public int VocabSize { get; init; } = 32000;
    public int HiddenSize { get; init; } = 4096;
    public int IntermediateSize { get; init; } = 11008;
    public int NumLayers { get; init; } = 32;
    public int NumHeads { get; init; } = 32;
    public int NumKvHeads { get; init; } = 32;
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public float RmsNormEps { get; init; } = 1e-5f;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScalingKind RopeScaling { get; init; } = RopeScalingKind.None;
    public double RopeScalingFactor { get; init; } = 1.0;
    public bool TieWordEmbeddings { get; init; }
    public bool NormHead { get; init; }
    public double InitializerRange { get; init; } = 0.02;
    /// <summary>BOS id (config.json bos_token_id); null for a vocabulary without one (written as null, never left to
    /// transformers' default 1). Models the engine trains take it from their tokenizer (<see cref="IO.ModelArtifacts"/>).</summary>
    public int? BosTokenId { get; init; } = 1;
    public int EosTokenId { get; init; } = 2;
    /// <summary>config.json pad_token_id (the engine pads with EOS); null when unset.</summary>
    public int? PadTokenId { get; init; }
    /// <summary>config.json _name_or_path: the run or recipe that made the model (GGUF general.name); null when unknown.</summary>
    public string? NameOrPath { get; init; }

    /// <summary>What a loaded Hugging Face directory held beyond the architecture (carried to the next save); null for engine-made models.</summary>
    public IO.HfExtras? Hf { get; init; }

    public int HeadDim => HiddenSize / NumHeads;

    public RopeParams Rope => new(HeadDim, RopeTheta, RopeScaling, RopeScalingFactor);

    /// <summary>
    /// Most parameters one model may have: the flat <c>ParameterStore</c> is one fp32 buffer with an int index (its
    /// master and gradient buffers are allocated with checked int sizes).
    /// </summary>
    public const long MaxParameters = int.MaxValue;

    /// <summary>Throws with every problem found, each naming its field.</summary>
    public LlamaConfig Validate()
    {
        var errors = new List<string>();
        void Pos(string name, double v)
        {
            if (!(v > 0)) errors.Add($"{name} must be positive (got {v})");
            else if (double.IsInfinity(v)) errors.Add($"{name} must be finite (got {v})");
        }
        Pos("vocab_size", VocabSize); Pos("hidden_size", HiddenSize); Pos("intermediate_size", IntermediateSize);
        Pos("num_hidden_layers", NumLayers); Pos("num_attention_heads", NumHeads); Pos("num_key_value_heads", NumKvHeads);
        Pos("max_position_embeddings", MaxPositionEmbeddings); Pos("rms_norm_eps", RmsNormEps); Pos("rope_theta", RopeTheta);
        Pos("initializer_range", InitializerRange);
        if (NumHeads > 0 && HiddenSize % NumHeads != 0) errors.Add($"hidden_size ({HiddenSize}) must be divisible by num_attention_heads ({NumHeads})");
        if (NumKvHeads > 0 && NumHeads % NumKvHeads != 0) errors.Add($"num_attention_heads ({NumHeads}) must be a multiple of num_key_value_heads ({NumKvHeads})");
        if (NumHeads > 0 && HiddenSize % NumHeads == 0 && HeadDim % 2 != 0) errors.Add($"head dim ({HeadDim}) must be even for rotary embeddings");
        if (RopeScaling != RopeScalingKind.None && !(RopeScalingFactor >= 1)) errors.Add($"rope_scaling.factor must be >= 1 (got {RopeScalingFactor})");
        if (TieWordEmbeddings && NormHead) errors.Add("norm_head cannot be combined with tie_word_embeddings");
        if (RopeScaling != RopeScalingKind.None && double.IsInfinity(RopeScalingFactor)) errors.Add("rope_scaling.factor must be finite");
        if (errors.Count == 0 && ParameterCountEstimate() > MaxParameters)
            errors.Add($"the model would have {ParameterCountEstimate():G4} parameters (vocab_size {VocabSize}, hidden_size {HiddenSize}, intermediate_size {IntermediateSize}, " +
                $"num_hidden_layers {NumLayers}); the engine holds at most {MaxParameters:N0} in its flat parameter store");
        if (errors.Count > 0) throw new ArgumentException("invalid Llama config: " + string.Join("; ", errors));
        return this;
    }

    /// <summary>The parameter count in floating point: never overflows, for size checks before anything is allocated.</summary>
    public double ParameterCountEstimate()
    {
        double c = HiddenSize, kv = (double)NumKvHeads * (NumHeads > 0 ? HiddenSize / NumHeads : 0);
        double perLayer = 2 * c + c * c * 2 + 2 * c * kv + 3 * c * IntermediateSize;
        return VocabSize * c * (TieWordEmbeddings ? 1 : 2) + NumLayers * perLayer + c;
    }

    /// <summary>Parameters in the model, embeddings and head included.</summary>
    public long ParameterCount() =>
        VocabSize * (long)HiddenSize * (TieWordEmbeddings ? 1 : 2) + NumLayers * LayerParameterCount() + HiddenSize;

    /// <summary>One transformer block: two RMSNorm gains, q/o [C, C], k/v [KV, C], gate/up/down [F, C].</summary>
    public long LayerParameterCount()
    {
        long c = HiddenSize, kv = (long)NumKvHeads * HeadDim;
        return 2 * c + c * c * 2 + 2 * c * kv + 3 * c * IntermediateSize;
    }

    /// <summary>Parameters outside embeddings and head (N in the PaLM MFU formula).</summary>
    public long NonEmbeddingParameterCount() => ParameterCount() - VocabSize * (long)HiddenSize * (TieWordEmbeddings ? 1 : 2);

    /// <summary>Training FLOPs per token, PaLM appendix B: 6N + 12·L·H·Q·T (N counts the LM head matmul too).</summary>
    public double TrainingFlopsPerToken(int seqLen) =>
        6.0 * (NonEmbeddingParameterCount() + (long)VocabSize * HiddenSize) + 12.0 * NumLayers * NumHeads * HeadDim * seqLen;

    /// <summary>config.json text (see <see cref="IO.HfConfig"/> for the field and RoPE-scaling rules).</summary>
    public string ToHuggingFaceJson(string torchDtype = "float32") => IO.HfConfig.ToJson(this, torchDtype);

    /// <summary>Reads a Hugging Face config.json; refuses models the engine cannot run exactly, naming the field.</summary>
    public static LlamaConfig FromHuggingFaceJson(string json, string source = "config.json") => IO.HfConfig.FromJson(json, source);
}
