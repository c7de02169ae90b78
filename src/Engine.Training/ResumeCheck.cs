using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Engine.Training;

/// <summary>
/// What a resume may change. A checkpoint records two lists of settings by config key: <c>Exact</c> ones (model shape,
/// sequence length, tokens per step, data files, tokenizer and init_from weights by content hash
/// (<see cref="ContentHashes"/>), seed, …) whose change would make the resumed run differ
/// from the uninterrupted one — a resume with any of them changed is refused, naming each — and <c>Overridable</c> ones
/// (learning rate, betas, clip, steps) that the user may change on purpose: their values in effect are printed.
/// The parallel layout is neither: checkpoints reshard across data-parallel size, ZeRO stage and pipeline stages.
/// </summary>
public static class ResumeCheck
{
    public static string Format(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>SHA-256 of the settings in key order (the manifest's config_hash).</summary>
    public static string Hash(IReadOnlyDictionary<string, string> exact)
    {
        var sb = new StringBuilder();
        foreach (var (k, v) in exact.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sb.Append(k).Append('=').Append(v).Append('\n');
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())));
    }

    public static string Json(object value) => JsonSerializer.Serialize(value);

    /// <summary>Refuses (ConfigException) when an exact setting differs; returns the overrides' lines "key = now
    /// (checkpoint: was)" for those that differ, or "key = value" for all when nothing changed.</summary>
    public static List<string> Check(string checkpoint, IReadOnlyDictionary<string, string>? saved, IReadOnlyDictionary<string, string> now,
        IReadOnlyDictionary<string, string>? savedOverridable, IReadOnlyDictionary<string, string> nowOverridable)
    {
        if (saved != null)
        {
            var diffs = new List<string>();
            foreach (var key in saved.Keys.Union(now.Keys).Order(StringComparer.Ordinal))
            {
                string? a = saved.GetValueOrDefault(key), b = now.GetValueOrDefault(key);
                if (a != b) diffs.Add($"{key}: checkpoint {a ?? "(unset)"}, now {b ?? "(unset)"}");
            }
            if (diffs.Count > 0)
                throw new Config.ConfigException($"--resume {checkpoint}: the config or a file it names changed in a way that breaks an exact resume: {string.Join("; ", diffs)}" +
                    " (use --init-from to start a new run from its weights)");
        }
        return nowOverridable.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv =>
            savedOverridable?.GetValueOrDefault(kv.Key) is { } was && was != kv.Value ? $"{kv.Key} = {kv.Value} (checkpoint: {was})" : $"{kv.Key} = {kv.Value}").ToList();
    }

    /// <summary>The overridable optimizer settings of a run.</summary>
    public static Dictionary<string, string> Overridable(string prefix, AdamWOptions o, int steps) => new(StringComparer.Ordinal)
    {
        [$"{prefix}optim.lr"] = Format(o.Lr),
        [$"{prefix}optim.beta1"] = Format(o.Beta1),
        [$"{prefix}optim.beta2"] = Format(o.Beta2),
        [$"{prefix}optim.clip_norm"] = Format(o.ClipNorm),
        [$"{prefix}steps"] = steps.ToString(CultureInfo.InvariantCulture),
    };

    /// <summary>
    /// Keeps the lines of metrics.jsonl a resumed run has not redone: those <paramref name="keep"/> accepts (the others
    /// are the lost tail after the checkpoint, trained again). Rewritten durably; nothing to do without the file.
    /// </summary>
    public static void TruncateMetrics(string path, Func<JsonElement, bool> keep)
    {
        if (!File.Exists(path)) return;
        var kept = new List<string>();
        foreach (var line in File.ReadAllLines(path))
        {
            if (line.Length == 0) continue;
            try
            {
                using var doc = JsonDocument.Parse(line);
                if (keep(doc.RootElement)) kept.Add(line);
            }
            catch (JsonException) { /* a torn last line from the crash */ }
        }
        Durable.WriteAllText(path, kept.Count == 0 ? "" : string.Join("\n", kept) + "\n");
    }
}
