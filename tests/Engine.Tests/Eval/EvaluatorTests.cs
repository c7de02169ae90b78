using Engine.Core;
using Engine.Core.Autograd;
using Engine.Data;
using Engine.Model;
using Engine.Tests.Model;
using Engine.Training.Eval;

namespace Engine.Tests.Eval;

public class EvaluatorTests
{
    [Fact]
    public void PerplexityIsExpOfMeanNllComputedIndependently()
    {
        using var m = TestModels.Create(TestModels.Tiny(), 31);
        var rng = new Rng(2);
        var tokens = Enumerable.Range(0, 50).Select(_ => rng.NextInt(m.Config.VocabSize)).ToList();
        var r = Evaluator.Perplexity(m, tokens, seqLen: 8, batch: 2);
        // independent: full logits per window, log-softmax in double
        double nll = 0; int count = 0;
        using var ng = Grad.NoGrad();
        for (int w = 0; w < (tokens.Count - 1) / 8; w++)
        {
            using var s = new TensorScope();
            var ids = CpuBackend.Instance.Empty([8], DType.I32);
            CpuBackend.Instance.Upload(ids, tokens.Skip(w * 8).Take(8).ToArray());
            var lg = m.Logits(ids, 1, 8).ToArray();
            int v = m.Config.VocabSize;
            for (int t = 0; t < 8; t++)
            {
                var row = lg.AsSpan(t * v, v);
                double mx = double.NegativeInfinity;
                foreach (var x in row) mx = Math.Max(mx, x);
                double z = 0;
                foreach (var x in row) z += Math.Exp(x - mx);
                nll -= row[tokens[w * 8 + t + 1]] - mx - Math.Log(z);
                count++;
            }
        }
        Assert.Equal(count, r.Tokens);
        Assert.Equal(nll / count, r.MeanNll, 4);
        Assert.Equal(Math.Exp(nll / count), r.Perplexity, 3);
    }

    [Fact]
    public void BitsPerByteIsTotalNllOverTheUtf8SizeOfThePredictedText()
    {
        var tok = new ByteTokenizer();
        using var m = TestModels.Create(TestModels.Tiny() with { VocabSize = tok.VocabSize }, 34);
        var tokens = tok.Encode("Net interest income rose 4% in the quarter, ahead of guidance.").ToList();
        var r = Evaluator.Perplexity(m, tokens, seqLen: 16, batch: 2, tokenizer: tok);
        // ASCII under the byte tokenizer: one byte per predicted token
        Assert.Equal(r.MeanNll / Math.Log(2), r.BitsPerByte!.Value, 9);
        Assert.Null(Evaluator.Perplexity(m, tokens, 16, 2).BitsPerByte);
    }

    /// <summary>
    /// Crafted model: all-zero weights except unit embeddings and one boosted LM-head row, so every position predicts
    /// the boosted byte. Labels " aa" and " bb" have equal length; the one containing the boosted byte must win.
    /// </summary>
    [Theory]
    [InlineData('a', "aa")]
    [InlineData('b', "bb")]
    public void FewShotPicksTheLabelOfHighestLikelihood(char boosted, string expected)
    {
        var tok = new ByteTokenizer();
        var cfg = TestModels.Tiny() with { VocabSize = tok.VocabSize, MaxPositionEmbeddings = 256 };
        using var m = new LlamaModel(cfg, CpuBackend.Instance);
        foreach (var (name, t) in m.Parameters)
        {
            var host = new float[t.Numel];
            if (name.Contains("norm")) host.AsSpan().Fill(1f);
            if (name == "model.embed_tokens.weight") host.AsSpan().Fill(1f);
            if (name == "lm_head.weight") host.AsSpan(boosted * cfg.HiddenSize, cfg.HiddenSize).Fill(3f);
            m.Load(name, host);
        }
        var test = new[] { new LabeledExample("profits rose", "aa"), new LabeledExample("profits fell", "bb") };
        var r = Evaluator.FewShot(m, tok, test, test, k: 1, seed: 1);
        int e = r.Labels.ToList().IndexOf(expected);
        Assert.Equal(2, r.Confusion[0, e] + r.Confusion[1, e]); // both predicted as the boosted label
        Assert.Equal(0.5, r.Accuracy);
    }

    [Fact]
    public void ContinuationScoresWithCacheEqualFullForward()
    {
        using var m = TestModels.Create(TestModels.Tiny(), 32);
        int[] prompt = [1, 5, 9, 3, 7];
        int[][] conts = [[4, 2, 8], [6], [11, 0]];
        var ll = Evaluator.ContinuationLogLikelihoods(m, prompt, conts);
        using var ng = Grad.NoGrad();
        for (int c = 0; c < conts.Length; c++)
        {
            var seq = prompt.Concat(conts[c]).ToArray();
            using var s = new TensorScope();
            var ids = CpuBackend.Instance.Empty([seq.Length], DType.I32);
            CpuBackend.Instance.Upload(ids, seq);
            var lg = m.Logits(ids, 1, seq.Length).ToArray();
            int v = m.Config.VocabSize;
            double expected = 0;
            for (int i = 0; i < conts[c].Length; i++)
            {
                var row = lg.AsSpan((prompt.Length - 1 + i) * v, v);
                double mx = double.NegativeInfinity;
                foreach (var x in row) mx = Math.Max(mx, x);
                double z = 0;
                foreach (var x in row) z += Math.Exp(x - mx);
                expected += row[conts[c][i]] - mx - Math.Log(z);
            }
            Assert.Equal(expected, ll[c], 4);
        }
    }

    [Fact]
    public void MacroF1FromAHandConfusionMatrix()
    {
        // truth rows, predictions columns: labels a, b, c
        var conf = new int[,] { { 3, 1, 0 }, { 0, 2, 2 }, { 1, 0, 1 } };
        var r = Evaluator.Score(["a", "b", "c"], conf, 10, 0);
        Assert.Equal(0.6, r.Accuracy, 10);
        double f1a = 2 * 0.75 * 0.75 / 1.5, f1b = 2 * (2.0 / 3) * 0.5 / (2.0 / 3 + 0.5), f1c = 2 * (1.0 / 3) * 0.5 / (1.0 / 3 + 0.5);
        Assert.Equal((f1a + f1b + f1c) / 3, r.MacroF1, 10);
    }

    [Theory]
    [InlineData(0.0, 1.0)]
    [InlineData(0.8, 0.9)]
    public void KvCacheGenerationEqualsGenerationWithoutCache(double temperature, double topP)
    {
        using var m = TestModels.Create(TestModels.Tiny(), 33);
        var o = new SamplingOptions(MaxNewTokens: 20, Temperature: temperature, TopP: topP, Seed: 5);
        var a = Generator.Generate(m, [3, 1, 4, 1, 5], o, useCache: true);
        var b = Generator.Generate(m, [3, 1, 4, 1, 5], o, useCache: false);
        Assert.Equal(20, a.Count);
        Assert.Equal(b, a);
    }

    [Fact]
    public void ReadsEveryShippedSentimentFormat()
    {
        var (fpb, _) = LabeledData.Read(Engine.Data.DataPaths.File("eval/fpb_test.csv"));
        Assert.Equal(969, fpb.Count);
        Assert.Equal(["negative", "neutral", "positive"], fpb.Select(e => e.Label).Distinct().Order());
        Assert.Contains(fpb, e => e.Text.Contains(',')); // quoted commas survive
        foreach (var f in new[] { "fiqa_sa_test.jsonl", "tfns_test.jsonl", "finfe_zh_sentiment.jsonl" })
        {
            var (ex, skipped) = LabeledData.Read(Engine.Data.DataPaths.File("eval/" + f));
            Assert.True(ex.Count > 100, f);
            Assert.Equal(0, skipped);
            Assert.All(ex, e => Assert.Contains(e.Label, new[] { "negative", "neutral", "positive" }));
        }
    }

    [Fact]
    public void OtherFilesOfTheSameFormatWorkAndBadOnesAreNamed()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("x.csv"), "sentence,label\n\"a, b\",up\nc,down\n");
        var (ex, _) = LabeledData.Read(dir.File("x.csv"));
        Assert.Equal([new LabeledExample("a, b", "up"), new LabeledExample("c", "down")], ex);
        File.WriteAllText(dir.File("y.jsonl"), "{\"text\":\"t\",\"label\":2}\nnot json\n");
        var (ey, skipped) = LabeledData.Read(dir.File("y.jsonl"), ["negative", "neutral", "positive"]);
        Assert.Equal("positive", Assert.Single(ey).Label);
        Assert.Equal(1, skipped);
        File.WriteAllText(dir.File("z.jsonl"), "garbage\n");
        var e = Assert.Throws<InvalidDataException>(() => LabeledData.Read(dir.File("z.jsonl")));
        Assert.Contains("z.jsonl", e.Message);
    }
}
