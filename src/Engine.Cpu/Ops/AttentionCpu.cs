using System.Buffers;
using System.Numerics.Tensors;

namespace Engine.Cpu.Ops;

/*
 * Causal grouped-query attention, memory-efficient (FlashAttention-2 bookkeeping on the CPU):
 *   q [B, T, H, D], k/v [B, T, Hkv, D], query head h reads kv head h / (H / Hkv), scale = 1/sqrt(D)
 *   S = scale * Q K^T (causal: key j <= query i), P = softmax(S), O = P V, lse_i = logsumexp_j S_ij (fp32, saved)
 * Only lse [B, H, T] is kept for backward; scores are recomputed per query block of BlockQ rows, so no T×T matrix
 * per head outlives the block that uses it. Backward, with D_i = rowsum(dO_i * O_i):
 *   P = exp(S - lse), dP = dO V^T, dS = P * (dP - D), dQ = scale dS K, dK += scale dS^T Q, dV += P^T dO
 * dK/dV of a kv head sum over its query heads; work is split by (batch, kv head) so no two tasks write the same rows.
 * Causal = false drops the mask (every query sees all T keys of its sequence): a context-parallel query chunk against
 * an earlier chunk's keys, its lse merged with the other blocks' by the caller.
 *
 * ALiBi (Press et al. 2022; BLOOM, MPT, Baichuan 2-13B), when AlibiMaxBias > 0: S_ij += m_h (j - i) for j <= i, a
 * linear penalty on the distance with one slope per query head (AlibiSlopes), no position embedding on q or k. The
 * bias is computed from the slope and the two positions where the scores are (never a T×T matrix); it is constant in
 * q and k, so backward is unchanged except that P is recomputed with it. Relative positions only: decoding at
 * positions offset.. gets the same bias as the full sequence, and lengths past the trained one are evaluated as they are.
 * A tensor-parallel rank's heads are heads HeadOffset.. of TotalHeads: their slopes are those of the whole model's.
 */
public static class AttentionCpu
{
    const int BlockQ = 64;

    /// <param name="AlibiMaxBias">0: no bias; else ALiBi with the slopes of <see cref="AlibiSlopes"/> (8 in BLOOM and Baichuan 2).</param>
    public readonly record struct Dims(int Batch, int SeqLen, int Heads, int KvHeads, int HeadDim, float AlibiMaxBias = 0f)
    {
        /// <summary>false: no mask (every query sees every key of its sequence).</summary>
        public bool Causal { get; init; } = true;

        /// <summary>Keys a query block [r0, r0 + nq) reads.</summary>
        public int KeysFor(int r0, int nq) => Causal ? r0 + nq : SeqLen;

        /// <summary>Keys query t sees.</summary>
        public int Visible(int t) => Causal ? t + 1 : SeqLen;

        public int QRow => Heads * HeadDim;
        public int KvRow => KvHeads * HeadDim;
        public int Group => Heads / KvHeads;
        public float Scale => 1f / MathF.Sqrt(HeadDim);

        public void Validate()
        {
            if (Batch <= 0 || SeqLen <= 0 || Heads <= 0 || KvHeads <= 0 || HeadDim <= 0)
                throw new ArgumentException($"attention dims must be positive: {this}");
            if (Heads % KvHeads != 0) throw new ArgumentException($"heads ({Heads}) must be a multiple of kv heads ({KvHeads})");
            if (!(AlibiMaxBias >= 0) || float.IsInfinity(AlibiMaxBias)) throw new ArgumentException($"ALiBi max bias must be finite and >= 0, got {AlibiMaxBias}");
        }

        /// <summary>Per query head slope (all zeros without ALiBi).</summary>
        /// <summary>The first of these heads among the model's <see cref="TotalHeads"/> (a tensor-parallel rank's share).</summary>
        public int HeadOffset { get; init; }

        /// <summary>The model's query heads (0: <see cref="Heads"/>).</summary>
        public int TotalHeads { get => totalHeads == 0 ? Heads : totalHeads; init => totalHeads = value; }
        readonly int totalHeads;

        /// <summary>Per query head slope (all zeros without ALiBi): those of heads HeadOffset.. among all the model's.</summary>
        public float[] Slopes() => AlibiMaxBias > 0 ? AlibiSlopes(TotalHeads, AlibiMaxBias).AsSpan(HeadOffset, Heads).ToArray() : new float[Heads];
    }

    /// <summary>
    /// ALiBi slopes for <paramref name="heads"/> heads, as BLOOM's build_alibi_tensor, Baichuan 2's _get_interleave and
    /// llama.cpp's soft_max (max_bias) compute them: with n = 2^⌊log2 H⌋, head h &lt; n gets 2^(−b(h+1)/n) and the
    /// remaining H − n heads the odd powers of the next power of two's ratio, 2^(−b(2(h−n)+1)/(2n)) (the slopes 2n heads
    /// would have, every other one). b = 8 gives Press et al.'s 1/2, 1/4, …, 1/256 for 8 heads. Double, rounded once to fp32.
    /// </summary>
    public static float[] AlibiSlopes(int heads, float maxBias)
    {
        if (heads <= 0) throw new ArgumentOutOfRangeException(nameof(heads), $"heads must be positive, got {heads}");
        int n = 1 << (31 - System.Numerics.BitOperations.LeadingZeroCount((uint)heads));
        var slopes = new float[heads];
        for (int h = 0; h < heads; h++)
            slopes[h] = (float)(h < n ? Math.Pow(2.0, -(double)maxBias * (h + 1) / n) : Math.Pow(2.0, -(double)maxBias * (2 * (h - n) + 1) / (2.0 * n)));
        return slopes;
    }

    /// <summary>row[j] += slope · (j − query) for the row's keys j &lt; row.Length (the ALiBi bias of one query).</summary>
    static void AddAlibi(Span<float> row, float slope, int query)
    {
        if (slope == 0f) return;
        for (int j = 0; j < row.Length; j++) row[j] += slope * (j - query);
    }

    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> o, Span<float> lse, Dims d)
    {
        d.Validate();
        var slopes = d.Slopes();
        unsafe
        {
            fixed (float* pq = q, pk = k, pv = v, po = o, pl = lse)
            {
                float* Q = pq, K = pk, V = pv, O = po, L = pl;
                Parallel.For(0, d.Batch * d.Heads, bh =>
                {
                    int b = bh / d.Heads, h = bh % d.Heads, g = h / d.Group;
                    float* qb = Q + (long)b * d.SeqLen * d.QRow + h * d.HeadDim;
                    float* kb = K + (long)b * d.SeqLen * d.KvRow + g * d.HeadDim;
                    float* vb = V + (long)b * d.SeqLen * d.KvRow + g * d.HeadDim;
                    float* ob = O + (long)b * d.SeqLen * d.QRow + h * d.HeadDim;
                    float* lb = L + ((long)b * d.Heads + h) * d.SeqLen;
                    float slope = slopes[h];
                    float[] s = ArrayPool<float>.Shared.Rent(BlockQ * d.SeqLen);
                    try
                    {
                        for (int r0 = 0; r0 < d.SeqLen; r0 += BlockQ)
                        {
                            int nq = Math.Min(BlockQ, d.SeqLen - r0), nk = d.KeysFor(r0, nq);
                            Scores(qb, kb, r0, nq, nk, d, s);
                            for (int i = 0; i < nq; i++)
                            {
                                var row = s.AsSpan(i * nk, nk);
                                int valid = d.Visible(r0 + i);
                                var vr = row[..valid];
                                AddAlibi(vr, slope, r0 + i);
                                float m = TensorPrimitives.Max(vr);
                                TensorPrimitives.Subtract(vr, m, vr);
                                TensorPrimitives.Exp(vr, vr);
                                float sum = TensorPrimitives.Sum(vr);
                                TensorPrimitives.Multiply(vr, 1f / sum, vr);
                                row[valid..].Clear();
                                lb[r0 + i] = m + MathF.Log(sum);
                            }
                            fixed (float* ps = s)
                                Gemm.Sgemm(false, false, nq, d.HeadDim, nk, 1f,
                                    new ReadOnlySpan<float>(ps, nq * nk), nk,
                                    new ReadOnlySpan<float>(vb, SpanLen(nk, d.KvRow, d.HeadDim)), d.KvRow, 0f,
                                    new Span<float>(ob + (long)r0 * d.QRow, SpanLen(nq, d.QRow, d.HeadDim)), d.QRow);
                        }
                    }
                    finally { ArrayPool<float>.Shared.Return(s); }
                });
            }
        }
    }

    /// <summary>dq is overwritten; dk and dv are overwritten (not accumulated).</summary>
    public static void Backward(ReadOnlySpan<float> dout, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v,
        ReadOnlySpan<float> o, ReadOnlySpan<float> lse, Span<float> dq, Span<float> dk, Span<float> dv, Dims d)
    {
        d.Validate();
        var slopes = d.Slopes();
        unsafe
        {
            fixed (float* pdo = dout, pq = q, pk = k, pv = v, po = o, pl = lse, pdq = dq, pdk = dk, pdv = dv)
            {
                float* DO = pdo, Q = pq, K = pk, V = pv, O = po, L = pl, DQ = pdq, DK = pdk, DV = pdv;
                Parallel.For(0, d.Batch * d.KvHeads, bg =>
                {
                    int b = bg / d.KvHeads, g = bg % d.KvHeads;
                    float* kb = K + (long)b * d.SeqLen * d.KvRow + g * d.HeadDim;
                    float* vb = V + (long)b * d.SeqLen * d.KvRow + g * d.HeadDim;
                    float* dkb = DK + (long)b * d.SeqLen * d.KvRow + g * d.HeadDim;
                    float* dvb = DV + (long)b * d.SeqLen * d.KvRow + g * d.HeadDim;
                    for (int t = 0; t < d.SeqLen; t++)
                    {
                        new Span<float>(dkb + (long)t * d.KvRow, d.HeadDim).Clear();
                        new Span<float>(dvb + (long)t * d.KvRow, d.HeadDim).Clear();
                    }
                    float[] s = ArrayPool<float>.Shared.Rent(BlockQ * d.SeqLen);
                    float[] dp = ArrayPool<float>.Shared.Rent(BlockQ * d.SeqLen);
                    try
                    {
                        for (int h = g * d.Group; h < (g + 1) * d.Group; h++)
                        {
                            long qOff = (long)b * d.SeqLen * d.QRow + h * d.HeadDim;
                            float* qb = Q + qOff, ob = O + qOff, dob = DO + qOff, dqb = DQ + qOff;
                            float* lb = L + ((long)b * d.Heads + h) * d.SeqLen;
                            float slope = slopes[h];
                            for (int r0 = 0; r0 < d.SeqLen; r0 += BlockQ)
                            {
                                int nq = Math.Min(BlockQ, d.SeqLen - r0), nk = d.KeysFor(r0, nq);
                                Scores(qb, kb, r0, nq, nk, d, s);
                                fixed (float* ps = s, pdp = dp)
                                {
                                    // dP = dO V^T
                                    Gemm.Sgemm(false, true, nq, nk, d.HeadDim, 1f,
                                        new ReadOnlySpan<float>(dob + (long)r0 * d.QRow, SpanLen(nq, d.QRow, d.HeadDim)), d.QRow,
                                        new ReadOnlySpan<float>(vb, SpanLen(nk, d.KvRow, d.HeadDim)), d.KvRow, 0f,
                                        new Span<float>(pdp, nq * nk), nk);
                                    for (int i = 0; i < nq; i++)
                                    {
                                        int t = r0 + i, valid = d.Visible(t);
                                        var sr = s.AsSpan(i * nk, nk);
                                        var dpr = dp.AsSpan(i * nk, nk);
                                        var vs = sr[..valid];
                                        AddAlibi(vs, slope, t);
                                        TensorPrimitives.Subtract(vs, lb[t], vs);
                                        TensorPrimitives.Exp(vs, vs); // P
                                        sr[valid..].Clear();
                                        float di = TensorPrimitives.Dot(
                                            new ReadOnlySpan<float>(dob + (long)t * d.QRow, d.HeadDim),
                                            new ReadOnlySpan<float>(ob + (long)t * d.QRow, d.HeadDim));
                                        var dps = dpr[..valid];
                                        TensorPrimitives.Subtract(dps, di, dps);
                                        TensorPrimitives.Multiply(dps, vs, dps); // dS
                                        dpr[valid..].Clear();
                                    }
                                    // dQ = scale dS K
                                    Gemm.Sgemm(false, false, nq, d.HeadDim, nk, d.Scale,
                                        new ReadOnlySpan<float>(pdp, nq * nk), nk,
                                        new ReadOnlySpan<float>(kb, SpanLen(nk, d.KvRow, d.HeadDim)), d.KvRow, 0f,
                                        new Span<float>(dqb + (long)r0 * d.QRow, SpanLen(nq, d.QRow, d.HeadDim)), d.QRow);
                                    // dK += scale dS^T Q
                                    Gemm.Sgemm(true, false, nk, d.HeadDim, nq, d.Scale,
                                        new ReadOnlySpan<float>(pdp, nq * nk), nk,
                                        new ReadOnlySpan<float>(qb + (long)r0 * d.QRow, SpanLen(nq, d.QRow, d.HeadDim)), d.QRow, 1f,
                                        new Span<float>(dkb, SpanLen(nk, d.KvRow, d.HeadDim)), d.KvRow);
                                    // dV += P^T dO
                                    Gemm.Sgemm(true, false, nk, d.HeadDim, nq, 1f,
                                        new ReadOnlySpan<float>(ps, nq * nk), nk,
                                        new ReadOnlySpan<float>(dob + (long)r0 * d.QRow, SpanLen(nq, d.QRow, d.HeadDim)), d.QRow, 1f,
                                        new Span<float>(dvb, SpanLen(nk, d.KvRow, d.HeadDim)), d.KvRow);
                                }
                            }
                        }
                    }
                    finally
                    {
                        ArrayPool<float>.Shared.Return(s);
                        ArrayPool<float>.Shared.Return(dp);
                    }
                });
            }
        }
    }

    /// <summary>
    /// Incremental (KV-cache) attention for one sequence: n new queries q [n, H*D] at positions offset..offset+n-1
    /// against cached keys/values k, v [offset+n, Hkv*D]; query i sees keys 0..offset+i. o [n, H*D]. With
    /// <paramref name="alibiMaxBias"/> &gt; 0 the ALiBi bias of query position offset+i is added, as in <see cref="Forward"/>.
    /// </summary>
    public static void Decode(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> o,
        int n, int heads, int kvHeads, int headDim, int offset, float alibiMaxBias = 0f)
    {
        var d = new Dims(1, n, heads, kvHeads, headDim, alibiMaxBias);
        d.Validate();
        var slopes = d.Slopes();
        int len = offset + n;
        if (k.Length < (long)len * d.KvRow || v.Length < (long)len * d.KvRow)
            throw new ArgumentException($"KV cache holds fewer than offset + n = {len} positions");
        var scores = new float[len];
        for (int i = 0; i < n; i++)
            for (int h = 0; h < heads; h++)
            {
                int g = h / d.Group, valid = offset + i + 1;
                var qi = q.Slice(i * d.QRow + h * headDim, headDim);
                for (int j = 0; j < valid; j++) scores[j] = TensorPrimitives.Dot(qi, k.Slice(j * d.KvRow + g * headDim, headDim)) * d.Scale;
                var sv = scores.AsSpan(0, valid);
                AddAlibi(sv, slopes[h], offset + i);
                float m = TensorPrimitives.Max(sv);
                TensorPrimitives.Subtract(sv, m, sv);
                TensorPrimitives.Exp(sv, sv);
                TensorPrimitives.Multiply(sv, 1f / TensorPrimitives.Sum(sv), sv);
                var oi = o.Slice(i * d.QRow + h * headDim, headDim);
                oi.Clear();
                for (int j = 0; j < valid; j++) TensorPrimitives.MultiplyAdd(v.Slice(j * d.KvRow + g * headDim, headDim), sv[j], oi, oi);
            }
    }

    /// <summary>
    /// Flash-style merge of one more key block's attention into a running result (context parallelism, ring/blockwise
    /// attention): per query row and head, with the running (o, lse) and the block's (oB, lseB),
    ///   lse' = log(e^lse + e^lseB),  o' = o · e^(lse − lse') + oB · e^(lseB − lse').
    /// o, oB [B*T, H*D]; lse, lseB fp32 [B, H, T]; o and lse are updated in place.
    /// </summary>
    public static void Merge(Span<float> o, Span<float> lse, ReadOnlySpan<float> oBlock, ReadOnlySpan<float> lseBlock, int batch, int seqLen, int heads, int headDim)
    {
        int row = heads * headDim;
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < heads; h++)
                for (int t = 0; t < seqLen; t++)
                {
                    int li = (b * heads + h) * seqLen + t;
                    float a = lse[li], c = lseBlock[li];
                    float m = MathF.Max(a, c);
                    float z = m + MathF.Log(MathF.Exp(a - m) + MathF.Exp(c - m));
                    float wa = MathF.Exp(a - z), wc = MathF.Exp(c - z);
                    var oi = o.Slice((b * seqLen + t) * row + h * headDim, headDim);
                    var ob = oBlock.Slice((b * seqLen + t) * row + h * headDim, headDim);
                    TensorPrimitives.Multiply(oi, wa, oi);
                    TensorPrimitives.MultiplyAdd(ob, wc, oi, oi);
                    lse[li] = z;
                }
    }

    // S[nq, nk] = scale * Q[r0 : r0+nq] K[0 : nk]^T
    static unsafe void Scores(float* qb, float* kb, int r0, int nq, int nk, Dims d, float[] s)
    {
        fixed (float* ps = s)
            Gemm.Sgemm(false, true, nq, nk, d.HeadDim, d.Scale,
                new ReadOnlySpan<float>(qb + (long)r0 * d.QRow, SpanLen(nq, d.QRow, d.HeadDim)), d.QRow,
                new ReadOnlySpan<float>(kb, SpanLen(nk, d.KvRow, d.HeadDim)), d.KvRow, 0f,
                new Span<float>(ps, nq * nk), nk);
    }

    // Elements a strided [rows, width] view with leading dimension ld spans.
    static int SpanLen(int rows, int ld, int width) => (rows - 1) * ld + width;
}
