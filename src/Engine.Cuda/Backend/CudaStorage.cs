using Engine.Core;

namespace Engine.Cuda.Backend;

/// <summary>Writes the bf16 rounding of an fp32 device buffer (the backend's cast kernel; a fake in CPU tests).</summary>
public interface IShadowCaster
{
    void CastF32ToBf16(DevicePtr dstBf16, DevicePtr srcF32, long count);
}

/// <summary>
/// A tensor buffer on the GPU: one <see cref="CachingAllocator"/> block of <see cref="TensorStorage.Length"/> elements,
/// returned to the allocator on Dispose (TensorScope disposes temporaries every micro-batch; the allocator's reuse is
/// stream-ordered, which is safe because the backend runs everything on one stream).
/// <para>
/// <b>Write version.</b> Every backend op that writes this storage bumps <see cref="Version"/> (through
/// <see cref="MarkWritten"/>, or <see cref="EndFusedUpdate"/> / <see cref="UploadInts"/>). Device memory is written by
/// nothing else, so a derived copy stamped with the current version is exact.
/// </para>
/// <para>
/// <b>bf16 shadow (the rule).</b> An fp32 storage used where a kernel or cuBLAS needs bf16 (parameters: GEMMs,
/// RMSNorm gain, embedding table; any other fp32 operand of a GEMM) gets a bf16 copy of its whole buffer, created on
/// first use — not at creation, because <see cref="Tensor.IsParameter"/> is set after the tensor exists — and valid
/// exactly while its stamp equals <see cref="Version"/>. Any write (Upload, Copy, Fill, Scale, AddInPlace, …)
/// makes it stale and the next use re-casts it (one cast kernel). The fused AdamW kernel writes master and shadow
/// together, so after an optimizer step the shadow stays current and steady-state training never re-casts.
/// </para>
/// <para>
/// <b>Host ids.</b> int32 storages keep the host values of their last Upload (same version rule), so the embedding
/// backward builds its buckets without a device→host copy.
/// </para>
/// </summary>
public sealed class CudaStorage : TensorStorage
{
    private DeviceBuffer? _data, _shadow;
    private readonly CachingAllocator _allocator;
    private long _shadowVersion = -1, _hostVersion = -1;
    private int[]? _hostInts;

    public CudaStorage(IBackend backend, CachingAllocator allocator, DType dtype, long length) : base(backend, dtype, length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        _allocator = allocator;
        _data = allocator.Allocate(Math.Max(1, length) * dtype.Size());
    }

    /// <summary>Base address of the elements.</summary>
    public DevicePtr Ptr => (_data ?? throw (IsDisposed ? new ObjectDisposedException(nameof(CudaStorage), "tensor storage used after its scope ended")
        : new InvalidOperationException(EvictedMessage(Length)))).Ptr;

    /// <summary>Incremented by every write through the backend.</summary>
    public long Version { get; private set; }

    public void MarkWritten() => Version++;

    public bool HasShadow => _shadow != null;

    /// <summary>Whether the bf16 shadow exists and equals bf16_rn(current fp32 values).</summary>
    public bool ShadowIsCurrent => _shadow != null && _shadowVersion == Version;

    /// <summary>The bf16 shadow of this fp32 storage, created or re-cast if stale (enqueued on the backend's stream).</summary>
    public DevicePtr Bf16Shadow(IShadowCaster caster)
    {
        if (DType != DType.F32) throw new InvalidOperationException($"only fp32 storages have a bf16 shadow, this one is {DType}");
        if (ShadowIsCurrent) return _shadow!.Ptr;
        _shadow ??= AllocateShadow();
        caster.CastF32ToBf16(_shadow.Ptr, Ptr, Length);
        _shadowVersion = Version;
        return _shadow.Ptr;
    }

    /// <summary>
    /// The bf16 buffer a fused update of elements [offset, offset + count) should also write, or null: the current
    /// shadow (it stays current: the update rewrites its region), or — when the update covers the whole storage and
    /// <paramref name="wantShadow"/> (a parameter) or a stale shadow exists — the shadow buffer, which the update
    /// makes current. A partial update of a stale shadow returns null and leaves it stale (re-cast on next use).
    /// </summary>
    public DevicePtr BeginFusedUpdate(long offset, long count, bool wantShadow)
    {
        if (DType != DType.F32) return DevicePtr.Null;
        if (ShadowIsCurrent) return _shadow!.Ptr.Offset(offset, 2);
        bool whole = offset == 0 && count == Length;
        if (!whole || !(wantShadow || _shadow != null)) return DevicePtr.Null;
        _shadow ??= AllocateShadow();
        return _shadow.Ptr;
    }

    private DeviceBuffer AllocateShadow()
    {
        try { return _allocator.Allocate(Math.Max(1, Length) * 2); }
        catch (DeviceOutOfMemoryException e) { throw e.For($"the bf16 copy of an F32 tensor of {Length} elements"); }
    }

    /// <summary>Records the fused update: a write, and the shadow current when it was written alongside.</summary>
    public void EndFusedUpdate(DevicePtr shadowWritten)
    {
        Version++;
        if (!shadowWritten.IsNull) _shadowVersion = Version;
    }

    /// <summary>Records an upload of int32 values at element <paramref name="offset"/> (a write) and keeps their host copy.</summary>
    public void UploadInts(long offset, ReadOnlySpan<int> values)
    {
        bool mirrorWasCurrent = _hostInts != null && _hostVersion == Version;
        Version++;
        bool whole = offset == 0 && values.Length == Length;
        if (DType != DType.I32 || Length > Array.MaxLength || !(whole || mirrorWasCurrent)) return;
        _hostInts ??= new int[Length];
        values.CopyTo(_hostInts.AsSpan((int)offset));
        _hostVersion = Version;
    }

    /// <summary>The host copy of elements [offset, offset + count) when it is current.</summary>
    public bool TryHostInts(long offset, long count, out ReadOnlySpan<int> values)
    {
        if (_hostInts != null && _hostVersion == Version)
        {
            values = _hostInts.AsSpan((int)offset, (int)count);
            return true;
        }
        values = default;
        return false;
    }

    /// <summary>Gives the block back to the allocator (stream-ordered: safe once every operation reading it was enqueued
    /// on the compute stream, or waited for); the shadow and host copy go with it.</summary>
    protected override void EvictElements()
    {
        _data?.Dispose();
        _shadow?.Dispose();
        _data = null; _shadow = null; _hostInts = null;
        Version++;
    }

    protected override void RestoreElements()
    {
        try { _data = _allocator.Allocate(Math.Max(1, Length) * DType.Size()); }
        catch (DeviceOutOfMemoryException e) { throw e.For($"gathering a ZeRO-3 unit of {Length} elements"); }
        Version++;
    }

    private DeviceEmbeddingBuckets? _buckets;
    private (long Version, long Offset, long Count, int Vocab) _bucketsKey;

    /// <summary>Keeps the embedding backward's device buckets for ids [offset, offset + count) at the current version
    /// (the forward builds them while the host ids are at hand); replaces any earlier ones.</summary>
    public void SetEmbeddingBuckets(long offset, long count, int vocab, DeviceEmbeddingBuckets buckets)
    {
        _buckets?.Dispose();
        _buckets = buckets;
        _bucketsKey = (Version, offset, count, vocab);
    }

    /// <summary>The buckets <see cref="SetEmbeddingBuckets"/> kept, when they still describe these ids.</summary>
    public DeviceEmbeddingBuckets? EmbeddingBucketsFor(long offset, long count, int vocab) =>
        _buckets != null && _bucketsKey == (Version, offset, count, vocab) ? _buckets : null;

    protected override void Release()
    {
        _data?.Dispose();
        _shadow?.Dispose();
        _buckets?.Dispose();
        _data = null; _shadow = null; _hostInts = null; _buckets = null;
    }
}

/// <summary>An embedding backward's bucket table on the device: order [N] | bucket_start [U + 1] | bucket_id [U].</summary>
public sealed record DeviceEmbeddingBuckets(DeviceBuffer Packed, int OrderLength, int StartLength, int Buckets) : IDisposable
{
    public void Dispose() => Packed.Dispose();
}
