using System.Diagnostics;
using System.Text;
using Engine.Data;
using Engine.Tests.Dashboard;

namespace Engine.Tests.Demo;

/// <summary>
/// The README's two set-up commands, read from its "Set-up" block, in a fresh `git clone` of this repository's last
/// commit, in a temporary folder with no ../shared beside it and ENGINE_DATA_DIR unset: the first (publish `engine`
/// into bin/, put it on the PATH, `engine demo` — shortened by <see cref="DemoReproducibilityTests.ShortDemo"/>: the
/// same code path) prints the table; the second is the test command `.ci/run` runs, here on the data tests (which read
/// every shipped file, started from outside the clone). Builds the clone: a few minutes on 2 cores. Uncommitted
/// changes are not in the clone: this checks what a user would clone.
/// </summary>
public class FreshCloneTests
{
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(15);

    /// <summary>The command lines of the README's set-up block (comments after '#' and blank lines dropped).</summary>
    public static List<string> SetupCommands()
    {
        string readme = File.ReadAllText(RepoFiles.Path("README.md"));
        var block = System.Text.RegularExpressions.Regex.Match(readme, @"\n## [^\n]*Set-up[^\n]*\n[\s\S]*?```bash\n([\s\S]*?)```");
        Assert.True(block.Success, "README.md has no ```bash block under a \"Set-up\" heading");
        return block.Groups[1].Value.Split('\n').Select(l => (l.Contains(" #", StringComparison.Ordinal) ? l[..l.IndexOf(" #", StringComparison.Ordinal)] : l).Trim())
            .Where(l => l.Length > 0 && !l.StartsWith('#')).ToList();
    }

    [Fact]
    public void TheReadmeHasTwoSetupCommandsAndCiRunsItsTestCommand()
    {
        var commands = SetupCommands();
        Assert.Equal(2, commands.Count);
        Assert.StartsWith("git clone ", commands[0]);
        Assert.EndsWith("&& engine demo", commands[0]);                            // the demo, on the CPU default
        Assert.Contains("export PATH=", commands[0]);                              // `engine` on the PATH
        Assert.Equal("dotnet test Engine.sln -c Release", commands[1]);
        Assert.Contains("\n" + commands[1] + " ", File.ReadAllText(RepoFiles.Path(".ci", "run")));   // CI runs the README's test command
    }

    [Fact]
    public void ReadmeCommandsWorkInAFreshCloneWithoutSharedData()
    {
        string root = RepoFiles.Root;
        if (!Directory.Exists(Path.Combine(root, ".git")) && !File.Exists(Path.Combine(root, ".git")))
            Assert.Skip($"{root} is not a git checkout: nothing to clone");
        if (Which("git") is null) Assert.Skip("git is not installed: the fresh-clone check needs it");
        var commands = SetupCommands();
        // the first command after its `git clone … && cd engine`, which the test does itself
        var steps = commands[0].Split(" && ").ToList();
        Assert.True(steps.Count >= 3 && steps[0].StartsWith("git clone ", StringComparison.Ordinal) && steps[1].StartsWith("cd ", StringComparison.Ordinal), commands[0]);

        string tmp = Path.Combine(Path.GetTempPath(), "engine-fresh-clone-" + Guid.NewGuid().ToString("N")[..12]);
        string clone = Path.Combine(tmp, "engine");
        Directory.CreateDirectory(tmp);
        try
        {
            Run("git", ["clone", "--quiet", "--no-hardlinks", root, clone], tmp);
            Assert.False(Directory.Exists(Path.Combine(tmp, "shared")));
            Assert.True(File.Exists(Path.Combine(clone, "data", DataPaths.SourcesFile)), "the clone has no data/SOURCES.md");

            // 1. the demo, from the clone's root as the README says (the demo shortened, its output outside the clone)
            string runs = Path.Combine(tmp, "runs");
            string shortDemo = string.Join(' ', DemoReproducibilityTests.ShortDemo(runs).Skip(1).Select(a => $"'{a}'"));
            string demo = Run("bash", ["-c", string.Join(" && ", steps.Skip(2)) + " " + shortDemo], clone);
            var table = DemoReproducibilityTests.Table(demo);
            Assert.True(table.Count == 6, $"expected the 4-stage table in the output:\n{Tail(demo)}");
            Assert.StartsWith("| model | init | ppl finance | ppl general |", table[0]);
            Assert.StartsWith("| hybrid | base | ", table[5]);
            Assert.Contains($"data: names resolve under {Path.Combine(clone, "data")}", demo);   // the clone's own data/
            Assert.True(File.Exists(Path.Combine(runs, "report.md")) && File.Exists(Path.Combine(runs, "stages", "hybrid", "model.safetensors")));

            // 2. the tests that read every shipped file, started from outside the clone
            string tests = Run("dotnet", ["test", Path.Combine(clone, "tests", "Engine.Data.Tests", "Engine.Data.Tests.csproj"), "-c", "Release",
                "--filter", "FullyQualifiedName~DocumentsTests.Every_shipped_file|FullyQualifiedName~DataFileTests"], tmp);
            Assert.Contains("Passed!", tests);
            Assert.DoesNotContain("Skipped: 1", tests);
        }
        finally
        {
            try { Directory.Delete(tmp, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>Runs a command to completion (killed with its children past <see cref="Limit"/>); its output, or a failure showing it.</summary>
    static string Run(string file, string[] args, string cwd)
    {
        var psi = new ProcessStartInfo(file) { WorkingDirectory = cwd, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        // a user's shell: no data folder override, no MSBuild/VSTest state of the test run this test is part of
        foreach (var key in psi.Environment.Keys.ToList())
            if (key == DataPaths.EnvironmentVariable || key.StartsWith("MSBUILD", StringComparison.OrdinalIgnoreCase) || key.StartsWith("VSTEST", StringComparison.OrdinalIgnoreCase)
                || key.StartsWith("TESTINGPLATFORM", StringComparison.OrdinalIgnoreCase) || key == "DOTNET_HOST_PATH")
                psi.Environment.Remove(key);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment["UseSharedCompilation"] = "false";          // no compiler server left running after the test
        psi.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        psi.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] = "0";
        using var p = Process.Start(psi)!;
        var output = new StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (!p.WaitForExit(Limit))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', args)} ran past {Limit}:\n{Tail(output.ToString())}");
        }
        p.WaitForExit();
        string text;
        lock (output) text = output.ToString();
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)} (in {cwd}) exited {p.ExitCode}:\n{Tail(text)}");
        return text;
    }

    static string Tail(string s) => s.Length > 4000 ? s[^4000..] : s;

    static string? Which(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);
}
