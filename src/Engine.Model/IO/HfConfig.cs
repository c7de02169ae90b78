using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Core;

namespace Engine.Model.IO;

/// <summary>
/// What a Hugging Face model directory holds beyond the architecture, carried from load to save so a model that
/// came from the Hub goes back out with the same generation defaults, chat template and config fields.
/// Null on <see cref="LlamaConfig.Hf"/> for models the engine created.
/// </summary>
public sealed record HfExtras
{
    /// <summary>config.json fields the engine does not model (pad_token_id, transformers_version, a dynamic rope_scaling, …) as one JSON object.</summary>
    public string? ConfigFields { get; init; }

    /// <summary>generation_config.json, verbatim.</summary>
    public string? GenerationConfig { get; init; }

    /// <summary>tokenizer_config.json, verbatim (special-token names, chat_template, …).</summary>
    public string? TokenizerConfig { get; init; }

    /// <summary>chat_template.jinja (newer transformers save the template beside tokenizer_config.json), verbatim.</summary>
    public string? ChatTemplateJinja { get; init; }

    /// <summary>tokenizer.json, verbatim: the tokenizer the model was trained with (see <see cref="ModelArtifacts"/>).</summary>
    public string? TokenizerJson { get; init; }

    /// <summary>The default chat template: chat_template.jinja, else tokenizer_config.json's chat_template (a string, or the entry named "default" of a list).</summary>
    public string? ChatTemplate
    {
        get
        {
            if (ChatTemplateJinja != null) return ChatTemplateJinja;
            if (TokenizerConfig == null) return null;
            try
            {
                var node = JsonNode.Parse(TokenizerConfig)?["chat_template"];
                if (node is JsonValue v && v.TryGetValue<string>(out var s)) return s;
                if (node is JsonArray list)
                    foreach (var e in list)
                        if (e?["name"]?.GetValue<string>() == "default") return e["template"]?.GetValue<string>();
            }
            catch (JsonException) { }
            catch (InvalidOperationException) { }
            return null;
        }
    }
}

/// <summary>
/// config.json as transformers reads it for Llama-family models (LlamaConfig / MistralConfig), to and from
/// <see cref="LlamaConfig"/>.
///
/// RoPE scaling, matched to transformers' <c>modeling_rope_utils</c>:
/// <list type="bullet">
/// <item>"linear": inv_freq / factor — the engine divides positions by the factor, the same angles.</item>
/// <item>"dynamic" (dynamic NTK): the base becomes θ·((f·L/L₀) − (f − 1))^(d/(d−2)) only when the running
/// sequence length L exceeds max_position_embeddings L₀; up to L₀ it is plain RoPE. The engine runs it as plain RoPE
/// and refuses positions past L₀ (its position check), so every sequence it accepts gets transformers' exact angles;
/// the rope_scaling entry is kept and written back.</item>
/// <item>"llama3", "yarn", "longrope" and anything else are refused by name: they need per-frequency factors (and
/// for yarn an attention factor on cos/sin) that the engine's RoPE kernels do not compute.</item>
/// </list>
/// The engine's own context extension, static NTK (base θ·f^(d/(d−2)) at every length), is NOT transformers'
/// "dynamic". It is exported as what it exactly is: plain RoPE with rope_theta = θ·f^(d/(d−2)) (the same double the
/// engine computes its frequencies from; transformers then takes base^(2i/d) in fp32 as it does for any rope_theta, the
/// same last-bit difference as for unscaled RoPE) and max_position_embeddings = ⌊L₀·f⌋, plus an "engine_rope_scaling"
/// record (ignored by transformers) from which the engine restores the NTK setting.
/// </summary>
public static class HfConfig
{
    /// <summary>The key of the engine's static-NTK record in config.json.</summary>
    public const string EngineRopeKey = "engine_rope_scaling";

    /// <summary>Fields this reader consumes or checks; every other field is carried in <see cref="HfExtras.ConfigFields"/>.</summary>
    static readonly HashSet<string> Known = new(StringComparer.Ordinal)
    {
        "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
        "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings", "norm_head", "initializer_range",
        "hidden_act", "attention_bias", "mlp_bias", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype",
        "sliding_window", "use_sliding_window", "_name_or_path", EngineRopeKey,
    };

    /// <summary>The rope base that static NTK scaling amounts to (the expression RopeParams.InverseFrequencies uses).</summary>
    public static double NtkTheta(double theta, double factor, int headDim) => theta * Math.Pow(factor, headDim / (headDim - 2.0));

    /// <summary>config.json text; torchDtype names the dtype the weights are saved in ("float32", "bfloat16", "float16").</summary>
    public static string ToJson(LlamaConfig c, string torchDtype = "float32")
    {
        var extra = c.Hf?.ConfigFields is { } ef ? JsonNode.Parse(ef) as JsonObject : null;
        JsonNode? eos = c.EosTokenId;
        if (extra?["eos_token_id"] is JsonArray list && list.Count > 0 && list[0] is JsonValue first
            && first.TryGetValue<int>(out int e0) && e0 == c.EosTokenId)
            eos = list.DeepClone();
        if (c.Family == ModelFamily.Baichuan) return ToJsonBaichuan(c, torchDtype, extra, eos);
        double theta = c.RopeTheta;
        int maxPos = c.MaxPositionEmbeddings;
        JsonNode? scaling = null;
        JsonObject? engineRope = null;
        switch (c.RopeScaling)
        {
            case RopeScalingKind.Linear:
                scaling = new JsonObject { ["rope_type"] = "linear", ["type"] = "linear", ["factor"] = c.RopeScalingFactor };
                break;
            case RopeScalingKind.Ntk:
                theta = NtkTheta(c.RopeTheta, c.RopeScalingFactor, c.HeadDim);
                maxPos = (int)Math.Floor(c.MaxPositionEmbeddings * c.RopeScalingFactor);
                engineRope = new JsonObject
                {
                    ["type"] = "ntk",
                    ["factor"] = c.RopeScalingFactor,
                    ["rope_theta"] = c.RopeTheta,
                    ["max_position_embeddings"] = c.MaxPositionEmbeddings,
                };
                break;
            default:
                scaling = extra?["rope_scaling"]?.DeepClone(); // a carried "dynamic": plain RoPE up to max_position_embeddings
                break;
        }
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["vocab_size"] = c.VocabSize,
            ["hidden_size"] = c.HiddenSize,
            ["intermediate_size"] = c.IntermediateSize,
            ["num_hidden_layers"] = c.NumLayers,
            ["num_attention_heads"] = c.NumHeads,
            ["num_key_value_heads"] = c.NumKvHeads,
            ["head_dim"] = c.HeadDim,
            ["max_position_embeddings"] = maxPos,
            ["rms_norm_eps"] = c.RmsNormEps,
            ["rope_theta"] = theta,
            ["rope_scaling"] = scaling,
            ["tie_word_embeddings"] = c.TieWordEmbeddings,
            ["initializer_range"] = c.InitializerRange,
            ["hidden_act"] = "silu",
            ["attention_bias"] = false,
            ["mlp_bias"] = false,
            ["bos_token_id"] = c.BosTokenId,
            ["eos_token_id"] = eos,
            ["pad_token_id"] = c.PadTokenId,
            ["torch_dtype"] = torchDtype,
        };
        if (c.NameOrPath != null) o["_name_or_path"] = c.NameOrPath;
        if (c.NormHead) o["norm_head"] = true;
        if (engineRope != null) o[EngineRopeKey] = engineRope;
        if (extra != null)
            foreach (var (k, v) in extra)
                if (!o.ContainsKey(k) && !Known.Contains(k)) o[k] = v?.DeepClone();
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Reads config.json; refuses what the engine cannot run exactly, naming the field.</summary>
    public static LlamaConfig FromJson(string json, string source = "config.json")
    {
        JsonObject root;
        try { root = JsonNode.Parse(json) as JsonObject ?? throw new JsonException("not a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: not valid JSON ({ErrorText.OneLine(e.Message)})", e); }
        try { return Read(root, source); }
        catch (Exception e) when (e is InvalidOperationException or FormatException or OverflowException)
        {
            throw new InvalidDataException($"{source}: a field has the wrong JSON type ({ErrorText.OneLine(e.Message)})", e);
        }
        catch (ArgumentException e) // JsonObject refuses a key that appears twice when it is first read
        {
            throw new InvalidDataException($"{source}: {ErrorText.OneLine(e.Message)}", e);
        }
    }

    static LlamaConfig Read(JsonObject root, string source)
    {
        InvalidDataException Bad(string why) => new($"{source}: {ErrorText.OneLine(why)}");
        // typed reads: a field of the wrong JSON type, or a number outside its range, is refused naming the field
        string Where(JsonNode n) => n.GetPath().TrimStart('$', '.');
        int? IntOf(JsonNode? n)
        {
            if (n == null) return null;
            if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number)
                return v.TryGetValue<int>(out int x) ? x : throw Bad($"'{Where(n)}' = {n.ToJsonString()} is not a 32-bit integer");
            throw Bad($"'{Where(n)}' must be an integer (got {n.ToJsonString()})");
        }
        double? DoubleOf(JsonNode? n)
        {
            if (n == null) return null;
            if (n is JsonValue v && v.GetValueKind() == JsonValueKind.Number)
                return v.TryGetValue<double>(out double x) && double.IsFinite(x) ? x : throw Bad($"'{Where(n)}' = {n.ToJsonString()} is not a finite number");
            throw Bad($"'{Where(n)}' must be a number (got {n.ToJsonString()})");
        }
        bool? BoolOf(JsonNode? n) => n == null ? null
            : n.GetValueKind() switch { JsonValueKind.True => true, JsonValueKind.False => false, _ => throw Bad($"'{Where(n)}' must be true or false (got {n.ToJsonString()})") };
        string? StrOf(JsonNode? n) => n == null ? null
            : n.GetValueKind() == JsonValueKind.String ? n.GetValue<string>() : throw Bad($"'{Where(n)}' must be a string (got {n.ToJsonString()})");
        var family = FamilyOf(root, StrOf, Bad);
        if (root["quantization_config"] is JsonObject q)
            throw Bad($"quantization_config ({q["quant_method"]?.ToString() ?? "unknown method"}): quantized checkpoints are not read; load the unquantized weights");
        int Int(string name, int? dflt = null)
        {
            var n = root[name];
            if (n == null) return dflt ?? throw Bad($"missing required field '{name}'");
            return IntOf(n)!.Value;
        }
        foreach (var flag in new[] { "attention_bias", "mlp_bias" })
            if (BoolOf(root[flag]) == true) throw Bad($"'{flag}: true' is not supported");
        string? act = StrOf(root["hidden_act"]);
        if (act != null && act != "silu") throw Bad($"hidden_act '{act}' is not supported (silu only)");
        int heads = Int("num_attention_heads");
        int hidden = Int("hidden_size");
        int maxPos = Int("max_position_embeddings", 2048);
        int? headDimField = IntOf(root["head_dim"]);
        if (headDimField != null && heads > 0 && headDimField != hidden / heads)
            throw Bad($"head_dim {headDimField} != hidden_size / num_attention_heads ({hidden / Math.Max(heads, 1)}) is not supported");
        if (root["sliding_window"] is JsonValue sw && sw.TryGetValue<int>(out int window) && window < maxPos
            && BoolOf(root["use_sliding_window"]) != false)
            throw Bad($"sliding_window {window} < max_position_embeddings {maxPos}: sliding-window attention is not supported (the engine attends to every earlier position)");

        if (family == ModelFamily.Baichuan) return ReadBaichuan(root, heads, hidden, Int, IntOf, DoubleOf, BoolOf, Bad);

        var extra = new JsonObject();
        foreach (var (k, v) in root)
            if (!Known.Contains(k)) extra[k] = v?.DeepClone();
        if (root["eos_token_id"] is JsonArray eosList) extra["eos_token_id"] = eosList.DeepClone();

        // rope: legacy rope_theta + rope_scaling, or transformers 5's rope_parameters
        var ropeParams = root["rope_parameters"] as JsonObject;
        double theta = DoubleOf(root["rope_theta"]) ?? DoubleOf(ropeParams?["rope_theta"]) ?? 10000.0;
        var scalingObj = root["rope_scaling"] as JsonObject ?? ropeParams;
        var scaling = RopeScalingKind.None; double factor = 1;
        if (scalingObj != null)
        {
            string kind = StrOf(scalingObj["rope_type"] ?? scalingObj["type"]) ?? "default";
            double Factor()
            {
                double f = DoubleOf(scalingObj["factor"]) ?? throw Bad($"rope_scaling '{kind}' has no factor");
                if (!(f >= 1)) throw Bad($"rope_scaling.factor must be >= 1 (got {f})");
                return f;
            }
            switch (kind)
            {
                case "default":
                    break;
                case "linear":
                    scaling = RopeScalingKind.Linear; factor = Factor();
                    break;
                case "dynamic":
                    Factor();
                    var kept = (JsonObject)scalingObj.DeepClone();
                    kept.Remove("rope_theta");
                    extra["rope_scaling"] = kept;
                    break;
                case "llama3" or "yarn" or "longrope" or "su" or "mrope":
                    throw Bad($"rope_scaling type '{kind}' is not supported: it scales each frequency separately{(kind == "yarn" ? " and scales cos/sin by an attention factor" : "")}, which the engine's RoPE kernels do not compute (supported: default, linear, dynamic)");
                default:
                    throw Bad($"rope_scaling type '{kind}' is not supported (supported: default, linear, dynamic)");
            }
        }
        if (root[EngineRopeKey] is JsonObject ntk)
        {
            if (scaling != RopeScalingKind.None || extra.ContainsKey("rope_scaling"))
                throw Bad($"both rope_scaling and {EngineRopeKey} are set; keep one");
            if (StrOf(ntk["type"]) != "ntk") throw Bad($"{EngineRopeKey}.type must be \"ntk\"");
            double f = DoubleOf(ntk["factor"]) ?? throw Bad($"{EngineRopeKey} has no factor");
            double baseTheta = DoubleOf(ntk["rope_theta"]) ?? throw Bad($"{EngineRopeKey} has no rope_theta");
            int baseMax = IntOf(ntk["max_position_embeddings"]) ?? throw Bad($"{EngineRopeKey} has no max_position_embeddings");
            int headDim = hidden / Math.Max(heads, 1);
            if (NtkTheta(baseTheta, f, headDim) != theta || (int)Math.Floor(baseMax * f) != maxPos)
                throw Bad($"{EngineRopeKey} (NTK ×{f} on rope_theta {baseTheta}, max_position_embeddings {baseMax}) does not match rope_theta {theta} / max_position_embeddings {maxPos}; remove {EngineRopeKey} to load it as plain RoPE at rope_theta {theta}");
            scaling = RopeScalingKind.Ntk; factor = f; theta = baseTheta; maxPos = baseMax;
        }

        int? Token(string name, int? d)
        {
            if (!root.TryGetPropertyValue(name, out var n)) return d;   // absent: transformers' LlamaConfig default
            return n switch
            {
                null => null,                                           // explicitly none (a vocabulary without BOS)
                JsonValue v when v.TryGetValue<int>(out int x) => x,
                JsonArray a when a.Count > 0 && a[0] is JsonValue v0 && v0.TryGetValue<int>(out int x0) => x0,
                _ => d,
            };
        }
        var cfg = new LlamaConfig
        {
            VocabSize = Int("vocab_size"),
            HiddenSize = hidden,
            IntermediateSize = Int("intermediate_size"),
            NumLayers = Int("num_hidden_layers"),
            NumHeads = heads,
            NumKvHeads = Int("num_key_value_heads", heads),
            MaxPositionEmbeddings = maxPos,
            RmsNormEps = (float)(DoubleOf(root["rms_norm_eps"]) ?? 1e-6),
            RopeTheta = theta,
            RopeScaling = scaling,
            RopeScalingFactor = factor,
            TieWordEmbeddings = BoolOf(root["tie_word_embeddings"]) ?? false,
            NormHead = BoolOf(root["norm_head"]) ?? false,
            InitializerRange = DoubleOf(root["initializer_range"]) ?? 0.02,
            BosTokenId = Token("bos_token_id", 1),
            EosTokenId = Token("eos_token_id", 2) ?? 2,
            PadTokenId = Token("pad_token_id", null),
            NameOrPath = StrOf(root["_name_or_path"]),
            Hf = extra.Count > 0 ? new HfExtras { ConfigFields = extra.ToJsonString() } : null,
        };
        try { return cfg.Validate(); }
        catch (ArgumentException e) { throw Bad(e.Message); }
    }

    /// <summary>The Hugging Face classes (config.json "architectures") and model types each family reads.</summary>
    static readonly (string Name, ModelFamily Family)[] Architectures =
    [
        ("LlamaForCausalLM", ModelFamily.Llama), ("MistralForCausalLM", ModelFamily.Llama),
        ("BaichuanForCausalLM", ModelFamily.Baichuan), ("BaiChuanForCausalLM", ModelFamily.Baichuan),
    ];
    static readonly (string Name, ModelFamily Family)[] ModelTypes =
        [("llama", ModelFamily.Llama), ("mistral", ModelFamily.Llama), ("baichuan", ModelFamily.Baichuan)];

    /// <summary>The family config.json names: by model_type, else by architectures (none: Llama); an unknown name, or
    /// the two disagreeing, is refused naming the field.</summary>
    static ModelFamily FamilyOf(JsonObject root, Func<JsonNode?, string?> str, Func<string, InvalidDataException> bad)
    {
        ModelFamily? byType = null, byArch = null;
        if (str(root["model_type"]) is { } type)
        {
            var hit = ModelTypes.Where(t => t.Name == type).ToList();
            if (hit.Count == 0) throw bad($"model_type '{type}' is not supported (supported: {string.Join(", ", ModelTypes.Select(t => t.Name))})");
            byType = hit[0].Family;
        }
        switch (root["architectures"])
        {
            case null:
                break;
            case JsonArray list:
                foreach (var e in list)
                {
                    string name = str(e) ?? throw bad("'architectures' must list class names");
                    var hit = Architectures.Where(a => a.Name == name).ToList();
                    if (hit.Count == 0)
                        throw bad($"architectures entry '{name}' is not supported (supported: {string.Join(", ", Architectures.Select(a => a.Name))})");
                    if (byArch != null && byArch != hit[0].Family) throw bad($"architectures names classes of two model families ({string.Join(", ", list)})");
                    byArch = hit[0].Family;
                }
                break;
            default:
                throw bad($"'architectures' must be a list of class names (got {root["architectures"]!.ToJsonString()})");
        }
        if (byType != null && byArch != null && byType != byArch)
            throw bad($"model_type '{str(root["model_type"])}' and architectures {root["architectures"]!.ToJsonString()} name different model families");
        return byType ?? byArch ?? ModelFamily.Llama;
    }

    /// <summary>Baichuan 2's vocabulary size: vLLM's rule for telling Baichuan 2 (NormHead) from Baichuan 1 when a config says nothing.</summary>
    public const int Baichuan2VocabSize = 125696;

    /// <summary>Baichuan fields this reader consumes (besides the shared checks of <see cref="Read"/>); with RoPE (7B)
    /// model_max_length is not the model's length (max_position_embeddings is) and is carried as is.</summary>
    static readonly HashSet<string> BaichuanKnown = new(StringComparer.Ordinal)
    {
        "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "model_max_length", "rms_norm_eps",
        "tie_word_embeddings", "norm_head", "z_loss_weight", "initializer_range", "hidden_act", "attention_bias", "mlp_bias",
        "bos_token_id", "eos_token_id", "torch_dtype", "dtype", "sliding_window", "use_sliding_window",
    };

    /// <summary>
    /// config.json of a Baichuan 2 checkpoint, read as its modeling code reads it: 7B (RoPE, base 10000) when the config
    /// has max_position_embeddings, 13B (ALiBi, max bias 8) when it has only model_max_length — the same test
    /// optimum-habana's merged Baichuan model makes (the two shipped configs differ exactly there). NormHead: the engine's
    /// "norm_head" when written, else on for Baichuan 2's 125,696-token vocabulary (vLLM's rule; Baichuan 1's head is plain).
    /// z_loss_weight is the max-z loss weight. Fields Baichuan's code does not read but that would change the model
    /// elsewhere — rope_theta other than 10000, any rope_scaling, num_key_value_heads other than the head count, tied
    /// embeddings — are refused by name.
    /// </summary>
    static LlamaConfig ReadBaichuan(JsonObject root, int heads, int hidden, Func<string, int?, int> require, Func<JsonNode?, int?> intOf,
        Func<JsonNode?, double?> doubleOf, Func<JsonNode?, bool?> boolOf, Func<string, InvalidDataException> bad)
    {
        bool rope = root.ContainsKey("max_position_embeddings");
        string model = rope ? "Baichuan (7B-style, RoPE)" : "Baichuan (13B-style, ALiBi)";
        if (root["rope_scaling"] is { } rs && rs.GetValueKind() != JsonValueKind.Null)
            throw bad(rope
                ? $"rope_scaling {rs.ToJsonString()}: Baichuan's modeling code does not read rope_scaling (its rotary embedding is fixed at base 10000)"
                : $"rope_scaling {rs.ToJsonString()} with ALiBi positions: a {model} model has no rotary embedding to scale");
        foreach (var key in new[] { "rope_parameters", EngineRopeKey })
            if (root[key] is { } rp && rp.GetValueKind() != JsonValueKind.Null) throw bad($"{key}: Baichuan's modeling code has no rotary scaling ({model})");
        if (doubleOf(root["rope_theta"]) is { } theta && theta != LlamaConfig.BaichuanRopeTheta)
            throw bad($"rope_theta {theta}: Baichuan's modeling code does not read rope_theta (its rotary base is fixed at {LlamaConfig.BaichuanRopeTheta})");
        if (intOf(root["num_key_value_heads"]) is { } kvh && kvh != heads)
            throw bad($"num_key_value_heads {kvh} != num_attention_heads {heads}: Baichuan's W_pack packs one key and one value head per query head");
        if (boolOf(root["tie_word_embeddings"]) == true) throw bad("tie_word_embeddings: true is not supported for Baichuan (its lm_head is a NormHead of its own)");
        int maxPos = rope ? require("max_position_embeddings", null) : require("model_max_length", null);
        int vocab = require("vocab_size", null);
        var extra = new JsonObject();
        foreach (var (k, v) in root)
            if (!BaichuanKnown.Contains(k) || (rope && k == "model_max_length")) extra[k] = v?.DeepClone();
        if (root["eos_token_id"] is JsonArray eosList) extra["eos_token_id"] = eosList.DeepClone();
        extra.Remove("rope_theta");   // 10000 or absent (checked above): the fixed base
        int Token(string name, int d) => root[name] switch
        {
            JsonValue v when v.TryGetValue<int>(out int x) => x,
            JsonArray a when a.Count > 0 && a[0] is JsonValue v0 && v0.TryGetValue<int>(out int x0) => x0,
            _ => d,
        };
        var cfg = new LlamaConfig
        {
            Family = ModelFamily.Baichuan,
            Position = rope ? PositionEmbedding.Rope : PositionEmbedding.Alibi,
            VocabSize = vocab,
            HiddenSize = hidden,
            IntermediateSize = require("intermediate_size", null),
            NumLayers = require("num_hidden_layers", null),
            NumHeads = heads,
            NumKvHeads = heads,
            MaxPositionEmbeddings = maxPos,
            RmsNormEps = (float)(doubleOf(root["rms_norm_eps"]) ?? 1e-6),
            RopeTheta = LlamaConfig.BaichuanRopeTheta,
            NormHead = boolOf(root["norm_head"]) ?? vocab == Baichuan2VocabSize,
            MaxZLossWeight = doubleOf(root["z_loss_weight"]) ?? 0,
            InitializerRange = doubleOf(root["initializer_range"]) ?? 0.02,
            BosTokenId = Token("bos_token_id", 1),
            EosTokenId = Token("eos_token_id", 2),
            Hf = extra.Count > 0 ? new HfExtras { ConfigFields = extra.ToJsonString() } : null,
        };
        try { return cfg.Validate(); }
        catch (ArgumentException e) { throw bad(e.Message); }
    }

    /// <summary>The official repositories whose remote code (modeling_baichuan.py) an engine-made Baichuan directory
    /// points at in auto_map ("repo--module.Class", resolved by transformers with trust_remote_code).</summary>
    public static string BaichuanCodeRepository(PositionEmbedding position) =>
        position == PositionEmbedding.Rope ? "baichuan-inc/Baichuan2-7B-Base" : "baichuan-inc/Baichuan2-13B-Base";

    /// <summary>config.json of a Baichuan model in the layout its modeling code reads (see <see cref="ReadBaichuan"/>).</summary>
    static string ToJsonBaichuan(LlamaConfig c, string torchDtype, JsonObject? extra, JsonNode? eos)
    {
        bool rope = c.Position == PositionEmbedding.Rope;
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray("BaichuanForCausalLM"),
            ["model_type"] = "baichuan",
            ["vocab_size"] = c.VocabSize,
            ["hidden_size"] = c.HiddenSize,
            ["intermediate_size"] = c.IntermediateSize,
            ["num_hidden_layers"] = c.NumLayers,
            ["num_attention_heads"] = c.NumHeads,
        };
        if (rope) o["max_position_embeddings"] = c.MaxPositionEmbeddings;
        o["model_max_length"] = rope && extra?["model_max_length"] is { } mml ? mml.DeepClone() : c.MaxPositionEmbeddings;
        o["rms_norm_eps"] = c.RmsNormEps;
        o["hidden_act"] = "silu";
        o["initializer_range"] = c.InitializerRange;
        o["tie_word_embeddings"] = false;
        o["norm_head"] = c.NormHead;
        o["z_loss_weight"] = c.MaxZLossWeight;
        o["bos_token_id"] = c.BosTokenId;
        o["eos_token_id"] = eos;
        o["torch_dtype"] = torchDtype;
        if (extra?["auto_map"] == null)
        {
            string repo = BaichuanCodeRepository(c.Position);
            o["auto_map"] = new JsonObject
            {
                ["AutoConfig"] = $"{repo}--configuration_baichuan.BaichuanConfig",
                ["AutoModelForCausalLM"] = $"{repo}--modeling_baichuan.BaichuanForCausalLM",
            };
        }
        if (extra != null)
            foreach (var (k, v) in extra)
                if (!o.ContainsKey(k) && (!BaichuanKnown.Contains(k) || k == "model_max_length")) o[k] = v?.DeepClone();
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }
}
