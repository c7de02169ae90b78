using System.Security.Cryptography;
using System.Text;
using Engine.Data.Extraction;

namespace Engine.Data.Prepare;

/// <summary>One work unit: a range of one source's files (whole files, or a byte range / row groups of a large one).</summary>
public sealed record WorkUnit(int Index, int Source, IReadOnlyList<InputPart> Parts, long Bytes);

/// <summary>
/// The split of every source's files into work units, in source order then file order, so that unit numbers — and a
/// document's id, <c>unit &lt;&lt; 32 | index</c> — give one global order independent of ranks: the order duplicates are
/// resolved in (the earliest document is kept) and outputs are written in. Files are listed sorted (a folder: every file
/// under it; a name with * or ?: the matching files of its folder); files are grouped up to <c>unit_bytes</c>, and an
/// uncompressed JSONL file larger than that is cut into byte ranges, a Parquet file into row-group ranges.
/// </summary>
public sealed class WorkPlan
{
    public required IReadOnlyList<WorkUnit> Units { get; init; }
    /// <summary>SHA-256 over every part and file size: a resumed run must find the same inputs.</summary>
    public required string Fingerprint { get; init; }

    public static ulong DocId(int unit, uint index) => (ulong)(uint)unit << 32 | index;
    public static int UnitOf(ulong docId) => (int)(docId >> 32);
    public int SourceOf(ulong docId) => Units[UnitOf(docId)].Source;

    public IEnumerable<WorkUnit> OfSource(int source) => Units.Where(u => u.Source == source);

    public static IReadOnlyList<string> Expand(string path)
    {
        if (Directory.Exists(path))
            return Directory.GetFiles(path, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal).ToList();
        string name = Path.GetFileName(path);
        if (name.IndexOfAny(['*', '?']) >= 0)
        {
            string dir = Path.GetDirectoryName(path) is { Length: > 0 } d ? d : ".";
            if (!Directory.Exists(dir)) return [path];
            var found = Directory.GetFiles(dir, name).Order(StringComparer.Ordinal).ToList();
            return found.Count > 0 ? found : [path];
        }
        return [path];
    }

    public static WorkPlan Build(PrepareConfig cfg)
    {
        var units = new List<WorkUnit>();
        var fp = new StringBuilder();
        for (int s = 0; s < cfg.Sources.Count; s++)
        {
            var src = cfg.Sources[s];
            var parts = new List<InputPart>();
            long bytes = 0;
            void Flush()
            {
                if (parts.Count == 0) return;
                units.Add(new WorkUnit(units.Count, s, parts, bytes));
                parts = [];
                bytes = 0;
            }
            foreach (var file in src.Files.SelectMany(Expand))
            {
                long size = File.Exists(file) ? new FileInfo(file).Length : 0;   // a missing file stays in the plan: reading it is a counted skip
                fp.Append(s).Append('\t').Append(file).Append('\t').Append(size).Append('\n');
                InputFormat format = src.Format;
                if (format == InputFormat.Auto && src.Kind == "pretrain")
                {
                    try { format = InputReader.Detect(file); }
                    catch (NotSupportedException) { format = InputFormat.Auto; }
                }
                if (src.Kind == "pretrain" && size > cfg.UnitBytes && File.Exists(file) && format != InputFormat.Auto && InputReader.Splittable(file, format))
                {
                    Flush();
                    if (format == InputFormat.Jsonl)
                    {
                        for (long start = 0; start < size; start += cfg.UnitBytes)
                            units.Add(new WorkUnit(units.Count, s, [new InputPart(file, start, Math.Min(size, start + cfg.UnitBytes))], Math.Min(cfg.UnitBytes, size - start)));
                        continue;
                    }
                    int groups;
                    try { groups = ParquetInput.RowGroups(file); }
                    catch (InvalidDataException) { groups = 1; }
                    int per = (int)Math.Max(1, groups * cfg.UnitBytes / size);
                    for (int g = 0; g < groups; g += per)
                        units.Add(new WorkUnit(units.Count, s, [new InputPart(file, g, Math.Min(groups, g + per))], size * Math.Min(per, groups - g) / Math.Max(1, groups)));
                    continue;
                }
                if (parts.Count > 0 && bytes + size > cfg.UnitBytes) Flush();
                parts.Add(new InputPart(file));
                bytes += size;
            }
            Flush();
        }
        foreach (var u in units)
            foreach (var p in u.Parts) fp.Append(u.Index).Append('\t').Append(p.Path).Append('\t').Append(p.Start).Append('\t').Append(p.End).Append('\n');
        return new WorkPlan { Units = units, Fingerprint = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(fp.ToString()))) };
    }
}
