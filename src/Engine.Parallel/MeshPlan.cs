using Engine.Core;
using Engine.Core.Distributed;

namespace Engine.Parallel;

/// <summary>
/// A model's <see cref="ParallelPlan"/> on a <see cref="DeviceMesh"/>: tensor parallelism by the model's
/// <see cref="TensorParallelRules"/> (each parameter cut by its placement at store-build time; Megatron's f/g operators,
/// or under sequence parallelism the token all-gather/reduce-scatter, at the module boundaries; the
/// vocabulary-parallel embedding and cross-entropy), and context parallelism (the tokens of each sequence cut into
/// 2·cp load-balanced chunks, attention over the whole sequence's keys and values). The model calls the hooks and
/// knows nothing of the mesh.
/// <para>After backward, <see cref="SyncGradients"/> sums the gradients that are each holder's share (Megatron's
/// all-reduce of sequence-parallel norm weights; replicated key/value heads), and <see cref="Duplicates"/> names the
/// parameters another tensor rank's copy already counts in the gradient norm.</para>
/// </summary>
public sealed class MeshPlan : ParallelPlan, IDisposable
{
    readonly TensorParallelRules? rules;
    readonly Dictionary<int, ICommunicator> holders = [];

    /// <param name="rules">The model's tensor-parallel rules (required when the mesh has tensor ranks).</param>
    /// <param name="sequenceParallel">Shard the norm and residual regions along the tokens (tp &gt; 1).</param>
    public MeshPlan(DeviceMesh mesh, TensorParallelRules? rules, bool sequenceParallel)
    {
        Mesh = mesh;
        if (mesh.TensorSize > 1 && rules == null) throw new ArgumentException("tensor parallelism needs the model's tensor-parallel rules");
        this.rules = mesh.TensorSize > 1 ? rules : null;
        SequenceParallel = sequenceParallel && mesh.TensorSize > 1;
    }

    public DeviceMesh Mesh { get; }
    public bool SequenceParallel { get; }
    int Tp => Mesh.TensorSize;
    ICommunicator TensorGroup => Mesh.Tensor;

    public override bool ShardsParameters => rules != null;

    TensorParameter Rule(string parameter, int[] whole) => rules?.Parameter(parameter, whole) ?? new TensorParameter(Placement.Replicate);

    public override int[] LocalShape(string parameter, int[] whole) => Rule(parameter, whole).Placement.Local(whole);

    public override float[] LocalValues(string parameter, int[] whole, float[] values)
    {
        var p = Rule(parameter, whole).Placement;
        return p.Cut(whole, values, p.Piece(Mesh.TensorRank, Tp));
    }

    /// <summary>The placement of a parameter of the given whole shape.</summary>
    public Placement PlacementOf(string parameter, int[] whole) => Rule(parameter, whole).Placement;

    ModuleStyle Style(string module) => rules?.Module(module) ?? ModuleStyle.None;

    public override Tensor Enter(string module, Tensor x) => Style(module) switch
    {
        ModuleStyle.Block or ModuleStyle.Head => SequenceParallel ? F.GatherRows(x, TensorGroup) : F.CopyToGroup(x, TensorGroup),
        _ => x,
    };

    public override Tensor Leave(string module, Tensor y) => Style(module) switch
    {
        ModuleStyle.Block or ModuleStyle.Embedding => SequenceParallel ? F.ReduceScatterRows(y, TensorGroup) : F.ReduceFromGroup(y, TensorGroup),
        _ => y,
    };

    public override Tensor Embedding(Tensor ids, Tensor table) =>
        rules == null ? F.Embedding(ids, table) : F.VocabParallelEmbedding(ids, table, Mesh.TensorRank * table.Shape[0]);

    public override Tensor Attention(Tensor q, Tensor k, Tensor v, SequenceLayout layout, AttentionDims dims) =>
        Mesh.ContextSize > 1 ? F.ContextParallelAttention(q, k, v, dims, Mesh.Context) : F.Attention(q, k, v, dims);

    public override (Tensor Loss, Tensor RowLosses) CrossEntropy(Tensor logits, Tensor targets, float normalizer, float zLoss, float maxZLoss = 0f) =>
        rules == null ? F.CrossEntropy(logits, targets, normalizer, zLoss, maxZLoss)
        : maxZLoss > 0 ? throw new NotSupportedException("Baichuan 2's max-z loss (z_loss_weight) over a vocabulary split across tensor ranks is not built: train such a model at tensor_parallel = 1")
        : F.VocabParallelCrossEntropy(logits, targets, Mesh.TensorRank * logits.Shape[1], TensorGroup, normalizer, zLoss);

    public override int HeadOffset(int localHeads) => rules == null ? 0 : Mesh.TensorRank * localHeads;

    public override int HiddenRows(int tokens) => SequenceParallel ? tokens / Tp : tokens;

    public override bool ReportsLoss => Mesh.TensorRank == 0;

    /// <summary>
    /// This rank's tokens of a micro-batch. Context parallelism cuts each sequence into 2·cp chunks of L = ⌈T / 2cp⌉
    /// tokens and keeps chunks i and 2·cp − 1 − i (Megatron's and Llama 3's causal load balance: every rank gets the same
    /// share of the causal mask's work), laid chunk-major (all sequences' first chunk, then all sequences' second), each
    /// chunk a block at its place in the whole sequence. Where the tokens must split evenly (the chunks; sequence
    /// parallelism's token shards) the sequences are padded at their end — id 0, target −100: a padded token is
    /// never attended by a real one (it comes later) and carries no loss, so it changes nothing.
    /// </summary>
    public override TokenShard ShardTokens(int[] ids, int[] targets, int rows, int seqLen)
    {
        int cp = Mesh.ContextSize, pieces = cp > 1 ? 2 : 1, chunks = cp > 1 ? 2 * cp : 1;
        int multiple = SequenceParallel ? Tp : 1;
        int L = (seqLen + chunks - 1) / chunks;
        while ((long)rows * pieces * L % multiple != 0) L++;
        if (cp == 1 && L == seqLen) return base.ShardTokens(ids, targets, rows, seqLen);
        int[] mine = cp > 1 ? [Mesh.ContextRank, 2 * cp - 1 - Mesh.ContextRank] : [0];
        int n = rows * pieces * L;
        var (li, lt, index) = (new int[n], new int[n], new int[n]);
        var blocks = new List<SequenceBlock>();
        int at = 0;
        foreach (int c in mine)
        {
            blocks.Add(new SequenceBlock(rows, L, c * L));
            for (int b = 0; b < rows; b++)
                for (int t = 0; t < L; t++, at++)
                {
                    int pos = c * L + t;
                    if (pos < seqLen) (li[at], lt[at], index[at]) = (ids[b * seqLen + pos], targets[b * seqLen + pos], b * seqLen + pos);
                    else (li[at], lt[at], index[at]) = (0, -100, -1);
                }
        }
        return new TokenShard(li, lt, new SequenceLayout(blocks) { WholeLength = seqLen }, index);
    }

    // ---- gradients ------------------------------------------------------------------------------------------------

    /// <summary>The tensor ranks holding the same piece as this one, for a placement of <paramref name="parts"/> pieces
    /// (the whole tensor group for a replicated parameter).</summary>
    ICommunicator Holders(int parts)
    {
        if (parts == 1) return TensorGroup;
        if (!holders.TryGetValue(parts, out var g))
            throw new InvalidOperationException($"no group of the ranks sharing one of {parts} pieces: call {nameof(Prepare)} with the model's parameters first");
        return g;
    }

    /// <summary>
    /// Creates the groups of ranks that share a piece of a parameter split into fewer pieces than tensor ranks (a
    /// collective over the tensor group: every tensor rank calls it with the same parameters).
    /// </summary>
    public void Prepare(IEnumerable<(string Name, int[] Whole)> parameters)
    {
        if (rules == null) return;
        foreach (int parts in parameters.Select(p => Rule(p.Name, p.Whole).Placement.Parts).Where(n => n > 1 && n < Tp).Distinct().Order())
            if (!holders.ContainsKey(parts))
                holders[parts] = TensorGroup.Split(Mesh.TensorRank * parts / Tp, Mesh.TensorRank);
    }

    /// <summary>The parameters of <paramref name="store"/> (whole shapes from <paramref name="whole"/>) whose gradients
    /// are each holder's share, with the group that sums them.</summary>
    public List<(string Name, ICommunicator Group)> PartialGradients(ParameterStore store, Func<string, int[]> whole)
    {
        var list = new List<(string, ICommunicator)>();
        if (rules == null) return list;
        foreach (var s in store.Slots)
        {
            var r = Rule(s.Name, whole(s.Name));
            if (r.PartialGradient && r.Placement.Parts < Tp) list.Add((s.Name, Holders(r.Placement.Parts)));
        }
        return list;
    }

    /// <summary>The parameters whose copy on this rank another tensor rank's copy already counts (replicated ones on
    /// tensor ranks other than the first holder): left out of this rank's share of the gradient norm.</summary>
    public List<string> Duplicates(ParameterStore store, Func<string, int[]> whole) => rules == null ? []
        : store.Slots.Where(s => Rule(s.Name, whole(s.Name)).Placement.Duplicate(Mesh.TensorRank, Tp)).Select(s => s.Name).ToList();

    /// <summary>
    /// After the data-parallel reduction: each partial gradient summed over its holders, on the part of it this rank
    /// holds (the whole gradient at ZeRO 0/1, its owned slices at ZeRO-2/3 — the same slices on every tensor rank, whose
    /// stores are laid out alike).
    /// </summary>
    public void SyncGradients(DataParallel dp, IReadOnlyList<(string Name, ICommunicator Group)> partial)
    {
        var pending = new List<ICommWork>();
        foreach (var (name, group) in partial)
            foreach (var g in dp.OwnedGradientRanges(name)) pending.Add(group.AllReduce(g));
        foreach (var w in pending) w.Wait();
    }

    public void Dispose()
    {
        foreach (var g in holders.Values) g.Dispose();
        holders.Clear();
    }
}
