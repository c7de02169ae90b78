using System.Security.Cryptography;
using System.Text.Json;
using Engine.Core;
using Engine.Model;
using Engine.Model.IO;

namespace Engine.Training;

/// <summary>What a checkpoint records besides weights and optimizer moments: enough for a bit-exact resume.</summary>
public sealed record CheckpointState(int Step, long Tokens, ulong[] Rng, int AdamStep);

/// <summary>
/// Training checkpoints: one directory per step (`step_00000123/`) holding config.json + model.safetensors (HF
/// layout), optimizer.safetensors (fp32 m and v per parameter), state.json (step, tokens, sampler RNG, AdamW step) and
/// manifest.json (SHA-256 of every file). Written under a temporary name and renamed, so a crash never leaves a
/// half-written checkpoint; only the newest `keep` are kept. Loading verifies the manifest first.
/// </summary>
public static class Checkpoints
{
    const string StateFile = "state.json", OptimizerFile = "optimizer.safetensors", ManifestFile = "manifest.json";

    public static string Save(string root, LlamaModel model, AdamW opt, CheckpointState state, int keep)
    {
        Directory.CreateDirectory(root);
        string name = $"step_{state.Step:D8}";
        string final = Path.Combine(root, name), tmp = Path.Combine(root, $".{name}.tmp");
        if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        Directory.CreateDirectory(tmp);
        ModelIO.Save(model, tmp);
        SafeTensorsWriter.Write(Path.Combine(tmp, OptimizerFile), opt.ExportState()
            .SelectMany(e => new[]
            {
                new SafeTensorWrite("m." + e.Name, model[e.Name].Shape.Select(d => (long)d).ToArray(), e.M),
                new SafeTensorWrite("v." + e.Name, model[e.Name].Shape.Select(d => (long)d).ToArray(), e.V),
            }));
        File.WriteAllText(Path.Combine(tmp, StateFile), JsonSerializer.Serialize(state));
        var manifest = Directory.GetFiles(tmp).Select(Path.GetFileName).Order(StringComparer.Ordinal)
            .ToDictionary(f => f!, f => Sha256(Path.Combine(tmp, f!)));
        File.WriteAllText(Path.Combine(tmp, ManifestFile), JsonSerializer.Serialize(manifest, new JsonSerializerOptions { WriteIndented = true }));
        if (Directory.Exists(final)) Directory.Delete(final, recursive: true);
        Directory.Move(tmp, final);
        foreach (var old in List(root).SkipLast(Math.Max(1, keep))) Directory.Delete(old, recursive: true);
        return final;
    }

    /// <summary>Checkpoint directories under root, oldest first.</summary>
    public static List<string> List(string root) => !Directory.Exists(root) ? []
        : Directory.GetDirectories(root, "step_*").Order(StringComparer.Ordinal).ToList();

    /// <summary>A checkpoint directory from "latest" (newest under root) or a path.</summary>
    public static string Resolve(string spec, string root)
    {
        if (spec == "latest")
            return List(root).LastOrDefault() ?? throw new DirectoryNotFoundException($"--resume latest: no checkpoint under {root}");
        if (!Directory.Exists(spec)) throw new DirectoryNotFoundException($"--resume: checkpoint directory not found: {spec}");
        return spec;
    }

    /// <summary>Verifies the manifest, loads weights into a new model and the optimizer state; returns the state.</summary>
    public static (LlamaModel Model, CheckpointState State, List<(string Name, float[] M, float[] V)> Moments) Load(string dir, IBackend backend)
    {
        string manifestPath = Path.Combine(dir, ManifestFile);
        if (!File.Exists(manifestPath)) throw new InvalidDataException($"{dir}: not a checkpoint (no {ManifestFile})");
        var manifest = JsonSerializer.Deserialize<Dictionary<string, string>>(File.ReadAllText(manifestPath))
            ?? throw new InvalidDataException($"{manifestPath}: empty manifest");
        foreach (var (file, hash) in manifest)
        {
            string p = Path.Combine(dir, file);
            if (!File.Exists(p)) throw new InvalidDataException($"{dir}: {file} listed in the manifest is missing");
            if (Sha256(p) != hash) throw new InvalidDataException($"{dir}: {file} does not match its SHA-256 in the manifest (corrupted checkpoint)");
        }
        var state = JsonSerializer.Deserialize<CheckpointState>(File.ReadAllText(Path.Combine(dir, StateFile)))
            ?? throw new InvalidDataException($"{dir}: empty {StateFile}");
        if (state.Rng is not { Length: 4 }) throw new InvalidDataException($"{dir}: {StateFile} has no sampler RNG state");
        var model = ModelIO.Load(dir, backend);
        var moments = new List<(string, float[], float[])>();
        using (var f = SafeTensorsFile.Open(Path.Combine(dir, OptimizerFile)))
            foreach (var (name, _) in model.Parameters)
                if (f.Contains("m." + name)) moments.Add((name, f.ReadFloat32("m." + name), f.ReadFloat32("v." + name)));
        return (model, state, moments);
    }

    static string Sha256(string path)
    {
        using var s = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(s));
    }
}
