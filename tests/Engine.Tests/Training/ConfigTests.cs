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

    [Theory]
    [InlineData("", Engine.Model.RecomputeMode.None)]
    [InlineData("checkpoint_activations = true\n", Engine.Model.RecomputeMode.Full)]
    [InlineData("recompute = \"selective\"\n", Engine.Model.RecomputeMode.Selective)]
    [InlineData("recompute = \"full\"\ncheckpoint_activations = true\n", Engine.Model.RecomputeMode.Full)]
    [InlineData("recompute = \"none\"\n", Engine.Model.RecomputeMode.None)]
    public void RecomputeComesFromItsKeyOrTheOlderSwitch(string keys, Engine.Model.RecomputeMode expected) =>
        Assert.Equal(expected, Engine.Training.Run.RunLayout.From(new Engine.Training.Parallel.ParallelSection(), LoadText(Good.Replace("[model]\n", "[model]\n" + keys)).Model).Mode);

    [Theory]
    [InlineData("recompute = \"some\"\n", "model.recompute must be \"none\", \"full\" or \"selective\" (got \"some\")")]
    [InlineData("recompute = \"selective\"\ncheckpoint_activations = true\n", "model.checkpoint_activations = true (full recompute) contradicts model.recompute = \"selective\"")]
    public void BadRecomputeKeysAreRefusedByName(string keys, string expected) =>
        Assert.Contains(expected, Assert.Throws<ConfigException>(() => LoadText(Good.Replace("[model]\n", "[model]\n" + keys))).Message);

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
    public void SetPathsAreRelativeToTheWorkingDirectoryAndFilePathsToTheFile()
    {
        using var dir = new TempDir();
        string cfgDir = dir.File("configs"), cwd = dir.File("here");
        Directory.CreateDirectory(cfgDir);
        string path = System.IO.Path.Combine(cfgDir, "c.toml");
        File.WriteAllText(path, Good + "\n[output]\ndir = \"runs/x\"\n");
        // in the file: the file's folder
        var c = TrainConfig.Load(path, [], workingDirectory: cwd);
        Assert.Equal(System.IO.Path.Combine(cfgDir, "runs/x"), c.Resolve(c.Output.Dir));
        Assert.Equal(System.IO.Path.Combine(cfgDir, "a.txt"), c.Resolve(c.Data.Train[0]));
        // on the command line: the working directory; names, data: names and absolute paths stay as they are
        c = TrainConfig.Load(path, ["output.dir=runs/y", "data.train=[\"b.txt\", \"data:general_en/x.txt\", \"/abs/c.txt\"]", "data.tokenizer=byte", "model.init_from=../m"], workingDirectory: cwd);
        Assert.Equal(System.IO.Path.Combine(cwd, "runs/y"), c.Resolve(c.Output.Dir));
        Assert.Equal([System.IO.Path.Combine(cwd, "b.txt"), "data:general_en/x.txt", "/abs/c.txt"], c.Data.Train);
        Assert.Equal("byte", c.Data.Tokenizer);
        Assert.Equal(System.IO.Path.Combine(dir.Path, "m"), c.Model.InitFrom);
        c = TrainConfig.Load(path, ["data.tokenizer=tok/tokenizer.json", "train.device=cpu"], workingDirectory: cwd);
        Assert.Equal(System.IO.Path.Combine(cwd, "tok/tokenizer.json"), c.Data.Tokenizer);
        Assert.Equal("cpu", c.Train.Device);   // not a path key: untouched

        // a recipe: named sections' files, eval files; a stage or alignment policy name is a name, a directory a path
        string recipe = System.IO.Path.Combine(cfgDir, "r.toml");
        File.WriteAllText(recipe, """
            [sources.fin]
            kind = "instruct"
            files = ["fin.txt"]
            [[stages]]
            name = "s1"
            weights = { fin = 1.0 }
            [alignment]
            policy = "s1"
            sources = ["fin"]
            """);
        var r = Engine.Training.Recipes.RecipeConfig.Load(recipe, ["sources.fin.files=[\"mine.txt\"]", "eval.few_shot_file=fs.csv", "output.dir=out", "alignment.policy=s1",
            "alignment.compare=[\"s1\", \"models/other\"]"], workingDirectory: cwd);
        Assert.Equal([System.IO.Path.Combine(cwd, "mine.txt")], r.Sources["fin"].Files);
        Assert.Equal(System.IO.Path.Combine(cwd, "fs.csv"), r.Eval.FewShotFile);
        Assert.Equal(System.IO.Path.Combine(cwd, "out"), r.Resolve(r.Output.Dir));
        Assert.Equal("s1", r.Alignment!.Policy);
        Assert.Equal(["s1", System.IO.Path.Combine(cwd, "models/other")], r.Alignment.Compare);
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
        var layout = new Engine.Training.Run.RunLayout(new Engine.Training.Parallel.ParallelSection());
        var e = Assert.Throws<ConfigException>(() => Engine.Training.Run.FitCheck.Require(big, layout, layout.Plan(1, 8, 1, 2048), gpu: false, availableBytes: 24L << 30));
        Assert.Contains("does not fit", e.Message);
    }
}
