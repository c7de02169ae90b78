using System.CommandLine;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Parallel;
using Engine.Parallel.Interop;

namespace Engine.Cli.Commands;

/// <summary>
/// `engine bench comm` (bus bandwidth of this process's communicator, nccl-tests' definitions, every result
/// checked) and the hidden `engine comm-selftest` (every operation against a reference; fault-injection hooks for
/// the launcher tests). Both take their world from the launch environment: `engine launch --nproc-per-node 2 --
/// bench comm` measures MPI between two CPU processes.
/// </summary>
public static class CommBenchCommand
{
    /// <summary>The communicator of this process for --device (MPI, NCCL, or one rank), with the CLI's watchdog settings.</summary>
    public static ICommunicator Communicator(string device) =>
        DistributedContext.FromEnvironment(Cli.Backend(device), Engine.Cuda.NcclCommunicator.Create);

    /// <summary>Runs <paramref name="body"/> with this process's communicator; a failed or timed-out collective is one
    /// "error: ..." line and exit code 2 (the communicator is disposed after the line is printed).</summary>
    public static int WithCommunicator(string device, Func<ICommunicator, int> body) => Cli.Guard(() =>
    {
        ICommunicator comm;
        try { comm = Communicator(device); }
        catch (CommException e) { return Fail(e); }
        try { return body(comm); }
        catch (CommException e) { return Fail(e); }
        finally { comm.Dispose(); }
    });

    static int Fail(CommException e)
    {
        Console.Error.WriteLine($"error: {e.Message}");
        return 2;
    }

    public static Command Create()
    {
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var minBytes = new Option<long>("--min-bytes") { Description = "smallest buffer in bytes", DefaultValueFactory = _ => 4 << 10 };
        var maxBytes = new Option<long>("--max-bytes") { Description = "largest buffer in bytes (sizes double)", DefaultValueFactory = _ => 64 << 20 };
        var dtype = new Option<string>("--dtype") { Description = "f32 or bf16", DefaultValueFactory = _ => "f32" };
        var iters = new Option<int?>("--iters") { Description = "timed iterations per size (default: ~256 MiB of payload, 3..100)" };
        var warmup = new Option<int>("--warmup") { Description = "untimed iterations per size", DefaultValueFactory = _ => 2 };
        var output = new Option<string?>("--out") { Description = "results folder: rank 0 writes an engine.bench/1 comm-<date>.json there ('-' prints it)", DefaultValueFactory = _ => "benchmarks/results" };
        var shared = new Option<bool>("--shared") { Description = "record that the machine was shared while measuring" };
        var cmd = new Command("comm", "bus bandwidth of all_reduce, reduce_scatter, all_gather and broadcast (nccl-tests' algbw/busbw), every result checked")
        {
            device, minBytes, maxBytes, dtype, iters, warmup, output, shared,
        };
        cmd.SetAction(parse => WithCommunicator(parse.GetValue(device)!, comm =>
        {
            var o = new CommBenchOptions
            {
                MinBytes = parse.GetValue(minBytes),
                MaxBytes = parse.GetValue(maxBytes),
                DType = parse.GetValue(dtype) switch { "f32" => DType.F32, "bf16" => DType.BF16, var d => throw new ArgumentException($"--dtype must be f32 or bf16, got '{d}'") },
                Iters = parse.GetValue(iters),
                Warmup = parse.GetValue(warmup),
            };
            if (comm.Rank == 0) Console.WriteLine($"bench comm: {comm.Kind}, {comm.WorldSize} rank(s), {comm.Backend.Name}, {o.DType}, {Environment.ProcessorCount} cores");
            var start = DateTimeOffset.UtcNow;
            var result = CommBenchmark.Run(comm, o, Console.WriteLine);
            bool ok = result["all_checks_ok"]!.GetValue<bool>();
            if (comm.Rank == 0)
            {
                bool gpu = comm.Backend is IDeviceStats;
                BenchCommand.RunSuite("comm", () => BenchCommand.CommEntries(result, gpu ? "cuda:0" : "cpu"), parse.GetValue(output), parse.GetValue(shared),
                    Console.Out, Engine.Observability.Results.MachineProbe.Describe(probeGpus: gpu), start);
                Console.WriteLine(ok ? "bench comm: every result checked OK" : "bench comm: CHECK FAILED (see the check column)");
            }
            return ok ? 0 : 1;
        }));
        return cmd;
    }

    /// <summary>Hidden `engine comm-selftest`: every collective against a reference on each rank.</summary>
    public static Command CreateSelfTest()
    {
        var device = new Option<string>("--device") { Description = "cpu", DefaultValueFactory = _ => "cpu" };
        var hangRank = new Option<int>("--hang-rank") { Description = "this rank sleeps --hang-seconds before collective #2 (watchdog test)", DefaultValueFactory = _ => -1 };
        var hangSeconds = new Option<double>("--hang-seconds") { DefaultValueFactory = _ => 600 };
        var dieRank = new Option<int>("--die-rank") { Description = "this rank kills itself (SIGKILL) before collective #2", DefaultValueFactory = _ => -1 };
        var cmd = new Command("comm-selftest", "checks every operation of this process's communicator against a reference") { device, hangRank, hangSeconds, dieRank };
        cmd.Hidden = true;
        cmd.SetAction(parse => WithCommunicator(parse.GetValue(device)!, comm =>
        {
            string library = comm is Engine.Parallel.Mpi.MpiCommunicator m ? $", {m.LibraryVersion}" : "";
            Console.WriteLine($"comm self-test: rank {comm.Rank} of {comm.WorldSize} ({comm.Kind}{library})");
            using (var t = comm.Backend.Zeros([4]))
                comm.AllReduce(t).Wait();   // collective #1: everyone is up
            if (comm.Rank == parse.GetValue(dieRank))
            {
                Console.Out.Flush();
                NativeMethods.kill(Environment.ProcessId, NativeMethods.SIGKILL);
                Thread.Sleep(Timeout.Infinite);
            }
            if (comm.Rank == parse.GetValue(hangRank)) Thread.Sleep(TimeSpan.FromSeconds(parse.GetValue(hangSeconds)));
            int checks = CommSelfTest.Run(comm);
            comm.Barrier();
            Console.WriteLine($"comm self-test: rank {comm.Rank} of {comm.WorldSize}: {checks} checks passed");
            return 0;
        }));
        return cmd;
    }
}
