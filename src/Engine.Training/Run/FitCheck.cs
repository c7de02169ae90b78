using Engine.Model;
using Engine.Training.Config;
using Engine.Training.Planning;

namespace Engine.Training.Run;

/// <summary>
/// The one fit check: <see cref="MemoryModel"/>'s estimate of every stage of the layout the run trains (the same
/// <see cref="RunLayout.Plan"/> that <c>--dry-run</c> prints and <c>engine plan</c> evaluates), the largest against
/// the device's (or this host's) memory.
/// </summary>
public static class FitCheck
{
    /// <summary>The estimate of every pipeline stage of the run.</summary>
    public static List<MemoryEstimate> Stages(LlamaConfig shape, RunLayout layout, PlanLayout plan, bool gpu) =>
        MemoryModel.Stages(shape, plan, gpu, layout.LayerSplit);

    /// <summary>Refuses a run whose largest stage needs more than 90% of <paramref name="availableBytes"/> (null: this
    /// host's memory), naming what to change.</summary>
    public static void Require(LlamaConfig shape, RunLayout layout, PlanLayout plan, bool gpu, long? availableBytes) =>
        Require(Stages(shape, layout, plan, gpu).MaxBy(e => e.Total)!, availableBytes ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, plan);

    /// <summary>Refuses <paramref name="worst"/> (the largest stage of <paramref name="plan"/>) above 90% of <paramref name="available"/>.</summary>
    public static void Require(MemoryEstimate worst, long available, PlanLayout plan)
    {
        if (worst.Total > available * 0.9)
            throw new ConfigException($"model does not fit: on {plan.Describe()}, stage {worst.Stage} needs about {worst.Describe()} but {MemoryEstimate.Gib(available)} are available; " +
                "reduce the batch size or sequence length, the model size, set model.recompute = \"full\", raise parallel.zero, or add pipeline stages (engine plan ranks the layouts)");
    }
}
