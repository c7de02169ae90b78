using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;

namespace Engine.Training.Alignment;

/// <summary>
/// Direct preference optimization (Rafailov et al. 2023) on the reward model's pairs: the tuned model is both the
/// policy's start and the frozen reference (its sequence log-probs computed once), sequence log-probs sum the answer
/// tokens only, loss −log σ(β·margin) (<see cref="AlignmentMath.Dpo"/>), constant learning rate.
/// </summary>
public static class DpoTrainer
{
    public sealed record StepLog(int Step, double Loss, double Accuracy, double Margin, double GradNorm);

    public static List<StepLog> Train(LlamaModel policy, IReadOnlyList<Preference> pairs, double[] refChosen, double[] refRejected,
        DpoSection o, int padId, ulong seed, Action<StepLog>? onStep = null)
    {
        if (pairs.Count == 0) throw new InvalidDataException("DPO: no training pairs");
        policy.SetTrainable(null);
        using var opt = new AdamW(policy, o.Optim);
        var logs = new List<StepLog>();
        var order = Recipes.RecipeSources.Permutation(pairs.Count, seed);
        int pos = 0;
        for (int step = 0; step < o.Steps; step++)
        {
            var idx = new List<int>();
            for (int i = 0; i < Math.Min(o.BatchSize, pairs.Count); i++)
            {
                if (pos == order.Length) { order = Recipes.RecipeSources.Permutation(pairs.Count, seed + (ulong)step); pos = 0; }
                idx.Add(order[pos++]);
            }
            opt.Parallel.BeginStep();
            (double Loss, double Acc, double Margin) r;
            using (var scope = new TensorScope())
            {
                var (lossT, value, acc, margin) = Loss(policy, idx.Select(i => pairs[i]).ToList(), idx.Select(i => refChosen[i]).ToArray(), idx.Select(i => refRejected[i]).ToArray(), o.Beta, padId);
                Grad.Backward(lossT);
                r = (value, acc, margin);
            }
            double norm = opt.Update(o.Optim.Lr);
            var log = new StepLog(step + 1, r.Loss, r.Acc, r.Margin, norm);
            logs.Add(log);
            onStep?.Invoke(log);
        }
        return logs;
    }

    /// <summary>The DPO loss of a batch (recorded when gradients are on): chosen and rejected packed in one batch.</summary>
    public static (Tensor Loss, double Value, double Accuracy, double Margin) Loss(LlamaModel policy, IReadOnlyList<Preference> batch,
        double[] refChosen, double[] refRejected, double beta, int padId)
    {
        int n = batch.Count;
        var b = SequenceBatch.Pack([.. batch.Select(p => p.ChosenSequence), .. batch.Select(p => p.RejectedSequence)], padId);
        var logits = policy.Logits(b.UploadIds(policy.Backend), b.Batch, b.SeqLen);
        var (lp, _, _) = HostOps.TokenLogProbs(logits, b.Targets);
        double value = 0, acc = 0, margin = 0;
        var loss = HostOps.Scalar(lp, xs =>
        {
            var seq = b.AnswerRows.Select(rows => rows.Sum(r => xs[r])).ToArray();
            var (l, dc, dr, a, m) = AlignmentMath.Dpo(seq.AsSpan(0, n), seq.AsSpan(n, n), refChosen, refRejected, beta);
            var g = new double[xs.Length];
            for (int i = 0; i < n; i++)
            {
                foreach (var r in b.AnswerRows[i]) g[r] = dc[i];
                foreach (var r in b.AnswerRows[n + i]) g[r] = dr[i];
            }
            (value, acc, margin) = (l, a, m);
            return (l, g);
        });
        return (loss, value, acc, margin);
    }
}
