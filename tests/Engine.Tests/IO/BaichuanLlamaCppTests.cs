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
}
