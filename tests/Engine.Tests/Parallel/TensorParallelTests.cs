using Engine.Core;
using Engine.Core.Autograd;
using Engine.Parallel;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Parallel;

namespace Engine.Tests.Parallel;

/// <summary>
/// Tensor parallelism (Megatron-style, with and without sequence parallelism) on thread ranks: the vocabulary-parallel
/// cross-entropy equals the full one, values and gradients; `engine train` at tp = 2 — alone, with 2 key/value heads
/// for 4 query heads (split) and with 1 (replicated on both ranks), with pipeline stages and with data-parallel
/// replicas at ZeRO-1 and ZeRO-3 — equals one process on the same global batch: losses per step and every final
/// weight tensor within 1e-5 relative (<see cref="Zero3Tests.AssertSameRun"/>). The ranks compute the same sums in
/// another order (a row-parallel layer's partial products are summed by the all-reduce; the loss's logsumexp is
/// combined from the vocabulary shards in double), so the results differ in the last fp32 bits, which AdamW carries
/// into the weights at a similar size.
/// </summary>
public class TensorParallelTests
{
    // ---- vocabulary-parallel cross-entropy (unit) ----------------------------------------------------------------

    [Theory]
    [InlineData(2, 0f)]
    [InlineData(2, 1e-3f)]
    [InlineData(4, 1e-2f)]
    public void VocabParallelCrossEntropyEqualsTheFullOne(int tp, float zLoss)
    {
        const int N = 37, V = 48;
        var rng = new Rng(11);
        var logits = new float[N * V];
        rng.FillNormal(logits, 0, 3);
        var targets = new int[N];
        for (int i = 0; i < N; i++) targets[i] = i % 5 == 0 ? -100 : rng.NextInt(V);
        float normalizer = targets.Count(t => t != -100) + 3;
        var be = CpuBackend.Instance;

        // the full cross-entropy: values and d loss / d logits
        float[] fullLosses, fullGrad;
        double fullLoss;
        using (var scope = new TensorScope())
        {
            var x = be.Empty([N, V]);
            be.Upload(x, logits);
            x.RequiresGrad = true;
            var t = be.Empty([N], DType.I32);
            be.Upload(t, targets);
            var (loss, rows) = F.CrossEntropy(x, t, normalizer, zLoss);
            Grad.Backward(loss);
            (fullLoss, fullLosses, fullGrad) = (loss.Item(), rows.ToArray(), x.Grad!.ToArray());
        }

        var results = ThreadCommunicator.Run(tp, c =>
        {
            int vr = V / tp;
            var shard = new float[N * vr];
            for (int i = 0; i < N; i++) Array.Copy(logits, i * V + c.Rank * vr, shard, i * vr, vr);
            using var scope = new TensorScope();
            var x = be.Empty([N, vr]);
            be.Upload(x, shard);
            x.RequiresGrad = true;
            var t = be.Empty([N], DType.I32);
            be.Upload(t, targets);
            var (loss, rows) = F.VocabParallelCrossEntropy(x, t, c.Rank * vr, c, normalizer, zLoss);
            Grad.Backward(loss);
            return (Loss: (double)loss.Item(), Rows: rows.ToArray(), Grad: x.Grad!.ToArray());
        });
        for (int r = 0; r < tp; r++)
        {
            var (loss, rows, grad) = results[r];
            Assert.Equal(fullLoss, loss, 1e-5 * Math.Abs(fullLoss));
            for (int i = 0; i < N; i++)
            {
                Assert.True(Math.Abs(rows[i] - fullLosses[i]) <= 1e-5 * Math.Max(1, Math.Abs(fullLosses[i])), $"rank {r} row {i}: loss {rows[i]} vs {fullLosses[i]}");
                if (targets[i] == -100) Assert.Equal(0f, rows[i]);
            }
            int vr = V / tp;
            for (int i = 0; i < N; i++)
                for (int j = 0; j < vr; j++)
                {
                    float want = fullGrad[i * V + r * vr + j], got = grad[i * vr + j];
                    Assert.True(Math.Abs(got - want) <= 1e-6 + 1e-5 * Math.Abs(want), $"rank {r} d logit [{i}, {r * vr + j}]: {got} vs {want}");
                }
        }
    }

    // ---- engine train at tp = 2 --------------------------------------------------------------------------------

    static TrainConfig Config(string dir, int accum, ParallelSection parallel, int kvHeads = 2, bool tied = false, bool normHead = false, double zLoss = 0)
    {
        var cfg = Zero3Tests.Config(dir, accum, zero: 0, tied: tied, steps: 3);
        cfg.Model.NumKvHeads = kvHeads;
        cfg.Model.NormHead = normHead;
        cfg.Train.ZLoss = zLoss;
        cfg.Parallel = parallel with { BucketMb = 0.01 };
        return cfg;
    }

    /// <summary>(sequence parallel, key/value heads for 4 query heads).</summary>
    [Theory]
    [InlineData(true, 2)]
    [InlineData(false, 2)]
    [InlineData(true, 1)]
    [InlineData(false, 1)]
    public void Tp2EqualsOneProcess(bool sequenceParallel, int kvHeads)
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var single = Zero3Tests.Train(1, Config(a.Path, 2, new ParallelSection(), kvHeads));
        var tp = Zero3Tests.Train(2, Config(b.Path, 2, new ParallelSection { Tp = 2, SequenceParallel = sequenceParallel }, kvHeads));
        Zero3Tests.AssertSameRun(single, tp, $"tp 2{(sequenceParallel ? " + sequence parallel" : "")}, {kvHeads} kv head(s)");
        Assert.Equal(single.FinalValidLoss!.Value, tp.FinalValidLoss!.Value, 1e-5);
        AssertSplit(single, tp, 2);
    }

    /// <summary>Tied embeddings (the vocabulary shard of the embedding is the head's) and a NormHead model (rows
    /// normalised within each shard), both with z-loss through the vocabulary-parallel loss.</summary>
    [Theory]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void Tp2WithTiedOrNormHeadAndZLossEqualsOneProcess(bool tied, bool normHead)
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var single = Zero3Tests.Train(1, Config(a.Path, 2, new ParallelSection(), tied: tied, normHead: normHead, zLoss: 1e-3));
        var tp = Zero3Tests.Train(2, Config(b.Path, 2, new ParallelSection { Tp = 2 }, tied: tied, normHead: normHead, zLoss: 1e-3));
        // NormHead's row norms and the z term add two more reassociated sums per row: AdamW carries their last-bit
        // differences into the weights at up to ~1e-5 (a wrong gradient differs at the percent level)
        Zero3Tests.AssertSameRun(single, tp, $"tp 2, {(tied ? "tied" : "NormHead")}, z-loss", tol: 3e-5);
    }

    /// <summary>Mixed layouts on four thread ranks, each equal to one process on the same global batch (4 micro-batches
    /// of 2 sequences per step): dp 2 × tp 2 at ZeRO-1 and ZeRO-3, pp 2 × tp 2, cp 2 × tp 2, dp 2 × cp 2 (ZeRO-2), and
    /// the interleaved schedule (pp 2 × 2 chunks) alone and with tp 2.</summary>
    [Theory]
    [InlineData(2, 1, 2, 1, 1, 1, false)]
    [InlineData(2, 1, 2, 1, 3, 1, true)]
    [InlineData(1, 2, 2, 1, 1, 1, true)]
    [InlineData(1, 1, 2, 2, 0, 1, true)]
    [InlineData(2, 1, 1, 2, 2, 1, false)]
    [InlineData(1, 2, 2, 1, 1, 2, true)]
    [InlineData(1, 2, 1, 1, 0, 2, false)]
    public void MixedLayoutsEqualOneProcess(int dp, int pp, int tp, int cp, int zero, int virtualStages, bool sequenceParallel)
    {
        const int micro = 4;
        using var a = new TempDir();
        using var b = new TempDir();
        var single = Zero3Tests.Train(1, Config(a.Path, micro, new ParallelSection()));
        var layout = new ParallelSection
        {
            Pp = pp,
            Tp = tp,
            Cp = cp,
            Zero = zero,
            SequenceParallel = sequenceParallel,
            VirtualStages = virtualStages,
            Schedule = virtualStages > 1 ? "interleaved" : "1f1b",
        };
        var split = Zero3Tests.Train(dp * pp * tp * cp, Config(b.Path, micro / dp, layout));
        Zero3Tests.AssertSameRun(single, split, $"dp {dp} × pp {pp} × cp {cp} × tp {tp}, ZeRO-{zero}, v {virtualStages}");
    }

    /// <summary>Context parallelism alone at odd sequence lengths, short and about 1k (the chunks padded at the end of
    /// each sequence).</summary>
    [Theory]
    [InlineData(29)]
    [InlineData(1023)]
    public void Cp2AtAnOddSequenceLengthEqualsOneProcess(int seqLen)
    {
        using var a = new TempDir();
        using var b = new TempDir();
        TrainConfig Odd(string dir, ParallelSection p)
        {
            var cfg = Config(dir, 2, p);
            cfg.Train.SeqLen = seqLen;
            cfg.Model.MaxPositionEmbeddings = Math.Max(cfg.Model.MaxPositionEmbeddings, seqLen + 1);
            return cfg;
        }
        var single = Zero3Tests.Train(1, Odd(a.Path, new ParallelSection()));
        var cp = Zero3Tests.Train(2, Odd(b.Path, new ParallelSection { Cp = 2 }));
        // at ~1k keys the blockwise log-sum-exp merge sums each row's attention in another order than one pass:
        // measured 1.0e-5 of a weight's norm after 3 AdamW steps, so that length is held to 3e-5
        Zero3Tests.AssertSameRun(single, cp, $"cp 2 at sequence {seqLen}", seqLen > 512 ? 3e-5 : 1e-5);
        Assert.Equal(single.FinalValidLoss!.Value, cp.FinalValidLoss!.Value, 1e-5);
    }

    /// <summary>
    /// Checkpoints reshard across every dimension by parameter name and slice: a run checkpointed at step 3 of 6 in
    /// one layout resumes in another and continues the uninterrupted run (losses of steps 4-6 and the final weights
    /// within 1e-5 relative), the global batch kept at 4 micro-batches. Layouts (dp × pp × cp × tp, ZeRO):
    /// dp 2 × pp 2 × tp 2 → one process; one process → pp 2 × cp 2 × tp 2; tp 2 × dp 2 at ZeRO-3 (master weights in
    /// tensor pieces) → tp 1 × dp 2 at ZeRO-3; tp 2 (1 key/value head, replicated) → cp 2 × tp 2 with sequence parallel.
    /// </summary>
    [Theory]
    [InlineData(2, 2, 1, 2, 1, 1, 1, 1, 1, 0, 2)]
    [InlineData(1, 1, 1, 1, 0, 1, 2, 2, 2, 1, 2)]
    [InlineData(2, 1, 1, 2, 3, 2, 1, 1, 1, 3, 2)]
    [InlineData(1, 1, 1, 2, 1, 1, 1, 2, 2, 1, 1)]
    public void CheckpointsReshardAcrossEveryDimension(int dpA, int ppA, int cpA, int tpA, int zeroA, int dpB, int ppB, int cpB, int tpB, int zeroB, int kvHeads)
    {
        const int micro = 4;
        TrainConfig Cfg(string dir, int dp, int pp, int cp, int tp, int zero)
        {
            var cfg = Config(dir, micro / dp, new ParallelSection { Pp = pp, Cp = cp, Tp = tp, Zero = zero }, kvHeads);
            cfg.Train.Steps = 6;
            cfg.Output = new OutputSection { Dir = dir, CheckpointEvery = 3, KeepCheckpoints = 5 };
            return cfg;
        }
        using var a = new TempDir();
        using var b = new TempDir();
        var straight = Zero3Tests.Train(dpA * ppA * cpA * tpA, Cfg(a.Path, dpA, ppA, cpA, tpA, zeroA));
        string ckpt = Checkpoints.List(Path.Combine(a.Path, "checkpoints")).Single(d => d.EndsWith("step_00000003", StringComparison.Ordinal));
        Assert.Equal(tpA, Checkpoints.Open(ckpt).Manifest.Tp);
        var resumed = Zero3Tests.Train(dpB * ppB * cpB * tpB, Cfg(b.Path, dpB, ppB, cpB, tpB, zeroB), resume: ckpt);
        Assert.Equal([4, 5, 6], resumed.Steps.Select(s => s.Step));
        for (int i = 0; i < 3; i++)
            Assert.True(Math.Abs(straight.Steps[3 + i].Loss - resumed.Steps[i].Loss) <= 1e-5 * straight.Steps[3 + i].Loss,
                $"step {4 + i}: resumed loss {resumed.Steps[i].Loss} vs {straight.Steps[3 + i].Loss}");
        var wa = Zero3Tests.Weights(straight.WeightsDir);
        foreach (var (name, w) in Zero3Tests.Weights(resumed.WeightsDir))
            Assert.True(Zero3Tests.RelativeDifference(wa[name], w) <= 1e-5, $"{name}: {Zero3Tests.RelativeDifference(wa[name], w):E2}");
    }

    /// <summary>A tensor rank held its share of the parameters, not a whole copy (the norms, and key/value heads when
    /// replicated, are whole on every rank).</summary>
    internal static void AssertSplit(TrainResult single, TrainResult split, int tp)
    {
        Assert.True(split.Parameters < single.Parameters * 0.75, $"a tensor rank holds {split.Parameters:N0} of {single.Parameters:N0} parameters: the model was not split over {tp} ranks");
        Assert.True(split.Parameters >= single.Parameters / tp, $"a tensor rank holds {split.Parameters:N0}, less than 1/{tp} of {single.Parameters:N0}");
    }
}
