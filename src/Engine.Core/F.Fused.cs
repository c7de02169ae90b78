using Engine.Core.Autograd;

namespace Engine.Core;

/// <summary>
/// Fused projections (issue 23): weights that read the same input and sit one after another in the flat parameter
/// store (q|k|v, gate|up — the store lays parameters out in Hugging Face order) are one [Σout, in] view, so a single
/// GEMM computes all their outputs as the column blocks of one [N, Σout] row; the attention and SwiGLU ops then read
/// those blocks in place. The model uses them where <see cref="IBackend.FusesProjections"/> says so.
/// </summary>
public static partial class F
{
    /// <summary>Whether <paramref name="weights"/> are consecutive [out_i, in] views of one storage (one GEMM can cover them).</summary>
    public static bool Adjacent(IReadOnlyList<Tensor> weights)
    {
        if (weights.Count == 0 || weights[0].Rank != 2) return false;
        for (int i = 1; i < weights.Count; i++)
            if (weights[i].Rank != 2 || weights[i].Shape[1] != weights[0].Shape[1] || !ReferenceEquals(weights[i].Storage, weights[0].Storage)
                || weights[i].DType != weights[0].DType || weights[i].Offset != weights[i - 1].Offset + weights[i - 1].Numel)
                return false;
        return true;
    }

    /// <summary>The [Σout, in] view over adjacent weights.</summary>
    static Tensor Joined(IReadOnlyList<Tensor> parts) => new(parts[0].Storage, parts[0].Offset, [parts.Sum(w => w.Shape[0]), parts[0].Shape[1]], ownsStorage: false);

    /// <summary>
    /// y = x [W_0; W_1; …]ᵀ, [N, Σout_i]: <see cref="Linear"/> over adjacent weights (<see cref="Adjacent"/>) in one
    /// GEMM. Backward: dx in one GEMM; the weights' gradients in one GEMM when their buffers are adjacent too (the flat
    /// gradient buffer mirrors the store), else one per weight over a copy of its column block.
    /// </summary>
    public static Tensor FusedLinear(Tensor x, IReadOnlyList<Tensor> weights)
    {
        if (!Adjacent(weights)) throw new ArgumentException($"FusedLinear: {string.Join(", ", weights.Select(w => w.Name ?? w.Describe()))} are not adjacent [out, in] views of one buffer");
        if (x.Rank != 2 || x.Shape[1] != weights[0].Shape[1])
            throw new ArgumentException($"FusedLinear: x {Shape.Format(x.Shape)} does not fit weights of {weights[0].Shape[1]} inputs");
        var be = x.Backend;
        var w = Joined(weights);
        var y = be.Empty([x.Shape[0], w.Shape[0]], x.DType);
        using (Profiler.Time("linear.fwd")) be.MatMul(x, false, w, true, y);
        if (Grad.Needs([x, .. weights]))
        {
            Grad.Record(new LambdaNode([x, .. weights], [y], () =>
            {
                using var prof = Profiler.Time("linear.bwd");
                var dy = y.Grad!;
                if (x.RequiresGrad)
                {
                    if (x.Grad == null && !x.IsParameter) { x.Grad = be.Empty(x.Shape, x.DType); be.MatMul(dy, false, w, false, x.Grad); }
                    else be.MatMul(dy, false, w, false, Grad.GradBuffer(x), 1f, 1f);
                }
                var trainable = weights.Where(t => t.RequiresGrad).ToList();
                if (trainable.Count == 0) return;
                var grads = weights.Select(t => t.RequiresGrad ? Grad.GradBuffer(t) : null).ToList();
                var all = grads.Select(g => g!).ToList();
                if (trainable.Count == weights.Count && Adjacent(all)) be.MatMul(dy, true, x, false, Joined(all), 1f, 1f);
                else
                {
                    int col = 0;
                    for (int i = 0; i < weights.Count; i++)
                    {
                        int outI = weights[i].Shape[0];
                        if (grads[i] is { } g)
                        {
                            using var block = be.Empty([dy.Shape[0], outI], dy.DType);
                            be.CopyColumns(dy, col, block, 0, outI);
                            be.MatMul(block, true, x, false, g, 1f, 1f);
                        }
                        col += outI;
                    }
                }
            }));
        }
        return y;
    }

    /// <summary>
    /// RoPE on the q and k blocks of a fused q|k|v row (in place: nothing else reads the projection's output), then
    /// causal GQA attention reading q, k, v there; [B·T, H·D] out. The same values as <see cref="Rope"/> twice and
    /// <see cref="Attention"/> on separate tensors; the backward writes dq|dk|dv into one buffer and rotates dq, dk back.
    /// </summary>
    public static Tensor FusedQkvAttention(Tensor qkv, RopeParams rope, AttentionDims d, int positionOffset = 0)
    {
        d.Validate();
        int n = d.Batch * d.SeqLen;
        Shape.Check(qkv, "qkv", n, d.QRow + 2 * d.KvRow);
        var be = qkv.Backend;
        using (Profiler.Time("rope.fwd"))
        {
            be.RopeColumns(qkv, 0, rope, d.Batch, d.SeqLen, d.Heads, positionOffset, inverse: false);
            be.RopeColumns(qkv, d.QRow, rope, d.Batch, d.SeqLen, d.KvHeads, positionOffset, inverse: false);
        }
        var o = be.Empty([n, d.QRow], qkv.DType);
        var lse = be.Empty([d.Batch, d.Heads, d.SeqLen]);
        using (Profiler.Time("attention.fwd")) be.AttentionForwardFused(qkv, o, lse, d);
        if (Grad.Needs(qkv))
        {
            Grad.Record(new LambdaNode([qkv], [o], () =>
            {
                var dqkv = be.Empty(qkv.Shape, qkv.DType);
                using (Profiler.Time("attention.bwd")) be.AttentionBackwardFused(o.Grad!, qkv, o, lse, dqkv, d);
                using (Profiler.Time("rope.bwd"))
                {
                    be.RopeColumns(dqkv, 0, rope, d.Batch, d.SeqLen, d.Heads, positionOffset, inverse: true);
                    be.RopeColumns(dqkv, d.QRow, rope, d.Batch, d.SeqLen, d.KvHeads, positionOffset, inverse: true);
                }
                Grad.AccumulateOwned(qkv, dqkv);
            }));
        }
        return o;
    }

    /// <summary>silu(gate)·up for gu [N, 2F] whose rows are gate | up (<see cref="FusedLinear"/> of gate_proj, up_proj).</summary>
    public static Tensor FusedSwiGlu(Tensor gu)
    {
        if (gu.Rank != 2 || gu.Shape[1] % 2 != 0) throw new ArgumentException($"FusedSwiGlu: expected [N, 2F] (gate | up), got {gu.Describe()}");
        var be = gu.Backend;
        var h = be.Empty([gu.Shape[0], gu.Shape[1] / 2], gu.DType);
        using (Profiler.Time("swiglu.fwd")) be.SwiGluFusedForward(gu, h);
        if (Grad.Needs(gu))
        {
            Grad.Record(new LambdaNode([gu], [h], () =>
            {
                using var prof = Profiler.Time("swiglu.bwd");
                var dgu = be.Empty(gu.Shape, gu.DType);
                be.SwiGluFusedBackward(h.Grad!, gu, dgu);
                Grad.AccumulateOwned(gu, dgu);
            }));
        }
        return h;
    }
}
