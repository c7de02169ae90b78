using Engine.Core.Autograd;

namespace Engine.Core;

/*
 * LoRA (Hu et al. 2021) on a Linear layer, as PEFT computes it:
 *   z = y + s · (drop(x) Aᵀ) Bᵀ        y = x Wᵀ [N, out] (the frozen layer's output), x [N, in],
 *                                       A [r, in] (lora_A), B [out, r] (lora_B), s = alpha / r (or alpha / √r)
 * drop(x) = x ⊙ mask, mask ∈ {0, 1/(1−p)} drawn by the caller (PEFT's nn.Dropout on the adapter's input only).
 * Backward, with u = drop(x) Aᵀ [N, r] saved from forward and dz given:
 *   dy += dz              dB += s · dzᵀ u            du = s · dz B [N, r]
 *   dA += duᵀ drop(x)     dx += (du A) ⊙ mask
 * Precision: the backend's MatMul (fp32 on the CPU; bf16 inputs with fp32 accumulation on CUDA); A and B gradients
 * accumulate into their fp32 store views.
 */
public static partial class F
{
    /// <summary>
    /// y + scale · (drop(x) Aᵀ) Bᵀ: a LoRA adapter added to a Linear layer's output y = x Wᵀ. <paramref name="dropoutMask"/>
    /// (x's element count, values 0 or 1/(1−p)) multiplies x on the adapter path only; null = no dropout. B's rows
    /// [bRow, bRow + out) are used (out = y's width): one part of a packed layer's adapter (Baichuan's W_pack feeds q, k
    /// and v; its B [3C, r] holds all three), whose gradient lands in those rows of B's.
    /// </summary>
    public static Tensor Lora(Tensor y, Tensor x, Tensor a, Tensor b, float scale, float[]? dropoutMask = null, int bRow = 0)
    {
        if (x.Rank != 2 || a.Rank != 2 || b.Rank != 2 || y.Rank != 2 || a.Shape[1] != x.Shape[1] || b.Shape[1] != a.Shape[0]
            || y.Shape[0] != x.Shape[0] || bRow < 0 || bRow + y.Shape[1] > b.Shape[0])
            throw new ArgumentException($"Lora: y {Shape.Format(y.Shape)}, x {Shape.Format(x.Shape)}, A {Shape.Format(a.Shape)} ({a.Name}), " +
                $"B {Shape.Format(b.Shape)} ({b.Name}) rows from {bRow} do not fit: expected x [N, in], A [r, in], B [>= row + out, r], y [N, out]");
        if (dropoutMask != null && dropoutMask.Length != x.Numel)
            throw new ArgumentException($"Lora: dropout mask holds {dropoutMask.Length} values, x has {x.Numel}");
        var full = b;   // the parameter (gradients go to its rows); b: the rows this output uses
        b = bRow == 0 && b.Shape[0] == y.Shape[1] ? b : b.Narrow0(bRow, y.Shape[1]);
        var be = x.Backend;
        int n = x.Shape[0], r = a.Shape[0];
        var xd = dropoutMask == null ? x : Masked(x, dropoutMask);
        var u = be.Empty([n, r], x.DType);
        var z = be.Empty(y.Shape, y.DType);
        using (Profiler.Time("lora.fwd"))
        {
            be.MatMul(xd, false, a, true, u);
            be.Copy(y, z);
            be.MatMul(u, false, b, true, z, scale, 1f);
        }
        if (Grad.Needs(y, x, a, full))
        {
            Grad.Record(new LambdaNode([y, x, a, full], [z], () =>
            {
                using var prof = Profiler.Time("lora.bwd");
                var dz = z.Grad!;
                if (full.RequiresGrad)
                {
                    var gb = Grad.GradBuffer(full);
                    be.MatMul(dz, true, u, false, ReferenceEquals(b, full) ? gb : gb.Narrow0(bRow, b.Shape[0]), scale, 1f);
                }
                if (a.RequiresGrad || x.RequiresGrad)
                {
                    var du = be.Empty([n, r], dz.DType);
                    be.MatMul(dz, false, b, false, du, scale, 0f);
                    if (a.RequiresGrad) be.MatMul(du, true, xd, false, Grad.GradBuffer(a), 1f, 1f);
                    if (x.RequiresGrad)
                    {
                        var dx = be.Empty(x.Shape, x.DType);
                        be.MatMul(du, false, a, false, dx);
                        Grad.AccumulateOwned(x, dropoutMask == null ? dx : Masked(dx, dropoutMask));
                    }
                }
                // last: y may take dz itself as its gradient buffer
                if (y.RequiresGrad && y.Grad == null && !y.IsParameter) y.Grad = dz;
                else Grad.Accumulate(y, dz);
            }));
        }
        return z;
    }

    /// <summary>t ⊙ mask as a new tensor (through the host: dropout masks are drawn there).</summary>
    static Tensor Masked(Tensor t, float[] mask)
    {
        var values = t.ToArray();
        System.Numerics.Tensors.TensorPrimitives.Multiply(values, mask, values);
        var o = t.Backend.Empty(t.Shape, t.DType);
        t.Backend.Upload(o, values);
        return o;
    }
}
