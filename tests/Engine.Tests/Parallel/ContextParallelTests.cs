using Engine.Core;
using Engine.Core.Autograd;
using Engine.Parallel;

namespace Engine.Tests.Parallel;

/// <summary>
/// Context-parallel attention (<see cref="F.ContextParallelAttention"/>) on thread ranks equals one rank's causal
/// attention over the whole sequence, forward and backward: each rank holds chunks i and 2·cp − 1 − i of every
/// sequence (the causal load balance), RoPE is applied at the chunks' global positions, and the outputs and the
/// gradients of q, k and v (before RoPE) placed back at their tokens match the single rank's within fp32 tolerance.
/// Odd lengths are padded at the end of each sequence as the plan pads them (a later position is never attended by a
/// real token). One case runs a sequence of 8192 tokens at a small width.
/// </summary>
public class ContextParallelTests
{
    const int Heads = 4, KvHeads = 2, HeadDim = 8;
    static readonly RopeParams Rope = new(HeadDim, 10000);

    [Theory]
    [InlineData(2, 1, 1)]
    [InlineData(2, 2, 7)]
    [InlineData(2, 1, 64)]
    [InlineData(2, 2, 129)]
    [InlineData(2, 1, 299)]
    [InlineData(2, 1, 300)]
    [InlineData(4, 1, 300)]
    [InlineData(3, 2, 97)]
    public void EqualsFullAttentionForwardAndBackward(int cp, int batch, int seqLen) => Check(cp, batch, seqLen, Heads, KvHeads, HeadDim, 2e-5);

    [Fact]
    public void EqualsFullAttentionAtSequence8k() => Check(2, 1, 8192, 2, 1, 8, 5e-5);

    static void Check(int cp, int B, int T, int H, int Hkv, int D, double tol)
    {
        var be = CpuBackend.Instance;
        var rope = new RopeParams(D, 10000);
        var rng = new Rng((ulong)(cp * 1000 + T));
        float[] Draw(long n) { var x = new float[n]; rng.FillNormal(x, 0, 1); return x; }
        var (q, k, v, dOut) = (Draw((long)B * T * H * D), Draw((long)B * T * Hkv * D), Draw((long)B * T * Hkv * D), Draw((long)B * T * H * D));

        // one rank: RoPE at positions 0..T−1, causal attention over the whole sequence
        float[] o1, dq1, dk1, dv1;
        using (var scope = new TensorScope())
        {
            var (tq, tk, tv) = (Leaf(be, q, B * T, H * D), Leaf(be, k, B * T, Hkv * D), Leaf(be, v, B * T, Hkv * D));
            var o = F.Attention(F.Rope(tq, rope, B, T, H), F.Rope(tk, rope, B, T, Hkv), tv, new AttentionDims(B, T, H, Hkv, D));
            Backward(be, o, dOut);
            (o1, dq1, dk1, dv1) = (o.ToArray(), tq.Grad!.ToArray(), tk.Grad!.ToArray(), tv.Grad!.ToArray());
        }

        // cp ranks: chunks i and 2cp−1−i of L = ⌈T / 2cp⌉ tokens (padded past T), chunk-major
        int L = (T + 2 * cp - 1) / (2 * cp);
        var results = ThreadCommunicator.Run(cp, c =>
        {
            int[] chunks = [c.Rank, 2 * cp - 1 - c.Rank];
            // index[r] = the token of the whole batch local row r holds (−1: padding)
            var index = new int[2 * B * L];
            int at = 0;
            foreach (int ch in chunks)
                for (int b = 0; b < B; b++)
                    for (int t = 0; t < L; t++, at++) index[at] = ch * L + t < T ? b * T + ch * L + t : -1;
            var layout = new SequenceLayout([new SequenceBlock(B, L, chunks[0] * L), new SequenceBlock(B, L, chunks[1] * L)]) { WholeLength = T };
            using var scope = new TensorScope();
            var (tq, tk, tv) = (Leaf(be, Gather(q, index, H * D), index.Length, H * D), Leaf(be, Gather(k, index, Hkv * D), index.Length, Hkv * D),
                Leaf(be, Gather(v, index, Hkv * D), index.Length, Hkv * D));
            var o = F.ContextParallelAttention(F.Rope(tq, rope, layout, H), F.Rope(tk, rope, layout, Hkv), tv, new AttentionDims(B, L, H, Hkv, D), c);
            Backward(be, o, Gather(dOut, index, H * D));
            return (Index: index, O: o.ToArray(), Dq: tq.Grad!.ToArray(), Dk: tk.Grad!.ToArray(), Dv: tv.Grad!.ToArray());
        });

        var seen = new bool[B * T];
        foreach (var r in results)
            for (int i = 0; i < r.Index.Length; i++)
            {
                int tok = r.Index[i];
                if (tok < 0) continue;
                Assert.False(seen[tok], $"token {tok} held by two ranks");
                seen[tok] = true;
                Near(o1, r.O, tok, i, H * D, tol, "output");
                Near(dq1, r.Dq, tok, i, H * D, tol, "dq");
                Near(dk1, r.Dk, tok, i, Hkv * D, tol, "dk");
                Near(dv1, r.Dv, tok, i, Hkv * D, tol, "dv");
            }
        Assert.All(seen, Assert.True);
    }

    static Tensor Leaf(IBackend be, float[] values, int rows, int cols)
    {
        var t = be.Empty([rows, cols]);
        be.Upload(t, values);
        t.RequiresGrad = true;
        return t;
    }

    static void Backward(IBackend be, Tensor o, float[] dOut)
    {
        // o's upstream gradient: dOut
        var g = be.Empty(o.Shape);
        be.Upload(g, dOut);
        Grad.Backward(o, g);
    }

    static float[] Gather(float[] whole, int[] index, int row)
    {
        var local = new float[index.Length * row];
        for (int i = 0; i < index.Length; i++)
            if (index[i] >= 0) Array.Copy(whole, (long)index[i] * row, local, (long)i * row, row);
        return local;
    }

    static void Near(float[] want, float[] got, int tok, int local, int row, double tol, string what)
    {
        for (int j = 0; j < row; j++)
        {
            float a = want[(long)tok * row + j], b = got[(long)local * row + j];
            Assert.True(Math.Abs(a - b) <= tol * (1 + Math.Abs(a)), $"{what} token {tok} [{j}]: {b} vs {a}");
        }
    }
}
