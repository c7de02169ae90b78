using System.Collections.Concurrent;

namespace Engine.Core;

/// <summary>A buffer owned by one backend. Freed when the owning tensor is disposed.</summary>
public abstract class TensorStorage : IDisposable
{
    protected TensorStorage(IBackend backend, DType dtype, long length)
    {
        Backend = backend; DType = dtype; Length = length;
    }

    public IBackend Backend { get; }
    public DType DType { get; }
    public long Length { get; }
    public bool IsDisposed { get; private set; }

    /// <summary>
    /// Whether the elements are allocated. A storage can give its elements back (<see cref="Evict"/>) and take new ones
    /// (<see cref="Restore"/>, contents undefined) while the object — and every tensor viewing it — lives on: PyTorch
    /// FSDP's storage resize. ZeRO-3 frees a unit's gathered weights between uses while the autograd tape still holds
    /// the parameter tensors its backward will read once they are gathered again.
    /// </summary>
    public bool IsResident { get; private set; } = true;

    /// <summary>Frees the elements and keeps the storage (a no-op when already evicted or disposed).</summary>
    public void Evict()
    {
        if (!IsResident || IsDisposed) return;
        EvictElements();
        IsResident = false;
    }

    /// <summary>Allocates the elements again after <see cref="Evict"/> (their values are undefined until written).</summary>
    public void Restore()
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (IsResident) return;
        RestoreElements();
        IsResident = true;
    }

    protected virtual void EvictElements() => throw new NotSupportedException($"{GetType().Name} cannot give back its elements");
    protected virtual void RestoreElements() => throw new NotSupportedException($"{GetType().Name} cannot give back its elements");

    /// <summary>The message for a use of evicted elements.</summary>
    protected static string EvictedMessage(long length) =>
        $"a storage of {length} elements is used while its elements are given back (a ZeRO-3 parameter read outside its unit's forward or backward: gather it first)";

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        if (IsResident) Release();
        else ReleaseEvicted();
        GC.SuppressFinalize(this);
    }

    protected abstract void Release();

    /// <summary>Disposal of an evicted storage: whatever it still holds besides its elements.</summary>
    protected virtual void ReleaseEvicted() { }
}

/// <summary>Host memory from an exact-length pool: shapes repeat every step, so buffers are reused, not re-allocated.</summary>
public sealed class CpuStorage : TensorStorage
{
    readonly MemoryCounter counter = MemoryCounter.Current;

    static readonly ConcurrentDictionary<long, ConcurrentBag<float[]>> FloatPool = new();
    static readonly ConcurrentDictionary<long, ConcurrentBag<int[]>> IntPool = new();

    public float[]? F { get; private set; }
    public ushort[]? H { get; private set; }
    public int[]? I { get; private set; }

    public CpuStorage(IBackend backend, DType dtype, long length, bool zero) : base(backend, dtype, length)
    {
        if (length > Array.MaxLength) throw new OutOfMemoryException($"tensor of {length} elements exceeds the largest host array");
        switch (dtype)
        {
            case DType.F32:
                F = Rent(FloatPool, length, zero);
                break;
            case DType.I32:
                I = Rent(IntPool, length, zero);
                break;
            case DType.BF16:
                H = new ushort[length];
                break;
        }
        counter.Add(length * dtype.Size());
    }

    static T[] Rent<T>(ConcurrentDictionary<long, ConcurrentBag<T[]>> pool, long length, bool zero)
    {
        if (length >= 1024 && pool.TryGetValue(length, out var bag) && bag.TryTake(out var arr))
        {
            if (zero) Array.Clear(arr);
            return arr;
        }
        return new T[length];
    }

    protected override void Release()
    {
        counter.Add(-Length * DType.Size());
        if (F is { Length: >= 1024 }) FloatPool.GetOrAdd(F.LongLength, _ => new()).Add(F);
        if (I is { Length: >= 1024 }) IntPool.GetOrAdd(I.LongLength, _ => new()).Add(I);
        F = null; I = null; H = null;
    }

    protected override void EvictElements() => Release();

    protected override void RestoreElements()
    {
        switch (DType)
        {
            case DType.F32: F = Rent(FloatPool, Length, zero: false); break;
            case DType.I32: I = Rent(IntPool, Length, zero: false); break;
            case DType.BF16: H = new ushort[Length]; break;
        }
        counter.Add(Length * DType.Size());
    }

    /// <summary>Throws the evicted-storage message when the elements are given back.</summary>
    public void CheckResident()
    {
        if (!IsResident) throw new InvalidOperationException(EvictedMessage(Length));
    }

    /// <summary>Drops every pooled buffer (e.g. between runs of different shapes).</summary>
    public static void ClearPool()
    {
        FloatPool.Clear();
        IntPool.Clear();
    }
}

/// <summary>
/// Bytes of live host tensor storage and their peak (what PyTorch calls allocated memory: pooled free buffers are not
/// counted). A storage is charged to the counter current on the thread that created it; each rank of a thread world
/// installs its own with <see cref="Use"/>, everything else shares <see cref="Process"/>.
/// </summary>
public sealed class MemoryCounter
{
    [ThreadStatic] static MemoryCounter? current;
    long live, peak;

    /// <summary>The counter of every thread that installed none.</summary>
    public static MemoryCounter Process { get; } = new();
    public static MemoryCounter Current => current ?? Process;

    public long LiveBytes => Interlocked.Read(ref live);
    public long PeakBytes => Interlocked.Read(ref peak);

    /// <summary>Starts a new peak from what is live now.</summary>
    public void ResetPeak() => Interlocked.Exchange(ref peak, Interlocked.Read(ref live));

    internal void Add(long bytes)
    {
        long now = Interlocked.Add(ref live, bytes);
        long p;
        while (now > (p = Interlocked.Read(ref peak)) && Interlocked.CompareExchange(ref peak, now, p) != p) { }
    }

    /// <summary>Makes this the calling thread's counter until the handle is disposed.</summary>
    public IDisposable Use()
    {
        var previous = current;
        current = this;
        return new Restore(previous);
    }

    sealed class Restore(MemoryCounter? previous) : IDisposable
    {
        public void Dispose() => current = previous;
    }
}
