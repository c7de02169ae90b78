using System.CommandLine;
using Engine.Parallel.Launch;

namespace Engine.Cli.Commands;

/// <summary>
/// `engine launch --nproc-per-node N [--nnodes M --node-rank K --master-addr A --master-port P] [--device cpu|cuda]
/// -- VERB ARGS`: one process per rank running the same engine binary (see <see cref="Launcher"/>).
/// </summary>
public static class LaunchCommand
{
    public static Command Create()
    {
        var nproc = new Option<int>("--nproc-per-node") { Description = "ranks on this node", Required = true };
        var nnodes = new Option<int>("--nnodes") { Description = "nodes in the job", DefaultValueFactory = _ => 1 };
        var nodeRank = new Option<int>("--node-rank") { Description = "this node's index (0 hosts the rendezvous store)", DefaultValueFactory = _ => 0 };
        var masterAddr = new Option<string>("--master-addr") { Description = "node 0's address", DefaultValueFactory = _ => "127.0.0.1" };
        var masterPort = new Option<int>("--master-port") { Description = "a free port on node 0", DefaultValueFactory = _ => 29500 };
        var device = new Option<string>("--device") { Description = "cpu (ranks under mpirun) or cuda (one child per GPU, device = local rank)", DefaultValueFactory = _ => "cpu" };
        var spawn = new Option<bool>("--spawn") { Description = "CPU ranks as children with torchrun-style variables instead of mpirun" };
        var restarts = new Option<int>("--max-restarts") { Description = "when a rank dies, restart every rank up to R times (train, recipe, demo: from the last good checkpoint, --resume auto)", DefaultValueFactory = _ => 0 };
        var termTimeout = new Option<int>("--term-timeout") { Description = "seconds a rank has after SIGTERM (to the launcher, or when another rank died) to save at a step boundary before SIGKILL", DefaultValueFactory = _ => 30 };
        var command = new Argument<string[]>("command") { Description = "the engine verb and its arguments, after --", Arity = ArgumentArity.ZeroOrMore };
        var cmd = new Command("launch", "start one process per rank (torchrun-style): rank 0's output as is, other ranks' lines prefixed [rank N]")
        {
            nproc, nnodes, nodeRank, masterAddr, masterPort, device, spawn, restarts, termTimeout, command,
        };
        cmd.SetAction(parse => Cli.Guard(() => Launcher.Run(new LaunchOptions
        {
            NprocPerNode = parse.GetValue(nproc),
            Nnodes = parse.GetValue(nnodes),
            NodeRank = parse.GetValue(nodeRank),
            MasterAddr = parse.GetValue(masterAddr)!,
            MasterPort = parse.GetValue(masterPort),
            Device = parse.GetValue(device)!,
            Spawn = parse.GetValue(spawn),
            MaxRestarts = parse.GetValue(restarts),
            TermTimeoutSeconds = parse.GetValue(termTimeout),
            Command = parse.GetValue(command) ?? [],
        }, Self(), Console.Out, Console.Error)));
        return cmd;
    }

    /// <summary>This engine binary: the apphost, or dotnet and engine.dll.</summary>
    internal static string[] Self()
    {
        string host = Environment.ProcessPath ?? throw new NotSupportedException("cannot tell which executable this is");
        return Path.GetFileNameWithoutExtension(host) == "dotnet" ? [host, Path.Combine(AppContext.BaseDirectory, "engine.dll")] : [host];
    }
}
