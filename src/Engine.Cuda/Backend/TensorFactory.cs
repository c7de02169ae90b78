using Engine.Core;

namespace Engine.Cuda.Backend;

/// <summary>Creates <see cref="Tensor"/>s over storages this assembly defines (registered with the current scope).</summary>
public static class TensorFactory
{
    /// <summary>A tensor owning <paramref name="storage"/> (disposed with it), offset 0.</summary>
    public static Tensor Owning(TensorStorage storage, ReadOnlySpan<int> shape) => Tensor.Create(storage, shape);
}
