using System.Text.RegularExpressions;

namespace Engine.Model.Lora;

/// <summary>One Linear layer an adapter can target: its PEFT module name ("model.layers.0.self_attn.q_proj",
/// "lm_head"), the weight it adds to, and the layer's dimensions (W is [Out, In]); Layer is -1 for lm_head.
/// A packed layer (Baichuan's W_pack) is computed by several engine weights: <see cref="Packed"/> names them with the
/// rows of the layer's output each one produces.</summary>
public sealed record LinearModule(string Module, string Weight, int In, int Out, int Layer)
{
    /// <summary>For a packed layer, the engine weights producing output rows [FirstRow, FirstRow + Rows); null = Weight alone.</summary>
    public IReadOnlyList<LinearPart>? Packed { get; init; }

    /// <summary>The engine weights this layer's output comes from (Weight itself for an ordinary layer).</summary>
    public IReadOnlyList<LinearPart> Parts => Packed ?? [new LinearPart(Weight, 0, Out)];
}

/// <summary>An engine weight producing rows [FirstRow, FirstRow + Rows) of a (packed) layer's output.</summary>
public sealed record LinearPart(string Weight, int FirstRow, int Rows);

/// <summary>
/// LoRA settings with PEFT's meanings (LoraConfig): rank r, lora_alpha, lora_dropout, target_modules and use_rslora.
/// The adapter term is scaling · B A x with scaling = alpha / r (alpha / √r with rsLoRA). Targets follow PEFT's rule:
/// a list matches a module whose name equals an entry or ends with "." + entry ("all-linear": every Linear layer but
/// the output head); <see cref="TargetRegex"/> (PEFT's string form) must match the whole module name.
/// </summary>
public sealed record LoraConfig
{
    public int R { get; init; } = 8;
    public double Alpha { get; init; } = 16;
    public double Dropout { get; init; }
    /// <summary>PEFT's list form; PEFT's own default for Llama is q_proj and v_proj.</summary>
    public IReadOnlyList<string> TargetModules { get; init; } = ["q_proj", "v_proj"];
    /// <summary>PEFT's string form (a regular expression matched against the whole module name); overrides the list.</summary>
    public string? TargetRegex { get; init; }
    public bool UseRslora { get; init; }

    /// <summary>The factor on B A x.</summary>
    public float Scaling => (float)(UseRslora ? Alpha / Math.Sqrt(R) : Alpha / R);

    public const string AllLinear = "all-linear";

    /// <summary>Throws with every problem found, each naming its PEFT key.</summary>
    public LoraConfig Validate()
    {
        var errors = new List<string>();
        if (R <= 0) errors.Add($"r must be positive (got {R})");
        if (!(Alpha > 0) || double.IsInfinity(Alpha)) errors.Add($"lora_alpha must be positive (got {Alpha})");
        if (Dropout is < 0 or >= 1 || double.IsNaN(Dropout)) errors.Add($"lora_dropout must be in [0, 1) (got {Dropout})");
        if (TargetRegex == null && (TargetModules.Count == 0 || TargetModules.Any(string.IsNullOrWhiteSpace)))
            errors.Add("target_modules must name at least one module (e.g. [\"q_proj\", \"v_proj\"] or [\"all-linear\"])");
        if (TargetRegex != null)
        {
            try { _ = new Regex(TargetRegex); }
            catch (ArgumentException e) { errors.Add($"target_modules regex '{TargetRegex}' is invalid: {e.Message}"); }
        }
        if (errors.Count > 0) throw new ArgumentException("invalid LoRA config: " + string.Join("; ", errors));
        return this;
    }

    /// <summary>Whether PEFT would put an adapter on the module of this name.</summary>
    public bool Targets(string module)
    {
        if (TargetRegex != null) return Regex.IsMatch(module, $"^(?:{TargetRegex})$", RegexOptions.CultureInvariant);
        foreach (var t in TargetModules)
        {
            if (t == AllLinear) { if (module != "lm_head") return true; continue; }
            if (module == t || module.EndsWith("." + t, StringComparison.Ordinal)) return true;
        }
        return false;
    }

    /// <summary>The model's Linear layers in Hugging Face state-dict order (what LoRA can target), named as the family's
    /// Hugging Face modules are: Baichuan's attention input is the one packed layer W_pack (q, k, v rows), as PEFT sees it.</summary>
    public static List<LinearModule> LinearModules(LlamaConfig c)
    {
        int h = c.HiddenSize, kv = c.NumKvHeads * c.HeadDim, f = c.IntermediateSize;
        var list = new List<LinearModule>();
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            void Add(string name, int inDim, int outDim) => list.Add(new LinearModule(p + name, p + name + ".weight", inDim, outDim, i));
            if (c.Family == ModelFamily.Baichuan)
                list.Add(new LinearModule(p + "self_attn.W_pack", IO.HfLayout.PackedQkv(i), h, h + 2 * kv, i)
                {
                    Packed = [new(p + "self_attn.q_proj.weight", 0, h), new(p + "self_attn.k_proj.weight", h, kv), new(p + "self_attn.v_proj.weight", h + kv, kv)],
                });
            else
            {
                Add("self_attn.q_proj", h, h);
                Add("self_attn.k_proj", h, kv);
                Add("self_attn.v_proj", h, kv);
            }
            Add("self_attn.o_proj", h, h);
            Add("mlp.gate_proj", h, f);
            Add("mlp.up_proj", h, f);
            Add("mlp.down_proj", f, h);
        }
        list.Add(new LinearModule("lm_head", "lm_head.weight", h, c.VocabSize, -1));
        return list;
    }

    /// <summary>The modules this config targets in a model of config <paramref name="model"/>; refuses a config that
    /// matches nothing, or the head where the engine cannot honour it.</summary>
    public List<LinearModule> Resolve(LlamaConfig model)
    {
        var all = LinearModules(model);
        var hit = all.Where(m => Targets(m.Module)).ToList();
        if (hit.Count == 0)
            throw new ArgumentException($"LoRA target_modules {Describe()} match no Linear layer of the model (it has " +
                $"{string.Join(", ", all.Select(m => m.Module[(m.Module.LastIndexOf('.') + 1)..]).Distinct(StringComparer.Ordinal))})");
        if (hit.Any(m => m.Layer < 0) && (model.TieWordEmbeddings || model.NormHead))
            throw new NotSupportedException("LoRA on lm_head needs an untied head without NormHead (tie_word_embeddings = false, norm_head = false): merging would change the tied embeddings or the normalised head");
        return hit;
    }

    /// <summary>target_modules as written in adapter_config.json: the regex, or the short names of the matched modules
    /// (PEFT also writes "all-linear" out as the names it found).</summary>
    public object TargetsForPeft(IEnumerable<LinearModule> resolved)
    {
        if (TargetRegex != null) return TargetRegex;
        if (!TargetModules.Contains(AllLinear)) return TargetModules.ToArray();
        return resolved.Select(m => m.Module[(m.Module.LastIndexOf('.') + 1)..]).Concat(TargetModules.Where(t => t != AllLinear))
            .Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
    }

    public string Describe() => TargetRegex != null ? $"'{TargetRegex}'" : "[" + string.Join(", ", TargetModules) + "]";
}
