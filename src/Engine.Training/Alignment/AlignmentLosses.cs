using Engine.Core;
using Engine.Model;
using Engine.Training.Run;

namespace Engine.Training.Alignment;

/// <summary>A micro-batch of preference pairs: chosen then rejected sequences packed in one [2n × T] batch, with the
/// frozen reference's sequence log-probs of each (DPO).</summary>
public sealed record PairBatch(SequenceBatch Packed, int Pairs, double[] RefChosen, double[] RefRejected)
{
    /// <summary>The pairs as the loop's micro-batch (an empty one when a replica's share of a small batch is empty).</summary>
    public static Batch Of(IReadOnlyList<Preference> pairs, int padId, double[]? refChosen = null, double[]? refRejected = null)
    {
        if (pairs.Count == 0) return new Batch([], [], []);
        var b = SequenceBatch.Pack([.. pairs.Select(p => p.ChosenSequence), .. pairs.Select(p => p.RejectedSequence)], padId);
        return new Batch(b.Ids, b.Targets, Enumerable.Repeat("pairs", b.Batch).ToArray())
        {
            Payload = new PairBatch(b, pairs.Count, refChosen ?? new double[pairs.Count], refRejected ?? new double[pairs.Count]),
        };
    }
}

/// <summary>
/// A reward-model or DPO run's pairs as the loop's stream: every step draws batch_size pairs (the global batch) in a
/// seeded order — a new permutation, seeded by the step, when one is used up — and splits them evenly over the
/// data-parallel replicas, one micro-batch each, so any number of replicas trains on the pairs one process does.
/// </summary>
public sealed class PairBatches(IReadOnlyList<Preference> pairs, int perStep, int replicas, ulong seed, int padId,
    double[]? refChosen = null, double[]? refRejected = null) : IBatchSource
{
    int[] order = Recipes.RecipeSources.Permutation(pairs.Count, seed);
    int pos, step, piece;
    List<int> drawn = [];

    public IReadOnlyList<string> SourceNames => ["pairs"];

    public Batch Next(int batch, int seqLen)
    {
        if (piece == 0)
        {
            drawn = [];
            for (int i = 0; i < Math.Min(perStep, pairs.Count); i++)
            {
                if (pos == order.Length) { order = Recipes.RecipeSources.Permutation(pairs.Count, seed + (ulong)step); pos = 0; }
                drawn.Add(order[pos++]);
            }
        }
        int n = drawn.Count, lo = piece * n / replicas, hi = (piece + 1) * n / replicas;
        var mine = drawn.GetRange(lo, hi - lo);
        if (++piece == replicas) { piece = 0; step++; }
        return PairBatch.Of(mine.Select(i => pairs[i]).ToList(), padId,
            refChosen == null ? null : mine.Select(i => refChosen[i]).ToArray(), refRejected == null ? null : mine.Select(i => refRejected[i]).ToArray());
    }
}

/// <summary>The reward model's pairwise Bradley–Terry loss on the scalar head's score at each sequence's last answer
/// token; reports the share of pairs ranked right ("accuracy").</summary>
public sealed class BradleyTerryLoss(ScalarHeadModel rm) : ITrainingLoss
{
    public IReadOnlyList<string> Accounts => ["accuracy"];

    public long Count(Batch b) => (b.Payload as PairBatch)?.Pairs ?? 0;

    public Tensor Forward(Tensor input, Batch b, long normalizer, LossAccounting accounting)
    {
        var p = (PairBatch)b.Payload!;
        var sb = p.Packed;
        int n = p.Pairs;
        double share = (double)n / normalizer;   // this micro-batch's part of the global mean over pairs
        var scores = rm.StageScores(input, sb.Batch, sb.SeqLen);
        return HostOps.Scalar(scores, xs =>
        {
            var c = new double[n];
            var r = new double[n];
            for (int i = 0; i < n; i++) { c[i] = xs[sb.LastRows[i]]; r[i] = xs[sb.LastRows[n + i]]; }
            var (l, dc, dr, a) = AlignmentMath.BradleyTerry(c, r);
            var g = new double[xs.Length];
            for (int i = 0; i < n; i++) { g[sb.LastRows[i]] = dc[i] * share; g[sb.LastRows[n + i]] = dr[i] * share; }
            accounting.Add("accuracy", a * n, n);
            return (l * share, g);
        });
    }
}

/// <summary>DPO's loss on the policy's sequence log-probs (answer tokens only) against the frozen reference's; reports
/// the share of pairs with a positive implicit reward margin ("accuracy") and the mean β·margin ("margin").</summary>
public sealed class DpoLoss(LlamaModel policy, double beta) : ITrainingLoss
{
    public IReadOnlyList<string> Accounts => ["accuracy", "margin"];

    public long Count(Batch b) => (b.Payload as PairBatch)?.Pairs ?? 0;

    public Tensor Forward(Tensor input, Batch b, long normalizer, LossAccounting accounting)
    {
        var p = (PairBatch)b.Payload!;
        var sb = p.Packed;
        int n = p.Pairs;
        double share = (double)n / normalizer;
        var (lp, _, _) = HostOps.TokenLogProbs(policy.StageLogits(input, sb.Batch, sb.SeqLen), sb.Targets);
        return HostOps.Scalar(lp, xs =>
        {
            var seq = sb.AnswerRows.Select(rows => rows.Sum(r => xs[r])).ToArray();
            var (l, dc, dr, a, m) = AlignmentMath.Dpo(seq.AsSpan(0, n), seq.AsSpan(n, n), p.RefChosen, p.RefRejected, beta);
            var g = new double[xs.Length];
            for (int i = 0; i < n; i++)
            {
                foreach (var r in sb.AnswerRows[i]) g[r] = dc[i] * share;
                foreach (var r in sb.AnswerRows[n + i]) g[r] = dr[i] * share;
            }
            accounting.Add("accuracy", a * n, n);
            accounting.Add("margin", m * n, n);
            return (l * share, g);
        });
    }
}

/// <summary>A micro-batch of PPO rollouts: the packed sequences, the rows of their answer tokens in order, and per
/// answer token the sampling-time log-prob, advantage, value and return.</summary>
public sealed record RolloutBatch(SequenceBatch Packed, int[] Rows, double[] OldLogProbs, double[] Advantages, double[] OldValues, double[] Returns)
{
    public static Batch Of(IReadOnlyList<Rollout> mb, int padId)
    {
        if (mb.Count == 0) return new Batch([], [], []);
        var b = SequenceBatch.Pack(mb.Select(r => r.Sequence).ToList(), padId);
        return new Batch(b.Ids, b.Targets, Enumerable.Repeat("rollouts", b.Batch).ToArray())
        {
            Payload = new RolloutBatch(b, b.AnswerRows.SelectMany(x => x).ToArray(), mb.SelectMany(r => r.OldLogProbs).ToArray(),
                mb.SelectMany(r => r.Advantages).ToArray(), mb.SelectMany(r => r.OldValues).ToArray(), mb.SelectMany(r => r.Returns).ToArray()),
        };
    }
}

/// <summary>PPO's mini-batches in update order as the loop's stream: each update's mini-batch split evenly over the
/// data-parallel replicas.</summary>
public sealed class RolloutBatches(IReadOnlyList<IReadOnlyList<Rollout>> updates, int replicas, int padId) : IBatchSource
{
    int update, piece;

    public IReadOnlyList<string> SourceNames => ["rollouts"];

    public Batch Next(int batch, int seqLen)
    {
        var mb = updates[update];
        int lo = piece * mb.Count / replicas, hi = (piece + 1) * mb.Count / replicas;
        if (++piece == replicas) { piece = 0; update++; }
        return RolloutBatch.Of(mb.Skip(lo).Take(hi - lo).ToList(), padId);
    }
}

/// <summary>PPO's clipped policy loss over the actor's answer-token log-probs (mean over the mini-batch's answer tokens);
/// reports the share of tokens where the clip was active and the approximate KL to the sampling policy.</summary>
public sealed class PpoPolicyLoss(LlamaModel actor, double clip) : ITrainingLoss
{
    public IReadOnlyList<string> Accounts => ["clip_fraction", "approx_kl"];

    public long Count(Batch b) => (b.Payload as RolloutBatch)?.Rows.Length ?? 0;

    public Tensor Forward(Tensor input, Batch b, long normalizer, LossAccounting accounting)
    {
        var p = (RolloutBatch)b.Payload!;
        int n = p.Rows.Length;
        double share = (double)n / normalizer;
        var (lp, _, _) = HostOps.TokenLogProbs(actor.StageLogits(input, p.Packed.Batch, p.Packed.SeqLen), p.Packed.Targets);
        return HostOps.Scalar(lp, xs =>
        {
            var cur = p.Rows.Select(r => xs[r]).ToArray();
            var (l, d, c, k) = AlignmentMath.PolicyLoss(cur, p.OldLogProbs, p.Advantages, clip);
            var g = new double[xs.Length];
            for (int i = 0; i < n; i++) g[p.Rows[i]] = d[i] * share;
            accounting.Add("clip_fraction", c * n, n);
            accounting.Add("approx_kl", k * n, n);
            return (l * share, g);
        });
    }
}

/// <summary>PPO's clipped value loss over the critic's per-token values of the answer tokens; reports the share of
/// tokens where the clipped term was the larger.</summary>
public sealed class PpoValueLoss(ScalarHeadModel critic, double clip) : ITrainingLoss
{
    public IReadOnlyList<string> Accounts => ["value_clip_fraction"];

    public long Count(Batch b) => (b.Payload as RolloutBatch)?.Rows.Length ?? 0;

    public Tensor Forward(Tensor input, Batch b, long normalizer, LossAccounting accounting)
    {
        var p = (RolloutBatch)b.Payload!;
        int n = p.Rows.Length;
        double share = (double)n / normalizer;
        var v = critic.StageScores(input, p.Packed.Batch, p.Packed.SeqLen);
        return HostOps.Scalar(v, xs =>
        {
            var cur = p.Rows.Select(r => xs[r]).ToArray();
            var (l, d, c) = AlignmentMath.ValueLoss(cur, p.OldValues, p.Returns, clip);
            var g = new double[xs.Length];
            for (int i = 0; i < n; i++) g[p.Rows[i]] = d[i] * share;
            accounting.Add("value_clip_fraction", c * n, n);
            return (l * share, g);
        });
    }
}
