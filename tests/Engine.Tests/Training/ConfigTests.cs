using Engine.Training.Config;

namespace Engine.Tests.Training;

public class ConfigTests
{
    const string Good = """
        [model]
        hidden_size = 32
        intermediate_size = 64
        num_layers = 1
        num_heads = 4
        [data]
        train = ["a.txt"]
        [train]
        seq_len = 16
        steps = 3
        [schedule]
        kind = "constant"
        """;

    static TrainConfig LoadText(string text, string ext = ".toml", params string[] overrides)
    {
        using var dir = new TempDir();
        var p = dir.File("c" + ext);
        File.WriteAllText(p, text);
        return TrainConfig.Load(p, overrides);
    }

    [Fact]
    public void TomlBindsIntoTypedSections()
    {
        var c = LoadText(Good);
        Assert.Equal(32, c.Model.HiddenSize);
        Assert.Equal(["a.txt"], c.Data.Train);
        Assert.Equal(Engine.Training.ScheduleKind.Constant, c.Schedule.Kind);
        Assert.Equal(3, c.Train.Steps);
    }

    [Fact]
    public void JsonWorksToo()
    {
        var c = LoadText("""{"model": {"hidden_size": 48, "num_heads": 4}, "data": {"train": ["x.txt"]}, "train": {"steps": 7}}""", ".json");
        Assert.Equal(48, c.Model.HiddenSize);
        Assert.Equal(7, c.Train.Steps);
    }

    [Theory]
    [InlineData("[train]\nstepz = 3\n", "unknown config key 'train.stepz'")]
    [InlineData("[trian]\nsteps = 3\n", "unknown config key 'trian'")]
    [InlineData("[train]\nsteps = \"many\"\n", "config key 'train.steps': expected an integer")]
    [InlineData("[train]\nsteps = -1\n[data]\ntrain=[\"a\"]\n", "train.steps must be positive")]
    [InlineData("[schedule]\nkind = \"zigzag\"\n", "config key 'schedule.kind': expected one of cosine, constant, linear")]
    [InlineData("[data]\ntrain = []\n", "data.train must name at least one")]
    [InlineData("[model\n", "invalid TOML")]
    public void BadConfigsNameTheKey(string text, string expected)
    {
        var e = Assert.Throws<ConfigException>(() => LoadText(text.Contains("[data]") ? text : text + "[data]\ntrain=[\"a\"]\n"));
        Assert.Contains(expected, e.Message);
    }

    /// <summary>TOML forbids defining a key or a table twice (JSON's duplicates are refused too); the deserializer would
    /// let the last one win silently, so the file is validated first and the error names line and column.</summary>
    [Theory]
    [InlineData("[train]\nsteps = 3\nsteps = 4\n", "line 3, column 1")]
    [InlineData("[train]\nsteps = 3\n[optim]\nlr = 1e-3\n[train]\nseed = 2\n", "line 5, column 1")]
    [InlineData("[optim]\nlr = 1e-3\n[optim.x]\na = 1\n[optim]\nlr = 2e-3\n", "line 5, column 1")]
    [InlineData("[train]\nsteps = 3\n[data]\ntrain = [\"a\"]\ntrain = [\"b\"]\n", "line 5, column 1")]
    public void DuplicateKeysAndTablesAreRefusedWithLineAndColumn(string text, string where)
    {
        var e = Assert.Throws<ConfigException>(() => LoadText(text.Contains("[data]") ? text : text + "[data]\ntrain=[\"a\"]\n"));
        Assert.Contains("invalid TOML", e.Message);
        Assert.Contains(where, e.Message);
        Assert.Contains("already defined", e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public void OverridesApplyBeforeValidation()
    {
        var c = LoadText(Good, ".toml", "train.steps=11", "optim.lr=0.5", "train.device=cpu");
        Assert.Equal(11, c.Train.Steps);
        Assert.Equal(0.5, c.Optim.Lr);
        var e = Assert.Throws<ConfigException>(() => LoadText(Good, ".toml", "train.bogus=1"));
        Assert.Contains("train.bogus", e.Message);
    }

    [Fact]
    public void MissingConfigFileIsNamed()
    {
        var e = Assert.Throws<ConfigException>(() => TrainConfig.Load("/nonexistent/run.toml"));
        Assert.Contains("/nonexistent/run.toml", e.Message);
    }

    [Fact]
    public void ScheduleWarmsUpThenDecaysToTheFloor()
    {
        var s = new Engine.Training.ScheduleOptions { Kind = Engine.Training.ScheduleKind.Cosine, WarmupSteps = 10, MinLr = 1e-5 };
        Assert.Equal(1.2e-4 / 10, Engine.Training.Schedule.LearningRate(s, 1.2e-4, 0, 100), 12);
        Assert.Equal(1.2e-4, Engine.Training.Schedule.LearningRate(s, 1.2e-4, 9, 100), 12);
        Assert.Equal(1e-5, Engine.Training.Schedule.LearningRate(s, 1.2e-4, 100, 100), 12);
        double mid = Engine.Training.Schedule.LearningRate(s, 1.2e-4, 55, 100);
        Assert.Equal(1e-5 + (1.2e-4 - 1e-5) * 0.5, mid, 12);
        var c = new Engine.Training.ScheduleOptions { Kind = Engine.Training.ScheduleKind.Constant };
        Assert.Equal(2e-5, Engine.Training.Schedule.LearningRate(c, 2e-5, 77, 100));
    }

    [Fact]
    public void ModelThatDoesNotFitIsRefused()
    {
        var big = new Engine.Model.LlamaConfig { VocabSize = 32000, HiddenSize = 4096, IntermediateSize = 11008, NumLayers = 32, NumHeads = 32, NumKvHeads = 32 };
        var e = Assert.Throws<ConfigException>(() => Engine.Training.Trainer.CheckFits(big, new Engine.Training.Planning.PlanLayout(1, 1, 0, 8, 1, 2048, false), availableBytes: 24L << 30));
        Assert.Contains("does not fit", e.Message);
    }
}
