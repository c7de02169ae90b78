using Engine.Core.Autograd;
using Engine.Core.Distributed;

namespace Engine.Core;

public static partial class F
{
    /// <summary>
    /// Context-parallel causal attention over sequences split across the <paramref name="group"/>'s cp ranks, with the
    /// causal load balance (Megatron's and Llama 3's): each sequence is cut into 2·cp chunks of L tokens and rank i holds
    /// chunks i and 2·cp − 1 − i, so every rank has the same share of the causal mask's work. q [2·B·L, H·D] and k/v
    /// [2·B·L, Hkv·D] are the rank's two chunks of B sequences, chunk-major (rows [0, B·L) chunk i, then chunk
    /// 2·cp − 1 − i); <paramref name="dims"/> gives B, L and the heads.
    /// <para>
    /// <b>All-gathered K/V, not a ring</b> (Llama 3's choice, §3.3.2): the keys and values of every chunk are all-gathered
    /// once — with grouped-query attention they are Hkv/H of the queries' size, so the gather is small next to the
    /// attention's work, and it is one collective the communicator can run while RoPE of q is computed, rather than cp − 1
    /// dependent point-to-point rounds; any mask works. Then each query chunk a attends chunk by chunk to the key chunks
    /// b ≤ a (b &lt; a without a mask, b = a causally) and the blocks are merged flash-style by their log-sum-exps
    /// (<see cref="IBackend.AttentionMerge"/>). Backward runs each block's attention backward with the merged output and
    /// log-sum-exp — which gives each block's exact share of dQ, dK, dV (P = exp(S − lse), D = rowsum(dO ∘ O)) — sums
    /// dQ over the blocks, and reduce-scatters the key/value gradients back to the ranks that hold those chunks (the
    /// all-gather's adjoint). Memory: the whole sequence's K/V per rank, kept for backward.
    /// </para>
    /// </summary>
    public static Tensor ContextParallelAttention(Tensor q, Tensor k, Tensor v, AttentionDims dims, ICommunicator group)
    {
        dims.Validate();
        int cp = group.WorldSize, rank = group.Rank;
        int B = dims.Batch, L = dims.SeqLen, BL = B * L;
        Shape.Check(q, "q", 2 * BL, dims.QRow);
        Shape.Check(k, "k", 2 * BL, dims.KvRow);
        Shape.Check(v, "v", 2 * BL, dims.KvRow);
        var be = q.Backend;
        var K = be.Empty([cp * 2 * BL, dims.KvRow], k.DType);
        var V = be.Empty([cp * 2 * BL, dims.KvRow], v.DType);
        using (Profiler.Time("cp.gather.fwd"))
        {
            var gk = group.AllGather(k, K);
            var gv = group.AllGather(v, V);
            gk.Wait();
            gv.Wait();
        }
        // where chunk g of the whole sequence sits in the gathered K/V: rank g's first block, or rank 2cp−1−g's second
        int Slot(int g) => g < cp ? 2 * g : 2 * (2 * cp - 1 - g) + 1;
        int[] chunks = [rank, 2 * cp - 1 - rank];
        var o = be.Empty(q.Shape, q.DType);
        var lse = be.Empty([2, B * dims.Heads * L]);
        using (Profiler.Time("attention.fwd"))
        {
            Tensor? oTmp = null, lTmp = null;
            for (int j = 0; j < 2; j++)
            {
                var (qj, oj, lj) = (q.Narrow0(j * BL, BL), o.Narrow0(j * BL, BL), lse.Narrow0(j, 1));
                for (int b = 0; b <= chunks[j]; b++)
                {
                    var d = dims with { Causal = b == chunks[j] };
                    var (kb, vb) = (K.Narrow0(Slot(b) * BL, BL), V.Narrow0(Slot(b) * BL, BL));
                    if (b == 0) { be.AttentionForward(qj, kb, vb, oj, lj, d); continue; }
                    oTmp ??= be.Empty([BL, dims.QRow], q.DType);
                    lTmp ??= be.Empty([B * dims.Heads * L]);
                    be.AttentionForward(qj, kb, vb, oTmp, lTmp, d);
                    be.AttentionMerge(oj, lj, oTmp, lTmp, B, L, dims.Heads, dims.HeadDim);
                }
            }
        }
        if (Grad.Needs(q, k, v))
            Grad.Record(new LambdaNode([q, k, v], [o], () =>
            {
                using var prof = Profiler.Time("attention.bwd");
                var dO = o.Grad!;
                var dq = be.Empty(q.Shape, q.DType);
                var dK = be.Zeros(K.Shape, K.DType);
                var dV = be.Zeros(V.Shape, V.DType);
                var dqb = be.Empty([BL, dims.QRow], q.DType);
                var dkb = be.Empty([BL, dims.KvRow], k.DType);
                var dvb = be.Empty([BL, dims.KvRow], v.DType);
                for (int j = 0; j < 2; j++)
                {
                    var (qj, oj, lj, dOj, dqj) = (q.Narrow0(j * BL, BL), o.Narrow0(j * BL, BL), lse.Narrow0(j, 1), dO.Narrow0(j * BL, BL), dq.Narrow0(j * BL, BL));
                    for (int b = 0; b <= chunks[j]; b++)
                    {
                        var d = dims with { Causal = b == chunks[j] };
                        int at = Slot(b) * BL;
                        be.AttentionBackward(dOj, qj, K.Narrow0(at, BL), V.Narrow0(at, BL), oj, lj, b == 0 ? dqj : dqb, dkb, dvb, d);
                        if (b > 0) be.AddInPlace(dqj, dqb, 1f);
                        be.AddInPlace(dK.Narrow0(at, BL), dkb, 1f);
                        be.AddInPlace(dV.Narrow0(at, BL), dvb, 1f);
                    }
                }
                var dk = be.Empty(k.Shape, k.DType);
                var dv = be.Empty(v.Shape, v.DType);
                using (Profiler.Time("cp.scatter.bwd"))
                {
                    var rk = group.ReduceScatter(dK, dk);
                    var rv = group.ReduceScatter(dV, dv);
                    rk.Wait();
                    rv.Wait();
                }
                Grad.AccumulateOwned(q, dq);
                Grad.AccumulateOwned(k, dk);
                Grad.AccumulateOwned(v, dv);
            }));
        return o;
    }
}
