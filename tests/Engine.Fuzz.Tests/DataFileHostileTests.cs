using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Engine.Data;
using Engine.Data.Shards;
using Engine.Training;
using Engine.Training.Eval;

namespace Engine.Fuzz.Tests;

/// <summary>tokenizer.json, token shards and data files built to break one rule each.</summary>
public class DataFileHostileTests
{
    static JsonObject SentencePiece() => JsonNode.Parse(SeedCorpus.SentencePieceJson())!.AsObject();

    /// <summary>The hang: a Split regex that backtracks catastrophically on a run of one letter.</summary>
    [Fact]
    public void CatastrophicallyBacktrackingRegexIsAnErrorNamingTheFileWithinTheTimeLimit()
    {
        using var dir = new TempDir();
        var tok = SentencePiece();
        tok["pre_tokenizer"] = JsonNode.Parse("""{"type":"Split","pattern":{"Regex":"(a+)+$"},"behavior":"Isolated","invert":false}""");
        string path = dir.Write("tokenizer.json", tok.ToJsonString());
        var t = BpeTokenizer.Load(path);
        Assert.Equal(path, t.SourcePath);
        var sw = Stopwatch.StartNew();
        var e = Assert.Throws<InvalidDataException>(() => t.Encode(new string('a', 40) + "!"));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30), $"took {sw.Elapsed}");
        Assert.Contains(path, e.Message);
        Assert.Contains("(a+)+$", e.Message);
        Assert.Contains("catastrophic backtracking", e.Message);
        // on a text of megabytes (one huge line) the length is the likely cause, and the message says so with the real size
        var big = Assert.Throws<InvalidDataException>(() => t.Encode(new string('a', 2_000_000) + "!"));
        Assert.Contains("pre-tokenizing a text of 2,000,001 characters ran past the 2 s regex match limit", big.Message);
        Assert.Contains("not a fault of the pattern", big.Message);
        // many threads (prepare's batch encoder): the same error, not an AggregateException
        var e2 = Assert.Throws<InvalidDataException>(() => BatchEncoder.EncodeAll(t, Enumerable.Repeat(new string('a', 40) + "!", 4).ToList(), threads: 2, TestContext.Current.CancellationToken));
        Assert.Contains(path, e2.Message);
    }

    [Fact]
    public void AVocabularyIdFarBeyondTheEntriesIsRefusedNotAllocated()
    {
        using var dir = new TempDir();
        var tok = SentencePiece();
        tok["model"]!["vocab"]!["z"] = 2_000_000_000;
        string path = dir.Write("tokenizer.json", tok.ToJsonString());
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<InvalidDataException>(() => BpeTokenizer.Load(path));
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 64 << 20);
        Assert.Contains(path, e.Message);
        Assert.Contains("far beyond the vocabulary", e.Message);
    }

    [Theory]
    [InlineData("merges", """[""]""", "merge 0 '' is not 'a b'")]                                          // fuzz: IndexOf past the end
    [InlineData("decoder", """{"type":"Strip","content":" ","start":1e20,"stop":0}""", "'start' = 1e20 is not a count")]  // fuzz: FormatException
    [InlineData("decoder", """{"type":"Strip","content":" ","start":-1,"stop":0}""", "'start' = -1 is not a count")]
    [InlineData("model.dropout", "1e400", "dropout")]
    public void FuzzFoundTokenizerCrashesAreOneLineErrors(string where, string json, string expected)
    {
        using var dir = new TempDir();
        var tok = SentencePiece();
        if (where == "merges") tok["model"]!["merges"] = JsonNode.Parse(json);
        else if (where == "model.dropout") tok["model"]!["dropout"] = JsonNode.Parse(json);
        else tok[where] = JsonNode.Parse(json);
        string path = dir.Write("tokenizer.json", tok.ToJsonString());
        var e = Assert.ThrowsAny<Exception>(() => BpeTokenizer.Load(path));
        Assert.True(e is InvalidDataException or NotSupportedException, e.ToString());
        Assert.Contains(path, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void MergeHoldingALineBreakGivesAOneLineMessage()
    {
        using var dir = new TempDir();
        var tok = SentencePiece();
        tok["model"]!["merges"] = JsonNode.Parse("""["a\nb"]""");
        string path = dir.Write("tokenizer.json", tok.ToJsonString());
        var e = Assert.Throws<InvalidDataException>(() => BpeTokenizer.Load(path));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains("a\\nb", e.Message);
    }

    static string WriteShard(TempDir dir, int vocab, params int[][] docs)
    {
        string basePath = dir.File("s");
        using var w = new ShardWriter(basePath, vocab);
        foreach (var d in docs) w.Add(d);
        w.Complete();
        return basePath;
    }

    [Fact]
    public void ChecksumValidShardWithATokenAtOrAboveItsVocabularyIsRefusedAtOpenNamingShardAndDocument()
    {
        using var dir = new TempDir();
        string basePath = WriteShard(dir, 1000, [1, 2, 3], [4, 999, 5]);
        // a shard whose header claims a smaller vocabulary, with valid checksums (another tool, another tokenizer)
        var bin = File.ReadAllBytes(basePath + ".bin");
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(bin.AsSpan(32), 500);
        File.WriteAllBytes(basePath + ".bin", bin);
        using (var r = ShardReader.Open(basePath)) Assert.Equal(500, r.VocabSize);   // structure alone is fine
        var e = Assert.Throws<InvalidDataException>(() => ShardReader.Open(basePath, verifyChecksums: true));
        Assert.Contains(basePath + ".bin", e.Message);
        Assert.Contains("document 1 holds token id 999 at position 1", e.Message);
        // training from it fails at load, naming the shard, not when a window is sampled
        var e2 = Assert.Throws<InvalidDataException>(() => TokenCorpus.FromFiles([basePath + ".bin"], new ByteTokenizer(), 0.1));
        Assert.Contains(basePath + ".bin", e2.Message);
    }

    [Fact]
    public void ShardHeaderTokenCountThatOverflowsIsRefused()
    {
        using var dir = new TempDir();
        string basePath = WriteShard(dir, 300, [1, 2, 3]);
        var bin = File.ReadAllBytes(basePath + ".bin");
        System.Buffers.Binary.BinaryPrimitives.WriteInt64LittleEndian(bin.AsSpan(16), long.MaxValue / 2 + 3);   // × 2 bytes wraps
        File.WriteAllBytes(basePath + ".bin", bin);
        var e = Assert.Throws<InvalidDataException>(() => ShardReader.Open(basePath));
        Assert.Contains("truncated or corrupted", e.Message);
    }

    [Fact]
    public void LabeledSetWithInvalidUtf8IsRefusedNotReadAsReplacementCharacters()
    {
        using var dir = new TempDir();
        var bytes = Encoding.UTF8.GetBytes("label,sentence\npositive,Profit rose\nnegative,Loss \u00e9\n");
        bytes[^3] = 0xFF;
        string path = dir.Write("set.csv", bytes);
        var e = Assert.Throws<InvalidDataException>(() => LabeledData.Read(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("invalid UTF-8", e.Message);
    }

    [Fact]
    public void LabeledJsonlWithNonObjectsOrFractionalLabelsSkipsThoseRows()
    {
        using var dir = new TempDir();
        string path = dir.Write("set.jsonl", "[1,2]\n\"text\"\n{\"text\": \"a\", \"label\": 1.5}\n{\"text\": \"b\", \"label\": 1}\n{\"text\": \"c\", \"label\": 0}\n");
        var (examples, skipped) = LabeledData.Read(path, ["neg", "pos"]);
        Assert.Equal(["pos", "neg"], examples.Select(x => x.Label));
        Assert.Equal(3, skipped);
    }

    [Theory]
    [InlineData(".jsonl", "{\"text\": \"\\ud800\"}\n{\"text\": \"fine\"}\n", 1)]
    [InlineData(".json", "[{\"text\": \"\\udc00 lone\"}, {\"text\": \"fine\"}]", 1)]
    public void RecordsWithAnEscapedLoneSurrogateAreSkippedAndCounted(string ext, string text, int expectedDocs)
    {
        using var dir = new TempDir();
        string path = dir.Write("d" + ext, text);
        var stats = new DocumentReadStats();
        var docs = Documents.Read(path, null, stats).ToList();
        Assert.Equal(expectedDocs, docs.Count);
        Assert.Equal(1, stats.MalformedRecordsSkipped);
    }
}
