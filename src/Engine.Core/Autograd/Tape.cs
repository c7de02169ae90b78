namespace Engine.Core.Autograd;

/// <summary>One recorded differentiable op: its backward reads the outputs' gradients and accumulates into the inputs'.</summary>
public abstract class Node
{
    protected Node(Tensor[] inputs, Tensor[] outputs) { Inputs = inputs; Outputs = outputs; }
    public Tensor[] Inputs { get; }
    public Tensor[] Outputs { get; }
    public abstract void Backward();
}

/// <summary>A node whose backward is a closure (for ops defined in terms of other ops).</summary>
public sealed class LambdaNode(Tensor[] inputs, Tensor[] outputs, Action backward) : Node(inputs, outputs)
{
    public override void Backward() => backward();
}

/// <summary>A mark on the tape with no inputs or outputs: backward runs its callback when it reaches the mark's place
/// (whether or not a gradient flowed there), so a callback recorded before a group of ops runs after their backward and
/// one recorded after them runs before it (module backward hooks: <see cref="F.OnBackward"/>).</summary>
public sealed class HookNode(Action backward) : Node([], [])
{
    public override void Backward() => backward();
}

/// <summary>
/// Watches a backward pass node by node (data parallelism launches a gradient bucket's reduction as soon as the
/// last node that contributes to it has run).
/// </summary>
public interface IBackwardObserver
{
    /// <summary>The tape about to run, in recording order (backward visits it from the end).</summary>
    void BeforeBackward(IReadOnlyList<Node> nodes);
    /// <summary>Node <paramref name="index"/> (recording order) has run, or was skipped because no gradient reached it.</summary>
    void AfterNode(int index);
}

/// <summary>The ordered list of ops recorded in one scope (one micro-batch).</summary>
public sealed class Tape
{
    readonly List<Node> nodes = new();
    readonly TensorScope owner;

    internal Tape(TensorScope owner) => this.owner = owner;

    public int Count => nodes.Count;

    internal void Add(Node n)
    {
        if (nodes.Count == 0) owner.TapeStarted();
        nodes.Add(n);
    }

    public void Clear()
    {
        nodes.Clear();
        owner.TapeEnded();
    }

    /// <summary>Runs every node's backward in reverse order of recording, skipping nodes no gradient reached.</summary>
    public void Backward(IBackwardObserver? observer = null)
    {
        observer?.BeforeBackward(nodes);
        for (int i = nodes.Count - 1; i >= 0; i--)
        {
            var n = nodes[i];
            bool any = n is HookNode;
            foreach (var o in n.Outputs) if (o.Grad != null) { any = true; break; }
            if (any)
            {
                n.Backward();
                FreeOutputGradients(n);
            }
            observer?.AfterNode(i);
        }
        Clear();
    }

    /// <summary>
    /// Once a node's backward has run, its outputs' gradients are complete and read by no one (nodes run in reverse
    /// recording order, so every consumer of an output has already run): they are freed now rather than at the end of
    /// the scope, as PyTorch's autograd does, so a step's peak holds the activations plus a few layers' gradients, not
    /// every activation's gradient. A buffer handed on to an input (Add passes its gradient through, a reshape's is a
    /// view of it; cross-entropy's logits are their own gradient) and parameters' gradients (the flat store) are left alone.
    /// </summary>
    static void FreeOutputGradients(Node n)
    {
        foreach (var o in n.Outputs)
        {
            var g = o.Grad;
            if (g == null || o.IsParameter || ReferenceEquals(g.Storage, o.Storage)) continue;
            bool handedOn = false;
            foreach (var x in n.Inputs)
                if (ReferenceEquals(x.Grad?.Storage, g.Storage) || ReferenceEquals(x.Storage, g.Storage)) { handedOn = true; break; }
            if (handedOn) continue;
            o.Grad = null;
            g.Dispose();
        }
    }
}

/// <summary>Gradient recording switches and the entry point of backward.</summary>
public static class Grad
{
    [ThreadStatic] static int noGradDepth;

    /// <summary>True when ops should record themselves (inside a scope, not under <see cref="NoGrad"/>).</summary>
    public static bool IsRecording => noGradDepth == 0 && TensorScope.Current != null;

    /// <summary>Disables recording until the returned handle is disposed (evaluation, generation).</summary>
    public static IDisposable NoGrad() => new NoGradHandle();

    sealed class NoGradHandle : IDisposable
    {
        bool done;
        public NoGradHandle() => noGradDepth++;
        public void Dispose() { if (!done) { done = true; noGradDepth--; } }
    }

    /// <summary>Whether an op over these inputs must be recorded.</summary>
    public static bool Needs(params Tensor[] inputs)
    {
        if (!IsRecording) return false;
        foreach (var t in inputs) if (t.RequiresGrad) return true;
        return false;
    }

    public static void Record(Node node)
    {
        foreach (var o in node.Outputs) o.RequiresGrad = true;
        TensorScope.Current!.Tape.Add(node);
    }

    /// <summary>Backpropagates from a scalar (seed 1) or from an explicit upstream gradient.</summary>
    public static void Backward(Tensor output, Tensor? seed = null, IBackwardObserver? observer = null)
    {
        var scope = TensorScope.Current ?? throw new InvalidOperationException("backward needs the tensor scope in which the forward was recorded");
        if (seed == null)
        {
            if (output.Numel != 1) throw new ArgumentException($"backward without a seed needs a scalar, got {output.Describe()}");
            seed = output.Backend.Empty(output.Shape);
            output.Backend.Fill(seed, 1f);
        }
        else if (seed.Numel != output.Numel) throw new ArgumentException($"seed {seed.Describe()} does not match {output.Describe()}");
        output.Grad = seed;
        scope.Tape.Backward(observer);
    }

    /// <summary>Accumulates g into t.Grad (allocating it on first use) when t wants a gradient.</summary>
    public static void Accumulate(Tensor t, Tensor g)
    {
        if (!t.RequiresGrad) return;
        if (t.Grad == null && !t.IsParameter)
        {
            t.Grad = t.Backend.Empty(t.Shape, t.DType);
            t.Backend.Copy(g, t.Grad);
        }
        else t.Backend.AddInPlace(GradBuffer(t), g, 1f);
    }

    /// <summary>Like <see cref="Accumulate"/> for a freshly computed buffer no one else holds: taken over, not copied.</summary>
    public static void AccumulateOwned(Tensor t, Tensor g)
    {
        if (!t.RequiresGrad) return;
        if (t.Grad == null && !t.IsParameter) t.Grad = g;
        else Accumulate(t, g);
    }

    /// <summary>Returns t.Grad, allocating it as zeros first if needed, for ops that accumulate directly.</summary>
    public static Tensor GradBuffer(Tensor t)
    {
        if (t.Grad != null) return t.Grad;
        if (t.GradSource != null) return t.GradSource.Acquire(t);
        t.Grad = t.Backend.Zeros(t.Shape);
        if (t.IsParameter) t.Grad.Keep();
        return t.Grad;
    }
}
