using Engine.Cuda.Kernels;

namespace Engine.Cuda.Tests.Reference;

/// <summary>
/// The index arithmetic of native/attention_v2.cu, copied expression for expression (each member names its source),
/// so the CPU tests can enumerate which (query, key) pairs every tile computes and run the ordered-dQ protocol.
/// </summary>
public static class V2Plan
{
    private static long CeilDiv(long a, long b) => (a + b - 1) / b;

    /// <summary>attention_v2_forward: n_blocks = ceil_div(causal ? min(T, m0 + BM) : T, BN).</summary>
    public static long FwdKeyTiles(long m0, long T, bool causal, int bm, int bn) => CeilDiv(causal ? Math.Min(T, m0 + bm) : T, bn);

    /// <summary>attention_v2_forward: a (key tile n0, query tile m0) pair takes the masked path when
    /// n0 + BN &gt; T || (causal &amp;&amp; n0 + BN - 1 &gt; m0) (rows past T are computed but never stored).</summary>
    public static bool Masked(long n0, int bn, long m0, long T, bool causal) => n0 + bn > T || (causal && n0 + bn - 1 > m0);

    /// <summary>attention_v2_backward: n0 + BN &gt; T || m0 + BM &gt; T || (causal &amp;&amp; n0 + BN - 1 &gt; m0) — a
    /// partial query tile is masked too, so its rows past T contribute nothing whatever their zero-filled Q/dO hold.</summary>
    public static bool BwdTileMasked(long n0, int bn, long m0, int bm, long T, bool causal) => n0 + bn > T || m0 + bm > T || (causal && n0 + bn - 1 > m0);

    /// <summary>fwd_tile, masked path: key n0 + c is kept for a row when c &lt; lim.</summary>
    public static int FwdLimit(long n0, long row, long T, bool causal, int bn)
    {
        long l = Math.Min(T - n0, bn);
        if (causal) l = Math.Min(l, row - n0 + 1);
        return (int)Math.Max(l, 0);
    }

    /// <summary>bwd_tile, masked path, for key n0 + keyInTile (warp keyInTile / 16) and query m0 + queryInTile:
    /// kr &gt;= key_lim || qc &gt;= q_lim || (causal &amp;&amp; kr + key_shift &gt; qc).</summary>
    public static bool BwdMasked(long keyInTile, long queryInTile, long n0, long m0, int bm, long T, bool causal)
    {
        long key0 = n0 + keyInTile / 16 * 16;
        int kr = (int)(keyInTile % 16);
        int keyLim = (int)Math.Min(Math.Max(T - key0, 0), 16);
        int keyShift = (int)Math.Max(Math.Min(key0 - m0, 1 << 20), -(1 << 20));
        int qLim = (int)Math.Min(T - m0, bm);
        return kr >= keyLim || queryInTile >= qLim || (causal && kr + keyShift > queryInTile);
    }

    /// <summary>attention_v2_backward: m_begin = causal ? n0 / BM : 0.</summary>
    public static long BwdQueryBegin(long n0, int bm, bool causal) => causal ? n0 / bm : 0;

    /// <summary>attention_v2_backward: n_last = causal ? ceil_div(min(T, m0 + BM), BN) - 1 : n_tiles - 1.</summary>
    public static long BwdLastContributor(long m0, long T, int bm, int bn, bool causal, long nTiles) =>
        causal ? CeilDiv(Math.Min(T, m0 + bm), bn) - 1 : nTiles - 1;

    /// <summary>load_tile_async: the (row, column) of every 16-byte chunk each thread copies.</summary>
    public static IEnumerable<(int Row, int Col)> LoaderChunks(int d, int rows, int threads)
    {
        int kChunks = d / 8, tpr = threads % kChunks == 0 ? kChunks : 4, cpt = kChunks / tpr, rpp = threads / tpr;
        if (kChunks % tpr != 0 || rows % rpp != 0) throw new InvalidOperationException($"d{d}: {rows} rows do not split over {threads} threads");
        for (int tid = 0; tid < threads; tid++)
        {
            int r0 = tid / tpr, c0 = tid % tpr * 8;
            for (int pass = 0; pass < rows / rpp; pass++)
                for (int k = 0; k < cpt; k++) yield return (r0 + pass * rpp, c0 + k * tpr * 8);
        }
    }

    private sealed class Block(long n, long b, long hk, long steps)
    {
        public long N = n, B = b, Hk = hk, Steps = steps, Step;
    }

    /// <summary>
    /// Runs the backward's dQ protocol with at most <paramref name="resident"/> blocks at a time, started in ticket
    /// order and advanced in random order: a block's step (query head gi, query tile m from the last) may add its dQ
    /// partial only when the flag of (b, h, m) equals its key tile n; it then sets the flag to n + 1 unless it is the
    /// last contributor. Returns, per (b, h, m), the key tiles in the order they added. Throws on deadlock.
    /// </summary>
    public static Dictionary<(long B, long H, long M), List<long>> RunDqProtocol(AttentionShape s, bool causal, AttnSchedule sched, int resident, Random rng)
    {
        int bn = KernelTraits.AttnV2BwdBlockN(s.HeadDim), bm = KernelTraits.AttnV2BwdBlockM(s.HeadDim);
        long T = s.SeqLen, group = s.Heads / s.KvHeads, nTiles = CeilDiv(T, bn), mTiles = CeilDiv(T, bm);
        var flags = new Dictionary<(long, long, long), long>();
        var order = new Dictionary<(long B, long H, long M), List<long>>();
        long next = 0, total = AttentionSchedule.Tiles(sched);
        var running = new List<Block>();
        (long H, long M) At(Block blk)
        {
            long perHead = mTiles - BwdQueryBegin(blk.N * bn, bm, causal);
            return (blk.Hk * group + blk.Step / perHead, mTiles - 1 - blk.Step % perHead);
        }
        while (true)
        {
            while (running.Count < resident && next < total)
            {
                var (n, head) = AttentionSchedule.TileAt(sched, next++);
                long b = head / s.KvHeads, hk = head % s.KvHeads;
                running.Add(new Block(n, b, hk, group * (mTiles - BwdQueryBegin(n * bn, bm, causal))));
            }
            if (running.Count == 0) return order;
            var ready = running.Where(blk =>
            {
                var (h, m) = At(blk);
                return blk.N == 0 || flags.GetValueOrDefault((blk.B, h, m)) == blk.N;
            }).ToList();
            if (ready.Count == 0)
                throw new InvalidOperationException($"deadlock: {running.Count} resident blocks all wait (next ticket {next} of {total})");
            var pick = ready[rng.Next(ready.Count)];
            var (hh, mm) = At(pick);
            if (!order.TryGetValue((pick.B, hh, mm), out var list)) order[(pick.B, hh, mm)] = list = new();
            list.Add(pick.N);
            if (pick.N < BwdLastContributor(mm * bm, T, bm, bn, causal, nTiles)) flags[(pick.B, hh, mm)] = pick.N + 1;
            if (++pick.Step == pick.Steps) running.Remove(pick);
        }
    }
}
