using Engine.Core;
using Engine.Cuda.Interop;

namespace Engine.Cuda;

/// <summary>Where the caching allocator gets raw device memory (the driver; a fake in CPU tests).</summary>
public interface IRawDeviceMemory
{
    /// <summary>False when the device is out of memory; other failures throw.</summary>
    bool TryAllocate(long bytes, out ulong address);
    void Free(ulong address);
    /// <summary>Free and total device memory in bytes, for error messages and the fit check; false when unknown.</summary>
    bool TryGetMemoryInfo(out long free, out long total)
    {
        free = total = 0;
        return false;
    }
}

/// <summary>cuMemAlloc_v2 / cuMemFree_v2 in the current context.</summary>
public sealed class DriverMemory : IRawDeviceMemory
{
    public bool TryAllocate(long bytes, out ulong address)
    {
        var r = NativeMethods.cuMemAlloc_v2(out address, (nuint)bytes);
        if (r == CuResult.OutOfMemory) return false;
        Check.Cu(r, $"cuMemAlloc_v2({bytes} bytes)");
        return true;
    }
    public void Free(ulong address) => Check.Cu(NativeMethods.cuMemFree_v2(address));
    public bool TryGetMemoryInfo(out long free, out long total)
    {
        free = total = 0;
        if (NativeMethods.cuMemGetInfo_v2(out nuint f, out nuint t) != CuResult.Success) return false;
        (free, total) = ((long)f, (long)t);
        return true;
    }
}

/// <summary>Allocator statistics in bytes (class-rounded sizes).</summary>
public readonly record struct AllocatorStats(long InUseBytes, long CachedBytes, long PeakInUseBytes, long PeakReservedBytes,
    long RawAllocations, long CacheHits)
{
    public long ReservedBytes => InUseBytes + CachedBytes;
}

/// <summary>
/// Caching device allocator: sizes are rounded to a size class (512-byte steps up to 1 MiB, then four classes per
/// power of two, so at most 25% waste), freed blocks go to a per-class free list and are handed out again without a
/// driver call. When the driver reports out-of-memory, the cache is emptied and the allocation retried once; if that
/// fails too, <see cref="DeviceOutOfMemoryException"/> names the request and the device's free/total memory (callers
/// that know the tensor rethrow it with <see cref="DeviceOutOfMemoryException.For"/>).
/// Stream semantics: blocks are reused in program order, which is safe while all work runs on one stream (a buffer
/// freed after enqueuing its last use is next used by work enqueued later on the same stream). Thread-safe.
/// The allocator owns its raw blocks (by address) and frees them in <see cref="EmptyCache"/> / <see cref="Dispose"/>;
/// one-off allocations outside it use <see cref="DeviceMemoryHandle"/>.
/// </summary>
public sealed class CachingAllocator : IDisposable
{
    private readonly IRawDeviceMemory _raw;
    private readonly Dictionary<long, Stack<ulong>> _free = new();
    private readonly Dictionary<ulong, long> _live = new();
    private readonly Dictionary<ulong, PrivatePool> _poolOf = new();   // blocks a private pool owns (live or in its cache)
    private PrivatePool? _active;
    private readonly Lock _gate = new();
    private long _inUse, _cached, _peakInUse, _peakReserved, _rawAllocs, _hits;
    private bool _disposed;

    public CachingAllocator(IRawDeviceMemory raw) => _raw = raw;
    public CachingAllocator() : this(new DriverMemory()) { }

    /// <summary>The size class a request of <paramref name="bytes"/> is served from.</summary>
    public static long SizeClass(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        const long Small = 1 << 20;
        if (bytes <= Small) return (bytes + 511) / 512 * 512;
        long pow = 1L << (63 - (int)long.LeadingZeroCount(bytes - 1));   // largest power of two < bytes
        long step = pow / 4;
        return (bytes + step - 1) / step * step;
    }

    /// <summary>
    /// A pool of blocks kept apart from the shared cache (a CUDA graph's memory, as PyTorch's graph pools): while it is
    /// <see cref="BeginPrivatePool">active</see> every allocation comes from its own free blocks or the driver and every
    /// block it owns returns to it, so buffers freed during a capture are reused within that capture; once inactive,
    /// nothing else is handed its blocks — the addresses a captured graph recorded stay valid between replays.
    /// Disposing it gives its free blocks to the shared cache and makes its live blocks return there.
    /// </summary>
    public sealed class PrivatePool : IDisposable
    {
        internal readonly Dictionary<long, Stack<ulong>> Free = new();
        internal readonly CachingAllocator Owner;
        internal bool Disposed;
        internal PrivatePool(CachingAllocator owner) => Owner = owner;
        /// <summary>Bytes of blocks the pool owns (live and free).</summary>
        public long Bytes { get; internal set; }
        public void Dispose() => Owner.DisposePool(this);
    }

    /// <summary>Starts serving allocations from a new private pool (one at a time) until <see cref="EndPrivatePool"/>.</summary>
    public PrivatePool BeginPrivatePool()
    {
        lock (_gate)
        {
            if (_active != null) throw new InvalidOperationException("a private pool is already active (captures do not nest)");
            return _active = new PrivatePool(this);
        }
    }

    /// <summary>Back to the shared cache; the pool keeps its blocks.</summary>
    public void EndPrivatePool(PrivatePool pool)
    {
        lock (_gate)
        {
            if (!ReferenceEquals(_active, pool)) throw new InvalidOperationException("that pool is not the active one");
            _active = null;
        }
    }

    private void DisposePool(PrivatePool pool)
    {
        lock (_gate)
        {
            if (pool.Disposed) return;
            if (ReferenceEquals(_active, pool)) _active = null;
            pool.Disposed = true;
            foreach (var (size, stack) in pool.Free)
                while (stack.Count > 0)
                {
                    ulong a = stack.Pop();
                    _poolOf.Remove(a);
                    if (_disposed) { _raw.Free(a); continue; }
                    if (!_free.TryGetValue(size, out var shared)) _free[size] = shared = new Stack<ulong>();
                    shared.Push(a);
                    _cached += size;
                }
            foreach (var a in _poolOf.Where(kv => ReferenceEquals(kv.Value, pool)).Select(kv => kv.Key).ToList()) _poolOf.Remove(a);   // live: shared on return
        }
    }

    /// <summary>A buffer of at least <paramref name="bytes"/> bytes (256-byte aligned: the driver's alignment).</summary>
    public DeviceBuffer Allocate(long bytes)
    {
        long size = SizeClass(bytes);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            ulong addr;
            var freeLists = _active?.Free ?? _free;
            if (freeLists.TryGetValue(size, out var stack) && stack.Count > 0)
            {
                addr = stack.Pop();
                if (_active == null) _cached -= size;
                _hits++;
            }
            else
            {
                if (!_raw.TryAllocate(size, out addr))
                {
                    EmptyCacheLocked();
                    if (!_raw.TryAllocate(size, out addr))
                    {
                        bool known = _raw.TryGetMemoryInfo(out long free, out long total);
                        throw new DeviceOutOfMemoryException(bytes, known ? free : null, known ? total : null, _inUse);
                    }
                }
                _rawAllocs++;
                if (_active != null) { _poolOf[addr] = _active; _active.Bytes += size; }
            }
            _live[addr] = size;
            _inUse += size;
            _peakInUse = Math.Max(_peakInUse, _inUse);
            _peakReserved = Math.Max(_peakReserved, _inUse + _cached);
            return new DeviceBuffer(this, new DevicePtr(addr), bytes, size);
        }
    }

    internal void Return(DevicePtr ptr)
    {
        lock (_gate)
        {
            if (!_live.Remove(ptr.Address, out long size))
                throw new InvalidOperationException($"{ptr} was not allocated by this allocator or was freed twice");
            _inUse -= size;
            if (_disposed) { _raw.Free(ptr.Address); return; }
            if (_poolOf.TryGetValue(ptr.Address, out var pool))
            {
                if (!pool.Free.TryGetValue(size, out var own)) pool.Free[size] = own = new Stack<ulong>();
                own.Push(ptr.Address);
                return;
            }
            if (!_free.TryGetValue(size, out var stack)) _free[size] = stack = new Stack<ulong>();
            stack.Push(ptr.Address);
            _cached += size;
        }
    }

    /// <summary>Returns every cached (free) block to the driver.</summary>
    public void EmptyCache()
    {
        lock (_gate) EmptyCacheLocked();
    }

    private void EmptyCacheLocked()
    {
        foreach (var stack in _free.Values)
            while (stack.Count > 0) _raw.Free(stack.Pop());
        _free.Clear();
        _cached = 0;
    }

    /// <summary>
    /// Bytes a new allocation could still get: the device's free memory plus this allocator's cached blocks (which an
    /// allocation that misses the cache releases and retries with); null when the device cannot say.
    /// </summary>
    public long? AvailableBytes()
    {
        if (!_raw.TryGetMemoryInfo(out long free, out _)) return null;
        lock (_gate) return free + _cached;
    }

    public AllocatorStats Stats
    {
        get { lock (_gate) return new AllocatorStats(_inUse, _cached, _peakInUse, _peakReserved, _rawAllocs, _hits); }
    }

    /// <summary>Restarts the peak counters at the current values (e.g. per training step).</summary>
    public void ResetPeak()
    {
        lock (_gate) { _peakInUse = _inUse; _peakReserved = _inUse + _cached; }
    }

    /// <summary>Frees the cache; buffers still alive are freed to the driver when they are disposed.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            EmptyCacheLocked();
            foreach (var pool in _poolOf.Values.Distinct().ToList())
                foreach (var stack in pool.Free.Values)
                    while (stack.Count > 0) { ulong a = stack.Pop(); _poolOf.Remove(a); _raw.Free(a); }
        }
    }
}

/// <summary>A device buffer from <see cref="CachingAllocator"/>; Dispose returns it to the cache.</summary>
public sealed class DeviceBuffer : IDisposable
{
    private CachingAllocator? _owner;
    public DevicePtr Ptr { get; }
    /// <summary>Requested size.</summary>
    public long Bytes { get; }
    /// <summary>Size-class size actually reserved.</summary>
    public long Capacity { get; }

    internal DeviceBuffer(CachingAllocator owner, DevicePtr ptr, long bytes, long capacity)
    {
        _owner = owner; Ptr = ptr; Bytes = bytes; Capacity = capacity;
    }

    public void Dispose()
    {
        var owner = Interlocked.Exchange(ref _owner, null);
        owner?.Return(Ptr);
    }
}
