using System.Buffers.Binary;

namespace Engine.Data.Extraction;

/// <summary>
/// A structural check of a Parquet file's footer before Parquet.Net parses it: the trailing length + "PAR1", the
/// footer inside the file, and its Thrift compact-protocol encoding walked field by field — every varint at most 10
/// bytes, every binary and container inside the footer, every container's element count no larger than the bytes left
/// (each element takes at least one), nesting at most 64 deep. Parquet.Net 6.1.0 skips unknown fields by looping over a
/// container's declared count, reading past the end of its buffer, so a mutated count of 2^31 held it for many minutes
/// (found by fuzzing; tests/Engine.Data.Tests/Fixtures/parquet-loop.parquet); a footer that passes this walk takes time
/// linear in its size.
/// </summary>
public static class ParquetFooter
{
    const int MaxDepth = 64;

    /// <summary>Throws <see cref="InvalidDataException"/> naming <paramref name="path"/> when the footer is malformed.</summary>
    public static void Check(string path, Stream file)
    {
        long length = file.Length;
        if (length < 12) throw Bad(path, $"{length} bytes, shorter than the smallest Parquet file (12)");
        Span<byte> tail = stackalloc byte[8];
        file.Seek(length - 8, SeekOrigin.Begin);
        file.ReadExactly(tail);
        if (!tail[4..].SequenceEqual("PAR1"u8)) throw Bad(path, "it does not end with the Parquet magic PAR1");
        uint footer = BinaryPrimitives.ReadUInt32LittleEndian(tail);
        if (footer == 0 || footer > length - 12) throw Bad(path, $"its footer length {footer} does not fit in the file ({length} bytes)");
        var bytes = new byte[footer];
        file.Seek(length - 8 - footer, SeekOrigin.Begin);
        file.ReadExactly(bytes);
        file.Seek(0, SeekOrigin.Begin);
        var walk = new Walker(bytes);
        string? problem = walk.Struct(0);
        if (problem != null) throw Bad(path, $"its footer's metadata is malformed at byte {walk.Position} of {footer}: {problem}");
    }

    static InvalidDataException Bad(string path, string what) => new($"{path}: not a readable Parquet file ({what})");

    /// <summary>The Thrift compact protocol, read only to check its bounds (returns the problem, or null).</summary>
    ref struct Walker(ReadOnlySpan<byte> data)
    {
        readonly ReadOnlySpan<byte> data = data;
        int pos;
        public readonly int Position => pos;
        readonly int Left => data.Length - pos;

        public string? Struct(int depth)
        {
            if (depth > MaxDepth) return $"nested deeper than {MaxDepth}";
            while (true)
            {
                if (Left < 1) return "a struct runs past the footer's end";
                byte header = data[pos++];
                if (header == 0) return null;                     // STOP
                if ((header >> 4) == 0 && Varint(out _) is { } e) return e;   // a long-form field id (zigzag i16)
                if (Value(header & 0x0F, depth) is { } p) return p;
            }
        }

        string? Value(int type, int depth)
        {
            switch (type)
            {
                case 1: case 2: return null;                      // a struct field's bool lives in its type
                case 3: return Skip(1);
                case 4: case 5: case 6: return Varint(out _);
                case 7: return Skip(8);
                case 8:
                    if (Varint(out ulong n) is { } e) return e;
                    return n > (ulong)Left ? $"a binary of {n} bytes with {Left} left" : Skip((int)n);
                case 9: case 10: return List(depth);
                case 11: return Map(depth);
                case 12: return Struct(depth + 1);
                default: return $"unknown field type {type}";
            }
        }

        string? List(int depth)
        {
            if (Left < 1) return "a list header runs past the footer's end";
            byte header = data[pos++];
            ulong n = (ulong)(header >> 4);
            if (n == 15 && Varint(out n) is { } e) return e;
            if (n > (ulong)Left) return $"a list of {n} elements with {Left} bytes left";
            int type = header & 0x0F;
            for (ulong i = 0; i < n; i++)
                if ((type is 1 or 2 ? Skip(1) : Value(type, depth + 1)) is { } p) return p;   // a list's bools take a byte each
            return null;
        }

        string? Map(int depth)
        {
            if (Varint(out ulong n) is { } e) return e;
            if (n == 0) return null;
            if (Left < 1) return "a map header runs past the footer's end";
            byte types = data[pos++];
            if (n > (ulong)Left / 2) return $"a map of {n} entries with {Left} bytes left";
            for (ulong i = 0; i < n; i++)
            {
                if ((types >> 4 is 1 or 2 ? Skip(1) : Value(types >> 4, depth + 1)) is { } k) return k;
                if (((types & 0x0F) is 1 or 2 ? Skip(1) : Value(types & 0x0F, depth + 1)) is { } v) return v;
            }
            return null;
        }

        string? Varint(out ulong value)
        {
            value = 0;
            for (int shift = 0; shift < 70; shift += 7)
            {
                if (Left < 1) { return "a varint runs past the footer's end"; }
                byte b = data[pos++];
                value |= (ulong)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) return null;
            }
            return "a varint longer than 10 bytes";
        }

        string? Skip(int n)
        {
            if (n > Left) return $"a value of {n} bytes with {Left} left";
            pos += n;
            return null;
        }
    }
}
