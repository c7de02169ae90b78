namespace Engine.Cuda.Kernels;

/// <summary>Token positions grouped by id for the deterministic embedding backward (see native/embedding.cu).</summary>
/// <param name="Order">[N] token positions, grouped by id (ids ascending), positions ascending within a group.</param>
/// <param name="BucketStart">[U + 1] group boundaries into Order.</param>
/// <param name="BucketId">[U] the id of each group.</param>
public sealed record EmbeddingBuckets(int[] Order, int[] BucketStart, int[] BucketId)
{
    public int Buckets => BucketId.Length;
}

/// <summary>Launchers for native/embedding.cu: table [V, C] bf16, ids int32 [N].</summary>
public sealed class EmbeddingKernels
{
    private const string Module = "embedding";
    private readonly KernelLibrary _lib;
    internal EmbeddingKernels(KernelLibrary lib) => _lib = lib;

    /// <summary>Counting sort of <paramref name="ids"/> by id, O(N + V); throws on an id outside [0, vocab).</summary>
    public static EmbeddingBuckets BuildBuckets(ReadOnlySpan<int> ids, int vocab)
    {
        var counts = new int[vocab + 1];
        for (int n = 0; n < ids.Length; n++)
        {
            int id = ids[n];
            if ((uint)id >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(ids), $"ids[{n}] = {id} is outside [0, {vocab})");
            counts[id + 1]++;
        }
        int unique = 0;
        for (int v = 0; v < vocab; v++) if (counts[v + 1] > 0) unique++;
        for (int v = 0; v < vocab; v++) counts[v + 1] += counts[v];   // counts[v] = first slot of id v
        var order = new int[ids.Length];
        var next = (int[])counts.Clone();
        for (int n = 0; n < ids.Length; n++) order[next[ids[n]]++] = n;
        var start = new int[unique + 1];
        var bid = new int[unique];
        int u = 0;
        for (int v = 0; v < vocab; v++)
        {
            if (counts[v + 1] == counts[v]) continue;
            bid[u] = v;
            start[u] = counts[v];
            u++;
        }
        start[unique] = ids.Length;
        return new EmbeddingBuckets(order, start, bid);
    }

    /// <summary>out[n] = table[ids[n]] (zero row for an out-of-range id).</summary>
    public void Forward(CudaStream s, DevicePtr output, DevicePtr table, DevicePtr ids, int tokens, int vocab, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocab);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        if (tokens == 0) return;
        var p = new EmbeddingForwardParams { Out = output, Table = table, Ids = ids, Tokens = tokens, Vocab = vocab, Cols = cols };
        _lib.Function(Module, "embedding_forward").Launch(s, new Dim3((uint)Math.Min(tokens, 65535 * 16)), KernelTraits.RowBlock, 0, p);
    }

    /// <summary>dtable(fp32) += grouped sums of dout rows. order/bucketStart/bucketId are device copies of
    /// <see cref="BuildBuckets"/>' arrays; <paramref name="buckets"/> = their BucketId length.</summary>
    public void Backward(CudaStream s, DevicePtr dtable, DevicePtr dout, DevicePtr order, DevicePtr bucketStart, DevicePtr bucketId,
        int buckets, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(buckets);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        if (buckets == 0) return;
        var p = new EmbeddingBackwardParams { DTable = dtable, DOut = dout, Order = order, BucketStart = bucketStart, BucketId = bucketId, Buckets = buckets, Cols = cols };
        _lib.Function(Module, "embedding_backward").Launch(s, new Dim3((uint)Math.Min(buckets, 65535 * 16)), KernelTraits.RowBlock, 0, p);
    }
}
