using System.Globalization;

namespace Engine.Training.Recipes;

/// <summary>
/// Progress of a whole recipe (every stage's training and evaluation), for the command line: the planned steps of
/// each stage, the training seconds per step measured so far, and the evaluation seconds per stage measured so far
/// give the time left. Until the first stage's evaluation is timed, the estimate covers training only and says so.
/// </summary>
public sealed class RecipeProgress
{
    readonly int[] steps;
    int stagesDone, stepsDone;
    double trainSecondsDone, evalSecondsDone;

    public RecipeProgress(IEnumerable<(string Stage, int Steps)> plan)
    {
        var list = plan.ToList();
        if (list.Count == 0) throw new ArgumentException("a recipe plan needs at least one stage", nameof(plan));
        steps = list.Select(p => p.Steps).ToArray();
        if (steps.Any(s => s < 1)) throw new ArgumentException("every stage plans at least one step", nameof(plan));
        TotalSteps = steps.Sum();
    }

    public RecipeProgress(RecipeConfig cfg) : this(cfg.Stages.Select(s => (s.Name, s.Steps))) { }

    /// <summary>Training steps of every stage together.</summary>
    public int TotalSteps { get; }

    /// <summary>The stage that just finished, with its measured training and evaluation seconds.</summary>
    public void StageFinished(double trainSeconds, double evalSeconds)
    {
        if (stagesDone >= steps.Length) throw new InvalidOperationException("every planned stage has already finished");
        stepsDone += steps[stagesDone];
        trainSecondsDone += trainSeconds;
        evalSecondsDone += evalSeconds;
        stagesDone++;
    }

    /// <summary>
    /// Where the whole run stands at <paramref name="step"/> of the current stage, <paramref name="stageSeconds"/> into
    /// its training: steps done of all, and the seconds left (training at the mean seconds per step so far, plus one
    /// evaluation per stage not yet evaluated at the mean evaluation time; null before any step is timed).
    /// </summary>
    public (int Done, double? SecondsLeft, bool EvalTimed) At(int step, double stageSeconds)
    {
        int done = Math.Min(TotalSteps, stepsDone + Math.Max(0, step));
        double seconds = trainSecondsDone + Math.Max(0, stageSeconds);
        if (done == 0 || seconds <= 0) return (done, null, stagesDone > 0);
        double left = (TotalSteps - done) * (seconds / done);
        if (stagesDone > 0) left += (steps.Length - stagesDone) * (evalSecondsDone / stagesDone);
        return (done, left, stagesDone > 0);
    }

    /// <summary>e.g. <c>all stages 41% (1230/3000 steps), eta 5:12</c>; <c>eta 4:40 + evaluation</c> until an evaluation was timed.</summary>
    public string Describe(int step, double stageSeconds)
    {
        var (done, left, evalTimed) = At(step, stageSeconds);
        int pct = (int)(100L * done / TotalSteps);   // rounded down: 100% only when every step is done
        string eta = left is { } s ? $", eta {Clock(s)}" + (evalTimed ? "" : " + evaluation") : "";
        return $"all stages {pct}% ({done}/{TotalSteps} steps){eta}";
    }

    /// <summary>m:ss, or h:mm:ss from an hour on.</summary>
    public static string Clock(double seconds)
    {
        var t = TimeSpan.FromSeconds(Math.Max(0, Math.Round(seconds)));
        return t.TotalHours >= 1 ? t.ToString(@"h\:mm\:ss", CultureInfo.InvariantCulture) : t.ToString(@"m\:ss", CultureInfo.InvariantCulture);
    }
}
