using System.CommandLine;
using Engine.Core;
using Engine.Training.Config;

namespace Engine.Cli;

/// <summary>Shared CLI plumbing: one-line errors for user mistakes, backend selection.</summary>
public static class Cli
{
    /// <summary>The console width when output is redirected: wide enough that no line Spectre.Console writes is wrapped.</summary>
    public const int RedirectedWidth = 1 << 16;

    /// <summary>Parses and runs a command line. A mistake in the arguments themselves (an unknown option, a missing
    /// required one, a value of the wrong type) is one line on stderr naming it and where the help is, exit code 2, like
    /// every other user error; not System.CommandLine's default of the whole help text and exit 1.</summary>
    public static int Run(RootCommand root, string[] args)
    {
        try
        {
            var parse = root.Parse(args);
            if (parse.Errors.Count > 0)
            {
                string messages = string.Join("; ", parse.Errors.Select(e => e.Message.TrimEnd('.')).Distinct());
                Console.Error.WriteLine($"error: {ErrorText.OneLine(messages, 4000)} (see {CommandPath(parse.CommandResult)} --help)");
                return 2;
            }
            return parse.Invoke();
        }
        catch (Exception e) when (IsUserError(e))
        {
            Console.Error.WriteLine($"error: {ErrorText.OneLine(e.Message, 4000)}");
            return 2;
        }
    }

    /// <summary>"engine bench gemm": the command the arguments reached, from the root down.</summary>
    static string CommandPath(System.CommandLine.Parsing.CommandResult result)
    {
        var names = new List<string>();
        for (System.CommandLine.Parsing.SymbolResult? r = result; r != null; r = r.Parent)
            if (r is System.CommandLine.Parsing.CommandResult c) names.Add(c.Command is RootCommand ? "engine" : c.Command.Name);
        names.Reverse();
        return string.Join(' ', names);
    }

    /// <summary>Runs a command body, turning user errors into one line on stderr and exit code 2.</summary>
    public static int Guard(Func<int> body)
    {
        try { return body(); }
        catch (Exception e) when (IsUserError(e))
        {
            Console.Error.WriteLine($"error: {ErrorText.OneLine(e.Message, 4000)}");   // one line whatever the message holds
            return 2;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("cancelled");
            return 130;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // a write the run did not guard itself (SafeIo guards checkpoints, weights and metrics): still one line
            Console.Error.WriteLine($"error: {ErrorText.OneLine(Engine.Training.SafeIo.OneLine(e), 4000)}");
            return 2;
        }
    }

    /// <summary>
    /// Runs one rank's part of a job: an exception here is reported job-wide (<see cref="Engine.Core.Distributed.ICommunicator.Abort"/>)
    /// before it propagates, so the other ranks stop at their next watchdog tick (about a second) with this rank's
    /// message instead of waiting for it in a collective until the timeout.
    /// </summary>
    public static T OnRank<T>(Engine.Core.Distributed.ICommunicator comm, Func<T> body)
    {
        try { return body(); }
        catch (Exception e) when (comm.WorldSize > 1)
        {
            try { comm.Abort(ErrorText.OneLine(e.Message)); }
            catch (Exception) { /* the job is already going down: this rank's own error is what matters */ }
            throw;
        }
    }

    static bool IsUserError(Exception e) => e is ConfigException or FileNotFoundException or DirectoryNotFoundException
        or InvalidDataException or ArgumentException or NotSupportedException or Engine.Core.Distributed.CommException
        or DeviceOutOfMemoryException or Engine.Data.Prepare.PrepareException or StorageException;

    /// <summary>
    /// This process's place in the job and its communicator (one rank without a launcher; Open MPI under mpirun,
    /// srun --mpi=pmix or torchrun-style variables on the CPU; NCCL on CUDA, the GPU = the local rank). Rank 0 alone
    /// prints progress; a rank that is not rank 0 prefixes its own lines with "[rank N]" unless `engine launch`
    /// started it (the launcher prefixes them).
    /// </summary>
    public static (IBackend Backend, Engine.Core.Distributed.ICommunicator Comm) Distributed(string device)
    {
        var info = Engine.Parallel.Launch.LaunchEnvironment.Detect();
        if (device == "cuda" && info.WorldSize > 1) Engine.Cuda.Backend.CudaBackend.PreferDevice(info.LocalRank);
        var backend = Backend(device);
        var comm = Engine.Parallel.DistributedContext.FromEnvironment(backend, Engine.Cuda.NcclCommunicator.Create);
        if (comm.Rank != 0 && Environment.GetEnvironmentVariable(Engine.Parallel.Launch.LaunchEnvironment.LauncherVariable) != "1")
        {
            Console.SetOut(new RankPrefixWriter(Console.Out, comm.Rank));
            Console.SetError(new RankPrefixWriter(Console.Error, comm.Rank));
        }
        return (backend, comm);
    }

    /// <summary>Prefixes every line written through it with "[rank N] ".</summary>
    sealed class RankPrefixWriter(TextWriter inner, int rank) : TextWriter
    {
        bool lineStart = true;
        public override System.Text.Encoding Encoding => inner.Encoding;

        public override void Write(char value)
        {
            if (lineStart) inner.Write($"[rank {rank}] ");
            inner.Write(value);
            lineStart = value == '\n';
        }

        public override void Write(string? value)
        {
            if (string.IsNullOrEmpty(value)) return;
            foreach (char c in value) Write(c);
        }

        public override void Flush() => inner.Flush();
    }

    /// <summary>
    /// The backend for --device / train.device. "cuda" is the process-wide CudaBackend (device 0, kernels loaded once);
    /// without a usable GPU it throws NotSupportedException with the reason (no driver, no device, kernels not built).
    /// </summary>
    public static IBackend Backend(string device) => device switch
    {
        "cpu" => CpuBackend.Instance,
        "cuda" => Engine.Cuda.Backend.CudaBackend.TryGetShared(out var cuda, out string reason)
            ? cuda!
            : throw new NotSupportedException($"device 'cuda': {reason}: use device = \"cpu\""),
        _ => throw new ArgumentException($"unknown device '{device}' (cpu or cuda)"),
    };
}
