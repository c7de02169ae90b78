using Engine.Core.Autograd;

namespace Engine.Core;

/// <summary>
/// Per-step lifetime of temporaries (TorchSharp's DisposeScope): every tensor created while the scope is current is
/// freed at its end, except those moved out with <see cref="Tensor.Keep"/>. The scope also owns the autograd tape
/// recorded while it is current. Scopes nest; they are per thread.
/// </summary>
public sealed class TensorScope : IDisposable
{
    [ThreadStatic] static TensorScope? current;

    readonly TensorScope? parent;
    readonly HashSet<Tensor> tracked = new(ReferenceEqualityComparer.Instance);
    bool disposed;

    public TensorScope()
    {
        parent = current;
        current = this;
    }

    public static TensorScope? Current => current;

    /// <summary>The tape recording this scope's differentiable ops.</summary>
    public Tape Tape { get; } = new();

    internal void Track(Tensor t) => tracked.Add(t);
    internal void Untrack(Tensor t) => tracked.Remove(t);

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        if (current != this) throw new InvalidOperationException("tensor scopes must be disposed in reverse order of creation");
        current = parent;
        Tape.Clear();
        foreach (var t in tracked) t.Dispose();
        tracked.Clear();
    }
}
