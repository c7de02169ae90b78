using Engine.Core.Autograd;

namespace Engine.Core;

/// <summary>
/// Lifetime of temporaries and owner of an autograd tape (TorchSharp's DisposeScope, with the tape a micro-batch
/// owns): every tensor created while the scope is current is freed when the scope is disposed, except those moved out
/// with <see cref="Tensor.Keep"/>, and every differentiable op run while it is current records into its
/// <see cref="Tape"/>.
/// <para>
/// Two ways to use one. <c>using var s = new TensorScope();</c> makes it current at once and until disposed (scopes
/// used so nest and end in reverse order). <see cref="Detached"/> creates a scope that is current only inside
/// <see cref="Activate"/>: a pipeline stage keeps several micro-batches — each a detached scope holding its activations
/// and tape — alive at once, runs a micro-batch's forward in one activation and its backward in a later one, and
/// disposes them in any order. Scopes are per thread.
/// </para>
/// </summary>
public sealed class TensorScope : IDisposable
{
    [ThreadStatic] static TensorScope? current;
    [ThreadStatic] static int liveTapes, peakLiveTapes;

    readonly HashSet<Tensor> tracked = new(ReferenceEqualityComparer.Instance);
    TensorScope? previous;
    bool active, disposed, counted;

    /// <summary>A scope that is current from now until it is disposed.</summary>
    public TensorScope()
    {
        Tape = new Tape(this);
        previous = current;
        current = this;
        active = true;
    }

    TensorScope(bool _) => Tape = new Tape(this);

    /// <summary>A scope that is current only inside <see cref="Activate"/> (a micro-batch of a pipeline schedule).</summary>
    public static TensorScope Detached() => new(false);

    public static TensorScope? Current => current;

    /// <summary>The tape recording this scope's differentiable ops.</summary>
    public Tape Tape { get; }

    /// <summary>Tapes of this thread holding recorded ops right now (micro-batches between forward and backward).</summary>
    public static int LiveTapes => liveTapes;
    /// <summary>The most <see cref="LiveTapes"/> seen on this thread since <see cref="ResetPeak"/>.</summary>
    public static int PeakLiveTapes => peakLiveTapes;
    public static void ResetPeak() => peakLiveTapes = liveTapes;

    internal void TapeStarted()
    {
        if (counted) return;
        counted = true;
        peakLiveTapes = Math.Max(peakLiveTapes, ++liveTapes);
    }

    internal void TapeEnded()
    {
        if (!counted) return;
        counted = false;
        liveTapes--;
    }

    /// <summary>Makes this scope current until the returned handle is disposed (then the previous one is again).</summary>
    public IDisposable Activate()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (active) throw new InvalidOperationException("this tensor scope is already current");
        previous = current;
        current = this;
        active = true;
        return new Activation(this);
    }

    sealed class Activation(TensorScope scope) : IDisposable
    {
        bool done;
        public void Dispose()
        {
            if (done) return;
            done = true;
            if (current != scope) throw new InvalidOperationException("tensor scope activations must end in reverse order");
            current = scope.previous;
            scope.previous = null;
            scope.active = false;
        }
    }

    internal void Track(Tensor t) => tracked.Add(t);
    internal void Untrack(Tensor t) => tracked.Remove(t);

    /// <summary>Frees the scope's tensors and its tape. A scope made current by its constructor must be the current one;
    /// a detached scope must not be active.</summary>
    public void Dispose()
    {
        if (disposed) return;
        if (active)
        {
            if (current != this) throw new InvalidOperationException("tensor scopes must be disposed in reverse order of creation");
            current = previous;
            active = false;
        }
        disposed = true;
        Tape.Clear();
        foreach (var t in tracked) t.Dispose();
        tracked.Clear();
    }
}
