using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;
using Engine.Training.Forgetting;

namespace Engine.Training;

/// <summary>One micro-batch: ids and targets [batch*T] (targets -100 = no loss) and the source of each row.</summary>
public sealed record Batch(int[] Ids, int[] Targets, string[] RowSources);

/// <summary>Where training batches come from (random windows of a corpus, a mixture of sample streams, …).</summary>
public interface IBatchSource
{
    Batch Next(int batch, int seqLen);
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
/// The training loop (TorchTitan shape, ~one screen): zero-grad → micro-batches (loss summed ÷ global valid targets)
/// → EWC gradient → clip → AdamW → schedule → metrics. Shared by `engine train` and every recipe stage.
/// </summary>
public static class TrainingLoop
{
    public static List<StepMetrics> Run(LlamaModel model, IBatchSource data, LoopOptions o, AdamW opt, Ewc? ewc = null,
        Action<StepMetrics>? onStep = null, Func<double>? validate = null, CancellationToken cancel = default)
    {
        var be = model.Backend;
        var steps = new List<StepMetrics>();
        long tokens = o.StartTokens;
        double evalSeconds = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (int step = o.StartStep; step < o.Steps; step++)
        {
            cancel.ThrowIfCancellationRequested();
            double lr = Schedule.LearningRate(o.Schedule, o.Optim.Lr, step, o.Steps);
            var batches = Enumerable.Range(0, o.GradAccum).Select(_ => data.Next(o.BatchSize, o.SeqLen)).ToList();
            int valid = batches.Sum(b => b.Targets.Count(t => t != -100));
            model.ZeroGrad();
            double lossSum = 0;
            var perSource = new Dictionary<string, (double Sum, long Count)>(StringComparer.Ordinal);
            if (valid > 0)
            {
                foreach (var b in batches)
                {
                    using var scope = new TensorScope();
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
                        double s = 0; long c = 0;
                        for (int t = 0; t < T; t++) if (b.Targets[r * T + t] != -100) { s += tl[r * T + t]; c++; }
                        var acc = perSource.GetValueOrDefault(b.RowSources[r]);
                        perSource[b.RowSources[r]] = (acc.Sum + s, acc.Count + c);
                    }
                    Grad.Backward(loss);
                }
            }
            double penalty = ewc?.Apply(model) ?? 0;
            double norm = opt.Update(lr);
            tokens += batches.Sum(b => b.Ids.Length);
            double? v = null;
            if (validate != null && (step == o.Steps - 1 || (o.EvalEvery > 0 && (step + 1) % o.EvalEvery == 0)))
            {
                var t0 = clock.Elapsed.TotalSeconds;
                v = validate();
                evalSeconds += clock.Elapsed.TotalSeconds - t0;
            }
            double trainSeconds = clock.Elapsed.TotalSeconds - evalSeconds;
            var m = new StepMetrics(step + 1, o.Steps, lossSum, lr, norm, tokens, (tokens - o.StartTokens) / Math.Max(trainSeconds, 1e-9), clock.Elapsed.TotalSeconds, v,
                perSource.Where(kv => kv.Value.Count > 0).ToDictionary(kv => kv.Key, kv => kv.Value.Sum / kv.Value.Count), penalty);
            steps.Add(m);
            onStep?.Invoke(m);
        }
        return steps;
    }
}
