using Engine.Core.Autograd;
using Engine.Core.Distributed;

namespace Engine.Core;

/*
 * Megatron-LM's conjugate operators as autograd ops (its mappings.py), over the ranks of one tensor-parallel group:
 *   CopyToGroup       (f)  forward: identity               backward: all-reduce          (entering a column-parallel region)
 *   ReduceFromGroup   (g)  forward: all-reduce             backward: identity            (leaving a row-parallel region)
 *   GatherRows        (SP) forward: all-gather token rows  backward: reduce-scatter rows (entering, sequence parallel)
 *   ReduceScatterRows (SP) forward: reduce-scatter rows    backward: all-gather rows     (leaving, sequence parallel)
 * plus the vocabulary-parallel embedding and cross-entropy (a rank holds vocabulary rows [start, start + V/tp)).
 * Every rank of the group runs the same ops in the same order, forward and backward (the collectives are matched by
 * order). With a group of one rank each is the plain op.
 */
public static partial class F
{
    /// <summary>Megatron's f: x unchanged; in backward the gradient is summed over <paramref name="group"/> (each rank's
    /// column-parallel layers computed their share of it).</summary>
    public static Tensor CopyToGroup(Tensor x, ICommunicator group)
    {
        if (group.WorldSize == 1) return x;
        var y = x.View(x.Shape);
        if (Grad.Needs(x))
            Grad.Record(new LambdaNode([x], [y], () =>
            {
                using var prof = Profiler.Time("tp.copy.bwd");
                var dy = y.Grad!;
                group.AllReduce(dy).Wait();
                HandOn(x, dy);
            }));
        return y;
    }

    /// <summary>Megatron's g: the sum of x over <paramref name="group"/> (a row-parallel layer's partial outputs); the
    /// gradient passes unchanged.</summary>
    public static Tensor ReduceFromGroup(Tensor x, ICommunicator group)
    {
        if (group.WorldSize == 1) return x;
        var be = x.Backend;
        var y = be.Empty(x.Shape, x.DType);
        be.Copy(x, y);
        using (Profiler.Time("tp.reduce.fwd")) group.AllReduce(y).Wait();
        if (Grad.Needs(x)) Grad.Record(new LambdaNode([x], [y], () => HandOn(x, y.Grad!)));
        return y;
    }

    /// <summary>Sequence parallelism: every rank's token rows [N, C] joined in rank order into [N·tp, C]; in backward the
    /// gradient rows are summed over the group and each rank keeps its own.</summary>
    public static Tensor GatherRows(Tensor x, ICommunicator group)
    {
        if (group.WorldSize == 1) return x;
        var be = x.Backend;
        var shape = (int[])x.Shape.Clone();
        shape[0] *= group.WorldSize;
        var y = be.Empty(shape, x.DType);
        using (Profiler.Time("sp.gather.fwd")) group.AllGather(x, y).Wait();
        if (Grad.Needs(x))
            Grad.Record(new LambdaNode([x], [y], () =>
            {
                using var prof = Profiler.Time("sp.gather.bwd");
                var dx = be.Empty(x.Shape, x.DType);
                group.ReduceScatter(y.Grad!, dx).Wait();
                Grad.AccumulateOwned(x, dx);
            }));
        return y;
    }

    /// <summary>Sequence parallelism: the sum over the group of x [N, C] (partial outputs), each rank keeping its
    /// 1/tp of the rows [N/tp, C]; in backward the gradient rows are gathered back.</summary>
    public static Tensor ReduceScatterRows(Tensor x, ICommunicator group)
    {
        if (group.WorldSize == 1) return x;
        if (x.Shape[0] % group.WorldSize != 0)
            throw new ArgumentException($"ReduceScatterRows: {x.Shape[0]} rows do not split over {group.WorldSize} ranks");
        var be = x.Backend;
        var shape = (int[])x.Shape.Clone();
        shape[0] /= group.WorldSize;
        var y = be.Empty(shape, x.DType);
        using (Profiler.Time("sp.scatter.fwd")) group.ReduceScatter(x, y).Wait();
        if (Grad.Needs(x))
            Grad.Record(new LambdaNode([x], [y], () =>
            {
                using var prof = Profiler.Time("sp.scatter.bwd");
                var dx = be.Empty(x.Shape, x.DType);
                group.AllGather(y.Grad!, dx).Wait();
                Grad.AccumulateOwned(x, dx);
            }));
        return y;
    }

    /// <summary>An output's gradient, complete and read by no one else once its node runs, handed to the input (taken
    /// over when the input has none yet, as Add does).</summary>
    static void HandOn(Tensor x, Tensor dy)
    {
        if (!x.RequiresGrad) return;
        if (x.Grad == null && !x.IsParameter) x.Grad = dy;
        else Grad.Accumulate(x, dy);
    }

    /// <summary>
    /// Rows of a vocabulary shard table [V/tp, C] holding token ids [vocabStart, vocabStart + V/tp) for ids [N]: zero
    /// rows for ids another rank holds (the group's sum of the outputs is the whole lookup). Backward accumulates only
    /// the rows this shard looked up.
    /// </summary>
    public static Tensor VocabParallelEmbedding(Tensor ids, Tensor table, int vocabStart)
    {
        if (ids.DType != DType.I32 || ids.Rank != 1) throw new ArgumentException($"VocabParallelEmbedding: ids must be int32 [N], got {ids.Describe()}");
        var be = table.Backend;
        int n = ids.Shape[0], rows = table.Shape[0];
        var host = new float[n];
        be.Download(ids, host);
        var local = new int[n];
        var outside = new List<(int Start, int Count)>();
        for (int i = 0; i < n; i++)
        {
            int id = (int)host[i] - vocabStart;
            if ((uint)id < (uint)rows) { local[i] = id; continue; }
            if (outside.Count > 0 && outside[^1].Start + outside[^1].Count == i) outside[^1] = (outside[^1].Start, outside[^1].Count + 1);
            else outside.Add((i, 1));
        }
        var localIds = be.Empty([n], DType.I32);
        be.Upload(localIds, local);
        var y = be.Empty([n, table.Shape[1]], be.ActivationDType);
        using (Profiler.Time("embedding.fwd")) be.EmbeddingForward(localIds, table, y);
        foreach (var (s, c) in outside) be.Fill(y.Narrow0(s, c), 0f);
        if (Grad.Needs(table))
            Grad.Record(new LambdaNode([table], [y], () =>
            {
                using var prof = Profiler.Time("embedding.bwd");
                var dy = y.Grad!;
                foreach (var (s, c) in outside) be.Fill(dy.Narrow0(s, c), 0f);
                be.EmbeddingBackward(localIds, dy, Grad.GradBuffer(table));
            }));
        return y;
    }

    /// <summary>
    /// Megatron's vocabulary-parallel cross-entropy: this rank's logits [N, V/tp] of vocabulary rows [vocabStart, …)
    /// against the whole vocabulary's targets [N] (−100 ignored), + zLoss·lse². Each rank computes its rows' max, Σexp
    /// and (where it holds the target) the target's logit; the [N, 3] statistics are gathered over the group — never the
    /// logits — and every rank forms the same lse and losses. Returns the scalar loss Σ losses ÷ normalizer and the
    /// per-row losses, as <see cref="CrossEntropy"/>; when recording, the logits shard becomes its own gradient.
    /// </summary>
    public static (Tensor Loss, Tensor RowLosses) VocabParallelCrossEntropy(Tensor logits, Tensor targets, int vocabStart, ICommunicator group,
        float normalizer, float zLoss = 0f)
    {
        if (logits.Rank != 2) throw new ArgumentException($"VocabParallelCrossEntropy: logits must be [N, V/tp], got {logits.Describe()}");
        if (targets.DType != DType.I32 || targets.Rank != 1 || targets.Shape[0] != logits.Shape[0])
            throw new ArgumentException($"VocabParallelCrossEntropy: targets must be int32 [{logits.Shape[0]}], got {targets.Describe()}");
        if (!(normalizer > 0)) throw new ArgumentOutOfRangeException(nameof(normalizer), $"normalizer must be positive, got {normalizer}");
        var be = logits.Backend;
        int n = logits.Shape[0], tp = group.WorldSize;
        var stats = be.Empty([n, 3]);
        var all = be.Empty([tp * n, 3]);
        using (Profiler.Time("crossentropy.fwd"))
        {
            be.CrossEntropyShardStats(logits, targets, vocabStart, stats);
            group.AllGather(stats, all).Wait();
        }
        var s = all.ToArray();
        var tg = new float[n];
        be.Download(targets, tg);
        var lse = new float[n];
        var rowLosses = new float[n];
        double total = 0;
        for (int i = 0; i < n; i++)
        {
            double m = double.NegativeInfinity, target = 0;
            for (int r = 0; r < tp; r++) m = Math.Max(m, s[(r * n + i) * 3]);
            double sum = 0;
            for (int r = 0; r < tp; r++)
            {
                long at = (r * (long)n + i) * 3;
                sum += s[at + 1] * Math.Exp(s[at] - m);
                target += s[at + 2];   // only the rank holding the target wrote a non-zero logit
            }
            double z = m + Math.Log(sum);
            lse[i] = (float)z;
            if ((int)tg[i] == Engine.Cpu.Ops.CrossEntropyCpu.IgnoreIndex) continue;
            rowLosses[i] = (float)(z - target + zLoss * z * z);
            total += rowLosses[i];
        }
        var losses = be.Empty([n]);
        be.Upload(losses, rowLosses);
        var loss = be.Empty([1]);
        be.Upload(loss, [(float)(total / normalizer)]);
        if (Grad.Needs(logits))
        {
            var lseT = be.Empty([n]);
            be.Upload(lseT, lse);
            be.CrossEntropyShardGradient(logits, targets, vocabStart, lseT, zLoss, 1f / normalizer);
            Grad.Record(new LambdaNode([logits], [loss], () =>
            {
                using var prof = Profiler.Time("crossentropy.bwd");
                float dloss = loss.Grad!.Item();
                if (dloss != 1f) be.Scale(logits, dloss);
                if (logits.Grad == null) logits.Grad = logits; // the buffer already holds d loss / d logits
                else be.AddInPlace(logits.Grad, logits, 1f);
            }));
        }
        return (loss, losses);
    }

    /// <summary>Rotary embedding of x [N, H·D] whose rows are laid out as <paramref name="layout"/>: each block at its
    /// own positions (context parallelism's chunks sit at their places in the whole sequence).</summary>
    public static Tensor Rope(Tensor x, RopeParams p, SequenceLayout layout, int heads)
    {
        if (layout.Blocks.Count == 1)
        {
            var b = layout.Blocks[0];
            return Rope(x, p, b.Batch, b.SeqLen, heads, b.Offset);
        }
        if (x.Rank != 2 || x.Shape[0] != layout.Tokens || x.Shape[1] != heads * p.HeadDim)
            throw new ArgumentException($"Rope: x {Shape.Format(x.Shape)} is not [tokens={layout.Tokens}, H*D={heads * p.HeadDim}] for layout {layout}");
        var be = x.Backend;
        var y = be.Empty(x.Shape, x.DType);
        void Apply(Tensor src, Tensor dst, bool inverse)
        {
            int at = 0;
            foreach (var b in layout.Blocks)
            {
                be.Rope(src.Narrow0(at, b.Tokens), dst.Narrow0(at, b.Tokens), p, b.Batch, b.SeqLen, heads, b.Offset, inverse);
                at += b.Tokens;
            }
        }
        using (Profiler.Time("rope.fwd")) Apply(x, y, inverse: false);
        if (Grad.Needs(x))
            Grad.Record(new LambdaNode([x], [y], () =>
            {
                using var prof = Profiler.Time("rope.bwd");
                var dx = be.Empty(x.Shape, x.DType);
                Apply(y.Grad!, dx, inverse: true);
                Grad.AccumulateOwned(x, dx);
            }));
        return y;
    }
}
