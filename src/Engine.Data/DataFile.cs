using System.IO.Compression;

namespace Engine.Data;

/// <summary>
/// Data files stored gzip-compressed (<c>name.ext.gz</c>, as in the shipped <c>data/</c> folder): the readers
/// (<see cref="TextDecoding.ReadFile"/>, hence <see cref="Documents"/> and <see cref="Instructions"/>) decompress them
/// as they read, and take the format from the extension before <c>.gz</c>. A file named <c>.gz</c> that is not gzip,
/// is corrupt or truncated, or inflates past <see cref="MaxDecompressedBytes"/> is an error naming it.
/// </summary>
public static class DataFile
{
    public const string GzipSuffix = ".gz";

    /// <summary>Largest decompressed size read (a gzip bomb stops here): the text must fit one .NET string anyway.</summary>
    public const long MaxDecompressedBytes = 1L << 30;

    public static bool IsGzip(string path) => path.EndsWith(GzipSuffix, StringComparison.OrdinalIgnoreCase);

    /// <summary>The format's extension in lower case: <c>.jsonl</c> for both <c>x.jsonl</c> and <c>x.jsonl.gz</c>.</summary>
    public static string Extension(string path) =>
        Path.GetExtension(IsGzip(path) ? path[..^GzipSuffix.Length] : path).ToLowerInvariant();

    /// <summary>The file's bytes, decompressed when it is named <c>.gz</c>.</summary>
    public static byte[] ReadAllBytes(string path)
    {
        byte[] bytes = File.ReadAllBytes(FileStat.RequireRegular(path, "data file"));
        return IsGzip(path) ? Gunzip(bytes, path) : bytes;
    }

    /// <summary>Decompresses gzip data (one or more members) named <paramref name="source"/> in messages.</summary>
    public static byte[] Gunzip(byte[] compressed, string source, long maxBytes = MaxDecompressedBytes)
    {
        if (compressed.Length < 2 || compressed[0] != 0x1f || compressed[1] != 0x8b)
            throw new InvalidDataException($"{source}: named {GzipSuffix} but not gzip data (no gzip header)");
        using var output = new MemoryStream();
        using (var input = new GZipStream(new MemoryStream(compressed, writable: false), CompressionMode.Decompress))
        {
            var buffer = new byte[1 << 16];
            while (true)
            {
                int n;
                try { n = input.Read(buffer); }
                catch (InvalidDataException e) { throw new InvalidDataException($"{source}: corrupt gzip data ({e.Message})", e); }
                if (n == 0) break;
                if (output.Length + n > maxBytes)
                    throw new InvalidDataException($"{source}: inflates to more than {maxBytes:N0} bytes; split it into several files");
                output.Write(buffer, 0, n);
            }
        }
        CheckTrailer(compressed, output.Length, source);
        return output.ToArray();
    }

    /// <summary>
    /// A truncated gzip file can end without an error from <see cref="GZipStream"/>: the last member's trailer
    /// (CRC-32, then the size mod 2^32, little-endian) must be there and its size must match what was inflated.
    /// </summary>
    static void CheckTrailer(byte[] compressed, long inflated, string source)
    {
        if (compressed.Length < 18) throw new InvalidDataException($"{source}: truncated gzip data ({compressed.Length} bytes)");
        uint size = BitConverter.ToUInt32(compressed, compressed.Length - 4);
        if (!BitConverter.IsLittleEndian) size = System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(size);
        // several members: the trailer holds the last member's size only, which is at most the total
        if (size != (uint)inflated && size > inflated)
            throw new InvalidDataException($"{source}: truncated gzip data (trailer says {size:N0} bytes, inflated {inflated:N0})");
    }
}
