using System.Globalization;
using System.Text;
using Engine.Data;

namespace Engine.Data.Tests;

/// <summary>
/// XuanYuan-style vocabulary expansion of a SentencePiece-style tokenizer (the real 32k Llama-2-family file): the
/// Chinese characters of the finance text that the vocabulary lacks, plus finance terms, become model tokens; old ids
/// stay, text without the new pieces encodes as before, and the saved file loads in Hugging Face with the same ids.
/// </summary>
public class SentencePieceExpansionTests
{
    static readonly string[] Terms = ["市盈率", "资产负债表", "存款准备金率", "净利润", "同比增长", "央行"];

    /// <summary>Han characters of finance_zh the tokenizer does not have, most frequent first.</summary>
    static List<string> MissingCharacters(BpeTokenizer tok, int max)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var f in new[] { "finance_zh/finnl_news.jsonl", "finance_zh/cnews_finance.jsonl" })
            foreach (var doc in Documents.Read(TestData.File(f)))
                foreach (var r in doc.EnumerateRunes())
                    if (Rune.GetUnicodeCategory(r) == UnicodeCategory.OtherLetter && r.Value >= 0x3400)
                        counts[r.ToString()] = counts.GetValueOrDefault(r.ToString()) + 1;
        return counts.Where(kv => tok.TokenToId(kv.Key) == null).OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal)
            .Take(max).Select(kv => kv.Key).ToList();
    }

    [Fact]
    public void Expansion_keeps_old_ids_and_loads_in_Hugging_Face_with_the_same_ids()
    {
        var oracle = HfOracle.Require();
        string basePath = oracle.RealTokenizer("llama2");
        var before = BpeTokenizer.Load(basePath);
        var tok = BpeTokenizer.Load(basePath);
        var chars = MissingCharacters(tok, 2000);
        Assert.True(chars.Count >= 300, $"only {chars.Count} missing characters");
        string en = string.Join("\n", Documents.Read(TestData.File("general_en/wikitext2_valid.txt")).Take(200));
        string zh = string.Join("\n", Documents.Read(TestData.File("finance_zh/finnl_news.jsonl")).Take(300));
        int zhBefore = before.Encode(zh).Length;

        var ids = tok.AddTokens([.. chars, .. Terms, "市盈率", "的"]);
        Assert.Equal(chars.Count + Terms.Length + 2, ids.Length);
        Assert.Equal(Enumerable.Range(32000, chars.Count), ids.Take(chars.Count));   // characters first, in order, after the 32k
        Assert.Equal(ids[chars.Count], ids[chars.Count + Terms.Length]);             // a repeated term keeps its id
        Assert.Equal(before.TokenToId("的"), ids[^1]);                                // a character it had keeps its id
        Assert.True(tok.VocabSize > 32000 + chars.Count);
        Assert.Equal(tok.VocabSize, ids.Max() + 1);

        // old ids and merges unchanged; English text (no new characters) encodes exactly as before
        for (int id = 0; id < 32000; id++) Assert.Equal(before.IdToToken(id), tok.IdToToken(id));
        Assert.Equal(before.Merges, tok.Merges.Take(before.MergeCount));
        Assert.Equal(before.Encode(en), tok.Encode(en));
        // each new character is one token wherever it stands; the terms are one token on their own
        foreach (var c in chars.Take(50)) Assert.Equal(tok.TokenToId(c), tok.Encode("x" + c + "y")[1]);
        for (int i = 0; i < Terms.Length; i++) Assert.Equal(ids[chars.Count + i], tok.Encode(Terms[i]).Last());
        int zhAfter = tok.Encode(zh).Length;
        Assert.True(zhAfter < zhBefore * 0.92, $"Chinese finance text: {zhAfter} tokens after expansion vs {zhBefore} before");
        Assert.Equal(zh, tok.Decode(tok.Encode(zh)));

        string path = Path.Combine(TestData.TempDir(), "expanded.json");
        tok.Save(path);
        var reloaded = BpeTokenizer.Load(path);
        Assert.Equal(tok.VocabSize, reloaded.VocabSize);
        var docs = HfParityTests.Corpus().Where(d => d.File.Contains("_zh") || d.File.StartsWith("general_en", StringComparison.Ordinal))
            .GroupBy(d => d.File).SelectMany(g => g.Take(150)).Select(d => d.Text).Concat(Terms).Concat([zh]).ToList();
        var hf = oracle.Encode(path, docs);
        int withNew = 0;
        for (int i = 0; i < docs.Count; i++)
        {
            var ours = tok.Encode(docs[i]);
            Assert.True(ours.AsSpan().SequenceEqual(hf[i].Ids), $"document {i}: ids differ from Hugging Face on the expanded file: '{docs[i][..Math.Min(50, docs[i].Length)]}'");
            Assert.Equal(hf[i].Text, tok.Decode(ours));
            Assert.Equal(ours, reloaded.Encode(docs[i]));
            if (ours.Any(id => id >= 32000)) withNew++;
        }
        Assert.True(withNew > docs.Count / 3, $"only {withNew} of {docs.Count} documents use a new token");
    }

    [Fact]
    public void Byte_level_expansion_adds_tokens_Hugging_Face_numbers_the_same_way()
    {
        var oracle = HfOracle.Require();
        var tok = BpeTokenizer.Load(oracle.RealTokenizer("qwen3"));
        int size = tok.VocabSize;
        var ids = tok.AddTokens(["市盈率", "资产负债表", "EBITDA", "<|fin|>"]);
        Assert.Equal(Enumerable.Range(size, 4), ids);
        string path = Path.Combine(TestData.TempDir(), "qwen3-expanded.json");
        tok.Save(path);
        var docs = new[] { "公司市盈率与资产负债表；EBITDA margin <|fin|> rose.", "市盈率" }
            .Concat(HfParityTests.Corpus().Where(d => d.File.StartsWith("finance_zh", StringComparison.Ordinal)).Take(100).Select(d => d.Text)).ToList();
        var hf = oracle.Encode(path, docs);
        for (int i = 0; i < docs.Count; i++)
        {
            Assert.Equal(hf[i].Ids, tok.Encode(docs[i]));
            Assert.Equal(hf[i].Text, tok.Decode(tok.Encode(docs[i])));
        }
        Assert.Contains(size, hf[0].Ids);
        Assert.Contains(size + 3, hf[0].Ids);
    }
}
