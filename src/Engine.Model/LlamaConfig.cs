using Engine.Core;

namespace Engine.Model;

/// <summary>
/// The model family of a config: the Hugging Face layout its config.json and weights use. Every family runs as the one
/// Llama block of <see cref="LlamaModel"/> with options; the family decides names and fields at the file boundary
/// (<see cref="IO.HfConfig"/>, <see cref="IO.HfLayout"/>).
/// <list type="bullet">
/// <item>Llama: LlamaForCausalLM / MistralForCausalLM (q_proj, k_proj, v_proj separate).</item>
/// <item>Baichuan: BaichuanForCausalLM (Baichuan 2): q/k/v packed in one W_pack [3C, C], NormHead, max-z loss; 7B with
/// RoPE (its config has max_position_embeddings), 13B with ALiBi (only model_max_length).</item>
/// </list>
/// </summary>
public enum ModelFamily { Llama, Baichuan }

/// <summary>How token positions enter attention: rotary embeddings on q and k, or ALiBi's linear distance bias.</summary>
public enum PositionEmbedding { Rope, Alibi }

/// <summary>
/// Llama architecture hyper-parameters. Field meanings and JSON names are those of Hugging Face's LlamaConfig, so a
/// config.json round-trips with transformers. NormHead (Baichuan 2) is our extension, written as "norm_head".
/// <see cref="Family"/>, <see cref="Position"/> and <see cref="MaxZLossWeight"/> describe the other layouts the same
/// block reads and writes (Baichuan 2; see <see cref="ModelFamily"/>).
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

    /// <summary>The Hugging Face layout the model is read and written in.</summary>
    public ModelFamily Family { get; init; } = ModelFamily.Llama;
    /// <summary>RoPE (every Llama, Baichuan 2-7B) or ALiBi (Baichuan 2-13B).</summary>
    public PositionEmbedding Position { get; init; } = PositionEmbedding.Rope;
    /// <summary>Baichuan 2's max-z loss weight (config.json "z_loss_weight"): training adds weight·max(logits)² per token.</summary>
    public double MaxZLossWeight { get; init; }

    /// <summary>ALiBi's maximum bias b (slopes 2^(−b·k/n)): 8 in every ALiBi model the engine reads (BLOOM, Baichuan 2-13B,
    /// and llama.cpp's Baichuan 13B).</summary>
    public const float AlibiBias = 8f;

    /// <summary>The attention's ALiBi max bias (0 without ALiBi).</summary>
    public float AlibiMaxBias => Position == PositionEmbedding.Alibi ? AlibiBias : 0f;

    /// <summary>Baichuan 2's fixed rotary base (its RotaryEmbedding does not read rope_theta).</summary>
    public const double BaichuanRopeTheta = 10000.0;

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
        if (Position == PositionEmbedding.Rope && NumHeads > 0 && HiddenSize % NumHeads == 0 && HeadDim % 2 != 0) errors.Add($"head dim ({HeadDim}) must be even for rotary embeddings");
        if (Position == PositionEmbedding.Alibi && RopeScaling != RopeScalingKind.None) errors.Add($"rope_scaling ({RopeScaling.ToString().ToLowerInvariant()}) cannot be combined with ALiBi positions: an ALiBi model has no rotary embedding (it extrapolates to longer inputs without scaling)");
        if (Position == PositionEmbedding.Alibi && Family != ModelFamily.Baichuan) errors.Add($"ALiBi positions need a family whose Hugging Face layout has them (baichuan); {Family.ToString().ToLowerInvariant()} has rotary embeddings only");
        if (Family == ModelFamily.Baichuan)
        {
            if (NumKvHeads != NumHeads) errors.Add($"Baichuan's packed W_pack projection has no grouped-query attention: num_key_value_heads ({NumKvHeads}) must equal num_attention_heads ({NumHeads})");
            if (TieWordEmbeddings) errors.Add("Baichuan's head is its own lm_head (NormHead): tie_word_embeddings must be false");
            if (Position == PositionEmbedding.Rope && (RopeTheta != BaichuanRopeTheta || RopeScaling != RopeScalingKind.None))
                errors.Add($"Baichuan's rotary embedding is fixed (base {BaichuanRopeTheta}, no scaling; its modeling code reads neither rope_theta nor rope_scaling): got rope_theta {RopeTheta}, rope_scaling {RopeScaling.ToString().ToLowerInvariant()}");
        }
        if (!(MaxZLossWeight >= 0) || double.IsInfinity(MaxZLossWeight)) errors.Add($"z_loss_weight must be a finite number >= 0 (got {MaxZLossWeight})");
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
