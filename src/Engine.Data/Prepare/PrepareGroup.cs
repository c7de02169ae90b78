namespace Engine.Data.Prepare;

/// <summary>A prepare run that cannot go on as asked (a work folder of another config, a phase run before the one it needs, another rank failed): one line for the user.</summary>
public sealed class PrepareException(string message) : Exception(message);

/// <summary>
/// The ranks of one prepare run. Data moves between ranks only as files in the shared work folder; the group only
/// says which tasks are this rank's (task t belongs to rank t mod size) and waits at the end of each phase until every
/// task of it is finished, agreeing on failure so no rank waits forever for one that failed.
/// </summary>
public interface IPrepareGroup
{
    int Rank { get; }
    int Size { get; }

    /// <summary>Waits for every rank at the end of a phase; false when any rank failed (this one: <paramref name="ok"/> = false).</summary>
    bool Barrier(bool ok, PhaseState phase);
}

/// <summary>What a rank waiting at the end of a phase can see in the work folder.</summary>
public sealed class PhaseState(Func<bool> done, Func<string?> failure)
{
    /// <summary>Every task of the phase has its manifest.</summary>
    public bool Done => done();

    /// <summary>A failure some rank recorded during this run, or null.</summary>
    public string? Failure => failure();

    /// <summary>Polls until the phase is done (null) or a rank recorded a failure (its text). Phases can take hours: no time limit.</summary>
    public string? Wait(TimeSpan poll)
    {
        while (!Done)
        {
            if (Failure is { } f) return f;
            Thread.Sleep(poll);
        }
        return null;
    }
}

/// <summary>One process does every task.</summary>
public sealed class SingleGroup : IPrepareGroup
{
    public static readonly SingleGroup Instance = new();
    public int Rank => 0;
    public int Size => 1;
    public bool Barrier(bool ok, PhaseState phase) => ok;
}

/// <summary>
/// Ranks that share nothing but the work folder (<c>engine prepare --shard i/N</c> under srun, or separate jobs): the
/// barrier polls the manifests until every task of the phase is finished, and stops when a rank records a failure
/// after this run started. A rank killed without a trace (kill -9, a lost node) leaves the others waiting: run under
/// <c>srun --kill-on-bad-exit=1</c>, or use MPI ranks (<c>--mpi=pmix</c>), which stop together.
/// </summary>
public sealed class FileGroup(int rank, int size) : IPrepareGroup
{
    public static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(250);
    public int Rank => rank;
    public int Size => size;
    public bool Barrier(bool ok, PhaseState phase) => ok && phase.Wait(Poll) == null;
}
