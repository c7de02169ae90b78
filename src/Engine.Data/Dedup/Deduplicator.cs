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
/// Exact (SHA-256 of the text) and near (MinHash + LSH) deduplication, first within each source and then across
/// sources in the order given (the XuanYuan-70B order). The first occurrence is kept.
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
        var exactKeys = new UInt128[sources.Count][];
        var sigs = new uint[sources.Count][][];
        for (int si = 0; si < sources.Count; si++)
        {
            var docs = sources[si].Documents;
            exactKeys[si] = new UInt128[docs.Count];
            sigs[si] = new uint[docs.Count][];
            int s = si;
            Parallel.For(0, docs.Count, i =>
            {
                if (options.Exact) exactKeys[s][i] = ExactKey(docs[i]);
                if (options.Near) sigs[s][i] = hasher.Signature(docs[i]);
            });
            progress?.Report($"dedup: signatures for {sources[si].Name} ({docs.Count} documents)");
        }
        var candidates = new List<(int Sa, int Ia, int Sb, int Ib, double Est)>();
        var stats = new int[sources.Count, 4];
        void Pass(IEnumerable<int> which, int exactSlot, int nearSlot)
        {
            var seen = new HashSet<UInt128>();
            var index = new LshIndex(options.Bands, options.Rows, options.Threshold);
            var owner = new List<(int S, int I)>();
            foreach (int si in which)
            {
                for (int i = 0; i < sources[si].Documents.Count; i++)
                {
                    if (!keep[si][i]) continue;
                    if (options.Exact && !seen.Add(exactKeys[si][i])) { keep[si][i] = false; stats[si, exactSlot]++; continue; }
                    if (!options.Near) continue;
                    int s = si, d = i;
                    int dup = index.FindDuplicate(sigs[si][i], (id, est) =>
                    {
                        if (candidates.Count < options.SamplePairs) candidates.Add((owner[id].S, owner[id].I, s, d, est));
                    });
                    if (dup >= 0) { keep[si][i] = false; stats[si, nearSlot]++; continue; }
                    index.Add(sigs[si][i]);
                    owner.Add((si, i));
                }
            }
        }
        if (options.Local)
            for (int si = 0; si < sources.Count; si++) Pass([si], 0, 1);
        if (options.Global) Pass(Enumerable.Range(0, sources.Count), 2, 3);
        sw.Stop();

        var samples = candidates.Select(c =>
        {
            double exact = MinHasher.ExactJaccard(hasher.Shingles(sources[c.Sa].Documents[c.Ia]), hasher.Shingles(sources[c.Sb].Documents[c.Ib]));
            return new JaccardSample($"{sources[c.Sa].Name}#{c.Ia}", $"{sources[c.Sb].Name}#{c.Ib}", c.Est, exact);
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
