using System.Globalization;
using Engine.Core.Distributed;
using Engine.Parallel.Store;

namespace Engine.Parallel;

/// <summary>
/// One per rank (process, or thread in a thread world), shared by the world communicator and its splits. Every
/// <see cref="CommOptions.HeartbeatInterval"/> it
/// <list type="number">
/// <item>publishes this rank's heartbeat per communicator to the store — <c>hb/{id}/{rank}</c> = "last collective
/// number | its name | unix ms | job rank" (the store stamps its age with its own clock);</item>
/// <item>reads the job-wide <c>fault</c> key: a fault reported by another rank stops every communicator here;</item>
/// <item>checks the oldest pending operation of each communicator: past <see cref="CommOptions.Timeout"/> it names the
/// rank(s) at fault from their heartbeats ("rank 1 stopped sending heartbeats 12 s ago (dead or stopped)", "rank 1 is
/// alive but has not reached collective #57 all_reduce (it is at #56 all_reduce)"), writes that to the store so the
/// other ranks stop too, and fails the operation with it. It does not wait for the timeout when a peer of the pending
/// operation stopped beating (heartbeat older than <see cref="CommOptions.StaleAfter"/>: the process is stopped or
/// its host gone).</item>
/// </list>
/// Deaths are faster still: this rank joins the TCP store as its job rank (<see cref="TcpStoreClient.Join"/>) and
/// leaves it when disposed; a connection that closes without leaving is a dead rank, which the store reports under the
/// fault key at once, so every rank stops at its next heartbeat (about a second after a kill -9). A rank that loses the
/// store itself while an operation waits stops too: rank 0, which hosts it, is gone.
/// With <see cref="CommOptions.ExitOnFault"/> a rank that does not end by itself within the grace period exits with
/// <see cref="CommOptions.FaultExitCode"/> after printing the fault (a rank blocked in its own compute never reaches
/// its next collective to learn of it).
/// </summary>
public sealed class CommWatchdog : IDisposable
{
    public const string FaultKey = "fault";

    readonly IStore? store;
    readonly CommOptions options;
    readonly Lock gate = new();
    readonly List<Communicator> comms = [];
    readonly Thread thread;
    readonly ManualResetEventSlim stop = new(false);
    string? fault;
    int exitScheduled;

    public CommWatchdog(IStore? store, int jobRank, CommOptions options)
    {
        this.store = store; this.options = options; JobRank = jobRank;
        if (store is TcpStoreClient tcp)
        {
            try { tcp.Join(jobRank); }
            catch (CommException) { }   // the store is gone already: diagnosed on the first pending operation
        }
        thread = new Thread(Loop) { IsBackground = true, Name = $"comm-watchdog-rank{jobRank}" };
        thread.Start();
    }

    public int JobRank { get; }
    public CommOptions Options => options;
    public IStore? Store => store;

    /// <summary>The fault that stopped this rank (its own diagnosis or another rank's report), or null.</summary>
    public string? Fault
    {
        get { lock (gate) return fault; }
    }

    public void Register(Communicator c)
    {
        lock (gate) comms.Add(c);
        if (Fault is { } f) c.AbortLocal(f);
    }

    public void Unregister(Communicator c)
    {
        lock (gate) comms.Remove(c);
    }

    /// <summary>Reports a fault job-wide (first report wins in the store) and stops every communicator of this rank.</summary>
    public void Report(string message)
    {
        if (store is not null)
        {
            try
            {
                if (store.Add(FaultKey + "/count", 1) == 1) store.SetString(FaultKey, message);
            }
            catch (CommException) { }   // the store is gone (rank 0 died): the local stop below still happens
        }
        StopAll(message);
    }

    void StopAll(string message)
    {
        Communicator[] targets;
        lock (gate)
        {
            fault ??= message;
            targets = [.. comms];
        }
        foreach (var c in targets) c.AbortLocal(message);
        if (options.ExitOnFault && Interlocked.Exchange(ref exitScheduled, 1) == 0)
            new Thread(() =>
            {
                Thread.Sleep(options.ExitGrace);
                options.Write($"error: {message}");
                Environment.Exit(CommOptions.FaultExitCode);
            })
            { IsBackground = true, Name = "comm-fault-exit" }.Start();
    }

    void Loop()
    {
        do
        {
            try { Tick(); }
            catch (CommException e) when (store is TcpStoreClient && Fault is null && AnyPending() && !stop.IsSet)
            {
                // the store lives in rank 0: lost while a collective waits (not at the end of a job) means rank 0 is gone
                Report($"lost {store.Describe} while a collective waited ({e.Message}): rank 0, which hosts it, died or its host is unreachable; stopping the job");
            }
            catch (Exception e) when (e is CommException or ObjectDisposedException) { }   // the store is unreachable: diagnosed on timeout
        }
        while (!stop.Wait(options.HeartbeatInterval));
    }

    /// <summary>One round: heartbeats, remote faults, timeouts. Public so tests can drive it.</summary>
    public void Tick()
    {
        Communicator[] targets;
        lock (gate) targets = [.. comms];
        if (Fault is null)
            foreach (var c in targets)
            {
                if (c.PollHealth() is { } broken)
                {
                    Report(broken);
                    return;
                }
                var pending = c.OldestPending();
                if (pending?.RunningFor is { } running && running > options.Timeout)
                {
                    Report(Diagnose(c, pending.Info, running));
                    return;
                }
                if (pending?.RunningFor is { } waiting && waiting > options.StaleAfter && store is not null && StalePeer(c, pending.Info))
                {
                    Report(Diagnose(c, pending.Info, waiting, "waited"));
                    return;
                }
            }
        if (store is null) return;
        foreach (var c in targets)
        {
            var (seq, name) = c.Progress;
            long unixMs = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
            store.SetString(HeartbeatKey(c.Id, c.Rank), $"{seq}|{name}|{unixMs}|{JobRank}");
        }
        if (Fault is null && store.TryGetString(FaultKey) is { } remote) StopAll(remote);
    }

    public static string HeartbeatKey(string commId, int rank) => $"hb/{commId}/{rank}";

    bool AnyPending()
    {
        Communicator[] targets;
        lock (gate) targets = [.. comms];
        return targets.Any(c => c.OldestPending() != null);
    }

    /// <summary>Whether a peer of <paramref name="op"/> has a heartbeat older than <see cref="CommOptions.StaleAfter"/>.</summary>
    bool StalePeer(Communicator c, OpInfo op)
    {
        var peers = op.IsCollective ? Enumerable.Range(0, c.WorldSize).Where(r => r != c.Rank) : [op.Peer];
        foreach (int r in peers)
            if (store!.TryGet(HeartbeatKey(c.Id, r)) is { } hb && hb.Age > options.StaleAfter) return true;
        return false;
    }

    /// <summary>Names the rank(s) at fault for <paramref name="op"/> of <paramref name="c"/>, from their heartbeats.</summary>
    public string Diagnose(Communicator c, OpInfo op, TimeSpan running, string verb = "timed out after")
    {
        string where = c.Id == "world" ? $"rank {c.GlobalRank(c.Rank)}" : $"rank {c.GlobalRank(c.Rank)} (communicator {c.Id})";
        string head = $"{op.Describe(c.GlobalRank)} {verb} {Seconds(running)} on {where}";
        if (store is null) return head + " (no heartbeat store: the rank at fault is unknown)";
        var culprits = new List<string>();
        var peers = op.IsCollective ? Enumerable.Range(0, c.WorldSize).Where(r => r != c.Rank) : [op.Peer];
        foreach (int r in peers)
        {
            int job = c.GlobalRank(r);
            StoreEntry? hb;
            try { hb = store.TryGet(HeartbeatKey(c.Id, r)); }
            catch (CommException e)
            {
                return $"{head}: {store.Describe} is unreachable ({e.Message}): rank 0, which hosts it, is dead or stopped";
            }
            if (hb is not { } entry)
            {
                culprits.Add($"rank {job} never sent a heartbeat (it did not start, or cannot reach {store.Describe})");
                continue;
            }
            if (entry.Age > options.StaleAfter)
            {
                culprits.Add($"rank {job} stopped sending heartbeats {Seconds(entry.Age)} ago (dead or stopped)");
                continue;
            }
            var (seq, name) = Parse(entry.Value);
            if (op.IsCollective && seq < op.Seq)
                culprits.Add($"rank {job} is alive but has not reached {op.Describe(c.GlobalRank)} (it is at #{seq}{(name.Length > 0 ? " " + name : "")})");
            else if (!op.IsCollective)
                culprits.Add($"rank {job} is alive (at collective #{seq}) but has not posted the matching {(op.Name == "send" ? "recv" : "send")}");
        }
        if (culprits.Count == 0)
            culprits.Add("every rank reached it and is alive: the communication library or the network failed");
        return $"{head}: {string.Join("; ", culprits)}";
    }

    static (long Seq, string Name) Parse(byte[] value)
    {
        var parts = System.Text.Encoding.UTF8.GetString(value).Split('|');
        return (parts.Length > 0 && long.TryParse(parts[0], CultureInfo.InvariantCulture, out long s) ? s : -1, parts.Length > 1 ? parts[1] : "");
    }

    static string Seconds(TimeSpan t) =>
        t.TotalSeconds >= 10 ? $"{t.TotalSeconds:F0} s" : $"{t.TotalSeconds.ToString("0.#", CultureInfo.InvariantCulture)} s";

    public void Dispose()
    {
        stop.Set();
        if (Thread.CurrentThread != thread) thread.Join(TimeSpan.FromSeconds(10));
        if (store is TcpStoreClient tcp)
        {
            // ending normally: the connection closing next is no death
            try { tcp.Leave(); }
            catch (CommException) { }   // the store (rank 0) is gone already
        }
    }
}
