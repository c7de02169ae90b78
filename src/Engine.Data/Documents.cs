using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Engine.Data;

/// <summary>
/// Reads the documents of any shipped format, chosen by extension (before a trailing .gz: gzip, see <see cref="DataFile"/>):
/// <list type="bullet">
/// <item>.txt — WikiText (first non-blank line is a top-level <c> = Title = </c> heading): one document per article;
/// other text: blank-line separated blocks merged up to <see cref="DocumentReadOptions.TargetBlockChars"/>.</item>
/// <item>.jsonl — field "text"; else instruction/input/output joined by newlines (Self-Instruct: one per instance).</item>
/// <item>.json — an array of such objects.</item>
/// <item>.csv — Financial PhraseBank form <c>label,sentence</c>: the "sentence" (or "text") column, else the last one; RFC 4180 quoting.</item>
/// </list>
/// Malformed records are skipped and counted in <see cref="DocumentReadStats.MalformedRecordsSkipped"/>; a missing file,
/// binary content, invalid UTF-8 (policy Error) or a file with no readable record is an error naming the file.
/// </summary>
public static partial class Documents
{
    public static IEnumerable<string> Read(string path) => Read(path, null, null);

    public static IEnumerable<string> Read(string path, DocumentReadOptions? options, DocumentReadStats? stats)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new DocumentReadOptions();
        if (options.TargetBlockChars < 1) throw new ArgumentOutOfRangeException(nameof(options), "TargetBlockChars must be positive");
        string text = TextDecoding.ReadFile(path, options.InvalidUtf8, stats);
        string ext = DataFile.Extension(path);
        List<string> docs;
        long skipped = 0;
        switch (ext)
        {
            case ".jsonl":
                docs = [];
                foreach (var (line, _) in Instructions.Lines(text))
                {
                    if (!Instructions.TryParse(line, out var doc)) { skipped++; continue; }
                    using (doc)
                    {
                        int before = docs.Count;
                        if (!TryFromElement(doc!.RootElement, docs) || docs.Count == before) skipped++;
                    }
                }
                break;
            case ".json":
                docs = [];
                if (text.Length == 0) break;
                if (!Instructions.TryParse(text, out var arr)) throw new InvalidDataException($"{path}: not valid JSON");
                using (arr)
                {
                    if (arr!.RootElement.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{path}: expected a JSON array of objects");
                    foreach (var e in arr.RootElement.EnumerateArray())
                    {
                        int before = docs.Count;
                        if (!TryFromElement(e, docs) || docs.Count == before) skipped++;
                    }
                }
                break;
            case ".csv":
                docs = Csv(text, ref skipped);
                break;
            case ".txt":
            case ".md":
            case ".text":
                docs = IsWikiText(text) ? WikiArticles(text) : Blocks(text, options.TargetBlockChars);
                break;
            default:
                throw new NotSupportedException($"{path}: unknown document format '{ext}' (expected .txt, .jsonl, .json or .csv)");
        }
        if (stats != null) { stats.MalformedRecordsSkipped += skipped; stats.Documents += docs.Count; }
        if (docs.Count == 0 && skipped > 0) throw new InvalidDataException($"{path}: no readable documents ({skipped} malformed records)");
        return docs;
    }

    /// <summary>As <see cref="FromElement"/>; false (nothing added) for a record holding a string .NET cannot represent (an escaped lone surrogate).</summary>
    static bool TryFromElement(JsonElement e, List<string> into)
    {
        int before = into.Count;
        try { FromElement(e, into); return true; }
        catch (InvalidOperationException) { into.RemoveRange(before, into.Count - before); return false; }
    }

    static void FromElement(JsonElement e, List<string> into)
    {
        if (e.ValueKind != JsonValueKind.Object) return;
        if (e.TryGetProperty("text", out var t) && t.ValueKind == JsonValueKind.String)
        {
            var s = t.GetString()!;
            if (!string.IsNullOrWhiteSpace(s)) into.Add(s);
            return;
        }
        var examples = new List<InstructionExample>();
        Instructions.FromElement(e, examples);
        foreach (var x in examples) into.Add(Join(x));
    }

    /// <summary>Instruction, input (when non-empty) and output, one per line: the plain-text form of an example.</summary>
    public static string Join(InstructionExample x) =>
        x.Input.Length > 0 ? $"{x.Instruction}\n{x.Input}\n{x.Output}" : $"{x.Instruction}\n{x.Output}";

    [GeneratedRegex(@"^ = [^=].* = $")]
    private static partial Regex WikiHeading();

    static bool IsWikiText(string text)
    {
        foreach (var raw in text.Split('\n'))
        {
            var line = raw.TrimEnd('\r');
            if (string.IsNullOrWhiteSpace(line)) continue;
            return WikiHeading().IsMatch(line);
        }
        return false;
    }

    static List<string> WikiArticles(string text)
    {
        var docs = new List<string>();
        var cur = new StringBuilder();
        void Flush()
        {
            var s = cur.ToString().Trim();
            if (s.Length > 0) docs.Add(s);
            cur.Clear();
        }
        foreach (var raw in text.Split('\n'))
        {
            var line = raw.TrimEnd('\r');
            if (WikiHeading().IsMatch(line)) Flush();
            cur.Append(line).Append('\n');
        }
        Flush();
        return docs;
    }

    static List<string> Blocks(string text, int target)
    {
        var docs = new List<string>();
        var cur = new StringBuilder();
        void Flush()
        {
            if (cur.Length > 0) docs.Add(cur.ToString());
            cur.Clear();
        }
        foreach (var block in text.Replace("\r\n", "\n").Split("\n\n"))
        {
            var b = block.Trim('\n');
            if (string.IsNullOrWhiteSpace(b)) continue;
            if (cur.Length > 0 && cur.Length + b.Length + 2 > target) Flush();
            if (b.Length > 2 * target)
            {
                // One long block: split at line ends so no document is far above the target.
                foreach (var line in b.Split('\n'))
                {
                    if (cur.Length > 0 && cur.Length + line.Length + 1 > target) Flush();
                    if (cur.Length > 0) cur.Append('\n');
                    cur.Append(line);
                }
                continue;
            }
            if (cur.Length > 0) cur.Append("\n\n");
            cur.Append(b);
        }
        Flush();
        return docs;
    }

    static List<string> Csv(string text, ref long skipped)
    {
        var rows = CsvRows(text);
        var docs = new List<string>();
        if (rows.Count == 0) return docs;
        int col = -1;
        var header = rows[0];
        for (int i = 0; i < header.Count; i++)
            if (header[i].Trim().ToLowerInvariant() is "sentence" or "text") col = i;
        int start = col >= 0 ? 1 : 0;
        int width = header.Count;
        if (col < 0) col = width - 1;
        for (int r = start; r < rows.Count; r++)
        {
            var row = rows[r];
            if (row.Count != width || string.IsNullOrWhiteSpace(row[col])) { skipped++; continue; }
            docs.Add(row[col]);
        }
        return docs;
    }

    /// <summary>RFC 4180 rows: quoted fields may hold commas, doubled quotes and newlines; blank lines are skipped.</summary>
    public static List<List<string>> CsvRows(string text)
    {
        var rows = new List<List<string>>();
        var row = new List<string>();
        var field = new StringBuilder();
        bool quoted = false, any = false;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (quoted)
            {
                if (c == '"')
                {
                    if (i + 1 < text.Length && text[i + 1] == '"') { field.Append('"'); i++; }
                    else quoted = false;
                }
                else field.Append(c);
                continue;
            }
            switch (c)
            {
                case '"' when field.Length == 0: quoted = true; any = true; break;
                case ',': row.Add(field.ToString()); field.Clear(); any = true; break;
                case '\r': break;
                case '\n':
                    if (any || field.Length > 0) { row.Add(field.ToString()); rows.Add(row); }
                    row = []; field.Clear(); any = false;
                    break;
                default: field.Append(c); any = true; break;
            }
        }
        if (any || field.Length > 0) { row.Add(field.ToString()); rows.Add(row); }
        return rows;
    }
}
