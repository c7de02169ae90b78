using Engine.Core;
using Engine.Core.Autograd;

namespace Engine.Training.Alignment;

/// <summary>
/// Differentiable bridges from device tensors to the fp64 host math of <see cref="AlignmentMath"/>: per-token
/// log-probabilities of chosen tokens (with entropies), and scalar losses of a small vector. Both move data with the
/// backend's Download/Upload only, so every backend runs them (like <see cref="F.RowNormalize"/>); the logits of a
/// rollout batch are the largest thing read back ([N, V]). The math is fp64 on the host.
/// </summary>
public static class HostOps
{
    /// <summary>
    /// log softmax(logits)[row, targets[row]] for logits [N, V]; rows with a negative target give 0 and no gradient.
    /// Entropies (of the full distribution, not differentiated) come back for those rows too. Backward:
    /// ∂/∂z_rj = g_r (1[j = target] − p_rj).
    /// </summary>
    public static (Tensor LogProbs, double[] Values, double[] Entropy) TokenLogProbs(Tensor logits, int[] targets)
    {
        if (logits.Rank != 2) throw new ArgumentException($"TokenLogProbs: logits must be [N, V], got {logits.Describe()}");
        int n = logits.Shape[0], v = logits.Shape[1];
        if (targets.Length != n) throw new ArgumentException($"TokenLogProbs: {targets.Length} targets for {n} rows");
        var be = logits.Backend;
        var z = new float[(long)n * v];
        be.Download(logits, z);
        var lse = new double[n];
        var values = new double[n];
        var entropy = new double[n];
        var y = new float[n];
        for (int r = 0; r < n; r++)
        {
            if (targets[r] < 0) continue;
            if (targets[r] >= v) throw new ArgumentException($"TokenLogProbs: target {targets[r]} outside the vocabulary of {v}");
            var row = z.AsSpan(r * v, v);
            double m = double.NegativeInfinity;
            foreach (var x in row) m = Math.Max(m, x);
            double s = 0, sz = 0;
            foreach (var x in row) { double e = Math.Exp(x - m); s += e; sz += e * x; }
            lse[r] = m + Math.Log(s);
            values[r] = row[targets[r]] - lse[r];
            entropy[r] = lse[r] - sz / s;
            y[r] = (float)values[r];
        }
        var outT = be.Empty([n]);
        be.Upload(outT, y);
        if (Grad.Needs(logits))
        {
            Grad.Record(new LambdaNode([logits], [outT], () =>
            {
                var g = outT.Grad!.ToArray();
                var d = new float[(long)n * v];
                for (int r = 0; r < n; r++)
                {
                    if (targets[r] < 0 || g[r] == 0) continue;
                    var row = z.AsSpan(r * v, v);
                    var dr = d.AsSpan(r * v, v);
                    for (int j = 0; j < v; j++) dr[j] = (float)(-g[r] * Math.Exp(row[j] - lse[r]));
                    dr[targets[r]] += g[r];
                }
                var dt = be.Empty(logits.Shape, logits.DType);
                be.Upload(dt, d);
                Grad.AccumulateOwned(logits, dt);
            }));
        }
        return (outT, values, entropy);
    }

    /// <summary>A scalar [1] computed on the host from x's values by f, which returns the value and ∂value/∂x.</summary>
    public static Tensor Scalar(Tensor x, Func<double[], (double Value, double[] Grad)> f)
    {
        var be = x.Backend;
        var xf = x.ToArray();
        var xs = new double[xf.Length];
        for (int i = 0; i < xs.Length; i++) xs[i] = xf[i];
        var (value, grad) = f(xs);
        if (grad.Length != xs.Length) throw new InvalidOperationException($"host loss returned {grad.Length} gradients for {xs.Length} inputs");
        var y = be.Empty([1]);
        be.Upload(y, [(float)value]);
        if (Grad.Needs(x))
        {
            Grad.Record(new LambdaNode([x], [y], () =>
            {
                float dy = y.Grad!.Item();
                var d = new float[grad.Length];
                for (int i = 0; i < d.Length; i++) d[i] = (float)(grad[i] * dy);
                var dt = be.Empty(x.Shape, x.DType);
                be.Upload(dt, d);
                Grad.AccumulateOwned(x, dt);
            }));
        }
        return y;
    }
}
