using Engine.Cuda.Interop;

namespace Engine.Cuda;

/// <summary>
/// Which staging block an upload uses (<see cref="PinnedStaging"/>'s policy, apart from CUDA so that it is tested on
/// the CPU): the smallest free block that holds the bytes, where a block is free once the copy that last used it has
/// completed on the device (<paramref name="isDone"/>, a non-blocking event query); none free → a new block of the next
/// power of two (at least 64 KiB). Nothing ever waits: a burst of uploads grows the pool, steady state reuses it.
/// </summary>
public sealed class StagingPool<TBlock>(Func<long, TBlock> allocate, Func<TBlock, bool> isDone, Func<TBlock, long> size)
    where TBlock : class
{
    public const long MinBlock = 64 * 1024;
    readonly List<TBlock> blocks = [];
    readonly HashSet<TBlock> inFlight = new(ReferenceEqualityComparer.Instance);

    public int Count => blocks.Count;
    public long Bytes => blocks.Sum(size);

    /// <summary>A block of at least <paramref name="bytes"/> that no pending copy uses; marked in flight until its
    /// next completion check says done.</summary>
    public TBlock Take(long bytes)
    {
        TBlock? best = null;
        foreach (var b in blocks)
        {
            if (size(b) < bytes || (best != null && size(best) <= size(b))) continue;
            if (inFlight.Contains(b))
            {
                if (!isDone(b)) continue;
                inFlight.Remove(b);
            }
            best = b;
        }
        if (best == null)
        {
            best = allocate(Math.Max(MinBlock, (long)System.Numerics.BitOperations.RoundUpToPowerOf2((ulong)Math.Max(1, bytes))));
            blocks.Add(best);
        }
        inFlight.Add(best);
        return best;
    }

    public IReadOnlyList<TBlock> Blocks => blocks;
}

/// <summary>
/// Asynchronous host→device uploads from page-locked memory (issue 23: no host synchronization inside a training
/// step): the caller's values are copied into a pinned block, cuMemcpyHtoDAsync is enqueued on the stream and an event
/// recorded after it; the caller's span may change at once. The block returns to the pool when its event completes.
/// </summary>
public sealed class PinnedStaging : IDisposable
{
    sealed class Block(PinnedHostHandle memory, CudaEvent done)
    {
        public PinnedHostHandle Memory { get; } = memory;
        public CudaEvent Done { get; } = done;
    }

    readonly StagingPool<Block> pool = new(Allocate, b => NativeMethods.cuEventQuery(b.Done.Handle) == CuResult.Success, b => b.Memory.Bytes);

    static Block Allocate(long bytes)
    {
        Check.Cu(NativeMethods.cuMemHostAlloc(out IntPtr host, (nuint)bytes, 0));
        return new Block(new PinnedHostHandle(host, bytes), new CudaEvent());
    }

    /// <summary>Page-locked bytes held.</summary>
    public long Bytes => pool.Bytes;

    /// <summary>Enqueues dst ← src on <paramref name="stream"/> without waiting.</summary>
    public unsafe void CopyToDevice<T>(CudaStream stream, DevicePtr dst, ReadOnlySpan<T> src) where T : unmanaged
    {
        long bytes = (long)src.Length * sizeof(T);
        if (bytes == 0) return;
        if (stream.Capturing)
            throw new InvalidOperationException("an upload inside a CUDA-graph capture: write the graph's inputs before capturing and before each Replay, not inside the captured work");
        var b = pool.Take(bytes);
        var host = (void*)b.Memory.DangerousGetHandle();
        fixed (T* p = src) Buffer.MemoryCopy(p, host, b.Memory.Bytes, bytes);
        Engine.Core.Profiler.CountLaunch(Engine.Core.Profiler.LaunchKind.Copy);
        Check.Cu(NativeMethods.cuMemcpyHtoDAsync_v2(dst.Address, host, (nuint)bytes, stream.Handle));
        b.Done.Record(stream);
    }

    public void Dispose()
    {
        foreach (var b in pool.Blocks)
        {
            if (NativeMethods.cuEventQuery(b.Done.Handle) == CuResult.NotReady) b.Done.Synchronize();   // a copy may still read it
            b.Done.Dispose();
            b.Memory.Dispose();
        }
    }
}
