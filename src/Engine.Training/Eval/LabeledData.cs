using System.Text.Json;
using Engine.Data;

namespace Engine.Training.Eval;

/// <summary>A text with its class label (e.g. financial sentiment).</summary>
public sealed record LabeledExample(string Text, string Label);

/// <summary>
/// Reads classification sets by format, not by name: CSV with a header naming a label column ("label") and a text
/// column ("sentence", "text"), or headerless label,text rows (Financial PhraseBank); JSONL with "text" and "label"
/// (string, or an integer mapped through labelNames). Malformed rows are counted, not fatal; an empty result is.
/// </summary>
public static class LabeledData
{
    public static (List<LabeledExample> Examples, int Skipped) Read(string path, IReadOnlyList<string>? labelNames = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"evaluation file not found: {path}", path);
        string text = TextDecoding.ReadFile(path, InvalidUtf8Policy.Error);   // binary or mis-encoded files are refused, not read as U+FFFD
        var list = new List<LabeledExample>();
        int skipped = 0;
        string ext = DataFile.Extension(path);
        if (ext == ".csv")
        {
            var rows = Documents.CsvRows(text);
            int li = 0, ti = 1, start = 0;
            if (rows.Count > 0)
            {
                var head = rows[0].Select(h => h.Trim().ToLowerInvariant()).ToArray();
                int l = Array.IndexOf(head, "label"), t = Array.FindIndex(head, h => h is "sentence" or "text");
                if (l >= 0 && t >= 0) { li = l; ti = t; start = 1; }
            }
            for (int r = start; r < rows.Count; r++)
            {
                var row = rows[r];
                if (row.Count <= Math.Max(li, ti) || row[ti].Trim().Length == 0) { skipped++; continue; }
                list.Add(new LabeledExample(row[ti].Trim(), Normalize(row[li], labelNames)));
            }
        }
        else if (ext is ".jsonl" or ".json")
        {
            foreach (var line in text.Split('\n'))
            {
                if (string.IsNullOrWhiteSpace(line)) continue;
                try
                {
                    using var doc = JsonDocument.Parse(line);
                    var e = doc.RootElement;
                    if (e.ValueKind != JsonValueKind.Object) { skipped++; continue; }
                    if (!e.TryGetProperty("text", out var t) || t.ValueKind != JsonValueKind.String || !e.TryGetProperty("label", out var l)) { skipped++; continue; }
                    string label = l.ValueKind switch
                    {
                        JsonValueKind.String => Normalize(l.GetString()!, labelNames),
                        JsonValueKind.Number when labelNames != null && l.TryGetInt32(out int li) && li >= 0 && li < labelNames.Count => labelNames[li],
                        _ => "",
                    };
                    if (label.Length == 0) { skipped++; continue; }
                    list.Add(new LabeledExample(t.GetString()!.Trim(), label));
                }
                catch (JsonException) { skipped++; }
                catch (InvalidOperationException) { skipped++; }   // a string with an escaped lone surrogate
            }
        }
        else throw new InvalidDataException($"{path}: unsupported evaluation format '{ext}' (csv with label,sentence or jsonl with text,label)");
        if (list.Count == 0) throw new InvalidDataException($"{path}: no labelled examples found ({skipped} malformed rows skipped)");
        return (list, skipped);
    }

    static string Normalize(string label, IReadOnlyList<string>? names)
    {
        string l = label.Trim().ToLowerInvariant();
        if (names != null && int.TryParse(l, out int i) && i >= 0 && i < names.Count) return names[i];
        return l;
    }
}
