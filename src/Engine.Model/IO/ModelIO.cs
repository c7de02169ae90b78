using Engine.Core;

namespace Engine.Model.IO;

/// <summary>Saves and loads a Llama in the Hugging Face layout: config.json + model.safetensors in one directory.</summary>
public static class ModelIO
{
    public const string WeightsFile = "model.safetensors";
    public const string ConfigFile = "config.json";

    /// <summary>Writes weights (F32 or BF16) and config.json. Existing files are replaced atomically.</summary>
    public static void Save(LlamaModel model, string directory, string dtype = "F32", IReadOnlyDictionary<string, string>? metadata = null)
    {
        Directory.CreateDirectory(directory);
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        if (metadata != null) foreach (var (k, v) in metadata) meta[k] = v;
        SafeTensorsWriter.Write(Path.Combine(directory, WeightsFile),
            model.Parameters.Select(p => new SafeTensorWrite(p.Name, p.Tensor.Shape.Select(d => (long)d).ToArray(), p.Tensor.ToArray(), dtype)),
            meta);
        string cfgPath = Path.Combine(directory, ConfigFile);
        File.WriteAllText(cfgPath + ".tmp", model.Config.ToHuggingFaceJson());
        File.Move(cfgPath + ".tmp", cfgPath, overwrite: true);
    }

    /// <summary>Loads config.json + model.safetensors; every model parameter must be present with its shape.</summary>
    public static LlamaModel Load(string directory, IBackend backend)
    {
        string cfgPath = Path.Combine(directory, ConfigFile);
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"model directory {directory} has no {ConfigFile}", cfgPath);
        var cfg = LlamaConfig.FromHuggingFaceJson(File.ReadAllText(cfgPath), cfgPath);
        var model = new LlamaModel(cfg, backend);
        try
        {
            LoadWeights(model, Path.Combine(directory, WeightsFile));
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public static void LoadWeights(LlamaModel model, string path)
    {
        using var f = SafeTensorsFile.Open(path);
        foreach (var (name, t) in model.Parameters)
        {
            if (!f.Contains(name)) throw new InvalidDataException($"{path}: missing tensor '{name}'");
            var e = f[name];
            if (!e.Shape.SequenceEqual(t.Shape.Select(d => (long)d)))
                throw new InvalidDataException($"{path}: tensor '{name}' has shape [{string.Join(", ", e.Shape)}], the model expects {Shape.Format(t.Shape)}");
            model.Load(name, f.ReadFloat32(name));
        }
        var unknown = f.Entries.Select(e => e.Name).Where(n => !model.HasParameter(n) && !n.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)).ToList();
        if (unknown.Count > 0) throw new InvalidDataException($"{path}: tensors the model does not have: {string.Join(", ", unknown.Take(5))}{(unknown.Count > 5 ? ", …" : "")}");
    }
}
