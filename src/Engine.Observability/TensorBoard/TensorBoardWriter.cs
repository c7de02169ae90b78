using System.Buffers.Binary;
using System.Globalization;
using System.Text;

namespace Engine.Observability.TensorBoard;

/*
 * TensorBoard event files (what tf.summary / torch.utils.tensorboard write), scalars only.
 * File: <logdir>/events.out.tfevents.<unix seconds, 10 digits>.<host>, a sequence of TFRecords:
 *   uint64 length (LE) | uint32 masked_crc32c(length bytes) | byte data[length] | uint32 masked_crc32c(data)
 * data = a serialized tensorflow.Event (tensorflow/core/util/event.proto, summary.proto):
 *   Event   { double wall_time = 1; int64 step = 2; oneof what { string file_version = 3; Summary summary = 5; ... } }
 *   Summary { repeated Value value = 1; }   Value { string tag = 1; oneof value { float simple_value = 2; ... } }
 * The first record is Event { wall_time, file_version: "brain.Event:2" }. Records are flushed per call (a crash loses
 * at most the step being written) and the file is appended to only, so TensorBoard can read it while training runs.
 */

/// <summary>Writes scalar summaries as a TensorBoard event file: <c>AddScalar("train/loss", step, loss)</c>.</summary>
public sealed class TensorBoardWriter : IDisposable
{
    public const string FileVersion = "brain.Event:2";

    readonly FileStream _file;
    readonly Lock _gate = new();
    readonly Func<double> _clock;

    /// <summary>The event file this writer appends to.</summary>
    public string FilePath { get; }

    /// <summary>Creates <paramref name="logDir"/> and a new event file in it, and writes the file-version record.</summary>
    /// <param name="clock">Wall time in seconds since the Unix epoch (tests fix it); the system clock by default.</param>
    public TensorBoardWriter(string logDir, string? host = null, Func<double>? clock = null)
    {
        if (string.IsNullOrWhiteSpace(logDir)) throw new ArgumentException("TensorBoard log directory is empty", nameof(logDir));
        _clock = clock ?? (() => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0);
        Directory.CreateDirectory(logDir);
        double now = _clock();
        string stem = Path.Combine(logDir, FileName(now, host ?? Environment.MachineName));
        FilePath = stem;
        for (int i = 1; File.Exists(FilePath); i++) FilePath = $"{stem}.{i}";
        _file = new FileStream(FilePath, FileMode.CreateNew, FileAccess.Write, FileShare.Read);
        WriteRecord(EventBytes(now, 0, fileVersion: FileVersion, values: null));
    }

    /// <summary>events.out.tfevents.&lt;seconds, 10 digits&gt;.&lt;host&gt; (TensorFlow's own naming).</summary>
    public static string FileName(double unixSeconds, string host) =>
        $"events.out.tfevents.{((long)unixSeconds).ToString("D10", CultureInfo.InvariantCulture)}.{host}";

    /// <summary>One scalar at <paramref name="step"/>; tags group in TensorBoard by their "section/" prefix.</summary>
    public void AddScalar(string tag, long step, double value) => AddScalars(step, [new(tag, value)]);

    /// <summary>Several scalars of one step in one event (one record).</summary>
    public void AddScalars(long step, IReadOnlyList<KeyValuePair<string, double>> values)
    {
        foreach (var (tag, _) in values)
            if (string.IsNullOrEmpty(tag)) throw new ArgumentException("TensorBoard scalar tag is empty", nameof(values));
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(!_file.CanWrite, this);
            WriteRecord(EventBytes(_clock(), step, fileVersion: null, values));
        }
    }

    public void Dispose()
    {
        lock (_gate) _file.Dispose();
    }

    void WriteRecord(byte[] data)
    {
        Span<byte> header = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], Crc32C.Masked(header[..8]));
        Span<byte> footer = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(footer, Crc32C.Masked(data));
        _file.Write(header);
        _file.Write(data);
        _file.Write(footer);
        _file.Flush();
    }

    /// <summary>The protobuf bytes of one Event (fields in number order, as protoc writes them).</summary>
    static byte[] EventBytes(double wallTime, long step, string? fileVersion, IReadOnlyList<KeyValuePair<string, double>>? values)
    {
        var e = new ProtoWriter();
        e.Double(1, wallTime);
        if (step != 0) e.Varint(2, (ulong)step);
        if (fileVersion is not null) e.Bytes(3, Encoding.UTF8.GetBytes(fileVersion));
        if (values is not null)
        {
            var summary = new ProtoWriter();
            foreach (var (tag, value) in values)
            {
                var v = new ProtoWriter();
                v.Bytes(1, Encoding.UTF8.GetBytes(tag));
                v.Float(2, (float)value);
                summary.Bytes(1, v.ToArray());
            }
            e.Bytes(5, summary.ToArray());
        }
        return e.ToArray();
    }

    /// <summary>The four protobuf wire types this file needs: varint (0), 64-bit (1), length-delimited (2), 32-bit (5).</summary>
    sealed class ProtoWriter
    {
        readonly MemoryStream _s = new();

        public void Varint(int field, ulong v) { Key(field, 0); Raw(v); }

        public void Double(int field, double v)
        {
            Key(field, 1);
            Span<byte> b = stackalloc byte[8];
            BinaryPrimitives.WriteDoubleLittleEndian(b, v);
            _s.Write(b);
        }

        public void Float(int field, float v)
        {
            Key(field, 5);
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteSingleLittleEndian(b, v);
            _s.Write(b);
        }

        public void Bytes(int field, byte[] v) { Key(field, 2); Raw((ulong)v.Length); _s.Write(v); }

        public byte[] ToArray() => _s.ToArray();

        void Key(int field, int wireType) => Raw((ulong)(field << 3 | wireType));

        void Raw(ulong v)
        {
            while (v >= 0x80) { _s.WriteByte((byte)(v | 0x80)); v >>= 7; }
            _s.WriteByte((byte)v);
        }
    }
}
