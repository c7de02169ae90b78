namespace Engine.Cuda.Tests.Reference;

/// <summary>Straightforward fp64 references for the row-wise and element-wise kernels (inputs are bf16 values).</summary>
public static class RmsNormReference
{
    /// <summary>h = x + residual rounded to bf16 (as the kernel stores it) when residual is given; y = h rstd w.</summary>
    public static (double[] Y, float[] Rstd, float[] H) Forward(float[] x, float[]? residual, float[] w, int rows, int cols, float eps)
    {
        var h = new float[x.Length];
        for (int i = 0; i < x.Length; i++) h[i] = residual is null ? x[i] : Bf16.Round(x[i] + residual[i]);
        var y = new double[x.Length];
        var rstd = new float[rows];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int c = 0; c < cols; c++) ss += (double)h[r * cols + c] * h[r * cols + c];
            double rs = 1.0 / Math.Sqrt(ss / cols + eps);
            rstd[r] = (float)rs;
            for (int c = 0; c < cols; c++) y[r * cols + c] = h[r * cols + c] * rs * w[c];
        }
        return (y, rstd, h);
    }

    public static (double[] Dx, double[] Dw) Backward(float[] dy, float[] x, float[] w, float[] rstd, float[]? dres, int rows, int cols)
    {
        var dx = new double[x.Length];
        var dw = new double[cols];
        for (int r = 0; r < rows; r++)
        {
            double rs = rstd[r], dot = 0;
            for (int c = 0; c < cols; c++) dot += (double)dy[r * cols + c] * w[c] * x[r * cols + c] * rs;
            double mean = dot / cols;
            for (int c = 0; c < cols; c++)
            {
                int i = r * cols + c;
                double n = x[i] * rs;
                dx[i] = rs * (dy[i] * (double)w[c] - n * mean) + (dres is null ? 0 : dres[i]);
                dw[c] += dy[i] * n;
            }
        }
        return (dx, dw);
    }
}

public static class SwiGluReference
{
    private static double Sig(double g) => 1 / (1 + Math.Exp(-g));
    public static double[] Forward(float[] g, float[] u) => g.Select((x, i) => x * Sig(x) * u[i]).ToArray();
    public static (double[] Dg, double[] Du) Backward(float[] dh, float[] g, float[] u)
    {
        var dg = new double[g.Length];
        var du = new double[g.Length];
        for (int i = 0; i < g.Length; i++)
        {
            double s = Sig(g[i]);
            du[i] = dh[i] * g[i] * s;
            dg[i] = dh[i] * u[i] * s * (1 + g[i] * (1 - s));
        }
        return (dg, du);
    }
}

/// <summary>RoPE exactly as the CPU reference forms the angle: fp32 position times fp32 inv_freq, sin/cos in fp32.</summary>
public static class RopeReference
{
    public static double[] Apply(float[] x, float[] invFreq, int batch, int seqLen, int heads, int d, long offset, float linearFactor, bool inverse)
    {
        int half = d / 2;
        var y = new double[x.Length];
        for (int row = 0; row < batch * seqLen; row++)
        {
            float pos = (float)(row % seqLen + offset);
            if (linearFactor != 1f) pos /= linearFactor;
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < half; i++)
                {
                    float angle = pos * invFreq[i];
                    double c = MathF.Cos(angle), s = MathF.Sin(angle) * (inverse ? -1 : 1);
                    int b0 = (row * heads + h) * d;
                    double x1 = x[b0 + i], x2 = x[b0 + i + half];
                    y[b0 + i] = x1 * c - x2 * s;
                    y[b0 + i + half] = x2 * c + x1 * s;
                }
        }
        return y;
    }
}

public static class CrossEntropyReference
{
    public static (double[] Loss, double[] Lse, double[] DLogits) Compute(float[] logits, int[] targets, int rows, int vocab, float zc, float[]? dloss, float dlossScale, int ignore = -100)
    {
        var loss = new double[rows];
        var lse = new double[rows];
        var d = new double[logits.Length];
        for (int r = 0; r < rows; r++)
        {
            double m = double.NegativeInfinity;
            for (int j = 0; j < vocab; j++) m = Math.Max(m, logits[r * vocab + j]);
            double s = 0;
            for (int j = 0; j < vocab; j++) s += Math.Exp(logits[r * vocab + j] - m);
            lse[r] = m + Math.Log(s);
            int t = targets[r];
            if (t == ignore || t < 0) { loss[r] = 0; continue; }
            loss[r] = lse[r] - logits[r * vocab + t] + zc * lse[r] * lse[r];
            double g = dlossScale * (dloss is null ? 1 : dloss[r]);
            for (int j = 0; j < vocab; j++)
            {
                double sm = Math.Exp(logits[r * vocab + j] - lse[r]);
                d[r * vocab + j] = g * (sm * (1 + 2 * zc * lse[r]) - (j == t ? 1 : 0));
            }
        }
        return (loss, lse, d);
    }
}

/// <summary>AdamW exactly as AdamWCpu (fp32, PyTorch order of operations).</summary>
public static class AdamWReference
{
    public static void Step(float[] p, float[] g, float[] m, float[] v, float lr, float b1, float b2, float eps, float wd, int step, float gradScale)
    {
        float bc1 = 1f - MathF.Pow(b1, step), bc2Sqrt = MathF.Sqrt(1f - MathF.Pow(b2, step));
        float stepSize = lr / bc1, decay = 1f - lr * wd;
        for (int i = 0; i < p.Length; i++)
        {
            float gi = g[i] * gradScale;
            m[i] = b1 * m[i] + (1f - b1) * gi;
            v[i] = b2 * v[i] + (1f - b2) * gi * gi;
            p[i] = p[i] * decay - stepSize * m[i] / (MathF.Sqrt(v[i]) / bc2Sqrt + eps);
        }
    }
}
