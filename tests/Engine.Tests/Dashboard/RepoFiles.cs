namespace Engine.Tests.Dashboard;

/// <summary>Paths in the repository the tests run from (found upwards from the test binary by Engine.sln).</summary>
static class RepoFiles
{
    public static string Root { get; } = FindRoot();

    public static string Path(params string[] parts) => System.IO.Path.Combine([Root, .. parts]);

    public static string Fixtures => Path("tests", "Engine.Tests", "Dashboard", "Fixtures", "results");

    static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(System.IO.Path.Combine(d.FullName, "Engine.sln"))) return d.FullName;
        throw new DirectoryNotFoundException($"no Engine.sln above {AppContext.BaseDirectory}");
    }
}
