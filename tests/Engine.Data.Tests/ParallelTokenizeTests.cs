using Engine.Data;
using Engine.Data.Prepare;
using Engine.Data.Shards;

namespace Engine.Data.Tests;

/// <summary><c>engine prepare</c> tokenizes on every core; what it writes must not depend on how many.</summary>
public class ParallelTokenizeTests
{
    [Fact]
    public void EncodeAll_equals_encoding_one_by_one_at_any_thread_count()
    {
        var tok = TestData.SmallTokenizer;
        var docs = Documents.Read(TestData.File("finance_zh/finna_news.jsonl")).Take(300)
            .Concat(Documents.Read(TestData.File("general_en/c4_demo.jsonl")).Take(300)).Concat(["", " ", "x"]).ToList();
        var reference = BpeTokenizer.Load(SaveCopy(tok));
        var expected = docs.Select(reference.Encode).ToArray();
        foreach (int threads in new[] { 1, 2, 3, 8 })
        {
            var fresh = BpeTokenizer.Load(SaveCopy(tok));   // cold caches filled concurrently
            var got = BatchEncoder.EncodeAll(fresh, docs, threads, TestContext.Current.CancellationToken);
            Assert.Equal(docs.Count, got.Length);
            for (int i = 0; i < docs.Count; i++) Assert.True(expected[i].AsSpan().SequenceEqual(got[i]), $"threads {threads}: document {i} differs");
        }
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => BatchEncoder.EncodeAll(tok, docs, 2, cts.Token));
        Assert.Throws<ArgumentOutOfRangeException>(() => BatchEncoder.EncodeAll(tok, docs, -1, TestContext.Current.CancellationToken));
    }

    [Fact]
    public void A_document_of_over_a_million_tokens_encodes_the_same_twice()
    {
        // the per-thread id buffer is released after a huge document; the next call must not see stale ids
        var tok = TestData.SmallTokenizer;
        string digits = string.Concat(Enumerable.Repeat("0123456789", 120_000));
        var small = tok.Encode("42");   // before the huge document: what a stale buffer would not reproduce
        Assert.NotEmpty(small);
        var a = tok.Encode(digits);
        Assert.Equal(1_200_000, a.Length);
        Assert.Equal(small, tok.Encode("42"));
        Assert.Equal(a, tok.Encode(digits));
        Assert.Equal(digits, tok.Decode(a));
    }

    static string SaveCopy(BpeTokenizer t)
    {
        string p = Path.Combine(TestData.TempDir(), "tok.json");
        t.Save(p);
        return p;
    }

    static string Config(string tokPath, int threads) => $$"""
        output_dir = "out{{threads}}"
        seed = 11
        max_documents_per_file = 400
        threads = {{threads}}
        [[sources]]
        name = "en"
        files = ["data:general_en/wikitext2_valid.txt", "data:general_en/c4_demo.jsonl"]
        [[sources]]
        name = "zh"
        files = ["data:finance_zh/finnl_news.jsonl", "data:general_zh/cnews_general.jsonl"]
        [[sources]]
        name = "sft"
        kind = "instruction"
        files = ["data:instruct/fin_zh_causal_qa.jsonl"]
        [dedup]
        enabled = false
        [tokenizer]
        path = "{{tokPath.Replace("\\", "/")}}"
        add_tokens = ["净利润", "EBITDA"]
        """;

    [Fact]
    public void Prepare_writes_the_same_shards_on_one_thread_and_on_many()
    {
        string dir = TestData.TempDir();
        string tokPath = Path.Combine(dir, "tokenizer.json");
        TestData.SmallTokenizer.Save(tokPath);
        var reports = new List<PrepareReport>();
        foreach (int threads in new[] { 1, 4 })
        {
            string cfgPath = Path.Combine(dir, $"prep{threads}.toml");
            File.WriteAllText(cfgPath, Config(tokPath, threads));
            var cfg = PrepareConfig.Load(cfgPath);
            Assert.Equal(threads, cfg.Threads);
            reports.Add(PreparePipeline.Run(cfg, null, TestContext.Current.CancellationToken));
        }
        Assert.Equal(reports[0].Tokens, reports[1].Tokens);
        Assert.True(reports[0].Tokens > 100_000, $"{reports[0].Tokens} tokens");
        foreach (var name in new[] { "en.bin", "en.idx", "zh.bin", "zh.idx", "sft.jsonl", "tokenizer.json" })
        {
            byte[] a = File.ReadAllBytes(Path.Combine(dir, "out1", name)), b = File.ReadAllBytes(Path.Combine(dir, "out4", name));
            Assert.True(a.AsSpan().SequenceEqual(b), $"{name} differs between 1 and 4 threads ({a.Length} vs {b.Length} bytes)");
        }
        Assert.True(ShardValidator.Validate(Path.Combine(dir, "out4", "zh")).Ok);
        Assert.Equal(reports[0].Outputs.Select(o => o.Tokens), reports[1].Outputs.Select(o => o.Tokens));
    }

    [Theory]
    [InlineData("threads = 1\nthreads = 2\n[[sources]]\nname = \"a\"\nfiles = [\"x.txt\"]\n", "line 2, column 1")]
    [InlineData("[tokenizer]\nvocab_size = 600\n[tokenizer]\nkind = \"bpe\"\n[[sources]]\nname = \"a\"\nfiles = [\"x.txt\"]\n", "line 3, column 1")]
    public void Duplicate_keys_and_tables_are_refused_with_line_and_column(string text, string where)
    {
        var e = Assert.Throws<PrepareConfigException>(() => PrepareConfig.Parse(text, "dup.toml", TestData.TempDir()));
        Assert.Contains("invalid TOML", e.Message);
        Assert.Contains(where, e.Message);
        Assert.Contains("already defined", e.Message);
    }

    [Fact]
    public void Negative_thread_count_is_refused_by_name()
    {
        var e = Assert.Throws<PrepareConfigException>(() => PrepareConfig.Parse(
            "threads = -2\n[[sources]]\nname = \"a\"\nfiles = [\"x.txt\"]\n", "bad.toml", TestData.TempDir()));
        Assert.Contains("threads", e.Message);
    }
}
