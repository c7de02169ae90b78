namespace Engine.Parallel;

/// <summary>
/// How a parameter is laid over the tensor-parallel ranks (DTensor's Shard(dim) / Replicate): cut into
/// <see cref="Parts"/> equal pieces along dimension <see cref="Dim"/>, tensor rank r holding piece r · Parts / tp — so
/// with fewer pieces than ranks each piece is held by tp / Parts consecutive ranks (key/value heads when there are fewer
/// than tensor ranks). <see cref="Replicate"/>: one piece, the whole tensor on every rank.
/// </summary>
public readonly record struct Placement(int Dim, int Parts)
{
    public static Placement Replicate => new(0, 1);
    public static Placement Shard(int dim, int parts) => new(dim, parts);

    public bool Sharded => Parts > 1;

    /// <summary>The piece tensor rank <paramref name="rank"/> of <paramref name="tp"/> holds.</summary>
    public int Piece(int rank, int tp) => rank * Parts / tp;

    /// <summary>Ranks holding each piece.</summary>
    public int Holders(int tp) => tp / Parts;

    /// <summary>Whether this rank's copy of its piece is another's too and not the first (its gradient already counted).</summary>
    public bool Duplicate(int rank, int tp) => rank % Holders(tp) != 0;

    public int[] Local(int[] whole)
    {
        if (!Sharded) return whole;
        Check(whole);
        var local = (int[])whole.Clone();
        local[Dim] /= Parts;
        return local;
    }

    /// <summary>Piece <paramref name="piece"/> of a whole row-major tensor's values.</summary>
    public float[] Cut(int[] whole, float[] values, int piece)
    {
        if (!Sharded) return values;
        var (outer, span, inner) = Strides(whole);
        var local = new float[values.Length / Parts];
        for (long o = 0; o < outer; o++)
            Array.Copy(values, (o * Parts + piece) * span * inner, local, o * span * inner, span * inner);
        return local;
    }

    /// <summary>Writes piece <paramref name="piece"/>'s values into a whole row-major tensor (the inverse of <see cref="Cut"/>).</summary>
    public void Place(int[] whole, float[] into, ReadOnlySpan<float> values, int piece)
    {
        if (!Sharded) { values.CopyTo(into); return; }
        var (outer, span, inner) = Strides(whole);
        for (long o = 0; o < outer; o++)
            values.Slice((int)(o * span * inner), (int)(span * inner)).CopyTo(into.AsSpan((int)((o * Parts + piece) * span * inner), (int)(span * inner)));
    }

    /// <summary>Elements before the cut dimension, the piece's extent along it, and the elements after it.</summary>
    (long Outer, long Span, long Inner) Strides(int[] whole)
    {
        Check(whole);
        long outer = 1, inner = 1;
        for (int d = 0; d < Dim; d++) outer *= whole[d];
        for (int d = Dim + 1; d < whole.Length; d++) inner *= whole[d];
        return (outer, whole[Dim] / Parts, inner);
    }

    void Check(int[] whole)
    {
        if (Dim < 0 || Dim >= whole.Length || whole[Dim] % Parts != 0)
            throw new ArgumentException($"a tensor of shape [{string.Join(", ", whole)}] does not split into {Parts} pieces along dimension {Dim}");
    }

    public override string ToString() => Sharded ? $"Shard({Dim}, {Parts})" : "Replicate";
}

/// <summary>What a module does with the activations crossing its boundary under tensor parallelism (TorchTitan's
/// ColwiseParallel/RowwiseParallel styles as a module's two ends).</summary>
public enum ModuleStyle
{
    /// <summary>Nothing crosses ranks.</summary>
    None,
    /// <summary>Column-parallel in, row-parallel out (attention, MLP): the input is replicated to the group (f; sequence
    /// parallel: all-gathered from its token shards), the output's partial sums are all-reduced (g; sequence parallel:
    /// reduce-scattered to token shards).</summary>
    Block,
    /// <summary>Column-parallel in, output left split by vocabulary for the vocabulary-parallel loss (the LM head).</summary>
    Head,
    /// <summary>A vocabulary-parallel lookup whose partial rows are summed on the way out (the token embedding).</summary>
    Embedding,
}

/// <summary>One parameter's tensor-parallel rule: its placement, and whether each holder's gradient is only its share
/// (summed over the holders after backward: a replicated key/value head read by several ranks' query heads, a norm
/// weight under sequence parallelism that each rank applies to its own tokens).</summary>
public readonly record struct TensorParameter(Placement Placement, bool PartialGradient = false);

/// <summary>A model's tensor-parallel plan as data (TorchTitan's parallelize plan): the rule of each parameter by name and
/// whole shape, and the style of each module boundary by name.</summary>
public sealed record TensorParallelRules(Func<string, int[], TensorParameter> Parameter, Func<string, ModuleStyle> Module);
