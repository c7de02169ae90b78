namespace Engine.Tests.Ops;

/// <summary>Plain double-precision references of every op, written independently of the engine's kernels.</summary>
public static class RefOps
{
    public static double[] Linear(double[] x, double[] w, int n, int inDim, int outDim)
    {
        var y = new double[n * outDim];
        for (int r = 0; r < n; r++)
            for (int o = 0; o < outDim; o++)
            {
                double s = 0;
                for (int i = 0; i < inDim; i++) s += x[r * inDim + i] * w[o * inDim + i];
                y[r * outDim + o] = s;
            }
        return y;
    }

    public static double[] RmsNorm(double[] x, double[] w, int rows, int cols, double eps)
    {
        var y = new double[x.Length];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int c = 0; c < cols; c++) ss += x[r * cols + c] * x[r * cols + c];
            double rstd = 1 / Math.Sqrt(ss / cols + eps);
            for (int c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c] * rstd * w[c];
        }
        return y;
    }

    public static double[] SwiGlu(double[] g, double[] u)
    {
        var h = new double[g.Length];
        for (int i = 0; i < g.Length; i++) h[i] = g[i] / (1 + Math.Exp(-g[i])) * u[i];
        return h;
    }

    /// <summary>HF rotate_half rotary embedding with angles in double.</summary>
    public static double[] Rope(double[] x, int batch, int seqLen, int heads, int headDim, double theta, int offset = 0, double linearFactor = 1)
    {
        var y = new double[x.Length];
        int half = headDim / 2;
        for (int b = 0; b < batch; b++)
            for (int t = 0; t < seqLen; t++)
                for (int h = 0; h < heads; h++)
                {
                    int baseIdx = ((b * seqLen + t) * heads + h) * headDim;
                    for (int i = 0; i < half; i++)
                    {
                        double angle = (t + offset) / linearFactor * Math.Pow(theta, -2.0 * i / headDim);
                        double c = Math.Cos(angle), s = Math.Sin(angle);
                        double x1 = x[baseIdx + i], x2 = x[baseIdx + i + half];
                        y[baseIdx + i] = x1 * c - x2 * s;
                        y[baseIdx + i + half] = x2 * c + x1 * s;
                    }
                }
        return y;
    }

    /// <summary>Causal GQA attention, full softmax per row; with <paramref name="alibiSlopes"/> (one per head) ALiBi's
    /// score bias slope_h · (j − i) for query i and key j.</summary>
    public static double[] Attention(double[] q, double[] k, double[] v, int batch, int seqLen, int heads, int kvHeads, int headDim,
        double[]? alibiSlopes = null)
    {
        var o = new double[q.Length];
        int group = heads / kvHeads;
        double scale = 1 / Math.Sqrt(headDim);
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < heads; h++)
            {
                int g = h / group;
                for (int i = 0; i < seqLen; i++)
                {
                    var s = new double[i + 1];
                    double m = double.NegativeInfinity;
                    for (int j = 0; j <= i; j++)
                    {
                        double d = 0;
                        for (int c = 0; c < headDim; c++)
                            d += q[((b * seqLen + i) * heads + h) * headDim + c] * k[((b * seqLen + j) * kvHeads + g) * headDim + c];
                        s[j] = d * scale + (alibiSlopes == null ? 0 : alibiSlopes[h] * (j - i));
                        m = Math.Max(m, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= i; j++) { s[j] = Math.Exp(s[j] - m); sum += s[j]; }
                    for (int c = 0; c < headDim; c++)
                    {
                        double acc = 0;
                        for (int j = 0; j <= i; j++) acc += s[j] / sum * v[((b * seqLen + j) * kvHeads + g) * headDim + c];
                        o[((b * seqLen + i) * heads + h) * headDim + c] = acc;
                    }
                }
            }
        return o;
    }

    /// <summary>Per-row loss lse - x[t] + z·lse² + maxZ·max(x)² (0 for ignored rows).</summary>
    public static double[] CrossEntropyRows(double[] logits, int[] targets, int vocab, double zLoss, double maxZ = 0)
    {
        var loss = new double[targets.Length];
        for (int r = 0; r < targets.Length; r++)
        {
            if (targets[r] == -100) continue;
            double m = double.NegativeInfinity;
            for (int j = 0; j < vocab; j++) m = Math.Max(m, logits[r * vocab + j]);
            double s = 0;
            for (int j = 0; j < vocab; j++) s += Math.Exp(logits[r * vocab + j] - m);
            double lse = m + Math.Log(s);
            loss[r] = lse - logits[r * vocab + targets[r]] + zLoss * lse * lse + maxZ * m * m;
        }
        return loss;
    }

    public static double[] RowNormalize(double[] w, int rows, int cols)
    {
        var y = new double[w.Length];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int c = 0; c < cols; c++) ss += w[r * cols + c] * w[r * cols + c];
            double n = Math.Sqrt(ss);
            for (int c = 0; c < cols; c++) y[r * cols + c] = w[r * cols + c] / n;
        }
        return y;
    }
}
