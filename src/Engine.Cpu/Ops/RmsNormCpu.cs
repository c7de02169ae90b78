using System.Numerics.Tensors;

namespace Engine.Cpu.Ops;

/*
 * RMSNorm over the last dimension C of a row-major [rows, C] tensor:
 *   rstd = 1 / sqrt(mean(x^2) + eps)   (saved, fp32, one per row)
 *   y    = x * rstd * w
 * Backward, with xhat = x * rstd and g = dy * w:
 *   dx = rstd * (g - xhat * mean(g * xhat))
 *   dw = sum_rows dy * xhat   (per-chunk partials reduced in chunk order: deterministic)
 */
public static class RmsNormCpu
{
    public static void Forward(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> y, Span<float> rstd, int rows, int cols, float eps)
    {
        unsafe
        {
            fixed (float* px = x, pw = w, py = y, pr = rstd)
            {
                float* ppx = px, ppw = pw, ppy = py, ppr = pr;
                Parallelism.For(rows, 16, (s, e) =>
                {
                    var wv = new ReadOnlySpan<float>(ppw, cols);
                    for (int r = s; r < e; r++)
                    {
                        var xr = new ReadOnlySpan<float>(ppx + (long)r * cols, cols);
                        var yr = new Span<float>(ppy + (long)r * cols, cols);
                        float ms = TensorPrimitives.SumOfSquares(xr) / cols;
                        float rs = 1f / MathF.Sqrt(ms + eps);
                        ppr[r] = rs;
                        TensorPrimitives.Multiply(xr, rs, yr);
                        TensorPrimitives.Multiply(yr, wv, yr);
                    }
                });
            }
        }
    }

    /// <summary>dx is overwritten; dw is accumulated into (+=).</summary>
    public static void Backward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, ReadOnlySpan<float> w, ReadOnlySpan<float> rstd,
        Span<float> dx, Span<float> dw, int rows, int cols)
    {
        int chunks = Parallelism.ChunkCount(rows, 16);
        var partial = new float[chunks * cols];
        unsafe
        {
            fixed (float* pdy = dy, px = x, pw = w, pr = rstd, pdx = dx, pp = partial)
            {
                float* a = pdy, b = px, c = pw, d = pr, o = pdx, p = pp;
                Parallel.For(0, chunks, ch =>
                {
                    var (s, e) = Parallelism.ChunkRange(rows, chunks, ch);
                    var wv = new ReadOnlySpan<float>(c, cols);
                    var acc = new Span<float>(p + (long)ch * cols, cols);
                    float[] tmp = new float[cols];
                    float[] g = new float[cols];
                    for (int r = s; r < e; r++)
                    {
                        var dyr = new ReadOnlySpan<float>(a + (long)r * cols, cols);
                        var xr = new ReadOnlySpan<float>(b + (long)r * cols, cols);
                        var dxr = new Span<float>(o + (long)r * cols, cols);
                        float rs = d[r];
                        TensorPrimitives.Multiply(xr, rs, tmp);            // xhat
                        TensorPrimitives.FusedMultiplyAdd(dyr, tmp, acc, acc); // dw partial += dy * xhat
                        TensorPrimitives.Multiply(dyr, wv, g);             // g = dy * w
                        float m = TensorPrimitives.Dot(g, tmp) / cols;
                        // dx = rstd * (g - xhat * m)
                        TensorPrimitives.MultiplyAdd(tmp, -m, g, dxr);
                        TensorPrimitives.Multiply(dxr, rs, dxr);
                    }
                });
            }
        }
        for (int ch = 0; ch < chunks; ch++)
            TensorPrimitives.Add(dw, partial.AsSpan(ch * cols, cols), dw);
    }
}
