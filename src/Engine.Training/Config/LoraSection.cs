using Engine.Model;
using Engine.Model.Lora;

namespace Engine.Training.Config;

/// <summary>
/// The [lora] section of a train config or a recipe stage: LoRA with PEFT's meanings (r, alpha, dropout,
/// target_modules — names matched as suffixes of module names, or "all-linear" — and use_rslora). The base model is
/// frozen and its gradient buffer freed; AdamW and data parallelism work on the adapters' own store.
/// </summary>
public sealed class LoraSection
{
    public int R { get; set; } = 8;
    public double Alpha { get; set; } = 16;
    public double Dropout { get; set; }
    public string[] TargetModules { get; set; } = ["q_proj", "v_proj"];
    public bool UseRslora { get; set; }
    /// <summary>Storage of the frozen base: f32. bf16 is refused: the host GEMM and the flat store are fp32-only.</summary>
    public string BaseDtype { get; set; } = "f32";
    /// <summary>Continue training a saved PEFT adapter directory (its own r, alpha and targets apply) instead of fresh adapters.</summary>
    [ConfigPath]
    public string? InitFrom { get; set; }

    public LoraConfig ToLoraConfig() => new() { R = R, Alpha = Alpha, Dropout = Dropout, TargetModules = TargetModules, UseRslora = UseRslora };

    /// <summary>Adds every problem of the section to errors, each naming its key under <paramref name="prefix"/>.</summary>
    public void Validate(string prefix, bool checkpointActivations, List<string> errors)
    {
        try { ToLoraConfig().Validate(); }
        catch (ArgumentException e) { errors.Add($"{prefix}: {e.Message}"); }
        if (BaseDtype == "bf16")
            errors.Add($"{prefix}.base_dtype = \"bf16\" is not implemented: the flat parameter store and the CPU GEMM hold fp32 only (the frozen base stays fp32; its gradient buffer is freed); use \"f32\"");
        else if (BaseDtype != "f32") errors.Add($"{prefix}.base_dtype must be \"f32\" (got \"{BaseDtype}\")");
        if (Dropout > 0 && checkpointActivations)
            errors.Add($"{prefix}.dropout > 0 cannot be combined with model.checkpoint_activations (the recomputed block would draw another dropout mask)");
    }
}

/// <summary>Attaches the adapters a [lora] section describes.</summary>
public static class LoraSetup
{
    /// <summary>Fresh adapters (seeded PEFT initialisation) or, with init_from, a saved PEFT adapter directory.</summary>
    public static LoraAdapters Attach(LlamaModel model, LoraSection section, ulong seed, Func<string, string> resolve)
    {
        try
        {
            return section.InitFrom is { } dir ? LoraAdapters.Load(model, resolve(dir), seed) : LoraAdapters.Attach(model, section.ToLoraConfig(), seed);
        }
        catch (ArgumentException e) { throw new ConfigException($"lora: {e.Message}"); }
    }

    /// <summary>One line: what is trained and what it costs.</summary>
    public static string Describe(LoraAdapters a, LlamaModel model) =>
        $"LoRA r={a.Config.R} alpha={a.Config.Alpha} dropout={a.Config.Dropout} on {a.Modules.Count} layers ({a.Config.Describe()}): " +
        $"{a.ParameterCount:N0} trainable parameters ({100.0 * a.ParameterCount / model.ParameterCount:F2}% of {model.ParameterCount:N0}), base frozen";
}
