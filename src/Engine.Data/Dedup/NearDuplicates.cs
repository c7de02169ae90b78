namespace Engine.Data.Dedup;

/// <summary>
/// The pieces of MinHash-LSH dedup shared by the in-memory <see cref="Deduplicator"/> and engine prepare's staged,
/// multi-rank form: band keys of a signature, candidate pairs from one band bucket (documents sharing a band key, in
/// id order) checked against the threshold on the full signatures, and union-find clusters that keep their smallest id
/// (the earliest document). The two stages of XuanYuan-70B: <see cref="Stage.Local"/> pairs documents of the same
/// source only; <see cref="Stage.Global"/> pairs survivors of different sources only.
/// </summary>
public static class NearDuplicates
{
    /// <summary>Which pairs a stage links: same source, different sources, or any (one stage only).</summary>
    public enum Stage { Local, Global, All }

    /// <summary>Earlier members a member is checked against when the bucket's first fails the threshold.</summary>
    public const int PreviousChecked = 4;

    /// <summary>FNV-1a 64 over each band's <paramref name="rows"/> values.</summary>
    public static void BandKeys(ReadOnlySpan<uint> sig, int bands, int rows, Span<ulong> keys)
    {
        if (sig.Length != bands * rows) throw new ArgumentException($"signature has {sig.Length} values, expected bands·rows = {bands * rows}");
        for (int b = 0; b < bands; b++)
        {
            ulong h = 0xCBF29CE484222325UL ^ (ulong)b;
            for (int r = 0; r < rows; r++) h = (h ^ sig[b * rows + r]) * 0x100000001B3UL;
            keys[b] = h;
        }
    }

    /// <summary>
    /// Candidate pairs of one bucket: <paramref name="members"/> (ids in increasing order) all share a band key. Each
    /// member is checked against the first eligible member, then against up to <see cref="PreviousChecked"/> earlier
    /// eligible ones, and linked to the first that reaches the threshold (<paramref name="similar"/>). Eligible: same
    /// source (local stage) or another source (global stage).
    /// </summary>
    public static void BucketPairs(ReadOnlySpan<ulong> members, Func<ulong, int> sourceOf, Stage stage, Func<ulong, ulong, bool> similar, Action<ulong, ulong> pair)
    {
        for (int j = 1; j < members.Length; j++)
        {
            ulong m = members[j];
            int sm = sourceOf(m);
            bool Eligible(ulong o) => stage switch { Stage.Local => sourceOf(o) == sm, Stage.Global => sourceOf(o) != sm, _ => true };
            int first = -1;
            for (int i = 0; i < j; i++) if (Eligible(members[i])) { first = i; break; }
            if (first < 0) continue;
            if (similar(members[first], m)) { pair(members[first], m); continue; }
            int tried = 0;
            for (int i = j - 1; i > first && tried < PreviousChecked; i--)
            {
                if (!Eligible(members[i])) continue;
                tried++;
                if (similar(members[i], m)) { pair(members[i], m); break; }
            }
        }
    }
}

/// <summary>Union-find over document ids; every cluster's root is its smallest id (the one kept).</summary>
public sealed class UnionFind
{
    readonly Dictionary<ulong, ulong> _parent = [];

    public ulong Find(ulong x)
    {
        ulong root = x;
        while (_parent.TryGetValue(root, out var p) && p != root) root = p;
        while (x != root)   // path compression, iteratively: chains can be long when ever smaller roots arrive
        {
            ulong next = _parent[x];
            _parent[x] = root;
            x = next;
        }
        return root;
    }

    public void Union(ulong a, ulong b)
    {
        ulong ra = Find(a), rb = Find(b);
        _parent.TryAdd(a, a);
        _parent.TryAdd(b, b);
        if (ra == rb) return;
        if (ra < rb) _parent[rb] = ra; else _parent[ra] = rb;
    }

    /// <summary>Every id in a cluster with its root, in id order.</summary>
    public IEnumerable<(ulong Id, ulong Root)> Members() => _parent.Keys.Order().Select(x => (x, Find(x)));
}
