using System.Text;
using System.Text.Json;

namespace Engine.Training;

/// <summary>
/// Reads the documents of a text file by format: .txt as one document, .jsonl by its "text" field (or
/// instruction/input/output joined), .json arrays of objects likewise, .csv (label,sentence) by its last column.
/// Invalid UTF-8 is refused with the file name, not silently replaced.
/// </summary>
public static class TextFiles
{
    static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    public static IEnumerable<string> ReadDocuments(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"data file not found: {path}", path);
        string text;
        try { text = File.ReadAllText(path, StrictUtf8); }
        catch (DecoderFallbackException e) { throw new InvalidDataException($"{path}: not valid UTF-8 ({e.Message})", e); }
        string ext = Path.GetExtension(path).ToLowerInvariant();
        return ext switch
        {
            ".jsonl" => Jsonl(path, text),
            ".json" => JsonArray(path, text),
            ".csv" => Csv(text),
            _ => [text],
        };
    }

    static IEnumerable<string> Jsonl(string path, string text)
    {
        int lineNo = 0;
        foreach (var line in text.Split('\n'))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonDocument doc;
            try { doc = JsonDocument.Parse(line); }
            catch (JsonException e) { throw new InvalidDataException($"{path}:{lineNo}: invalid JSON ({e.Message})", e); }
            using (doc)
            {
                var s = FromObject(doc.RootElement);
                if (!string.IsNullOrWhiteSpace(s)) yield return s;
            }
        }
    }

    static IEnumerable<string> JsonArray(string path, string text)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(text); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: invalid JSON ({e.Message})", e); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{path}: expected a JSON array of objects");
            var list = new List<string>();
            foreach (var e in doc.RootElement.EnumerateArray())
            {
                var s = FromObject(e);
                if (!string.IsNullOrWhiteSpace(s)) list.Add(s);
            }
            return list;
        }
    }

    static string FromObject(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Object) return "";
        if (e.TryGetProperty("text", out var t) && t.ValueKind == JsonValueKind.String) return t.GetString()!;
        var parts = new List<string>();
        foreach (var key in new[] { "instruction", "input", "output" })
            if (e.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String && v.GetString()!.Length > 0) parts.Add(v.GetString()!);
        return string.Join("\n", parts);
    }

    static IEnumerable<string> Csv(string text)
    {
        foreach (var line in text.Split('\n'))
        {
            var l = line.TrimEnd('\r');
            if (l.Length == 0) continue;
            int comma = l.IndexOf(',');
            string s = comma >= 0 ? l[(comma + 1)..] : l;
            if (s.Length >= 2 && s[0] == '"' && s[^1] == '"') s = s[1..^1].Replace("\"\"", "\"");
            yield return s;
        }
    }
}
