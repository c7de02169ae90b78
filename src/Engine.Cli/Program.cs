using System.CommandLine;
using Engine.Cli;
using Engine.Cli.Commands;
using Spectre.Console;

// output to a file or a pipe (a log, grep, CI) is not hard-wrapped at Spectre.Console's default 80 columns: one
// summary line stays one line
if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = Cli.RedirectedWidth;

var root = new RootCommand("engine: LLM training engine (CPU reference backend, CUDA kernels) for domain adaptation");
root.Subcommands.Add(PrepareCommand.Create());
root.Subcommands.Add(TrainCommand.Create());
root.Subcommands.Add(BenchCommand.Create());
root.Subcommands.Add(RecipeCommand.Create());
root.Subcommands.Add(RecipeCommand.CreateDemo());
root.Subcommands.Add(EvalCommand.Create());
root.Subcommands.Add(EvalCommand.CreateGenerate());
root.Subcommands.Add(ParityCommand.Create());
root.Subcommands.Add(DashboardCommand.Create());
root.Subcommands.Add(ExportCommand.Create());
root.Subcommands.Add(LaunchCommand.Create());
root.Subcommands.Add(PlanCommand.Create());
root.Subcommands.Add(LadderCommand.Create());
root.Subcommands.Add(DoctorCommand.Create());
root.Subcommands.Add(CommBenchCommand.CreateSelfTest());
return Cli.Run(root, args);
