namespace Engine.Cpu.Ops;

/*
 * Rotary embedding on x laid out [B, T, H, D] (row = token). For i < D/2 the pair (x[i], x[i+D/2]) rotates by
 * angle = p * inv_freq[i], p = (t + offset) (divided by the factor for linear scaling), computed in fp32 from the
 * integer position — never rounded to bf16, so position 16k keeps its accuracy:
 *   y[i]       = x[i] * cos - x[i+D/2] * sin
 *   y[i+D/2]   = x[i+D/2] * cos + x[i] * sin
 * Backward is the inverse rotation (sin → -sin).
 */
public static class RopeCpu
{
    /// <summary>cos/sin tables [T, D/2] for positions offset..offset+T-1 from inv_freq [D/2]; positions are divided
    /// by positionDivisor (linear scaling; 1 otherwise) in fp32.</summary>
    public static (float[] Cos, float[] Sin) Tables(float[] inv, float positionDivisor, int seqLen, int positionOffset)
    {
        int half = inv.Length;
        var cos = new float[seqLen * half];
        var sin = new float[seqLen * half];
        for (int t = 0; t < seqLen; t++)
        {
            float pos = (float)(t + positionOffset);
            if (positionDivisor != 1f) pos /= positionDivisor;
            for (int i = 0; i < half; i++)
            {
                float angle = pos * inv[i];
                cos[t * half + i] = MathF.Cos(angle);
                sin[t * half + i] = MathF.Sin(angle);
            }
        }
        return (cos, sin);
    }

    /// <summary>y = rope(x); x and y may alias. inverse=true applies the backward (inverse) rotation.</summary>
    public static void Apply(ReadOnlySpan<float> x, Span<float> y, int batch, int seqLen, int heads, int headDim,
        float[] cos, float[] sin, bool inverse)
    {
        int half = headDim / 2;
        int rowLen = heads * headDim;
        unsafe
        {
            fixed (float* px = x, py = y, pc = cos, ps = sin)
            {
                float* a = px, b = py, c = pc, s = ps;
                Parallelism.For(batch * seqLen, 32, (lo, hi) =>
                {
                    for (int row = lo; row < hi; row++)
                    {
                        int t = row % seqLen;
                        float* cr = c + (long)t * half, sr = s + (long)t * half;
                        for (int h = 0; h < heads; h++)
                        {
                            float* xi = a + (long)row * rowLen + h * headDim;
                            float* yo = b + (long)row * rowLen + h * headDim;
                            for (int i = 0; i < half; i++)
                            {
                                float x1 = xi[i], x2 = xi[i + half];
                                float cc = cr[i], ss = inverse ? -sr[i] : sr[i];
                                yo[i] = x1 * cc - x2 * ss;
                                yo[i + half] = x2 * cc + x1 * ss;
                            }
                        }
                    }
                });
            }
        }
    }
}
