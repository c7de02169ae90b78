using Engine.Core.Autograd;

namespace Engine.Core;

/// <summary>
/// A dense row-major tensor: a storage on one backend, an element offset into it, and a shape.
/// Views (reshape, leading-dimension slices) share storage and never own it. Tensors created inside a
/// <see cref="TensorScope"/> are freed when the scope ends unless <see cref="Keep"/> moved them out.
/// </summary>
public sealed class Tensor : IDisposable
{
    readonly bool ownsStorage;

    /// <summary>False for a view (reshape, slice, range) of another tensor's storage.</summary>
    public bool OwnsStorage => ownsStorage;

    internal Tensor(TensorStorage storage, long offset, int[] shape, bool ownsStorage)
    {
        Storage = storage; Offset = offset; Shape = shape; this.ownsStorage = ownsStorage;
        Numel = Core.Shape.Numel(shape);
        if (offset < 0 || offset + Numel > storage.Length)
            throw new ArgumentException($"view [{offset}, {offset + Numel}) is outside its storage of {storage.Length} elements");
        TensorScope.Current?.Track(this);
    }

    /// <summary>A tensor that owns a backend's freshly allocated storage (offset 0); backends outside Engine.Core use this.</summary>
    public static Tensor Create(TensorStorage storage, ReadOnlySpan<int> shape) => new(storage, 0, shape.ToArray(), ownsStorage: true);

    public TensorStorage Storage { get; }
    public long Offset { get; }
    public int[] Shape { get; }
    public long Numel { get; }
    public DType DType => Storage.DType;
    public IBackend Backend => Storage.Backend;
    public int Rank => Shape.Length;
    public string? Name { get; set; }

    // ---- autograd ----
    /// <summary>Whether gradients flow into this tensor (parameters and anything computed from them).</summary>
    public bool RequiresGrad { get; set; }
    /// <summary>Accumulated gradient (same shape, fp32), or null before the first backward.</summary>
    public Tensor? Grad { get; set; }
    /// <summary>A model parameter: its gradient outlives tensor scopes (accumulates over micro-batches).</summary>
    public bool IsParameter { get; set; }
    /// <summary>Where a parameter's gradient buffer comes from when <see cref="Grad"/> is null (ZeRO-2 buckets); null =
    /// a fresh zeroed tensor.</summary>
    public IGradientSource? GradSource { get; set; }
    /// <summary>Set on parameters that the optimizer must skip (e.g. frozen in stage-1 vocabulary training).</summary>
    public bool Frozen { get; set; }

    public int Dim(int i) => Shape[i < 0 ? Shape.Length + i : i];

    /// <summary>Host span over the fp32 elements (CPU backend only).</summary>
    public Span<float> Span
    {
        get
        {
            (Storage as CpuStorage)?.CheckResident();
            if (Storage is not CpuStorage { F: { } f }) throw new InvalidOperationException($"{Describe()} is not an fp32 host tensor");
            return f.AsSpan((int)Offset, (int)Numel);
        }
    }

    /// <summary>Host span over the int32 elements (CPU backend only).</summary>
    public Span<int> IntSpan
    {
        get
        {
            (Storage as CpuStorage)?.CheckResident();
            if (Storage is not CpuStorage { I: { } a }) throw new InvalidOperationException($"{Describe()} is not an int32 host tensor");
            return a.AsSpan((int)Offset, (int)Numel);
        }
    }

    /// <summary>Host span over the bf16 bit patterns (CPU backend only).</summary>
    public Span<ushort> HalfSpan
    {
        get
        {
            (Storage as CpuStorage)?.CheckResident();
            if (Storage is not CpuStorage { H: { } a }) throw new InvalidOperationException($"{Describe()} is not a bf16 host tensor");
            return a.AsSpan((int)Offset, (int)Numel);
        }
    }

    /// <summary>Same elements, new shape (no copy). One dimension may be -1.</summary>
    public Tensor View(params int[] shape)
    {
        int infer = Array.IndexOf(shape, -1);
        if (infer >= 0)
        {
            long rest = 1;
            for (int i = 0; i < shape.Length; i++) if (i != infer) rest *= shape[i];
            if (rest == 0 || Numel % rest != 0) throw new ArgumentException($"cannot view {Describe()} as {Core.Shape.Format(shape)}");
            shape = (int[])shape.Clone();
            shape[infer] = (int)(Numel / rest);
        }
        if (Core.Shape.Numel(shape) != Numel) throw new ArgumentException($"cannot view {Describe()} as {Core.Shape.Format(shape)}: element counts differ");
        return new Tensor(Storage, Offset, shape, ownsStorage: false) { Name = Name };
    }

    /// <summary>Rows [start, start+count) of the leading dimension (no copy).</summary>
    public Tensor Narrow0(int start, int count)
    {
        if (start < 0 || count < 0 || start + count > Shape[0]) throw new ArgumentOutOfRangeException(nameof(start), $"rows [{start}, {start + count}) outside {Describe()}");
        var shape = (int[])Shape.Clone();
        shape[0] = count;
        long inner = Shape[0] == 0 ? 0 : Numel / Shape[0];
        return new Tensor(Storage, Offset + start * inner, shape, ownsStorage: false);
    }

    /// <summary>
    /// A view of <paramref name="shape"/>'s element count starting <paramref name="offset"/> elements into this
    /// tensor (no copy; flat-buffer ranges such as a parameter inside a <see cref="ParameterStore"/>).
    /// </summary>
    public Tensor Slice(long offset, params int[] shape)
    {
        long n = Core.Shape.Numel(shape);
        if (offset < 0 || offset + n > Numel) throw new ArgumentOutOfRangeException(nameof(offset), $"elements [{offset}, {offset + n}) outside {Describe()}");
        return new Tensor(Storage, Offset + offset, (int[])shape.Clone(), ownsStorage: false);
    }

    /// <summary>Elements [offset, offset + count) as a 1-D view (shapes are int: a range holds at most 2^31 − 1 elements).</summary>
    public Tensor Range(long offset, long count) => Slice(offset, checked((int)count));

    /// <summary>Removes this tensor from the current scope so it outlives it; returns this.</summary>
    public Tensor Keep()
    {
        TensorScope.Current?.Untrack(this);
        return this;
    }

    public float[] ToArray()
    {
        var a = new float[Numel];
        Backend.Download(this, a);
        return a;
    }

    public float Item() => Numel == 1 ? ToArray()[0] : throw new InvalidOperationException($"Item() needs one element, {Describe()} has {Numel}");

    public string Describe() => $"{Name ?? "tensor"}{Core.Shape.Format(Shape)} {DType} on {Backend.Name}";

    public override string ToString() => Describe();

    public void Dispose()
    {
        if (ownsStorage) Storage.Dispose();
    }
}
