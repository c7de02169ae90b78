using System.Numerics.Tensors;

namespace Engine.Cpu.Ops;

/*
 * Cross-entropy over rows of logits [N, V] with optional z-loss (PaLM: lse²) and max-z loss (Baichuan 2: the largest
 * logit squared, modeling_baichuan.py's z_loss_weight · max(logits)²):
 *   lse_i  = log sum_j exp(x_ij),  m_i = max_j x_ij (first maximal index a_i)
 *   loss_i = lse_i - x_i,t_i + zc * lse_i^2 + mz * m_i^2        (0 for ignored rows: target == IgnoreIndex)
 * Gradient of loss_i w.r.t. x_i, with p = softmax(x_i):
 *   dx_ij = p_ij * (1 + 2 zc lse_i) - [j == t_i] + 2 mz m_i [j == a_i]
 * (Baichuan averages its max-z term over every position, ignored labels included; here it counts on the valid rows
 * only and is normalised like the loss, which is the same when every label is valid.)
 * Forward can write that gradient, times a per-call scale (e.g. 1 / valid tokens), over the logits in place:
 * the logits are materialised once and become their own gradient buffer.
 *
 * Vocabulary-parallel (Megatron's vocab_parallel_cross_entropy): a rank holds logits [N, Vr] of vocabulary rows
 * [start, start + Vr) and the full logits are never gathered.
 *   ShardStats:    per row m_r = max_j x_ij, s_r = sum_j exp(x_ij - m_r), and x_i,t_i when t_i lies in the shard (else 0)
 *   (the caller:   lse_i = M + log sum_r s_r exp(m_r - M) with M = max_r m_r; x_i,t_i from the rank that holds it)
 *   ShardGradient: dx_ij = gradScale * (exp(x_ij - lse_i) (1 + 2 zc lse_i) - [j == t_i - start]), 0 on ignored rows
 */
public static class CrossEntropyCpu
{
    public const int IgnoreIndex = -100;

    public static void Forward(Span<float> logits, ReadOnlySpan<int> targets, Span<float> losses, Span<float> lse,
        int rows, int vocab, float zLoss, bool writeGradient, float gradScale, float maxZLoss = 0f)
    {
        unsafe
        {
            fixed (float* px = logits, pl = losses, pz = lse)
            fixed (int* pt = targets)
            {
                float* X = px, Lo = pl, Z = pz; int* Tg = pt;
                Parallelism.For(rows, 8, (s, e) =>
                {
                    for (int r = s; r < e; r++)
                    {
                        var x = new Span<float>(X + (long)r * vocab, vocab);
                        int t = Tg[r];
                        if (t != IgnoreIndex && (uint)t >= (uint)vocab)
                            throw new ArgumentOutOfRangeException(nameof(targets), $"target {t} at row {r} is outside the vocabulary [0, {vocab})");
                        int am = TensorPrimitives.IndexOfMax(x);
                        float m = x[am];
                        // sum exp(x - m) without destroying x unless the gradient is wanted
                        float sum = 0f;
                        if (writeGradient)
                        {
                            TensorPrimitives.Subtract(x, m, x);
                            float xt = t == IgnoreIndex ? 0f : x[t] + m;
                            TensorPrimitives.Exp(x, x);
                            sum = TensorPrimitives.Sum(x);
                            float z = m + MathF.Log(sum);
                            Z[r] = z;
                            if (t == IgnoreIndex) { Lo[r] = 0f; x.Clear(); continue; }
                            Lo[r] = z - xt + zLoss * z * z + maxZLoss * m * m;
                            float c = gradScale * (1f + 2f * zLoss * z) / sum;
                            TensorPrimitives.Multiply(x, c, x);
                            x[t] -= gradScale;
                            x[am] += gradScale * 2f * maxZLoss * m;
                        }
                        else
                        {
                            for (int j = 0; j < vocab; j++) sum += MathF.Exp(x[j] - m);
                            float z = m + MathF.Log(sum);
                            Z[r] = z;
                            Lo[r] = t == IgnoreIndex ? 0f : z - x[t] + zLoss * z * z + maxZLoss * m * m;
                        }
                    }
                });
            }
        }
    }

    /// <summary>stats [rows, 3] = (max, Σ exp(x − max), the target's logit or 0) of each row of this rank's vocabulary
    /// shard [rows, vocab] of the rows [start, start + vocab).</summary>
    public static void ShardStats(ReadOnlySpan<float> logits, ReadOnlySpan<int> targets, Span<float> stats, int rows, int vocab, int start)
    {
        for (int r = 0; r < rows; r++)
        {
            var x = logits.Slice(r * vocab, vocab);
            float m = TensorPrimitives.Max(x);
            float sum = 0f;
            for (int j = 0; j < vocab; j++) sum += MathF.Exp(x[j] - m);
            int t = targets[r] - start;
            stats[r * 3] = m;
            stats[r * 3 + 1] = sum;
            stats[r * 3 + 2] = targets[r] != IgnoreIndex && (uint)t < (uint)vocab ? x[t] : 0f;
        }
    }

    /// <summary>Overwrites this rank's logits shard with gradScale · d loss / d logits given each row's global lse.</summary>
    public static void ShardGradient(Span<float> logits, ReadOnlySpan<int> targets, ReadOnlySpan<float> lse, int rows, int vocab, int start, float zLoss, float gradScale)
    {
        for (int r = 0; r < rows; r++)
        {
            var x = logits.Slice(r * vocab, vocab);
            if (targets[r] == IgnoreIndex) { x.Clear(); continue; }
            float z = lse[r];
            TensorPrimitives.Subtract(x, z, x);
            TensorPrimitives.Exp(x, x);
            TensorPrimitives.Multiply(x, gradScale * (1f + 2f * zLoss * z), x);
            int t = targets[r] - start;
            if ((uint)t < (uint)vocab) x[t] -= gradScale;
        }
    }
}
