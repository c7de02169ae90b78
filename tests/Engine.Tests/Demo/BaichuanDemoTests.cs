using System.CommandLine;
using System.Text.Json.Nodes;
using Engine.Cli.Commands;
using Engine.Model;
using Engine.Model.IO;
using Engine.Training.Config;
using Engine.Training.Recipes;

namespace Engine.Tests.Demo;

/// <summary>
/// The finance demo with a tiny Baichuan 2-13B-style model (configs/demo_finance_baichuan.toml, which takes everything
/// but the model from demo_finance.toml through `base`): the config binds to an ALiBi Baichuan model, and a shortened
/// run (the demo's test settings) trains and evaluates every stage and writes each in Baichuan's layout.
/// </summary>
[Collection("console")]
public class BaichuanDemoTests
{
    static string Config() => FindUp("configs/demo_finance_baichuan.toml") ?? throw new FileNotFoundException("configs/demo_finance_baichuan.toml not found above the test binary");

    static string? FindUp(string rel)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, rel))) return Path.Combine(d.FullName, rel);
        return null;
    }

    [Fact]
    public void TheShippedConfigIsTheDemoWithABaichuanAlibiModel()
    {
        var cfg = RecipeConfig.Load(Config());
        var demo = RecipeConfig.Load(Path.Combine(Path.GetDirectoryName(Config())!, "demo_finance.toml"));
        Assert.Equal(demo.Stages.Select(s => (s.Name, s.Steps, s.SeqLen)), cfg.Stages.Select(s => (s.Name, s.Steps, s.SeqLen)));
        Assert.Equal(demo.Sources.Keys.Order(), cfg.Sources.Keys.Order());
        var m = cfg.Model.ToLlamaConfig(4096);
        Assert.Equal(ModelFamily.Baichuan, m.Family);
        Assert.Equal(PositionEmbedding.Alibi, m.Position);
        Assert.Equal(m.NumHeads, m.NumKvHeads);
        Assert.NotEqual(0, m.NumHeads & (m.NumHeads - 1));   // not a power of two: the interleaved slopes
        Assert.True(m.NormHead);
        Assert.Equal(2e-4, m.MaxZLossWeight);
        Assert.Equal(demo.Model.HiddenSize, m.HiddenSize);
    }

    [Fact]
    public void BaseConfigsMergeTableByTableAndRefuseCycles()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("a.toml"), "name = \"a\"\nseed = 1\n[model]\nhidden_size = 64\nnum_layers = 2\n");
        File.WriteAllText(dir.File("b.toml"), "extends = \"a.toml\"\nname = \"b\"\n[model]\nnum_layers = 3\n");
        var tree = ConfigBinder.Load<RecipeConfig>(dir.File("b.toml"), ["model.num_heads=2"]);
        Assert.Equal("b", tree.Name);
        Assert.Equal(1UL, tree.Seed);
        Assert.Equal((64, 3, 2), (tree.Model.HiddenSize, tree.Model.NumLayers, tree.Model.NumHeads));
        File.WriteAllText(dir.File("a.toml"), "extends = \"b.toml\"\n");
        var e = Assert.Throws<ConfigException>(() => ConfigBinder.Load<RecipeConfig>(dir.File("b.toml")));
        Assert.Contains("cycle", e.Message);
        File.WriteAllText(dir.File("c.toml"), "extends = \"missing.toml\"\n");
        e = Assert.Throws<ConfigException>(() => ConfigBinder.Load<RecipeConfig>(dir.File("c.toml")));
        Assert.Contains("base config not found", e.Message);
    }

    [Fact]
    public void ShortenedBaichuanDemoRunsEveryStageAndWritesBaichuanCheckpoints()
    {
        using var dir = new TempDir();
        string outDir = dir.File("run");
        var root = new RootCommand("engine");
        root.Subcommands.Add(RecipeCommand.Create());
        string[] args = ["recipe", "--config", Config(), .. DemoReproducibilityTests.ShortDemo(outDir)[1..]];
        var (out_, err) = (new StringWriter(), new StringWriter());
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        Console.SetOut(out_);
        Console.SetError(err);
        int code;
        try { code = Engine.Cli.Cli.Run(root, args); }
        finally { Console.SetOut(oldOut); Console.SetError(oldErr); }
        Assert.True(code == 0, $"recipe exited {code}: {err}");
        var table = DemoReproducibilityTests.Table(out_.ToString());
        Assert.Equal(6, table.Count);
        foreach (var stage in new[] { "base", "naive", "mixed", "hybrid" })
        {
            string stageDir = Path.Combine(outDir, "stages", stage);
            var json = JsonNode.Parse(File.ReadAllText(Path.Combine(stageDir, ModelIO.ConfigFile)))!;
            Assert.Equal("baichuan", json["model_type"]!.GetValue<string>());
            Assert.False(json.AsObject().ContainsKey("max_position_embeddings"));   // 13B-style: ALiBi
            using var f = SafeTensorsFile.Open(Path.Combine(stageDir, ModelIO.WeightsFile));
            Assert.True(f.Contains("model.layers.0.self_attn.W_pack.weight"), $"{stage}: no W_pack");
        }
    }
}
