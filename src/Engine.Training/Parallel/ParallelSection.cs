using Engine.Parallel;
using Engine.Training.Config;

namespace Engine.Training.Parallel;

/// <summary>The [parallel] section: data-parallel size, ZeRO stage, gradient bucket size.</summary>
public sealed record ParallelSection
{
    /// <summary>Data-parallel ranks; 0 = the job's world size (the only layout until pipeline parallelism).</summary>
    public int Dp { get; init; }
    /// <summary>0: plain data parallel (all-reduce); 1: AdamW moments sharded (ZeRO-1); 2: moments and gradients
    /// sharded, gradients reduce-scattered (ZeRO-2).</summary>
    public int Zero { get; init; }
    /// <summary>Gradient bucket size in MB (fp32 elements × 4 bytes); DDP's default is 25.</summary>
    public double BucketMb { get; init; } = 25;

    /// <summary>Refuses a section that does not fit a job of <paramref name="worldSize"/> ranks (one line naming the key).</summary>
    public void Validate(int worldSize)
    {
        var errors = new List<string>();
        if (Dp < 0) errors.Add($"parallel.dp must be >= 0 (got {Dp}; 0 = every rank of the job)");
        else if (Dp != 0 && Dp != worldSize) errors.Add($"parallel.dp = {Dp} but the job has {worldSize} rank(s): launch {Dp} ranks (engine launch --nproc-per-node {Dp} -- ...) or set parallel.dp = {worldSize}");
        if (Zero is < 0 or > 2) errors.Add($"parallel.zero must be 0, 1 or 2 (got {Zero})");
        if (!(BucketMb > 0) || double.IsInfinity(BucketMb)) errors.Add($"parallel.bucket_mb must be positive (got {BucketMb})");
        if (errors.Count > 0) throw new ConfigException(string.Join("; ", errors));
    }
}

/// <summary>Data parallelism for a model as the [parallel] section asks.</summary>
public static class ParallelSetup
{
    public static Engine.Parallel.DataParallel Create(Engine.Model.LlamaModel model, Engine.Core.Distributed.ICommunicator comm, ParallelSection? section = null) =>
        Create(model.Store, comm, section);

    /// <summary>Over any store (LoRA: the adapters' store; the frozen base is not reduced).</summary>
    public static Engine.Parallel.DataParallel Create(Engine.Core.ParameterStore store, Engine.Core.Distributed.ICommunicator comm, ParallelSection? section = null)
    {
        section ??= new ParallelSection();
        section.Validate(comm.WorldSize);
        return Engine.Parallel.DataParallel.Create(store, comm, section.Zero, section.BucketMb);
    }
}
