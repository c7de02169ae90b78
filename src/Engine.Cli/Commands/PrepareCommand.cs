using System.CommandLine;
using System.Text.RegularExpressions;
using Engine.Core.Distributed;
using Engine.Data.Prepare;

namespace Engine.Cli.Commands;

/// <summary>
/// <c>engine prepare --config file</c>: the data pipeline, with progress lines and a summary. One process runs every
/// task; under <c>engine launch</c>, mpirun or <c>srun --mpi=pmix</c> the ranks split the tasks and meet at each phase's
/// end (an MPI all-reduce); with <c>--shard i/N</c> (srun without MPI, separate jobs) rank i of N meets the others
/// through the work folder alone; <c>--phase NAME</c> runs one phase and returns (a Slurm job array per phase).
/// </summary>
public static partial class PrepareCommand
{
    /// <summary>Test hook: <c>phase:task</c> — the process kills itself (SIGKILL) after that task wrote its files, before its manifest.</summary>
    public const string KillVariable = "ENGINE_PREPARE_KILL";

    public static Command Create()
    {
        var config = new Option<FileInfo>("--config", "-c") { Description = "TOML or JSON prepare config (see configs/prepare_demo.toml)", Required = true };
        var shard = new Option<string?>("--shard") { Description = "i/N: this process is rank i of N ranks that share only the work folder (srun without MPI, a job array with --phase)" };
        var phase = new Option<string?>("--phase") { Description = $"run only this phase's tasks (of this rank) and return: {string.Join(", ", PreparePipeline.Phases)}" };
        var threads = new Option<int>("--threads") { Description = "tasks at once in this process (default: the config's threads, else cores ÷ ranks on this node)" };
        var cmd = new Command("prepare", "extract, clean, deduplicate (exact, lines, MinHash within and across sources), train/expand the tokenizer and write token shards; resumable, across ranks and nodes")
        {
            config, shard, phase, threads,
        };
        cmd.SetAction(parse => Cli.Guard(() =>
        {
            var cfg = PrepareConfig.Load(parse.GetValue(config)!.FullName);
            var info = Engine.Parallel.Launch.LaunchEnvironment.Detect();
            string? sh = parse.GetValue(shard);
            ICommunicator? comm = null;
            IPrepareGroup group = SingleGroup.Instance;
            int local = 1;
            if (sh != null)
            {
                var m = ShardPattern().Match(sh);
                if (!m.Success || !int.TryParse(m.Groups[1].Value, out int i) || !int.TryParse(m.Groups[2].Value, out int n) || n < 1 || i >= n)
                    throw new ArgumentException($"--shard must be i/N with 0 <= i < N (got '{sh}')");
                group = new FileGroup(i, n);
                local = info.LocalWorldSize;
            }
            else if (info.WorldSize > 1)
            {
                (_, comm) = Cli.Distributed("cpu");
                group = new CommPrepareGroup(comm);
                local = info.LocalWorldSize;
            }
            // one writer per output directory: the job's first rank holds the lock (shards and phases run under it)
            using var runLock = group.Rank == 0 ? Engine.Training.RunDirectoryLock.Acquire(cfg.OutputDir, null, m => Console.WriteLine($"[prepare] {m}")) : null;
            try
            {
                int t = parse.GetValue(threads);
                if (t < 0) throw new ArgumentException($"--threads must be >= 0 (got {t})");
                if (t == 0 && cfg.Threads == 0) t = Math.Max(1, Environment.ProcessorCount / Math.Max(1, local));
                var r = PreparePipeline.Run(cfg, new PrepareRunOptions
                {
                    Group = group,
                    Phase = parse.GetValue(phase),
                    Threads = t,
                    Progress = group.Rank == 0 || sh != null ? new SyncProgress(msg => Console.WriteLine($"[prepare] {msg}")) : null,
                    BeforeCommit = KillHook(),
                });
                if (r == null) { Console.WriteLine($"[prepare] phase {parse.GetValue(phase)}: this rank's tasks finished"); return 0; }
                if (group.Rank == 0) Summary(r);
                return r.Outputs.All(o => o.Valid) ? 0 : 1;
            }
            finally { comm?.Dispose(); }
        }));
        return cmd;
    }

    [GeneratedRegex(@"^(\d+)/(\d+)$")]
    private static partial Regex ShardPattern();

    static Action<string, int>? KillHook()
    {
        if (Environment.GetEnvironmentVariable(KillVariable) is not { Length: > 0 } spec) return null;
        var parts = spec.Split(':');
        string phase = parts[0];
        int task = parts.Length > 1 && int.TryParse(parts[1], out int t) ? t : 0;
        return (p, i) =>
        {
            if (p != phase || i != task) return;
            Console.Error.WriteLine($"{KillVariable}={spec}: killed after {p} task {i} wrote its files (injected fault)");
            Console.Error.Flush();
            System.Diagnostics.Process.GetCurrentProcess().Kill();   // SIGKILL: no finally blocks, no flushes
        };
    }

    static void Summary(PrepareReport r)
    {
        Console.WriteLine();
        Console.WriteLine($"{"phase",-9} {"source",-12} {"docs in",9} {"docs out",9} {"MB in",8} {"MB out",8}");
        foreach (var s in r.Stages)
            Console.WriteLine($"{s.Stage,-9} {s.Source,-12} {s.DocumentsIn,9} {s.DocumentsOut,9} {s.BytesIn / 1e6,8:F2} {s.BytesOut / 1e6,8:F2}");
        Console.WriteLine($"duplicates: {r.Dedup.Sum(d => d.ExactLocal + d.ExactGlobal)} exact, {r.Dedup.Sum(d => d.NearLocal + d.NearGlobal)} near " +
            $"({r.Dedup.Sum(d => d.NearLocalClusters + d.NearGlobalClusters)} clusters); {r.FrequentLines} frequent lines, {r.Dedup.Sum(d => d.LinesRemoved)} removed");
        Console.WriteLine($"units: {r.Units}; skipped files: {r.SkippedFiles.Count}; tokens: {r.Tokens}; vocab: {r.VocabSize}");
        Console.WriteLine($"report: {Path.Combine(r.OutputDir, "report.json")} (times and throughput per phase: timing.json)");
    }

    /// <summary>Reports on the calling thread, so lines appear in order.</summary>
    sealed class SyncProgress(Action<string> report) : IProgress<string>
    {
        readonly Lock _gate = new();
        public void Report(string value) { lock (_gate) report(value); }
    }
}

/// <summary>
/// Prepare ranks over a communicator (MPI processes, or threads in tests): a rank waits for the phase's manifests (or a
/// recorded failure) in the work folder, then the ranks agree on success with one all-reduce, so no collective is in
/// flight — and no communication timeout runs — while a long phase finishes on the slowest rank.
/// </summary>
public sealed class CommPrepareGroup(ICommunicator comm) : IPrepareGroup
{
    public int Rank => comm.Rank;
    public int Size => comm.WorldSize;

    public bool Barrier(bool ok, PhaseState phase)
    {
        bool good = ok && phase.Wait(FileGroup.Poll) == null;
        Span<double> v = [good ? 0 : 1];
        comm.AllReduce(v, ReduceOp.Max);
        return v[0] == 0;
    }
}
