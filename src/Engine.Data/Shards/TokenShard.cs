using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace Engine.Data.Shards;

/// <summary>Element type of the tokens in a .bin file.</summary>
public enum TokenDType : uint
{
    UInt16 = 1,
    Int32 = 2,
}

/// <summary>
/// The .bin/.idx shard format (little-endian; see docs/DATA.md).
/// <c>.bin</c>: 64-byte header — magic "ENGTOKB\0", u32 version, u32 dtype, i64 token count, u64 data checksum,
/// i32 vocab size, 28 reserved zero bytes — then the tokens.
/// <c>.idx</c>: 64-byte header — magic "ENGTOKI\0", u32 version, u32 dtype, i64 document count, i64 token count,
/// u64 .bin data checksum, u64 offsets checksum, 16 reserved zero bytes — then i64 offsets[documents + 1]
/// (document i is tokens [offsets[i], offsets[i+1])).
/// </summary>
public static class ShardFormat
{
    public const int HeaderBytes = 64;
    public const uint Version = 1;
    public static ReadOnlySpan<byte> BinMagic => "ENGTOKB\0"u8;
    public static ReadOnlySpan<byte> IdxMagic => "ENGTOKI\0"u8;

    public static int ElementSize(TokenDType d) => d switch
    {
        TokenDType.UInt16 => 2,
        TokenDType.Int32 => 4,
        _ => throw new InvalidDataException($"unknown dtype code {(uint)d}"),
    };

    /// <summary>Smallest dtype that holds ids below <paramref name="vocabSize"/>.</summary>
    public static TokenDType DTypeFor(int vocabSize) => vocabSize <= 65536 ? TokenDType.UInt16 : TokenDType.Int32;

    public static (string Bin, string Idx) Paths(string basePath)
    {
        ArgumentException.ThrowIfNullOrEmpty(basePath);
        if (basePath.EndsWith(".bin", StringComparison.Ordinal) || basePath.EndsWith(".idx", StringComparison.Ordinal)) basePath = basePath[..^4];
        return (basePath + ".bin", basePath + ".idx");
    }

    /// <summary>FNV-1a over 64-bit little-endian words (tail zero-padded), with the byte length folded in at the end.</summary>
    public static ulong Checksum(ReadOnlySpan<byte> data, ulong state = 0xCBF29CE484222325UL)
    {
        int i = 0;
        for (; i + 8 <= data.Length; i += 8)
            state = (state ^ BinaryPrimitives.ReadUInt64LittleEndian(data[i..])) * 0x100000001B3UL;
        if (i < data.Length)
        {
            Span<byte> tail = stackalloc byte[8];
            tail.Clear();
            data[i..].CopyTo(tail);
            state = (state ^ BinaryPrimitives.ReadUInt64LittleEndian(tail)) * 0x100000001B3UL;
        }
        return state;
    }

    internal static ulong Finish(ulong state, long length) => (state ^ (ulong)length) * 0x100000001B3UL;
}

/// <summary>
/// Writes one shard: documents are appended, then <see cref="Complete"/> fills both headers and renames the
/// temporary files into place, so a crash never leaves a shard that looks complete.
/// </summary>
public sealed class ShardWriter : IDisposable
{
    readonly string _bin, _idx, _binTmp, _idxTmp;
    readonly FileStream _data;
    readonly List<long> _offsets = [0];
    readonly TokenDType _dtype;
    readonly int _vocab;
    readonly int _elem;
    ulong _hash = 0xCBF29CE484222325UL;
    long _bytes;
    readonly byte[] _carry = new byte[8];
    int _carryLen;
    bool _done;

    public ShardWriter(string basePath, int vocabSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        (_bin, _idx) = ShardFormat.Paths(basePath);
        _binTmp = _bin + ".tmp";
        _idxTmp = _idx + ".tmp";
        var dir = Path.GetDirectoryName(Path.GetFullPath(_bin));
        if (dir != null) Directory.CreateDirectory(dir);
        _vocab = vocabSize;
        _dtype = ShardFormat.DTypeFor(vocabSize);
        _elem = ShardFormat.ElementSize(_dtype);
        _data = new FileStream(_binTmp, FileMode.Create, FileAccess.ReadWrite, FileShare.None, 1 << 16);
        _data.Write(new byte[ShardFormat.HeaderBytes]);
    }

    public long Tokens => _offsets[^1];
    public int Documents => _offsets.Count - 1;
    public string BinPath => _bin;

    public void Add(ReadOnlySpan<int> document)
    {
        ObjectDisposedException.ThrowIf(_done, this);
        var buf = new byte[document.Length * _elem];
        for (int i = 0; i < document.Length; i++)
        {
            int t = document[i];
            if ((uint)t >= (uint)_vocab) throw new ArgumentOutOfRangeException(nameof(document), t, $"token id outside the vocabulary (size {_vocab})");
            if (_elem == 2) BinaryPrimitives.WriteUInt16LittleEndian(buf.AsSpan(2 * i), (ushort)t);
            else BinaryPrimitives.WriteInt32LittleEndian(buf.AsSpan(4 * i), t);
        }
        _data.Write(buf);
        Hash(buf);
        _offsets.Add(_offsets[^1] + document.Length);
    }

    void Hash(ReadOnlySpan<byte> buf)
    {
        _bytes += buf.Length;
        if (_carryLen > 0)
        {
            int take = Math.Min(8 - _carryLen, buf.Length);
            buf[..take].CopyTo(_carry.AsSpan(_carryLen));
            _carryLen += take;
            buf = buf[take..];
            if (_carryLen < 8) return;
            _hash = ShardFormat.Checksum(_carry, _hash);
            _carryLen = 0;
        }
        int whole = buf.Length & ~7;
        _hash = ShardFormat.Checksum(buf[..whole], _hash);
        buf[whole..].CopyTo(_carry);
        _carryLen = buf.Length - whole;
    }

    /// <summary>Writes the headers and index and moves the files into place.</summary>
    public void Complete()
    {
        ObjectDisposedException.ThrowIf(_done, this);
        if (_carryLen > 0) _hash = ShardFormat.Checksum(_carry.AsSpan(0, _carryLen), _hash);
        ulong dataSum = ShardFormat.Finish(_hash, _bytes);
        var header = new byte[ShardFormat.HeaderBytes];
        ShardFormat.BinMagic.CopyTo(header);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(8), ShardFormat.Version);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(12), (uint)_dtype);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(16), Tokens);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(24), dataSum);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(32), _vocab);
        _data.Position = 0;
        _data.Write(header);
        _data.Flush(true);
        _data.Dispose();

        var offsets = MemoryMarshal.AsBytes(CollectionsMarshal.AsSpan(_offsets));
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("shards are little-endian");
        var ih = new byte[ShardFormat.HeaderBytes];
        ShardFormat.IdxMagic.CopyTo(ih);
        BinaryPrimitives.WriteUInt32LittleEndian(ih.AsSpan(8), ShardFormat.Version);
        BinaryPrimitives.WriteUInt32LittleEndian(ih.AsSpan(12), (uint)_dtype);
        BinaryPrimitives.WriteInt64LittleEndian(ih.AsSpan(16), Documents);
        BinaryPrimitives.WriteInt64LittleEndian(ih.AsSpan(24), Tokens);
        BinaryPrimitives.WriteUInt64LittleEndian(ih.AsSpan(32), dataSum);
        BinaryPrimitives.WriteUInt64LittleEndian(ih.AsSpan(40), ShardFormat.Finish(ShardFormat.Checksum(offsets), offsets.Length));
        using (var idx = new FileStream(_idxTmp, FileMode.Create, FileAccess.Write))
        {
            idx.Write(ih);
            idx.Write(offsets);
            idx.Flush(true);
        }
        File.Move(_binTmp, _bin, overwrite: true);
        File.Move(_idxTmp, _idx, overwrite: true);
        _done = true;
    }

    public void Dispose()
    {
        if (_done) return;
        _done = true;
        _data.Dispose();
        File.Delete(_binTmp);
        File.Delete(_idxTmp);
    }
}

/// <summary>
/// A memory-mapped shard. <see cref="Open"/> checks magic, version, dtype, sizes, header agreement between .bin and
/// .idx and that offsets rise from 0 to the token count; with <c>verifyChecksums</c> it also hashes data and index.
/// Anything wrong is an <see cref="InvalidDataException"/> naming the file.
/// </summary>
public sealed unsafe class ShardReader : ITokenSource, IDisposable
{
    readonly MemoryMappedFile _binMap, _idxMap;
    readonly MemoryMappedViewAccessor _binView, _idxView;
    readonly byte* _binPtr, _idxPtr;
    readonly long _docs;

    public string BinPath { get; }
    public TokenDType DType { get; }
    public int VocabSize { get; }
    public long TokenCount { get; }
    public int DocumentCount => (int)_docs;
    public ulong DataChecksum { get; }
    bool _disposed;

    ShardReader(string bin, string idx)
    {
        BinPath = bin;
        long binLen = new FileInfo(bin).Length, idxLen = new FileInfo(idx).Length;
        if (binLen < ShardFormat.HeaderBytes) throw new InvalidDataException($"{bin}: {binLen} bytes, shorter than the {ShardFormat.HeaderBytes}-byte header (truncated)");
        if (idxLen < ShardFormat.HeaderBytes) throw new InvalidDataException($"{idx}: {idxLen} bytes, shorter than the {ShardFormat.HeaderBytes}-byte header (truncated)");
        _binMap = MemoryMappedFile.CreateFromFile(bin, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        _idxMap = MemoryMappedFile.CreateFromFile(idx, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        _binView = _binMap.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        _idxView = _idxMap.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        byte* p = null;
        _binView.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _binPtr = p + _binView.PointerOffset;
        p = null;
        _idxView.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _idxPtr = p + _idxView.PointerOffset;
        try { (DType, TokenCount, DataChecksum, VocabSize, _docs) = Check(bin, idx, binLen, idxLen); }
        catch { Dispose(); throw; }
    }

    (TokenDType, long, ulong, int, long) Check(string bin, string idx, long binLen, long idxLen)
    {
        var bh = new ReadOnlySpan<byte>(_binPtr, ShardFormat.HeaderBytes);
        var ih = new ReadOnlySpan<byte>(_idxPtr, ShardFormat.HeaderBytes);
        if (!bh[..8].SequenceEqual(ShardFormat.BinMagic)) throw new InvalidDataException($"{bin}: bad magic (not an engine token shard)");
        if (!ih[..8].SequenceEqual(ShardFormat.IdxMagic)) throw new InvalidDataException($"{idx}: bad magic (not an engine shard index)");
        uint bv = BinaryPrimitives.ReadUInt32LittleEndian(bh[8..]), iv = BinaryPrimitives.ReadUInt32LittleEndian(ih[8..]);
        if (bv != ShardFormat.Version) throw new InvalidDataException($"{bin}: version {bv} is not supported (expected {ShardFormat.Version})");
        if (iv != ShardFormat.Version) throw new InvalidDataException($"{idx}: version {iv} is not supported (expected {ShardFormat.Version})");
        uint dt = BinaryPrimitives.ReadUInt32LittleEndian(bh[12..]);
        if (dt is not ((uint)TokenDType.UInt16 or (uint)TokenDType.Int32)) throw new InvalidDataException($"{bin}: unknown dtype code {dt}");
        var dtype = (TokenDType)dt;
        if (BinaryPrimitives.ReadUInt32LittleEndian(ih[12..]) != dt) throw new InvalidDataException($"{idx}: dtype disagrees with {bin}");
        long tokens = BinaryPrimitives.ReadInt64LittleEndian(bh[16..]);
        ulong dataSum = BinaryPrimitives.ReadUInt64LittleEndian(bh[24..]);
        int vocab = BinaryPrimitives.ReadInt32LittleEndian(bh[32..]);
        long docs = BinaryPrimitives.ReadInt64LittleEndian(ih[16..]);
        long idxTokens = BinaryPrimitives.ReadInt64LittleEndian(ih[24..]);
        ulong idxDataSum = BinaryPrimitives.ReadUInt64LittleEndian(ih[32..]);
        int elem = ShardFormat.ElementSize(dtype);
        if (tokens < 0 || tokens > (binLen - ShardFormat.HeaderBytes) / elem || ShardFormat.HeaderBytes + tokens * elem != binLen)
            throw new InvalidDataException($"{bin}: header says {tokens} tokens ({(decimal)ShardFormat.HeaderBytes + (decimal)tokens * elem} bytes) but the file has {binLen} bytes (truncated or corrupted)");
        if (docs < 0 || docs > int.MaxValue - 1 || ShardFormat.HeaderBytes + (docs + 1) * 8 != idxLen)
            throw new InvalidDataException($"{idx}: header says {docs} documents but the file has {idxLen} bytes (truncated or corrupted)");
        if (idxTokens != tokens) throw new InvalidDataException($"{idx}: index counts {idxTokens} tokens but {bin} holds {tokens}");
        if (idxDataSum != dataSum) throw new InvalidDataException($"{idx}: index was written for different data (checksum differs from {bin})");
        if (vocab < 1) throw new InvalidDataException($"{bin}: vocabulary size {vocab} is not positive");
        long prev = Offset(0);
        if (prev != 0) throw new InvalidDataException($"{idx}: first offset is {prev}, not 0");
        for (long i = 1; i <= docs; i++)
        {
            long o = Offset(i);
            if (o < prev || o - prev > int.MaxValue) throw new InvalidDataException($"{idx}: offset {i} ({o}) is below offset {i - 1} ({prev})");
            prev = o;
        }
        if (prev != tokens) throw new InvalidDataException($"{idx}: last offset {prev} disagrees with the token count {tokens} of {bin}");
        return (dtype, tokens, dataSum, vocab, docs);
    }

    /// <summary>
    /// Opens <c>base.bin</c> + <c>base.idx</c> (either path or the base name). <paramref name="verifyChecksums"/> also
    /// hashes both files and checks every token id against the vocabulary size (a full read).
    /// </summary>
    public static ShardReader Open(string path, bool verifyChecksums = false)
    {
        var (bin, idx) = ShardFormat.Paths(path);
        if (!File.Exists(bin)) throw new FileNotFoundException($"shard data file not found: {bin}", bin);
        if (!File.Exists(idx)) throw new FileNotFoundException($"shard index file not found: {idx}", idx);
        ShardReader r;
        try { r = new ShardReader(bin, idx); }
        catch (IOException e) when (e is not FileNotFoundException) { throw new InvalidDataException($"{bin}: cannot be mapped ({e.Message})", e); }
        if (verifyChecksums)
        {
            try { r.VerifyChecksums(); r.VerifyTokenIds(); }
            catch { r.Dispose(); throw; }
        }
        return r;
    }

    long Offset(long i) => BinaryPrimitives.ReadInt64LittleEndian(new ReadOnlySpan<byte>(_idxPtr + ShardFormat.HeaderBytes + i * 8, 8));

    /// <summary>Hashes the token data and the offsets and compares them with the headers.</summary>
    public void VerifyChecksums()
    {
        long dataBytes = TokenCount * ShardFormat.ElementSize(DType);
        ulong h = 0xCBF29CE484222325UL;
        const long chunk = 1 << 30;
        for (long off = 0; off < dataBytes; off += chunk)
            h = ShardFormat.Checksum(new ReadOnlySpan<byte>(_binPtr + ShardFormat.HeaderBytes + off, (int)Math.Min(chunk, dataBytes - off)), h);
        if (ShardFormat.Finish(h, dataBytes) != DataChecksum) throw new InvalidDataException($"{BinPath}: token data checksum mismatch (corrupted)");
        long idxBytes = (_docs + 1) * 8;
        ulong stored = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(_idxPtr + 40, 8));
        if (ShardFormat.Finish(ShardFormat.Checksum(new ReadOnlySpan<byte>(_idxPtr + ShardFormat.HeaderBytes, (int)idxBytes)), idxBytes) != stored)
            throw new InvalidDataException($"{Path.ChangeExtension(BinPath, ".idx")}: offsets checksum mismatch (corrupted)");
    }

    /// <summary>
    /// Refuses a shard holding a token id at or above its vocabulary size (a checksum-valid shard written for another
    /// tokenizer, or by another tool), naming the shard, the document and the id.
    /// </summary>
    public void VerifyTokenIds()
    {
        long start = 0;
        for (long d = 0; d < _docs; d++)
        {
            long end = Offset(d + 1);
            for (long i = start; i < end; i++)
            {
                int t = DType == TokenDType.UInt16
                    ? BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(_binPtr + ShardFormat.HeaderBytes + i * 2, 2))
                    : BinaryPrimitives.ReadInt32LittleEndian(new ReadOnlySpan<byte>(_binPtr + ShardFormat.HeaderBytes + i * 4, 4));
                if ((uint)t >= (uint)VocabSize)
                    throw new InvalidDataException($"{BinPath}: document {d} holds token id {t} at position {i - start}, outside the shard's vocabulary of {VocabSize}");
            }
            start = end;
        }
    }

    public int DocumentLength(int index)
    {
        if ((uint)index >= (uint)_docs) throw new ArgumentOutOfRangeException(nameof(index), index, $"document index outside 0..{_docs - 1}");
        return (int)(Offset(index + 1) - Offset(index));
    }

    public void Read(int index, int offset, Span<int> destination)
    {
        int len = DocumentLength(index);
        if (offset < 0 || offset + destination.Length > len) throw new ArgumentOutOfRangeException(nameof(offset), offset, $"range outside document {index} of length {len}");
        long start = Offset(index) + offset;
        if (DType == TokenDType.UInt16)
        {
            var src = new ReadOnlySpan<ushort>(_binPtr + ShardFormat.HeaderBytes + start * 2, destination.Length);
            for (int i = 0; i < src.Length; i++) destination[i] = src[i];
        }
        else new ReadOnlySpan<int>(_binPtr + ShardFormat.HeaderBytes + start * 4, destination.Length).CopyTo(destination);
    }

    /// <summary>Document <paramref name="index"/> as a new array.</summary>
    public int[] Document(int index)
    {
        var d = new int[DocumentLength(index)];
        Read(index, 0, d);
        return d;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _binView.SafeMemoryMappedViewHandle.ReleasePointer();
        _idxView.SafeMemoryMappedViewHandle.ReleasePointer();
        _binView.Dispose();
        _idxView.Dispose();
        _binMap.Dispose();
        _idxMap.Dispose();
    }
}

/// <summary>Outcome of <see cref="ShardValidator.Validate"/>.</summary>
public sealed record ShardValidation(string Path, bool Ok, IReadOnlyList<string> Problems, long Documents, long Tokens);

/// <summary>Full check of a shard: structure, checksums, and every token below the vocabulary size. Never throws on bad content.</summary>
public static class ShardValidator
{
    public static ShardValidation Validate(string path)
    {
        var problems = new List<string>();
        try
        {
            using var r = ShardReader.Open(path);
            r.VerifyChecksums();
            var buf = new int[4096];
            long bad = 0;
            for (int d = 0; d < r.DocumentCount; d++)
            {
                int len = r.DocumentLength(d);
                for (int off = 0; off < len; off += buf.Length)
                {
                    var span = buf.AsSpan(0, Math.Min(buf.Length, len - off));
                    r.Read(d, off, span);
                    foreach (int t in span) if ((uint)t >= (uint)r.VocabSize) bad++;
                }
            }
            if (bad > 0) problems.Add($"{r.BinPath}: {bad} token ids outside the vocabulary (size {r.VocabSize})");
            return new ShardValidation(path, problems.Count == 0, problems, r.DocumentCount, r.TokenCount);
        }
        catch (Exception e) when (e is InvalidDataException or FileNotFoundException or IOException or UnauthorizedAccessException)
        {
            problems.Add(e.Message);
            return new ShardValidation(path, false, problems, 0, 0);
        }
    }
}
