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

    /// <summary>Zstandard-compressed files (<c>x.jsonl.zst</c>, the form of many web corpora) are read as streams only.</summary>
    public const string ZstdSuffix = ".zst";

    public static bool IsZstd(string path) => path.EndsWith(ZstdSuffix, StringComparison.OrdinalIgnoreCase);

    /// <summary>The path without a trailing <c>.gz</c> or <c>.zst</c>.</summary>
    public static string WithoutCompression(string path) =>
        IsGzip(path) ? path[..^GzipSuffix.Length] : IsZstd(path) ? path[..^ZstdSuffix.Length] : path;

    /// <summary>
    /// A stream of the file's bytes, decompressed as they are read when it is named <c>.gz</c> or <c>.zst</c>. A corrupt or
    /// truncated compressed file is an <see cref="InvalidDataException"/> naming it, raised where the damage is met (a
    /// gzip file's last trailer is checked at its end: a cut file can otherwise end quietly).
    /// </summary>
    public static Stream OpenRead(string path)
    {
        var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        try
        {
            if (IsGzip(path))
            {
                Span<byte> magic = stackalloc byte[2];
                if (file.ReadAtLeast(magic, 2, throwOnEndOfStream: false) < 2 || magic[0] != 0x1f || magic[1] != 0x8b)
                    throw new InvalidDataException($"{path}: named {GzipSuffix} but not gzip data (no gzip header)");
                file.Position = 0;
                return new CheckedStream(new GZipStream(file, CompressionMode.Decompress), path, "gzip", inflated => CheckTrailer(path, file.Length, inflated));
            }
            if (IsZstd(path))
            {
                Span<byte> magic = stackalloc byte[4];
                if (file.ReadAtLeast(magic, 4, throwOnEndOfStream: false) < 4 || System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(magic) != 0xFD2FB528)
                    throw new InvalidDataException($"{path}: named {ZstdSuffix} but not Zstandard data (no zstd frame magic)");
                file.Position = 0;
                return new CheckedStream(new ZstdSharp.DecompressionStream(file, leaveOpen: false, checkEndOfStream: true), path, "zstd", null);
            }
            return file;
        }
        catch { file.Dispose(); throw; }
    }

    static void CheckTrailer(string path, long fileLength, long inflated)
    {
        if (fileLength < 18) throw new InvalidDataException($"{path}: truncated gzip data ({fileLength} bytes)");
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 16);
        f.Position = fileLength - 4;
        Span<byte> b = stackalloc byte[4];
        f.ReadExactly(b);
        uint size = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(b);
        if (size != (uint)inflated && size > inflated)
            throw new InvalidDataException($"{path}: truncated gzip data (trailer says {size:N0} bytes, inflated {inflated:N0})");
    }

    /// <summary>A decompressing stream whose errors name the file, with a check when it ends.</summary>
    sealed class CheckedStream(Stream inner, string path, string kind, Action<long>? atEnd) : Stream
    {
        long _read;
        bool _ended;
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _read; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            int n;
            try { n = inner.Read(buffer); }
            catch (Exception e) when (e is InvalidDataException or IOException or ZstdSharp.ZstdException or EndOfStreamException)
            {
                throw new InvalidDataException($"{path}: corrupt or truncated {kind} data at {_read:N0} inflated bytes ({ErrorText.OneLine(e.Message)})", e);
            }
            _read += n;
            if (n == 0 && buffer.Length > 0 && !_ended) { _ended = true; atEnd?.Invoke(_read); }
            return n;
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing) inner.Dispose();
            base.Dispose(disposing);
        }
    }

    /// <summary>Largest decompressed size read (a gzip bomb stops here): the text must fit one .NET string anyway.</summary>
    public const long MaxDecompressedBytes = 1L << 30;

    public static bool IsGzip(string path) => path.EndsWith(GzipSuffix, StringComparison.OrdinalIgnoreCase);

    /// <summary>The format's extension in lower case: <c>.jsonl</c> for <c>x.jsonl</c>, <c>x.jsonl.gz</c> and <c>x.jsonl.zst</c>.</summary>
    public static string Extension(string path) =>
        Path.GetExtension(WithoutCompression(path)).ToLowerInvariant();

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
