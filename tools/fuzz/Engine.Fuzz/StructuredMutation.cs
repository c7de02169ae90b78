using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Engine.Fuzz;

/*
 * Mutations that keep an input parseable so it reaches the checks behind the parser:
 *   JSON (a document, one line of JSON lines, or a safetensors header with its length fixed up — or left stale):
 *     a value replaced by an extreme one (2^31, 2^63, 1e400, -1, "", "\ud800", [], {}, deep nesting, a long string),
 *     a property or element deleted or duplicated, a key renamed, two values swapped, an array emptied;
 *   TOML-like text (key = value lines): a value replaced (inf, nan, 1e12, 2^63, "", [], { a = 1 }, a date, …),
 *     a line deleted, duplicated or swapped with another, a key renamed.
 * Returns null when the input is none of these (the caller then uses a byte-level operation).
 */
public static class StructuredMutation
{
    static readonly string[] JsonValues = ["0", "-1", "1", "-0", "0.5", "1e12", "2e9", "1e400", "-1e400", "1e-400", "2147483647", "2147483648",
        "-2147483649", "4294967296", "9223372036854775807", "9223372036854775808", "18446744073709551616", "65535", "65536", "256", "1048576",
        "\"\"", "\"x\"", "\"NaN\"", "\"inf\"", "\"1e12\"", "\"\\ud800\"", "\"a\\nb\\u0000\"", "\"<0xFF>\"", "\"▁\"", "null", "true", "false",
        "[]", "{}", "[0]", "[\"a\", \"b\"]", "{\"type\": \"Sequence\"}", "[[[[[[[[[[1]]]]]]]]]]", "\"" + new string('a', 3000) + "\""];

    static readonly string[] TomlValues = ["0", "-1", "1e12", "2e9", "inf", "-inf", "nan", "+nan", "1e308", "9223372036854775807", "-9223372036854775808",
        "2147483648", "1048576", "0.5", "-0.0", "\"\"", "\"x\"", "\"1e12\"", "'literal'", "[]", "[1, 2]", "[\"a\", \"b\"]", "{}", "{ a = 1 }",
        "true", "false", "1979-05-27", "1979-05-27T07:32:00Z", "07:32:00", "0x7FFFFFFF", "0o777", "0b101", "1_000_000", "\"\\u0000\""];

    public static string? Apply(List<byte> d, SplitMix rng)
    {
        if (d.Count == 0 || d.Count > 200_000) return null;
        byte[] bytes = [.. d];
        try { return ApplyCore(d, bytes, rng); }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or JsonException or FormatException)
        {
            // System.Text.Json.Nodes refuses what the readers must survive (a key twice, a string that is not UTF-16)
            d.Clear();
            d.AddRange(bytes);
            return null;
        }
    }

    static string? ApplyCore(List<byte> d, byte[] bytes, SplitMix rng)
    {
        // safetensors: u64 header length, then a JSON header
        if (bytes.Length > 9 && bytes[8] == (byte)'{')
        {
            ulong len = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
            if (len <= (ulong)(bytes.Length - 8) && TryJson(bytes.AsSpan(8, (int)len), out var header))
            {
                string how = MutateJson(header!, rng);
                byte[] h = Encoding.UTF8.GetBytes(Serialize(header!));
                bool fixLength = rng.Below(4) != 0;
                d.Clear();
                var lenBytes = new byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(lenBytes, fixLength ? (ulong)h.Length : len);
                d.AddRange(lenBytes);
                d.AddRange(h);
                d.AddRange(bytes.AsSpan(8 + (int)len).ToArray());
                return $"safetensors header: {how}{(fixLength ? "" : " (stale length)")}";
            }
        }
        string text;
        try { text = new UTF8Encoding(false, true).GetString(bytes); }
        catch (DecoderFallbackException) { return null; }
        string trimmed = text.TrimStart();
        if (trimmed.StartsWith('{') || trimmed.StartsWith('['))
        {
            if (TryJson(bytes, out var doc))
            {
                string how = MutateJson(doc!, rng);
                Replace(d, Serialize(doc!));
                return "json: " + how;
            }
            // JSON lines: mutate one line that parses
            var lines = text.Split('\n');
            for (int tries = 0; tries < 4; tries++)
            {
                int i = rng.Below(lines.Length);
                if (!TryJson(Encoding.UTF8.GetBytes(lines[i]), out var line)) continue;
                string how = MutateJson(line!, rng);
                lines[i] = Serialize(line!, indented: false);
                Replace(d, string.Join('\n', lines));
                return $"jsonl line {i}: {how}";
            }
            return null;
        }
        return MutateTomlLines(d, text, rng);
    }

    static bool TryJson(ReadOnlySpan<byte> utf8, out JsonNode? node)
    {
        try { node = JsonNode.Parse(utf8); return node != null; }
        catch (JsonException) { node = null; return false; }
    }

    static string Serialize(JsonNode node, bool indented = true)
    {
        try
        {
            return node.ToJsonString(new JsonSerializerOptions { WriteIndented = indented, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException) { return "{}"; }
    }

    static void Replace(List<byte> d, string text)
    {
        d.Clear();
        d.AddRange(Encoding.UTF8.GetBytes(text));
    }

    /// <summary>Every node under the root (the root itself excluded), with its parent.</summary>
    static List<(JsonNode? Node, JsonNode Parent, string? Key, int Index)> Nodes(JsonNode root)
    {
        var list = new List<(JsonNode?, JsonNode, string?, int)>();
        void Walk(JsonNode n, int depth)
        {
            if (depth > 40 || list.Count > 20_000) return;
            if (n is JsonObject o)
                foreach (var (k, v) in o) { list.Add((v, o, k, -1)); if (v != null) Walk(v, depth + 1); }
            else if (n is JsonArray a)
                for (int i = 0; i < a.Count; i++) { list.Add((a[i], a, null, i)); if (a[i] != null) Walk(a[i]!, depth + 1); }
        }
        Walk(root, 0);
        return list;
    }

    static string MutateJson(JsonNode root, SplitMix rng)
    {
        var nodes = Nodes(root);
        if (nodes.Count == 0) return "empty";
        var (node, parent, key, index) = nodes[rng.Below(nodes.Count)];
        string where = key != null ? $"'{(key.Length > 20 ? key[..20] : key)}'" : $"[{index}]";
        void Set(JsonNode? value)
        {
            if (parent is JsonObject o) o[key!] = value;
            else ((JsonArray)parent)[index] = value;
        }
        switch (rng.Below(7))
        {
            case 0:
            case 1:
            case 2:
                {
                    string v = JsonValues[rng.Below(JsonValues.Length)];
                    Set(JsonNode.Parse(v));
                    return $"{where} = {(v.Length > 16 ? v[..16] + "…" : v)}";
                }
            case 3:
                if (parent is JsonObject po) po.Remove(key!);
                else ((JsonArray)parent).RemoveAt(index);
                return $"delete {where}";
            case 4:
                if (parent is JsonObject ko && key != null)
                {
                    string renamed = key.Length > 1 && rng.Below(2) == 0 ? key[..^1] : key + "x";
                    if (ko.ContainsKey(renamed)) return "rename (taken)";
                    ko.Remove(key);
                    ko[renamed] = node;
                    return $"rename {where} → '{renamed}'";
                }
                if (parent is JsonArray da) { da.Insert(index, node?.DeepClone()); return $"duplicate {where}"; }
                return "noop";
            case 5:
                {
                    var (other, _, _, _) = nodes[rng.Below(nodes.Count)];
                    Set(other?.DeepClone());
                    return $"{where} = another value";
                }
            default:
                if (node is JsonArray arr) { int keep = rng.Below(arr.Count + 1); while (arr.Count > keep) arr.RemoveAt(arr.Count - 1); return $"{where} cut to {keep} elements"; }
                if (node is JsonValue jv && jv.GetValueKind() == JsonValueKind.String)
                {
                    string sv = jv.GetValue<string>();
                    Set(JsonValue.Create(rng.Below(2) == 0 ? "" : sv + sv));
                    return $"{where} string emptied or doubled";
                }
                Set(JsonNode.Parse(JsonValues[rng.Below(JsonValues.Length)]));
                return $"{where} replaced";
        }
    }

    static string? MutateTomlLines(List<byte> d, string text, SplitMix rng)
    {
        var lines = text.Split('\n').ToList();
        var assignments = Enumerable.Range(0, lines.Count).Where(i => IsAssignment(lines[i])).ToList();
        if (assignments.Count == 0) return null;
        int li = assignments[rng.Below(assignments.Count)];
        string line = lines[li];
        int eq = line.IndexOf('=');
        string how;
        switch (rng.Below(6))
        {
            case 0:
            case 1:
            case 2:
                {
                    string v = TomlValues[rng.Below(TomlValues.Length)];
                    lines[li] = line[..(eq + 1)] + " " + v;
                    how = $"toml line {li}: value = {v}";
                    break;
                }
            case 3:
                lines.RemoveAt(li);
                how = $"toml line {li} deleted";
                break;
            case 4:
                {
                    int at = rng.Below(lines.Count + 1);
                    lines.Insert(at, line);
                    how = $"toml line {li} copied to {at}";
                    break;
                }
            default:
                {
                    int other = rng.Below(lines.Count);
                    (lines[li], lines[other]) = (lines[other], lines[li]);
                    how = $"toml lines {li} and {other} swapped";
                    break;
                }
        }
        Replace(d, string.Join('\n', lines));
        return how;
    }

    static bool IsAssignment(string line)
    {
        string t = line.TrimStart();
        if (t.Length == 0 || !(char.IsAsciiLetter(t[0]) || t[0] == '_' || t[0] == '"')) return false;
        int eq = t.IndexOf('=');
        return eq > 0 && t[..eq].All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.' or ' ' or '"');
    }
}
