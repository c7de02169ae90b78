using System.Buffers;
using System.Text;
using System.Text.Unicode;

namespace Engine.Data;

/// <summary>What to do with bytes that are not valid UTF-8.</summary>
public enum InvalidUtf8Policy
{
    /// <summary>Refuse the file with an error naming it and the byte offset.</summary>
    Error,
    /// <summary>Replace each invalid sequence with U+FFFD and count the lines repaired.</summary>
    Repair,
    /// <summary>Drop each line that holds invalid bytes and count it.</summary>
    Drop,
}

/// <summary>Options for reading raw files into documents.</summary>
public sealed record DocumentReadOptions
{
    public InvalidUtf8Policy InvalidUtf8 { get; init; } = InvalidUtf8Policy.Error;

    /// <summary>Plain (non-WikiText) .txt files: blank-line blocks are merged up to about this many characters.</summary>
    public int TargetBlockChars { get; init; } = 3000;
}

/// <summary>Counters filled while reading; one instance may be shared across files (not thread-safe).</summary>
public sealed class DocumentReadStats
{
    public long Files { get; set; }
    public long EmptyFiles { get; set; }
    public long Bytes { get; set; }
    public long Documents { get; set; }
    public long MalformedRecordsSkipped { get; set; }
    public long InvalidUtf8LinesRepaired { get; set; }
    public long InvalidUtf8LinesDropped { get; set; }
    public long Utf16FilesDecoded { get; set; }
}

/// <summary>Bytes to text with binary detection, BOM handling and an explicit invalid-UTF-8 policy.</summary>
public static class TextDecoding
{
    static readonly UTF8Encoding Strict = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Largest text file read whole: its characters must fit one .NET string (about 1 G UTF-16 units).</summary>
    public const long MaxFileBytes = 1L << 30;

    /// <summary>
    /// Longest line of a line-oriented file (.txt, .jsonl, .csv, … — not a .json document): a line is held, split and
    /// tokenized whole, each step a copy several times its size, so one 200 MB line used to take gigabytes (5.6 GB with
    /// the byte tokenizer) and a BPE pre-tokenizer regex past its time limit. Longer lines are refused, naming the line.
    /// </summary>
    public const int MaxLineBytes = 16 << 20;

    /// <summary>Reads a whole file as text (gzip-compressed when named .gz); throws <see cref="InvalidDataException"/> naming the file for binary or (policy Error) invalid content.</summary>
    public static string ReadFile(string path, InvalidUtf8Policy policy, DocumentReadStats? stats = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        long length = FileStat.Get(FileStat.RequireRegular(path, "data file")).Size;
        if (length > MaxFileBytes)
            throw new InvalidDataException($"{path}: {length:N0} bytes, more than the {MaxFileBytes:N0} one text file may hold (a .NET string): split it into several files");
        byte[] bytes = File.ReadAllBytes(path);
        if (DataFile.IsGzip(path)) bytes = DataFile.Gunzip(bytes, path);   // x.jsonl.gz: the shipped data folder's form
        else if (DataFile.IsZstd(path)) bytes = ReadCapped(path);
        if (stats != null) { stats.Files++; stats.Bytes += bytes.Length; }
        if (bytes.Length == 0) { if (stats != null) stats.EmptyFiles++; return ""; }
        if (DataFile.Extension(path) != ".json") CheckLineLengths(bytes, path);
        return Decode(bytes, path, policy, stats);
    }

    static byte[] ReadCapped(string path)
    {
        using var input = DataFile.OpenRead(path);
        using var output = new MemoryStream();
        var buffer = new byte[1 << 16];
        int n;
        while ((n = input.Read(buffer)) > 0)
        {
            if (output.Length + n > DataFile.MaxDecompressedBytes)
                throw new InvalidDataException($"{path}: inflates to more than {DataFile.MaxDecompressedBytes:N0} bytes; split it into several files");
            output.Write(buffer, 0, n);
        }
        return output.ToArray();
    }

    /// <summary>Decodes bytes named <paramref name="source"/> (for messages) under <paramref name="policy"/>.</summary>
    public static string Decode(ReadOnlySpan<byte> bytes, string source, InvalidUtf8Policy policy, DocumentReadStats? stats = null)
    {
        if (bytes.Length >= 2 && ((bytes[0] == 0xFF && bytes[1] == 0xFE) || (bytes[0] == 0xFE && bytes[1] == 0xFF)))
        {
            if (stats != null) stats.Utf16FilesDecoded++;
            var enc = bytes[0] == 0xFF ? new UnicodeEncoding(false, true, true) : new UnicodeEncoding(true, true, true);
            try { return enc.GetString(bytes[2..]); }
            catch (DecoderFallbackException e) { throw new InvalidDataException($"{source}: UTF-16 byte-order mark but invalid UTF-16 content ({e.Message})", e); }
        }
        if (bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF) bytes = bytes[3..];
        int probe = Math.Min(bytes.Length, 8192);
        int nul = bytes[..probe].IndexOf((byte)0);
        if (nul >= 0) throw new InvalidDataException($"{source}: binary content (NUL byte at offset {nul}); expected UTF-8 text");
        int bad = FirstInvalidUtf8(bytes);
        if (bad < 0) return Strict.GetString(bytes);
        switch (policy)
        {
            case InvalidUtf8Policy.Error:
                throw new InvalidDataException($"{source}: invalid UTF-8 at byte offset {bad} (wrong encoding? set invalid_utf8 to repair or drop)");
            case InvalidUtf8Policy.Repair:
            case InvalidUtf8Policy.Drop:
                var sb = new StringBuilder(bytes.Length);
                int start = 0;
                while (start < bytes.Length)
                {
                    int nl = bytes[start..].IndexOf((byte)'\n');
                    int end = nl < 0 ? bytes.Length : start + nl + 1;
                    var line = bytes[start..end];
                    if (FirstInvalidUtf8(line) < 0) sb.Append(Strict.GetString(line));
                    else if (policy == InvalidUtf8Policy.Repair)
                    {
                        sb.Append(Encoding.UTF8.GetString(line));
                        if (stats != null) stats.InvalidUtf8LinesRepaired++;
                    }
                    else if (stats != null) stats.InvalidUtf8LinesDropped++;
                    start = end;
                }
                return sb.ToString();
            default:
                throw new ArgumentOutOfRangeException(nameof(policy), policy, "unknown invalid-UTF-8 policy");
        }
    }

    /// <summary>Refuses a line longer than <paramref name="maxBytes"/> (<see cref="MaxLineBytes"/>), naming its number and size.</summary>
    public static void CheckLineLengths(ReadOnlySpan<byte> bytes, string source, int maxBytes = MaxLineBytes)
    {
        long line = 1;
        while (bytes.Length > maxBytes)
        {
            int nl = bytes.IndexOf((byte)'\n');
            if (nl < 0 || nl > maxBytes)
            {
                long length = nl < 0 ? bytes.Length : nl;
                throw new InvalidDataException($"{source}: line {line:N0} holds {length:N0} bytes, more than the {maxBytes:N0} a line may hold " +
                    "(a line is tokenized whole; memory grows with it): break the text into lines");
            }
            bytes = bytes[(nl + 1)..];
            line++;
        }
    }

    /// <summary>Offset of the first invalid UTF-8 byte, or -1 when all of it is valid.</summary>
    public static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        if (Utf8.IsValid(bytes)) return -1;
        int offset = 0;
        while (offset < bytes.Length)
        {
            var status = Rune.DecodeFromUtf8(bytes[offset..], out _, out int consumed);
            if (status != OperationStatus.Done) return offset;
            offset += consumed;
        }
        return -1;
    }
}
