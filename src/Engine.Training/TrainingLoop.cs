using Engine.Core;
using Engine.Core.Autograd;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Parallel;
using Engine.Training.Forgetting;
using Engine.Training.Parallel;

namespace Engine.Training;

/// <summary>One micro-batch: ids and targets [batch*T] (targets -100 = no loss) and the source of each row.</summary>
public sealed record Batch(int[] Ids, int[] Targets, string[] RowSources);

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
}

/// <summary>What one optimizer step did; SourceLosses holds the mean token loss per data source in the step.</summary>
public sealed record StepMetrics(int Step, int TotalSteps, double Loss, double Lr, double GradNorm, long Tokens,
    double TokensPerSecond, double ElapsedSeconds, double? ValidLoss, IReadOnlyDictionary<string, double>? SourceLosses = null,
    double EwcPenalty = 0);

/// <summary>
/// The training loop (TorchTitan shape, ~one screen): the global batch (world size × grad_accum micro-batches of the
/// one stream; this rank trains on its grad_accum) → zero-grad → micro-batches (loss summed ÷ the global count of
/// valid targets, gradient buckets reduced during backward) → EWC gradient → clip → AdamW (ZeRO slices, parameters
/// all-gathered) → schedule → metrics (reduced across ranks). Shared by `engine train` and every recipe stage; in a
/// world of one rank it is the single-process loop.
/// </summary>
public static class TrainingLoop
{
    public static List<StepMetrics> Run(LlamaModel model, IBatchSource data, LoopOptions o, AdamW opt, Ewc? ewc = null,
        Action<StepMetrics>? onStep = null, Func<double>? validate = null, CancellationToken cancel = default,
        PipelineRunner? pipeline = null)
    {
        var be = model.Backend;
        var dp = opt.Parallel;
        // data-parallel replicas: the ranks (or, with a pipeline, the pipelines) that each train A micro-batches
        int world = pipeline?.Grid.Replicas ?? dp.Comm.WorldSize, rank = pipeline?.Grid.Replica ?? dp.Comm.Rank, A = o.GradAccum;
        var metricsComm = pipeline?.Grid.World ?? dp.Comm;
        var sources = data.SourceNames;
        var steps = new List<StepMetrics>();
        long tokens = o.StartTokens;
        double evalSeconds = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int step = o.StartStep; step < o.Steps; step++)
        {
            cancel.ThrowIfCancellationRequested();
            double lr = Schedule.LearningRate(o.Schedule, o.Optim.Lr, step, o.Steps);
            var mine = new List<Batch>(A);
            long valid = 0;
            for (int i = 0; i < world * A; i++)
            {
                if (i / A == rank)
                {
                    var b = data.Next(o.BatchSize, o.SeqLen);
                    mine.Add(b);
                    valid += b.Targets.Count(t => t != -100);
                }
                else valid += data.Skip(o.BatchSize, o.SeqLen);
            }
            dp.BeginStep();
            double lossSum = 0;
            var perSourceSums = new Dictionary<string, (double Sum, long Count)>(StringComparer.Ordinal);
            if (valid > 0 && pipeline != null)
                (lossSum, perSourceSums) = pipeline.RunStep(mine, valid, (float)o.ZLoss);
            else if (valid > 0)
            {
                for (int j = 0; j < mine.Count; j++)
                {
                    var b = mine[j];
                    dp.BeginMicroBatch(last: j == mine.Count - 1);
                    using (var scope = new TensorScope())
                    {
                        int rows = b.RowSources.Length, n = b.Ids.Length, T = n / rows;
                        var idT = be.Empty([n], DType.I32);
                        var tgT = be.Empty([n], DType.I32);
                        be.Upload(idT, b.Ids);
                        be.Upload(tgT, b.Targets);
                        var (loss, tokenLosses) = model.Loss(idT, tgT, rows, T, valid, (float)o.ZLoss);
                        lossSum += loss.Item();
                        var tl = tokenLosses.ToArray();
                        for (int r = 0; r < rows; r++)
                        {
                            double sum = 0; long count = 0;
                            for (int t = 0; t < T; t++)
                                if (b.Targets[r * T + t] != -100) { sum += tl[r * T + t]; count++; }
                            var acc = perSourceSums.GetValueOrDefault(b.RowSources[r]);
                            perSourceSums[b.RowSources[r]] = (acc.Sum + sum, acc.Count + count);
                        }
                        Grad.Backward(loss, observer: dp);
                    }
                    dp.EndMicroBatch();
                }
            }
            dp.FinishGradients();
            pipeline?.SyncTiedEmbedding();
            double penalty = ewc?.Apply(model, dp) ?? 0;
            double norm = opt.Update(lr);
            if (metricsComm.WorldSize > 1) (lossSum, perSourceSums) = ReduceMetrics(metricsComm, lossSum, perSourceSums, sources);
            tokens += (long)world * A * o.BatchSize * o.SeqLen;
            double? v = null;
            if (validate != null && (step == o.Steps - 1 || (o.EvalEvery > 0 && (step + 1) % o.EvalEvery == 0)))
            {
                var t0 = clock.Elapsed.TotalSeconds;
                v = validate();
                evalSeconds += clock.Elapsed.TotalSeconds - t0;
            }
            double trainSeconds = clock.Elapsed.TotalSeconds - evalSeconds;
            var perSource = perSourceSums.Where(kv => kv.Value.Count > 0).ToDictionary(kv => kv.Key, kv => kv.Value.Sum / kv.Value.Count, StringComparer.Ordinal);
            var m = new StepMetrics(step + 1, o.Steps, lossSum, lr, norm, tokens, (tokens - o.StartTokens) / Math.Max(trainSeconds, 1e-9),
                clock.Elapsed.TotalSeconds, v, perSource, penalty);
            steps.Add(m);
            onStep?.Invoke(m);
        }
        return steps;
    }

    /// <summary>Sums the loss and the per-source (loss sum, count) over ranks in one collective, in the order of the
    /// batch source's names (every rank has the same list).</summary>
    static (double, Dictionary<string, (double Sum, long Count)>) ReduceMetrics(ICommunicator comm, double loss,
        Dictionary<string, (double Sum, long Count)> perSource, IReadOnlyList<string> sources)
    {
        foreach (var name in perSource.Keys)
            if (!sources.Contains(name))
                throw new InvalidOperationException($"a batch row comes from source '{name}', which its batch source does not list ({string.Join(", ", sources)})");
        var v = new double[1 + 2 * sources.Count];
        v[0] = loss;
        for (int k = 0; k < sources.Count; k++)
        {
            var acc = perSource.GetValueOrDefault(sources[k]);
            v[1 + 2 * k] = acc.Sum;
            v[2 + 2 * k] = acc.Count;
        }
        comm.AllReduce(v);
        var result = new Dictionary<string, (double, long)>(StringComparer.Ordinal);
        for (int k = 0; k < sources.Count; k++) result[sources[k]] = (v[1 + 2 * k], (long)v[2 + 2 * k]);
        return (v[0], result);
    }
}
