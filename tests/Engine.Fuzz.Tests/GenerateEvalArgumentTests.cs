using Engine.Data;
using Engine.Model.IO;
using Engine.Training.Eval;

namespace Engine.Fuzz.Tests;

/// <summary>`engine generate` and `engine eval` arguments and sets that used to be accepted and give nonsense.</summary>
[Collection("console")]
public class GenerateEvalArgumentTests
{
    /// <summary>A byte-level model (vocab 258, context 64) in a temporary directory.</summary>
    static TempDir ByteModel()
    {
        var dir = new TempDir();
        using var m = SeedCorpus.TinyModel(vocab: 258);
        ModelIO.Save(m, dir.Path);
        return dir;
    }

    [Theory]
    [InlineData("--temperature", "-0.5", "temperature must be a finite number >= 0")]
    [InlineData("--temperature", "NaN", "temperature must be a finite number >= 0")]
    [InlineData("--temperature", "Infinity", "temperature must be a finite number >= 0")]
    [InlineData("--top-p", "0", "top-p must be in (0, 1]")]
    [InlineData("--top-p", "1.5", "top-p must be in (0, 1]")]
    [InlineData("--top-p", "NaN", "top-p must be in (0, 1]")]
    [InlineData("--max-new-tokens", "-3", "max new tokens must be at least 1")]
    [InlineData("--max-new-tokens", "0", "max new tokens must be at least 1")]
    public void BadSamplingOptionsAreOneLineErrors(string option, string value, string expected)
    {
        using var dir = ByteModel();
        EngineCli.AssertOneLineError(EngineCli.Run("generate", "-m", dir.Path, "-t", "byte", "-p", "Rates", option, value), expected);
    }

    [Fact]
    public void APromptFillingTheContextIsAnErrorNotZeroTokensAndExitZero()
    {
        using var dir = ByteModel();
        string prompt = new('x', 64);   // 64 byte tokens = the whole context
        EngineCli.AssertOneLineError(EngineCli.Run("generate", "-m", dir.Path, "-t", "byte", "-p", prompt), "the prompt is 64 tokens but the model's context is 64 positions");
        var (code, err) = EngineCli.Run("generate", "-m", dir.Path, "-t", "byte", "-p", new string('x', 63), "--max-new-tokens", "5");
        Assert.True(code == 0, err);
        Assert.Contains("[1 tokens", err);   // one position left: one token, said so
    }

    [Fact]
    public void SamplingOptionsValidateAtTheLibraryBoundaryToo()
    {
        using var m = SeedCorpus.TinyModel(vocab: 258);
        Assert.Throws<ArgumentException>(() => Generator.Generate(m, [1, 2], new SamplingOptions(Temperature: double.NaN)));
        Assert.Throws<ArgumentException>(() => Generator.Generate(m, [1, 2, 300], new SamplingOptions()));   // id past the vocabulary
        Assert.Equal(3, Generator.Generate(m, [1, 2], new SamplingOptions(MaxNewTokens: 3)).Count);
    }

    [Fact]
    public void FewShotOverAFileWithOneValidRowIsRefusedNotReportedAsPerfect()
    {
        using var dir = ByteModel();
        string set = dir.Write("set.csv", "label,sentence\npositive,Profit rose sharply\nbroken row without a comma\n,\n");
        string line = EngineCli.AssertOneLineError(EngineCli.Run("eval", "-m", dir.Path, "-t", "byte", "--fewshot", set), set, "label 'positive'");
        Assert.Contains("all 1 readable examples", line);
        Assert.Contains("malformed rows skipped", line);
    }

    [Fact]
    public void FewShotNeverUsesTheQueryAsItsOwnShot()
    {
        var tok = new ByteTokenizer();
        using var m = SeedCorpus.TinyModel(vocab: 258);
        var set = new List<LabeledExample> { new("up", "a"), new("down", "b") };
        Assert.Throws<ArgumentException>(() => Evaluator.FewShot(m, tok, [set[0]], [set[0]], 3, 1));   // one label: refused
        // the pool is the test set: a draw of the query itself is dropped, the other example kept
        var rng = new Engine.Core.Rng(5);
        int others = 0;
        for (int trial = 0; trial < 200; trial++)
        {
            var shots = Evaluator.DrawShots(set, 4, rng, set[0]);
            Assert.DoesNotContain(shots, s => ReferenceEquals(s, set[0]));
            Assert.All(shots, s => Assert.Same(set[1], s));
            others += shots.Count;
        }
        Assert.InRange(others, 200, 600);            // ~half of 800 draws hit the other example
        Assert.Empty(Evaluator.DrawShots([set[0]], 3, rng, set[0]));
        Assert.Equal(2, Evaluator.FewShot(m, tok, set, set, 4, 1).Count);
    }

    [Theory]
    [InlineData("--shots", "-1", "--shots must be >= 0")]
    [InlineData("--max-examples", "0", "--max-examples must be >= 1")]
    [InlineData("--seq-len", "0", "--seq-len must be >= 1")]
    public void BadEvalArgumentsAreOneLineErrors(string option, string value, string expected)
    {
        using var dir = ByteModel();
        string set = dir.Write("set.csv", "label,sentence\npositive,up\nnegative,down\n");
        EngineCli.AssertOneLineError(EngineCli.Run("eval", "-m", dir.Path, "-t", "byte", "--fewshot", set, option, value), expected);
    }
}
