namespace Engine.Cuda.Tests.Reference;

/// <summary>
/// Attention in fp64 with the full T x T matrix (fine at test sizes): q/o [B, T, H, D], k/v [B, T, Hkv, D],
/// query head h uses kv head h / (H / Hkv), scale 1/sqrt(D), lse [B, H, T]; with <c>alibiSlopes</c> (one per query
/// head) ALiBi's bias slope_h · (j − i) is added to every score.
/// </summary>
public static class AttentionReference
{
    public sealed record Result(double[] O, double[] Lse, double[] Dq, double[] Dk, double[] Dv);

    public static Result Compute(float[] q, float[] k, float[] v, float[] dout, int B, int T, int H, int Hkv, int D, bool causal,
        double[]? alibiSlopes = null)
    {
        var o = new double[q.Length];
        var lse = new double[B * H * T];
        var dq = new double[q.Length];
        var dk = new double[k.Length];
        var dv = new double[v.Length];
        double scale = 1 / Math.Sqrt(D);
        int group = H / Hkv;
        var p = new double[T, T];
        var dp = new double[T];
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
            {
                int hk = h / group;
                int Q(int t, int d) => ((b * T + t) * H + h) * D + d;
                int K(int t, int d) => ((b * T + t) * Hkv + hk) * D + d;
                for (int i = 0; i < T; i++)
                {
                    double m = double.NegativeInfinity;
                    var s = new double[T];
                    for (int j = 0; j < T; j++)
                    {
                        if (causal && j > i) { s[j] = double.NegativeInfinity; continue; }
                        double acc = 0;
                        for (int d = 0; d < D; d++) acc += (double)q[Q(i, d)] * k[K(j, d)];
                        s[j] = acc * scale + (alibiSlopes == null ? 0 : alibiSlopes[h] * (j - i));
                        m = Math.Max(m, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < T; j++) sum += s[j] == double.NegativeInfinity ? 0 : Math.Exp(s[j] - m);
                    double l = m + Math.Log(sum);
                    lse[(b * H + h) * T + i] = l;
                    for (int j = 0; j < T; j++) p[i, j] = s[j] == double.NegativeInfinity ? 0 : Math.Exp(s[j] - l);
                    for (int d = 0; d < D; d++)
                    {
                        double acc = 0;
                        for (int j = 0; j < T; j++) acc += p[i, j] * v[K(j, d)];
                        o[Q(i, d)] = acc;
                    }
                }
                for (int i = 0; i < T; i++)
                {
                    double delta = 0;
                    for (int d = 0; d < D; d++) delta += dout[Q(i, d)] * o[Q(i, d)];
                    for (int j = 0; j < T; j++)
                    {
                        double acc = 0;
                        for (int d = 0; d < D; d++) acc += (double)dout[Q(i, d)] * v[K(j, d)];
                        dp[j] = acc;
                    }
                    for (int j = 0; j < T; j++)
                    {
                        if (p[i, j] == 0) continue;
                        double ds = p[i, j] * (dp[j] - delta);
                        for (int d = 0; d < D; d++)
                        {
                            dv[K(j, d)] += p[i, j] * dout[Q(i, d)];
                            dq[Q(i, d)] += scale * ds * k[K(j, d)];
                            dk[K(j, d)] += scale * ds * q[Q(i, d)];
                        }
                    }
                }
            }
        return new Result(o, lse, dq, dk, dv);
    }
}
