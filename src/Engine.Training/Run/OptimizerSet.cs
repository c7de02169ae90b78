using Engine.Core.Autograd;
using Engine.Parallel;

namespace Engine.Training.Run;

/// <summary>
/// The optimizers of one trained model, one AdamW per trainable store (the model or its LoRA adapters; a scalar head's
/// own store beside it), each with its store's data parallelism. The loop and the pipeline runner drive them as one:
/// the gradient hooks of a step go to every store's <see cref="DataParallel"/> (<see cref="GradientSync"/>: each
/// launches its own buckets during the same backward), and an update steps each AdamW with its own gradient-norm
/// clip, the first (the body) first.
/// </summary>
public sealed class OptimizerSet
{
    readonly AdamW[] members;

    public OptimizerSet(params AdamW[] members)
    {
        if (members.Length == 0) throw new ArgumentException("an optimizer set needs at least one optimizer");
        this.members = members;
        Sync = new GradientSync(members.Select(m => m.Parallel).ToArray());
    }

    /// <summary>Every store's gradient hooks as one.</summary>
    public GradientSync Sync { get; }

    public IReadOnlyList<AdamW> Members => members;
    /// <summary>The body's optimizer: its gradient norm is the step's.</summary>
    public AdamW Primary => members[0];
    public DataParallel Parallel => Primary.Parallel;
    /// <summary>AdamW steps taken (the body's).</summary>
    public int Step => Primary.Step;
    /// <summary>This rank's AdamW moment bytes over every store.</summary>
    public long StateBytes => members.Sum(m => m.StateBytes);

    /// <summary>Steps every optimizer; returns the body's pre-clip gradient norm. A non-finite body norm throws before
    /// any store is written (<see cref="NonFiniteGradientException"/>).</summary>
    public double Update(double lr)
    {
        double norm = members[0].Update(lr);
        for (int i = 1; i < members.Length; i++) members[i].Update(lr);
        return norm;
    }
}

/// <summary>The data-parallel gradient hooks of one or more stores, called as one (DataParallel's call order: BeginStep,
/// per micro-batch BeginMicroBatch → backward with this as observer → EndMicroBatch, then FinishGradients).</summary>
public sealed class GradientSync(params DataParallel[] parts) : IBackwardObserver
{
    public void BeginStep() { foreach (var p in parts) p.BeginStep(); }
    public void BeginMicroBatch(bool last) { foreach (var p in parts) p.BeginMicroBatch(last); }
    public void EndMicroBatch() { foreach (var p in parts) p.EndMicroBatch(); }
    public void FinishGradients() { foreach (var p in parts) p.FinishGradients(); }
    public void BeforeBackward(IReadOnlyList<Node> nodes) { foreach (var p in parts) p.BeforeBackward(nodes); }
    public void AfterNode(int index) { foreach (var p in parts) p.AfterNode(index); }
}
