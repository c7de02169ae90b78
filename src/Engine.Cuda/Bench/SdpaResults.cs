using System.Text.Json.Nodes;

namespace Engine.Cuda.Bench;

/// <summary>One PyTorch scaled_dot_product_attention timing (flash backend) from benchmarks/scripts/sdpa_bench.py.</summary>
public readonly record struct SdpaTiming(double Ms, double Tflops, string Gqa);

/// <summary>
/// The JSON sdpa_bench.py prints: <c>{"torch": ..., "device": ..., "measurements": [{"kernel": "sdpa_flash_fwd" |
/// "sdpa_flash_bwd", "shape": KernelCosts.AttentionShapeKey(...), "ms", "tflops", "gqa"} | {..., "error"}]}</c>.
/// Looked up by pass and shape key to put PyTorch's number beside ours.
/// </summary>
public sealed class SdpaResults
{
    private readonly Dictionary<(bool Backward, string Shape), SdpaTiming> _byShape = new();

    /// <summary>The script's header fields (torch version, device, backend), copied into the report.</summary>
    public JsonObject Header { get; } = new();
    public int Count => _byShape.Count;

    public static SdpaResults Parse(string json)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(json); }
        catch (System.Text.Json.JsonException e) { throw new InvalidDataException($"SDPA results are not JSON: {e.Message}", e); }
        if (root is not JsonObject obj || obj["measurements"] is not JsonArray list)
            throw new InvalidDataException("SDPA results: expected an object with a \"measurements\" array (sdpa_bench.py output)");
        var r = new SdpaResults();
        foreach (var (key, value) in obj)
            if (key != "measurements" && value is JsonValue v) r.Header[key] = v.DeepClone();
        foreach (var node in list)
        {
            if (node is not JsonObject m || m["error"] is not null) continue;
            string? kernel = (string?)m["kernel"], shape = (string?)m["shape"];
            if (shape is null || m["ms"] is null || m["tflops"] is null) continue;
            bool? backward = kernel switch { "sdpa_flash_fwd" => false, "sdpa_flash_bwd" => true, _ => null };
            if (backward is null) continue;
            r._byShape[(backward.Value, shape)] = new SdpaTiming((double)m["ms"]!, (double)m["tflops"]!, (string?)m["gqa"] ?? "");
        }
        return r;
    }

    public static SdpaResults Load(string path) => Parse(File.ReadAllText(path));

    public bool TryGet(bool backward, string shape, out SdpaTiming timing) => _byShape.TryGetValue((backward, shape), out timing);
}
