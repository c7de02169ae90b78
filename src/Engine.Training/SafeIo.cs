using System.Globalization;
using Engine.Core;
using Engine.Core.Distributed;

namespace Engine.Training;

/// <summary>
/// How a run writes its outputs (checkpoints, final weights, stage weights, metrics.jsonl) without a stack trace or
/// a surprise: <see cref="EnsureSpace"/> before each save whose size is known — every rank agrees, so they refuse
/// together —, and <see cref="Writing{T}"/> around the write, which turns an I/O failure (disk full, a read-only or
/// unwritable directory, a file where a directory must be) into one <see cref="StorageException"/> line naming what was
/// written, the path, the cause, the fix and the last good checkpoint (a checkpoint is built under a temporary name and
/// renamed, so the earlier ones stay intact).
/// <para>
/// Fault injection for tests (<see cref="FaultVariable"/> = ENGINE_IO_FAULT): "ENOSPC:TEXT", "EROFS:TEXT" or
/// "EIO:TEXT" makes every write through <see cref="Inject"/> to a path containing TEXT fail as the operating system
/// would (the same errno, the same message); "FREE:BYTES" makes <see cref="FreeBytes"/> report BYTES. Several are
/// separated by ';'. <see cref="Durable"/> (every checkpoint and final file is written or fsynced through it) and the
/// metrics log call <see cref="Inject"/>.
/// </para>
/// </summary>
public static class SafeIo
{
    public const string FaultVariable = "ENGINE_IO_FAULT";

    /// <summary>Free space kept beyond a save's own size: metadata, the filesystem's reserve, a log that grows meanwhile.</summary>
    public const long SpareBytes = 16L << 20;

    static readonly (int Errno, string Message)[] Faults =
    [
        (28, "No space left on device"),
        (30, "Read-only file system"),
        (5, "Input/output error"),
    ];

    /// <summary>Throws, as the operating system would, when ENGINE_IO_FAULT names a failure for <paramref name="path"/>.</summary>
    public static void Inject(string path)
    {
        if (Environment.GetEnvironmentVariable(FaultVariable) is not { Length: > 0 } spec) return;
        foreach (var item in spec.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int colon = item.IndexOf(':');
            if (colon <= 0) continue;
            string kind = item[..colon], text = item[(colon + 1)..];
            int errno = kind switch { "ENOSPC" => 28, "EROFS" => 30, "EIO" => 5, _ => 0 };
            if (errno == 0 || text.Length == 0 || !path.Contains(text, StringComparison.Ordinal)) continue;
            throw new IOException($"{Faults.First(f => f.Errno == errno).Message} : '{path}'", errno);
        }
    }

    /// <summary>Bytes available to this user on the filesystem holding <paramref name="path"/> (or its nearest existing
    /// ancestor); long.MaxValue when the system cannot say.</summary>
    public static long FreeBytes(string path)
    {
        if (Environment.GetEnvironmentVariable(FaultVariable) is { Length: > 0 } spec)
            foreach (var item in spec.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                if (item.StartsWith("FREE:", StringComparison.Ordinal) && long.TryParse(item[5..], NumberStyles.Integer, CultureInfo.InvariantCulture, out long fake))
                    return fake;
        var dir = new DirectoryInfo(Path.GetFullPath(path));
        while (dir != null && !dir.Exists) dir = dir.Parent;
        if (dir == null) return long.MaxValue;
        try { return new DriveInfo(dir.FullName).AvailableFreeSpace; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException) { return long.MaxValue; }
    }

    /// <summary>
    /// Refuses (<see cref="StorageException"/>, on every rank of <paramref name="comm"/> together) a save of about
    /// <paramref name="bytes"/> under <paramref name="dir"/> when the filesystem has less free (plus <see cref="SpareBytes"/>).
    /// </summary>
    public static void EnsureSpace(string dir, long bytes, string what, string? lastGood, ICommunicator? comm = null)
    {
        long free = FreeBytes(dir);
        Span<double> need = [free < bytes + SpareBytes ? 1 : 0, -Math.Min(free, (double)long.MaxValue)];
        if (comm is { WorldSize: > 1 }) comm.AllReduce(need, ReduceOp.Max);   // every rank refuses if one would
        if (need[0] > 0)
            throw new StorageException($"{what} needs about {Size(bytes + SpareBytes)} under {dir}, but {Size((long)-need[1])} are free there: " +
                $"free space on that filesystem or set output.dir to a larger disk, then resume with --resume latest; {LastGood(lastGood)}");
    }

    /// <summary>Runs <paramref name="write"/> (<paramref name="what"/> under <paramref name="path"/>); an I/O failure becomes
    /// one <see cref="StorageException"/> line with the cause, the fix and the last good checkpoint.</summary>
    public static T Writing<T>(string what, string path, string? lastGood, Func<T> write)
    {
        try { return write(); }
        catch (Exception e) when (e is (IOException and not StorageException) or UnauthorizedAccessException)
        {
            throw Failure(what, path, lastGood, e);
        }
    }

    public static void Writing(string what, string path, string? lastGood, Action write) =>
        Writing<object?>(what, path, lastGood, () => { write(); return null; });

    /// <summary>The one-line error of a failed write of <paramref name="what"/> under <paramref name="path"/>.</summary>
    public static StorageException Failure(string what, string path, string? lastGood, Exception e)
    {
        var (cause, fix) = Explain(e, path);
        return new StorageException($"cannot write {what} under {path}: {cause}; {fix}; {LastGood(lastGood)}", e);
    }

    /// <summary>An I/O failure that escaped the guarded writes, as "cause; fix" (the CLI's last resort, instead of a trace).</summary>
    public static string OneLine(Exception e)
    {
        var (cause, fix) = Explain(e, "");
        return $"{cause}; {fix}";
    }

    static (string Cause, string Fix) Explain(Exception e, string path)
    {
        string detail = ErrorText.OneLine(e.Message, 300);
        if (e is UnauthorizedAccessException || e.HResult is 13 or 1)
            return ($"permission denied ({detail})", "make the directory writable for this user or set output.dir to a writable one");
        if (e is DirectoryNotFoundException || e.HResult is 17 or 20)
        {
            // ENOTDIR/EEXIST: a path component that must be a directory is a file (`checkpoints` written as a file)
            string? blocker = path.Length > 0 ? FileInTheWay(path) : null;
            if (blocker != null) return ($"{blocker} is a file where a directory must be", $"remove or rename {blocker}");
        }
        return e.HResult switch
        {
            28 or 122 => ($"the disk is full ({detail})", "free space on that filesystem or set output.dir to a larger disk, then resume with --resume latest"),
            30 => ($"the filesystem is read-only ({detail})", "set output.dir to a writable directory (or remount it read-write)"),
            5 => ($"an I/O error ({detail})", "check the disk or the network mount"),
            _ => (detail, "check the output directory"),
        };
    }

    /// <summary>The first existing component of <paramref name="path"/> (or a child it names) that is a file, not a directory.</summary>
    static string? FileInTheWay(string path)
    {
        string full = Path.GetFullPath(path);
        var parts = new List<string>();
        for (string? p = full; !string.IsNullOrEmpty(p); p = Path.GetDirectoryName(p)) parts.Add(p);
        parts.Reverse();
        foreach (var p in parts)
            if (File.Exists(p)) return p;
        return null;
    }

    /// <summary>"last good checkpoint: DIR" or "no checkpoint was saved yet".</summary>
    public static string LastGood(string? checkpoint) =>
        checkpoint != null ? $"last good checkpoint: {checkpoint}" : "no checkpoint was saved yet";

    /// <summary>The newest checkpoint directory under <paramref name="outDir"/>/checkpoints (a train run's `step_*`, a
    /// recipe stage's `NN_stage/step_*`), or null.</summary>
    public static string? LastCheckpoint(string outDir)
    {
        string root = Path.Combine(outDir, "checkpoints");
        if (!Directory.Exists(root)) return null;
        try
        {
            return Directory.EnumerateDirectories(root, "step_*", SearchOption.AllDirectories)
                .Where(d => File.Exists(Path.Combine(d, "manifest.json")))
                .OrderBy(d => Path.GetFileName(Path.GetDirectoryName(d)), StringComparer.Ordinal).ThenBy(d => Path.GetFileName(d), StringComparer.Ordinal)
                .LastOrDefault();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>
    /// Final (or a recipe stage's) weights: refused when a weight is not finite (the guard let NaN through, or the run
    /// started from such weights); otherwise written by <paramref name="save"/> with the space check and the one-line
    /// errors, then made durable (fsync of every file and the directory).
    /// </summary>
    public static void SaveWeights(string dir, Engine.Model.LlamaModel model, ICommunicator comm, string? lastGood, Action save, string what = "the final weights")
    {
        // one parameter at a time (the save downloads each once more anyway): host memory stays one tensor
        string? bad = model.Store.Slots.FirstOrDefault(s => !AllFinite(s.Tensor.ToArray()))?.Name;
        Span<double> anyBad = [bad != null ? 1 : 0];
        if (comm.WorldSize > 1) comm.AllReduce(anyBad, ReduceOp.Max);
        if (anyBad[0] > 0)
        {
            string name = bad ?? "a parameter another rank holds";
            throw new InvalidDataException($"{what} hold non-finite values (first in {name}): not saved to {dir}; " +
                $"the run diverged (lower optim.lr, or train.guard = \"fail\" to stop at the first bad step); {LastGood(lastGood)}");
        }
        EnsureSpace(dir, model.ParameterCount * 4L, what, lastGood, comm);
        Writing(what, dir, lastGood, () =>
        {
            save();
            if (comm.Rank == 0 && Directory.Exists(dir))
            {
                // the finished files only: another writer's temporary (a reward model's head, written by the last
                // stage once the body is saved) may be renamed away under this loop
                foreach (var f in Directory.GetFiles(dir)) if (!Path.GetFileName(f).StartsWith('.')) Durable.SyncFile(f);
                Durable.SyncDirectory(dir);
            }
        });
        // no rank writes more into the directory before rank 0 has made the weights durable
        if (comm.WorldSize > 1) comm.Barrier();
    }

    static bool AllFinite(ReadOnlySpan<float> values)
    {
        foreach (float v in values) if (!float.IsFinite(v)) return false;
        return true;
    }

    static string Size(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F2} GiB"
        : bytes >= 1L << 20 ? $"{bytes / (double)(1L << 20):F1} MiB" : $"{bytes / 1024.0:F0} KiB";
}
