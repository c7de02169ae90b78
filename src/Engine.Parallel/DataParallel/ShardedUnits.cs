using System.Diagnostics;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Core.Distributed;

namespace Engine.Parallel;

/// <summary>
/// The parameter side of ZeRO-3 (PyTorch FSDP, DeepSpeed stage 3) over a store laid out one bucket per unit
/// (<see cref="ShardLayout.UnitSpecs"/>): each rank keeps only its slices of the fp32 master weights (<see cref="Master"/>,
/// compact like the AdamW moments), and a unit's weights exist whole only while the model uses the unit, in a buffer
/// of the backend's working dtype (<see cref="IBackend.ActivationDType"/>: bf16 on a GPU, fp32 on the CPU) that the
/// store's parameters are views of. The model calls the store's hooks (<see cref="IUnitHooks"/>) around each use:
/// <list type="bullet">
/// <item><b>Gather</b> before a unit's forward and again before its backward: the buffer takes its elements back, this
/// rank's master slice is written into its place (rounded to the working dtype) and an in-place all-gather fills the
/// rest. After the use the elements are given back (<see cref="TensorStorage.Evict"/>): the tape keeps the parameter
/// tensors, not their memory. A recomputed block (full recompute) runs inside its backward's gather.</item>
/// <item><b>Prefetch</b>: when a unit's use begins, the next unit's all-gather is issued without waiting, so it runs
/// behind this unit's compute — the next unit of the forward during forward, the previous during backward. The order is
/// the model's own, learned from the first backward (the reverse of the units it met); before that, store order. A
/// prefetched unit that is not used next is freed.</item>
/// <item><b>Reshard after forward</b>, except the forward's last unit while recording: its backward comes next, so it
/// stays gathered (as FSDP keeps the root's parameters).</item>
/// </list>
/// The gathers are collectives: every rank runs the same passes, so they are issued in the same order everywhere. The
/// gradients are <see cref="DataParallel"/>'s: reduce-scattered per unit as backward completes it.
/// </summary>
public sealed class ShardedUnits : IUnitHooks, IDisposable
{
    readonly ParameterStore store;
    readonly ICommunicator comm;
    readonly ShardLayout layout;
    readonly Tensor[] working;
    readonly ICommWork?[] inFlight;
    readonly int[] holds;
    readonly List<int> backwardSeen = new();
    int[] order = [];
    bool inBackward;
    int forwardPos, backwardPos, prefetched = -1, keptLast = -1;

    /// <summary>Takes this rank's slices of <paramref name="store"/>'s master weights and rebinds its parameters to the
    /// unit buffers (the flat master and gradient buffers are freed); the store's hooks become this object.</summary>
    public ShardedUnits(ParameterStore store, ICommunicator comm, ShardLayout layout)
    {
        if (layout.Buckets.Count != store.Units.Count || layout.Stage != 3)
            throw new ArgumentException($"ZeRO-3 needs one bucket per unit: {layout.Buckets.Count} buckets, {store.Units.Count} units (lay the store out with ShardLayout.UnitSpecs)");
        this.store = store; this.comm = comm; this.layout = layout;
        var be = store.Backend;
        Master = be.Zeros([checked((int)layout.OwnedElements)]).Keep();
        foreach (var s in layout.Owned) be.Copy(store.Master.Range(s.Start, s.Length), Master.Range(s.Compact, s.Length));
        WorkingDType = be.ActivationDType;
        // one unit's buffer at a time: each gives its elements back before the next takes any
        working = layout.Buckets.Select(b =>
        {
            var w = be.Empty([checked((int)b.Length)], WorkingDType).Keep();
            w.Storage.Evict();
            return w;
        }).ToArray();
        inFlight = new ICommWork?[working.Length];
        holds = new int[working.Length];
        var unitOf = new int[store.Count];
        foreach (var b in layout.Buckets)
            for (int i = b.FirstParam; i <= b.LastParam; i++) unitOf[i] = b.Index;
        store.Rebind((i, slot) =>
        {
            var b = layout.Buckets[unitOf[i]];
            return working[b.Index].Slice(slot.Offset - b.Start, slot.Shape);
        });
        store.Hooks = this;
    }

    /// <summary>This rank's slices of the fp32 master weights, compact: owned slice s at element s.Compact.</summary>
    public Tensor Master { get; }

    /// <summary>The dtype the gathered weights are held and sent in.</summary>
    public DType WorkingDType { get; }

    /// <summary>All-gathers issued, their payload (elements of the gathered units × the working dtype's size) and the
    /// time the compute thread spent waiting for them (communication not hidden behind compute), since the last
    /// <see cref="ResetStats"/>.</summary>
    public long Gathers { get; private set; }
    public long GatheredBytes { get; private set; }
    public double ExposedWaitSeconds { get; private set; }

    public void ResetStats() { Gathers = 0; GatheredBytes = 0; ExposedWaitSeconds = 0; }

    /// <summary>Units whose weights are gathered (or being gathered) now.</summary>
    public int GatheredUnits => working.Count(w => w.Storage.IsResident);

    /// <summary>Whether unit <paramref name="unit"/>'s weights are gathered or their all-gather is in flight.</summary>
    public bool IsGathered(int unit) => Resident(unit);

    /// <summary>Elements of the largest unit (the memory one gathered unit takes, in the working dtype).</summary>
    public long LargestUnitElements => layout.Buckets.Max(b => b.Length);

    IBackend Be => store.Backend;

    bool Resident(int u) => working[u].Storage.IsResident;

    void Issue(int u)
    {
        var w = working[u];
        w.Storage.Restore();
        var b = layout.Buckets[u];
        long share = b.Length / comm.WorldSize;
        var mine = w.Range(comm.Rank * share, share);
        Be.Copy(Master.Range(layout.Owned[u].Compact, share), mine);
        inFlight[u] = comm.AllGather(mine, w);
        Gathers++;
        GatheredBytes += b.Length * WorkingDType.Size();
    }

    void Ensure(int u)
    {
        if (!Resident(u)) Issue(u);
        if (inFlight[u] is not { } work) return;
        long t0 = Stopwatch.GetTimestamp();
        work.Wait();
        ExposedWaitSeconds += Stopwatch.GetElapsedTime(t0).TotalSeconds;
        inFlight[u] = null;
    }

    void Free(int u)
    {
        if (inFlight[u] is { } work)
        {
            work.Wait();   // the collective still writes the buffer
            inFlight[u] = null;
        }
        working[u].Storage.Evict();
        if (prefetched == u) prefetched = -1;
        if (keptLast == u) keptLast = -1;
    }

    void Prefetch(int next)
    {
        // a unit prefetched for a use that did not come (the order changed, or the first pass guessed) is not kept
        if (prefetched >= 0 && prefetched != next && holds[prefetched] == 0 && prefetched != keptLast) Free(prefetched);
        prefetched = -1;
        if (next < 0 || Resident(next)) return;
        Issue(next);
        prefetched = next;
    }

    /// <summary>A forward after a backward: the backward pass is over (the first one teaches the order).</summary>
    void EndBackward()
    {
        if (!inBackward) return;
        inBackward = false;
        if (order.Length == 0 && backwardSeen.Count > 0) order = Enumerable.Reverse(backwardSeen).ToArray();
        backwardSeen.Clear();
        forwardPos = 0;
    }

    int NextForward(int u)
    {
        if (order.Length == 0) return u + 1 < working.Length ? u + 1 : -1;
        int pos = forwardPos < order.Length && order[forwardPos] == u ? forwardPos : Array.IndexOf(order, u);
        forwardPos = pos + 1;
        return pos >= 0 && pos + 1 < order.Length ? order[pos + 1] : -1;
    }

    int NextBackward(int u)
    {
        if (order.Length == 0) return u - 1;
        int pos = backwardPos - 1 >= 0 && backwardPos - 1 < order.Length && order[backwardPos - 1] == u ? backwardPos - 1 : Array.LastIndexOf(order, u);
        backwardPos = pos;
        return pos > 0 ? order[pos - 1] : -1;
    }

    public void BeforeForward(int unit)
    {
        EndBackward();
        holds[unit]++;
        Ensure(unit);
        Prefetch(NextForward(unit));
    }

    public void AfterForward(int unit)
    {
        if (--holds[unit] > 0) return;
        // recording a forward whose last unit this is: its backward is next, keep it gathered
        if (Grad.IsRecording && order.Length > 0 && unit == order[^1] && forwardPos == order.Length) { keptLast = unit; return; }
        if (unit != prefetched) Free(unit);
    }

    public void BeforeBackward(int unit)
    {
        if (!inBackward)
        {
            inBackward = true;
            backwardPos = order.Length;
        }
        if (order.Length == 0) backwardSeen.Add(unit);
        holds[unit]++;
        Ensure(unit);
        if (keptLast == unit) keptLast = -1;
        Prefetch(NextBackward(unit));
    }

    public void AfterBackward(int unit)
    {
        if (--holds[unit] == 0 && unit != prefetched) Free(unit);
    }

    /// <summary>End of a step's passes: every unit not in use is freed (prefetches, the kept last unit).</summary>
    public void FreeIdle()
    {
        EndBackward();
        for (int u = 0; u < working.Length; u++)
            if (holds[u] == 0 && Resident(u)) Free(u);
        prefetched = keptLast = -1;
    }

    /// <summary>
    /// Every unit gathered until the returned handle is disposed (FSDP's summon_full_params): reading or saving whole
    /// parameters outside a forward. Collective: every rank calls it at the same point.
    /// </summary>
    public IDisposable GatherAll()
    {
        for (int u = 0; u < working.Length; u++) { holds[u]++; if (!Resident(u)) Issue(u); }
        for (int u = 0; u < working.Length; u++) Ensure(u);
        return new Release(this);
    }

    sealed class Release(ShardedUnits owner) : IDisposable
    {
        bool done;
        public void Dispose()
        {
            if (done) return;
            done = true;
            for (int u = 0; u < owner.working.Length; u++)
                if (--owner.holds[u] == 0) owner.Free(u);
        }
    }

    public void Dispose()
    {
        try
        {
            foreach (var w in inFlight) w?.Wait();
        }
        finally
        {
            Array.Clear(inFlight);
            if (ReferenceEquals(store.Hooks, this)) store.Hooks = null;
            foreach (var w in working) w.Dispose();
            Master.Dispose();
        }
    }
}
