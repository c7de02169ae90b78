using System.Text.Json;

namespace Engine.Data;

/// <summary>One supervised example: the answer (<see cref="Output"/>) is what the loss is computed on.</summary>
public sealed record InstructionExample(string Instruction, string Input, string Output);

/// <summary>
/// Reads instruction data: alpaca-style .json arrays and .jsonl of <c>{instruction, input, output}</c>, and
/// Self-Instruct seed tasks (<c>instruction</c> + <c>instances[{input, output}]</c>, one example per instance).
/// Records without an instruction or an output are skipped and counted; a file with no example at all is an error.
/// </summary>
public static class Instructions
{
    public static IEnumerable<InstructionExample> Read(string path) => Read(path, null, null);

    public static IEnumerable<InstructionExample> Read(string path, DocumentReadOptions? options, DocumentReadStats? stats)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new DocumentReadOptions();
        string text = TextDecoding.ReadFile(path, options.InvalidUtf8, stats);
        string ext = DataFile.Extension(path);
        var list = new List<InstructionExample>();
        long skipped = 0;
        if (ext == ".jsonl")
        {
            foreach (var (line, _) in Lines(text))
            {
                if (!TryParse(line, out var doc)) { skipped++; continue; }
                using (doc)
                {
                    int before = list.Count;
                    if (!TryFromElement(doc!.RootElement, list) || list.Count == before) skipped++;
                }
            }
        }
        else if (ext == ".json")
        {
            if (text.Length == 0) return [];
            if (!TryParse(text, out var doc)) throw new InvalidDataException($"{path}: not valid JSON");
            using (doc)
            {
                if (doc!.RootElement.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{path}: expected a JSON array of {{instruction, input, output}} objects");
                foreach (var e in doc.RootElement.EnumerateArray())
                {
                    int before = list.Count;
                    if (!TryFromElement(e, list) || list.Count == before) skipped++;
                }
            }
        }
        else throw new NotSupportedException($"{path}: instruction files must be .json (array) or .jsonl (got '{ext}')");
        if (stats != null) { stats.MalformedRecordsSkipped += skipped; stats.Documents += list.Count; }
        if (list.Count == 0 && skipped > 0)
            throw new InvalidDataException($"{path}: no instruction examples ({skipped} records lacked string 'instruction' and 'output' fields or were not JSON)");
        return list;
    }

    internal static IEnumerable<(string Line, int Number)> Lines(string text)
    {
        int number = 0;
        foreach (var raw in text.Split('\n'))
        {
            number++;
            var line = raw.TrimEnd('\r');
            if (!string.IsNullOrWhiteSpace(line)) yield return (line, number);
        }
    }

    internal static bool TryParse(string json, out JsonDocument? doc)
    {
        try { doc = JsonDocument.Parse(json); return true; }
        catch (JsonException) { doc = null; return false; }
    }

    static string? Str(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    /// <summary>As <see cref="FromElement"/>; false (nothing added) for a record holding a string .NET cannot represent (an escaped lone surrogate).</summary>
    internal static bool TryFromElement(JsonElement e, List<InstructionExample> into)
    {
        int before = into.Count;
        try { FromElement(e, into); return true; }
        catch (InvalidOperationException) { into.RemoveRange(before, into.Count - before); return false; }
    }

    /// <summary>Appends the examples one JSON object holds (0, 1, or one per Self-Instruct instance).</summary>
    internal static void FromElement(JsonElement e, List<InstructionExample> into)
    {
        if (e.ValueKind != JsonValueKind.Object) return;
        string? instruction = Str(e, "instruction");
        if (string.IsNullOrWhiteSpace(instruction)) return;
        if (e.TryGetProperty("instances", out var inst) && inst.ValueKind == JsonValueKind.Array)
        {
            foreach (var i in inst.EnumerateArray())
            {
                if (i.ValueKind != JsonValueKind.Object) continue;
                string? output = Str(i, "output");
                if (string.IsNullOrWhiteSpace(output)) continue;
                into.Add(new InstructionExample(instruction, Str(i, "input") ?? "", output));
            }
            return;
        }
        string? o = Str(e, "output");
        if (string.IsNullOrWhiteSpace(o)) return;
        into.Add(new InstructionExample(instruction, Str(e, "input") ?? "", o));
    }
}
