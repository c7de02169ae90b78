using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;
using Engine.Parallel;
using Engine.Training.Run;

namespace Engine.Training.Parallel;

/// <summary>
/// Runs one optimizer step's micro-batches through this rank's pipeline stage by a schedule
/// (<see cref="PipelineSchedule"/>): a forward receives the previous stage's activations (or embeds the token ids on the
/// first stage) and sends its output on (or computes the loss on the last); a backward receives the gradient of its
/// output from the next stage (or starts from the loss) and sends the gradient of its input back. Each micro-batch is
/// a detached <see cref="TensorScope"/> holding its activations and its tape from its forward to its backward, so 1F1B
/// keeps at most P − stage of them alive, GPipe all M. Gradient buckets of the stage's data-parallel group are reduced
/// during the step's last backward (<see cref="DataParallel"/>), then the tied embedding's two copies (first and last
/// stage) are summed.
/// </summary>
public sealed class PipelineRunner(LlamaModel model, PipelineGrid grid, GradientSync sync, string schedule)
{
    /// <summary>Over one store's data parallelism (the stage's model).</summary>
    public PipelineRunner(LlamaModel model, PipelineGrid grid, DataParallel dp, string schedule) : this(model, grid, new GradientSync(dp), schedule) { }

    public PipelineGrid Grid { get; } = grid;
    public string Schedule { get; } = schedule;

    /// <summary>Steps timed so far (the first step, which compiles and warms caches, is not), their wall time inside
    /// <see cref="RunStep"/> and the part of it this stage waited for a neighbour (the measured bubble plus transfers).</summary>
    public int TimedSteps { get; private set; }
    public double StepSeconds { get; private set; }
    public double WaitSeconds { get; private set; }
    int stepsRun;

    System.Diagnostics.Stopwatch? waitClock;
    void Wait(Engine.Core.Distributed.ICommWork w)
    {
        waitClock ??= new System.Diagnostics.Stopwatch();
        waitClock.Start();
        try { w.Wait(); }
        finally { waitClock.Stop(); }
    }

    /// <summary>The step's loss sum on the last stage (its accounts in <paramref name="accounting"/>); zero elsewhere.
    /// <paramref name="valid"/>: the global normalizer (<see cref="ITrainingLoss.Count"/> summed over the global batch).</summary>
    public double RunStep(IReadOnlyList<Batch> batches, long valid, ITrainingLoss loss, LossAccounting accounting)
    {
        var be = model.Backend;
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        waitClock?.Reset();
        int M = batches.Count, stage = Grid.Stage;
        bool first = Grid.IsFirst, last = Grid.IsLast;
        var actions = PipelineSchedule.For(Schedule, Grid.Stages, stage, M);
        int lastBackward = actions.Select((a, i) => (a, i)).Last(x => x.a.Op == PipeOp.Backward).i;
        var scopes = new TensorScope?[M];
        var inputs = new Tensor?[M];
        var outputs = new Tensor?[M];
        var sends = new List<Engine.Core.Distributed.ICommWork>();
        double lossSum = 0;
        try
        {
            for (int k = 0; k < actions.Count; k++)
            {
                var (op, m) = (actions[k].Op, actions[k].MicroBatch);
                var b = batches[m];
                int rows = b.RowSources.Length, n = b.Ids.Length, T = rows == 0 ? 0 : n / rows;
                if (rows == 0)
                {
                    // this replica's share of a small global batch is empty, on every stage alike: nothing crosses the
                    // stages, but the stage's gradient buckets still reduce with the other replicas'
                    if (op == PipeOp.Backward)
                    {
                        sync.BeginMicroBatch(last: k == lastBackward);
                        sync.EndMicroBatch();
                    }
                    continue;
                }
                if (op == PipeOp.Forward)
                {
                    var scope = scopes[m] = TensorScope.Detached();
                    using (scope.Activate())
                    {
                        Tensor x;
                        if (first)
                        {
                            x = be.Empty([n], DType.I32);
                            be.Upload(x, b.Ids);
                        }
                        else
                        {
                            x = be.Empty([n, model.Config.HiddenSize], be.ActivationDType);
                            Wait(Grid.Pipe.Recv(x, stage - 1));
                            x.RequiresGrad = true;
                        }
                        inputs[m] = x;
                        if (last)
                        {
                            var l = loss.Forward(x, b, valid, accounting);
                            outputs[m] = l;
                            lossSum += l.Item();
                        }
                        else
                        {
                            var y = model.StageForward(x, rows, T);
                            outputs[m] = y;
                            sends.Add(Grid.Pipe.Send(y, stage + 1));   // buffered: the copy is taken now
                        }
                    }
                }
                else
                {
                    sync.BeginMicroBatch(last: k == lastBackward);
                    var scope = scopes[m] ?? throw new InvalidOperationException($"backward of micro-batch {m} before its forward");
                    using (scope.Activate())
                    {
                        if (last) Grad.Backward(outputs[m]!, observer: sync);
                        else
                        {
                            var y = outputs[m]!;
                            var dy = be.Empty(y.Shape, y.DType);
                            Wait(Grid.Pipe.Recv(dy, stage + 1));
                            Grad.Backward(y, dy, sync);
                        }
                        if (!first)
                        {
                            var dx = inputs[m]!.Grad ?? throw new InvalidOperationException($"stage {stage}: no gradient reached the input of micro-batch {m}");
                            sends.Add(Grid.Pipe.Send(dx, stage - 1));
                        }
                    }
                    sync.EndMicroBatch();
                    scope.Dispose();
                    scopes[m] = null;
                    inputs[m] = outputs[m] = null;
                }
            }
            foreach (var s in sends) Wait(s);
        }
        finally
        {
            foreach (var s in scopes) s?.Dispose();
        }
        if (stepsRun++ > 0)
        {
            TimedSteps++;
            StepSeconds += System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds;
            WaitSeconds += waitClock?.Elapsed.TotalSeconds ?? 0;
        }
        return lossSum;
    }

    /// <summary>After the gradients are reduced: the tied embedding's copies on the first and last stage get the sum of
    /// both gradients (Megatron's embedding all-reduce), so both copies take the same update.</summary>
    public void SyncTiedEmbedding()
    {
        if (Grid.Embedding is not { } group || !model.Config.TieWordEmbeddings) return;
        var g = model["model.embed_tokens.weight"].Grad ?? throw new InvalidOperationException("the tied embedding has no gradient buffer");
        group.AllReduce(g).Wait();
    }

    /// <summary>The parameter whose gradient another stage already counts in the global norm (the last stage's tied
    /// embedding copy), or null.</summary>
    public string? NormDuplicate => Grid.IsLast && !Grid.IsFirst && model.Config.TieWordEmbeddings ? "model.embed_tokens.weight" : null;

    /// <summary>
    /// Forward only (no tapes), for validation: the token-summed NLL and the number of scored targets of
    /// <paramref name="batches"/> (ids, targets; <paramref name="rows"/> rows each), summed over the stages so every
    /// stage of the replica returns the same figures. Every stage passes the same batches.
    /// </summary>
    public (double Nll, long Count) Evaluate(IReadOnlyList<(int[] Ids, int[] Targets)> batches, int rows)
    {
        var be = model.Backend;
        int stage = Grid.Stage;
        double nll = 0;
        long count = 0;
        using (Grad.NoGrad())
            foreach (var (ids, targets) in batches)
            {
                using var scope = new TensorScope();
                int n = ids.Length, T = n / rows;
                Tensor x;
                if (Grid.IsFirst)
                {
                    x = be.Empty([n], DType.I32);
                    be.Upload(x, ids);
                }
                else
                {
                    x = be.Empty([n, model.Config.HiddenSize], be.ActivationDType);
                    Wait(Grid.Pipe.Recv(x, stage - 1));
                }
                if (Grid.IsLast)
                {
                    var tg = be.Empty([n], DType.I32);
                    be.Upload(tg, targets);
                    var (_, rowLosses) = model.StageLoss(x, tg, rows, T, 1f);
                    nll += be.Sum(rowLosses);
                    count += targets.Count(t => t != -100);
                }
                else Grid.Pipe.Send(model.StageForward(x, rows, T), stage + 1).Wait();
            }
        Span<double> sums = [nll, count];
        Grid.Pipe.AllReduce(sums);
        return (sums[0], (long)sums[1]);
    }
}
