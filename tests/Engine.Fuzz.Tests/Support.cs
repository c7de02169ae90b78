using System.CommandLine;
using Engine.Cli.Commands;

namespace Engine.Fuzz.Tests;

/// <summary>A fresh temporary folder removed at dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "engine-fuzz-tests-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }
    public string File(string name) => System.IO.Path.Combine(Path, name);

    public string Write(string name, string text)
    {
        System.IO.File.WriteAllText(File(name), text);
        return File(name);
    }

    public string Write(string name, byte[] bytes)
    {
        System.IO.File.WriteAllBytes(File(name), bytes);
        return File(name);
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>The engine command line in-process: exit code and stderr.</summary>
public static class EngineCli
{
    static readonly Lock ConsoleGate = new();

    public static (int Code, string Err) Run(params string[] args)
    {
        var root = new RootCommand("engine");
        root.Subcommands.Add(TrainCommand.Create());
        root.Subcommands.Add(EvalCommand.Create());
        root.Subcommands.Add(EvalCommand.CreateGenerate());
        var err = new StringWriter();
        var output = new StringWriter();
        lock (ConsoleGate)
        {
            var (oldErr, oldOut) = (Console.Error, Console.Out);
            Console.SetError(err);
            Console.SetOut(output);
            try { return (Engine.Cli.Cli.Run(root, args), err.ToString()); }
            finally { Console.SetError(oldErr); Console.SetOut(oldOut); }
        }
    }

    /// <summary>Asserts exit code 2 and exactly one stderr line starting "error:" that contains every fragment.</summary>
    public static string AssertOneLineError((int Code, string Err) r, params string[] fragments)
    {
        Assert.True(r.Code == 2, $"exit code {r.Code}, stderr: {r.Err}");
        var lines = r.Err.Trim().Split('\n');
        Assert.True(lines.Length == 1, $"expected one line, got {lines.Length}: {r.Err}");
        Assert.StartsWith("error: ", lines[0]);
        foreach (var f in fragments) Assert.Contains(f, lines[0]);
        return lines[0];
    }
}

/// <summary>Tests that write to Console run one at a time.</summary>
[CollectionDefinition("console", DisableParallelization = true)]
public sealed class ConsoleCollection;
