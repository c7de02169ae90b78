using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;

namespace Engine.Training.Alignment;

/// <summary>One optimizer step of a model and its scalar head (each store its own AdamW and gradient-norm clip).</summary>
public sealed class HeadModelOptimizer(ScalarHeadModel model, AdamWOptions options) : IDisposable
{
    readonly AdamW body = new(model.Body, options), head = new(model.Head, options);

    public void BeginStep()
    {
        body.Parallel.BeginStep();
        head.Parallel.BeginStep();
    }

    /// <summary>Updates both; returns the body's pre-clip gradient norm.</summary>
    public double Update(double lr)
    {
        head.Update(lr);
        return body.Update(lr);
    }

    public void Dispose()
    {
        body.Dispose();
        head.Dispose();
    }
}

/// <summary>
/// The reward model: a Llama body (optionally the tuned model's weights) with a scalar head read at the last answer
/// token, trained on preference pairs with the pairwise Bradley–Terry loss (InstructGPT, Baichuan 2, DeepSpeed-Chat
/// step 2). A batch packs its chosen and rejected sequences together; constant learning rate.
/// </summary>
public static class RewardModelTrainer
{
    public sealed record StepLog(int Step, double Loss, double Accuracy, double GradNorm);

    public static List<StepLog> Train(ScalarHeadModel rm, IReadOnlyList<Preference> pairs, RewardSection o, int padId, ulong seed, Action<StepLog>? onStep = null)
    {
        if (pairs.Count == 0) throw new InvalidDataException("reward model: no training pairs (every sampled answer scored as high as the reference?)");
        rm.SetTrainable(true);
        using var opt = new HeadModelOptimizer(rm, o.Optim);
        var logs = new List<StepLog>();
        var order = Recipes.RecipeSources.Permutation(pairs.Count, seed);
        int pos = 0;
        for (int step = 0; step < o.Steps; step++)
        {
            var batch = new List<Preference>();
            for (int i = 0; i < Math.Min(o.BatchSize, pairs.Count); i++)
            {
                if (pos == order.Length) { order = Recipes.RecipeSources.Permutation(pairs.Count, seed + (ulong)step); pos = 0; }
                batch.Add(pairs[order[pos++]]);
            }
            opt.BeginStep();
            double loss, acc;
            using (var scope = new TensorScope())
            {
                (var lossT, loss, acc) = Loss(rm, batch, padId);
                Grad.Backward(lossT);
            }
            double norm = opt.Update(o.Optim.Lr);
            var log = new StepLog(step + 1, loss, acc, norm);
            logs.Add(log);
            onStep?.Invoke(log);
        }
        return logs;
    }

    /// <summary>The Bradley–Terry loss of a batch of pairs (recorded when gradients are on), its value and the share
    /// of pairs ranked right.</summary>
    public static (Tensor Loss, double Value, double Accuracy) Loss(ScalarHeadModel rm, IReadOnlyList<Preference> batch, int padId)
    {
        int n = batch.Count;
        var b = SequenceBatch.Pack([.. batch.Select(p => p.ChosenSequence), .. batch.Select(p => p.RejectedSequence)], padId);
        var scores = rm.Scores(b.UploadIds(rm.Backend), b.Batch, b.SeqLen);
        double value = 0, acc = 0;
        var loss = HostOps.Scalar(scores, xs =>
        {
            var c = new double[n];
            var r = new double[n];
            for (int i = 0; i < n; i++) { c[i] = xs[b.LastRows[i]]; r[i] = xs[b.LastRows[n + i]]; }
            var (l, dc, dr, a) = AlignmentMath.BradleyTerry(c, r);
            var g = new double[xs.Length];
            for (int i = 0; i < n; i++) { g[b.LastRows[i]] = dc[i]; g[b.LastRows[n + i]] = dr[i]; }
            value = l;
            acc = a;
            return (l, g);
        });
        return (loss, value, acc);
    }

    /// <summary>Share of pairs whose chosen answer the reward model scores higher (held-out pair accuracy), and the mean loss.</summary>
    public static (double Accuracy, double Loss) Evaluate(ScalarHeadModel rm, IReadOnlyList<Preference> pairs, int padId, int batch = 8)
    {
        if (pairs.Count == 0) return (double.NaN, double.NaN);
        var c = PolicyOps.Scores(rm, pairs.Select(p => p.ChosenSequence).ToList(), padId, batch);
        var r = PolicyOps.Scores(rm, pairs.Select(p => p.RejectedSequence).ToList(), padId, batch);
        var (loss, _, _, acc) = AlignmentMath.BradleyTerry(c, r);
        return (acc, loss);
    }
}
