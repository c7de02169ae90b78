using System.CommandLine;

namespace Engine.Tests.Cli;

/// <summary>`engine VERB ARGS` run in this process with the given commands: exit code, stdout, stderr. The console is
/// process-wide, so its callers belong to the "console" collection.</summary>
internal static class InProcessCli
{
    public static (int Code, string Out, string Err) Run(IEnumerable<Command> commands, string[] args)
    {
        var root = new RootCommand("engine");
        foreach (var c in commands) root.Subcommands.Add(c);
        var (output, err) = (new StringWriter(), new StringWriter());
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        Console.SetOut(output);
        Console.SetError(err);
        try { return (Engine.Cli.Cli.Run(root, args), output.ToString(), err.ToString()); }
        finally
        {
            Console.SetOut(oldOut);
            Console.SetError(oldErr);
        }
    }
}
