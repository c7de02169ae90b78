using Engine.Core.Autograd;

namespace Engine.Core;

/// <summary>
/// Differentiable functions: validate shapes once, run the backend's forward, record a node whose backward uses
/// exactly what the forward saved. Names follow the op families (rmsnorm, rope, attention, swiglu, crossentropy).
/// </summary>
public static partial class F
{
    /// <summary>y = x W^T for x [N, in], W [out, in] (the Hugging Face / PyTorch Linear layout).</summary>
    public static Tensor Linear(Tensor x, Tensor w)
    {
        if (x.Rank != 2 || w.Rank != 2 || x.Shape[1] != w.Shape[1])
            throw new ArgumentException($"Linear: x {Shape.Format(x.Shape)} and weight {Shape.Format(w.Shape)} ({w.Name}) do not fit: expected x [N, {(w.Rank == 2 ? w.Shape[1] : -1)}]");
        var be = x.Backend;
        var y = be.Empty([x.Shape[0], w.Shape[0]], x.DType);
        using (Profiler.Time("linear.fwd")) be.MatMul(x, false, w, true, y);
        if (Grad.Needs(x, w))
        {
            Grad.Record(new LambdaNode([x, w], [y], () =>
            {
                using var prof = Profiler.Time("linear.bwd");
                var dy = y.Grad!;
                if (x.RequiresGrad)
                {
                    if (x.Grad == null && !x.IsParameter) { x.Grad = be.Empty(x.Shape, x.DType); be.MatMul(dy, false, w, false, x.Grad); }
                    else be.MatMul(dy, false, w, false, Grad.GradBuffer(x), 1f, 1f);
                }
                if (w.RequiresGrad) be.MatMul(dy, true, x, false, Grad.GradBuffer(w), 1f, 1f);
            }));
        }
        return y;
    }

    /// <summary>Rows of table [V, C] for ids [N] (int32).</summary>
    public static Tensor Embedding(Tensor ids, Tensor table)
    {
        if (ids.DType != DType.I32 || ids.Rank != 1) throw new ArgumentException($"Embedding: ids must be int32 [N], got {ids.Describe()}");
        if (table.Rank != 2) throw new ArgumentException($"Embedding: table must be [V, C], got {table.Describe()}");
        var be = table.Backend;
        var y = be.Empty([ids.Shape[0], table.Shape[1]], be.ActivationDType);
        using (Profiler.Time("embedding.fwd")) be.EmbeddingForward(ids, table, y);
        if (Grad.Needs(table))
            Grad.Record(new LambdaNode([table], [y], () =>
            {
                using var prof = Profiler.Time("embedding.bwd");
                be.EmbeddingBackward(ids, y.Grad!, Grad.GradBuffer(table));
            }));
        return y;
    }

    public static Tensor RmsNorm(Tensor x, Tensor w, float eps)
    {
        if (w.Rank != 1 || x.Rank != 2 || x.Shape[1] != w.Shape[0]) throw new ArgumentException($"RmsNorm: x {Shape.Format(x.Shape)} and weight {Shape.Format(w.Shape)} do not fit");
        var be = x.Backend;
        var y = be.Empty(x.Shape, x.DType);
        var rstd = be.Empty([x.Shape[0]]);
        using (Profiler.Time("rmsnorm.fwd")) be.RmsNormForward(x, w, y, rstd, eps);
        if (Grad.Needs(x, w))
        {
            Grad.Record(new LambdaNode([x, w], [y], () =>
            {
                using var prof = Profiler.Time("rmsnorm.bwd");
                var dx = be.Empty(x.Shape, x.DType);
                var dw = w.RequiresGrad ? Grad.GradBuffer(w) : be.Zeros(w.Shape);
                be.RmsNormBackward(y.Grad!, x, w, rstd, dx, dw);
                Grad.AccumulateOwned(x, dx);
            }));
        }
        return y;
    }

    /// <summary>
    /// The residual stream's add fused with the norm that reads it: h = x + residual and y = RMSNorm(h)·w (a
    /// transformer block's h = x + attention, then its post-attention norm). Same values and gradients as
    /// <see cref="Add"/> then <see cref="RmsNorm"/> — on the CPU bit for bit (the backward adds the two gradients that
    /// reach h in the other order, and addition commutes) — in one kernel each way on a GPU.
    /// </summary>
    public static (Tensor H, Tensor Y) AddRmsNorm(Tensor x, Tensor residual, Tensor w, float eps)
    {
        if (!x.Shape.AsSpan().SequenceEqual(residual.Shape)) throw new ArgumentException($"AddRmsNorm: shapes {Shape.Format(x.Shape)} and {Shape.Format(residual.Shape)} differ");
        if (w.Rank != 1 || x.Rank != 2 || x.Shape[1] != w.Shape[0]) throw new ArgumentException($"AddRmsNorm: x {Shape.Format(x.Shape)} and weight {Shape.Format(w.Shape)} do not fit");
        var be = x.Backend;
        var h = be.Empty(x.Shape, x.DType);
        var y = be.Empty(x.Shape, x.DType);
        var rstd = be.Empty([x.Shape[0]]);
        using (Profiler.Time("add_rmsnorm.fwd")) be.RmsNormResidualForward(x, residual, w, h, y, rstd, eps);
        if (Grad.Needs(x, residual, w))
        {
            Grad.Record(new LambdaNode([x, residual, w], [h, y], () =>
            {
                using var prof = Profiler.Time("add_rmsnorm.bwd");
                var dh = be.Empty(h.Shape, h.DType);
                var dw = w.RequiresGrad ? Grad.GradBuffer(w) : be.Zeros(w.Shape);
                if (y.Grad == null) be.Copy(h.Grad!, dh);
                else if (h.Grad == null) be.RmsNormBackward(y.Grad, h, w, rstd, dh, dw);
                else be.RmsNormResidualBackward(y.Grad, h, w, rstd, dh, dw, h.Grad);
                // as Add's backward: the first input may take the buffer, the second accumulates it
                if (x.RequiresGrad && x.Grad == null && !x.IsParameter) x.Grad = dh;
                else Grad.Accumulate(x, dh);
                Grad.Accumulate(residual, dh);
            }));
        }
        return (h, y);
    }

    /// <summary>Rotary embedding of x [B*T, H*D] at positions offset..offset+T-1.</summary>
    public static Tensor Rope(Tensor x, RopeParams p, int batch, int seqLen, int heads, int positionOffset = 0)
    {
        if (x.Rank != 2 || x.Shape[0] != batch * seqLen || x.Shape[1] != heads * p.HeadDim)
            throw new ArgumentException($"Rope: x {Shape.Format(x.Shape)} is not [B*T={batch * seqLen}, H*D={heads * p.HeadDim}]");
        var be = x.Backend;
        var y = be.Empty(x.Shape, x.DType);
        using (Profiler.Time("rope.fwd")) be.Rope(x, y, p, batch, seqLen, heads, positionOffset, inverse: false);
        if (Grad.Needs(x))
        {
            Grad.Record(new LambdaNode([x], [y], () =>
            {
                using var prof = Profiler.Time("rope.bwd");
                var dx = be.Empty(x.Shape, x.DType);
                be.Rope(y.Grad!, dx, p, batch, seqLen, heads, positionOffset, inverse: true);
                Grad.AccumulateOwned(x, dx);
            }));
        }
        return y;
    }

    /// <summary>Causal GQA attention: q [B*T, H*D], k/v [B*T, Hkv*D] → [B*T, H*D].</summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, AttentionDims d)
    {
        d.Validate();
        int n = d.Batch * d.SeqLen;
        Shape.Check(q, "q", n, d.QRow);
        Shape.Check(k, "k", n, d.KvRow);
        Shape.Check(v, "v", n, d.KvRow);
        var be = q.Backend;
        var o = be.Empty(q.Shape, q.DType);
        var lse = be.Empty([d.Batch, d.Heads, d.SeqLen]);
        using (Profiler.Time("attention.fwd")) be.AttentionForward(q, k, v, o, lse, d);
        if (Grad.Needs(q, k, v))
        {
            Grad.Record(new LambdaNode([q, k, v], [o], () =>
            {
                using var prof = Profiler.Time("attention.bwd");
                var dq = be.Empty(q.Shape, q.DType);
                var dk = be.Empty(k.Shape, k.DType);
                var dv = be.Empty(v.Shape, v.DType);
                be.AttentionBackward(o.Grad!, q, k, v, o, lse, dq, dk, dv, d);
                Grad.AccumulateOwned(q, dq);
                Grad.AccumulateOwned(k, dk);
                Grad.AccumulateOwned(v, dv);
            }));
        }
        return o;
    }

    public static Tensor SwiGlu(Tensor gate, Tensor up)
    {
        if (!gate.Shape.AsSpan().SequenceEqual(up.Shape)) throw new ArgumentException($"SwiGlu: gate {Shape.Format(gate.Shape)} and up {Shape.Format(up.Shape)} differ");
        var be = gate.Backend;
        var h = be.Empty(gate.Shape, gate.DType);
        using (Profiler.Time("swiglu.fwd")) be.SwiGluForward(gate, up, h);
        if (Grad.Needs(gate, up))
        {
            Grad.Record(new LambdaNode([gate, up], [h], () =>
            {
                using var prof = Profiler.Time("swiglu.bwd");
                var dg = be.Empty(gate.Shape, gate.DType);
                var du = be.Empty(up.Shape, up.DType);
                be.SwiGluBackward(h.Grad!, gate, up, dg, du);
                Grad.AccumulateOwned(gate, dg);
                Grad.AccumulateOwned(up, du);
            }));
        }
        return h;
    }

    public static Tensor Add(Tensor a, Tensor b)
    {
        if (!a.Shape.AsSpan().SequenceEqual(b.Shape)) throw new ArgumentException($"Add: shapes {Shape.Format(a.Shape)} and {Shape.Format(b.Shape)} differ");
        var be = a.Backend;
        var y = be.Empty(a.Shape, a.DType);
        using (Profiler.Time("add.fwd")) be.Add(a, b, y);
        if (Grad.Needs(a, b))
        {
            Grad.Record(new LambdaNode([a, b], [y], () =>
            {
                using var prof = Profiler.Time("add.bwd");
                // y's gradient is read by no one after this node: the first input may take the buffer itself
                if (a.RequiresGrad && a.Grad == null && !a.IsParameter) a.Grad = y.Grad!;
                else Grad.Accumulate(a, y.Grad!);
                Grad.Accumulate(b, y.Grad!);
            }));
        }
        return y;
    }

    /// <summary>W / ||row of W|| (Baichuan 2's NormHead), rows of [V, C].</summary>
    public static Tensor RowNormalize(Tensor w, float eps = 1e-12f)
    {
        if (w.Rank != 2) throw new ArgumentException($"RowNormalize: expected [V, C], got {w.Describe()}");
        var be = w.Backend;
        int rows = w.Shape[0], cols = w.Shape[1];
        var y = be.Empty(w.Shape);
        var inv = new float[rows];
        var ws = w.ToArray();
        var ys = new float[ws.Length];
        for (int r = 0; r < rows; r++)
        {
            var row = ws.AsSpan(r * cols, cols);
            float norm = MathF.Sqrt(System.Numerics.Tensors.TensorPrimitives.SumOfSquares(row));
            inv[r] = 1f / MathF.Max(norm, eps);
            System.Numerics.Tensors.TensorPrimitives.Multiply(row, inv[r], ys.AsSpan(r * cols, cols));
        }
        be.Upload(y, ys);
        if (Grad.Needs(w))
        {
            Grad.Record(new LambdaNode([w], [y], () =>
            {
                using var prof = Profiler.Time("rownorm.bwd");
                // dW = (dY - Y * rowdot(dY, Y)) / ||W||
                var dy = y.Grad!.ToArray();
                var dw = new float[dy.Length];
                for (int r = 0; r < rows; r++)
                {
                    var dyr = dy.AsSpan(r * cols, cols);
                    var yr = ys.AsSpan(r * cols, cols);
                    float dot = System.Numerics.Tensors.TensorPrimitives.Dot(dyr, yr);
                    var dwr = dw.AsSpan(r * cols, cols);
                    System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(yr, -dot, dyr, dwr);
                    System.Numerics.Tensors.TensorPrimitives.Multiply(dwr, inv[r], dwr);
                }
                var g = be.Empty(w.Shape);
                be.Upload(g, dw);
                Grad.AccumulateOwned(w, g);
            }));
        }
        return y;
    }

    /// <summary>
    /// Cross-entropy of logits [N, V] against int32 targets [N] (IgnoreIndex = -100 rows count nothing), plus
    /// zLoss·lse² and maxZLoss·max(logits)² (Baichuan 2's max-z loss). Returns the scalar loss sum(losses) / normalizer
    /// and the per-row losses (0 on ignored rows). When recording, the logits buffer is consumed: it is overwritten by its
    /// own gradient (materialised once).
    /// </summary>
    public static (Tensor Loss, Tensor RowLosses) CrossEntropy(Tensor logits, Tensor targets, float normalizer, float zLoss = 0f, float maxZLoss = 0f)
    {
        if (logits.Rank != 2) throw new ArgumentException($"CrossEntropy: logits must be [N, V], got {logits.Describe()}");
        if (targets.DType != DType.I32 || targets.Rank != 1 || targets.Shape[0] != logits.Shape[0])
            throw new ArgumentException($"CrossEntropy: targets must be int32 [{logits.Shape[0]}], got {targets.Describe()}");
        if (!(normalizer > 0)) throw new ArgumentOutOfRangeException(nameof(normalizer), $"normalizer must be positive, got {normalizer}");
        var be = logits.Backend;
        var losses = be.Empty([logits.Shape[0]]);
        var lse = be.Empty([logits.Shape[0]]);
        bool record = Grad.Needs(logits);
        using (Profiler.Time("crossentropy.fwd")) be.CrossEntropy(logits, targets, losses, lse, zLoss, record, 1f / normalizer, maxZLoss);
        // the scalar loss stays on the device, and so does its gradient seed below: no host read per micro-batch
        var loss = be.Empty([1]);
        be.SumInto(losses, loss, normalizer);
        if (record)
        {
            Grad.Record(new LambdaNode([logits], [loss], () =>
            {
                using var prof = Profiler.Time("crossentropy.bwd");
                be.ScaleBy(logits, loss.Grad!);   // dloss is 1 in training: x · 1 = x exactly
                if (logits.Grad == null) logits.Grad = logits; // the buffer already holds d loss / d logits
                else be.AddInPlace(logits.Grad, logits, 1f);
            }));
        }
        return (loss, losses);
    }

    /// <summary>
    /// Activation checkpointing: runs fn without recording, keeps only x, and recomputes fn with a tape of its own
    /// during backward. <paramref name="parameters"/> are the parameters fn reads: the recorded node names them as
    /// inputs so a backward observer knows their gradients are complete after it (data-parallel buckets).
    /// </summary>
    public static Tensor Checkpoint(Func<Tensor, Tensor> fn, Tensor x, IReadOnlyList<Tensor>? parameters = null)
    {
        if (!Grad.IsRecording) return fn(x);
        var be = x.Backend;
        var outer = TensorScope.Current!;
        Tensor y;
        // The forward's intermediates live in a scope of their own and are freed at once: only x and y are kept
        // (that is what checkpointing saves); y moves to the caller's scope, copied if fn returned a view.
        using (var temporaries = new TensorScope())
        using (Grad.NoGrad())
        {
            var r = fn(x);
            if (r.OwnsStorage && !ReferenceEquals(r, x)) y = r.Keep();
            else
            {
                y = be.Empty(r.Shape, r.DType).Keep();
                be.Copy(r, y);
            }
        }
        outer.Track(y);
        Grad.Record(new LambdaNode([x, .. parameters ?? []], [y], () =>
        {
            var seed = y.Grad!;
            Tensor? xGrad = x.RequiresGrad ? Grad.GradBuffer(x) : null;
            using var inner = new TensorScope();
            var xi = be.Empty(x.Shape, x.DType);
            be.Copy(x, xi);
            xi.RequiresGrad = true;
            var yi = fn(xi);
            Grad.Backward(yi, seed);
            if (xGrad != null && xi.Grad != null) be.AddInPlace(xGrad, xi.Grad, 1f);
        }));
        return y;
    }
}
