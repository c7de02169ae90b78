using System.Runtime.CompilerServices;
using Engine.Core;

namespace Engine.Cuda.Backend;

/// <summary>
/// Creates <see cref="Tensor"/>s over storages this assembly defines. Tensor's constructor is internal to
/// Engine.Core (which has no InternalsVisibleTo for Engine.Cuda and no public factory), so it is reached through an
/// <see cref="UnsafeAccessorAttribute"/>: a direct call bound by the runtime, no reflection cost. The constructor
/// registers the tensor with the current <see cref="TensorScope"/> exactly as CpuBackend's tensors are.
/// If Engine.Core gains a public factory (e.g. <c>Tensor.Create(TensorStorage, int[])</c>), this is the one place to change.
/// </summary>
public static class TensorFactory
{
    [UnsafeAccessor(UnsafeAccessorKind.Constructor)]
    private static extern Tensor NewTensor(TensorStorage storage, long offset, int[] shape, bool ownsStorage);

    /// <summary>A tensor owning <paramref name="storage"/> (disposed with it), offset 0.</summary>
    public static Tensor Owning(TensorStorage storage, ReadOnlySpan<int> shape) => NewTensor(storage, 0, shape.ToArray(), true);
}
