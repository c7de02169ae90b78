using System.Text.RegularExpressions;
using Engine.Data;
using Engine.Tests.Dashboard;
using Engine.Training.Recipes;

namespace Engine.Tests.Demo;

/// <summary>The shipped data/ folder: every file in it has its licence and source listed, and everything reads from it.</summary>
public partial class DataFolderTests
{
    static string DataDir => RepoFiles.Path("data");

    /// <summary>The first column of SOURCES.md's table rows: the files it gives a licence and an origin for.</summary>
    static List<string> ListedFiles()
    {
        var listed = new List<string>();
        foreach (var line in File.ReadLines(Path.Combine(DataDir, DataPaths.SourcesFile)))
            if (TableRow().Match(line) is { Success: true } m && m.Groups[1].Value is not ("file" or "---")) listed.Add(m.Groups[1].Value.Trim());
        return listed;
    }

    [GeneratedRegex(@"^\|\s*([^|]+?)\s*\|")]
    private static partial Regex TableRow();

    [Fact]
    public void SourcesListsEveryFilePresentAndNoOther()
    {
        var present = Directory.EnumerateFiles(DataDir, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(DataDir, f).Replace('\\', '/'))
            .Where(f => f != DataPaths.SourcesFile).Order(StringComparer.Ordinal).ToList();
        var listed = ListedFiles();
        Assert.True(present.Count >= 20, $"only {present.Count} files in {DataDir}");
        Assert.Equal(listed.Distinct().Count(), listed.Count);
        Assert.Empty(present.Except(listed));     // a file without licence and source
        Assert.Empty(listed.Except(present));     // a row for a file that is not there
        foreach (var line in File.ReadLines(Path.Combine(DataDir, DataPaths.SourcesFile)).Where(l => TableRow().IsMatch(l) && !l.StartsWith("| file", StringComparison.Ordinal) && !l.StartsWith("|---", StringComparison.Ordinal)))
        {
            var cells = line.Split(" | ");
            Assert.True(cells.Length >= 6, $"row without origin, licence and readers: {line}");
            Assert.All(cells, c => Assert.False(string.IsNullOrWhiteSpace(c.Trim('|', ' ')), $"empty cell in: {line}"));
        }
    }

    [Fact]
    public void EveryShippedConfigReadsOnlyTheShippedDataFolder()
    {
        if (Environment.GetEnvironmentVariable(DataPaths.EnvironmentVariable) is { Length: > 0 } env)
            Assert.Skip($"{DataPaths.EnvironmentVariable}={env} is set: data: names resolve there, not in the repository's data/");
        string data = DataPaths.Find();
        Assert.Equal(Path.GetFullPath(DataDir), data);   // the repository's own folder (ENGINE_DATA_DIR unset in CI)
        foreach (var f in Directory.GetFiles(RepoFiles.Path("configs"), "*.toml", SearchOption.AllDirectories).Where(f => File.ReadAllText(f).Contains("[[stages]]")))
        {
            var cfg = RecipeConfig.Load(f);
            foreach (var path in cfg.Sources.Values.SelectMany(s => s.Files).Concat([cfg.Eval.FewShotFile, cfg.Eval.FewShotPool]).OfType<string>())
            {
                Assert.StartsWith(DataPaths.Prefix, path);
                string resolved = cfg.Resolve(path);
                Assert.StartsWith(data, resolved);
                Assert.True(File.Exists(resolved), $"{f}: {path} → {resolved}");
            }
        }
    }

    /// <summary>Every shipped config binds with its command's binder (a key two features read differently — a ladder's
    /// [base] table and the config-inheritance key — once made configs/ladder_finance.toml unreadable).</summary>
    [Fact]
    public void EveryShippedConfigLoadsWithItsCommandsBinder()
    {
        var files = Directory.GetFiles(RepoFiles.Path("configs"), "*.toml", SearchOption.AllDirectories).Order(StringComparer.Ordinal).ToList();
        Assert.True(files.Count >= 10, $"{files.Count} configs");
        foreach (var f in files)
        {
            string name = Path.GetFileName(f), text = File.ReadAllText(f);
            object cfg = name.StartsWith("ladder", StringComparison.Ordinal) ? Engine.Training.Scaling.LadderConfig.Load(f)
                : name.StartsWith("prepare", StringComparison.Ordinal) ? Engine.Data.Prepare.PrepareConfig.Load(f)
                : text.Contains("[[stages]]", StringComparison.Ordinal) || text.Contains("\nextends = ", StringComparison.Ordinal) ? RecipeConfig.Load(f)
                : Engine.Training.Config.TrainConfig.Load(f);
            Assert.NotNull(cfg);
        }
    }

    [Fact]
    public void NothingNamesTheOldDataFolderBesideTheCheckout()
    {
        // split so this file does not match itself: the path as text, and as Path.Combine arguments
        string[] old = ["shared" + "/data", "\"shared\"" + ", \"data\""];
        var roots = new[] { "src", "tests", "configs", "benchmarks", "tools", "docs", ".ci" }.Select(d => RepoFiles.Path(d));
        var hits = roots.Where(Directory.Exists)
            .SelectMany(r => Directory.EnumerateFiles(r, "*", SearchOption.AllDirectories))
            .Concat([RepoFiles.Path("README.md")])
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}") && !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}")
                && !f.Contains("node_modules") && Path.GetExtension(f) is ".cs" or ".toml" or ".md" or ".sh" or ".py" or ".mjs" or "")
            .Where(f => File.ReadAllText(f) is var text && old.Any(o => text.Contains(o, StringComparison.Ordinal)))
            .Select(f => Path.GetRelativePath(RepoFiles.Root, f)).ToList();
        Assert.Empty(hits);
    }
}
