using Engine.Core;
using Engine.Core.Autograd;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Parallel;
using Engine.Training.Forgetting;
using Engine.Training.Parallel;
using Engine.Training.Run;

namespace Engine.Training;

/// <summary>One micro-batch: ids and targets [batch*T] (targets -100 = no loss) and the source of each row; a loss that
/// needs more than tokens (preference pairs, rollouts) finds its own data in <see cref="Payload"/>.</summary>
public sealed record Batch(int[] Ids, int[] Targets, string[] RowSources)
{
    public object? Payload { get; init; }

    /// <summary>The tokens of this batch this rank runs, when its layout's plan splits them (context parallelism,
    /// padding for sequence parallelism); null: all of them as they are.</summary>
    public TokenShard? Shard { get; init; }

    /// <summary>The token ids this rank feeds the model.</summary>
    public int[] LocalIds => Shard?.Ids ?? Ids;
    /// <summary>The targets of <see cref="LocalIds"/>.</summary>
    public int[] LocalTargets => Shard?.Targets ?? Targets;

    /// <summary>Where this rank's tokens sit in the sequences.</summary>
    public SequenceLayout Layout => Shard?.Layout ?? SequenceLayout.Contiguous(RowSources.Length, RowSources.Length == 0 ? 0 : Ids.Length / RowSources.Length);

    /// <summary>This batch as <paramref name="plan"/> splits it over the ranks (itself when the plan runs it whole).</summary>
    public Batch For(ParallelPlan plan)
    {
        int rows = RowSources.Length;
        if (rows == 0 || Shard != null) return this;
        var s = plan.ShardTokens(Ids, Targets, rows, Ids.Length / rows);
        return s.Index == null ? this : this with { Shard = s };
    }

    /// <summary>Per-token values of <see cref="LocalIds"/> (losses) placed at their tokens of the whole batch, with the
    /// targets of the tokens this rank holds (−100 elsewhere): what per-row accounting reads.</summary>
    public (float[] Values, int[] Targets) ToWhole(float[] local)
    {
        if (Shard?.Index is not { } index) return (local, Targets);
        var values = new float[Targets.Length];
        var targets = new int[Targets.Length];
        Array.Fill(targets, -100);
        for (int i = 0; i < index.Length; i++)
            if (index[i] >= 0) (values[index[i]], targets[index[i]]) = (local[i], Targets[index[i]]);
        return (values, targets);
    }
}

/// <summary>
/// Where training batches come from (random windows of a corpus, a mixture of sample streams, …): one endless global
/// stream of micro-batches. Under data parallelism every rank walks the same stream and materializes only its own
/// micro-batches (<see cref="Skip"/> passes the others), so the ranks read disjoint parts of every global batch and
/// the stream's state is the same on every rank.
/// </summary>
public interface IBatchSource
{
    Batch Next(int batch, int seqLen);

    /// <summary>Advances past one micro-batch another rank trains on; returns its count of valid targets.</summary>
    int Skip(int batch, int seqLen) => Next(batch, seqLen).Targets.Count(t => t != -100);

    /// <summary>Every source name a row can carry (per-source loss metrics are reduced across ranks by this list).</summary>
    IReadOnlyList<string> SourceNames => ["train"];
}

/// <summary>Settings of one optimisation run.</summary>
public sealed record LoopOptions
{
    public int Steps { get; init; } = 100;
    public int BatchSize { get; init; } = 8;
    public int SeqLen { get; init; } = 256;
    public int GradAccum { get; init; } = 1;
    public AdamWOptions Optim { get; init; } = new();
    public ScheduleOptions Schedule { get; init; } = new();
    public double ZLoss { get; init; }
    /// <summary>Run the validation callback every N steps (and at the end); 0 = only at the end.</summary>
    public int EvalEvery { get; init; }
    /// <summary>Steps already done (resuming from a checkpoint): the loop runs StartStep..Steps-1.</summary>
    public int StartStep { get; init; }
    /// <summary>Tokens already trained before StartStep (for the metrics).</summary>
    public long StartTokens { get; init; }
    /// <summary>Numeric guard: what a non-finite loss or gradient norm (or, with "skip", a loss spike) does.</summary>
    public GuardOptions Guard { get; init; } = new();
    /// <summary>Steps (1-based, inclusive) whose batches are drawn but not trained (`--skip-batches A-B`: bad data).</summary>
    public (int First, int Last)? SkipBatches { get; init; }
    /// <summary>Steps skipped before StartStep (the metrics' running count).</summary>
    public int StartSkipped { get; init; }
}

/// <summary>
/// The numeric guard (llm.c's rule for spikes): "fail" stops the run at a step whose loss or gradient norm is not finite
/// (both are global values, so every rank agrees) naming the step, the tensor and the last good checkpoint; "skip"
/// leaves weights and moments untouched at such a step, and also at a loss whose z-score over the last
/// <see cref="Window"/> losses exceeds <see cref="ZScore"/> (the window must be full; 0 = no spike rule).
/// </summary>
public sealed record GuardOptions
{
    public string Mode { get; init; } = "fail";
    public double ZScore { get; init; } = 5;
    public int Window { get; init; } = 128;
    public bool Skip => Mode == "skip";
}


/// <summary>What one optimizer step did; SourceLosses holds the mean token loss per data source in the step.
/// StepSeconds: this rank's wall time of the step (validation excluded); ComputeSeconds: its time up to the gradient
/// wait (batches, forward, backward), whose spread over ranks shows stragglers.</summary>
public sealed record StepMetrics(int Step, int TotalSteps, double Loss, double Lr, double GradNorm, long Tokens,
    double TokensPerSecond, double ElapsedSeconds, double? ValidLoss, IReadOnlyDictionary<string, double>? SourceLosses = null,
    double EwcPenalty = 0, bool Skipped = false, int SkippedSteps = 0, double StepSeconds = 0, double ComputeSeconds = 0);

/// <summary>What the loop trains: the (stage) model, its per-micro-batch loss, the optimizers of its trainable stores,
/// the pipeline schedule when the model is split into stages, and EWC.</summary>
public sealed record TrainTarget(LlamaModel Model, ITrainingLoss Loss, OptimizerSet Optimizers)
{
    public PipelineRunner? Pipeline { get; init; }
    public Ewc? Ewc { get; init; }
    /// <summary>The job's mesh when the layout has more than data parallelism (the replicas that split each global
    /// batch; the world the metrics are reduced over); null: the optimizer's data-parallel group is the world.</summary>
    public DeviceMesh? Mesh { get; init; }
    /// <summary>Runs after the data-parallel reduction of a step's gradients (tensor parallelism's partial gradients).</summary>
    public Action? AfterGradients { get; init; }
}

/// <summary>
/// The training loop (TorchTitan shape, ~one screen): the global batch (replicas × grad_accum micro-batches of the
/// one stream; this replica trains on its grad_accum) → zero-grad → micro-batches (the loss's share ÷ the global count
/// it normalizes by, gradient buckets reduced during backward; through the stages when pipelined) → EWC gradient →
/// clip → AdamW (ZeRO slices, parameters all-gathered) → schedule → metrics (reduced across ranks). Shared by every
/// run the assembler builds (<see cref="Run.RunAssembler"/>); in a world of one rank it is the single-process loop.
/// </summary>
public static class TrainingLoop
{
    /// <summary>A language model on a batch source (the loss of <see cref="LanguageModelLoss"/>): tests and tools
    /// that set up the model, optimizer and pipeline themselves.</summary>
    public static List<StepMetrics> Run(LlamaModel model, IBatchSource data, LoopOptions o, AdamW opt, Ewc? ewc = null,
        Action<StepMetrics>? onStep = null, Func<double>? validate = null, CancellationToken cancel = default,
        PipelineRunner? pipeline = null, RunControl? control = null) =>
        Run(new TrainTarget(model, new LanguageModelLoss(model, data.SourceNames, o.ZLoss), new OptimizerSet(opt)) { Pipeline = pipeline, Ewc = ewc },
            data, o, onStep, validate, cancel, control);

    public static List<StepMetrics> Run(TrainTarget target, IBatchSource data, LoopOptions o, Action<StepMetrics>? onStep = null,
        Func<double>? validate = null, CancellationToken cancel = default, RunControl? control = null)
    {
        var (model, loss, opt) = (target.Model, target.Loss, target.Optimizers);
        var pipeline = target.Pipeline;
        var be = model.Backend;
        var dp = opt.Parallel;
        var sync = opt.Sync;
        // data-parallel replicas: the ranks (or, with a pipeline, the pipelines) that each train A micro-batches
        var mesh = target.Mesh ?? pipeline?.Grid;
        int world = mesh?.Replicas ?? dp.Comm.WorldSize, rank = mesh?.Replica ?? dp.Comm.Rank, A = o.GradAccum;
        var metricsComm = mesh?.World ?? dp.Comm;
        var plan = model.Plan;
        using var accounting = new LossAccounting();
        var steps = new List<StepMetrics>();
        long tokens = o.StartTokens;
        double evalSeconds = 0;
        int skipped = o.StartSkipped, guardSkips = 0;
        var spikes = new SpikeDetector(o.Guard.Window);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int step = o.StartStep; step < o.Steps; step++)
        {
            cancel.ThrowIfCancellationRequested();
            double stepStart = clock.Elapsed.TotalSeconds;
            var stepRegion = Profiler.Time("step");
            double lr = Schedule.LearningRate(o.Schedule, o.Optim.Lr, step, o.Steps);
            if (o.SkipBatches is { } sk && step + 1 >= sk.First && step + 1 <= sk.Last)
            {
                // bad data: draw the step's batches (the stream moves on as in any step) and train on none of them
                for (int i = 0; i < world * A; i++) loss.Skip(data, o.BatchSize, o.SeqLen);
                tokens += (long)world * A * o.BatchSize * o.SeqLen;
                skipped++;
                var sm = new StepMetrics(step + 1, o.Steps, double.NaN, lr, double.NaN, tokens, 0, clock.Elapsed.TotalSeconds, null,
                    Skipped: true, SkippedSteps: skipped);
                steps.Add(sm);
                onStep?.Invoke(sm);
                if (control?.ShouldStop(step + 1, metricsComm) == true) break;
                continue;
            }
            var mine = new List<Batch>(A);
            long valid = 0;
            for (int i = 0; i < world * A; i++)
            {
                if (i / A == rank)
                {
                    var b = data.Next(o.BatchSize, o.SeqLen);
                    valid += loss.Count(b);
                    mine.Add(b.For(plan));   // this rank's tokens of it (context parallelism's chunks)
                }
                else valid += loss.Skip(data, o.BatchSize, o.SeqLen);
            }
            sync.BeginStep();
            double lossSum = 0;
            accounting.Clear();
            // device-resident loss bookkeeping: the step's one host read (not with a pipeline, which reads per micro-batch)
            if (pipeline == null) accounting.Begin(be, valid > 0 ? mine : []);
            if (valid > 0 && pipeline != null)
                lossSum = pipeline.RunStep(mine, valid, loss, accounting);
            else if (valid > 0)
            {
                for (int j = 0; j < mine.Count; j++)
                {
                    var b = mine[j];
                    sync.BeginMicroBatch(last: j == mine.Count - 1);
                    if (b.RowSources.Length > 0)   // a replica's share of a small global batch can be empty (its buckets still reduce)
                        using (var scope = new TensorScope())
                        {
                            var idT = be.Empty([b.LocalIds.Length], DType.I32);
                            be.Upload(idT, b.LocalIds);
                            var l = loss.Forward(idT, b, valid, accounting);
                            accounting.AddLoss(l);
                            Grad.Backward(l, observer: sync);
                        }
                    sync.EndMicroBatch();
                }
            }
            double compute = clock.Elapsed.TotalSeconds - stepStart;
            sync.FinishGradients();
            target.AfterGradients?.Invoke();
            pipeline?.SyncTiedEmbedding();
            double penalty = target.Ewc?.Apply(model, dp) ?? 0;
            if (target.Ewc != null && pipeline != null)
            {
                // each stage's penalty is over its own parameters: the model's is their sum
                Span<double> p = [penalty];
                pipeline.Grid.Pipe.AllReduce(p);
                penalty = p[0];
            }
            // One host read per step: the update is enqueued gated on the losses being finite (on every rank), and the
            // losses, their accounts and the optimizer's norm are read together afterwards. The spike rule decides on the
            // loss before the update, so with it (and with a pipeline, or several optimizers) the losses are read first.
            bool deferred = pipeline == null && opt.Members.Count == 1 && !(o.Guard.Skip && o.Guard.ZScore > 0);
            float[]? optResult = null;
            if (deferred)
            {
                accounting.AddResult(opt.Primary.Enqueue(lr, accounting.FiniteGate(metricsComm)));
                (lossSum, optResult) = accounting.Read(withResult: true);
            }
            else if (pipeline == null) (lossSum, _) = accounting.Read(withResult: false);
            // every tensor-parallel rank computed the same losses: one of them reports them
            if (!plan.ReportsLoss) { lossSum = 0; accounting.Clear(); }
            // the loss is reduced before the decision: its finite flag (and the spike rule) is then the same on every rank
            if (metricsComm.WorldSize > 1) lossSum = accounting.Reduce(metricsComm, lossSum, loss.Accounts);
            bool skip = false;
            double norm = double.NaN;
            if (!double.IsFinite(lossSum))
            {
                if (optResult != null) try { opt.Primary.Complete(optResult); } catch (NonFiniteGradientException) { }   // gated: nothing written
                if (!o.Guard.Skip) throw Guard(step + 1, $"the loss is {lossSum}", control);
                skip = true;
            }
            else if (o.Guard.Skip && o.Guard.ZScore > 0 && spikes.Add(lossSum) is var z && z > o.Guard.ZScore) skip = true;
            if (!skip)
            {
                try { norm = optResult != null ? opt.Primary.Complete(optResult) : opt.Update(lr); }
                catch (NonFiniteGradientException)
                {
                    // the norm is global (all-reduced), so every rank is here; AdamW wrote nothing
                    if (!o.Guard.Skip) throw Guard(step + 1, $"the gradient norm is not finite{FirstNonFinite(dp)}", control);
                    skip = true;
                }
            }
            if (skip) { skipped++; guardSkips++; }
            tokens += (long)world * A * o.BatchSize * o.SeqLen;
            stepRegion.Dispose();
            double stepSeconds = clock.Elapsed.TotalSeconds - stepStart;
            double? v = null;
            if (validate != null && (step == o.Steps - 1 || (o.EvalEvery > 0 && (step + 1) % o.EvalEvery == 0)))
            {
                var t0 = clock.Elapsed.TotalSeconds;
                v = validate();
                evalSeconds += clock.Elapsed.TotalSeconds - t0;
            }
            double trainSeconds = clock.Elapsed.TotalSeconds - evalSeconds;
            var m = new StepMetrics(step + 1, o.Steps, lossSum, lr, norm, tokens, (tokens - o.StartTokens) / Math.Max(trainSeconds, 1e-9),
                clock.Elapsed.TotalSeconds, v, accounting.Means(), penalty, skip, skipped, stepSeconds, compute);
            steps.Add(m);
            control?.StepDone(clock.Elapsed.TotalSeconds - stepStart);
            onStep?.Invoke(m);
            if (control?.ShouldStop(step + 1, metricsComm) == true) break;
        }
        // a run the guard skipped through entirely learned nothing: fail instead of saving its weights as a result
        if (guardSkips > 0 && guardSkips == steps.Count && steps[^1].Step == o.Steps)
            throw new InvalidDataException($"every one of this run's {steps.Count} step(s) ({o.StartStep + 1}-{o.Steps}) was skipped by the numeric guard " +
                "(train.guard = \"skip\": non-finite loss or gradient norm, or a loss spike), so nothing was trained and no weights are saved: " +
                "check the data, optim.lr and the starting weights; last good checkpoint: " + (control?.LastCheckpoint ?? "none"));
        return steps;
    }

    /// <summary>The guard's stop (InvalidDataException: one line from the CLI): the step, the tensor, the last good checkpoint.</summary>
    static InvalidDataException Guard(int step, string what, RunControl? control) => new(
        $"step {step}: {what}; stopped (train.guard = \"fail\"). Last good checkpoint: " +
        (control?.LastCheckpoint is { } c ? $"{c} (resume with --resume {c} --skip-batches {step}-{step} to step over this batch, or set train.guard = \"skip\")" : "none"));

    /// <summary>", first in parameter NAME" when this rank holds the whole flat gradient buffer and one is not finite.</summary>
    static string FirstNonFinite(DataParallel dp)
    {
        var grads = dp.Store.Grads;
        if (grads == null) return "";
        var g = grads.ToArray();
        foreach (var s in dp.Store.Slots)
            for (long i = s.Offset; i < s.Offset + s.Numel && i < g.Length; i++)
                if (!float.IsFinite(g[i])) return $" (first non-finite gradient: {s.Name})";
        return "";
    }

    /// <summary>llm.c's outlier detector: the z-score of the newest loss over a window that includes it (NaN until the
    /// window is full).</summary>
    sealed class SpikeDetector(int window)
    {
        readonly Queue<double> values = new();
        double sum, sumSq;

        public double Add(double x)
        {
            values.Enqueue(x);
            sum += x; sumSq += x * x;
            if (values.Count > window)
            {
                double old = values.Dequeue();
                sum -= old; sumSq -= old * old;
            }
            if (values.Count < window || window < 2) return double.NaN;
            double mean = sum / window, sd = Math.Sqrt(Math.Max(0, sumSq / window - mean * mean));
            return sd == 0 ? 0 : (x - mean) / sd;
        }
    }
}
