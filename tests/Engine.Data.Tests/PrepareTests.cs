using Engine.Data;
using Engine.Data.Prepare;
using Engine.Data.Shards;

namespace Engine.Data.Tests;

public class PrepareTests
{
    static string Config(string dir, string extra = "") => $$"""
        output_dir = "out"
        seed = 7
        max_documents_per_file = 60
        [[sources]]
        name = "en"
        files = ["data:general_en/wikitext2_valid.txt", "data:general_en/c4_demo.jsonl", "{{Path.Combine(dir, "binary.txt").Replace("\\", "/")}}"]
        [[sources]]
        name = "zh"
        files = ["data:finance_zh/finna_news.jsonl", "data:finance_zh/finna_news.jsonl"]
        quality_filter = false
        [[sources]]
        name = "sft"
        kind = "instruction"
        files = ["data:instruct/fin_en_formula.jsonl"]
        [cleaning]
        min_chars = 20
        [quality]
        enabled = true
        threshold = 0.05
        curated = ["data:finance_en/fomc_statements.jsonl"]
        web = ["data:general_en/c4_demo.jsonl"]
        max_examples = 200
        [dedup]
        permutations = 64
        bands = 16
        rows = 4
        [tokenizer]
        vocab_size = 600
        add_tokens = ["净利润"]
        {{extra}}
        """;

    [Fact]
    public void Runs_end_to_end_and_writes_valid_shards_tokenizer_and_report()
    {
        string dir = TestData.TempDir();
        File.WriteAllBytes(Path.Combine(dir, "binary.txt"), [1, 0, 2, 0, 3]);
        string cfgPath = Path.Combine(dir, "prep.toml");
        File.WriteAllText(cfgPath, Config(dir));
        var cfg = PrepareConfig.Load(cfgPath);
        var report = PreparePipeline.Run(cfg, null, TestContext.Current.CancellationToken);

        Assert.Single(report.SkippedFiles);
        Assert.Contains("binary.txt", report.SkippedFiles[0]);
        var zh = report.Dedup.Single(s => s.Source == "zh");
        Assert.True(zh.ExactLocal == zh.Input / 2 && zh.Input > 100, string.Join("\n", report.Stages)); // the same file listed twice
        Assert.Equal(601, report.VocabSize);               // 600 trained + 1 added
        Assert.True(File.Exists(Path.Combine(dir, "out", "report.json")));
        var tok = BpeTokenizer.Load(report.TokenizerPath);
        Assert.Equal(601, tok.VocabSize);
        foreach (var name in new[] { "en", "zh" })
        {
            var v = ShardValidator.Validate(Path.Combine(dir, "out", name));
            Assert.True(v.Ok, string.Join("; ", v.Problems));
            using var shard = ShardReader.Open(Path.Combine(dir, "out", name));
            Assert.False(string.IsNullOrWhiteSpace(tok.Decode(shard.Document(0))));
        }
        Assert.Equal(report.Dedup.Single(s => s.Source == "sft").Output, Instructions.Read(Path.Combine(dir, "out", "sft.jsonl")).Count()); // 60 read, near duplicates dropped
        var en = report.Stages.Single(s => s.Stage == "extract" && s.Source == "en");
        Assert.Contains(en.Counts.Keys, k => k.StartsWith("clean_dropped_", StringComparison.Ordinal));   // cleaning rules counted
        Assert.True(en.Counts.GetValueOrDefault("quality_dropped") > 0, string.Join(", ", en.Counts));  // and the quality filter
        Assert.True(report.Tokens > 0);
    }

    [Theory]
    [InlineData("colour = 1", "unknown key 'tokenizer.colour'")]
    [InlineData("vocab_size = \"big\"", "tokenizer.vocab_size")]
    public void Config_errors_name_the_key(string extra, string expected)
    {
        string dir = TestData.TempDir();
        string cfgPath = Path.Combine(dir, "prep.toml");
        File.WriteAllText(cfgPath, Config(dir, extra).Replace("vocab_size = 600\n", extra.StartsWith("vocab_size") ? "" : "vocab_size = 600\n"));
        var e = Assert.Throws<PrepareConfigException>(() => PrepareConfig.Load(cfgPath));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Config_validation_messages()
    {
        string dir = TestData.TempDir();
        string Bad(string text)
        {
            string p = Path.Combine(dir, Guid.NewGuid().ToString("N") + ".json");
            File.WriteAllText(p, text);
            return Assert.Throws<PrepareConfigException>(() => PrepareConfig.Load(p)).Message;
        }
        Assert.Contains("at least one [[sources]]", Bad("{}"));
        Assert.Contains("unknown key 'sources[0].path'", Bad("{\"sources\": [{\"name\": \"a\", \"files\": [\"x.txt\"], \"path\": 1}]}"));
        Assert.Contains("bands", Bad("{\"sources\": [{\"name\": \"a\", \"files\": [\"x.txt\"]}], \"dedup\": {\"bands\": 3}}"));
        Assert.Contains("kind", Bad("{\"sources\": [{\"name\": \"a\", \"kind\": \"video\", \"files\": [\"x.txt\"]}]}"));
        Assert.Contains("invalid JSON", Bad("{\"sources\": "));
        Assert.Throws<FileNotFoundException>(() => PrepareConfig.Load(Path.Combine(dir, "none.toml")));
    }
}
