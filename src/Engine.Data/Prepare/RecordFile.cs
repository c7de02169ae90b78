using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace Engine.Data.Prepare;

/// <summary>A record of up to three 64-bit words, ordered word by word (the key is A, then B, then C).</summary>
[StructLayout(LayoutKind.Sequential)]
public readonly record struct Rec(ulong A, ulong B = 0, ulong C = 0) : IComparable<Rec>
{
    public int CompareTo(Rec o) => A != o.A ? A.CompareTo(o.A) : B != o.B ? B.CompareTo(o.B) : C.CompareTo(o.C);
}

/// <summary>
/// Files of fixed-size records (<c>words</c> little-endian u64 each), written sorted, so that a merge task can read
/// one key range of every unit's file (a binary search for its start) and merge them in one pass holding one buffer
/// per file — datatrove's sorted signature files. The exchange between ranks is these files in the shared work folder.
/// </summary>
public static class RecordFile
{
    /// <summary>Sorts <paramref name="records"/> (optionally dropping repeats) and writes them to <paramref name="path"/>.</summary>
    public static long WriteSorted(string path, List<Rec> records, int words, bool unique = false)
    {
        records.Sort();
        using var w = new RecordWriter(path, words);
        Rec prev = default;
        for (int i = 0; i < records.Count; i++)
        {
            if (unique && i > 0 && records[i] == prev) continue;
            w.Add(records[i]);
            prev = records[i];
        }
        return w.Count;
    }

    /// <summary>Records of <paramref name="path"/> whose first word lies in [<paramref name="lo"/>, <paramref name="hi"/>] (inclusive), in file order.</summary>
    public static IEnumerable<Rec> Range(string path, int words, ulong lo, ulong hi)
    {
        using var r = new RecordReader(path, words, lo, hi);
        while (r.Next(out var rec)) yield return rec;
    }

    /// <summary>All records of the files with first word in [lo, hi], merged in record order (k-way, one buffer per file).</summary>
    public static IEnumerable<Rec> Merge(IReadOnlyList<string> paths, int words, ulong lo = 0, ulong hi = ulong.MaxValue)
    {
        var readers = new List<RecordReader>();
        try
        {
            var queue = new PriorityQueue<int, Rec>();
            var heads = new Rec[paths.Count];
            for (int i = 0; i < paths.Count; i++)
            {
                var r = new RecordReader(paths[i], words, lo, hi);
                readers.Add(r);
                if (r.Next(out heads[i])) queue.Enqueue(i, heads[i]);
            }
            while (queue.TryDequeue(out int i, out var rec))
            {
                yield return rec;
                if (readers[i].Next(out heads[i])) queue.Enqueue(i, heads[i]);
            }
        }
        finally
        {
            foreach (var r in readers) r.Dispose();
        }
    }

    /// <summary>The i-th of <paramref name="count"/> equal slices of the 64-bit key space (hashes are uniform, so the slices are balanced).</summary>
    public static (ulong Lo, ulong Hi) Slice(int i, int count)
    {
        UInt128 span = ((UInt128)1 << 64) / (ulong)count;
        ulong lo = (ulong)(span * (ulong)i);
        ulong hi = i == count - 1 ? ulong.MaxValue : (ulong)(span * (ulong)(i + 1)) - 1;
        return (lo, hi);
    }
}

public sealed class RecordWriter : IDisposable
{
    readonly FileStream _f;
    readonly int _words;
    readonly byte[] _buf = new byte[1 << 16];
    int _len;

    public RecordWriter(string path, int words)
    {
        if (words is < 1 or > 3) throw new ArgumentOutOfRangeException(nameof(words));
        _words = words;
        _f = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1);
    }

    public long Count { get; private set; }

    public void Add(Rec r)
    {
        if (_len + 24 > _buf.Length) Flush();
        BinaryPrimitives.WriteUInt64LittleEndian(_buf.AsSpan(_len), r.A);
        if (_words > 1) BinaryPrimitives.WriteUInt64LittleEndian(_buf.AsSpan(_len + 8), r.B);
        if (_words > 2) BinaryPrimitives.WriteUInt64LittleEndian(_buf.AsSpan(_len + 16), r.C);
        _len += 8 * _words;
        Count++;
    }

    void Flush()
    {
        _f.Write(_buf, 0, _len);
        _len = 0;
    }

    public void Dispose()
    {
        Flush();
        _f.Dispose();
    }
}

/// <summary>Sequential reader of a record file from the first record whose first word is at least lo, up to hi.</summary>
public sealed class RecordReader : IDisposable
{
    readonly FileStream _f;
    readonly int _size;
    readonly ulong _hi;
    readonly byte[] _buf = new byte[1 << 16];
    int _pos, _len;
    readonly long _end;
    long _at;

    public RecordReader(string path, int words, ulong lo = 0, ulong hi = ulong.MaxValue)
    {
        _size = 8 * words;
        _hi = hi;
        _f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
        if (_f.Length % _size != 0) { _f.Dispose(); throw new InvalidDataException($"{path}: {_f.Length} bytes is not a whole number of {_size}-byte records (truncated)"); }
        long n = _f.Length / _size;
        _end = _f.Length;
        // first record with A >= lo
        long a = 0, b = n;
        Span<byte> key = stackalloc byte[8];
        while (a < b)
        {
            long m = (a + b) / 2;
            RandomAccess.Read(_f.SafeFileHandle, key, m * _size);
            if (BinaryPrimitives.ReadUInt64LittleEndian(key) < lo) a = m + 1; else b = m;
        }
        _at = a * _size;
    }

    public bool Next(out Rec rec)
    {
        if (_pos + _size > _len)
        {
            int keep = _len - _pos;
            Array.Copy(_buf, _pos, _buf, 0, keep);
            int want = (int)Math.Min(_buf.Length - keep, _end - _at);
            int got = want > 0 ? RandomAccess.Read(_f.SafeFileHandle, _buf.AsSpan(keep, want), _at) : 0;
            _at += got;
            _len = keep + got;
            _pos = 0;
            if (_len < _size) { rec = default; return false; }
        }
        var s = _buf.AsSpan(_pos);
        ulong a = BinaryPrimitives.ReadUInt64LittleEndian(s);
        ulong b = _size > 8 ? BinaryPrimitives.ReadUInt64LittleEndian(s[8..]) : 0;
        ulong c = _size > 16 ? BinaryPrimitives.ReadUInt64LittleEndian(s[16..]) : 0;
        _pos += _size;
        rec = new Rec(a, b, c);
        if (a > _hi) { _len = _pos = 0; _at = _end; return false; }
        return true;
    }

    public void Dispose() => _f.Dispose();
}

/// <summary>
/// The document spill files between phases: records <c>[u32 index in the unit][u32 byte length][UTF-8 text]</c>.
/// <see cref="Mark"/>/<see cref="Rewind"/> take back what one input file added when that file turns out unreadable.
/// </summary>
public sealed class DocWriter : IDisposable
{
    readonly FileStream _f;
    readonly byte[] _head = new byte[8];

    public DocWriter(string path) => _f = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);

    public long Bytes => _f.Position;

    public void Add(uint index, string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        BinaryPrimitives.WriteUInt32LittleEndian(_head, index);
        BinaryPrimitives.WriteUInt32LittleEndian(_head.AsSpan(4), (uint)bytes.Length);
        _f.Write(_head);
        _f.Write(bytes);
    }

    public long Mark() => _f.Position;

    public void Rewind(long mark)
    {
        _f.Flush();
        _f.SetLength(mark);
        _f.Position = mark;
    }

    public void Dispose() => _f.Dispose();
}

public static class DocReader
{
    public static IEnumerable<(uint Index, string Text)> Read(string path)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        var head = new byte[8];
        while (true)
        {
            int n = f.ReadAtLeast(head, 8, throwOnEndOfStream: false);
            if (n == 0) yield break;
            if (n < 8) throw new InvalidDataException($"{path}: truncated document record at byte {f.Position - n}");
            uint index = BinaryPrimitives.ReadUInt32LittleEndian(head);
            int len = checked((int)BinaryPrimitives.ReadUInt32LittleEndian(head.AsSpan(4)));
            if (len > f.Length - f.Position) throw new InvalidDataException($"{path}: truncated document record at byte {f.Position - 8}");
            var bytes = new byte[len];
            f.ReadExactly(bytes);
            yield return (index, Encoding.UTF8.GetString(bytes));
        }
    }
}
