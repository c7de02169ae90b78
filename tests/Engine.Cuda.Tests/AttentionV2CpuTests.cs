using System.Text.RegularExpressions;
using Engine.Cuda.Kernels;
using Engine.Cuda.Tests.Reference;
using static Engine.Cuda.Tests.Reference.WarpEmulator;

namespace Engine.Cuda.Tests;

/// <summary>
/// native/attention_v2.cu checked on the CPU (it has not run on a GPU yet): the lane/fragment plumbing through a PTX-level
/// warp model (<see cref="WarpEmulator"/>), bank conflicts of every ldmatrix pattern, the cp.async loader's coverage,
/// the tile order, which tiles mask and which pairs each tile computes, and the ordered dQ protocol (deadlock-free,
/// fixed summation order) under random block scheduling. The kernel expressions are mirrored in <see cref="V2Plan"/>.
/// </summary>
public class AttentionV2CpuTests
{
    public static TheoryData<int> HeadDims => [.. KernelTraits.AttnV2HeadDims];

    private static int Rs(int d) => d + KernelTraits.AttnPad;

    private static float[] Tile(Random rng, int rows, int cols, int pitch)
    {
        var t = new float[rows * pitch];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) t[r * pitch + c] = rng.Next(-2, 3);
        return t;
    }

    [Theory]
    [MemberData(nameof(HeadDims))]
    public void ForwardWarpComputesQKtAndPV(int d)
    {
        int bn = KernelTraits.AttnV2FwdBlockN(d), rs = Rs(d);
        var rng = new Random(d);
        float[] q = Tile(rng, 32, d, rs), k = Tile(rng, bn, d, rs), v = Tile(rng, bn, d, rs);   // one warp's 32 query rows
        // S = Q K^T, as fwd_tile: per k-step, A of both m-tiles by ldsm_a, B of two n-tiles by ldsm_b_nk_x2
        var s = new float[2][][][];
        for (int mt = 0; mt < 2; mt++) s[mt] = Enumerable.Range(0, bn / 8).Select(_ => Zeros()).ToArray();
        for (int kk = 0; kk < d / 16; kk++)
        {
            var qa = new[] { Ldsm(q, l => LdsmA(rs, 0, kk * 16, l), false), Ldsm(q, l => LdsmA(rs, 16, kk * 16, l), false) };
            for (int nt2 = 0; nt2 < bn / 16; nt2++)
            {
                var kb = Ldsm(k, l => LdsmBNk(rs, nt2 * 16, kk * 16, l), false);
                for (int mt = 0; mt < 2; mt++)
                {
                    Mma(s[mt][2 * nt2], qa[mt], l => kb[l][0], l => kb[l][1]);
                    Mma(s[mt][2 * nt2 + 1], qa[mt], l => kb[l][2], l => kb[l][3]);
                }
            }
        }
        for (int mt = 0; mt < 2; mt++)
            for (int nt = 0; nt < bn / 8; nt++)
                for (int l = 0; l < 32; l++)
                    for (int e = 0; e < 4; e++)
                    {
                        int row = mt * 16 + l / 4 + (e >> 1) * 8, key = nt * 8 + 2 * (l % 4) + (e & 1);
                        float want = 0;
                        for (int c = 0; c < d; c++) want += q[row * rs + c] * k[key * rs + c];
                        Assert.Equal(want, s[mt][nt][l][e]);
                    }
        // O = P V with P = S straight from the C registers (c_to_a), V by ldmatrix.trans (load_b_frag_kn_x2)
        for (int mt = 0; mt < 2; mt++)
        {
            var acc = Enumerable.Range(0, d / 8).Select(_ => Zeros()).ToArray();
            for (int kt = 0; kt < bn / 16; kt++)
            {
                var pa = CToA(s[mt], kt);
                for (int dt2 = 0; dt2 < d / 16; dt2++)
                {
                    var vb = Ldsm(v, l => LoadBKn(rs, kt * 16, dt2 * 16, l), true);
                    Mma(acc[2 * dt2], pa, l => vb[l][0], l => vb[l][1]);
                    Mma(acc[2 * dt2 + 1], pa, l => vb[l][2], l => vb[l][3]);
                }
            }
            for (int dt = 0; dt < d / 8; dt++)
                for (int l = 0; l < 32; l++)
                    for (int e = 0; e < 4; e++)
                    {
                        int row = mt * 16 + l / 4 + (e >> 1) * 8, col = dt * 8 + 2 * (l % 4) + (e & 1);
                        float want = 0;
                        for (int key = 0; key < bn; key++)
                        {
                            float sv = 0;
                            for (int c = 0; c < d; c++) sv += q[row * rs + c] * k[key * rs + c];
                            want += sv * v[key * rs + col];
                        }
                        Assert.Equal(want, acc[dt][l][e]);
                    }
        }
    }

    [Theory]
    [MemberData(nameof(HeadDims))]
    public void BackwardWarpsComputeStDvAndDqThroughTheDsTile(int d)
    {
        int bn = KernelTraits.AttnV2BwdBlockN(d), bm = KernelTraits.AttnV2BwdBlockM(d), warps = KernelTraits.AttnV2BwdWarps(d);
        int rs = Rs(d), dsr = bm + KernelTraits.AttnPad, wmCount = bm / 16, dqc = d / (warps / wmCount);
        var rng = new Random(100 + d);
        float[] k = Tile(rng, bn, d, rs), q = Tile(rng, bm, d, rs), dO = Tile(rng, bm, d, rs);
        float St(int key, int query) { float s = 0; for (int c = 0; c < d; c++) s += k[key * rs + c] * q[query * rs + c]; return s; }
        var sdS = new float[bn * dsr];
        for (int warp = 0; warp < warps; warp++)
        {
            // S^T (16 keys x BM queries) = K Q^T: A = K rows by ldsm_a, B = Q rows by ldsm_b_nk_x2
            var st = Enumerable.Range(0, bm / 8).Select(_ => Zeros()).ToArray();
            for (int kk = 0; kk < d / 16; kk++)
            {
                var ka = Ldsm(k, l => LdsmA(rs, warp * 16, kk * 16, l), false);
                for (int nt2 = 0; nt2 < bm / 16; nt2++)
                {
                    var qb = Ldsm(q, l => LdsmBNk(rs, nt2 * 16, kk * 16, l), false);
                    Mma(st[2 * nt2], ka, l => qb[l][0], l => qb[l][1]);
                    Mma(st[2 * nt2 + 1], ka, l => qb[l][2], l => qb[l][3]);
                }
            }
            for (int nt = 0; nt < bm / 8; nt++)
                for (int l = 0; l < 32; l++)
                    for (int e = 0; e < 4; e++)
                        Assert.Equal(St(warp * 16 + l / 4 + (e >> 1) * 8, nt * 8 + 2 * (l % 4) + (e & 1)), st[nt][l][e]);
            // dV += P^T dO (P^T = S^T here) and the dS^T store of bwd_tile (four 32-bit stores per k-step)
            var dv = Enumerable.Range(0, d / 8).Select(_ => Zeros()).ToArray();
            for (int kt = 0; kt < bm / 16; kt++)
            {
                var pa = CToA(st, kt);
                for (int l = 0; l < 32; l++)
                {
                    int row0 = (warp * 16 + l / 4) * dsr + kt * 16 + (l % 4) * 2;
                    void Put(int at, Reg r) { sdS[at] = r.Lo; sdS[at + 1] = r.Hi; }
                    Put(row0, pa[l][0]); Put(row0 + 8 * dsr, pa[l][1]); Put(row0 + 8, pa[l][2]); Put(row0 + 8 * dsr + 8, pa[l][3]);
                }
                for (int dt2 = 0; dt2 < d / 16; dt2++)
                {
                    var ob = Ldsm(dO, l => LoadBKn(rs, kt * 16, dt2 * 16, l), true);
                    Mma(dv[2 * dt2], pa, l => ob[l][0], l => ob[l][1]);
                    Mma(dv[2 * dt2 + 1], pa, l => ob[l][2], l => ob[l][3]);
                }
            }
            for (int dt = 0; dt < d / 8; dt++)
                for (int l = 0; l < 32; l++)
                    for (int e = 0; e < 4; e++)
                    {
                        int key = warp * 16 + l / 4 + (e >> 1) * 8, col = dt * 8 + 2 * (l % 4) + (e & 1);
                        float want = 0;
                        for (int i = 0; i < bm; i++) want += St(key, i) * dO[i * rs + col];
                        Assert.Equal(want, dv[dt][l][e]);
                    }
        }
        for (int key = 0; key < bn; key++)
            for (int i = 0; i < bm; i++) Assert.Equal(St(key, i), sdS[key * dsr + i]);
        // dQ (BM x D) = dS K: warp (wm, wd) takes 16 rows x DQC columns; A = dS by ldsm_a_trans of dS^T, B = K by .trans
        for (int warp = 0; warp < warps; warp++)
        {
            int wm = warp % wmCount, wd = warp / wmCount;
            var dq = Enumerable.Range(0, dqc / 8).Select(_ => Zeros()).ToArray();
            for (int kt = 0; kt < bn / 16; kt++)
            {
                var a = Ldsm(sdS, l => LdsmATrans(dsr, wm * 16, kt * 16, l), true);
                for (int dt2 = 0; dt2 < dqc / 16; dt2++)
                {
                    var kb = Ldsm(k, l => LoadBKn(rs, kt * 16, wd * dqc + dt2 * 16, l), true);
                    Mma(dq[2 * dt2], a, l => kb[l][0], l => kb[l][1]);
                    Mma(dq[2 * dt2 + 1], a, l => kb[l][2], l => kb[l][3]);
                }
            }
            for (int dt = 0; dt < dqc / 8; dt++)
                for (int l = 0; l < 32; l++)
                    for (int e = 0; e < 4; e++)
                    {
                        int row = wm * 16 + l / 4 + (e >> 1) * 8, col = wd * dqc + dt * 8 + 2 * (l % 4) + (e & 1);
                        float want = 0;
                        for (int key = 0; key < bn; key++) want += St(key, row) * k[key * rs + col];
                        Assert.Equal(want, dq[dt][l][e]);
                    }
        }
    }

    [Fact]
    public void EmulatedAddressExpressionsAreTheNativeOnes()
    {
        string root = Repo.Root() ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
        string mma = File.ReadAllText(Path.Combine(root, "native", "common", "mma.cuh"));
        Assert.Contains("ldsm_x4(a, tile + (r0 + (lane & 15)) * pitch + c0 + (lane >> 4) * 8);", mma);                          // LdsmA
        Assert.Contains("ldsm_x4(r, tile + (r0 + (lane & 7) + ((lane >> 4) << 3)) * pitch + c0 + ((lane >> 3) & 1) * 8);", mma);  // LdsmBNk
        Assert.Contains("ldsm_x4_trans(a, tile + (k0 + (lane & 7) + ((lane >> 4) << 3)) * pitch + m0 + ((lane >> 3) & 1) * 8);", mma); // LdsmATrans
        Assert.Contains("const bf16* p = tile + (k0 + (lane & 15)) * pitch + n0 + (lane >> 4) * 8;", mma);                       // LoadBKn
        string v2 = File.ReadAllText(Path.Combine(root, "native", "attention_v2.cu"));
        Assert.Contains("constexpr int TPR = NT % kChunks == 0 ? kChunks : 4;", v2);                                              // LoaderChunks
        Assert.Contains("const int64_t n_blocks = ceil_div(causal ? min(T, m0 + BM) : T, BN);", v2);                              // FwdKeyTiles
        Assert.Contains("if (n0 + BN > T || (causal && n0 + BN - 1 > m0))", v2);                                                   // Masked
        Assert.Contains("if (n0 + BN > T || m0 + BM > T || (causal && n0 + BN - 1 > m0))", v2);                                    // BwdTileMasked
        Assert.Contains("const int q_lim = (int)min(T - m0, (int64_t)BM);", v2);                                                   // BwdMasked
        Assert.Contains("const int64_t m_begin = causal ? n0 / BM : 0;", v2);                                                      // BwdQueryBegin
        Assert.Contains("const int64_t n_last = causal ? ceil_div(min(T, m0 + BM), BN) - 1 : n_tiles - 1;", v2);                  // BwdLastContributor
        Assert.Contains("if (kr >= key_lim || qc >= q_lim || (causal && kr + key_shift > qc)) pv = 0.f;", v2);                     // BwdMasked
        Assert.Contains("return AttnTile{s.descending ? s.blocks - 1 - step : step, first + r % size};", v2);                     // TileAt
    }

    [Theory]
    [MemberData(nameof(HeadDims))]
    public void EveryLdmatrixPatternIsBankConflictFree(int d)
    {
        int rs = Rs(d), dsr = KernelTraits.AttnV2BwdBlockM(d) + KernelTraits.AttnPad;
        for (int r0 = 0; r0 < 64; r0 += 16)
            for (int c0 = 0; c0 < d; c0 += 16)
            {
                Assert.True(ConflictFree(l => LdsmA(rs, r0, c0, l)), $"ldsm_a pitch {rs} ({r0}, {c0})");
                Assert.True(ConflictFree(l => LdsmBNk(rs, r0, c0, l)), $"ldsm_b_nk_x2 pitch {rs}");
                Assert.True(ConflictFree(l => LoadBKn(rs, r0, c0, l)), $"load_b_frag_kn_x2 pitch {rs}");
            }
        for (int k0 = 0; k0 < KernelTraits.AttnV2BwdBlockN(d); k0 += 16)
            for (int m0 = 0; m0 < KernelTraits.AttnV2BwdBlockM(d); m0 += 16)
                Assert.True(ConflictFree(l => LdsmATrans(dsr, m0, k0, l)), $"ldsm_a_trans pitch {dsr}");
        // the unpadded pitch would conflict: the padding is what makes these pass
        Assert.False(ConflictFree(l => LdsmA(d, 0, 0, l)));
    }

    [Theory]
    [MemberData(nameof(HeadDims))]
    public void TileLoaderWritesEveryChunkOnce(int d)
    {
        foreach (var (rows, threads) in new[] { (KernelTraits.AttnV2FwdBlockM, KernelTraits.AttnV2FwdThreads),
                     (KernelTraits.AttnV2FwdBlockN(d), KernelTraits.AttnV2FwdThreads),
                     (KernelTraits.AttnV2BwdBlockN(d), KernelTraits.AttnV2BwdThreads(d)),
                     (KernelTraits.AttnV2BwdBlockM(d), KernelTraits.AttnV2BwdThreads(d)) })
        {
            var hits = V2Plan.LoaderChunks(d, rows, threads).GroupBy(x => x).ToDictionary(x => x.Key, x => x.Count());
            Assert.Equal(rows * d / 8, hits.Count);
            Assert.All(hits.Values, n => Assert.Equal(1, n));
            Assert.All(hits.Keys, x => Assert.True(x.Row < rows && x.Col < d && x.Col % 8 == 0));
        }
    }

    [Theory]
    [InlineData(8, 5, 1, false)]
    [InlineData(8, 5, 2, true)]
    [InlineData(8, 7, 3, true)]     // last group smaller
    [InlineData(1, 9, 4, true)]
    [InlineData(16, 64, 64, false)]
    [InlineData(3, 1, 1, true)]
    public void ScheduleVisitsEveryTileOnceGroupByGroupHeaviestFirst(int blocks, int heads, int group, bool descending)
    {
        var s = new AttnSchedule { Blocks = blocks, Heads = heads, Group = group, Descending = descending ? 1 : 0 };
        var tiles = Enumerable.Range(0, (int)AttentionSchedule.Tiles(s)).Select(t => AttentionSchedule.TileAt(s, t)).ToList();
        Assert.Equal(blocks * heads, tiles.Distinct().Count());
        Assert.All(tiles, t => Assert.True(t.Block >= 0 && t.Block < blocks && t.Head >= 0 && t.Head < heads));
        for (int t = 1; t < tiles.Count; t++)
        {
            var (prev, cur) = (tiles[t - 1], tiles[t]);
            if (prev.Head / group != cur.Head / group)
            {
                Assert.True(cur.Head / group > prev.Head / group);   // groups in order, each finished before the next
                continue;
            }
            // inside a group: blocks move one step at a time, heaviest (last) first when descending
            Assert.True(descending ? cur.Block <= prev.Block : cur.Block >= prev.Block);
        }
        if (descending) Assert.Equal(blocks - 1, tiles[0].Block);
    }

    [Fact]
    public void ScheduleGroupsFollowTheL2Budget()
    {
        const long l2 = 50L << 20;   // H100
        var fwd = AttentionSchedule.Forward(new AttentionShape(2, 8192, 32, 8, 128), causal: true, l2);
        Assert.Equal(64, fwd.Blocks);
        Assert.Equal(64, fwd.Heads);
        Assert.Equal(1, fwd.Descending);
        Assert.Equal((int)(l2 * AttentionSchedule.L2Share / (4.0 * 8192 * 128 / 4)), fwd.Group);   // K/V shared by 4 query heads
        var small = AttentionSchedule.Forward(new AttentionShape(1, 128, 2, 2, 64), causal: false, l2);
        Assert.Equal(2, small.Group);   // clamped to the heads there are
        Assert.Equal(0, small.Descending);
        var bwd = AttentionSchedule.Backward(new AttentionShape(2, 8192, 32, 8, 128), l2);
        Assert.Equal(8192 / KernelTraits.AttnV2BwdBlockN(128), bwd.Blocks);
        Assert.Equal(16, bwd.Heads);
        Assert.Equal(0, bwd.Descending);
        Assert.Equal(1, bwd.Group);   // 8*T*D*4 = 32 MiB per kv head: floor(25 MiB / 32 MiB) = 0, clamped to 1
    }

    public static TheoryData<int, int, bool> MaskCases()
    {
        var data = new TheoryData<int, int, bool>();
        foreach (int d in KernelTraits.AttnV2HeadDims)
            foreach (int t in new[] { 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 200, 257, 300 })
                foreach (bool causal in new[] { true, false })
                    data.Add(d, t, causal);
        return data;
    }

    [Theory]
    [MemberData(nameof(MaskCases))]
    public void ForwardTilesComputeExactlyTheUnmaskedPairs(int d, int T, bool causal)
    {
        int bm = KernelTraits.AttnV2FwdBlockM, bn = KernelTraits.AttnV2FwdBlockN(d);
        for (long m0 = 0; m0 < T; m0 += bm)
        {
            long nBlocks = V2Plan.FwdKeyTiles(m0, T, causal, bm, bn);
            for (long i = m0; i < Math.Min(T, m0 + bm); i++)
                for (long j = 0; j < T; j++)
                {
                    long n0 = j / bn * bn;
                    bool computed = j / bn < nBlocks && (!V2Plan.Masked(n0, bn, m0, T, causal) || j - n0 < V2Plan.FwdLimit(n0, i, T, causal, bn));
                    Assert.True(computed == (!causal || j <= i), $"T={T} causal={causal}: query {i}, key {j}");
                }
            // keys past T inside a computed tile are masked (they are zero-filled, not absent)
            for (long n0 = 0; n0 < nBlocks * bn; n0 += bn)
                if (n0 + bn > T) Assert.True(V2Plan.Masked(n0, bn, m0, T, causal));
        }
    }

    [Theory]
    [MemberData(nameof(MaskCases))]
    public void BackwardTilesComputeExactlyTheUnmaskedPairsAndDqContributorsAreAPrefix(int d, int T, bool causal)
    {
        int bn = KernelTraits.AttnV2BwdBlockN(d), bm = KernelTraits.AttnV2BwdBlockM(d);
        long nTiles = (T + bn - 1) / bn, mTiles = (T + bm - 1) / bm;
        var contributors = new List<long>[mTiles];
        for (int m = 0; m < mTiles; m++) contributors[m] = new();
        for (long n = 0; n < nTiles; n++)
        {
            long n0 = n * bn, mBegin = V2Plan.BwdQueryBegin(n0, bm, causal);
            for (long m = mBegin; m < mTiles; m++) contributors[m].Add(n);
            // every query row of every query tile, the rows past T of the last (partial) tile included: those
            // must contribute nothing (masked), not rely on their zero-filled Q, dO, lse and delta
            for (long j = n0; j < Math.Min(T, n0 + bn); j++)
                for (long i = 0; i < mTiles * bm; i++)
                {
                    long m0 = i / bm * bm;
                    bool computed = i / bm >= mBegin
                        && (!V2Plan.BwdTileMasked(n0, bn, m0, bm, T, causal) || !V2Plan.BwdMasked(j - n0, i - m0, n0, m0, bm, T, causal));
                    Assert.True(computed == (i < T && (!causal || j <= i)), $"T={T} causal={causal}: key {j}, query {i}");
                }
        }
        for (int m = 0; m < mTiles; m++)
        {
            long last = V2Plan.BwdLastContributor(m * (long)bm, T, bm, bn, causal, nTiles);
            Assert.Equal(Enumerable.Range(0, (int)last + 1).Select(x => (long)x), contributors[m]);
        }
    }

    [Theory]
    [InlineData(1, 300, 4, 1, 64, true)]
    [InlineData(2, 257, 4, 2, 128, false)]
    [InlineData(1, 1000, 8, 1, 32, true)]
    [InlineData(3, 97, 2, 2, 96, true)]
    public void OrderedDqProtocolNeverDeadlocksAndSumsInKeyTileOrder(int B, int T, int H, int Hkv, int d, bool causal)
    {
        var shape = new AttentionShape(B, T, H, Hkv, d);
        int bn = KernelTraits.AttnV2BwdBlockN(d), bm = KernelTraits.AttnV2BwdBlockM(d);
        long mTiles = (T + bm - 1) / bm;
        foreach (int group in new[] { 1, 2, 1000 })
            foreach (int resident in new[] { 1, 2, 7, 64 })
                for (int seed = 0; seed < 3; seed++)
                {
                    var sched = AttentionSchedule.Backward(shape, 0);
                    sched.Group = Math.Min(group, sched.Heads);
                    var order = V2Plan.RunDqProtocol(shape, causal, sched, resident, new Random(seed));
                    foreach (var ((b, h, m), seq) in order)
                    {
                        long last = V2Plan.BwdLastContributor(m * bm, T, bm, bn, causal, (T + bn - 1) / bn);
                        Assert.Equal(Enumerable.Range(0, (int)last + 1).Select(x => (long)x), seq);
                    }
                    Assert.Equal(B * H * mTiles, order.Count);
                }
    }

    [Fact]
    public void SelectionSwitchAndHeadDimRule()
    {
        Assert.Equal(AttentionImpl.V1, AttentionSelection.Parse(null));
        Assert.Equal(AttentionImpl.V1, AttentionSelection.Parse(" V1 "));
        Assert.Equal(AttentionImpl.V2, AttentionSelection.Parse("v2"));
        Assert.Contains("ENGINE_ATTENTION=v3: expected v1 or v2", Assert.Throws<ArgumentException>(() => AttentionSelection.Parse("v3")).Message);
        Assert.Equal(AttentionImpl.V1, AttentionSelection.For(AttentionImpl.V1, 64));
        Assert.Equal(AttentionImpl.V2, AttentionSelection.For(AttentionImpl.V1, 32));   // v1 lacks it: v2 whatever the switch
        Assert.Equal(AttentionImpl.V2, AttentionSelection.For(AttentionImpl.V1, 96));
        Assert.Equal(AttentionImpl.V2, AttentionSelection.For(AttentionImpl.V2, 128));
        Assert.Contains("head dim 48", Assert.Throws<ArgumentException>(() => AttentionSelection.For(AttentionImpl.V2, 48)).Message);
        new AttentionShape(1, 8, 4, 2, 32).Validate(KernelTraits.AttnV2HeadDims, "attention_v2.cu");
        Assert.Throws<ArgumentException>(() => new AttentionShape(1, 8, 4, 2, 32).Validate());   // v1's launcher still refuses it
        Assert.Equal(1 + 2L * 4 * 4, AttentionV2Kernels.SyncBytes(new AttentionShape(2, 100, 4, 2, 128)) / 4);   // ceil(100 / 32) = 4 tiles
        Assert.Equal(2L * 4 * 100 * 128 * 4, AttentionV2Kernels.DqAccumBytes(new AttentionShape(2, 100, 4, 2, 128)));
    }

    [Fact]
    public void HopperKernelMirrorsAndTensorMapShapes()
    {
        string root = Repo.Root() ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
        string src = File.ReadAllText(Path.Combine(root, "native", "attention_sm90.cu"));
        var asserts = Regex.Matches(src, @"static_assert\(Sm90Traits<(\d+)>::kSmem == (\d+)");
        Assert.Equal(2, asserts.Count);
        foreach (Match m in asserts)
        {
            int d = int.Parse(m.Groups[1].Value), bytes = int.Parse(m.Groups[2].Value);
            Assert.Equal(bytes, KernelTraits.AttnSm90Smem(d));
            Assert.True(bytes <= 227 * 1024, $"d{d}: {bytes} bytes exceed Hopper's 227 KiB per block");
        }
        Assert.Contains($"__launch_bounds__({KernelTraits.AttnSm90Threads}, 1) attention_sm90_forward_d128(", src);
        // built only by its own sm_90a target, never with the portable archs (a failure there cannot stop them)
        string cmake = File.ReadAllText(Path.Combine(root, "CMakeLists.txt"));
        Assert.Contains("list(FILTER ENGINE_KERNEL_SOURCES EXCLUDE REGEX \"/attention_sm90\\\\.cu$\")", cmake);
        Assert.Contains("add_custom_target(engine_kernels_sm90 DEPENDS", cmake);
        Assert.DoesNotContain("attention_sm90", string.Join(",", KernelLibrary.ModuleNames));

        // q of a fused QKV buffer: [B=2, T=100, (H=8 + 2 x Hkv=2) x D=128] rows, heads 8 of them
        var spec = TensorMaps.Spec(new DevicePtr(0x10000), heads: 8, seqLen: 100, batch: 2, rowStride: 12 * 128, headDim: 128, boxRows: 128);
        Assert.Equal([128UL, 8, 100, 2], spec.Dims);                       // (D, heads, T, B), innermost first
        Assert.Equal([256UL, 12 * 128 * 2, 100UL * 12 * 128 * 2], spec.StridesBytes);   // bytes of dims 1..3
        Assert.Equal([64U, 1, 128, 1], spec.Box);                           // 64 columns = one 128-byte swizzle row
        Assert.All(spec.StridesBytes, st => Assert.Equal(0UL, st % 16));   // TMA needs 16-byte strides
        Assert.Throws<ArgumentException>(() => TensorMaps.Spec(new DevicePtr(0x10000), 8, 100, 2, 12 * 96, 96, 128));
        Assert.Throws<ArgumentException>(() => TensorMaps.Spec(new DevicePtr(0x10008), 8, 100, 2, 1024, 128, 128));
        Assert.Equal(512, System.Runtime.InteropServices.Marshal.SizeOf<AttentionSm90Params>());
    }

    [Fact]
    public void SharedMemoryMirrorsTheNativeAssertsAndFitsTheDevices()
    {
        string root = Repo.Root() ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
        string src = File.ReadAllText(Path.Combine(root, "native", "attention_v2.cu"));
        var asserts = Regex.Matches(src, @"static_assert\(AttnV2Traits<(\d+)>::k(Fwd|Bwd)Smem == (\d+)");
        Assert.Equal(8, asserts.Count);
        foreach (Match m in asserts)
        {
            int d = int.Parse(m.Groups[1].Value), bytes = int.Parse(m.Groups[3].Value);
            Assert.Equal(bytes, m.Groups[2].Value == "Fwd" ? KernelTraits.AttnV2FwdSmem(d) : KernelTraits.AttnV2BwdSmem(d));
            Assert.True(bytes + 16 <= 163 * 1024, $"d{d} {m.Groups[2].Value}: {bytes} bytes exceed sm_80's 163 KiB per block");
        }
        // the block sizes the launcher uses are the ones the kernels are compiled for
        Assert.Contains("__launch_bounds__(256) attention_v2_backward_d32", src);
        Assert.Contains("__launch_bounds__(128) attention_v2_backward_d128", src);
        foreach (int d in KernelTraits.AttnV2HeadDims)
        {
            Assert.Contains($"__launch_bounds__({KernelTraits.AttnV2FwdThreads}) attention_v2_forward_d{d}(", src);
            Assert.Contains($"__launch_bounds__({KernelTraits.AttnV2BwdThreads(d)}) attention_v2_backward_d{d}(", src);
        }
    }
}
