using Engine.Core.Distributed;

namespace Engine.Parallel;

/// <summary>
/// The job's ranks as a 4-D mesh (TorchTitan's device mesh, Megatron's process groups): pipeline stages outermost,
/// then data-parallel replicas, then context-parallel ranks, then tensor-parallel ranks innermost —
/// <c>rank = ((stage · DP + replica) · CP + context) · TP + tensor</c> — so a tensor group is consecutive ranks (inside
/// a node, over NVLink), a context group the next stride, and the pipeline's point-to-point traffic crosses the widest
/// distance. This is Megatron's order (tp-cp-dp-pp) and TorchTitan's (pp, dp, cp, tp): pipeline outermost, because its
/// traffic is a few activations per micro-batch while ZeRO-3's gathers and the data-parallel reductions are whole
/// models' worth and want the closer links. Without tensor and context ranks it is the earlier pipeline grid
/// (rank = stage · DP + replica).
/// <para>One communicator per dimension, split from the world (MPI_Comm_split, ncclCommSplit, thread groups), each
/// created collectively by every rank in the same order:</para>
/// <list type="bullet">
/// <item><see cref="Tensor"/>: the TP ranks of this (stage, replica, context) — tensor-parallel collectives;</item>
/// <item><see cref="Context"/>: the CP ranks of this (stage, replica, tensor) — context-parallel K/V exchange;</item>
/// <item><see cref="Pipe"/>: the stages of this (replica, context, tensor) — activations and their gradients (and
/// <see cref="PipeBack"/>, a second communicator over the same ranks for the gradients when the interleaved schedule
/// sends both ways on one link, so each carries one kind of message in one order);</item>
/// <item><see cref="Data"/>: the DP × CP ranks holding this (stage, tensor) part of the model — gradient reduction and
/// ZeRO sharding (context ranks see other tokens of the same sequences, so their gradients are summed like replicas':
/// TorchTitan's dp_shard_cp, Megatron's dp-cp group);</item>
/// <item><see cref="ModelParallel"/>: the TP × PP ranks of one model copy — the global gradient norm;</item>
/// <item><see cref="Embedding"/>: the first and last stage of this (replica, context, tensor) (tied embeddings: their
/// copies' gradients are summed), null on other stages or with one stage.</item>
/// </list>
/// </summary>
public sealed class DeviceMesh : IDisposable
{
    readonly List<ICommunicator> owned = [];

    DeviceMesh(ICommunicator world, int stages, int context, int tensor)
    {
        World = world; Stages = stages; ContextSize = context; TensorSize = tensor;
    }

    public ICommunicator World { get; }
    /// <summary>Pipeline stages (PP).</summary>
    public int Stages { get; }
    /// <summary>Context-parallel ranks per sequence (CP).</summary>
    public int ContextSize { get; }
    /// <summary>Tensor-parallel ranks per layer (TP).</summary>
    public int TensorSize { get; }
    /// <summary>Data-parallel replicas (DP = world ÷ (PP · CP · TP)).</summary>
    public int Replicas => World.WorldSize / (Stages * ContextSize * TensorSize);

    public int TensorRank => World.Rank % TensorSize;
    public int ContextRank => World.Rank / TensorSize % ContextSize;
    public int Replica => World.Rank / (TensorSize * ContextSize) % Replicas;
    public int Stage => World.Rank / (TensorSize * ContextSize * Replicas);
    public bool IsFirst => Stage == 0;
    public bool IsLast => Stage == Stages - 1;

    public ICommunicator Tensor { get; private set; } = null!;
    public ICommunicator Context { get; private set; } = null!;
    public ICommunicator Pipe { get; private set; } = null!;
    /// <summary>The pipe's ranks again, for gradients sent backward (interleaved schedule); <see cref="Pipe"/> otherwise.</summary>
    public ICommunicator PipeBack { get; private set; } = null!;
    public ICommunicator Data { get; private set; } = null!;
    public ICommunicator ModelParallel { get; private set; } = null!;
    public ICommunicator? Embedding { get; private set; }

    /// <summary>The world rank at the given coordinates.</summary>
    public int RankOf(int stage, int replica, int context, int tensor) => ((stage * Replicas + replica) * ContextSize + context) * TensorSize + tensor;

    /// <summary>The world rank of member <paramref name="r"/> of this rank's <see cref="Data"/> group (replica-major).</summary>
    public int DataMember(int r) => RankOf(Stage, r / ContextSize, r % ContextSize, TensorRank);

    /// <summary>"pp P × dp D × cp C × tp T" (the dimensions above one only; "1 rank" for a world of one).</summary>
    public string Describe() => Describe(Stages, Replicas, ContextSize, TensorSize);

    public static string Describe(int pp, int dp, int cp, int tp)
    {
        var parts = new List<string>();
        if (pp > 1) parts.Add($"pp {pp}");
        if (dp > 1) parts.Add($"dp {dp}");
        if (cp > 1) parts.Add($"cp {cp}");
        if (tp > 1) parts.Add($"tp {tp}");
        return parts.Count == 0 ? "1 rank" : string.Join(" × ", parts);
    }

    /// <summary>
    /// Splits the world into its groups (collective: every rank calls it with the same dimensions). The world size
    /// must be a multiple of stages × context × tensor; the quotient is the data-parallel replicas.
    /// </summary>
    /// <param name="separateBackward">Give the pipe a second communicator for gradients (<see cref="PipeBack"/>).</param>
    public static DeviceMesh Create(ICommunicator world, int stages, int context = 1, int tensor = 1, bool separateBackward = false)
    {
        if (stages < 1 || context < 1 || tensor < 1 || world.WorldSize % (stages * context * tensor) != 0)
            throw new ArgumentException($"pp {stages} × cp {context} × tp {tensor} does not divide the job's {world.WorldSize} ranks (world size = pp × dp × cp × tp)");
        var mesh = new DeviceMesh(world, stages, context, tensor);
        try
        {
            mesh.Build(separateBackward);
            return mesh;
        }
        catch
        {
            mesh.Dispose();
            throw;
        }
    }

    void Build(bool separateBackward)
    {
        int dp = Replicas, s = Stage, d = Replica, c = ContextRank, t = TensorRank;
        // a group of the whole world is the world, a group of one rank needs no communication (NCCL spends buffers
        // per communicator): every rank takes the same decision, so the collective splits stay matched
        ICommunicator Split(int size, int color, int key, bool fresh = false)
        {
            if (size == World.WorldSize && !fresh) return World;
            var comm = size == 1 ? new SingleRankCommunicator(World.Backend) : World.Split(color, key);
            owned.Add(comm);
            return comm;
        }
        // colors: every coordinate but the group's own, flattened; keys: the group's own coordinate
        Tensor = Split(TensorSize, (s * dp + d) * ContextSize + c, t);
        Context = Split(ContextSize, (s * dp + d) * TensorSize + t, c);
        Pipe = Split(Stages, (d * ContextSize + c) * TensorSize + t, s);
        PipeBack = separateBackward ? Split(Stages, (d * ContextSize + c) * TensorSize + t, s, fresh: true) : Pipe;
        Data = Split(dp * ContextSize, s * TensorSize + t, d * ContextSize + c);
        ModelParallel = Split(Stages * TensorSize, d * ContextSize + c, s * TensorSize + t);
        bool member = Stages > 1 && (IsFirst || IsLast);
        // ranks outside the embedding group get a color of their own (a group of one, dropped)
        int group = (d * ContextSize + c) * TensorSize + t;
        var emb = World.Split(member ? group : dp * ContextSize * TensorSize + World.Rank, s);
        if (member) { Embedding = emb; owned.Add(emb); }
        else emb.Dispose();
    }

    public void Dispose()
    {
        for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
        owned.Clear();
    }
}
