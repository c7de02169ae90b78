namespace Engine.Core;

/// <summary>
/// How a model's modules run across ranks (TorchTitan's parallelize plan, DTensor placements): the model calls it at
/// the boundaries it declares by Hugging Face module name — which slice of each parameter this rank holds, what
/// happens to activations entering and leaving a module, the embedding lookup, attention over the rank's tokens and
/// the loss over its logits — and stays single-device code. This base class is one device: every hook is the
/// identity or the plain op. Tensor and sequence parallelism (Megatron's f/g operators, column/row/vocabulary splits)
/// and context parallelism (attention over a sequence split across ranks) override the hooks
/// (Engine.Parallel.MeshPlan); the model knows nothing of communicators.
/// </summary>
public class ParallelPlan
{
    /// <summary>One device: the model as written.</summary>
    public static ParallelPlan None { get; } = new();

    /// <summary>Whether parameters are split across ranks (a rank then holds slices, not whole tensors).</summary>
    public virtual bool ShardsParameters => false;

    /// <summary>The shape this rank holds of a parameter whose whole shape is <paramref name="whole"/>.</summary>
    public virtual int[] LocalShape(string parameter, int[] whole) => whole;

    /// <summary>This rank's values of a parameter, cut from the whole tensor's (row-major).</summary>
    public virtual float[] LocalValues(string parameter, int[] whole, float[] values) => values;

    /// <summary>An activation entering <paramref name="module"/> ("model.layers.3.self_attn", "lm_head").</summary>
    public virtual Tensor Enter(string module, Tensor x) => x;

    /// <summary>An activation leaving <paramref name="module"/>.</summary>
    public virtual Tensor Leave(string module, Tensor y) => y;

    /// <summary>Rows of the token embedding for ids [N] (a vocabulary shard looks up only the ids it holds).</summary>
    public virtual Tensor Embedding(Tensor ids, Tensor table) => F.Embedding(ids, table);

    /// <summary>Attention of q [N, H·D] over k/v [N, Hkv·D] for the rank's tokens laid out as <paramref name="layout"/>;
    /// <paramref name="dims"/> gives the heads (Batch and SeqLen those of a one-block layout).</summary>
    public virtual Tensor Attention(Tensor q, Tensor k, Tensor v, SequenceLayout layout, AttentionDims dims) => F.Attention(q, k, v, dims);

    /// <summary>Cross-entropy of the rank's logits (+ z-loss, + Baichuan 2's max-z loss) against its targets: the scalar
    /// loss ÷ normalizer and the per-row losses of every row.</summary>
    public virtual (Tensor Loss, Tensor RowLosses) CrossEntropy(Tensor logits, Tensor targets, float normalizer, float zLoss, float maxZLoss = 0f) =>
        F.CrossEntropy(logits, targets, normalizer, zLoss, maxZLoss);

    /// <summary>The index among the model's query heads of the first of the <paramref name="localHeads"/> this rank
    /// computes (a tensor-parallel rank's share starts at rank · localHeads).</summary>
    public virtual int HeadOffset(int localHeads) => 0;

    /// <summary>Rows of hidden states this rank holds between blocks for <paramref name="tokens"/> of its tokens
    /// (sequence parallelism: a 1/tp share).</summary>
    public virtual int HiddenRows(int tokens) => tokens;

    /// <summary>The tokens of a micro-batch (ids and targets [rows × seqLen]) this rank runs, and where they sit
    /// (context parallelism: two chunks of every sequence; padding where the tokens must split evenly). One device:
    /// all of them as they are.</summary>
    public virtual TokenShard ShardTokens(int[] ids, int[] targets, int rows, int seqLen) =>
        new(ids, targets, SequenceLayout.Contiguous(rows, seqLen), null);

    /// <summary>Whether this rank's loss values are its own share of the step's (false: a copy of what another rank of
    /// its tensor-parallel group reports — every tensor rank computes the same losses).</summary>
    public virtual bool ReportsLoss => true;
}

/// <summary>The tokens of a micro-batch a rank runs: its ids and targets (padding: id 0, target −100), their layout,
/// and for each the index of the token in the whole micro-batch (−1 for padding); <see cref="Index"/> null when the
/// rank runs the whole micro-batch as it is.</summary>
public sealed record TokenShard(int[] Ids, int[] Targets, SequenceLayout Layout, int[]? Index);
