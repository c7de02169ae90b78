using System.Globalization;
using System.Text.Json;
using Engine.Core;
using Engine.Core.Distributed;

namespace Engine.Training;

/// <summary>
/// One writer per output directory (train, recipe/demo, prepare): the lead rank holds an exclusive lock on
/// <c>DIR/.engine.lock</c> (flock(2) through .NET's FileShare.None: the kernel drops it when the process dies, however it
/// dies, so a killed run's lock is never stale) for the whole run, and records who holds it in <c>DIR/.engine.lock.json</c>
/// (pid, host, start time, command). A second run on the directory is refused at once, naming that run; a record left
/// by a process that died is reported as recovered. Where the filesystem has no flock (ENOLCK, EOPNOTSUPP), the record
/// alone decides: a live pid on this host (same start time) holds it, a dead one's record is taken over.
/// <para>
/// The lock file itself is never deleted (deleting it would let two processes lock two different inodes of one name);
/// the record is removed on a clean release. Acquiring also checks that the directory is writable and that none of the
/// run's sub-directories is a file, so such a run fails before it trains, with one line.
/// </para>
/// </summary>
public sealed class RunDirectoryLock : IDisposable
{
    public const string LockFile = ".engine.lock", OwnerFile = ".engine.lock.json";

    /// <summary>Who holds (or held) a lock.</summary>
    public sealed record Owner(int Pid, string Host, DateTime Started, string Command, long ProcessStart);

    static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true };

    readonly FileStream? handle;
    bool released;

    RunDirectoryLock(string dir, FileStream? handle, Owner? recovered)
    {
        Directory = dir;
        this.handle = handle;
        Recovered = recovered;
    }

    public string Directory { get; }

    /// <summary>The earlier holder whose lock this one took over because that process had died (null when there was none).</summary>
    public Owner? Recovered { get; }

    /// <summary>
    /// Every rank calls this together; rank 0 takes the lock on <paramref name="dir"/> and tells the others whether it
    /// did (one broadcast, so a refused run fails on every rank with the same message and none waits for another). The
    /// other ranks get a lock object that holds nothing.
    /// </summary>
    public static RunDirectoryLock Acquire(string dir, ICommunicator? comm, Action<string>? say = null)
    {
        if (comm is not { WorldSize: > 1 })
        {
            var single = Acquire(dir);
            if (single.Recovered is { } r) say?.Invoke(RecoveredMessage(single));
            return single;
        }
        RunDirectoryLock? mine = null;
        Exception? failed = null;
        if (comm.Rank == 0)
        {
            try { mine = Acquire(dir); }
            catch (Exception e) { failed = e; }
        }
        string error = System.Text.Encoding.UTF8.GetString(comm.Broadcast(System.Text.Encoding.UTF8.GetBytes(failed?.Message ?? ""), 0));
        if (failed != null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failed);
        if (error.Length > 0) throw new StorageException(error);
        if (mine?.Recovered != null) say?.Invoke(RecoveredMessage(mine));
        return mine ?? new RunDirectoryLock(dir, null, null) { released = true };
    }

    static string RecoveredMessage(RunDirectoryLock l) =>
        $"{l.Directory}: took over the lock of {Describe(l.Recovered!)}, which is no longer running";

    /// <summary>Takes the lock in this process (creating <paramref name="dir"/>); StorageException naming the holder when
    /// another live run has it, or the cause when the directory cannot be written.</summary>
    public static RunDirectoryLock Acquire(string dir)
    {
        dir = Path.GetFullPath(dir);
        string lockPath = Path.Combine(dir, LockFile), ownerPath = Path.Combine(dir, OwnerFile);
        SafeIo.Writing("the output directory", dir, null, () => System.IO.Directory.CreateDirectory(dir));
        foreach (var sub in new[] { "checkpoints", "final", "stages", "tensorboard" })
        {
            string p = Path.Combine(dir, sub);
            if (File.Exists(p))
                throw new StorageException($"{p} is a file, but the run writes a directory there: remove or rename that file, or set output.dir to another directory");
        }
        if (System.IO.Directory.Exists(Path.Combine(dir, "metrics.jsonl")))
            throw new StorageException($"{Path.Combine(dir, "metrics.jsonl")} is a directory, but the run appends its metrics to a file there: remove or rename it");
        var previous = ReadOwner(ownerPath);
        FileStream? stream = null;
        try
        {
            stream = new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e) when (e.HResult == 11 /* EWOULDBLOCK: another process holds the flock */)
        {
            throw Held(dir, previous);
        }
        catch (IOException e) when (e.HResult is 37 or 95 /* ENOLCK, EOPNOTSUPP: no flock on this filesystem */)
        {
            if (previous != null && IsAlive(previous)) throw Held(dir, previous);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw SafeIo.Failure("the run's lock file", dir, null, e);
        }
        var me = Current();
        try
        {
            SafeIo.Writing("the run's lock record", dir, null, () =>
            {
                string tmp = ownerPath + ".tmp";
                Durable.WriteAllText(tmp, JsonSerializer.Serialize(me, Json));
                File.Move(tmp, ownerPath, overwrite: true);
            });
        }
        catch
        {
            stream?.Dispose();
            throw;
        }
        // a record that was there although the lock was free: its process died without releasing (kill -9, a crash)
        return new RunDirectoryLock(dir, stream, previous != null && previous.Pid != me.Pid ? previous : null);
    }

    static StorageException Held(string dir, Owner? owner) => new(owner != null
        ? $"{dir} is in use by another run: {Describe(owner)}; two runs writing one output directory would mix their checkpoints and metrics: wait for it to finish, stop it, or set output.dir to another directory"
        : $"{dir} is in use by another run (its {OwnerFile} is not readable yet): wait for it to finish, stop it, or set output.dir to another directory");

    /// <summary>"pid 123 on host h, started 2026-01-02T03:04:05Z (engine train --config x.toml)".</summary>
    public static string Describe(Owner o) =>
        $"pid {o.Pid} on host {o.Host}, started {o.Started.ToUniversalTime().ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture)} ({ErrorText.OneLine(o.Command, 200)})";

    /// <summary>The holder recorded in <paramref name="dir"/>, or null.</summary>
    public static Owner? ReadOwner(string path)
    {
        if (System.IO.Directory.Exists(path)) path = Path.Combine(path, OwnerFile);
        try { return File.Exists(path) ? JsonSerializer.Deserialize<Owner>(File.ReadAllText(path), Json) : null; }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException or NotSupportedException) { return null; }
    }

    static Owner Current()
    {
        return new Owner(Environment.ProcessId, Environment.MachineName, DateTime.UtcNow, string.Join(' ', Environment.GetCommandLineArgs().Select(Quote)), StartTicks(Environment.ProcessId));
    }

    static string Quote(string a) => a.Length > 0 && !a.Any(c => char.IsWhiteSpace(c) || c is '"' or '\'') ? a : $"'{a.Replace("'", "'\\''", StringComparison.Ordinal)}'";

    /// <summary>A process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid, it tells a live
    /// holder from a new process that reuses its number. -1 when unknown.</summary>
    static long StartTicks(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[19], CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or ArgumentOutOfRangeException or IndexOutOfRangeException) { return -1; }
    }

    /// <summary>Whether the holder is a live process (on another host it cannot be checked: taken as alive).</summary>
    static bool IsAlive(Owner o)
    {
        if (o.Host != Environment.MachineName) return true;
        long ticks = StartTicks(o.Pid);
        return ticks >= 0 && (o.ProcessStart < 0 || ticks == o.ProcessStart);
    }

    public void Dispose()
    {
        if (released) return;
        released = true;
        try { File.Delete(Path.Combine(Directory, OwnerFile)); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }   // a full or read-only disk: the flock below still goes
        handle?.Dispose();
    }
}
