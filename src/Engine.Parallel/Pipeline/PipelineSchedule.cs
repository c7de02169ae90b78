using System.Text;

namespace Engine.Parallel;

/// <summary>Forward or backward of one micro-batch on one stage.</summary>
public enum PipeOp { Forward, Backward }

/// <summary>One step of a stage's schedule: forward or backward of a micro-batch through one of the stage's model
/// chunks (0 unless the schedule is interleaved).</summary>
public readonly record struct PipeAction(PipeOp Op, int MicroBatch, int Chunk = 0)
{
    public override string ToString() => $"{(Op == PipeOp.Forward ? "F" : "B")}{MicroBatch}" + (Chunk > 0 ? $".{Chunk}" : "");
}

/// <summary>
/// Pipeline schedules as data: for each stage the ordered list of (micro-batch, forward | backward) it runs in one
/// optimizer step. A stage receives a forward's input from the previous stage and a backward's output gradient from
/// the next; sends are buffered, receives block, so any order consistent with those dependencies runs without a
/// deadlock.
/// <list type="bullet">
/// <item><b>GPipe</b> (Huang et al. 2019): every forward, then every backward — all M micro-batches' activations are
/// alive at once on every stage.</item>
/// <item><b>1F1B</b> (PipeDream-Flush; Narayanan et al. 2021): stage s runs min(P − s − 1, M) warm-up forwards, then
/// alternates one forward and one backward, then drains the remaining backwards — at most P − s micro-batches alive
/// on stage s, so activation memory is bounded by the pipeline depth instead of M.</item>
/// </list>
/// <item><b>Interleaved 1F1B</b> (Narayanan et al. 2021, §2.2; Megatron-LM's virtual pipeline): each stage holds v
/// model chunks (stage s: chunks s, s + P, …), a micro-batch visits every stage v times; forwards run in groups of P
/// micro-batches per chunk, with (P − s − 1)·2 + (v − 1)·P warm-up forwards, then one forward and one backward
/// alternate. The bubble shrinks by v: (P − 1) / (v·M + P − 1) of the step (the paper's (P − 1)/(v·M) of the compute),
/// for v times the point-to-point messages; it needs M to be a multiple of P.</item>
/// </list>
/// GPipe and 1F1B have the same bubble: (P − 1) / (M + P − 1) of a step is idle when every stage's forward and
/// backward take equal times.
/// </summary>
public static class PipelineSchedule
{
    public static IReadOnlyList<PipeAction> For(string kind, int stages, int stage, int microBatches, int virtualStages = 1) => kind switch
    {
        "gpipe" => GPipe(stages, stage, microBatches),
        "1f1b" => OneFOneB(stages, stage, microBatches),
        "interleaved" => Interleaved(stages, stage, microBatches, virtualStages),
        _ => throw new ArgumentException($"pipeline schedule must be \"1f1b\", \"gpipe\" or \"interleaved\" (got \"{kind}\")"),
    };

    /// <summary>Megatron-LM's interleaved 1F1B (forward_backward_pipelining_with_interleaving) for stage
    /// <paramref name="stage"/> holding <paramref name="virtualStages"/> chunks.</summary>
    public static IReadOnlyList<PipeAction> Interleaved(int stages, int stage, int microBatches, int virtualStages)
    {
        Check(stages, stage, microBatches);
        if (virtualStages < 1) throw new ArgumentOutOfRangeException(nameof(virtualStages), $"virtual stages must be >= 1 (got {virtualStages})");
        if (microBatches % stages != 0)
            throw new ArgumentException($"the interleaved schedule runs micro-batches in groups of the {stages} stages: {microBatches} micro-batches is not a multiple");
        int group = stages * virtualStages, total = microBatches * virtualStages;
        // the k-th forward (backward) of a stage: micro-batch (k / group)·P + k % P through chunk (k % group) / P
        // (backwards visit the chunks in reverse)
        PipeAction Forward(int k) => new(PipeOp.Forward, k / group * stages + k % stages, k % group / stages);
        PipeAction Backward(int k) => new(PipeOp.Backward, k / group * stages + k % stages, virtualStages - 1 - k % group / stages);
        int warmup = Math.Min((stages - stage - 1) * 2 + (virtualStages - 1) * stages, total);
        var a = new List<PipeAction>();
        for (int k = 0; k < warmup; k++) a.Add(Forward(k));
        for (int k = 0; k < total - warmup; k++)
        {
            a.Add(Forward(warmup + k));
            a.Add(Backward(k));
        }
        for (int k = Math.Max(0, total - warmup); k < total; k++) a.Add(Backward(k));
        return a;
    }

    public static IReadOnlyList<PipeAction> GPipe(int stages, int stage, int microBatches)
    {
        Check(stages, stage, microBatches);
        var a = new List<PipeAction>();
        for (int m = 0; m < microBatches; m++) a.Add(new(PipeOp.Forward, m));
        for (int m = 0; m < microBatches; m++) a.Add(new(PipeOp.Backward, m));
        return a;
    }

    public static IReadOnlyList<PipeAction> OneFOneB(int stages, int stage, int microBatches)
    {
        Check(stages, stage, microBatches);
        int warmup = Math.Min(stages - stage - 1, microBatches);
        var a = new List<PipeAction>();
        int f = 0, b = 0;
        for (; f < warmup; f++) a.Add(new(PipeOp.Forward, f));
        while (f < microBatches)
        {
            a.Add(new(PipeOp.Forward, f++));
            a.Add(new(PipeOp.Backward, b++));
        }
        while (b < microBatches) a.Add(new(PipeOp.Backward, b++));
        return a;
    }

    static void Check(int stages, int stage, int microBatches)
    {
        if (stages < 1 || stage < 0 || stage >= stages) throw new ArgumentOutOfRangeException(nameof(stage), $"stage {stage} of {stages}");
        if (microBatches < 1) throw new ArgumentOutOfRangeException(nameof(microBatches), $"micro-batches must be >= 1 (got {microBatches})");
    }

    /// <summary>Most micro-batches a schedule keeps alive at once (forward done, backward not yet).</summary>
    public static int PeakInFlight(IReadOnlyList<PipeAction> actions)
    {
        int live = 0, peak = 0;
        foreach (var a in actions)
        {
            live += a.Op == PipeOp.Forward ? 1 : -1;
            peak = Math.Max(peak, live);
        }
        return peak;
    }

    /// <summary>The theoretical bubble, the idle share of a step: (P − 1) / (v·M + P − 1) (v = 1: GPipe and 1F1B).</summary>
    public static double Bubble(int stages, int microBatches, int virtualStages = 1) => (stages - 1.0) / (virtualStages * microBatches + stages - 1.0);

    /// <summary>
    /// Simulates the schedule with unit-time forwards and backwards of <paramref name="backwardCost"/> units per stage
    /// (a chunk of an interleaved stage takes 1/v of them; each stage waits for its inputs): the step's length in time
    /// units and the idle fraction of the stage-time area. Throws when the schedule deadlocks.
    /// </summary>
    public static (double Makespan, double Bubble) Simulate(string kind, int stages, int microBatches, double backwardCost = 2.0, int virtualStages = 1)
    {
        int v = kind == "interleaved" ? virtualStages : 1, V = stages * v;
        double f = 1.0 / v, bw = backwardCost / v;
        var lists = Enumerable.Range(0, stages).Select(s => For(kind, stages, s, microBatches, v)).ToArray();
        // virtual stage of (stage, chunk): chunk · P + stage; times of each (virtual stage, micro-batch)
        var fEnd = new double[V, microBatches];
        var bEnd = new double[V, microBatches];
        var pos = new int[stages];
        var clock = new double[stages];
        int remaining = lists.Sum(l => l.Count);
        while (remaining > 0)
        {
            bool progressed = false;
            for (int s = 0; s < stages; s++)
            {
                if (pos[s] >= lists[s].Count) continue;
                var a = lists[s][pos[s]];
                int vs = a.Chunk * stages + s;
                double ready;
                if (a.Op == PipeOp.Forward)
                {
                    if (vs > 0 && fEnd[vs - 1, a.MicroBatch] == 0) continue;
                    ready = vs > 0 ? fEnd[vs - 1, a.MicroBatch] : 0;
                    fEnd[vs, a.MicroBatch] = Math.Max(clock[s], ready) + f;
                    clock[s] = fEnd[vs, a.MicroBatch];
                }
                else
                {
                    if (vs < V - 1 ? bEnd[vs + 1, a.MicroBatch] == 0 : fEnd[vs, a.MicroBatch] == 0) continue;
                    ready = vs < V - 1 ? bEnd[vs + 1, a.MicroBatch] : fEnd[vs, a.MicroBatch];
                    bEnd[vs, a.MicroBatch] = Math.Max(clock[s], ready) + bw;
                    clock[s] = bEnd[vs, a.MicroBatch];
                }
                pos[s]++;
                remaining--;
                progressed = true;
            }
            if (!progressed) throw new InvalidOperationException($"{kind} schedule deadlocks at {stages} stages × {microBatches} micro-batches");
        }
        double makespan = clock.Max();
        double busy = stages * microBatches * (1 + backwardCost);
        return (makespan, 1 - busy / (stages * makespan));
    }

    /// <summary>The schedule as a table: one row per stage, one column per action.</summary>
    public static string Format(string kind, int stages, int microBatches, int virtualStages = 1)
    {
        var sb = new StringBuilder($"{kind}, {stages} stages × {microBatches} micro-batches" + (kind == "interleaved" ? $" × {virtualStages} chunks" : "") + "\n");
        for (int s = 0; s < stages; s++)
        {
            var a = For(kind, stages, s, microBatches, virtualStages);
            sb.Append($"stage {s}: ").AppendJoin(' ', a.Select(x => x.ToString()))
              .Append($"   (peak {PeakInFlight(a)} in flight)\n");
        }
        return sb.ToString();
    }
}
