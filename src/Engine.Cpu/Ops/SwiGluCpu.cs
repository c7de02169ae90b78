using System.Numerics.Tensors;

namespace Engine.Cpu.Ops;

/*
 * SwiGLU on two [N, F] inputs: h = silu(g) * u, silu(g) = g * sigmoid(g).
 * Backward with s = sigmoid(g):
 *   du = dh * g * s
 *   dg = dh * u * s * (1 + g * (1 - s))
 */
public static class SwiGluCpu
{
    const int Chunk = 4096;

    public static void Forward(ReadOnlySpan<float> g, ReadOnlySpan<float> u, Span<float> h)
    {
        int n = g.Length;
        unsafe
        {
            fixed (float* pg = g, pu = u, ph = h)
            {
                float* a = pg, b = pu, c = ph;
                Parallelism.For((n + Chunk - 1) / Chunk, 4, (s, e) =>
                {
                    int lo = s * Chunk, hi = Math.Min(n, e * Chunk), len = hi - lo;
                    var gs = new ReadOnlySpan<float>(a + lo, len);
                    var hs = new Span<float>(c + lo, len);
                    TensorPrimitives.Sigmoid(gs, hs);
                    TensorPrimitives.Multiply(hs, gs, hs);
                    TensorPrimitives.Multiply(hs, new ReadOnlySpan<float>(b + lo, len), hs);
                });
            }
        }
    }

    public static void Backward(ReadOnlySpan<float> dh, ReadOnlySpan<float> g, ReadOnlySpan<float> u, Span<float> dg, Span<float> du)
    {
        int n = g.Length;
        unsafe
        {
            fixed (float* pdh = dh, pg = g, pu = u, pdg = dg, pdu = du)
            {
                float* a = pdh, b = pg, c = pu, d = pdg, e2 = pdu;
                Parallelism.For((n + Chunk - 1) / Chunk, 4, (s, e) =>
                {
                    int lo = s * Chunk, hi = Math.Min(n, e * Chunk), len = hi - lo;
                    var dhs = new ReadOnlySpan<float>(a + lo, len);
                    var gs = new ReadOnlySpan<float>(b + lo, len);
                    var us = new ReadOnlySpan<float>(c + lo, len);
                    var dgs = new Span<float>(d + lo, len);
                    var dus = new Span<float>(e2 + lo, len);
                    Span<float> sig = len <= 4096 ? stackalloc float[len] : new float[len];
                    TensorPrimitives.Sigmoid(gs, sig);
                    // du = dh * g * s
                    TensorPrimitives.Multiply(dhs, gs, dus);
                    TensorPrimitives.Multiply(dus, sig, dus);
                    // dg = dh * u * s * (1 + g * (1 - s)), in place in dg
                    TensorPrimitives.Subtract(1f, sig, dgs);        // 1 - s
                    TensorPrimitives.FusedMultiplyAdd(gs, dgs, 1f, dgs); // 1 + g (1 - s)
                    TensorPrimitives.Multiply(dgs, sig, dgs);
                    TensorPrimitives.Multiply(dgs, us, dgs);
                    TensorPrimitives.Multiply(dgs, dhs, dgs);
                });
            }
        }
    }
}
