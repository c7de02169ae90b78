using Engine.Core.Distributed;

namespace Engine.Training.Run;

/// <summary>
/// What one optimizer step's micro-batches report beside the loss, as named (sum, count) pairs: the language-model
/// loss per data source (Σ token losses, scored tokens), the alignment losses' accuracy (right, pairs), margin or clip
/// fraction (Σ, tokens). The loop reduces the loss and every pair across ranks in one collective, in the order of the
/// loss's account names (every rank has the same list), so the means are those of one process on the global batch.
/// The one place where per-source losses are summed; on a GPU it is the place to keep them device-resident.
/// </summary>
public sealed class LossAccounting
{
    readonly Dictionary<string, (double Sum, long Count)> sums = new(StringComparer.Ordinal);

    public void Add(string name, double sum, long count)
    {
        var acc = sums.GetValueOrDefault(name);
        sums[name] = (acc.Sum + sum, acc.Count + count);
    }

    /// <summary>Per row of a [rows × T] micro-batch: the row's source gets its scored tokens' losses (targets -100 and
    /// below are not scored).</summary>
    public void AddRows(ReadOnlySpan<float> tokenLosses, int[] targets, string[] rowSources)
    {
        int rows = rowSources.Length, T = targets.Length / rows;
        for (int r = 0; r < rows; r++)
        {
            double sum = 0;
            long count = 0;
            for (int t = 0; t < T; t++)
                if (targets[r * T + t] >= 0) { sum += tokenLosses[r * T + t]; count++; }
            Add(rowSources[r], sum, count);
        }
    }

    public void Clear() => sums.Clear();

    /// <summary>Sums <paramref name="loss"/> and every account over <paramref name="comm"/> in one all-reduce, in the
    /// order of <paramref name="names"/>; returns the global loss. An account not in the list is a programming error.</summary>
    public double Reduce(ICommunicator comm, double loss, IReadOnlyList<string> names)
    {
        foreach (var name in sums.Keys)
            if (!names.Contains(name))
                throw new InvalidOperationException($"a micro-batch reported '{name}', which its loss does not list ({string.Join(", ", names)})");
        var v = new double[1 + 2 * names.Count];
        v[0] = loss;
        for (int k = 0; k < names.Count; k++)
        {
            var acc = sums.GetValueOrDefault(names[k]);
            v[1 + 2 * k] = acc.Sum;
            v[2 + 2 * k] = acc.Count;
        }
        comm.AllReduce(v);
        sums.Clear();
        for (int k = 0; k < names.Count; k++) sums[names[k]] = (v[1 + 2 * k], (long)v[2 + 2 * k]);
        return v[0];
    }

    /// <summary>Sum ÷ count of every account that counted something.</summary>
    public Dictionary<string, double> Means() =>
        sums.Where(kv => kv.Value.Count > 0).ToDictionary(kv => kv.Key, kv => kv.Value.Sum / kv.Value.Count, StringComparer.Ordinal);
}
