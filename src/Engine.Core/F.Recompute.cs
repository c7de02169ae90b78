using Engine.Core.Autograd;

namespace Engine.Core;

public static partial class F
{
    /// <summary>
    /// Records a mark whose <paramref name="backward"/> runs when backward reaches this point of the tape (module
    /// backward hooks): a mark recorded before a group of ops runs after their backward, one recorded after them before
    /// it. Nothing is recorded outside a recording scope.
    /// </summary>
    public static void OnBackward(Action backward)
    {
        if (Grad.IsRecording) Grad.Record(new HookNode(backward));
    }

    /// <summary>
    /// Selective activation recompute (Megatron-LM's): y = fn(inputs) runs without recording and consumer(y) — a GEMM,
    /// whose output is kept — runs recorded; then y's elements are given back, so neither y nor fn's intermediates
    /// stay alive until backward. Backward meets, in this order: a mark recorded after the consumer, which recomputes fn
    /// with a tape of its own and refills y for the consumer's backward to read; the consumer's backward; a node recorded
    /// before the consumer, which carries y's gradient back through that tape to the inputs; and a mark that frees the
    /// recomputed tape. The values are those of the plain forward bit for bit, so the gradients are too. fn must be
    /// deterministic, read no parameters, and y must have no reader but the consumer.
    /// </summary>
    public static Tensor Recompute(Func<Tensor[], Tensor> fn, Func<Tensor, Tensor> consumer, params Tensor[] inputs)
    {
        bool any = false;
        foreach (var x in inputs) any |= x.RequiresGrad;
        if (!Grad.IsRecording || !any) return consumer(fn(inputs));
        var be = inputs[0].Backend;
        var outer = TensorScope.Current!;
        Tensor y;
        using (var temporaries = new TensorScope())
        using (Grad.NoGrad())
        {
            var r = fn(inputs);
            bool fresh = r.OwnsStorage;
            foreach (var x in inputs) fresh &= !ReferenceEquals(x.Storage, r.Storage);
            if (fresh) y = r.Keep();
            else
            {
                y = be.Empty(r.Shape, r.DType).Keep();
                be.Copy(r, y);
            }
        }
        outer.Track(y);

        TensorScope? tape = null;
        Tensor? yi = null;
        Tensor[] xs = [];
        OnBackward(() => { tape?.Dispose(); tape = null; });   // last: the recomputed tape goes
        Grad.Record(new LambdaNode(inputs, [y], () =>
        {
            if (tape == null || yi == null) throw new InvalidOperationException("selective recompute: the gradient of a recomputed activation arrived before its recompute");
            var grads = new Tensor?[inputs.Length];
            using (tape.Activate())
            {
                Grad.Backward(yi, y.Grad!);
                for (int i = 0; i < xs.Length; i++)
                {
                    var g = xs[i].Grad;
                    if (g == null || !inputs[i].RequiresGrad) continue;
                    if (g.OwnsStorage) grads[i] = g.Keep();
                    else Grad.Accumulate(inputs[i], g);   // a view of a buffer the recomputed tape owns: copied now
                }
            }
            for (int i = 0; i < grads.Length; i++)
                if (grads[i] is { } g)
                {
                    TensorScope.Current?.Track(g);
                    Grad.AccumulateOwned(inputs[i], g);
                }
        }));
        var z = consumer(y);
        y.Storage.Evict();
        OnBackward(() =>   // first: recompute fn and refill y before the consumer's backward reads it
        {
            tape = TensorScope.Detached();
            using (tape.Activate())
            {
                xs = new Tensor[inputs.Length];
                for (int i = 0; i < inputs.Length; i++)
                {
                    xs[i] = inputs[i].View(inputs[i].Shape);
                    xs[i].RequiresGrad = inputs[i].RequiresGrad;
                }
                yi = fn(xs);
            }
            y.Storage.Restore();
            be.Copy(yi, y);
        });
        return z;
    }
}
