using System.CommandLine;
using Engine.Cli.Commands;

using Engine.Tests.Cli;

namespace Engine.Tests.Demo;

/// <summary>
/// `engine demo` is deterministic on a given machine and core count: a shortened demo (every stage's steps × 0.02,
/// smaller evaluation and tokenizer sample, the same code path) run twice prints the same table, timing columns aside,
/// from bit-identical tokenizers and stage weights; and it prints the whole run's progress and wall time.
/// </summary>
[Collection("console")]
public class DemoReproducibilityTests
{
    /// <summary>The shortened demo (about 40 s on 2 cores) used here and by <see cref="FreshCloneTests"/>.</summary>
    public static string[] ShortDemo(string outDir) =>
        ["demo", "--scale", "0.02", "--set", $"output.dir={outDir}", "eval.max_examples=20", "eval.perplexity_tokens=2048", "tokenizer.train_chars=300000"];

    /// <summary>The table's lines (header, rule, one row per stage).</summary>
    public static List<string> Table(string output) =>
        output.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("| ", StringComparison.Ordinal) || l.StartsWith("|---", StringComparison.Ordinal)).ToList();

    /// <summary>Every cell but the last three (train s, tokens/s, eval s: wall-clock figures).</summary>
    static List<string> WithoutTimings(List<string> table) =>
        table.Select(l => string.Join("|", l.Split('|')[..^4])).ToList();

    static (int Code, string Out, string Err) Run(string[] args) => InProcessCli.Run([RecipeCommand.CreateDemo()], args);

    [Fact]
    public void ShortenedDemoTwiceGivesTheSameTable()
    {
        using var dir = new TempDir();
        var runs = new[] { "a", "b" }.Select(name =>
        {
            var (code, output, err) = Run(ShortDemo(dir.File(name)));
            Assert.True(code == 0, $"demo exited {code}: {err}");
            return output;
        }).ToList();

        var first = Table(runs[0]);
        Assert.Equal(6, first.Count);   // header, rule, base, naive, mixed, hybrid
        foreach (var (row, stage) in first.Skip(2).Zip(new[] { "base", "naive", "mixed", "hybrid" }))
            Assert.StartsWith($"| {stage} | ", row);
        Assert.Equal(WithoutTimings(first), WithoutTimings(Table(runs[1])));

        // the same bytes underneath: the trained tokenizer and every stage's weights
        foreach (var file in new[] { "tokenizer.json" }.Concat(new[] { "base", "naive", "mixed", "hybrid" }.Select(s => Path.Combine("stages", s, "model.safetensors"))))
            Assert.True(File.ReadAllBytes(Path.Combine(dir.File("a"), file)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(dir.File("b"), file))), $"{file} differs between the two runs");

        // progress covers the whole run, not only the current stage; the wall time is printed
        Assert.Contains("all stages 100% (60/60 steps)", runs[0]);
        Assert.Contains("[naive] step ", runs[0]);
        Assert.Matches(@"all stages \d+% \(\d+/60 steps\), eta \d+:\d\d", runs[0]);
        Assert.Matches(@"wall time: \d+:\d\d", runs[0]);
    }
}
