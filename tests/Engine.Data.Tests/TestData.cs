using Engine.Data;

namespace Engine.Data.Tests;

/// <summary>Shipped data files and a small shared tokenizer trained once per test run.</summary>
public static class TestData
{
    public static string Dir => DataPaths.Find();

    public static string File(string relative) => DataPaths.File(relative);

    /// <summary>Every shipped data file (all formats), relative to the data folder, named without a trailing .gz.</summary>
    public static IEnumerable<string> AllFiles() => Directory.EnumerateFiles(Dir, "*", SearchOption.AllDirectories)
        .Where(f => DataFile.Extension(f) is ".txt" or ".jsonl" or ".json" or ".csv")
        .Select(f => Path.GetRelativePath(Dir, DataFile.IsGzip(f) ? f[..^DataFile.GzipSuffix.Length] : f)).OrderBy(f => f, StringComparer.Ordinal);

    static readonly Lazy<BpeTokenizer> Small = new(() =>
    {
        var corpus = new List<string>();
        foreach (var f in new[] { "general_en/wikitext2_valid.txt", "general_en/tinyshakespeare.txt", "general_zh/cnews_general.jsonl", "finance_zh/finna_news.jsonl", "finance_en/fomc_minutes.jsonl" })
        {
            long chars = 0;
            foreach (var d in Documents.Read(File(f)))
            {
                corpus.Add(d);
                chars += d.Length;
                if (chars > 150_000) break;
            }
        }
        return BpeTokenizer.Train(corpus, new BpeTrainOptions { VocabSize = 1500 });
    });

    /// <summary>A 1,500-id byte-level BPE trained on ~150k characters from each of five EN/ZH files.</summary>
    public static BpeTokenizer SmallTokenizer => Small.Value;

    public static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "engine-data-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }
}
