using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;

namespace Engine.Training.Alignment;

/// <summary>A prompt and one answer to it, as token ids (the answer ends with EOS when generation stopped there).</summary>
public sealed record PromptResponse(int[] Prompt, int[] Response);

/// <summary>
/// Prompt + answer sequences right-padded into one [B, T] batch. Causal attention means padding after a sequence never
/// reaches its positions, so no attention mask is needed. Row b·T + P + j − 1 predicts answer token j (its log-prob,
/// and the critic's value of the state before it); the last answer token's own row carries the reward model's score.
/// </summary>
public sealed class SequenceBatch
{
    public required int Batch { get; init; }
    public required int SeqLen { get; init; }
    public required int[] Ids { get; init; }
    /// <summary>Per row: the answer token it predicts, or −1 (prompt and padding: answer-only masking).</summary>
    public required int[] Targets { get; init; }
    /// <summary>Per sequence: the rows that predict its answer tokens, in order.</summary>
    public required int[][] AnswerRows { get; init; }
    /// <summary>Per sequence: the row of its last answer token.</summary>
    public required int[] LastRows { get; init; }

    public static SequenceBatch Pack(IReadOnlyList<PromptResponse> items, int padId)
    {
        if (items.Count == 0) throw new ArgumentException("an empty batch");
        int t = 0;
        foreach (var it in items)
        {
            if (it.Prompt.Length == 0 || it.Response.Length == 0) throw new ArgumentException("every sequence needs a prompt and at least one answer token");
            t = Math.Max(t, it.Prompt.Length + it.Response.Length);
        }
        int b = items.Count;
        var ids = new int[b * t];
        var tg = new int[b * t];
        Array.Fill(ids, padId);
        Array.Fill(tg, -1);
        var rows = new int[b][];
        var last = new int[b];
        for (int i = 0; i < b; i++)
        {
            var (p, r) = (items[i].Prompt, items[i].Response);
            p.CopyTo(ids, i * t);
            r.CopyTo(ids, i * t + p.Length);
            rows[i] = new int[r.Length];
            for (int j = 0; j < r.Length; j++)
            {
                int row = i * t + p.Length + j - 1;
                tg[row] = r[j];
                rows[i][j] = row;
            }
            last[i] = i * t + p.Length + r.Length - 1;
        }
        return new SequenceBatch { Batch = b, SeqLen = t, Ids = ids, Targets = tg, AnswerRows = rows, LastRows = last };
    }

    public Tensor UploadIds(IBackend be)
    {
        var t = be.Empty([Ids.Length], DType.I32);
        be.Upload(t, Ids);
        return t;
    }

    /// <summary>values[row] gathered per sequence over its answer rows.</summary>
    public double[][] PerAnswer(double[] values) => AnswerRows.Select(rs => rs.Select(r => values[r]).ToArray()).ToArray();
}

/// <summary>Forward passes of the four models over packed batches, without gradients (rollout statistics, evaluation).</summary>
public static class PolicyOps
{
    /// <summary>Answer-token log-probs and entropies per sequence.</summary>
    public static (double[][] LogProbs, double[][] Entropy) AnswerLogProbs(LlamaModel model, IReadOnlyList<PromptResponse> items, int padId)
    {
        var b = SequenceBatch.Pack(items, padId);
        using var ng = Grad.NoGrad();
        using var scope = new TensorScope();
        var logits = model.Logits(b.UploadIds(model.Backend), b.Batch, b.SeqLen);
        var (_, lp, ent) = HostOps.TokenLogProbs(logits, b.Targets);
        return (b.PerAnswer(lp), b.PerAnswer(ent));
    }

    /// <summary>The critic's value per answer token (of the state before it).</summary>
    public static double[][] Values(ScalarHeadModel critic, IReadOnlyList<PromptResponse> items, int padId)
    {
        var b = SequenceBatch.Pack(items, padId);
        using var ng = Grad.NoGrad();
        using var scope = new TensorScope();
        var v = critic.Scores(b.UploadIds(critic.Backend), b.Batch, b.SeqLen).ToArray();
        return b.PerAnswer(v.Select(x => (double)x).ToArray());
    }

    /// <summary>The reward model's score per sequence (at its last answer token), in batches of at most <paramref name="batch"/>.</summary>
    public static double[] Scores(ScalarHeadModel rm, IReadOnlyList<PromptResponse> items, int padId, int batch = 16)
    {
        var result = new double[items.Count];
        for (int s = 0; s < items.Count; s += batch)
        {
            var part = items.Skip(s).Take(batch).ToList();
            var b = SequenceBatch.Pack(part, padId);
            using var ng = Grad.NoGrad();
            using var scope = new TensorScope();
            var v = rm.Scores(b.UploadIds(rm.Backend), b.Batch, b.SeqLen).ToArray();
            for (int i = 0; i < part.Count; i++) result[s + i] = v[b.LastRows[i]];
        }
        return result;
    }

    /// <summary>Sum of answer-token log-probs per sequence (DPO's sequence log-likelihood), in batches.</summary>
    public static double[] SequenceLogProbs(LlamaModel model, IReadOnlyList<PromptResponse> items, int padId, int batch = 16)
    {
        var result = new double[items.Count];
        for (int s = 0; s < items.Count; s += batch)
        {
            var part = items.Skip(s).Take(batch).ToList();
            var (lp, _) = AnswerLogProbs(model, part, padId);
            for (int i = 0; i < part.Count; i++) result[s + i] = lp[i].Sum();
        }
        return result;
    }

    /// <summary>A copy of a model's weights in a new model on the same backend (actor, critic body, frozen reference).</summary>
    public static LlamaModel Clone(LlamaModel model)
    {
        var copy = new LlamaModel(model.Config, model.Backend);
        foreach (var (name, t) in model.Parameters) model.Backend.Copy(t, copy[name]);
        copy.Recompute = model.Recompute;
        return copy;
    }
}
