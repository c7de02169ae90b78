using System.Text;

namespace Engine.Data.Tokenization;

/// <summary>
/// Incremental BPE merge learning over counted pieces. Ids 0..255 are bytes; merge k creates id 256 + k.
/// Data: each distinct piece as a symbol array with its count; pair → total count; pair → pieces it occurs in
/// (append-only, stale entries tolerated); a max-heap of (count, pair) with lazy invalidation. A merge rewrites only
/// the pieces listed for its pair and applies the count changes as one delta, so the cost per merge is proportional
/// to the pieces it touches, not to the corpus.
/// </summary>
internal static class BpeTrainer
{
    static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    public static List<(int A, int B)> Learn(Dictionary<string, long> pieceCounts, int maxMerges, int minFrequency, int maxTokenBytes)
    {
        int nw = pieceCounts.Count;
        var words = new int[nw][];
        var counts = new long[nw];
        int wi = 0;
        // Sorted for a result independent of dictionary order.
        foreach (var (piece, c) in pieceCounts.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var bytes = Encoding.UTF8.GetBytes(piece);
            var sym = new int[bytes.Length];
            for (int i = 0; i < bytes.Length; i++) sym[i] = bytes[i];
            words[wi] = sym;
            counts[wi++] = c;
        }
        var tokenLen = new List<int>(256 + maxMerges);
        for (int i = 0; i < 256; i++) tokenLen.Add(1);

        var pairCount = new Dictionary<long, long>();
        var pairWords = new Dictionary<long, List<int>>();
        for (int w = 0; w < nw; w++)
        {
            var s = words[w];
            for (int i = 0; i + 1 < s.Length; i++)
            {
                long k = Key(s[i], s[i + 1]);
                pairCount[k] = pairCount.GetValueOrDefault(k) + counts[w];
                if (!pairWords.TryGetValue(k, out var list)) pairWords[k] = list = [];
                if (list.Count == 0 || list[^1] != w) list.Add(w);
            }
        }
        var heap = new PriorityQueue<long, (long Count, long Key)>(Comparer<(long Count, long Key)>.Create(
            (x, y) => x.Count != y.Count ? y.Count.CompareTo(x.Count) : x.Key.CompareTo(y.Key)));
        foreach (var (k, c) in pairCount) if (c >= minFrequency) heap.Enqueue(k, (c, k));

        var merges = new List<(int, int)>(maxMerges);
        var stamp = new int[nw];
        Array.Fill(stamp, -1);
        var delta = new Dictionary<long, long>();
        var newPairWords = new Dictionary<long, List<int>>();
        var buffer = new List<int>();
        while (merges.Count < maxMerges && heap.TryDequeue(out long pair, out var prio))
        {
            long current = pairCount.GetValueOrDefault(pair);
            if (current != prio.Count)
            {
                if (current >= minFrequency) heap.Enqueue(pair, (current, pair));
                continue;
            }
            int a = (int)(pair >> 32), b = (int)(uint)pair;
            if (tokenLen[a] + tokenLen[b] > maxTokenBytes) { pairCount.Remove(pair); continue; }
            int id = 256 + merges.Count;
            merges.Add((a, b));
            tokenLen.Add(tokenLen[a] + tokenLen[b]);
            delta.Clear();
            newPairWords.Clear();
            int mergeIndex = merges.Count;
            foreach (int w in pairWords[pair])
            {
                if (stamp[w] == mergeIndex) continue;
                stamp[w] = mergeIndex;
                var s = words[w];
                bool has = false;
                for (int i = 0; i + 1 < s.Length; i++) if (s[i] == a && s[i + 1] == b) { has = true; break; }
                if (!has) continue;
                long c = counts[w];
                for (int i = 0; i + 1 < s.Length; i++) { long k = Key(s[i], s[i + 1]); delta[k] = delta.GetValueOrDefault(k) - c; }
                buffer.Clear();
                for (int i = 0; i < s.Length;)
                {
                    if (i + 1 < s.Length && s[i] == a && s[i + 1] == b) { buffer.Add(id); i += 2; }
                    else buffer.Add(s[i++]);
                }
                s = words[w] = buffer.ToArray();
                for (int i = 0; i + 1 < s.Length; i++)
                {
                    long k = Key(s[i], s[i + 1]);
                    delta[k] = delta.GetValueOrDefault(k) + c;
                    if (s[i] == id || s[i + 1] == id)
                    {
                        if (!newPairWords.TryGetValue(k, out var l)) newPairWords[k] = l = [];
                        if (l.Count == 0 || l[^1] != w) l.Add(w);
                    }
                }
            }
            pairCount.Remove(pair);
            pairWords.Remove(pair);
            foreach (var (k, d) in delta)
            {
                if (d == 0 || k == pair) continue;
                long nc = pairCount.GetValueOrDefault(k) + d;
                if (nc <= 0) { pairCount.Remove(k); pairWords.Remove(k); continue; }
                pairCount[k] = nc;
                if (d > 0 && nc >= minFrequency) heap.Enqueue(k, (nc, k));
            }
            foreach (var (k, l) in newPairWords)
            {
                if (!pairWords.TryGetValue(k, out var list)) pairWords[k] = list = [];
                list.AddRange(l);
            }
        }
        return merges;
    }
}
