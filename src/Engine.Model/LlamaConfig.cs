using System.Text.Json;
using System.Text.Json.Nodes;
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
    public int BosTokenId { get; init; } = 1;
    public int EosTokenId { get; init; } = 2;

    public int HeadDim => HiddenSize / NumHeads;

    public RopeParams Rope => new(HeadDim, RopeTheta, RopeScaling, RopeScalingFactor);

    /// <summary>Throws with every problem found, each naming its field.</summary>
    public LlamaConfig Validate()
    {
        var errors = new List<string>();
        void Pos(string name, double v) { if (!(v > 0)) errors.Add($"{name} must be positive (got {v})"); }
        Pos("vocab_size", VocabSize); Pos("hidden_size", HiddenSize); Pos("intermediate_size", IntermediateSize);
        Pos("num_hidden_layers", NumLayers); Pos("num_attention_heads", NumHeads); Pos("num_key_value_heads", NumKvHeads);
        Pos("max_position_embeddings", MaxPositionEmbeddings); Pos("rms_norm_eps", RmsNormEps); Pos("rope_theta", RopeTheta);
        Pos("initializer_range", InitializerRange);
        if (NumHeads > 0 && HiddenSize % NumHeads != 0) errors.Add($"hidden_size ({HiddenSize}) must be divisible by num_attention_heads ({NumHeads})");
        if (NumKvHeads > 0 && NumHeads % NumKvHeads != 0) errors.Add($"num_attention_heads ({NumHeads}) must be a multiple of num_key_value_heads ({NumKvHeads})");
        if (NumHeads > 0 && HiddenSize % NumHeads == 0 && HeadDim % 2 != 0) errors.Add($"head dim ({HeadDim}) must be even for rotary embeddings");
        if (RopeScaling != RopeScalingKind.None && !(RopeScalingFactor >= 1)) errors.Add($"rope_scaling.factor must be >= 1 (got {RopeScalingFactor})");
        if (TieWordEmbeddings && NormHead) errors.Add("norm_head cannot be combined with tie_word_embeddings");
        if (errors.Count > 0) throw new ArgumentException("invalid Llama config: " + string.Join("; ", errors));
        return this;
    }

    /// <summary>Parameters in the model, embeddings and head included.</summary>
    public long ParameterCount()
    {
        long c = HiddenSize, kv = (long)NumKvHeads * HeadDim;
        long perLayer = 2 * c + c * c * 2 + 2 * c * kv + 3 * c * IntermediateSize;
        return VocabSize * c * (TieWordEmbeddings ? 1 : 2) + NumLayers * perLayer + c;
    }

    /// <summary>Parameters outside embeddings and head (N in the PaLM MFU formula).</summary>
    public long NonEmbeddingParameterCount() => ParameterCount() - VocabSize * (long)HiddenSize * (TieWordEmbeddings ? 1 : 2);

    /// <summary>Training FLOPs per token, PaLM appendix B: 6N + 12·L·H·Q·T (N counts the LM head matmul too).</summary>
    public double TrainingFlopsPerToken(int seqLen) =>
        6.0 * (NonEmbeddingParameterCount() + (long)VocabSize * HiddenSize) + 12.0 * NumLayers * NumHeads * HeadDim * seqLen;

    public string ToHuggingFaceJson()
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["vocab_size"] = VocabSize,
            ["hidden_size"] = HiddenSize,
            ["intermediate_size"] = IntermediateSize,
            ["num_hidden_layers"] = NumLayers,
            ["num_attention_heads"] = NumHeads,
            ["num_key_value_heads"] = NumKvHeads,
            ["head_dim"] = HeadDim,
            ["max_position_embeddings"] = MaxPositionEmbeddings,
            ["rms_norm_eps"] = RmsNormEps,
            ["rope_theta"] = RopeTheta,
            ["rope_scaling"] = RopeScaling switch
            {
                RopeScalingKind.Linear => new JsonObject { ["rope_type"] = "linear", ["type"] = "linear", ["factor"] = RopeScalingFactor },
                RopeScalingKind.Ntk => new JsonObject { ["rope_type"] = "dynamic", ["type"] = "dynamic", ["factor"] = RopeScalingFactor },
                _ => null,
            },
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["initializer_range"] = InitializerRange,
            ["hidden_act"] = "silu",
            ["attention_bias"] = false,
            ["mlp_bias"] = false,
            ["bos_token_id"] = BosTokenId,
            ["eos_token_id"] = EosTokenId,
            ["torch_dtype"] = "float32",
        };
        if (NormHead) o["norm_head"] = true;
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Reads a Hugging Face config.json; refuses models that are not Llama-shaped, naming the field.</summary>
    public static LlamaConfig FromHuggingFaceJson(string json, string source = "config.json")
    {
        JsonNode root;
        try { root = JsonNode.Parse(json) ?? throw new JsonException("empty document"); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: not valid JSON ({e.Message})", e); }
        string? type = root["model_type"]?.GetValue<string>();
        if (type != null && type != "llama" && type != "mistral")
            throw new InvalidDataException($"{source}: model_type '{type}' is not supported (llama only)");
        int Int(string name, int? dflt = null)
        {
            var n = root[name];
            if (n == null) return dflt ?? throw new InvalidDataException($"{source}: missing required field '{name}'");
            return n.GetValue<int>();
        }
        foreach (var flag in new[] { "attention_bias", "mlp_bias" })
            if (root[flag]?.GetValue<bool>() == true) throw new InvalidDataException($"{source}: '{flag}: true' is not supported");
        string? act = root["hidden_act"]?.GetValue<string>();
        if (act != null && act != "silu") throw new InvalidDataException($"{source}: hidden_act '{act}' is not supported (silu only)");
        int heads = Int("num_attention_heads");
        int hidden = Int("hidden_size");
        var headDimNode = root["head_dim"];
        if (headDimNode != null && headDimNode.GetValue<int>() != hidden / heads)
            throw new InvalidDataException($"{source}: head_dim {headDimNode.GetValue<int>()} != hidden_size / num_attention_heads is not supported");
        var scaling = RopeScalingKind.None; double factor = 1;
        if (root["rope_scaling"] is JsonObject rs)
        {
            string kind = (rs["rope_type"] ?? rs["type"])?.GetValue<string>() ?? "default";
            scaling = kind switch
            {
                "linear" => RopeScalingKind.Linear,
                "dynamic" or "ntk" => RopeScalingKind.Ntk,
                "default" => RopeScalingKind.None,
                _ => throw new InvalidDataException($"{source}: rope_scaling type '{kind}' is not supported (linear, dynamic)"),
            };
            factor = rs["factor"]?.GetValue<double>() ?? 1.0;
        }
        int Token(string name, int d) => root[name] is JsonValue v && v.TryGetValue<int>(out int x) ? x : d;
        return new LlamaConfig
        {
            VocabSize = Int("vocab_size"),
            HiddenSize = hidden,
            IntermediateSize = Int("intermediate_size"),
            NumLayers = Int("num_hidden_layers"),
            NumHeads = heads,
            NumKvHeads = Int("num_key_value_heads", heads),
            MaxPositionEmbeddings = Int("max_position_embeddings", 2048),
            RmsNormEps = (float)(root["rms_norm_eps"]?.GetValue<double>() ?? 1e-6),
            RopeTheta = root["rope_theta"]?.GetValue<double>() ?? 10000.0,
            RopeScaling = scaling,
            RopeScalingFactor = factor,
            TieWordEmbeddings = root["tie_word_embeddings"]?.GetValue<bool>() ?? false,
            NormHead = root["norm_head"]?.GetValue<bool>() ?? false,
            InitializerRange = root["initializer_range"]?.GetValue<double>() ?? 0.02,
            BosTokenId = Token("bos_token_id", 1),
            EosTokenId = Token("eos_token_id", 2),
        }.Validate();
    }
}
