using Engine.Data.Prepare;
using Engine.Training.Config;
using Engine.Training.Recipes;

namespace Engine.Fuzz.Tests;

/// <summary>
/// Run, recipe and prepare configs with the values issue 13 found crashing (stack traces, out-of-memory, a NaN/inf
/// learning rate passing validation): each is now one line naming the file and the key, at load — before any data is
/// tokenized or memory taken.
/// </summary>
[Collection("console")]
public class ConfigHostileTests
{
    const string Base = """
        [model]
        hidden_size = 32
        intermediate_size = 64
        num_layers = 1
        num_heads = 2
        max_position_embeddings = 64
        [data]
        train = ["train.txt"]
        [train]
        seq_len = 16
        batch_size = 2
        steps = 2
        [optim]
        lr = 1e-3
        [output]
        dir = "out"
        """;

    static string With(string key, string value)
    {
        var (section, name) = (key[..key.IndexOf('.')], key[(key.IndexOf('.') + 1)..]);
        var lines = Base.Split('\n').ToList();
        int at = lines.FindIndex(l => l.Trim() == $"[{section}]");
        lines.RemoveAll(l => l.TrimStart().StartsWith(name + " ", StringComparison.Ordinal) && lines.IndexOf(l) > at);
        lines.Insert(at + 1, $"{name} = {value}");
        return string.Join('\n', lines);
    }

    [Theory]
    [InlineData("model.num_heads", "0", "num_attention_heads must be positive")]
    [InlineData("model.vocab_size", "\"300\"", "config key 'model.vocab_size': expected an integer")]
    [InlineData("model.vocab_size", "1e12", "value 1000000000000 is out of range")]
    [InlineData("model.vocab_size", "2000000000", "the engine holds at most 2,147,483,647")]
    [InlineData("model.hidden_size", "1048576", "the engine holds at most 2,147,483,647")]
    [InlineData("model.num_layers", "2147483647", "the engine holds at most")]
    [InlineData("model.intermediate_size", "2147483647", "the engine holds at most")]
    [InlineData("optim.lr", "inf", "'optim.lr': Infinity is not a finite number")]
    [InlineData("optim.lr", "nan", "'optim.lr': NaN is not a finite number")]
    [InlineData("optim.lr", "1e30", "optim.lr must be positive and at most 1")]
    [InlineData("optim.lr", "\"fast\"", "'optim.lr': expected a number")]
    [InlineData("optim.beta1", "-0.5", "optim.beta1 must be in [0, 1)")]
    [InlineData("optim.eps", "0", "optim.eps must be a positive finite number")]
    [InlineData("train.seed", "-1", "'train.seed': value -1 is out of range")]
    [InlineData("train.steps", "1e300", "'train.steps': value 1E+300 is out of range")]
    [InlineData("train.z_loss", "-1", "train.z_loss must be a finite number >= 0")]
    [InlineData("output.dir", "\"a\\u0000b\"", "output.dir holds a NUL character")]
    public void HostileTrainConfigIsOneLineNamingFileAndKey(string key, string value, string expected)
    {
        using var dir = new TempDir();
        string path = dir.Write("run.toml", With(key, value));
        var e = Assert.Throws<ConfigException>(() => TrainConfig.Load(path));
        Assert.Contains(expected, e.Message);
        Assert.StartsWith(path + ": ", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void OutputDirNamingAFileIsRefusedAtLoad()
    {
        using var dir = new TempDir();
        dir.Write("out", "I am a file");
        string path = dir.Write("run.toml", Base);
        Assert.Contains("output.dir names a file", Assert.Throws<ConfigException>(() => TrainConfig.Load(path)).Message);
    }

    [Fact]
    public void JsonConfigsKeepIntegersExactAndRefuseDuplicateKeys()
    {
        using var dir = new TempDir();
        // before: every JSON number went through double, so a seed above 2^53 silently changed
        string path = dir.Write("run.json", """{"data": {"train": ["a.txt"]}, "train": {"seed": 9007199254740993}}""");
        Assert.Equal(9007199254740993UL, TrainConfig.Load(path).Train.Seed);
        dir.Write("run.json", """{"data": {"train": ["a.txt"]}, "train": {"steps": 3, "steps": 4}}""");
        var e = Assert.Throws<ConfigException>(() => TrainConfig.Load(path));
        Assert.Contains("'steps' appears twice", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void TomlWithManyErrorsIsReportedOnOneLine()
    {
        using var dir = new TempDir();
        string path = dir.Write("run.toml", "a = \"x\ny = 2\nb = \"z\n");   // Tomlyn reports each unterminated string on its own line
        var e = Assert.Throws<ConfigException>(() => TrainConfig.Load(path));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains("invalid TOML", e.Message);
        Assert.Contains("more error", e.Message);
        Assert.Equal(e.Message, e.Message.Trim());
    }

    [Fact]
    public void HostileConfigsReachTheCliAsOneLine()
    {
        using var dir = new TempDir();
        dir.Write("train.txt", "hello world\n");
        string path = dir.Write("run.toml", With("model.vocab_size", "2000000000"));
        EngineCli.AssertOneLineError(EngineCli.Run("train", "--config", path), path, "parameters");
        dir.Write("run.toml", With("model.num_heads", "0"));
        EngineCli.AssertOneLineError(EngineCli.Run("train", "--config", path), path, "num_attention_heads must be positive");
        dir.Write("run.toml", With("optim.lr", "inf"));
        EngineCli.AssertOneLineError(EngineCli.Run("train", "--config", path), path, "optim.lr");
    }

    [Fact]
    public void RecipeStageOptimIsValidatedLikeARun()
    {
        using var dir = new TempDir();
        string path = dir.Write("recipe.toml", """
            [model]
            hidden_size = 32
            intermediate_size = 64
            num_layers = 1
            num_heads = 2
            [sources.en]
            files = ["a.txt"]
            [[stages]]
            name = "base"
            weights = { en = 1.0 }
            [stages.optim]
            lr = 5.0
            """);
        var e = Assert.Throws<ConfigException>(() => RecipeConfig.Load(path));
        Assert.Contains("stages[base].optim.lr must be positive and at most 1", e.Message);
        Assert.StartsWith(path, e.Message);
    }

    [Theory]
    [InlineData("[tokenizer]\nvocab_size = 1000000000000\n", "key 'tokenizer.vocab_size' = 1000000000000 is out of range")]
    [InlineData("[dedup]\nthreshold = nan\n", "key 'dedup.threshold' must be a finite number")]
    [InlineData("seed = -5\n", "seed must be >= 0")]
    [InlineData("[dedup]\npermutations = 1000000\nbands = 1000\nrows = 1000\n", "dedup.permutations must be in [1, 4096]")]
    [InlineData("output_dir = \"a\\u0000\"\n", "holds a NUL character")]
    public void HostilePrepareConfigIsOneLine(string toml, string expected)
    {
        using var dir = new TempDir();
        string path = dir.Write("prepare.toml", toml + "\n[[sources]]\nname = \"en\"\nfiles = [\"a.txt\"]\n");
        var e = Assert.ThrowsAny<ArgumentException>(() => PrepareConfig.Load(path));
        Assert.IsType<PrepareConfigException>(e);
        Assert.Contains(expected, e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void PrepareConfigJsonReadsIntegers()
    {
        // fuzz-found: JSON numbers all became doubles, so every integer key of a JSON prepare config was "not an integer"
        using var dir = new TempDir();
        string path = dir.Write("prepare.json", """{"seed": 7, "threads": 2, "sources": [{"name": "en", "files": ["a.txt"]}], "tokenizer": {"vocab_size": 500}}""");
        var c = PrepareConfig.Load(path);
        Assert.Equal(7UL, c.Seed);
        Assert.Equal(2, c.Threads);
        Assert.Equal(500, c.Tokenizer.VocabSize);
    }
}
