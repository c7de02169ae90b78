using System.Runtime.InteropServices;

#if ENGINE_DATA
namespace Engine.Data;
#else
namespace Engine.Core;
#endif

/// <summary>What a path names: a regular file, a directory, a device, a FIFO, … (Linux's S_IFMT).</summary>
#if ENGINE_DATA
internal enum FileKind
#else
public enum FileKind
#endif
{
    Missing,
    Regular,
    Directory,
    CharacterDevice,
    BlockDevice,
    Fifo,
    Socket,
    Other,
}

/// <summary>A path's kind, size, modification and change times (nanoseconds since the epoch), device and inode.</summary>
#if ENGINE_DATA
internal readonly record struct FileStatus(FileKind Kind, long Size, long ModifiedNs, long ChangedNs, ulong Device, ulong Inode);
#else
public readonly record struct FileStatus(FileKind Kind, long Size, long ModifiedNs, long ChangedNs, ulong Device, ulong Inode);
#endif

/// <summary>
/// stat(2) of a path (symbolic links followed), through statx on Linux: .NET's <see cref="FileInfo"/> reports a
/// character device (/dev/zero, /dev/urandom) or a FIFO as an existing file of length 0, and reading one then never
/// ends (a device) or blocks forever (a FIFO without a writer). Every reader of data, configs and weights asks
/// <see cref="RequireRegular"/> first. Elsewhere (no statx) an existing file counts as regular. Engine.Data, which
/// depends on nothing, compiles this same file as internal (ENGINE_DATA, like ErrorText).
/// </summary>
#if ENGINE_DATA
internal static partial class FileStat
#else
public static partial class FileStat
#endif
{
    /// <summary>The status of <paramref name="path"/>; Kind Missing when nothing is there (or it cannot be reached).</summary>
    public static FileStatus Get(string path)
    {
        if (OperatingSystem.IsLinux())
        {
            Span<byte> buf = stackalloc byte[256];
            buf.Clear();
            const int AtFdCwd = -100;
            const uint BasicStats = 0x7ff;
            if (statx(AtFdCwd, path, 0, BasicStats, ref MemoryMarshal.GetReference(buf)) == 0)
            {
                ushort mode = BitConverter.ToUInt16(buf[28..]);
                var kind = (mode & 0xF000) switch
                {
                    0x8000 => FileKind.Regular,
                    0x4000 => FileKind.Directory,
                    0x2000 => FileKind.CharacterDevice,
                    0x6000 => FileKind.BlockDevice,
                    0x1000 => FileKind.Fifo,
                    0xC000 => FileKind.Socket,
                    _ => FileKind.Other,
                };
                static long Ns(ReadOnlySpan<byte> ts) => BitConverter.ToInt64(ts) * 1_000_000_000L + BitConverter.ToUInt32(ts[8..]);
                ulong device = ((ulong)BitConverter.ToUInt32(buf[136..]) << 32) | BitConverter.ToUInt32(buf[140..]);
                return new FileStatus(kind, (long)BitConverter.ToUInt64(buf[40..]), Ns(buf[112..]), Ns(buf[96..]), device, BitConverter.ToUInt64(buf[32..]));
            }
            int errno = Marshal.GetLastPInvokeError();
            if (errno != 38 /* ENOSYS: fall back below */) return new FileStatus(FileKind.Missing, 0, 0, 0, 0, 0);
        }
        if (Directory.Exists(path)) return new FileStatus(FileKind.Directory, 0, 0, 0, 0, 0);
        var f = new FileInfo(path);
        if (!f.Exists) return new FileStatus(FileKind.Missing, 0, 0, 0, 0, 0);
        long mtime = (f.LastWriteTimeUtc - DateTime.UnixEpoch).Ticks * 100;
        return new FileStatus(FileKind.Regular, f.Length, mtime, mtime, 0, 0);
    }

    /// <summary>
    /// <paramref name="path"/> when it names a regular file (after symbolic links); else FileNotFoundException ("WHAT not
    /// found: PATH") or InvalidDataException naming what it is instead ("PATH is a character device, not a regular file").
    /// </summary>
    public static string RequireRegular(string path, string what)
    {
        var s = Get(path);
        return s.Kind switch
        {
            FileKind.Regular => path,
            FileKind.Missing => throw new FileNotFoundException($"{what} not found: {path}", path),
            _ => throw new InvalidDataException($"{what} {path} is {Describe(s.Kind)}, not a regular file: " +
                (s.Kind == FileKind.Directory ? "name a file in it" : "data, configs and weights are read from regular files (a device never ends, a FIFO blocks)")),
        };
    }

    static string Describe(FileKind k) => k switch
    {
        FileKind.Directory => "a directory",
        FileKind.CharacterDevice => "a character device",
        FileKind.BlockDevice => "a block device",
        FileKind.Fifo => "a FIFO (named pipe)",
        FileKind.Socket => "a socket",
        _ => "not a regular file",
    };

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statx(int dirfd, string path, int flags, uint mask, ref byte buffer);
}
