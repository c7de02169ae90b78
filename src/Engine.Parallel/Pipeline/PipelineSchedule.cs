using System.Text;

namespace Engine.Parallel;

/// <summary>Forward or backward of one micro-batch on one stage.</summary>
public enum PipeOp { Forward, Backward }

/// <summary>One step of a stage's schedule.</summary>
public readonly record struct PipeAction(PipeOp Op, int MicroBatch)
{
    public override string ToString() => $"{(Op == PipeOp.Forward ? "F" : "B")}{MicroBatch}";
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
/// Both have the same bubble: (P − 1) / (M + P − 1) of a step is idle when every stage's forward and backward take
/// equal times.
/// </summary>
public static class PipelineSchedule
{
    public static IReadOnlyList<PipeAction> For(string kind, int stages, int stage, int microBatches) => kind switch
    {
        "gpipe" => GPipe(stages, stage, microBatches),
        "1f1b" => OneFOneB(stages, stage, microBatches),
        _ => throw new ArgumentException($"pipeline schedule must be \"1f1b\" or \"gpipe\" (got \"{kind}\")"),
    };

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

    /// <summary>The theoretical bubble fraction (P − 1) / (M + P − 1).</summary>
    public static double Bubble(int stages, int microBatches) => (stages - 1.0) / (microBatches + stages - 1.0);

    /// <summary>
    /// Simulates the schedule with unit-time forwards and backwards of <paramref name="backwardCost"/> units (each
    /// stage waits for its inputs): the step's length in time units and the idle fraction of the stage-time area.
    /// </summary>
    public static (double Makespan, double Bubble) Simulate(string kind, int stages, int microBatches, double backwardCost = 2.0)
    {
        var lists = Enumerable.Range(0, stages).Select(s => For(kind, stages, s, microBatches)).ToArray();
        var fEnd = new double[stages, microBatches];
        var bEnd = new double[stages, microBatches];
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
                double ready;
                if (a.Op == PipeOp.Forward)
                {
                    if (s > 0 && fEnd[s - 1, a.MicroBatch] == 0) continue;
                    ready = s > 0 ? fEnd[s - 1, a.MicroBatch] : 0;
                    fEnd[s, a.MicroBatch] = Math.Max(clock[s], ready) + 1;
                    clock[s] = fEnd[s, a.MicroBatch];
                }
                else
                {
                    if (s < stages - 1 && bEnd[s + 1, a.MicroBatch] == 0) continue;
                    ready = s < stages - 1 ? bEnd[s + 1, a.MicroBatch] : fEnd[s, a.MicroBatch];
                    bEnd[s, a.MicroBatch] = Math.Max(clock[s], ready) + backwardCost;
                    clock[s] = bEnd[s, a.MicroBatch];
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
    public static string Format(string kind, int stages, int microBatches)
    {
        var sb = new StringBuilder($"{kind}, {stages} stages × {microBatches} micro-batches\n");
        for (int s = 0; s < stages; s++)
        {
            var a = For(kind, stages, s, microBatches);
            sb.Append($"stage {s}: ").AppendJoin(' ', a.Select(x => x.ToString()))
              .Append($"   (peak {PeakInFlight(a)} in flight)\n");
        }
        return sb.ToString();
    }
}
