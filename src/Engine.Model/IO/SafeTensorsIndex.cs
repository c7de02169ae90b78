using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Engine.Model.IO;

/// <summary>
/// Sharded safetensors checkpoints as transformers writes them: shards <c>model-00001-of-00003.safetensors</c>, … and
/// <c>model.safetensors.index.json</c> = {"metadata": {"total_size": bytes}, "weight_map": {tensor: shard}}. A model
/// that fits one shard is a single <c>model.safetensors</c> with no index. Shards are filled in tensor order and a new
/// one starts when the next tensor would pass the limit; a tensor larger than the limit gets a shard of its own
/// (huggingface_hub's <c>split_torch_state_dict_into_shards</c>).
/// </summary>
public static partial class SafeTensorsIndex
{
    public const string IndexFile = "model.safetensors.index.json";

    /// <summary>Largest index file read, as for a safetensors header (Llama 3.1 405B's index is ~60 KB).</summary>
    public const long MaxIndexBytes = 100_000_000;

    /// <summary>transformers' default max_shard_size ("5GB").</summary>
    public const long DefaultMaxShardBytes = 5_000_000_000;

    [GeneratedRegex(@"^model-\d{5}-of-\d{5}\.safetensors$")]
    private static partial Regex ShardName();

    /// <summary>Whether a file name is a shard of the pattern this writer uses (stale ones are removed on save).</summary>
    public static bool IsShardName(string fileName) => ShardName().IsMatch(fileName);

    /// <summary>
    /// A size as transformers' max_shard_size takes it: bytes as an integer, or an integer with KB/MB/GB (powers of
    /// 10), KiB/MiB/GiB (powers of 2); a lower-case final "b" (e.g. "5Gb") means bits.
    /// </summary>
    public static long ParseSize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string s = text.Trim();
        if (long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out long plain) && plain > 0) return plain;
        (string Unit, long Mult)[] units = [("GIB", 1L << 30), ("MIB", 1L << 20), ("KIB", 1L << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000)];
        foreach (var (unit, mult) in units)
        {
            if (!s.ToUpperInvariant().EndsWith(unit, StringComparison.Ordinal)) continue;
            string num = s[..^unit.Length];
            if (!long.TryParse(num, NumberStyles.None, CultureInfo.InvariantCulture, out long n) || n <= 0) break;
            long bytes = checked(n * mult);
            return unit.Length == 2 && s.EndsWith('b') ? bytes / 8 : bytes;
        }
        throw new ArgumentException($"shard size '{text}' is not a positive integer with an optional unit (e.g. 5GB, 500MB, 2GiB, 1000000)");
    }

    /// <summary>Groups tensors (in order) into shards of at most maxShardBytes each (a larger tensor alone).</summary>
    public static List<List<int>> Plan(IReadOnlyList<long> tensorBytes, long maxShardBytes)
    {
        if (maxShardBytes <= 0) throw new ArgumentException($"max shard size must be positive (got {maxShardBytes})");
        var shards = new List<List<int>>();
        var current = new List<int>();
        long size = 0;
        for (int i = 0; i < tensorBytes.Count; i++)
        {
            long b = tensorBytes[i];
            if (b > maxShardBytes) { shards.Add([i]); continue; }
            if (size + b > maxShardBytes && current.Count > 0) { shards.Add(current); current = []; size = 0; }
            current.Add(i);
            size += b;
        }
        if (current.Count > 0 || shards.Count == 0) shards.Add(current);
        return shards;
    }

    /// <summary>The name of shard i (0-based) of n.</summary>
    public static string ShardFileName(int i, int n) => n == 1 ? ModelIO.WeightsFile : $"model-{i + 1:D5}-of-{n:D5}.safetensors";

    /// <summary>Index JSON (keys sorted, as huggingface_hub writes it).</summary>
    public static string IndexJson(long totalSize, IEnumerable<(string Tensor, string Shard)> map)
    {
        var wm = new JsonObject();
        foreach (var (t, s) in map.OrderBy(x => x.Tensor, StringComparer.Ordinal)) wm[t] = s;
        var o = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = totalSize }, ["weight_map"] = wm };
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>
    /// Reads an index: tensor → shard file (a plain file name in the index's directory). Refuses broken JSON, a
    /// missing or malformed weight_map, a shard name that leaves the directory, and a tensor listed twice.
    /// </summary>
    public static Dictionary<string, string> Read(string path)
    {
        InvalidDataException Bad(string why) => new($"{path}: invalid safetensors index: {Engine.Core.ErrorText.OneLine(why)}");
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors index not found: {path}", path);
        long length = new FileInfo(path).Length;
        if (length > MaxIndexBytes) throw Bad($"{length:N0} bytes, more than the {MaxIndexBytes:N0}-byte bound (an index lists names only)");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw Bad($"not valid JSON ({e.Message})"); }
        using (doc)
            try
            {
                var root = doc.RootElement;
                if (root.ValueKind != JsonValueKind.Object) throw Bad("not a JSON object");
                if (root.TryGetProperty("metadata", out var meta) && meta.ValueKind == JsonValueKind.Object
                    && meta.TryGetProperty("total_size", out var ts) && (ts.ValueKind != JsonValueKind.Number || !ts.TryGetInt64(out long t) || t < 0))
                    throw Bad($"metadata.total_size {ts} is not a byte count");
                if (!root.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object) throw Bad("no weight_map object");
                var map = new Dictionary<string, string>(StringComparer.Ordinal);
                foreach (var p in wm.EnumerateObject())
                {
                    if (p.Value.ValueKind != JsonValueKind.String) throw Bad($"weight_map['{p.Name}'] is not a file name");
                    string shard = p.Value.GetString()!;
                    if (shard.Length == 0 || shard != Path.GetFileName(shard) || shard is "." or ".." || shard.Contains('/') || shard.Contains('\\'))
                        throw Bad($"weight_map['{p.Name}'] = '{shard}' is not a file in the model directory");
                    if (!map.TryAdd(p.Name, shard)) throw Bad($"tensor '{p.Name}' is listed twice");
                }
                if (map.Count == 0) throw Bad("weight_map is empty");
                return map;
            }
            catch (InvalidOperationException e) // a name holding an escaped lone surrogate cannot become a .NET string
            {
                throw Bad($"holds an invalid string ({e.Message})");
            }
    }
}
