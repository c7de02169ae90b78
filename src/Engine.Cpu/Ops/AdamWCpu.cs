using System.Runtime.Intrinsics;

namespace Engine.Cpu.Ops;

/*
 * AdamW (Loshchilov & Hutter), exactly PyTorch's torch.optim.AdamW update, fp32 state:
 *   g = grad * gradScale            (gradScale carries global-norm clipping)
 *   p = p * (1 - lr * wd)           (decoupled weight decay)
 *   m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
 *   p = p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 */
public static class AdamWCpu
{
    public static void Update(Span<float> param, ReadOnlySpan<float> grad, Span<float> m, Span<float> v,
        float lr, float beta1, float beta2, float eps, float weightDecay, int step, float gradScale = 1f)
    {
        if (step < 1) throw new ArgumentOutOfRangeException(nameof(step), "AdamW step counts from 1");
        float bc1 = 1f - MathF.Pow(beta1, step);
        float bc2Sqrt = MathF.Sqrt(1f - MathF.Pow(beta2, step));
        float stepSize = lr / bc1;
        float decay = 1f - lr * weightDecay;
        float b1 = beta1, b2 = beta2, gs = gradScale;
        unsafe
        {
            fixed (float* pp = param, pg = grad, pm = m, pv = v)
            {
                float* P = pp, G = pg, M = pm, V = pv;
                Parallelism.For(param.Length, 65536, (lo, hi) =>
                {
                    int i = lo;
                    if (Vector512.IsHardwareAccelerated)
                    {
                        var vb1 = Vector512.Create(b1); var vb1c = Vector512.Create(1f - b1);
                        var vb2 = Vector512.Create(b2); var vb2c = Vector512.Create(1f - b2);
                        var vgs = Vector512.Create(gs); var vdec = Vector512.Create(decay);
                        var vstep = Vector512.Create(stepSize); var vinv = Vector512.Create(1f / bc2Sqrt); var veps = Vector512.Create(eps);
                        for (; i <= hi - 16; i += 16)
                        {
                            var g = Vector512.Load(G + i) * vgs;
                            var mi = Vector512.FusedMultiplyAdd(vb1, Vector512.Load(M + i), vb1c * g);
                            var vi = Vector512.FusedMultiplyAdd(vb2, Vector512.Load(V + i), vb2c * g * g);
                            mi.Store(M + i);
                            vi.Store(V + i);
                            var denom = Vector512.FusedMultiplyAdd(Vector512.Sqrt(vi), vinv, veps);
                            (Vector512.Load(P + i) * vdec - vstep * mi / denom).Store(P + i);
                        }
                    }
                    for (; i < hi; i++)
                    {
                        float g = G[i] * gs;
                        float mi = M[i] = b1 * M[i] + (1f - b1) * g;
                        float vi = V[i] = b2 * V[i] + (1f - b2) * g * g;
                        P[i] = P[i] * decay - stepSize * mi / (MathF.Sqrt(vi) / bc2Sqrt + eps);
                    }
                });
            }
        }
    }
}
