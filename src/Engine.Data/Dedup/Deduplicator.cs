using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;

namespace Engine.Data.Dedup;

/// <summary>Deduplication settings (config section <c>[dedup]</c>).</summary>
public sealed record DedupOptions
{
    public bool Exact { get; init; } = true;
    public bool Near { get; init; } = true;
    /// <summary>Dedup within each source first.</summary>
    public bool Local { get; init; } = true;
    /// <summary>Then across sources: a document is dropped when an earlier source (or earlier document) kept a duplicate.</summary>
    public bool Global { get; init; } = true;
    public int ShingleSize { get; init; } = 5;
    public int Permutations { get; init; } = 128;
    public int Bands { get; init; } = 16;
    public int Rows { get; init; } = 8;
    public double Threshold { get; init; } = 0.8;
    public ulong Seed { get; init; } = 1;
    /// <summary>Candidate pairs whose exact Jaccard is computed for the estimate-vs-truth report.</summary>
    public int SamplePairs { get; init; } = 200;

    /// <summary>Most MinHash permutations (each costs a hash per shingle per document; 128-256 is usual).</summary>
    public const int MaxPermutations = 4096;

    public void Validate()
    {
        if (ShingleSize < 1) throw new ArgumentException($"dedup.shingle_size must be >= 1 (got {ShingleSize})");
        if (Permutations is < 1 or > MaxPermutations) throw new ArgumentException($"dedup.permutations must be in [1, {MaxPermutations}] (got {Permutations})");
        if (Bands < 1 || Rows < 1 || (long)Bands * Rows != Permutations)
            throw new ArgumentException($"dedup.bands × dedup.rows must equal dedup.permutations (got {Bands} × {Rows} vs {Permutations})");
        if (!(Threshold > 0 && Threshold <= 1)) throw new ArgumentException($"dedup.threshold must be in (0, 1] (got {Threshold})");
        if (SamplePairs < 0) throw new ArgumentException($"dedup.sample_pairs must be >= 0 (got {SamplePairs})");
    }
}

/// <summary>A named list of documents to deduplicate.</summary>
public sealed record DedupSource(string Name, IReadOnlyList<string> Documents);

/// <summary>Counts for one source.</summary>
public sealed record DedupSourceStats(string Name, int Input, int ExactLocal, int NearLocal, int ExactGlobal, int NearGlobal, int Output);

/// <summary>One sampled candidate pair: MinHash estimate vs exact Jaccard of the shingle sets.</summary>
public sealed record JaccardSample(string A, string B, double Estimated, double Exact);

/// <summary>Everything deduplication found.</summary>
public sealed record DedupReport(
    IReadOnlyList<DedupSourceStats> Sources, int Input, int Output, int ExactDuplicates, int NearDuplicates,
    double Seconds, double DocumentsPerSecond, IReadOnlyList<JaccardSample> Samples, double MeanAbsError, double MaxAbsError,
    double TheoreticalSd);

/// <summary>
/// Exact (SHA-256 of the text) and near (MinHash + LSH) deduplication of documents held in memory, first within each
/// source and then across sources in the order given (the XuanYuan-70B order); in every duplicate cluster the first
/// document is kept. The same algorithm as engine prepare's staged, multi-rank form (<see cref="NearDuplicates"/>,
/// <see cref="UnionFind"/>), for corpora that fit in memory (tests, benchmarks).
/// </summary>
public static class Deduplicator
{
    public static (IReadOnlyList<bool[]> Keep, DedupReport Report) Run(IReadOnlyList<DedupSource> sources, DedupOptions options, IProgress<string>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(sources);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var sw = Stopwatch.StartNew();
        var hasher = new MinHasher(options.ShingleSize, options.Permutations, options.Seed);
        int total = sources.Sum(s => s.Documents.Count);
        var keep = sources.Select(s => Enumerable.Repeat(true, s.Documents.Count).ToArray()).ToList();
        var sigs = new uint[sources.Count][][];
        static ulong Id(int s, int i) => (ulong)(uint)s << 32 | (uint)i;
        static int SourceOf(ulong id) => (int)(id >> 32);
        var stats = new int[sources.Count, 4];

        if (options.Exact)
        {
            var first = new Dictionary<UInt128, ulong>();
            for (int si = 0; si < sources.Count; si++)
            {
                var docs = sources[si].Documents;
                var keys = new UInt128[docs.Count];
                Parallel.For(0, docs.Count, i => keys[i] = ExactKey(docs[i]));
                var seenHere = new HashSet<UInt128>();
                for (int i = 0; i < docs.Count; i++)
                {
                    bool local = !seenHere.Add(keys[i]);
                    if (!first.TryAdd(keys[i], Id(si, i)) && (options.Global || (local && options.Local)))
                    {
                        keep[si][i] = false;
                        stats[si, local ? 0 : 2]++;
                    }
                }
            }
        }
        var candidates = new List<(ulong A, ulong B, double Est)>();
        if (options.Near)
        {
            for (int si = 0; si < sources.Count; si++)
            {
                var docs = sources[si].Documents;
                sigs[si] = new uint[docs.Count][];
                int s = si;
                Parallel.For(0, docs.Count, i => { if (keep[s][i]) sigs[s][i] = hasher.Signature(docs[i]); });
                progress?.Report($"dedup: signatures for {sources[si].Name} ({docs.Count} documents)");
            }
            uint[] Sig(ulong id) => sigs[SourceOf(id)][(int)(uint)id];
            bool Similar(ulong a, ulong b)
            {
                double est = MinHasher.EstimateJaccard(Sig(a), Sig(b));
                if (candidates.Count < options.SamplePairs) candidates.Add((a, b, est));
                return est >= options.Threshold;
            }
            void Stage(NearDuplicates.Stage stage, int slot)
            {
                var buckets = new Dictionary<(int Band, ulong Key), List<ulong>>();
                var keys = new ulong[options.Bands];
                for (int si = 0; si < sources.Count; si++)
                    for (int i = 0; i < sources[si].Documents.Count; i++)
                    {
                        if (!keep[si][i]) continue;
                        NearDuplicates.BandKeys(sigs[si][i], options.Bands, options.Rows, keys);
                        for (int b = 0; b < options.Bands; b++)
                        {
                            if (!buckets.TryGetValue((b, keys[b]), out var list)) buckets[(b, keys[b])] = list = [];
                            list.Add(Id(si, i));
                        }
                    }
                var uf = new UnionFind();
                foreach (var members in buckets.Values)
                    if (members.Count > 1) NearDuplicates.BucketPairs(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(members), SourceOf, stage, Similar, uf.Union);
                foreach (var (id, root) in uf.Members())
                {
                    if (id == root) continue;
                    keep[SourceOf(id)][(int)(uint)id] = false;
                    stats[SourceOf(id), slot]++;
                }
            }
            if (options.Local) Stage(NearDuplicates.Stage.Local, 1);
            if (options.Global) Stage(options.Local ? NearDuplicates.Stage.Global : NearDuplicates.Stage.All, 3);
        }
        sw.Stop();

        var samples = candidates.Select(c =>
        {
            string Text(ulong id) => sources[SourceOf(id)].Documents[(int)(uint)id];
            double exact = MinHasher.ExactJaccard(hasher.Shingles(Text(c.A)), hasher.Shingles(Text(c.B)));
            return new JaccardSample($"{sources[SourceOf(c.A)].Name}#{(uint)c.A}", $"{sources[SourceOf(c.B)].Name}#{(uint)c.B}", c.Est, exact);
        }).ToList();
        double mae = samples.Count > 0 ? samples.Average(p => Math.Abs(p.Estimated - p.Exact)) : 0;
        double max = samples.Count > 0 ? samples.Max(p => Math.Abs(p.Estimated - p.Exact)) : 0;
        var per = sources.Select((s, i) => new DedupSourceStats(s.Name, s.Documents.Count, stats[i, 0], stats[i, 1], stats[i, 2], stats[i, 3], keep[i].Count(k => k))).ToList();
        int output = per.Sum(p => p.Output);
        var report = new DedupReport(per, total, output, per.Sum(p => p.ExactLocal + p.ExactGlobal), per.Sum(p => p.NearLocal + p.NearGlobal),
            sw.Elapsed.TotalSeconds, total / Math.Max(1e-9, sw.Elapsed.TotalSeconds), samples, mae, max, 0.5 / Math.Sqrt(options.Permutations));
        return (keep, report);
    }

    /// <summary>Content hash for exact dedup: the first 128 bits of SHA-256 over the UTF-8 text.</summary>
    public static UInt128 ExactKey(string text)
    {
        Span<byte> h = stackalloc byte[32];
        SHA256.HashData(Encoding.UTF8.GetBytes(text), h);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt128LittleEndian(h);
    }
}
