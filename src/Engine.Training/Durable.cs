using System.Runtime.InteropServices;

#if ENGINE_DATA
namespace Engine.Data;
#else
namespace Engine.Training;
#endif

/// <summary>
/// Crash-consistent writes for checkpoints: a file's data reaches the disk (fsync) before anything refers to it, and a
/// directory's entries (new files, a rename) are fsynced through the directory itself — without that, a power loss
/// after the rename can leave the new name pointing at nothing. On Windows directories cannot be opened for fsync
/// (NTFS orders metadata itself): <see cref="SyncDirectory"/> does nothing there. Both file operations are the test seam of
/// SafeIo.Inject (a write error surfaces at fsync at the latest). Engine.Data, which depends on nothing, compiles this
/// same file as its internal <c>Engine.Data.Durable</c> (ENGINE_DATA, without the seam) for engine prepare's work files.
/// </summary>
#if ENGINE_DATA
internal static partial class Durable
#else
public static partial class Durable
#endif
{
    /// <summary>Writes text and fsyncs it before returning.</summary>
    public static void WriteAllText(string path, string text)
    {
#if !ENGINE_DATA
        SafeIo.Inject(path);
#endif
        using var f = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None);
        using (var w = new StreamWriter(f, leaveOpen: true)) w.Write(text);
        f.Flush(flushToDisk: true);
    }

    /// <summary>Replaces a file atomically: the text is written and fsynced under a temporary name, renamed over
    /// <paramref name="path"/>, and the directory fsynced — a reader (or a crash) sees the old file or the new one whole.</summary>
    public static void ReplaceAllText(string path, string text)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileName(path)}.{Environment.ProcessId}.{Environment.CurrentManagedThreadId}.tmp");
        WriteAllText(tmp, text);
        File.Move(tmp, path, overwrite: true);
        SyncDirectory(dir);
    }

    /// <summary>fsync of a file written earlier (by this process or another rank).</summary>
    public static void SyncFile(string path)
    {
#if !ENGINE_DATA
        SafeIo.Inject(path);
#endif
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        f.Flush(flushToDisk: true);
    }

    /// <summary>fsync of a directory: its entries (created, renamed, removed files) become durable.</summary>
    public static void SyncDirectory(string path)
    {
        if (OperatingSystem.IsWindows()) return;
        int fd = open(path, 0 /* O_RDONLY */);
        if (fd < 0) throw new IOException($"{path}: cannot open the directory to fsync it (errno {Marshal.GetLastPInvokeError()})");
        try
        {
            if (fsync(fd) != 0) throw new IOException($"{path}: fsync of the directory failed (errno {Marshal.GetLastPInvokeError()})");
        }
        finally { _ = close(fd); }
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fsync(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);
}
