using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace Engine.Observability.Results;

/// <summary>Reads, validates and writes engine.bench/1 files. Every error names the file and the field.</summary>
public static class BenchResultIO
{
    public static readonly JsonSerializerOptions Options = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        WriteIndented = true,
        RespectNullableAnnotations = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>The JSON text of a validated result (UTC date).</summary>
    public static string ToJson(BenchResult result)
    {
        Validate(result, "result");
        return JsonSerializer.Serialize(result with { Date = result.Date.ToUniversalTime() }, Options) + "\n";
    }

    /// <summary>Writes <paramref name="result"/> into <paramref name="dir"/> as &lt;suite&gt;-&lt;yyyy-MM-dd-HHmmss&gt;.json (never overwriting) and returns the path.</summary>
    public static string Write(BenchResult result, string dir)
    {
        string json = ToJson(result);
        Directory.CreateDirectory(dir);
        string stem = $"{Slug(result.Suite)}-{result.Date.ToUniversalTime().ToString("yyyy-MM-dd-HHmmss", CultureInfo.InvariantCulture)}";
        string path = Path.Combine(dir, stem + ".json");
        for (int i = 2; File.Exists(path); i++) path = Path.Combine(dir, $"{stem}-{i}.json");
        File.WriteAllText(path, json);
        return path;
    }

    public static BenchResult Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"benchmark result {path} not found", path);
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>True when the JSON object declares an engine.bench schema (any version).</summary>
    public static bool IsSchemaFile(JsonObject root) =>
        root["schema"] is JsonValue v && v.TryGetValue(out string? s) && s.StartsWith(BenchSchema.Name + "/", StringComparison.Ordinal);

    /// <summary>Parses and validates; <paramref name="source"/> (a file name) starts every error message.</summary>
    public static BenchResult Parse(string json, string source)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(json); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: not JSON: {e.Message}", e); }
        if (root is not JsonObject obj) throw new InvalidDataException($"{source}: expected a JSON object");
        if (!IsSchemaFile(obj))
            throw new InvalidDataException($"{source}: no \"schema\": \"{BenchSchema.Id}\" field: not an engine.bench result (LegacyResults.Convert reads the older shapes)");
        string schema = (string)obj["schema"]!;
        if (!int.TryParse(schema.AsSpan(BenchSchema.Name.Length + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int version))
            throw new InvalidDataException($"{source}: schema '{schema}' has no integer version");
        if (version != BenchSchema.Version)
            throw new NotSupportedException($"{source}: schema '{schema}' is not the version this reader knows ({BenchSchema.Id})");
        BenchResult? r;
        try { r = obj.Deserialize<BenchResult>(Options); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: {e.Message}", e); }
        if (r is null) throw new InvalidDataException($"{source}: empty result");
        Validate(r, source);
        return r;
    }

    /// <summary>Checks what the types cannot: known better, finite figures, devices that name a listed GPU.</summary>
    public static void Validate(BenchResult r, string source)
    {
        if (r.Schema != BenchSchema.Id) throw new InvalidDataException($"{source}: schema '{r.Schema}', expected '{BenchSchema.Id}'");
        Require(!string.IsNullOrWhiteSpace(r.Suite), source, "suite is empty");
        Require(!string.IsNullOrWhiteSpace(r.Commit), source, "commit is empty (use \"unknown\" when it was not recorded)");
        Require(!string.IsNullOrWhiteSpace(r.Machine.CpuModel), source, "machine.cpu_model is empty");
        Require(r.Machine.Cores is null or > 0, source, $"machine.cores must be positive, got {r.Machine.Cores}");
        for (int g = 0; g < r.Machine.Gpus.Count; g++)
            Require(!string.IsNullOrWhiteSpace(r.Machine.Gpus[g].Name), source, $"machine.gpus[{g}].name is empty");
        var names = new HashSet<(string, string)>();
        for (int i = 0; i < r.Benchmarks.Count; i++)
        {
            var e = r.Benchmarks[i];
            string at = $"benchmarks[{i}] ({e.Name})";
            Require(!string.IsNullOrWhiteSpace(e.Name), source, $"benchmarks[{i}].name is empty");
            Require(names.Add((e.Device, e.Name)), source, $"{at}: duplicate name on device {e.Device}");
            Require(e.Better is BenchSchema.Lower or BenchSchema.Higher, source, $"{at}: better must be 'lower' or 'higher', got '{e.Better}'");
            Require(!string.IsNullOrWhiteSpace(e.Unit), source, $"{at}: unit is empty");
            Require(GpuIndex(e.Device) is { } gi ? gi < r.Machine.Gpus.Count : e.Device == "cpu", source,
                $"{at}: device '{e.Device}' is neither \"cpu\" nor \"cuda:N\" with N < machine.gpus ({r.Machine.Gpus.Count})");
            Require(e.Roof is null or "compute" or "memory", source, $"{at}: roof must be 'compute' or 'memory', got '{e.Roof}'");
            Require(e.Repeats >= 0 && e.Warmup is null or >= 0, source, $"{at}: repeats and warmup must not be negative");
            if (e.Error is not null) continue;
            Require(double.IsFinite(e.Median) && e.Median >= 0, source, $"{at}: median {e.Median} is not a finite non-negative number");
            Require((e.Min is null || e.Min <= e.Median) && (e.Max is null || e.Median <= e.Max), source,
                $"{at}: median {e.Median} outside [min {e.Min}, max {e.Max}]");
            Require(e.Min is null || e.Max is null || e.Min <= e.Max, source, $"{at}: min {e.Min} > max {e.Max}");
            Require(e.Flops is null or >= 0 && e.Bytes is null or >= 0, source, $"{at}: flops and bytes must not be negative");
            if (e.Peer is { } p)
            {
                Require(!string.IsNullOrWhiteSpace(p.Name), source, $"{at}: peer.name is empty");
                Require(double.IsFinite(p.Median) && p.Median >= 0, source, $"{at}: peer.median {p.Median} is not a finite non-negative number");
            }
            if (e.Ratio is { } ratio)
            {
                Require(e.Peer is not null, source, $"{at}: ratio without a peer");
                double? expect = BenchStats.Ratio(e.Better, e.Median, e.Peer!.Median);
                Require(expect is { } x && Math.Abs(ratio - x) <= 0.01 * x, source,
                    $"{at}: ratio {ratio} disagrees with the medians (expected {expect} for better = {e.Better})");
            }
        }
    }

    /// <summary>N of "cuda:N", or null for any other device string.</summary>
    public static int? GpuIndex(string device) =>
        device.StartsWith("cuda:", StringComparison.Ordinal) &&
        int.TryParse(device.AsSpan(5), NumberStyles.None, CultureInfo.InvariantCulture, out int i) ? i : null;

    /// <summary>"NVIDIA H100 80GB HBM3" → "nvidia-h100-80gb-hbm3".</summary>
    public static string Slug(string s)
    {
        var b = new StringBuilder();
        foreach (char ch in s.ToLowerInvariant())
        {
            if (char.IsAsciiLetterOrDigit(ch)) b.Append(ch);
            else if (b.Length > 0 && b[^1] != '-') b.Append('-');
        }
        string slug = b.ToString().Trim('-');
        return slug.Length == 0 ? "run" : slug;
    }

    static void Require(bool ok, string source, string message)
    {
        if (!ok) throw new InvalidDataException($"{source}: {message}");
    }
}
