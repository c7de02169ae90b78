using Engine.Core;

namespace Engine.Parallel;

/// <summary>A gradient bucket: flat elements [Start, Start + Length) holding parameters FirstParam..LastParam (slot
/// indices) and the padding after them.</summary>
public readonly record struct GradBucket(int Index, long Start, long Length, int FirstParam, int LastParam);

/// <summary>A range of the flat buffers this rank owns (updates and keeps optimizer state for): flat elements
/// [Start, Start + Length) of bucket Bucket, stored from element Compact of the rank's compact state buffers.</summary>
public readonly record struct OwnedSlice(int Bucket, long Start, long Length, long Compact);

/// <summary>
/// How the flat store is cut for data parallelism (DDP's buckets, DeepSpeed's ZeRO partitions):
/// <list type="bullet">
/// <item>Buckets are runs of whole parameters taken from the end of the store (the first gradients backward
/// completes) until a bucket holds at least the bucket size; each bucket starts on a multiple of
/// Unit = world size × <see cref="Chunk"/> elements and ends where the next begins (the last at the capacity), so
/// its length is a multiple of Unit.</item>
/// <item>ZeRO ownership: rank r owns the r-th of WorldSize equal slices of every bucket (whole chunks); a reduce-scatter
/// of a bucket hands each rank exactly its slice, an in-place all-gather restores the bucket. Stage 0 owns everything
/// on every rank.</item>
/// <item>ZeRO-3 lays the store out by the model's units instead (<see cref="UnitSpecs"/>): one bucket per unit, so a
/// unit's weights are one all-gather and its gradients one reduce-scatter.</item>
/// <item>The gradient norm sums chunk partials (<see cref="Chunk"/> elements each, <see cref="IBackend.ChunkSumOfSquares"/>):
/// a slice is whole chunks, so the norm is bitwise the same at every stage for the same gradients.</item>
/// </list>
/// A world of one rank keeps the store's own layout: one bucket over the whole buffer, no communication.
/// </summary>
public sealed class ShardLayout
{
    /// <summary>Elements per gradient-norm chunk; every bucket slice is a whole number of chunks.</summary>
    public const int Chunk = 4096;

    ShardLayout(int worldSize, int rank, int stage, long capacity, List<GradBucket> buckets)
    {
        WorldSize = worldSize; Rank = rank; Stage = stage; Capacity = capacity; Buckets = buckets;
        var owned = new List<OwnedSlice>();
        long compact = 0;
        foreach (var b in buckets)
        {
            if (stage == 0) owned.Add(new OwnedSlice(b.Index, b.Start, b.Length, b.Start));
            else
            {
                long share = b.Length / worldSize;
                owned.Add(new OwnedSlice(b.Index, b.Start + rank * share, share, compact));
                compact += share;
            }
        }
        Owned = owned;
        OwnedElements = stage == 0 ? capacity : compact;
    }

    public int WorldSize { get; }
    public int Rank { get; }
    /// <summary>ZeRO stage in effect (0 in a world of one rank, whatever was asked).</summary>
    public int Stage { get; }
    public long Capacity { get; }
    public IReadOnlyList<GradBucket> Buckets { get; }
    public IReadOnlyList<OwnedSlice> Owned { get; }
    /// <summary>Elements of the compact per-rank buffers (AdamW moments, ZeRO-2 gradients): Capacity at stage 0.</summary>
    public long OwnedElements { get; }

    /// <summary>The bucket boundary: world size × chunk elements.</summary>
    public static long Unit(int worldSize) => (long)worldSize * Chunk;

    /// <summary>
    /// Specs for the store's data-parallel layout: the first parameter of every bucket starts on a Unit boundary.
    /// Buckets are formed from the last parameter backwards until each holds at least bucketElements.
    /// </summary>
    public static List<ParameterSpec> BucketedSpecs(IReadOnlyList<ParameterSpec> specs, long bucketElements, int worldSize)
    {
        var starts = BucketStarts(specs.Select(s => s.Numel).ToList(), bucketElements);
        long unit = Unit(worldSize);
        return specs.Select((s, i) => s with { StartAlign = starts.Contains(i) ? unit : 0 }).ToList();
    }

    /// <summary>
    /// Specs for ZeRO-3: every unit of the store (<see cref="ParameterStore.Units"/>) starts a bucket on a Unit
    /// boundary, so bucket k is unit k.
    /// </summary>
    public static List<ParameterSpec> UnitSpecs(ParameterStore store, int worldSize)
    {
        if (store.Units.Count == 0) throw new ArgumentException("ZeRO-3 gathers a model unit by unit, and this parameter store declares no units");
        var starts = Enumerable.Range(0, store.Units.Count).Select(u => store.UnitSlots(u).First).ToHashSet();
        long unit = Unit(worldSize);
        return store.Specs().Select((s, i) => s with { StartAlign = starts.Contains(i) ? unit : 0 }).ToList();
    }

    /// <summary>Indices of the parameters that start a bucket (taking parameters from the end).</summary>
    public static HashSet<int> BucketStarts(IReadOnlyList<long> sizes, long bucketElements)
    {
        var starts = new HashSet<int>();
        long filled = 0;
        for (int i = sizes.Count - 1; i >= 0; i--)
        {
            filled += sizes[i];
            if (filled >= bucketElements || i == 0) { starts.Add(i); filled = 0; }
        }
        return starts;
    }

    /// <summary>The layout of a store already laid out by <see cref="BucketedSpecs"/> (or any store in a world of one).</summary>
    public static ShardLayout For(ParameterStore store, int worldSize, int rank, int stage)
    {
        if (worldSize == 1)
            return new ShardLayout(1, 0, 0, store.Capacity, [new GradBucket(0, 0, store.Capacity, 0, store.Count - 1)]);
        long unit = Unit(worldSize);
        if (store.Capacity % unit != 0) throw new InvalidOperationException($"store capacity {store.Capacity} is not a multiple of {unit}: lay it out with ShardLayout.BucketedSpecs first");
        var starts = Enumerable.Range(0, store.Count).Where(i => i == 0 || store.LayoutSpecs[i].StartAlign == unit).ToList();
        var buckets = new List<GradBucket>();
        for (int k = 0; k < starts.Count; k++)
        {
            int first = starts[k], last = k + 1 < starts.Count ? starts[k + 1] - 1 : store.Count - 1;
            long start = store.Slots[first].Offset;
            long end = k + 1 < starts.Count ? store.Slots[starts[k + 1]].Offset : store.Capacity;
            if (start % unit != 0 || (end - start) % unit != 0)
                throw new InvalidOperationException($"bucket {k} [{start}, {end}) is not aligned to {unit} elements: the store was not laid out for {worldSize} ranks");
            buckets.Add(new GradBucket(k, start, end - start, first, last));
        }
        return new ShardLayout(worldSize, rank, stage, store.Capacity, buckets);
    }
}
