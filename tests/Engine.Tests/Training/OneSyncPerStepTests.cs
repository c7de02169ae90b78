using Engine.Core;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Parallel;
using Engine.Training;

namespace Engine.Tests.Training;

/// <summary>
/// Issue 23: a training step makes the host wait for the device once. A fake device (the CPU backend behind a
/// wrapper) counts every operation that returns device values to the host — Download (Item, ToArray), Sum,
/// SumOfSquares, Ewc — and the loop, with gradient accumulation, must do exactly one per step; the results stay
/// bit-identical to the plain CPU backend's. A non-finite loss is gated on the device (AdamW writes nothing) within
/// the same single read.
/// </summary>
public class OneSyncPerStepTests
{
    /// <summary>The CPU backend, counting host reads; tensors it makes are its own (CpuStorage with this backend).</summary>
    sealed class CountingBackend : IBackend
    {
        static readonly CpuBackend Cpu = CpuBackend.Instance;
        public int HostReads;
        /// <summary>When set, the next cross-entropy writes NaN into its first row loss (a poisoned batch).</summary>
        public bool PoisonNextLoss;

        public string Name => "counting-cpu";
        public DType ActivationDType => DType.F32;
        public Tensor Empty(ReadOnlySpan<int> shape, DType dtype = DType.F32) => Tensor.Create(new CpuStorage(this, dtype, Shape.Numel(shape), zero: false), shape);
        public Tensor Zeros(ReadOnlySpan<int> shape, DType dtype = DType.F32) => Tensor.Create(new CpuStorage(this, dtype, Shape.Numel(shape), zero: true), shape);
        public void Upload(Tensor dst, ReadOnlySpan<float> src) => Cpu.Upload(dst, src);
        public void Upload(Tensor dst, ReadOnlySpan<int> src) => Cpu.Upload(dst, src);
        public void Download(Tensor src, Span<float> dst) { HostReads++; Cpu.Download(src, dst); }
        public void Fill(Tensor t, float value) => Cpu.Fill(t, value);
        public void Copy(Tensor src, Tensor dst) => Cpu.Copy(src, dst);
        public void MatMul(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f) => Cpu.MatMul(a, transA, b, transB, c, alpha, beta);
        public void Add(Tensor a, Tensor b, Tensor y) => Cpu.Add(a, b, y);
        public void AddInPlace(Tensor acc, Tensor x, float alpha) => Cpu.AddInPlace(acc, x, alpha);
        public void Scale(Tensor t, float s) => Cpu.Scale(t, s);
        public void ScaleBy(Tensor t, Tensor scalar) => Cpu.ScaleBy(t, scalar);
        public double SumOfSquares(Tensor t) { HostReads++; return Cpu.SumOfSquares(t); }
        public double Sum(Tensor t) { HostReads++; return Cpu.Sum(t); }
        public void SumInto(Tensor x, Tensor result, float divisor) => Cpu.SumInto(x, result, divisor);
        public void RmsNormForward(Tensor x, Tensor w, Tensor y, Tensor rstd, float eps) => Cpu.RmsNormForward(x, w, y, rstd, eps);
        public void RmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dwAccumulate) => Cpu.RmsNormBackward(dy, x, w, rstd, dx, dwAccumulate);
        public void Rope(Tensor x, Tensor y, RopeParams p, int batch, int seqLen, int heads, int positionOffset, bool inverse) => Cpu.Rope(x, y, p, batch, seqLen, heads, positionOffset, inverse);
        public void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, AttentionDims d) => Cpu.AttentionForward(q, k, v, o, lse, d);
        public void AttentionBackward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dq, Tensor dk, Tensor dv, AttentionDims d) =>
            Cpu.AttentionBackward(dout, q, k, v, o, lse, dq, dk, dv, d);
        public void AttentionDecode(Tensor q, Tensor kCache, Tensor vCache, Tensor o, int heads, int kvHeads, int headDim, int positionOffset) =>
            Cpu.AttentionDecode(q, kCache, vCache, o, heads, kvHeads, headDim, positionOffset);
        public void SwiGluForward(Tensor gate, Tensor up, Tensor h) => Cpu.SwiGluForward(gate, up, h);
        public void SwiGluBackward(Tensor dh, Tensor gate, Tensor up, Tensor dgate, Tensor dup) => Cpu.SwiGluBackward(dh, gate, up, dgate, dup);
        public void EmbeddingForward(Tensor ids, Tensor table, Tensor y) => Cpu.EmbeddingForward(ids, table, y);
        public void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtableAccumulate) => Cpu.EmbeddingBackward(ids, dy, dtableAccumulate);
        public void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor lse, float zLoss, bool writeGradient, float gradScale)
        {
            Cpu.CrossEntropy(logits, targets, losses, lse, zLoss, writeGradient, gradScale);
            if (PoisonNextLoss) { losses.Span[0] = float.NaN; PoisonNextLoss = false; }
        }
        public void ChunkSumOfSquares(Tensor x, int chunk, Tensor partials) => Cpu.ChunkSumOfSquares(x, chunk, partials);
        public void GradNormFinalize(Tensor partials, float maxNorm, Tensor result) => Cpu.GradNormFinalize(partials, maxNorm, result);
        public void AdamW(Tensor master, Tensor grad, Tensor m, Tensor v, ReadOnlySpan<AdamWRun> runs, AdamWStep step, Tensor? gradScale = null) =>
            Cpu.AdamW(master, grad, m, v, runs, step, gradScale);
        public double Ewc(Tensor param, Tensor anchor, Tensor fisher, Tensor grad, float lambda) { HostReads++; return Cpu.Ewc(param, anchor, fisher, grad, lambda); }
        public void AddSquare(Tensor acc, Tensor x) => Cpu.AddSquare(acc, x);
    }

    sealed class RandomTokens(int vocab) : IBatchSource
    {
        readonly Rng rng = new(11);
        public Batch Next(int batch, int seqLen)
        {
            var ids = new int[batch * seqLen];
            var tg = new int[batch * seqLen];
            for (int i = 0; i < ids.Length; i++) { ids[i] = rng.NextInt(vocab); tg[i] = i % 5 == 3 ? -100 : rng.NextInt(vocab); }
            return new Batch(ids, tg, [.. Enumerable.Range(0, batch).Select(r => r % 2 == 0 ? "en" : "zh")]);
        }
        public IReadOnlyList<string> SourceNames => ["en", "zh"];
    }

    static readonly LlamaConfig Cfg = new LlamaConfig
    {
        VocabSize = 64,
        HiddenSize = 32,
        IntermediateSize = 64,
        NumLayers = 2,
        NumHeads = 4,
        NumKvHeads = 2,
        MaxPositionEmbeddings = 16,
    }.Validate();

    static LoopOptions Loop(string guard = "fail") => new()
    {
        Steps = 4,
        BatchSize = 2,
        SeqLen = 16,
        GradAccum = 2,
        Optim = new AdamWOptions { Lr = 1e-2 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
        Guard = new GuardOptions { Mode = guard, ZScore = 0 },
    };

    /// <summary>Trains o.Steps steps; the host reads of each step are the counter's growth up to its onStep (which
    /// runs after the step's read). <paramref name="poisonStep"/>: that step's first micro-batch loss is NaN.</summary>
    static (List<StepMetrics> Steps, List<int> ReadsPerStep, float[] Weights) Train(IBackend be, LoopOptions o, int poisonStep = -1)
    {
        using var model = new LlamaModel(Cfg, be);
        model.InitializeWeights(3);
        using var opt = new AdamW(model, o.Optim);
        var counting = be as CountingBackend;
        var reads = new List<int>();
        int before = counting?.HostReads ?? 0;
        if (counting != null) counting.PoisonNextLoss = poisonStep == 0;
        var steps = TrainingLoop.Run(model, new RandomTokens(Cfg.VocabSize), o, opt, cancel: TestContext.Current.CancellationToken, onStep: m =>
        {
            int now = counting?.HostReads ?? 0;
            reads.Add(now - before);
            before = now;
            if (counting != null) counting.PoisonNextLoss = m.Step == poisonStep;   // m.Step is 1-based: the next step's index
        });
        return (steps, reads, model.Store.Master.ToArray());
    }

    [Fact]
    public void EachStepReadsTheDeviceOnceAndMatchesTheCpuBitForBit()
    {
        var counted = Train(new CountingBackend(), Loop());
        Assert.Equal([1, 1, 1, 1], counted.ReadsPerStep);
        var plain = Train(CpuBackend.Instance, Loop());
        Assert.Equal(plain.Steps.Select(s => s.Loss), counted.Steps.Select(s => s.Loss));
        Assert.Equal(plain.Steps.Select(s => s.GradNorm), counted.Steps.Select(s => s.GradNorm));
        Assert.Equal(plain.Weights, counted.Weights);
        Assert.All(counted.Steps, s => Assert.Equal(["en", "zh"], s.SourceLosses!.Keys.Order()));
        Assert.All(counted.Steps, s => Assert.True(double.IsFinite(s.Loss) && double.IsFinite(s.GradNorm)));
    }

    [Fact]
    public void ANonFiniteLossIsGatedOnTheDeviceWithinTheSameRead()
    {
        // step 3's first micro-batch produces a NaN loss: the update is skipped on the device (nothing written), the
        // host learns it from the one read, and the weights equal those after step 2
        var afterTwo = Train(new CountingBackend(), Loop("skip") with { Steps = 2 });
        var poisoned = Train(new CountingBackend(), Loop("skip") with { Steps = 3 }, poisonStep: 2);
        Assert.Equal([1, 1, 1], poisoned.ReadsPerStep);
        Assert.True(poisoned.Steps[2].Skipped);
        Assert.True(double.IsNaN(poisoned.Steps[2].Loss));
        Assert.False(poisoned.Steps[1].Skipped);
        Assert.Equal(afterTwo.Weights, poisoned.Weights);
        // with guard = fail the step stops with the loss named
        var e = Assert.Throws<InvalidDataException>(() => Train(new CountingBackend(), Loop("fail") with { Steps = 1 }, poisonStep: 0));
        Assert.Contains("the loss is NaN", e.Message);
    }

    [Fact]
    public void TheSpikeGuardReadsTheLossBeforeTheUpdate()
    {
        // the z-score rule decides on the host before the update: a second read per step, by design
        var spike = Train(new CountingBackend(), Loop("skip") with { Guard = new GuardOptions { Mode = "skip", ZScore = 5, Window = 4 } });
        Assert.Equal([2, 2, 2, 2], spike.ReadsPerStep);
    }
}
