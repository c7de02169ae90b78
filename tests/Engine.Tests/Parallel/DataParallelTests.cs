using Engine.Core;
using Engine.Core.Autograd;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Parallel;
using Engine.Tests.Model;
using Engine.Training;
using Engine.Training.Forgetting;
using Engine.Training.Parallel;

namespace Engine.Tests.Parallel;

/// <summary>
/// Data parallelism and ZeRO on ranks-as-threads: N ranks with grad_accum A must equal one process with grad_accum
/// N·A on the same global batch.
/// <para>
/// <b>Tolerance, and why.</b> The single process sums micro-batch gradients in place, one after another (and its
/// GEMMs accumulate each into the running sum); N ranks sum their own micro-batches, then the communicator sums
/// the ranks' partial sums. fp32 addition is not associative, so the gradients differ in the last bits (relative
/// ~1e-7); AdamW divides by √v, which carries such differences into the weights at a similar relative size. After a
/// few steps at lr 1e-2 the weights agree to <see cref="WeightTol"/> and the losses to <see cref="LossTol"/>.
/// Where the order is the same — ZeRO stages against each other at one world size and grad_accum 1 (the thread
/// communicator folds in rank order, identically in all-reduce and reduce-scatter), a resume at the same layout —
/// results are compared bitwise.
/// </para>
/// </summary>
public class DataParallelTests
{
    const double WeightTol = 2e-5, LossTol = 1e-5;
    const int Batch = 2, Seq = 8, Steps = 3;

    static LlamaConfig Cfg(bool tied = false, int layers = 2) => TestModels.Tiny(tied) with { VocabSize = 40, NumLayers = layers };

    /// <summary>One global stream of random micro-batches (every rank builds the same one).</summary>
    sealed class RandomTokens(int vocab, ulong seed) : IBatchSource
    {
        readonly Rng rng = new(seed);

        public Batch Next(int batch, int seqLen)
        {
            var ids = new int[batch * seqLen];
            var tg = new int[batch * seqLen];
            for (int i = 0; i < ids.Length; i++)
            {
                ids[i] = rng.NextInt(vocab);
                int t = rng.NextInt(vocab + 8);
                tg[i] = t >= vocab ? -100 : t;           // some ignored targets: the global count matters
            }
            return new Batch(ids, tg, Enumerable.Repeat("train", batch).ToArray());
        }
    }

    sealed record Run(List<StepMetrics> Steps, Dictionary<string, float[]> Weights, long StateBytes, long GradientBytes, CommStats? Stats, long GradientBound = 0);

    static LoopOptions Loop(int accum, int steps = Steps) => new()
    {
        Steps = steps,
        BatchSize = Batch,
        SeqLen = Seq,
        GradAccum = accum,
        Optim = new AdamWOptions { Lr = 1e-2, WeightDecay = 0.1, ClipNorm = 0.5 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
    };

    static Run Train(ICommunicator? comm, int zero, int accum, double bucketMb = 25, bool tied = false, ulong dataSeed = 7,
        Func<LlamaModel, DataParallel, Ewc?>? ewc = null, Action<LlamaModel>? prepare = null, int layers = 2)
    {
        using var model = TestModels.Create(Cfg(tied, layers), 5);
        prepare?.Invoke(model);
        comm ??= new SingleRankCommunicator(CpuBackend.Instance);
        using var dp = DataParallel.Create(model.Store, comm, zero, bucketMb);
        using var opt = new AdamW(model, Loop(accum).Optim, dp);
        using var e = ewc?.Invoke(model, dp);
        comm.Stats.Reset();
        var steps = TrainingLoop.Run(model, new RandomTokens(40, dataSeed), Loop(accum), opt, e);
        using var whole = dp.Gathered();   // ZeRO-3: the weights are read whole
        return new Run(steps, model.Parameters.ToDictionary(p => p.Name, p => p.Tensor.ToArray()), opt.StateBytes, dp.GradientBytes, comm.Stats, dp.GradientBoundBytes);
    }

    static Run[] TrainRanks(int world, int zero, int accum, double bucketMb = 25, bool tied = false,
        Func<LlamaModel, DataParallel, Ewc?>? ewc = null, Action<LlamaModel>? prepare = null, int layers = 2) =>
        ThreadCommunicator.Run(world, c => Train(c, zero, accum, bucketMb, tied, ewc: ewc, prepare: prepare, layers: layers));

    static void AssertClose(Run expected, Run actual, string what)
    {
        for (int i = 0; i < expected.Steps.Count; i++)
            Assert.True(Math.Abs(expected.Steps[i].Loss - actual.Steps[i].Loss) <= LossTol * Math.Max(1, Math.Abs(expected.Steps[i].Loss)),
                $"{what}: step {i + 1} loss {actual.Steps[i].Loss} vs {expected.Steps[i].Loss}");
        foreach (var (name, w) in expected.Weights)
        {
            var got = actual.Weights[name];
            double worst = 0;
            for (int i = 0; i < w.Length; i++) worst = Math.Max(worst, Math.Abs(w[i] - got[i]));
            Assert.True(worst <= WeightTol, $"{what}: {name} differs by {worst:E2} (> {WeightTol:E0})");
        }
    }

    static void AssertBitwise(Run expected, Run actual, string what)
    {
        Assert.Equal(expected.Steps.Select(s => s.Loss), actual.Steps.Select(s => s.Loss));
        Assert.Equal(expected.Steps.Select(s => s.GradNorm), actual.Steps.Select(s => s.GradNorm));
        foreach (var (name, w) in expected.Weights) Assert.True(w.AsSpan().SequenceEqual(actual.Weights[name]), $"{what}: {name} differs");
    }

    [Theory]
    [InlineData(2, 0, 1)]
    [InlineData(2, 1, 1)]
    [InlineData(2, 2, 1)]
    [InlineData(4, 0, 1)]
    [InlineData(4, 1, 2)]
    [InlineData(4, 2, 2)]
    [InlineData(2, 2, 3)]
    [InlineData(2, 2, 3, 25)]     // one bucket: its reduction of micro-batch k is still in flight when k + 1 starts
    [InlineData(4, 1, 2, 25)]
    [InlineData(2, 3, 1)]
    [InlineData(2, 3, 3)]
    [InlineData(4, 3, 2)]
    public void RanksEqualOneProcessOnTheSameGlobalBatch(int world, int zero, int accum, double bucketMb = 0.004)
    {
        var single = Train(null, 0, world * accum);
        var ranks = TrainRanks(world, zero, accum, bucketMb);           // 0.004 MB: ~1000-element buckets, several per model
        foreach (var r in ranks) AssertClose(single, r, $"dp {world} zero {zero} accum {accum}");
        // stage 2 holds a shard and at most MaxInFlight + 1 recycled bucket buffers, not a growing pool
        if (zero >= 2) Assert.True(ranks[0].GradientBytes <= ranks[0].GradientBound,
            $"ZeRO-2 holds {ranks[0].GradientBytes} B of gradients, more than its bound {ranks[0].GradientBound} B");
        // every rank ends with the same weights, bitwise (all-gathered or identically updated)
        for (int r = 1; r < world; r++) AssertBitwise(ranks[0], ranks[r], $"rank {r} vs rank 0");
        // the global loss and token count, not rank 0's share
        Assert.Equal(single.Steps.Select(s => s.Tokens), ranks[0].Steps.Select(s => s.Tokens));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void ZeroStagesAreBitwiseEqualAtOneWorldSize(int world)
    {
        var plain = TrainRanks(world, 0, 1, bucketMb: 0.004);
        var zero1 = TrainRanks(world, 1, 1, bucketMb: 0.004);
        var zero2 = TrainRanks(world, 2, 1, bucketMb: 0.004);
        var zero3 = TrainRanks(world, 3, 1);
        AssertBitwise(plain[0], zero1[0], "ZeRO-1 vs DP");
        AssertBitwise(plain[0], zero2[0], "ZeRO-2 vs DP");
        // ZeRO-3 lays the store out by unit, not by bucket size: the gradient norm's 4096-element chunks fall elsewhere
        // in the parameters, so the norm (and the clip factor) differ in the last bits
        AssertClose(plain[0], zero3[0], "ZeRO-3 vs DP");
    }

    [Fact]
    public void TiedEmbeddingsAndOneBucketPerStep()
    {
        var single = Train(null, 0, 2, tied: true);
        foreach (int zero in new[] { 0, 2 })
            AssertClose(single, TrainRanks(2, zero, 1, tied: true)[0], $"tied, zero {zero}");
    }

    [Fact]
    public void ShardedStateAndGradientsShrinkWithTheWorldSize()
    {
        var single = Train(null, 0, 4);
        foreach (int world in new[] { 2, 4 })
        {
            // measured from the allocated moment buffers: ZeRO-1/2 hold 1/N of what plain data parallelism holds, and
            // about 1/N of the single-rank figure (one bucket: the store's padding to N × 4096 elements is the rest)
            var z0 = TrainRanks(world, 0, 1)[0];
            Assert.True(z0.StateBytes >= single.StateBytes, "plain data parallelism keeps all moments on every rank");
            foreach (var r in TrainRanks(world, 1, 1).Concat(TrainRanks(world, 2, 1)))
            {
                Assert.Equal(z0.StateBytes / world, r.StateBytes);
                Assert.InRange(r.StateBytes / (double)single.StateBytes, 1.0 / world, 1.0 / world + (double)ShardLayout.Chunk * 8 / single.StateBytes);
            }
            // with many buckets (12 layers) ZeRO-2 keeps a 1/N gradient shard and a few recycled bucket buffers instead
            // of the full gradient buffer
            var g1 = TrainRanks(world, 1, 1, bucketMb: 0.004, layers: 12)[0].GradientBytes;
            var g2 = TrainRanks(world, 2, 1, bucketMb: 0.004, layers: 12)[0].GradientBytes;
            Assert.True(g2 < g1 * (1.0 / world + 0.35), $"ZeRO-2 gradients {g2} B vs ZeRO-1 {g1} B at {world} ranks");
        }
    }

    [Fact]
    public void TrafficMatchesTheCollectivesOfEachStage()
    {
        // one bucket: plain DP all-reduces the gradients once per step; ZeRO-1 adds an all-gather of the weights;
        // ZeRO-2 reduce-scatters once per micro-batch and all-gathers once per step. Every step also all-reduces the
        // one-float loss gate (LossAccounting.FiniteGate: every rank skips a non-finite step alike)
        var z0 = TrainRanks(2, 0, 2)[0].Stats!.Snapshot();
        var z1 = TrainRanks(2, 1, 2)[0].Stats!.Snapshot();
        var z2 = TrainRanks(2, 2, 2)[0].Stats!.Snapshot();
        Assert.Equal(2 * Steps, z0["all_reduce"].Calls);
        Assert.False(z0.ContainsKey("all_gather"));
        Assert.Equal(Steps, z1["all_gather"].Calls);
        Assert.Equal(2 * Steps, z2["reduce_scatter"].Calls);
        Assert.Equal(Steps, z2["all_gather"].Calls);
        // bus bytes of the gradient all-reduce: 2(N−1)/N × the (padded) fp32 buffer, per step
        long capacity;
        using (var m = TestModels.Create(Cfg(), 5))
        {
            m.Store.Relayout(ShardLayout.BucketedSpecs(m.Store.Specs(), 25L << 18, 2), ShardLayout.Unit(2));
            capacity = m.Store.Capacity;
        }
        Assert.Equal(Steps * (capacity + 1) * 4 * 2 * (2 - 1) / 2, z0["all_reduce"].BusBytes);
    }

    /// <summary>
    /// ZeRO-3's collectives per step, counted: every unit (embedding, 2 blocks, final norm, head) all-gathered before its
    /// forward and again before its backward — except the forward's last unit, kept for its backward once the order is
    /// known (after the first micro-batch) — and its gradients reduce-scattered once per micro-batch; nothing gathered
    /// after the optimizer step. And the next unit's all-gather is in flight before the current unit computes, with at
    /// most three units gathered at once (in use, prefetched, kept).
    /// </summary>
    [Fact]
    public void Zero3GathersEachUnitAroundItsUsesAndPrefetchesTheNext()
    {
        const int accum = 2, units = 5;
        ThreadCommunicator.Run(2, c =>
        {
            using var model = TestModels.Create(Cfg(), 5);
            using var dp = DataParallel.Create(model.Store, c, 3);
            Assert.Equal(units, dp.Layout.Buckets.Count);
            var probe = new PrefetchProbe(dp.Units!);
            model.Store.Hooks = probe;
            using var opt = new AdamW(model, Loop(accum).Optim, dp);
            c.Stats.Reset();
            TrainingLoop.Run(model, new RandomTokens(40, 7), Loop(accum), opt);
            var stats = c.Stats.Snapshot();
            int microBatches = Steps * accum;
            Assert.Equal(2 * units + (microBatches - 1) * (2 * units - 1), stats["all_gather"].Calls);
            Assert.Equal(units * microBatches, stats["reduce_scatter"].Calls);
            Assert.Equal(dp.Units!.GatheredBytes, stats["all_gather"].PayloadBytes);
            Assert.Equal(0, dp.Units.GatheredUnits);
            Assert.True(probe.Checked >= 2 * (units - 1) * (microBatches - 1), $"{probe.Checked} prefetches checked");
            Assert.InRange(probe.MostGathered, 2, 3);
        });
    }

    /// <summary>Sits between the model and ZeRO-3's hooks: after each use begins, the unit that comes next (the next
    /// block in forward, the previous in backward) must already be gathered or in flight.</summary>
    sealed class PrefetchProbe(ShardedUnits inner) : IUnitHooks
    {
        public int Checked { get; private set; }
        public int MostGathered { get; private set; }
        bool learned;

        void Check(int next)
        {
            MostGathered = Math.Max(MostGathered, inner.GatheredUnits);
            if (!learned || next < 0 || next >= 5) return;
            Assert.True(inner.IsGathered(next), $"unit {next} was not prefetched");
            Checked++;
        }

        public void BeforeForward(int unit) { inner.BeforeForward(unit); Check(unit + 1); }
        public void AfterForward(int unit) => inner.AfterForward(unit);
        public void BeforeBackward(int unit) { inner.BeforeBackward(unit); Check(unit - 1); }
        public void AfterBackward(int unit) { inner.AfterBackward(unit); if (unit == 0) learned = true; }
    }

    [Fact]
    public void FrozenParametersStayPutUnderZero2()
    {
        var ranks = TrainRanks(2, 2, 1, bucketMb: 0.004, prepare: m => m.SetTrainable(LlamaModel.IsEmbeddingOrHead));
        using var fresh = TestModels.Create(Cfg(), 5);
        foreach (var (name, t) in fresh.Parameters)
        {
            bool same = t.ToArray().AsSpan().SequenceEqual(ranks[0].Weights[name]);
            Assert.True(same != LlamaModel.IsEmbeddingOrHead(name), $"{name}: unchanged = {same}");
        }
        var single = Train(null, 0, 2, prepare: m => m.SetTrainable(LlamaModel.IsEmbeddingOrHead));
        AssertClose(single, ranks[1], "stage-1 vocabulary training under ZeRO-2");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(2)]
    public void EwcUnderDataParallelismEqualsOneProcess(int zero)
    {
        static Ewc Make(LlamaModel m, DataParallel dp)
        {
            var src = new RandomTokens(40, 99);
            var batches = Enumerable.Range(0, 4).Select(_ => src.Next(Batch, Seq)).Select(b => (b.Ids, b.Targets)).ToList();
            return Ewc.Estimate(m, batches, Batch, Seq, lambda: 50f, dp);
        }
        var single = Train(null, 0, 2, ewc: Make);
        var ranks = TrainRanks(2, zero, 1, bucketMb: 0.004, ewc: Make);
        AssertClose(single, ranks[0], $"EWC zero {zero}");
        for (int i = 0; i < Steps; i++)
            Assert.Equal(single.Steps[i].EwcPenalty, ranks[0].Steps[i].EwcPenalty, 1e-9 + 1e-4 * Math.Abs(single.Steps[i].EwcPenalty));
        Assert.True(single.Steps[^1].EwcPenalty > 0);
    }

    [Fact]
    public void BucketsAreReducedDuringBackwardFromTheLastLayerFirst()
    {
        // a probe communicator records when each all-reduce is issued relative to the tape's nodes
        var order = new List<(long Start, long Length)>();
        ThreadCommunicator.Run(2, c =>
        {
            using var model = TestModels.Create(Cfg(), 5);
            var probe = new RecordingCommunicator(c, c.Rank == 0 ? order : null);
            using var dp = DataParallel.Create(model.Store, probe, bucketMb: 0.004);
            using var opt = new AdamW(model, Loop(1).Optim, dp);
            TrainingLoop.Run(model, new RandomTokens(40, 7), Loop(1, steps: 1), opt);
            var buckets = dp.Layout.Buckets;
            Assert.True(buckets.Count >= 4, $"expected several buckets, got {buckets.Count}");
            if (c.Rank == 0)
            {
                Assert.Equal((0L, 1L), order[^1]);   // the step's loss gate (LossAccounting.FiniteGate), after backward
                order.RemoveAt(order.Count - 1);
                Assert.Equal(buckets.Count, order.Count);
                // launched in backward order: the bucket at the end of the store (head, final norm) first
                Assert.Equal(buckets.OrderByDescending(b => b.Start).Select(b => b.Start), order.Select(o => o.Start - model.Store.Master.Offset));
                Assert.True(probe.LaunchedDuringBackward >= buckets.Count - 1, $"{probe.LaunchedDuringBackward} of {buckets.Count} buckets were launched before backward ended");
            }
        });
    }

    /// <summary>Forwards to a real communicator and records the all-reduces (flat start, length) and whether a
    /// tape was still running (a scope with recorded nodes is current) when each was issued.</summary>
    sealed class RecordingCommunicator(ICommunicator inner, List<(long, long)>? log) : ICommunicator
    {
        public int LaunchedDuringBackward { get; private set; }
        public int Rank => inner.Rank;
        public int WorldSize => inner.WorldSize;
        public string Kind => inner.Kind;
        public IBackend Backend => inner.Backend;
        public CommStats Stats => inner.Stats;

        public ICommWork AllReduce(Tensor buffer, ReduceOp op = ReduceOp.Sum)
        {
            log?.Add((buffer.Offset, buffer.Numel));
            if (TensorScope.Current is { Tape.Count: > 0 }) LaunchedDuringBackward++;
            return inner.AllReduce(buffer, op);
        }

        public ICommWork ReduceScatter(Tensor input, Tensor output, ReduceOp op = ReduceOp.Sum) => inner.ReduceScatter(input, output, op);
        public ICommWork AllGather(Tensor input, Tensor output) => inner.AllGather(input, output);
        public ICommWork Broadcast(Tensor buffer, int root) => inner.Broadcast(buffer, root);
        public ICommWork Send(Tensor buffer, int peer) => inner.Send(buffer, peer);
        public ICommWork Recv(Tensor buffer, int peer) => inner.Recv(buffer, peer);
        public void Barrier() => inner.Barrier();
        public void AllReduce(Span<double> values, ReduceOp op = ReduceOp.Sum) => inner.AllReduce(values, op);
        public byte[] Broadcast(ReadOnlySpan<byte> data, int root) => inner.Broadcast(data, root);
        public ICommunicator Split(int color, int key) => inner.Split(color, key);
        public void Abort(string reason) => inner.Abort(reason);
        public void Dispose() { }
    }
}
