using Engine.Training.Recipes;

namespace Engine.Tests.Recipes;

/// <summary>The whole-recipe ETA the demo prints: planned steps of every stage, measured step and evaluation times.</summary>
public class RecipeProgressTests
{
    [Fact]
    public void TimeLeftCoversEveryStageAndTheirEvaluations()
    {
        var p = new RecipeProgress([("base", 100), ("naive", 50), ("hybrid", 50)]);
        Assert.Equal(200, p.TotalSteps);
        Assert.Equal((0, null, false), p.At(0, 0));                 // nothing timed yet

        // 50 steps of base in 10 s: 0.2 s per step for the 150 left; no evaluation timed yet
        var (done, left, evalTimed) = p.At(50, 10);
        Assert.Equal(50, done);
        Assert.Equal(30, left!.Value, 9);
        Assert.False(evalTimed);
        Assert.Equal("all stages 25% (50/200 steps), eta 0:30 + evaluation", p.Describe(50, 10));

        // base trained in 20 s and evaluated in 5 s: 100 steps at 0.2 s + the two evaluations still to come
        p.StageFinished(20, 5);
        Assert.Equal((100, 30.0, true), p.At(0, 0));
        // 25 steps of naive took 10 s: 0.24 s per step over all 125, for the 75 left, + 2 evaluations
        (done, left, _) = p.At(25, 10);
        Assert.Equal(125, done);
        Assert.Equal(75 * 0.24 + 2 * 5, left!.Value, 9);
        Assert.Equal("all stages 62% (125/200 steps), eta 0:28", p.Describe(25, 10));

        p.StageFinished(10, 5);
        p.StageFinished(10, 5);
        Assert.Equal((200, 0.0, true), p.At(0, 0));
        Assert.Throws<InvalidOperationException>(() => p.StageFinished(1, 1));
    }

    [Fact]
    public void ClockAndBadPlans()
    {
        Assert.Equal("0:00", RecipeProgress.Clock(-3));
        Assert.Equal("9:05", RecipeProgress.Clock(545));
        Assert.Equal("1:02:03", RecipeProgress.Clock(3723));
        Assert.Throws<ArgumentException>(() => new RecipeProgress([]));
        Assert.Throws<ArgumentException>(() => new RecipeProgress([("a", 3), ("b", 0)]));
    }
}
