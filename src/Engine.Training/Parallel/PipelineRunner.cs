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
public sealed class PipelineRunner(LlamaModel model, DeviceMesh grid, GradientSync sync, string schedule)
{
    /// <summary>Over one store's data parallelism (the stage's model).</summary>
    public PipelineRunner(LlamaModel model, DeviceMesh grid, DataParallel dp, string schedule) : this(model, grid, new GradientSync(dp), schedule) { }

    public DeviceMesh Grid { get; } = grid;
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

    /// <summary>Model chunks per stage (the interleaved schedule's virtual stages; 1 otherwise).</summary>
    public int Chunks => model.Stage.ChunkCount;

    /// <summary>Whether (stage, chunk) is the first virtual stage (it embeds the ids) or the last (it ends in the loss).</summary>
    bool FirstVirtual(int chunk) => Grid.IsFirst && chunk == 0;
    bool LastVirtual(int chunk) => Grid.IsLast && chunk == Chunks - 1;
    /// <summary>The stages a chunk's input comes from and its output goes to (around the ring: the last stage's chunk c
    /// feeds the first stage's chunk c + 1).</summary>
    int Previous => (Grid.Stage - 1 + Grid.Stages) % Grid.Stages;
    int Next => (Grid.Stage + 1) % Grid.Stages;

    /// <summary>The step's loss sum on the last stage (its accounts in <paramref name="accounting"/>); zero elsewhere.
    /// <paramref name="valid"/>: the global normalizer (<see cref="ITrainingLoss.Count"/> summed over the global batch).
    /// Activations travel on the pipe group and their gradients on its backward communicator (one kind of message in
    /// one order on each, which the interleaved schedule needs when two stages send both ways).</summary>
    public double RunStep(IReadOnlyList<Batch> batches, long valid, ITrainingLoss loss, LossAccounting accounting)
    {
        var be = model.Backend;
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        waitClock?.Reset();
        int M = batches.Count, stage = Grid.Stage, V = Chunks;
        var actions = PipelineSchedule.For(Schedule, Grid.Stages, stage, M, V);
        int lastBackward = actions.Select((a, i) => (a, i)).Last(x => x.a.Op == PipeOp.Backward).i;
        var scopes = new TensorScope?[M, V];
        var inputs = new Tensor?[M, V];
        var outputs = new Tensor?[M, V];
        var sends = new List<Engine.Core.Distributed.ICommWork>();
        double lossSum = 0;
        try
        {
            for (int k = 0; k < actions.Count; k++)
            {
                var (op, m, c) = (actions[k].Op, actions[k].MicroBatch, actions[k].Chunk);
                var b = batches[m];
                int rows = b.RowSources.Length;
                if (rows == 0)
                {
                    // this replica's share of a small global batch is empty, on every stage alike: nothing crosses the
                    // stages, but the stage's gradient buckets still reduce with the other replicas'
                    if (op == PipeOp.Backward && (V == 1 || k == lastBackward))
                    {
                        sync.BeginMicroBatch(last: true);
                        sync.EndMicroBatch();
                    }
                    continue;
                }
                if (op == PipeOp.Forward)
                {
                    var scope = scopes[m, c] = TensorScope.Detached();
                    using (scope.Activate())
                    {
                        var x = ChunkInput(b, c);
                        if (!FirstVirtual(c)) x.RequiresGrad = true;
                        inputs[m, c] = x;
                        if (LastVirtual(c))
                        {
                            var l = loss.Forward(x, b, valid, accounting);
                            outputs[m, c] = l;
                            lossSum += l.Item();
                        }
                        else
                        {
                            var y = model.StageForward(x, b.Layout, c);
                            outputs[m, c] = y;
                            sends.Add(Grid.Pipe.Send(y, Next));   // buffered: the copy is taken now
                        }
                    }
                }
                else
                {
                    if (V == 1 || k == lastBackward) sync.BeginMicroBatch(last: k == lastBackward);
                    var scope = scopes[m, c] ?? throw new InvalidOperationException($"backward of micro-batch {m} (chunk {c}) before its forward");
                    using (scope.Activate())
                    {
                        if (LastVirtual(c)) Grad.Backward(outputs[m, c]!, observer: sync);
                        else
                        {
                            var y = outputs[m, c]!;
                            var dy = be.Empty(y.Shape, y.DType);
                            Wait(Grid.PipeBack.Recv(dy, Next));
                            Grad.Backward(y, dy, sync);
                        }
                        if (!FirstVirtual(c))
                        {
                            var dx = inputs[m, c]!.Grad ?? throw new InvalidOperationException($"stage {stage}: no gradient reached the input of micro-batch {m} (chunk {c})");
                            sends.Add(Grid.PipeBack.Send(dx, Previous));
                        }
                    }
                    if (V == 1 || k == lastBackward) sync.EndMicroBatch();
                    scope.Dispose();
                    scopes[m, c] = null;
                    inputs[m, c] = outputs[m, c] = null;
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
        // a frozen embedding (LoRA's base) takes no update, so its copies stay equal without one
        if (Grid.Embedding is not { } group || !model.Config.TieWordEmbeddings || model["model.embed_tokens.weight"].Frozen) return;
        // ZeRO-3: each replica rank holds the same slice of the embedding on both stages (its unit alone, cut alike)
        group.AllReduce(sync.Body.GradientOf("model.embed_tokens.weight")).Wait();
    }

    /// <summary>The parameter whose gradient another stage already counts in the global norm (the last stage's tied
    /// embedding copy), or null.</summary>
    public string? NormDuplicate => Grid.IsLast && !Grid.IsFirst && model.Config.TieWordEmbeddings ? "model.embed_tokens.weight" : null;

    /// <summary>
    /// Forward only (no tapes), for validation: the token-summed NLL and the number of scored targets of
    /// <paramref name="batches"/> (ids, targets; <paramref name="rows"/> rows each), summed over the stages (and a
    /// context group's ranks, each of which scores its own tokens) so every rank of the replica returns the same
    /// figures. Every stage passes the same batches.
    /// </summary>
    public (double Nll, long Count) Evaluate(IReadOnlyList<(int[] Ids, int[] Targets)> batches, int rows)
    {
        var be = model.Backend;
        double nll = 0;
        long count = 0;
        using (Grad.NoGrad())
            foreach (var (ids, targets) in batches)
            {
                var b = new Batch(ids, targets, new string[rows]).For(model.Plan);
                for (int c = 0; c < Chunks; c++)
                {
                    using var scope = new TensorScope();
                    var x = ChunkInput(b, c);
                    if (LastVirtual(c))
                    {
                        var (l, k) = Score(model, x, b);
                        (nll, count) = (nll + l, count + k);
                    }
                    else Grid.Pipe.Send(model.StageForward(x, b.Layout, c), Next).Wait();
                }
            }
        Span<double> sums = [nll, count];
        Grid.Pipe.AllReduce(sums);
        return Reduce(Grid, sums);
    }

    /// <summary>Model chunk <paramref name="chunk"/>'s input for micro-batch <paramref name="b"/>: this rank's token ids
    /// on the first virtual stage, else the previous stage's hidden states (the plan's rows of them), received.</summary>
    Tensor ChunkInput(Batch b, int chunk)
    {
        var be = model.Backend;
        int n = b.LocalIds.Length;
        if (FirstVirtual(chunk))
        {
            var ids = be.Empty([n], DType.I32);
            be.Upload(ids, b.LocalIds);
            return ids;
        }
        var x = be.Empty([model.Plan.HiddenRows(n), model.Config.HiddenSize], be.ActivationDType);
        Wait(Grid.Pipe.Recv(x, Previous));
        return x;
    }

    /// <summary>The summed NLL and scored targets of this rank's tokens of <paramref name="b"/> from the last (or only)
    /// stage's input (no gradients); zero on a tensor rank whose losses another reports.</summary>
    internal static (double Nll, long Count) Score(LlamaModel model, Tensor input, Batch b)
    {
        var be = model.Backend;
        var tg = be.Empty([b.LocalTargets.Length], DType.I32);
        be.Upload(tg, b.LocalTargets);
        var (_, rowLosses) = model.StageLoss(input, tg, b.Layout, 1f);
        return model.Plan.ReportsLoss ? (be.Sum(rowLosses), b.LocalTargets.Count(t => t != -100)) : (0, 0);
    }

    /// <summary>Scores summed over the ranks that split each sequence (context ranks score their own tokens; one tensor
    /// rank reports), so every rank of the model copy returns the same figures.</summary>
    internal static (double Nll, long Count) Reduce(DeviceMesh mesh, Span<double> sums)
    {
        if (mesh.ContextSize > 1) mesh.Context.AllReduce(sums);
        if (mesh.TensorSize > 1) mesh.Tensor.AllReduce(sums);
        return (sums[0], (long)sums[1]);
    }
}
