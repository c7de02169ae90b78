using System.Buffers.Binary;
using System.Text;

namespace Engine.Model.Export;

/// <summary>GGUF metadata value types (gguf.h <c>enum gguf_type</c>).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9,
    UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>One metadata value: a scalar (boxed .NET value), a string, or an array of one element type.</summary>
public sealed record GgufValue(GgufValueType Type, object Value, GgufValueType ElementType = GgufValueType.UInt8)
{
    public static GgufValue U32(uint v) => new(GgufValueType.UInt32, v);
    public static GgufValue I32(int v) => new(GgufValueType.Int32, v);
    public static GgufValue F32(float v) => new(GgufValueType.Float32, v);
    public static GgufValue Bool(bool v) => new(GgufValueType.Bool, v);
    public static GgufValue Str(string v) => new(GgufValueType.String, v);
    public static GgufValue Strings(IReadOnlyList<string> v) => new(GgufValueType.Array, v, GgufValueType.String);
    public static GgufValue Int32s(IReadOnlyList<int> v) => new(GgufValueType.Array, v, GgufValueType.Int32);
    public static GgufValue Float32s(IReadOnlyList<float> v) => new(GgufValueType.Array, v, GgufValueType.Float32);

    public string AsString => Value as string ?? throw new InvalidDataException($"GGUF value is {Type}, not a string");
    public IReadOnlyList<string> AsStrings => Value as IReadOnlyList<string> ?? throw new InvalidDataException($"GGUF value is not a string array");

    /// <summary>A scalar integer of any width as long.</summary>
    public long AsInteger => Value switch
    {
        byte b => b,
        sbyte sb => sb,
        ushort us => us,
        short s => s,
        uint u => u,
        int i => i,
        ulong ul => (long)ul,
        long l => l,
        _ => throw new InvalidDataException($"GGUF value is {Type}, not an integer"),
    };

    public double AsReal => Value switch
    {
        float f => f,
        double d => d,
        _ => throw new InvalidDataException($"GGUF value is {Type}, not a float"),
    };
}

/// <summary>One tensor's entry in a GGUF tensor table: dims in ggml order (ne[0] = innermost, i.e. row length).</summary>
public sealed record GgufTensorInfo(string Name, long[] Dims, GgmlType Type, long Offset)
{
    public long Numel => Dims.Aggregate(1L, (a, b) => a * b);

    /// <summary>Numel with overflow checked (the reader's bound before <see cref="Numel"/> is trusted).</summary>
    internal long CheckedNumel() => Dims.Aggregate(1L, (a, b) => checked(a * b));
    public long Bytes => Numel / GgmlQuants.BlockElements(Type) * GgmlQuants.BlockBytes(Type);
}

/*
 * GGUF v3 (ggml's gguf.h / gguf-py GGUFWriter), little-endian:
 *   "GGUF" u32 version=3 | u64 n_tensors | u64 n_kv
 *   n_kv × { string key | u32 type | value }         string = u64 byte length + UTF-8 (no terminator)
 *                                                     array  = u32 element type + u64 count + elements
 *   n_tensors × { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
 *   zero padding to general.alignment (default 32)
 *   tensor data: each tensor at its offset from the data start, offsets multiples of the alignment, zero padded.
 */
public sealed class GgufWriter
{
    public const uint Version = 3;
    public const int DefaultAlignment = 32;

    readonly List<(string Key, GgufValue Value)> kv = [];
    readonly List<(string Name, long[] Dims, GgmlType Type, Func<byte[]> Data)> tensors = [];

    /// <summary>Adds a metadata key (keys must be unique).</summary>
    public void Add(string key, GgufValue value)
    {
        if (kv.Any(e => e.Key == key)) throw new ArgumentException($"duplicate GGUF key '{key}'");
        kv.Add((key, value));
    }

    /// <summary>
    /// Adds a tensor: dims in ggml order (ne[0] first); data is produced when the file is written and must be exactly
    /// the type's size for those dims.
    /// </summary>
    public void AddTensor(string name, long[] dims, GgmlType type, Func<byte[]> data)
    {
        if (tensors.Any(t => t.Name == name)) throw new ArgumentException($"duplicate GGUF tensor '{name}'");
        if (dims.Length is < 1 or > 4 || dims.Any(d => d <= 0)) throw new ArgumentException($"tensor '{name}': dims [{string.Join(", ", dims)}] must be 1 to 4 positive sizes");
        GgmlQuants.RowBytes(type, dims[0]);
        tensors.Add((name, dims, type, data));
    }

    /// <summary>Writes the file (to a temporary name, then renamed).</summary>
    public void Write(string path)
    {
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string tmp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            using (var w = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true))
            {
                w.Write("GGUF"u8);
                w.Write(Version);
                w.Write((ulong)tensors.Count);
                w.Write((ulong)kv.Count);
                foreach (var (key, value) in kv)
                {
                    WriteString(w, key);
                    w.Write((uint)value.Type);
                    WriteValue(w, value);
                }
                long offset = 0;
                var infos = new List<long>();
                foreach (var (name, dims, type, _) in tensors)
                {
                    WriteString(w, name);
                    w.Write((uint)dims.Length);
                    foreach (long d in dims) w.Write((ulong)d);
                    w.Write((uint)type);
                    w.Write((ulong)offset);
                    infos.Add(offset);
                    offset += Pad(new GgufTensorInfo(name, dims, type, 0).Bytes, DefaultAlignment);
                }
                w.Flush();
                WritePadding(fs, fs.Position);
                long dataStart = fs.Position;
                for (int i = 0; i < tensors.Count; i++)
                {
                    var (name, dims, type, data) = tensors[i];
                    byte[] bytes = data();
                    long expected = new GgufTensorInfo(name, dims, type, 0).Bytes;
                    if (bytes.Length != expected) throw new ArgumentException($"tensor '{name}': {bytes.Length} bytes given, {type} [{string.Join(", ", dims)}] needs {expected}");
                    if (fs.Position - dataStart != infos[i]) throw new InvalidOperationException("GGUF writer: tensor offset drift");
                    fs.Write(bytes);
                    WritePadding(fs, bytes.Length);
                }
                fs.Flush(true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }

    static long Pad(long n, int align) => (n + align - 1) / align * align;

    static void WritePadding(Stream s, long n)
    {
        long pad = Pad(n, DefaultAlignment) - n;
        for (long i = 0; i < pad; i++) s.WriteByte(0);
    }

    static void WriteString(BinaryWriter w, string s)
    {
        byte[] b = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)b.Length);
        w.Write(b);
    }

    static void WriteValue(BinaryWriter w, GgufValue v)
    {
        switch (v.Type)
        {
            case GgufValueType.Array:
                w.Write((uint)v.ElementType);
                switch (v.Value)
                {
                    case IReadOnlyList<string> ss: w.Write((ulong)ss.Count); foreach (var s in ss) WriteString(w, s); break;
                    case IReadOnlyList<int> ii when v.ElementType == GgufValueType.Int32: w.Write((ulong)ii.Count); foreach (int i in ii) w.Write(i); break;
                    case IReadOnlyList<float> ff when v.ElementType == GgufValueType.Float32: w.Write((ulong)ff.Count); foreach (float f in ff) w.Write(f); break;
                    default: throw new ArgumentException($"unsupported GGUF array of {v.ElementType}");
                }
                break;
            default:
                WriteScalar(w, v.Type, v.Value);
                break;
        }
    }

    static void WriteScalar(BinaryWriter w, GgufValueType t, object value)
    {
        switch (t)
        {
            case GgufValueType.UInt8: w.Write((byte)value); break;
            case GgufValueType.Int8: w.Write((sbyte)value); break;
            case GgufValueType.UInt16: w.Write((ushort)value); break;
            case GgufValueType.Int16: w.Write((short)value); break;
            case GgufValueType.UInt32: w.Write((uint)value); break;
            case GgufValueType.Int32: w.Write((int)value); break;
            case GgufValueType.Float32: w.Write((float)value); break;
            case GgufValueType.Bool: w.Write((bool)value ? (byte)1 : (byte)0); break;
            case GgufValueType.String: WriteString(w, (string)value); break;
            case GgufValueType.UInt64: w.Write((ulong)value); break;
            case GgufValueType.Int64: w.Write((long)value); break;
            case GgufValueType.Float64: w.Write((double)value); break;
            default: throw new ArgumentException($"unsupported GGUF value type {t}");
        }
    }
}

/// <summary>
/// GGUF reader (v2 and v3): header, metadata, tensor table and data are validated before anything is handed out —
/// magic and version, counts and string lengths within the file, known value and tensor types, a power-of-two
/// alignment, every tensor offset aligned and its data inside the file without overlap. A file breaking one is
/// refused with a message naming the file and the problem.
/// </summary>
public sealed class GgufFile : IDisposable
{
    readonly FileStream stream;
    readonly Dictionary<string, GgufTensorInfo> byName;

    GgufFile(string path, FileStream stream, uint version, Dictionary<string, GgufValue> metadata, List<string> keyOrder,
        List<GgufTensorInfo> tensors, int alignment, long dataStart)
    {
        Path = path; this.stream = stream; Version = version; Metadata = metadata; KeyOrder = keyOrder;
        Tensors = tensors; Alignment = alignment; DataStart = dataStart;
        byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    public string Path { get; }
    public uint Version { get; }
    public IReadOnlyDictionary<string, GgufValue> Metadata { get; }

    /// <summary>Metadata keys in file order.</summary>
    public IReadOnlyList<string> KeyOrder { get; }

    public IReadOnlyList<GgufTensorInfo> Tensors { get; }
    public int Alignment { get; }

    /// <summary>File offset of the tensor data section (a multiple of the alignment).</summary>
    public long DataStart { get; }

    public GgufTensorInfo this[string name] => byName.TryGetValue(name, out var t) ? t
        : throw new InvalidDataException($"{Path}: no tensor named '{name}'");

    public bool Contains(string name) => byName.ContainsKey(name);

    public GgufValue Get(string key) => Metadata.TryGetValue(key, out var v) ? v : throw new InvalidDataException($"{Path}: no metadata key '{key}'");

    const long MaxStringBytes = 1L << 30;

    public static GgufFile Open(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"GGUF file not found: {path}", path);
        var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        try { return Parse(path, fs); }
        catch (EndOfStreamException) { fs.Dispose(); throw Bad(path, "file ends inside the header (truncated)"); }
        catch { fs.Dispose(); throw; }
    }

    static InvalidDataException Bad(string path, string why) => new($"{path}: invalid GGUF file: {Engine.Core.ErrorText.OneLine(why)}");

    static GgufFile Parse(string path, FileStream fs)
    {
        using var r = new BinaryReader(fs, Encoding.UTF8, leaveOpen: true);
        long len = fs.Length;
        if (len < 24) throw Bad(path, $"file is {len} bytes, shorter than the 24-byte header");
        if (!r.ReadBytes(4).AsSpan().SequenceEqual("GGUF"u8)) throw Bad(path, "no GGUF magic");
        uint version = r.ReadUInt32();
        if (version is not (2 or 3)) throw Bad(path, $"version {version} (2 and 3 are read)");
        ulong nTensors = r.ReadUInt64(), nKv = r.ReadUInt64();
        // every entry takes at least 8 bytes, so counts beyond the file size are corrupt
        if (nTensors > (ulong)len / 8 || nKv > (ulong)len / 8) throw Bad(path, $"{nTensors} tensors / {nKv} keys cannot fit a {len}-byte file");
        string ReadStr(string what)
        {
            ulong n = r.ReadUInt64();
            if (n > MaxStringBytes || (long)n > len - fs.Position) throw Bad(path, $"{what}: string of {n} bytes runs past the end of the file (truncated?)");
            return Encoding.UTF8.GetString(r.ReadBytes((int)n));
        }
        object Scalar(GgufValueType t, string key) => t switch
        {
            GgufValueType.UInt8 => r.ReadByte(),
            GgufValueType.Int8 => r.ReadSByte(),
            GgufValueType.UInt16 => r.ReadUInt16(),
            GgufValueType.Int16 => r.ReadInt16(),
            GgufValueType.UInt32 => r.ReadUInt32(),
            GgufValueType.Int32 => r.ReadInt32(),
            GgufValueType.Float32 => r.ReadSingle(),
            GgufValueType.Bool => r.ReadByte() switch { 0 => false, 1 => true, var b => throw Bad(path, $"key '{key}': bool byte {b}") },
            GgufValueType.String => ReadStr($"key '{key}'"),
            GgufValueType.UInt64 => r.ReadUInt64(),
            GgufValueType.Int64 => r.ReadInt64(),
            GgufValueType.Float64 => r.ReadDouble(),
            _ => throw Bad(path, $"key '{key}' has unknown value type {(uint)t}"),
        };
        var meta = new Dictionary<string, GgufValue>(StringComparer.Ordinal);
        var order = new List<string>();
        for (ulong i = 0; i < nKv; i++)
        {
            string key = ReadStr($"key {i}");
            var type = (GgufValueType)r.ReadUInt32();
            GgufValue value;
            if (type == GgufValueType.Array)
            {
                var et = (GgufValueType)r.ReadUInt32();
                ulong n = r.ReadUInt64();
                if (et == GgufValueType.Array) throw Bad(path, $"key '{key}': nested arrays are not read");
                if (n > (ulong)(len - fs.Position) || n > int.MaxValue) throw Bad(path, $"key '{key}': array of {n} elements runs past the end of the file (truncated?)");
                value = et switch
                {
                    GgufValueType.String => new GgufValue(type, Enumerable.Range(0, (int)n).Select(j => ReadStr($"key '{key}'[{j}]")).ToList(), et),
                    GgufValueType.Int32 => new GgufValue(type, Enumerable.Range(0, (int)n).Select(_ => r.ReadInt32()).ToList(), et),
                    GgufValueType.Float32 => new GgufValue(type, Enumerable.Range(0, (int)n).Select(_ => r.ReadSingle()).ToList(), et),
                    _ => new GgufValue(type, Enumerable.Range(0, (int)n).Select(_ => Scalar(et, key)).ToList(), et),
                };
            }
            else value = new GgufValue(type, Scalar(type, key));
            if (!meta.TryAdd(key, value)) throw Bad(path, $"duplicate key '{key}'");
            order.Add(key);
        }
        int alignment = GgufWriter.DefaultAlignment;
        if (meta.TryGetValue("general.alignment", out var al))
        {
            long a = al.Type == GgufValueType.UInt32 ? al.AsInteger : throw Bad(path, "general.alignment is not a u32");
            if (a <= 0 || (a & (a - 1)) != 0) throw Bad(path, $"general.alignment {a} is not a power of two");
            alignment = (int)a;
        }
        var tensors = new List<GgufTensorInfo>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (ulong i = 0; i < nTensors; i++)
        {
            string name = ReadStr($"tensor {i}");
            uint nd = r.ReadUInt32();
            if (nd is < 1 or > 4) throw Bad(path, $"tensor '{name}' has {nd} dimensions (1 to 4)");
            var dims = new long[nd];
            for (int d = 0; d < nd; d++)
            {
                ulong v = r.ReadUInt64();
                if (v == 0 || v > long.MaxValue / 64) throw Bad(path, $"tensor '{name}' has dimension {v}");
                dims[d] = (long)v;
            }
            var type = (GgmlType)r.ReadUInt32();
            if (!Enum.IsDefined(type)) throw Bad(path, $"tensor '{name}' has ggml type {(uint)type}, which this reader does not know (F32, F16, BF16, Q8_0, Q4_0)");
            if (dims[0] % GgmlQuants.BlockElements(type) != 0) throw Bad(path, $"tensor '{name}': row length {dims[0]} is not a multiple of {type}'s block of {GgmlQuants.BlockElements(type)}");
            ulong off = r.ReadUInt64();
            if (off > (ulong)len) throw Bad(path, $"tensor '{name}' offset {off} lies past the end of the {len}-byte file");
            if (off % (ulong)alignment != 0) throw Bad(path, $"tensor '{name}' offset {off} is not a multiple of the alignment {alignment}");
            if (!names.Add(name)) throw Bad(path, $"duplicate tensor '{name}'");
            var info = new GgufTensorInfo(name, dims, type, (long)off);
            try { _ = checked(info.CheckedNumel() / GgmlQuants.BlockElements(type) * GgmlQuants.BlockBytes(type)); }
            catch (OverflowException) { throw Bad(path, $"tensor '{name}' dims [{string.Join(", ", dims)}] overflow 64 bits, more than any file holds"); }
            tensors.Add(info);
        }
        long dataStart = (fs.Position + alignment - 1) / alignment * alignment;
        long dataLen = len - dataStart;
        long end = 0;
        foreach (var t in tensors.OrderBy(t => t.Offset))
        {
            if (t.Offset < end) throw Bad(path, $"tensor '{t.Name}' at offset {t.Offset} overlaps the previous tensor (ends at {end})");
            if (t.Bytes > dataLen - t.Offset)
                throw Bad(path, $"tensor '{t.Name}' ({t.Bytes} bytes at offset {t.Offset}) runs past the end of the data section ({dataLen} bytes; truncated?)");
            end = t.Offset + t.Bytes;
            if (end > dataLen) throw Bad(path, $"tensor '{t.Name}' ({t.Bytes} bytes at offset {t.Offset}) runs past the end of the data section ({dataLen} bytes; truncated?)");
        }
        return new GgufFile(path, fs, version, meta, order, tensors, alignment, dataStart);
    }

    /// <summary>A tensor's raw bytes.</summary>
    public byte[] ReadBytes(string name)
    {
        var t = this[name];
        if (t.Bytes > Array.MaxLength)
            throw new NotSupportedException($"{Path}: tensor '{name}' is {t.Bytes:N0} bytes, more than one .NET array holds ({Array.MaxLength:N0})");
        var buf = new byte[t.Bytes];
        stream.Position = DataStart + t.Offset;
        stream.ReadExactly(buf);
        return buf;
    }

    /// <summary>A tensor decoded to fp32, in its stored (ggml) element order.</summary>
    public float[] ReadFloat32(string name)
    {
        var t = this[name];
        if (t.Numel > Array.MaxLength)
            throw new NotSupportedException($"{Path}: tensor '{name}' has {t.Numel:N0} elements, more than one .NET array holds ({Array.MaxLength:N0})");
        var y = new float[t.Numel];
        GgmlQuants.Dequantize(t.Type, ReadBytes(name), y);
        return y;
    }

    public void Dispose() => stream.Dispose();
}
