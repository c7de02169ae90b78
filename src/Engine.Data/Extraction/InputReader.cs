using System.Text;
using System.Text.Json;

namespace Engine.Data.Extraction;

/// <summary>The layout of an input file; <see cref="Auto"/> takes it from the extension (before .gz / .zst).</summary>
public enum InputFormat { Auto, Jsonl, Parquet, Text, Json, Csv, Html, Pdf }

/// <summary>
/// A piece of one input file that one work unit reads: the whole file, or — for an uncompressed JSONL file larger than
/// a unit — the records that start in bytes [<see cref="Start"/>, <see cref="End"/>), or — for Parquet — row groups
/// [<see cref="Start"/>, <see cref="End"/>). <see cref="End"/> = -1 means to the end.
/// </summary>
public sealed record InputPart(string Path, long Start = 0, long End = -1)
{
    public bool Whole => Start == 0 && End < 0;
}

/// <summary>How records are read from a source's files.</summary>
public sealed record InputOptions
{
    public InvalidUtf8Policy InvalidUtf8 { get; init; } = InvalidUtf8Policy.Repair;
    /// <summary>The text field of JSONL objects and the text column of Parquet files.</summary>
    public string Field { get; init; } = "text";
    /// <summary>The field (or the whole file, for .html) holds an HTML page: its main content is extracted.</summary>
    public bool Html { get; init; }
    /// <summary>Longest record (a JSONL line, an HTML or PDF file, a Parquet value) read; longer ones are skipped and counted.</summary>
    public long MaxRecordBytes { get; init; } = 64L << 20;
    /// <summary>Plain text that is not WikiText: blank-line blocks merged up to about this many characters.</summary>
    public int TargetBlockChars { get; init; } = 3000;
}

/// <summary>
/// Streams the documents of one <see cref="InputPart"/>, holding one record at a time (JSONL line by line through a
/// bounded buffer, Parquet row group by row group), so memory does not grow with the file. Formats: JSONL (.jsonl,
/// .ndjson; .gz and .zst decompressed as read), Parquet (one text column), plain text / JSON / CSV (through
/// <see cref="Documents"/>: whole files up to 1 GiB), HTML pages (main content, tables as Markdown:
/// <see cref="HtmlExtractor"/>) and PDF (<see cref="PdfExtractor"/>). Each record skipped is counted by reason in
/// <see cref="Counters"/>; a file that cannot be read at all throws <see cref="InvalidDataException"/> naming it.
/// </summary>
public static class InputReader
{
    public static InputFormat Detect(string path) => DataFile.Extension(path) switch
    {
        ".jsonl" or ".ndjson" => InputFormat.Jsonl,
        ".parquet" => InputFormat.Parquet,
        ".txt" or ".md" or ".text" => InputFormat.Text,
        ".json" => InputFormat.Json,
        ".csv" => InputFormat.Csv,
        ".html" or ".htm" or ".xhtml" => InputFormat.Html,
        ".pdf" => InputFormat.Pdf,
        var e => throw new NotSupportedException($"{path}: unknown input format '{e}' (expected .jsonl, .parquet, .txt, .json, .csv, .html or .pdf, optionally .gz/.zst)"),
    };

    /// <summary>Whether a file of this format can be cut into byte ranges (uncompressed JSONL) or row groups (Parquet).</summary>
    public static bool Splittable(string path, InputFormat format) =>
        (format == InputFormat.Jsonl && !DataFile.IsGzip(path) && !DataFile.IsZstd(path)) || format == InputFormat.Parquet;

    public static IEnumerable<string> Read(InputPart part, InputFormat format, InputOptions options, Counters counts)
    {
        if (format == InputFormat.Auto) format = Detect(part.Path);
        if (!File.Exists(part.Path)) throw new FileNotFoundException($"data file not found: {part.Path}", part.Path);
        return format switch
        {
            InputFormat.Jsonl => Jsonl(part, options, counts),
            InputFormat.Parquet => ParquetInput.Read(part, options, counts),
            InputFormat.Html => Single(part, options, counts, bytes => HtmlExtractor.Page(TextDecoding.Decode(bytes, part.Path, options.InvalidUtf8), part.Path, counts)),
            InputFormat.Pdf => Single(part, options, counts, bytes => PdfExtractor.Extract(bytes, part.Path, counts)),
            _ => Whole(part.Path, options, counts),
        };
    }

    static IEnumerable<string> Whole(string path, InputOptions options, Counters counts)
    {
        var stats = new DocumentReadStats();
        var docs = Documents.Read(path, new DocumentReadOptions { InvalidUtf8 = options.InvalidUtf8, TargetBlockChars = options.TargetBlockChars }, stats);
        counts.Add("malformed_records", stats.MalformedRecordsSkipped);
        counts.Add("invalid_utf8_lines_repaired", stats.InvalidUtf8LinesRepaired);
        counts.Add("invalid_utf8_lines_dropped", stats.InvalidUtf8LinesDropped);
        return docs;
    }

    static IEnumerable<string> Single(InputPart part, InputOptions options, Counters counts, Func<byte[], string?> extract)
    {
        long length = new FileInfo(part.Path).Length;
        if (!DataFile.IsGzip(part.Path) && !DataFile.IsZstd(part.Path) && length > options.MaxRecordBytes)
        {
            counts.Add("records_too_long");
            yield break;
        }
        byte[] bytes;
        using (var s = DataFile.OpenRead(part.Path))
        {
            var ms = new MemoryStream();
            var buf = new byte[1 << 16];
            int n;
            while ((n = s.Read(buf)) > 0)
            {
                if (ms.Length + n > options.MaxRecordBytes) { counts.Add("records_too_long"); yield break; }
                ms.Write(buf, 0, n);
            }
            bytes = ms.ToArray();
        }
        string? text = extract(bytes);
        if (!string.IsNullOrWhiteSpace(text)) yield return text;
        else counts.Add("empty_extractions");
    }

    static IEnumerable<string> Jsonl(InputPart part, InputOptions options, Counters counts)
    {
        using var stream = DataFile.OpenRead(part.Path);
        var lines = new BoundedLineReader(stream, options.MaxRecordBytes);
        if (part.Start > 0)
        {
            // a range starting inside the file: the record that starts before Start belongs to the previous range
            stream.Position = part.Start - 1;
            lines.SkipLine();
        }
        bool first = part.Start == 0;
        while (lines.Next(out var line, out long at, out bool tooLong))
        {
            if (part.End >= 0 && at >= part.End) break;
            if (tooLong) { counts.Add("records_too_long"); continue; }
            var bytes = line.AsSpan();
            if (first)
            {
                first = false;
                if (bytes.StartsWith("\uFEFF"u8)) bytes = bytes[3..];
                if (bytes.IndexOf((byte)0) >= 0) throw new InvalidDataException($"{part.Path}: binary content (NUL byte in the first record); expected JSON lines");
            }
            if (bytes.Trim(" \t\r"u8).IsEmpty) continue;
            if (TextDecoding.FirstInvalidUtf8(bytes) >= 0)
            {
                switch (options.InvalidUtf8)
                {
                    case InvalidUtf8Policy.Error:
                        throw new InvalidDataException($"{part.Path}: invalid UTF-8 in the record at byte {at} (set invalid_utf8 to repair or drop)");
                    case InvalidUtf8Policy.Drop:
                        counts.Add("invalid_utf8_records_dropped");
                        continue;
                    default:
                        bytes = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(bytes));
                        counts.Add("invalid_utf8_records_repaired");
                        break;
                }
            }
            string? text = FromJson(bytes, options.Field);
            if (text == null) { counts.Add("malformed_records"); continue; }
            if (options.Html) text = HtmlExtractor.Page(text, part.Path, counts);
            if (string.IsNullOrWhiteSpace(text)) { counts.Add("empty_records"); continue; }
            counts.Add("jsonl_records");
            yield return text;
        }
    }

    /// <summary>The record's text: <paramref name="field"/>, else (for "text") instruction/input/output joined; null when it has none.</summary>
    static string? FromJson(ReadOnlySpan<byte> utf8, string field)
    {
        try
        {
            var reader = new Utf8JsonReader(utf8);
            using var doc = JsonDocument.ParseValue(ref reader);
            if (doc.RootElement.ValueKind != JsonValueKind.Object) return null;
            if (doc.RootElement.TryGetProperty(field, out var t)) return t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            if (field != "text") return null;
            var examples = new List<InstructionExample>();
            Instructions.FromElement(doc.RootElement, examples);
            return examples.Count == 1 ? Documents.Join(examples[0]) : null;
        }
        catch (JsonException) { return null; }
        catch (InvalidOperationException) { return null; }   // a string .NET cannot hold (an escaped lone surrogate)
    }
}

/// <summary>
/// Lines of a stream, each at most <c>max</c> bytes held: a longer line is reported as too long (its bytes dropped as
/// they pass), so a 1 GB line costs no more memory than a short one.
/// </summary>
public sealed class BoundedLineReader(Stream stream, long max)
{
    readonly byte[] _buf = new byte[1 << 16];
    int _pos, _len;
    long _offset;          // stream offset of _buf[0]
    bool _eof;
    readonly MemoryStream _line = new();

    bool Fill()
    {
        if (_eof) return false;
        _offset += _len;
        _len = stream.Read(_buf, 0, _buf.Length);
        _pos = 0;
        if (_len == 0) _eof = true;
        return _len > 0;
    }

    /// <summary>Drops bytes up to and including the next newline (after a seek into the middle of a record).</summary>
    public void SkipLine()
    {
        _offset = stream.Position;
        _len = 0;
        _pos = 0;
        while (true)
        {
            if (_pos >= _len && !Fill()) return;
            int nl = Array.IndexOf(_buf, (byte)'\n', _pos, _len - _pos);
            if (nl >= 0) { _pos = nl + 1; return; }
            _pos = _len;
        }
    }

    /// <summary>The next line without its newline (a copy), the stream offset where it starts, and whether it was cut.</summary>
    public bool Next(out byte[] line, out long start, out bool tooLong)
    {
        _line.SetLength(0);
        tooLong = false;
        start = _offset + _pos;
        bool any = false;
        while (true)
        {
            if (_pos >= _len && !Fill())
            {
                line = _line.ToArray();
                return any;
            }
            any = true;
            int nl = Array.IndexOf(_buf, (byte)'\n', _pos, _len - _pos);
            int end = nl >= 0 ? nl : _len;
            if (!tooLong)
            {
                if (_line.Length + (end - _pos) > max) { tooLong = true; _line.SetLength(0); }
                else _line.Write(_buf, _pos, end - _pos);
            }
            _pos = end;
            if (nl >= 0)
            {
                _pos = nl + 1;
                line = tooLong ? [] : _line.ToArray();
                return true;
            }
        }
    }
}
