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

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        Release();
        GC.SuppressFinalize(this);
    }

    protected abstract void Release();
}

/// <summary>Host memory from an exact-length pool: shapes repeat every step, so buffers are reused, not re-allocated.</summary>
public sealed class CpuStorage : TensorStorage
{
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
        if (F is { Length: >= 1024 }) FloatPool.GetOrAdd(F.LongLength, _ => new()).Add(F);
        if (I is { Length: >= 1024 }) IntPool.GetOrAdd(I.LongLength, _ => new()).Add(I);
        F = null; I = null; H = null;
    }

    /// <summary>Drops every pooled buffer (e.g. between runs of different shapes).</summary>
    public static void ClearPool()
    {
        FloatPool.Clear();
        IntPool.Clear();
    }
}
