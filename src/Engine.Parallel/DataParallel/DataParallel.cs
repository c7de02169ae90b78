using Engine.Core;
using Engine.Core.Autograd;
using Engine.Core.Distributed;

namespace Engine.Parallel;

/// <summary>
/// Data parallelism and ZeRO-1/2/3 over a model's flat <see cref="ParameterStore"/> (DDP's bucketed all-reduce,
/// DeepSpeed's partitioned optimizer): every rank runs the same model on its own micro-batches and the gradients are
/// summed across ranks (the loss is already divided by the global count of valid targets, so a sum — not an average —
/// makes the step equal to the single-process step on the same global batch).
/// <list type="bullet">
/// <item><b>Buckets during backward.</b> As an <see cref="IBackwardObserver"/> it knows, from the tape, the last node
/// that contributes to each parameter's gradient; when every trainable parameter of a bucket is complete, the bucket's
/// reduction is launched (asynchronously: the communicator overlaps it with the rest of backward). Stage 0/1 reduce
/// only in the last micro-batch of a step (earlier ones accumulate locally, DDP's no_sync); stage 2 reduces every
/// micro-batch (DeepSpeed), so gradients never accumulate at full size.</item>
/// <item><b>Stage 0</b>: all-reduce; every rank updates everything. <b>Stage 1</b>: all-reduce; each rank updates its
/// slices (<see cref="ShardLayout"/>) with 1/N of the AdamW moments, then the master weights are all-gathered.
/// <b>Stage 2</b>: the store's gradient buffer is freed; gradients live in bucket buffers (a small pool, at most
/// <see cref="MaxInFlight"/> reductions in flight) that are reduce-scattered into the rank's compact gradient shard,
/// then as stage 1.</item>
/// <item><b>Stage 3</b> (FSDP): as stage 2, and the weights too are sharded — each rank keeps its slices of the fp32
/// master (<see cref="MasterBuffer"/>), a unit's weights are all-gathered around each use and freed after
/// (<see cref="ShardedUnits"/>, the store's hooks), the store is laid out one bucket per unit, so a unit's gradients
/// are one reduce-scatter launched as soon as backward completes the unit, and AdamW updates the master slices in
/// place: there is nothing to gather after the step.</item>
/// </list>
/// Call order per step: <see cref="BeginStep"/>, then per micro-batch <see cref="BeginMicroBatch"/> → forward →
/// Grad.Backward(loss, observer: this) → <see cref="EndMicroBatch"/>, then <see cref="FinishGradients"/>, the
/// optimizer, <see cref="GatherParameters"/>. Every rank must run the same number of micro-batches.
/// </summary>
public sealed class DataParallel : IBackwardObserver, IGradientSource, IDisposable
{
    /// <summary>Bucket reductions in flight before a new bucket buffer waits for the oldest (stage 2).</summary>
    public const int MaxInFlight = 2;

    readonly Dictionary<Tensor, int> paramIndex = new(ReferenceEqualityComparer.Instance);
    readonly int[] bucketOf;
    readonly bool[] trainableBucket;
    readonly Queue<(ICommWork Work, Action? Then)> pending = new();
    readonly Dictionary<long, Stack<Tensor>> pool = new();
    readonly Tensor?[] live;
    readonly bool[] launched, reducedThisStep;
    readonly int[] remaining;
    readonly Dictionary<int, List<int>> finishing = new();
    int layoutVersion;
    bool reducing;
    int microBatch;

    DataParallel(ParameterStore store, ICommunicator comm, ShardLayout layout)
    {
        Store = store; Comm = comm; Layout = layout;
        layoutVersion = store.Version;
        bucketOf = new int[store.Count];
        foreach (var b in layout.Buckets)
            for (int i = b.FirstParam; i <= b.LastParam; i++) bucketOf[i] = b.Index;
        for (int i = 0; i < store.Count; i++) paramIndex[store.Slots[i].Tensor] = i;
        trainableBucket = new bool[layout.Buckets.Count];
        live = new Tensor?[layout.Buckets.Count];
        launched = new bool[layout.Buckets.Count];
        reducedThisStep = new bool[layout.Buckets.Count];
        remaining = new int[layout.Buckets.Count];
        // a store with nothing to train (ZeRO-3's frozen LoRA base) needs no gradient shard, and keeps the gradient
        // source it was given (asking it for a gradient is the error)
        if (Stage >= 2 && store.Slots.Any(s => s.Tensor.RequiresGrad))
            ShardGrads = store.Backend.Zeros([checked((int)layout.OwnedElements)]).Keep();
        if (Stage >= 2 && store.Grads != null) store.DetachGradients(this);
        if (Stage == 3)
        {
            Units = new ShardedUnits(store, comm, layout);
            layoutVersion = store.Version;
            paramIndex.Clear();   // the parameters are views of the unit buffers now
            for (int i = 0; i < store.Count; i++) paramIndex[store.Slots[i].Tensor] = i;
        }
    }

    /// <summary>
    /// Sets up data parallelism for the store: in a world of more than one rank the store is laid out anew with
    /// bucket boundaries (look parameters up by name afterwards; at stage 3 one bucket per unit of the model, whatever
    /// the bucket size) and, at stage 2 and 3, its gradient buffer is replaced by buckets; at stage 3 the parameters
    /// become views of gathered unit buffers (<see cref="ShardedUnits"/>). Every rank must call this with the same
    /// store shapes and options.
    /// </summary>
    public static DataParallel Create(ParameterStore store, ICommunicator comm, int zero = 0, double bucketMb = 25)
    {
        if (zero is < 0 or > 3) throw new ArgumentOutOfRangeException(nameof(zero), $"ZeRO stage must be 0, 1, 2 or 3 (got {zero})");
        if (!(bucketMb > 0)) throw new ArgumentOutOfRangeException(nameof(bucketMb), $"bucket size must be positive (got {bucketMb} MB)");
        if (comm.Backend.Name != store.Backend.Name)
            throw new ArgumentException($"the communicator ({comm.Kind}) takes {comm.Backend.Name} tensors but the model is on {store.Backend.Name}");
        if (comm.WorldSize > 1 && zero == 3) store.Relayout(ShardLayout.UnitSpecs(store, comm.WorldSize), ShardLayout.Unit(comm.WorldSize));
        else if (comm.WorldSize > 1)
        {
            long bucketElements = Math.Max(1, (long)(bucketMb * 1024 * 1024 / sizeof(float)));
            store.Relayout(ShardLayout.BucketedSpecs(store.Specs(), bucketElements, comm.WorldSize), ShardLayout.Unit(comm.WorldSize));
        }
        return new DataParallel(store, comm, ShardLayout.For(store, comm.WorldSize, comm.Rank, zero));
    }

    /// <summary>A world of one: no communication, the store as it is.</summary>
    public static DataParallel Local(ParameterStore store) => new(store, new SingleRankCommunicator(store.Backend), ShardLayout.For(store, 1, 0, 0));

    public ParameterStore Store { get; }
    public ICommunicator Comm { get; }
    public ShardLayout Layout { get; }
    public int Stage => Layout.Stage;
    IBackend Be => Store.Backend;

    /// <summary>Stage 2 and 3: this rank's gradients, compact over its owned slices; null otherwise.</summary>
    public Tensor? ShardGrads { get; }

    /// <summary>Stage 3: the sharded weights (this rank's master slices, the gathered units); null otherwise.</summary>
    public ShardedUnits? Units { get; }

    /// <summary>A frozen store sharded alongside this one (ZeRO-3 with LoRA: the base model, gathered unit by unit while
    /// the adapters train): its idle units are freed with this one's at the end of each step's gradients, and it is
    /// disposed with this one.</summary>
    public DataParallel? Alongside { get; set; }

    /// <summary>The buffer the optimizer reads gradients from, and the offset of an owned flat element in it.</summary>
    public Tensor GradientBuffer => ShardGrads ?? Store.Grads ?? throw new InvalidOperationException("the store has no gradient buffer");
    public long GradientOffset(OwnedSlice s) => Stage >= 2 ? s.Compact : s.Start;

    /// <summary>The buffer the optimizer updates master weights in (stage 3: this rank's compact slices; otherwise the
    /// store's flat master), and the offset of an owned flat element in it.</summary>
    public Tensor MasterBuffer => Units?.Master ?? Store.Master;
    public long MasterOffset(OwnedSlice s) => Stage == 3 ? s.Compact : s.Start;

    /// <summary>The master weights of an owned slice.</summary>
    public Tensor OwnedMaster(OwnedSlice s) => MasterBuffer.Range(MasterOffset(s), s.Length);

    /// <summary>
    /// Every unit's weights gathered until the handle is disposed (stage 3; otherwise they always are): to read or
    /// save whole parameters outside a forward. Collective at stage 3.
    /// </summary>
    public IDisposable Gathered() => Units?.GatherAll() ?? new Scope(null);

    /// <summary>
    /// The gradient of <paramref name="name"/> this rank holds after <see cref="FinishGradients"/>: the whole gradient
    /// at stage 0/1; at stage 3 its owned slice of the parameter's unit, which must hold that parameter alone (the tied
    /// embedding's copies on the first and last pipeline stage are summed slice by slice).
    /// </summary>
    public Tensor GradientOf(string name)
    {
        var slot = Store.Slot(name);
        if (Stage < 2) return Store.Grads?.Range(slot.Offset, slot.Numel) ?? throw new InvalidOperationException("the store has no gradient buffer");
        int i = Store.Slots.ToList().FindIndex(s => s.Name == name);
        var b = Layout.Buckets[bucketOf[i]];
        if (Stage != 3 || b.FirstParam != i || b.LastParam != i)
            throw new NotSupportedException($"{name}: its gradient is sharded with other parameters' (ZeRO-{Stage}); only ZeRO-3 gives it a bucket of its own");
        return OwnedGradient(Layout.Owned[b.Index]);
    }

    /// <summary>The ranges of <see cref="GradientBuffer"/> holding this rank's part of <paramref name="name"/>'s gradient
    /// (after <see cref="FinishGradients"/>): the whole gradient at stage 0/1, its intersections with the owned slices at
    /// stage 2/3.</summary>
    public List<Tensor> OwnedGradientRanges(string name)
    {
        var slot = Store.Slot(name);
        if (Stage < 2) return [Store.Grads?.Range(slot.Offset, slot.Numel) ?? throw new InvalidOperationException("the store has no gradient buffer")];
        var list = new List<Tensor>();
        foreach (var s in Layout.Owned)
        {
            long lo = Math.Max(slot.Offset, s.Start), hi = Math.Min(slot.Offset + slot.Numel, s.Start + s.Length);
            if (lo < hi) list.Add(OwnedGradient(s).Range(lo - s.Start, hi - lo));
        }
        return list;
    }

    /// <summary>The gradient of an owned slice (after <see cref="FinishGradients"/>).</summary>
    public Tensor OwnedGradient(OwnedSlice s) => GradientBuffer.Range(GradientOffset(s), s.Length);

    void CheckLayout()
    {
        if (Store.Version != layoutVersion) throw new InvalidOperationException("the parameter store was laid out anew (vocabulary resize?) after data parallelism was set up: set it up again");
    }

    /// <summary>Zeros the gradients for a new step and marks which buckets hold trainable parameters.</summary>
    public void BeginStep()
    {
        CheckLayout();
        WaitAll();
        foreach (var b in Layout.Buckets)
        {
            bool any = false;
            for (int i = b.FirstParam; i <= b.LastParam && !any; i++) any = Store.Slots[i].Tensor.RequiresGrad;
            trainableBucket[b.Index] = any;
            reducedThisStep[b.Index] = false;
        }
        if (ShardGrads != null) Be.Fill(ShardGrads, 0f);
        else Store.ZeroGrads();
        microBatch = 0;
    }

    /// <summary>Before a micro-batch's forward: <paramref name="last"/> marks the step's last local micro-batch.</summary>
    public void BeginMicroBatch(bool last)
    {
        reducing = Comm.WorldSize > 1 && (Stage >= 2 || last);
        Array.Clear(launched);
    }

    /// <summary>After the micro-batch's backward: launches any bucket backward did not complete (same order on every
    /// rank), so every rank issues the same collectives.</summary>
    public void EndMicroBatch()
    {
        if (reducing)
            foreach (var b in Layout.Buckets)
                if (trainableBucket[b.Index] && !launched[b.Index]) Launch(b);
        reducing = false;
        microBatch++;
    }

    /// <summary>Waits for every reduction: afterwards <see cref="GradientBuffer"/> holds the summed gradients of the
    /// owned slices (stage 0/1: all of them).</summary>
    public void FinishGradients()
    {
        WaitAll();
        if (Stage >= 2)
            foreach (var b in Layout.Buckets)
                if (live[b.Index] is { } stray) { Detach(b); Return(stray); }
        Units?.FreeIdle();
        Alongside?.Units?.FreeIdle();
    }

    /// <summary>Stage 1/2: every rank's updated slices of the master weights to every rank (in-place all-gather per
    /// bucket of trainable parameters).</summary>
    public void GatherParameters()
    {
        if (Stage is 0 or 3) return;
        foreach (var s in Layout.Owned)
        {
            var b = Layout.Buckets[s.Bucket];
            if (!trainableBucket[b.Index]) continue;
            pending.Enqueue((Comm.AllGather(Store.Master.Range(s.Start, s.Length), Store.Master.Range(b.Start, b.Length)), null));
        }
        WaitAll();
    }

    // ---- backward observer ----------------------------------------------------------------------------------------

    public void BeforeBackward(IReadOnlyList<Node> nodes)
    {
        finishing.Clear();
        if (!reducing) return;
        CheckLayout();
        // the last node (in backward order: the smallest index) that reads each trainable parameter
        var lastNode = new Dictionary<int, int>();
        for (int n = 0; n < nodes.Count; n++)
            foreach (var t in nodes[n].Inputs)
                if (t.IsParameter && t.RequiresGrad && paramIndex.TryGetValue(t, out int p) && !lastNode.ContainsKey(p)) lastNode[p] = n;
        Array.Clear(remaining);
        foreach (var (p, n) in lastNode)
        {
            remaining[bucketOf[p]]++;
            if (!finishing.TryGetValue(n, out var list)) finishing[n] = list = new List<int>();
            list.Add(p);
        }
    }

    public void AfterNode(int index)
    {
        if (!reducing || !finishing.TryGetValue(index, out var done)) return;
        foreach (int p in done)
        {
            int b = bucketOf[p];
            if (--remaining[b] == 0 && trainableBucket[b] && !launched[b]) Launch(Layout.Buckets[b]);
        }
    }

    void Launch(GradBucket b)
    {
        launched[b.Index] = true;
        if (Stage < 2)
        {
            pending.Enqueue((Comm.AllReduce(Store.Grads!.Range(b.Start, b.Length)), null));
            return;
        }
        var buffer = live[b.Index] ?? Acquire(b);
        // the bucket is complete for this micro-batch: its buffer now belongs to the reduction in flight, and the next
        // micro-batch's backward must take a fresh one (it would otherwise add into a buffer being reduced)
        Detach(b);
        var slice = Layout.Owned[b.Index];
        var shard = ShardGrads!.Range(slice.Compact, slice.Length);
        if (!reducedThisStep[b.Index])
        {
            reducedThisStep[b.Index] = true;
            pending.Enqueue((Comm.ReduceScatter(buffer, shard), () => Return(buffer)));
        }
        else
        {
            var partial = Rent(slice.Length);
            pending.Enqueue((Comm.ReduceScatter(buffer, partial), () =>
            {
                Be.AddInPlace(shard, partial, 1f);
                Return(partial);
                Return(buffer);
            }
            ));
        }
    }

    // ---- stage 2: gradients in bucket buffers ---------------------------------------------------------------------

    public Tensor Acquire(Tensor parameter)
    {
        if (!paramIndex.TryGetValue(parameter, out int p)) throw new InvalidOperationException($"{parameter.Describe()} is not a parameter of this store");
        var b = Layout.Buckets[bucketOf[p]];
        if (live[b.Index] == null) Acquire(b);
        return parameter.Grad!;
    }

    Tensor Acquire(GradBucket b)
    {
        while (pending.Count >= MaxInFlight) WaitOldest();
        var buffer = Rent(b.Length);
        live[b.Index] = buffer;
        for (int i = b.FirstParam; i <= b.LastParam; i++)
        {
            var s = Store.Slots[i];
            s.Tensor.Grad = buffer.Slice(s.Offset - b.Start, s.Shape).Keep();
        }
        return buffer;
    }

    void Detach(GradBucket b)
    {
        for (int i = b.FirstParam; i <= b.LastParam; i++) Store.Slots[i].Tensor.Grad = null;
        live[b.Index] = null;
    }

    Tensor Rent(long length)
    {
        var t = pool.TryGetValue(length, out var stack) && stack.Count > 0 ? stack.Pop() : Be.Empty([checked((int)length)]).Keep();
        Be.Fill(t, 0f);
        return t;
    }

    void Return(Tensor t)
    {
        if (!pool.TryGetValue(t.Numel, out var stack)) pool[t.Numel] = stack = new Stack<Tensor>();
        stack.Push(t);
    }

    void WaitOldest()
    {
        var (work, then) = pending.Dequeue();
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        work.Wait();
        reductionWait += System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds;
        then?.Invoke();
    }

    double reductionWait;

    /// <summary>Seconds the calling (compute) thread spent waiting for collectives since <see cref="ResetWaits"/>: the
    /// gradient reductions and (stage 3) the units' all-gathers — communication that was not hidden behind compute.</summary>
    public double ExposedCommSeconds => reductionWait + (Units?.ExposedWaitSeconds ?? 0);

    public void ResetWaits()
    {
        reductionWait = 0;
        Units?.ResetStats();
    }

    void WaitAll()
    {
        while (pending.Count > 0) WaitOldest();
    }

    /// <summary>
    /// Full local gradients in the store's buffer until disposed, with no reduction (per-rank Fisher estimation):
    /// stage 2 attaches a temporary full buffer and detaches it again.
    /// </summary>
    public IDisposable WithLocalGradients()
    {
        CheckLayout();
        WaitAll();
        if (Stage == 3) throw new NotSupportedException("full per-rank gradients (EWC's Fisher estimate) are not available under ZeRO-3: use parallel.zero = 1 or 2");
        if (Stage != 2) return new Scope(null);
        Store.AttachGradients();
        return new Scope(() => Store.DetachGradients(this));
    }

    sealed class Scope(Action? end) : IDisposable
    {
        bool done;
        public void Dispose() { if (!done) { done = true; end?.Invoke(); } }
    }

    /// <summary>The most gradient memory this rank may hold (bytes): stage 0/1 the store's buffer; stage 2 the shard
    /// plus, per reduction in flight and the bucket being filled, one bucket buffer and one slice-sized partial.</summary>
    public long GradientBoundBytes => Stage < 2 ? Store.Capacity * 4
        : (Layout.OwnedElements + (MaxInFlight + 1) * Layout.Buckets.Max(b => b.Length + b.Length / Layout.WorldSize)) * 4;

    /// <summary>Bytes of gradient memory this rank holds: the store's buffer, or (stage 2) the shard plus pooled buckets.</summary>
    public long GradientBytes => (Store.Grads?.Numel ?? 0) * 4 + (ShardGrads?.Numel ?? 0) * 4 + pool.Values.Sum(s => s.Sum(t => t.Numel)) * 4;

    public void Dispose()
    {
        try { WaitAll(); }
        finally
        {
            foreach (var stack in pool.Values) foreach (var t in stack) t.Dispose();
            pool.Clear();
            Units?.Dispose();
            Alongside?.Dispose();
            if (ShardGrads != null)
            {
                ShardGrads.Dispose();
                // stage 3 leaves the store sharded: its weights went with the units (gather them before disposing)
                if (Stage == 2 && Store.Slots.Count > 0 && Store.Version == layoutVersion) Store.AttachGradients();
            }
        }
    }
}
