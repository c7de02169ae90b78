using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Engine.Core;
using Engine.Cpu;

namespace Engine.Model.IO;

/// <summary>One tensor's entry in a safetensors header; offsets are relative to the data section.</summary>
public sealed record SafeTensorEntry(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long Numel => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// Reader for the safetensors format (8-byte little-endian header length, JSON header, data section). Everything is
/// validated before any tensor is handed out: header length bound, JSON shape, known dtypes, shape × dtype size equal
/// to the byte span, offsets inside the data section, spans contiguous without overlap or gap — the rules of the
/// reference Rust implementation. A file that breaks one is refused with a message naming the problem.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    /// <summary>Largest header accepted (the reference implementation's bound).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    static readonly Dictionary<string, int> DTypeSizes = new(StringComparer.Ordinal)
    {
        ["F64"] = 8,
        ["F32"] = 4,
        ["F16"] = 2,
        ["BF16"] = 2,
        ["I64"] = 8,
        ["I32"] = 4,
        ["I16"] = 2,
        ["I8"] = 1,
        ["U8"] = 1,
        ["BOOL"] = 1,
        ["U16"] = 2,
        ["U32"] = 4,
        ["U64"] = 8,
        ["F8_E4M3"] = 1,
        ["F8_E5M2"] = 1,
    };

    readonly FileStream stream;
    readonly long dataStart;
    readonly Dictionary<string, SafeTensorEntry> byName;

    SafeTensorsFile(string path, FileStream stream, long dataStart, List<SafeTensorEntry> entries, Dictionary<string, string> metadata)
    {
        Path = path; this.stream = stream; this.dataStart = dataStart;
        Entries = entries; Metadata = metadata;
        byName = entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
    }

    public string Path { get; }
    public IReadOnlyList<SafeTensorEntry> Entries { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public SafeTensorEntry this[string name] => byName.TryGetValue(name, out var e) ? e
        : throw new KeyNotFoundException($"{Path}: no tensor named '{name}'");

    public bool Contains(string name) => byName.ContainsKey(name);

    public static SafeTensorsFile Open(string path)
    {
        FileStat.RequireRegular(path, "safetensors file");
        var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            var (start, entries, meta) = ReadHeader(fs, path);
            return new SafeTensorsFile(path, fs, start, entries, meta);
        }
        catch
        {
            fs.Dispose();
            throw;
        }
    }

    static InvalidDataException Bad(string path, string why) => new($"{path}: invalid safetensors file: {ErrorText.OneLine(why)}");

    static (long, List<SafeTensorEntry>, Dictionary<string, string>) ReadHeader(FileStream fs, string path)
    {
        long fileLen = fs.Length;
        if (fileLen < 8) throw Bad(path, $"file is {fileLen} bytes, shorter than the 8-byte header length");
        Span<byte> lenBytes = stackalloc byte[8];
        fs.ReadExactly(lenBytes);
        ulong headerLen = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (headerLen > MaxHeaderBytes) throw Bad(path, $"header length {headerLen} exceeds the {MaxHeaderBytes}-byte bound");
        if ((long)headerLen > fileLen - 8) throw Bad(path, $"header length {headerLen} runs past the end of the {fileLen}-byte file");
        var header = new byte[headerLen];
        fs.ReadExactly(header);
        if (headerLen == 0 || header[0] != (byte)'{') throw Bad(path, "header does not start with '{'");
        int badUtf8 = FirstInvalidUtf8(header);
        if (badUtf8 >= 0) throw Bad(path, $"header is not valid UTF-8 (byte {badUtf8} of the header)");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (JsonException e) { throw Bad(path, $"header is not valid JSON ({e.Message})"); }
        long dataLen = fileLen - 8 - (long)headerLen;
        var entries = new List<SafeTensorEntry>();
        var meta = new Dictionary<string, string>(StringComparer.Ordinal);
        var names = new HashSet<string>(StringComparer.Ordinal);
        using (doc)
            try
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad(path, "header is not a JSON object");
                foreach (var prop in doc.RootElement.EnumerateObject())
                {
                    if (!names.Add(prop.Name)) throw Bad(path, $"key '{prop.Name}' appears twice in the header");
                    if (prop.Name == "__metadata__")
                    {
                        if (prop.Value.ValueKind != JsonValueKind.Object) throw Bad(path, "__metadata__ is not an object");
                        foreach (var m in prop.Value.EnumerateObject())
                        {
                            if (m.Value.ValueKind != JsonValueKind.String) throw Bad(path, $"__metadata__ value '{m.Name}' is not a string");
                            meta[m.Name] = m.Value.GetString()!;
                        }
                        continue;
                    }
                    entries.Add(ParseEntry(path, prop));
                }
            }
            catch (InvalidOperationException e) // a string holding an escaped lone surrogate cannot become a .NET string
            {
                throw Bad(path, $"header holds an invalid string ({e.Message})");
            }
        // spans must tile the data section exactly: sorted by begin, contiguous, ending at its end
        var sorted = entries.OrderBy(e => e.Begin).ThenBy(e => e.End).ToList();
        long expect = 0;
        foreach (var e in sorted)
        {
            if (e.Begin < expect) throw Bad(path, $"tensor '{e.Name}' [{e.Begin}, {e.End}) overlaps the previous tensor (ends at {expect})");
            if (e.Begin > expect) throw Bad(path, $"gap of {e.Begin - expect} bytes before tensor '{e.Name}' at offset {expect}");
            expect = e.End;
        }
        if (expect != dataLen) throw Bad(path, $"data section is {dataLen} bytes but the tensors cover {expect} (truncated or trailing bytes)");
        return (8 + (long)headerLen, entries, meta);
    }

    static SafeTensorEntry ParseEntry(string path, JsonProperty prop)
    {
        string name = prop.Name;
        var v = prop.Value;
        if (v.ValueKind != JsonValueKind.Object) throw Bad(path, $"entry '{name}' is not an object");
        if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String) throw Bad(path, $"tensor '{name}' has no dtype");
        string dtype = dt.GetString()!;
        if (!DTypeSizes.TryGetValue(dtype, out int size)) throw Bad(path, $"tensor '{name}' has unknown dtype '{dtype}'");
        if (!v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array) throw Bad(path, $"tensor '{name}' has no shape array");
        var shape = new List<long>();
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long x) || x < 0) throw Bad(path, $"tensor '{name}' has an invalid dimension {d}");
            shape.Add(x);
        }
        if (!v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Bad(path, $"tensor '{name}' has no [begin, end] data_offsets");
        if (off[0].ValueKind != JsonValueKind.Number || off[1].ValueKind != JsonValueKind.Number
            || !off[0].TryGetInt64(out long b) || !off[1].TryGetInt64(out long e) || b < 0 || e < b)
            throw Bad(path, $"tensor '{name}' has invalid data_offsets {off}");
        // shape × dtype size must equal the span; a product that overflows 64 bits cannot (the span is a long)
        long bytes = 0;
        if (!shape.Contains(0))
        {
            try { bytes = shape.Aggregate((long)size, (p, x) => checked(p * x)); }
            catch (OverflowException) { throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] × {dtype} overflows 64 bits, more than any file holds"); }
        }
        if (e - b != bytes) throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] × {dtype} is {bytes} bytes but data_offsets span {e - b}");
        return new SafeTensorEntry(name, dtype, shape.ToArray(), b, e);
    }

    /// <summary>Offset of the first invalid UTF-8 byte, or -1.</summary>
    static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        if (System.Text.Unicode.Utf8.IsValid(bytes)) return -1;
        for (int i = 0; i < bytes.Length;)
        {
            if (Rune.DecodeFromUtf8(bytes[i..], out _, out int used) != System.Buffers.OperationStatus.Done) return i;
            i += used;
        }
        return -1;
    }

    /// <summary>The raw bytes of one tensor.</summary>
    public byte[] ReadBytes(string name)
    {
        var e = this[name];
        if (e.End - e.Begin > Array.MaxLength)
            throw new NotSupportedException($"{Path}: tensor '{name}' is {e.End - e.Begin:N0} bytes, more than one .NET array holds ({Array.MaxLength:N0})");
        var buf = new byte[e.End - e.Begin];
        stream.Position = dataStart + e.Begin;
        stream.ReadExactly(buf);
        return buf;
    }

    /// <summary>One tensor as fp32 (F32 copied, BF16/F16 widened exactly); other dtypes are refused.</summary>
    public float[] ReadFloat32(string name)
    {
        var e = this[name];
        if (e.Numel > Array.MaxLength)
            throw new NotSupportedException($"{Path}: tensor '{name}' has {e.Numel:N0} elements, more than one .NET array holds ({Array.MaxLength:N0})");
        byte[] raw = ReadBytes(name);
        var dst = new float[e.Numel];
        switch (e.DType)
        {
            case "F32":
                for (int i = 0; i < dst.Length; i++) dst[i] = BinaryPrimitives.ReadSingleLittleEndian(raw.AsSpan(i * 4));
                break;
            case "BF16":
                for (int i = 0; i < dst.Length; i++) dst[i] = BFloat16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(raw.AsSpan(i * 2)));
                break;
            case "F16":
                for (int i = 0; i < dst.Length; i++) dst[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(raw.AsSpan(i * 2));
                break;
            default:
                throw new InvalidDataException($"{Path}: tensor '{name}' has dtype {e.DType}, expected F32, BF16 or F16");
        }
        return dst;
    }

    public void Dispose() => stream.Dispose();
}

/// <summary>One tensor to write: fp32 values stored as F32 or rounded (nearest-even) to BF16 or F16.</summary>
public sealed record SafeTensorWrite(string Name, long[] Shape, ReadOnlyMemory<float> Values, string DType = "F32");

public static class SafeTensorsWriter
{
    /// <summary>Bytes per element of a writable dtype.</summary>
    public static int ElementSize(string dtype) => dtype switch
    {
        "F32" => 4,
        "BF16" or "F16" => 2,
        _ => throw new ArgumentException($"cannot write dtype {dtype} (F32, BF16, F16)"),
    };

    static int SizeOf(SafeTensorWrite t)
    {
        try { return ElementSize(t.DType); }
        catch (ArgumentException e) { throw new ArgumentException($"tensor '{t.Name}': {e.Message}"); }
    }

    /// <summary>fp32 → fp16, round to nearest even; a finite value beyond fp16's range (±65504) is refused rather than written as infinity.</summary>
    public static Half ToHalfChecked(float v, string tensor)
    {
        var h = (Half)v;
        if (Half.IsInfinity(h) && float.IsFinite(v))
            throw new ArgumentException($"tensor '{tensor}' holds {v}, beyond fp16's range (±65504): save it as BF16 or F32");
        return h;
    }

    /// <summary>
    /// Writes a safetensors file: header padded with spaces to 8-byte alignment, tensors in the given order.
    /// The file is written to a temporary name and renamed, so an existing file is never left half-written.
    /// </summary>
    public static void Write(string path, IEnumerable<SafeTensorWrite> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var names = new HashSet<string>(StringComparer.Ordinal);
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in list)
            {
                if (!names.Add(t.Name)) throw new ArgumentException($"duplicate tensor name '{t.Name}'");
                if (t.Name == "__metadata__") throw new ArgumentException("'__metadata__' is reserved");
                int size = SizeOf(t);
                long numel = t.Shape.Aggregate(1L, (a, b) => a * b);
                if (numel != t.Values.Length) throw new ArgumentException($"tensor '{t.Name}': shape [{string.Join(", ", t.Shape)}] holds {numel} values, got {t.Values.Length}");
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", t.DType);
                w.WriteStartArray("shape");
                foreach (long d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + numel * size);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += numel * size;
            }
            w.WriteEndObject();
        }
        var header = ms.ToArray().ToList();
        while (header.Count % 8 != 0) header.Add((byte)' ');

        string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = System.IO.Path.Combine(dir, $".{System.IO.Path.GetFileName(path)}.{Environment.ProcessId}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
            {
                Span<byte> len = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Count);
                fs.Write(len);
                fs.Write(header.ToArray());
                var chunk = new byte[1 << 16];
                foreach (var t in list)
                {
                    var vals = t.Values.Span;
                    int size = SizeOf(t);
                    int per = chunk.Length / size;
                    for (int i = 0; i < vals.Length; i += per)
                    {
                        int n = Math.Min(per, vals.Length - i);
                        for (int j = 0; j < n; j++)
                        {
                            float v = vals[i + j];
                            if (size == 4) BinaryPrimitives.WriteSingleLittleEndian(chunk.AsSpan(j * 4), v);
                            else if (t.DType == "BF16") BinaryPrimitives.WriteUInt16LittleEndian(chunk.AsSpan(j * 2), BFloat16.FromFloat(v));
                            else BinaryPrimitives.WriteHalfLittleEndian(chunk.AsSpan(j * 2), ToHalfChecked(v, t.Name));
                        }
                        fs.Write(chunk, 0, n * size);
                    }
                }
                fs.Flush(true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }
}
