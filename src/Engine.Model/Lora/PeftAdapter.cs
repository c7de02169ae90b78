using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Model.IO;

namespace Engine.Model.Lora;

/// <summary>
/// PEFT's adapter directory: adapter_config.json (LoraConfig's fields, peft_type "LORA", task_type "CAUSAL_LM") and
/// adapter_model.safetensors with PEFT's tensor names (the adapter name "default" left out, as save_pretrained
/// writes them): base_model.model.{module}.lora_A.weight [r, in] and .lora_B.weight [out, r].
/// <para>
/// Reading is strict: every tensor the config implies must be present with its shape (F32, BF16 or F16, widened
/// exactly), none may be left over, and PEFT options the engine does not compute — DoRA, biases, fan_in_fan_out,
/// rank/alpha patterns, layers_to_transform, exclude_modules, modules_to_save — are refused by name rather than ignored.
/// </para>
/// </summary>
public static class PeftAdapter
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";

    /// <summary>Reads and checks adapter_config.json of an adapter directory.</summary>
    public static LoraConfig ReadConfig(string directory)
    {
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"adapter directory not found: {directory}");
        string path = Path.Combine(directory, ConfigFile);
        if (!File.Exists(path)) throw new FileNotFoundException($"{directory} has no {ConfigFile} (a PEFT adapter directory holds {ConfigFile} and {WeightsFile})", path);
        JsonObject o;
        try { o = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: expected a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: invalid JSON: {e.Message}"); }
        InvalidDataException Bad(string message) => new($"{path}: {message}");

        string peftType = Str(o, "peft_type") ?? throw Bad("no peft_type (expected \"LORA\")");
        if (peftType != "LORA") throw Bad($"peft_type is \"{peftType}\"; the engine reads LoRA adapters only");
        if (Str(o, "task_type") is { } task && task != "CAUSAL_LM") throw Bad($"task_type is \"{task}\"; the engine runs causal language models (CAUSAL_LM)");
        void Refuse(string key, Func<JsonNode?, bool> isSet, string why)
        {
            if (o.TryGetPropertyValue(key, out var v) && v != null && isSet(v)) throw Bad($"{key} = {v.ToJsonString()} is not supported ({why})");
        }
        static bool True(JsonNode v) => v.GetValueKind() == JsonValueKind.True;
        static bool NonEmpty(JsonNode v) => v switch { JsonObject ob => ob.Count > 0, JsonArray a => a.Count > 0, _ => v.GetValueKind() != JsonValueKind.Null };
        Refuse("use_dora", v => True(v!), "DoRA's magnitude vector is not computed");
        Refuse("fan_in_fan_out", v => True(v!), "Conv1D-style transposed weights do not occur in Llama models");
        Refuse("lora_bias", v => True(v!), "adapter biases are not computed");
        Refuse("bias", v => v!.GetValueKind() != JsonValueKind.String || v.GetValue<string>() != "none", "only bias = \"none\"");
        Refuse("rank_pattern", v => NonEmpty(v!), "one rank for every module");
        Refuse("alpha_pattern", v => NonEmpty(v!), "one alpha for every module");
        Refuse("layers_to_transform", v => NonEmpty(v!), "adapters on a subset of layers are not supported");
        Refuse("exclude_modules", v => NonEmpty(v!), "not supported");
        Refuse("modules_to_save", v => NonEmpty(v!), "fully trained extra modules are not supported");
        Refuse("target_parameters", v => NonEmpty(v!), "adapters on parameters (not modules) are not supported");

        double rv = Num(o, "r") ?? throw Bad("no r (the adapter rank)");
        if (rv != Math.Floor(rv) || rv is < 1 or > 65536) throw Bad($"r must be a positive integer (got {rv})");
        int r = (int)rv;
        double alpha = Num(o, "lora_alpha") ?? 8;             // PEFT's defaults
        double dropout = Num(o, "lora_dropout") ?? 0;
        bool rs = o.TryGetPropertyValue("use_rslora", out var rsv) && rsv != null && True(rsv);
        IReadOnlyList<string> targets = ["q_proj", "v_proj"];  // PEFT's default mapping for llama when null
        string? regex = null;
        if (o.TryGetPropertyValue("target_modules", out var tv) && tv != null)
        {
            switch (tv)
            {
                case JsonArray a:
                    targets = a.Select(x => x?.GetValueKind() == JsonValueKind.String ? x.GetValue<string>() : throw Bad("target_modules must hold strings")).ToList();
                    break;
                case JsonValue when tv.GetValueKind() == JsonValueKind.String:
                    string s = tv.GetValue<string>();
                    if (s == LoraConfig.AllLinear) targets = [LoraConfig.AllLinear];
                    else regex = s;
                    break;
                default: throw Bad("target_modules must be a list of names or a regular expression string");
            }
        }
        try
        {
            return new LoraConfig { R = r, Alpha = alpha, Dropout = dropout, TargetModules = targets, TargetRegex = regex, UseRslora = rs }.Validate();
        }
        catch (ArgumentException e) { throw Bad(e.Message); }
    }

    /// <summary>Loads adapter_model.safetensors into the adapters' store, checking names and shapes.</summary>
    internal static void ReadWeights(string directory, LoraAdapters adapters)
    {
        string path = Path.Combine(directory, WeightsFile);
        if (!File.Exists(path))
        {
            string bin = Path.Combine(directory, "adapter_model.bin");
            throw new FileNotFoundException(File.Exists(bin)
                ? $"{directory} holds adapter_model.bin (a pickle): save the adapter with safe_serialization=True (adapter_model.safetensors)"
                : $"{directory} has no {WeightsFile}", path);
        }
        using var f = SafeTensorsFile.Open(path);
        var expected = adapters.Store.Slots.ToDictionary(s => s.Name, StringComparer.Ordinal);
        // a pipeline stage reads its own layers' adapters and passes over the other stages'
        var whole = adapters.AllModules.SelectMany(m => new[] { LoraAdapters.AName(m.Module), LoraAdapters.BName(m.Module) }).ToHashSet(StringComparer.Ordinal);
        foreach (var e in f.Entries)
            if (!whole.Contains(e.Name))
                throw new InvalidDataException($"{path}: tensor '{e.Name}' is not an adapter of this config (r = {adapters.Config.R}, target_modules {adapters.Config.Describe()}) on this model");
        foreach (var (name, slot) in expected)
        {
            if (!f.Contains(name)) throw new InvalidDataException($"{path}: tensor '{name}' is missing (target_modules {adapters.Config.Describe()} selects its module)");
            var e = f[name];
            if (!e.Shape.Select(d => (int)d).SequenceEqual(slot.Shape))
                throw new InvalidDataException($"{path}: tensor '{name}' has shape [{string.Join(", ", e.Shape)}], this model needs [{string.Join(", ", slot.Shape)}] (r = {adapters.Config.R})");
            adapters.Store.Backend.Upload(slot.Tensor, f.ReadFloat32(name));
        }
    }

    /// <summary>Writes the adapter directory (files replaced atomically).</summary>
    internal static void Write(string directory, LoraAdapters adapters, string? baseModel)
    {
        Directory.CreateDirectory(directory);
        var c = adapters.Config;
        var targets = c.TargetsForPeft(adapters.AllModules);
        var json = new JsonObject
        {
            ["alpha_pattern"] = new JsonObject(),
            ["auto_mapping"] = null,
            ["base_model_name_or_path"] = baseModel,
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["layers_pattern"] = null,
            ["layers_to_transform"] = null,
            ["lora_alpha"] = c.Alpha,
            ["lora_dropout"] = c.Dropout,
            ["modules_to_save"] = null,
            ["peft_type"] = "LORA",
            ["r"] = c.R,
            ["rank_pattern"] = new JsonObject(),
            ["revision"] = null,
            ["target_modules"] = targets is string s ? JsonValue.Create(s) : new JsonArray(((string[])targets).Select(t => (JsonNode?)JsonValue.Create(t)).ToArray()),
            ["task_type"] = "CAUSAL_LM",
            ["use_dora"] = false,
            ["use_rslora"] = c.UseRslora,
        };
        string cfgPath = Path.Combine(directory, ConfigFile);
        File.WriteAllText(cfgPath + ".tmp", json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        File.Move(cfgPath + ".tmp", cfgPath, overwrite: true);
        SafeTensorsWriter.Write(Path.Combine(directory, WeightsFile),
            adapters.Store.Slots.Select(s => new SafeTensorWrite(s.Name, s.Shape.Select(d => (long)d).ToArray(), s.Tensor.ToArray())),
            new Dictionary<string, string> { ["format"] = "pt" });
    }

    static string? Str(JsonObject o, string key) =>
        o.TryGetPropertyValue(key, out var v) && v?.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : null;

    static double? Num(JsonObject o, string key) =>
        o.TryGetPropertyValue(key, out var v) && v?.GetValueKind() == JsonValueKind.Number ? v.GetValue<double>() : null;
}
