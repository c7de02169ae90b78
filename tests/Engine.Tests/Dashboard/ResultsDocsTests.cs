using Engine.Observability.Dashboard;

namespace Engine.Tests.Dashboard;

/// <summary>
/// docs/results/ is generated from benchmarks/results (`engine dashboard --docs docs/results`), never typed: the
/// committed files equal a fresh render, no table is wider than the page, and every shipped result file is linked.
/// </summary>
public class ResultsDocsTests
{
    static readonly string Docs = RepoFiles.Path("docs", "results");

    [Fact]
    public void CommittedDocsEqualAFreshRenderOfTheShippedResults()
    {
        var fresh = ResultsDocs.Render(DashboardInput.Load(RepoFiles.Path("benchmarks", "results")));
        var committed = Directory.EnumerateFiles(Docs, "*.md").Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList();
        Assert.Equal(fresh.Keys.ToList(), committed);
        foreach (var (name, text) in fresh)
            Assert.True(text == File.ReadAllText(Path.Combine(Docs, name)),
                $"docs/results/{name} differs from what benchmarks/results gives: run `engine dashboard --docs docs/results` and commit the result");
        // every result file and report is reachable from the docs
        string all = string.Concat(fresh.Values);
        foreach (string f in Directory.EnumerateFiles(RepoFiles.Path("benchmarks", "results")).Select(Path.GetFileName).OfType<string>()
                     .Where(f => f.EndsWith(".json", StringComparison.Ordinal) || f.EndsWith(".md", StringComparison.Ordinal)))
            Assert.Contains($"(../../benchmarks/results/{f})", all);
    }

    [Fact]
    public void WideTablesAreSplitLedByTheirKeyColumns()
    {
        string md = "text\n| a | b | c | d | e |\n|---|---|--:|--:|--:|\n| 1 | 2 | 3 | 4 | 5 |\nafter\n";
        Assert.Equal("text\n| a | b | c | d |\n| --- | --- | --: | --: |\n| 1 | 2 | 3 | 4 |\n\n| a | b | e |\n| --- | --- | --: |\n| 1 | 2 | 5 |\n\nafter\n",
            MarkdownTables.Split(md, 4, 2));
        Assert.Equal("text\n| a | b | c | d | e |\n| --- | --- | --: | --: | --: |\n| 1 | 2 | 3 | 4 | 5 |\n\nafter\n", MarkdownTables.Split(md, 5, 2));   // fits: one table
        foreach (string f in Directory.EnumerateFiles(Docs, "*.md"))
            foreach (string line in File.ReadLines(f).Where(l => l.StartsWith('|')))
                Assert.True(MarkdownTables.Cells(line).Length <= DashboardPage.MaxTableColumns, $"{Path.GetFileName(f)}: a row of {MarkdownTables.Cells(line).Length} columns: {line}");
    }
}
