using System.Text.RegularExpressions;
using Engine.Data;
using Ml = Microsoft.ML.Tokenizers;

namespace Engine.Data.Tests;

public class TokenizerTests
{
    static string Prefix(string rel, int chars)
    {
        var sb = new System.Text.StringBuilder();
        foreach (var d in Documents.Read(TestData.File(rel)))
        {
            sb.Append(d).Append('\n');
            if (sb.Length >= chars) break;
        }
        return sb.ToString();
    }

    [Fact]
    public void Round_trip_on_every_shipped_file()
    {
        var tok = TestData.SmallTokenizer;
        foreach (var rel in TestData.AllFiles())
        {
            // A 64 KB prefix of each file, read as raw text (all formats, English and Chinese), plus its documents.
            string raw = TextDecoding.ReadFile(TestData.File(rel), InvalidUtf8Policy.Error);
            string text = raw[..Math.Min(raw.Length, 64_000)];
            Assert.True(tok.Decode(tok.Encode(text)) == text, $"{rel}: decode(encode(x)) != x");
            foreach (var doc in Documents.Read(TestData.File(rel)).Take(50))
                Assert.True(tok.Decode(tok.Encode(doc)) == doc, $"{rel}: document round trip failed");
        }
    }

    [Fact]
    public void Round_trip_on_awkward_strings()
    {
        var tok = TestData.SmallTokenizer;
        foreach (var s in new[] { "", " ", "\n\n\t ", "a", "12345.678", "😀👍🏽 emoji", "e\u0301 café", "\u0000\u0001 ctrl", "中文English混合123", "  leading", "trailing  ", "'s 'LL don't", "\r\n\r\n" })
            Assert.Equal(s, tok.Decode(tok.Encode(s)));
    }

    [Fact]
    public void Digits_are_single_tokens_and_the_split_is_qwen2s()
    {
        var tok = TestData.SmallTokenizer;
        var ids = tok.Encode("2023");
        Assert.Equal(4, ids.Length);
        Assert.Equal(["2", "0", "2", "3"], ids.Select(i => tok.Decode([i])));
        var rx = new Regex(BpeTokenizer.DefaultPattern);
        // Qwen2's rule (llama.cpp "qwen2"): Han characters are letters; a leading space or punctuation joins a word
        Assert.Equal(["A股上涨", "3", "%", " (", "Q", "1", ")"], rx.Matches("A股上涨3% (Q1)").Select(m => m.Value));
        Assert.Equal(["It", "'S", " \"", "fine", "\"", " $", "5"], rx.Matches("It'S \"fine\" $5").Select(m => m.Value));
        Assert.Equal(["Profit", " rose", " ", "1", "2", "%", " in", " Q", "1"], rx.Matches("Profit rose 12% in Q1").Select(m => m.Value));
    }

    [Fact]
    public void Trains_8k_vocab_on_mixed_text_and_compresses()
    {
        var corpus = new List<string>();
        foreach (var f in new[] { "general_en/wikitext2_valid.txt", "general_zh/cnews_general.jsonl", "finance_zh/finnl_news.jsonl", "finance_en/fomc_minutes.jsonl" })
            corpus.AddRange(Documents.Read(TestData.File(f)));
        long bytes = corpus.Sum(d => (long)System.Text.Encoding.UTF8.GetByteCount(d));
        Assert.True(bytes > 5_000_000, $"corpus is {bytes} bytes");
        // training time is a benchmark figure (benchmarks: data verb), not a unit-test assertion
        var tok = BpeTokenizer.Train(corpus, new BpeTrainOptions { VocabSize = 8000 });
        Assert.Equal(8000, tok.VocabSize);
        string en = Prefix("finance_en/fomc_statements.jsonl", 20_000), zh = Prefix("finance_zh/cnews_finance.jsonl", 20_000);
        double enBytesPerToken = System.Text.Encoding.UTF8.GetByteCount(en) / (double)tok.Encode(en).Length;
        double zhBytesPerToken = System.Text.Encoding.UTF8.GetByteCount(zh) / (double)tok.Encode(zh).Length;
        Assert.True(enBytesPerToken > 3.0, $"English: {enBytesPerToken:F2} bytes/token");
        Assert.True(zhBytesPerToken > 2.5, $"Chinese: {zhBytesPerToken:F2} bytes/token");
    }

    [Fact]
    public void Training_is_deterministic()
    {
        var corpus = Documents.Read(TestData.File("finance_zh/cnews_finance.jsonl")).ToList();
        var a = BpeTokenizer.Train(corpus, new BpeTrainOptions { VocabSize = 600 });
        var b = BpeTokenizer.Train(corpus, new BpeTrainOptions { VocabSize = 600 });
        string dir = TestData.TempDir();
        a.Save(Path.Combine(dir, "a.json"));
        b.Save(Path.Combine(dir, "b.json"));
        Assert.Equal(File.ReadAllText(Path.Combine(dir, "a.json")), File.ReadAllText(Path.Combine(dir, "b.json")));
    }

    [Fact]
    public void Save_and_load_keep_every_id()
    {
        var tok = TestData.SmallTokenizer;
        string path = Path.Combine(TestData.TempDir(), "tokenizer.json");
        tok.Save(path);
        var back = BpeTokenizer.Load(path);
        Assert.Equal(tok.VocabSize, back.VocabSize);
        Assert.Equal(tok.EosId, back.EosId);
        Assert.Equal(tok.MergeCount, back.MergeCount);
        string text = Prefix("general_zh/cnews_general.jsonl", 20_000) + Prefix("general_en/c4_demo.jsonl", 20_000);
        Assert.Equal(tok.Encode(text), back.Encode(text));
    }

    [Fact]
    public void Our_tokenizer_json_loads_in_Microsoft_ML_Tokenizers_with_the_same_ids()
    {
        var tok = TestData.SmallTokenizer;
        string path = Path.Combine(TestData.TempDir(), "tokenizer.json");
        tok.Save(path);
        var ml = MlTokenizers.LoadBpe(path);
        foreach (var rel in new[] { "general_en/wikitext2_test_a.txt", "general_zh/cnews_general.jsonl", "finance_en/tatqa_reports.jsonl", "instruct/alpaca_zh_demo.json", "eval/fpb_train.csv" })
        {
            foreach (var doc in Documents.Read(TestData.File(rel)).Take(40))
            {
                var ours = tok.Encode(doc);
                var theirs = ml.EncodeToIds(doc).ToArray();
                Assert.True(ours.SequenceEqual(theirs), $"{rel}: ids differ for '{doc[..Math.Min(60, doc.Length)]}'");
                Assert.Equal(doc, ml.Decode(ours));
            }
        }
    }

    [Fact]
    public void Reads_a_GPT2_style_tokenizer_json()
    {
        // GPT-2 layout: ByteLevel pre-tokenizer with its own regex, merges as [a, b] pairs, <|endoftext|> added.
        string path = Path.Combine(TestData.TempDir(), "gpt2ish.json");
        var vocab = new Dictionary<string, int>();
        for (int b = 0; b < 256; b++) vocab[Engine.Data.Tokenization.ByteLevel.Char((byte)b).ToString()] = b;
        vocab["Ġt"] = 256; vocab["he"] = 257; vocab["Ġthe"] = 258; vocab["<|endoftext|>"] = 259;
        string vocabJson = string.Join(",", vocab.Select(kv => $"{System.Text.Json.JsonSerializer.Serialize(kv.Key)}:{kv.Value}"));
        File.WriteAllText(path, "{\"added_tokens\":[{\"id\":259,\"content\":\"<|endoftext|>\",\"special\":true}],\"normalizer\":null," +
            "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}," +
            "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{" + vocabJson + "},\"merges\":[[\"Ġ\",\"t\"],[\"h\",\"e\"],[\"Ġt\",\"he\"]]}}");
        var tok = BpeTokenizer.Load(path);
        Assert.Equal(259, tok.EosId);
        Assert.Equal(260, tok.VocabSize);
        Assert.Equal([(int)'a', 258, 258], tok.Encode("a the the"));
        Assert.Equal("a the the", tok.Decode([.. tok.Encode("a the the"), 259]));
    }

    [Fact]
    public void Unknown_or_broken_tokenizer_json_is_refused_clearly()
    {
        string dir = TestData.TempDir();
        string wp = Path.Combine(dir, "wordpiece.json");
        File.WriteAllText(wp, "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}");
        var e1 = Assert.Throws<NotSupportedException>(() => BpeTokenizer.Load(wp));
        Assert.Contains("WordPiece", e1.Message);
        Assert.Contains("wordpiece.json", e1.Message);

        string bert = Path.Combine(dir, "bertpre.json");
        File.WriteAllText(bert, "{\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}");
        Assert.Contains("BertPreTokenizer", Assert.Throws<NotSupportedException>(() => BpeTokenizer.Load(bert)).Message);

        string trunc = Path.Combine(dir, "trunc.json");
        string full = Path.Combine(dir, "full.json");
        TestData.SmallTokenizer.Save(full);
        File.WriteAllText(trunc, File.ReadAllText(full)[..5000]);
        Assert.Contains("trunc.json", Assert.Throws<InvalidDataException>(() => BpeTokenizer.Load(trunc)).Message);

        string badMerge = Path.Combine(dir, "badmerge.json");
        File.WriteAllText(badMerge, File.ReadAllText(full).Replace("\"merges\": [", "\"merges\": [\"zzzq qqqz\","));
        Assert.Contains("merge 0", Assert.Throws<InvalidDataException>(() => BpeTokenizer.Load(badMerge)).Message);
    }

    [Fact]
    public void Vocabulary_expansion_adds_domain_tokens_and_survives_save_load()
    {
        var tok = BpeTokenizer.Load(SaveCopy(TestData.SmallTokenizer));
        int before = tok.VocabSize;
        string text = "央行宣布降低存款准备金率，市盈率和资产负债表受到关注。EBITDA margin improved.";
        int lenBefore = tok.Encode(text).Length;
        var ids = tok.AddTokens(["存款准备金率", "市盈率", "资产负债表", "EBITDA", "市盈率"]);
        Assert.Equal(before + 4, tok.VocabSize);
        Assert.Equal([before, before + 1, before + 2, before + 3, before + 1], ids);
        var enc = tok.Encode(text);
        Assert.Contains(before, enc);
        Assert.Contains(before + 3, enc);
        Assert.True(enc.Length < lenBefore, $"{enc.Length} vs {lenBefore}");
        Assert.Equal(text, tok.Decode(enc));
        var back = BpeTokenizer.Load(SaveCopy(tok));
        Assert.Equal(enc, back.Encode(text));
        Assert.Equal(tok.VocabSize, back.VocabSize);
        Assert.Throws<ArgumentException>(() => tok.AddTokens([""]));
    }

    static string SaveCopy(BpeTokenizer t)
    {
        string p = Path.Combine(TestData.TempDir(), "tok.json");
        t.Save(p);
        return p;
    }
}

/// <summary>Builds a Microsoft.ML.Tokenizers BpeTokenizer from the vocab, merges and split regex of a tokenizer.json.</summary>
public static class MlTokenizers
{
    public static Ml.BpeTokenizer LoadBpe(string path)
    {
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(path));
        var root = doc.RootElement;
        var model = root.GetProperty("model");
        var vocab = model.GetProperty("vocab").EnumerateObject().Select(p => new KeyValuePair<string, int>(p.Name, p.Value.GetInt32())).ToList();
        var merges = model.GetProperty("merges").EnumerateArray().Select(m => m.GetString()!).ToList();
        var specials = root.GetProperty("added_tokens").EnumerateArray()
            .ToDictionary(a => a.GetProperty("content").GetString()!, a => a.GetProperty("id").GetInt32());
        string pattern = root.GetProperty("pre_tokenizer").GetProperty("pretokenizers")[0].GetProperty("pattern").GetProperty("Regex").GetString()!;
        return Ml.BpeTokenizer.Create(new Ml.BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            SpecialTokens = specials,
            PreTokenizer = new Ml.RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled), specials),
        });
    }
}
