namespace Engine.Data.Prepare;

/// <summary>
/// The ranks of one prepare run. Data moves between ranks only as files in the shared work folder; the group only
/// says which tasks are this rank's (task t belongs to rank t mod size) and waits at the end of each phase until every
/// task of it is finished, agreeing on failure so no rank waits forever for one that failed.
/// </summary>
public interface IPrepareGroup
{
    int Rank { get; }
    int Size { get; }

    /// <summary>Waits for every rank; false when any rank passed <paramref name="ok"/> = false. <paramref name="phaseDone"/> says whether every task of the phase has its manifest.</summary>
    bool Barrier(bool ok, Func<bool> phaseDone);
}

/// <summary>One process does every task.</summary>
public sealed class SingleGroup : IPrepareGroup
{
    public static readonly SingleGroup Instance = new();
    public int Rank => 0;
    public int Size => 1;
    public bool Barrier(bool ok, Func<bool> phaseDone) => ok;
}

/// <summary>
/// Ranks that share nothing but the work folder (<c>engine prepare --shard i/N</c> under srun, or separate jobs): the
/// barrier polls the manifests until every task of the phase is finished, and stops when a rank records a failure
/// (<see cref="WorkDir.MarkFailed"/>) after this one started. A rank killed without a trace (kill -9, a lost node)
/// leaves the others waiting: run under srun --kill-on-bad-exit, or use MPI ranks, which abort together.
/// </summary>
public sealed class FileGroup(WorkDir work, int rank, int size, TimeSpan poll) : IPrepareGroup
{
    readonly DateTime _started = DateTime.UtcNow;
    public int Rank => rank;
    public int Size => size;

    public bool Barrier(bool ok, Func<bool> phaseDone)
    {
        if (!ok) { work.MarkFailed(rank, "failed"); return false; }
        while (!phaseDone())
        {
            if (work.FailureSince(_started) is { } f) throw new InvalidOperationException($"another rank failed ({ErrorText.OneLine(f)})");
            Thread.Sleep(poll);
        }
        return true;
    }
}
