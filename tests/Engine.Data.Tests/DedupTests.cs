using Engine.Data;
using Engine.Data.Dedup;

namespace Engine.Data.Tests;

public class DedupTests
{
    /// <summary>The document with a fraction of its words replaced by fresh ones.</summary>
    static string Mutate(string doc, double fraction, int seed)
    {
        var rng = new Random(seed);
        var words = doc.Split(' ');
        for (int i = 0; i < words.Length; i++) if (rng.NextDouble() < fraction) words[i] = "w" + rng.Next(1_000_000);
        return string.Join(' ', words);
    }

    [Fact]
    public void MinHash_estimate_is_within_four_sd_of_exact_Jaccard()
    {
        var hasher = new MinHasher(5, 128, 7);
        var docs = Documents.Read(TestData.File("finance_en/tatqa_reports.jsonl")).Where(d => d.Length > 1500).Take(40).ToList();
        var errors = new List<double>();
        for (int i = 0; i < docs.Count; i++)
        {
            string b = Mutate(docs[i], 0.05 + 0.02 * i, i);
            var sa = hasher.Shingles(docs[i]); var sb = hasher.Shingles(b);
            double exact = MinHasher.ExactJaccard(sa, sb);
            double est = MinHasher.EstimateJaccard(hasher.Signature(sa), hasher.Signature(sb));
            // The estimate is a mean of 128 Bernoulli(J) draws: sd = sqrt(J(1−J)/128) ≤ 0.044.
            double sd = Math.Sqrt(exact * (1 - exact) / 128);
            Assert.True(Math.Abs(est - exact) <= 4 * sd + 0.01, $"pair {i}: estimate {est:F3} vs exact {exact:F3}");
            errors.Add(Math.Abs(est - exact));
        }
        Assert.True(errors.Average() < 0.035, $"mean |error| {errors.Average():F4}");
        Assert.Contains(errors, e => e > 0); // not trivially equal
    }

    [Fact]
    public void Finds_exact_and_near_duplicates_locally_then_globally()
    {
        var news = Documents.Read(TestData.File("general_zh/cnews_general.jsonl")).Take(60).ToList();
        var fomc = Documents.Read(TestData.File("general_en/wikitext2_valid.txt")).Take(40).ToList(); // distinct articles
        var a = new List<string>(news) { news[3], news[10][..^5] + "。。。。。" };   // one exact, one near duplicate inside A
        var b = new List<string>(fomc) { news[20], Mutate(fomc[5], 0.02, 1), Mutate(news[7], 0.0, 2) + " " }; // B repeats A (near/exact) and itself
        var (keep, report) = Deduplicator.Run([new DedupSource("a", a), new DedupSource("b", b)], new DedupOptions());
        Assert.Equal(new[] { 60, 0 }, new[] { keep[0].Count(k => k), 0 });
        Assert.False(keep[0][60]);                       // exact copy of news[3]
        Assert.False(keep[0][61]);                       // near copy of news[10]
        Assert.Equal(1, report.Sources[0].ExactLocal);
        Assert.Equal(1, report.Sources[0].NearLocal);
        Assert.False(keep[1][40]);                       // exact copy of a source-A document: global
        Assert.False(keep[1][41]);                       // near copy inside B: local
        Assert.False(keep[1][42]);                       // near copy of A (trailing space): global
        Assert.Equal(1, report.Sources[1].ExactGlobal);
        Assert.Equal(1, report.Sources[1].NearLocal);
        Assert.Equal(1, report.Sources[1].NearGlobal);
        Assert.Equal(40, keep[1].Count(k => k));
        Assert.Equal(105, report.Input);
        Assert.Equal(100, report.Output);
        Assert.NotEmpty(report.Samples);
        Assert.True(report.MeanAbsError < 0.1, $"mean |est − exact| = {report.MeanAbsError}");
    }

    [Fact]
    public void Options_are_validated()
    {
        Assert.Contains("bands", Assert.Throws<ArgumentException>(() => new DedupOptions { Bands = 10, Rows = 10 }.Validate()).Message);
        Assert.Contains("threshold", Assert.Throws<ArgumentException>(() => new DedupOptions { Threshold = 0 }.Validate()).Message);
    }
}
