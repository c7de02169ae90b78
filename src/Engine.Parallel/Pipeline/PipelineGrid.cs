using Engine.Core.Distributed;

namespace Engine.Parallel;

/// <summary>
/// A pipeline-parallel × data-parallel grid over a world of PP × DP ranks (Megatron's order: pipeline outermost):
/// world rank r is stage r / DP of replica r % DP. Sub-communicators, each created collectively by every rank:
/// <list type="bullet">
/// <item><see cref="Pipe"/>: the P stages of this rank's replica (rank = stage): activations and gradients;</item>
/// <item><see cref="Data"/>: the DP ranks holding this rank's stage (rank = replica): gradient reduction, ZeRO;</item>
/// <item><see cref="Embedding"/>: the first and last stage of this replica (tied embeddings: their copies' gradients
/// are summed), null on other stages or when P = 1.</item>
/// </list>
/// </summary>
public sealed class PipelineGrid : IDisposable
{
    PipelineGrid(ICommunicator world, int stages, ICommunicator pipe, ICommunicator data, ICommunicator? embedding)
    {
        World = world; Stages = stages; Pipe = pipe; Data = data; Embedding = embedding;
    }

    public ICommunicator World { get; }
    public int Stages { get; }
    public int Replicas => World.WorldSize / Stages;
    public int Stage => World.Rank / Replicas;
    public int Replica => World.Rank % Replicas;
    public ICommunicator Pipe { get; }
    public ICommunicator Data { get; }
    public ICommunicator? Embedding { get; }
    public bool IsFirst => Stage == 0;
    public bool IsLast => Stage == Stages - 1;

    /// <summary>Splits the world (collective: every rank calls it with the same <paramref name="stages"/>).</summary>
    public static PipelineGrid Create(ICommunicator world, int stages)
    {
        if (stages < 1 || world.WorldSize % stages != 0)
            throw new ArgumentException($"{stages} pipeline stages do not divide the job's {world.WorldSize} ranks (world size = pp × dp)");
        int dp = world.WorldSize / stages, stage = world.Rank / dp, replica = world.Rank % dp;
        var pipe = world.Split(replica, stage);
        var data = world.Split(stage, replica);
        bool member = stages > 1 && (stage == 0 || stage == stages - 1);
        // ranks outside the embedding group get a color of their own (a group of one, dropped)
        var emb = world.Split(member ? replica : dp + world.Rank, stage);
        if (!member) { emb.Dispose(); emb = null; }
        return new PipelineGrid(world, stages, pipe, data, emb);
    }

    public void Dispose()
    {
        Embedding?.Dispose();
        Data.Dispose();
        Pipe.Dispose();
    }
}
