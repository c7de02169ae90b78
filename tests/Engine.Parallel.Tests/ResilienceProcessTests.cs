using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Engine.Model.IO;

namespace Engine.Parallel.Tests;

/// <summary>
/// What survives a crash, as separate processes: SIGTERM to `engine train` saves a checkpoint at the next step boundary
/// and exits 0, and `--resume latest` then ends with the uninterrupted run's weights bit for bit; `engine launch
/// --max-restarts 1` with rank 1 killed after step 3 (ENGINE_FAULT_AT_STEP, first attempt only) restarts both ranks
/// from the step-2 checkpoint and ends with the uninterrupted 2-rank run's losses and weights. At ZeRO-3 (weights sharded,
/// each rank's slices in its checkpoint file) the same holds for SIGTERM to the launcher and for kill -9 of one rank.
/// </summary>
public class ResilienceProcessTests
{
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(4);

    static string Config(string dir, string name, int steps, int every, int zero = 0)
    {
        string path = Path.Combine(dir, name + ".toml");
        File.WriteAllText(path, $"""
            [model]
            hidden_size = 32
            intermediate_size = 64
            num_layers = 2
            num_heads = 4
            num_kv_heads = 2
            max_position_embeddings = 64
            [data]
            train = ["{Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")}"]
            valid_fraction = 0.02
            [train]
            seq_len = 32
            batch_size = 2
            steps = {steps}
            seed = 9
            log_every = 1
            eval_batches = 1
            [optim]
            lr = 3e-3
            [output]
            dir = "{Path.Combine(dir, "out_" + name)}"
            checkpoint_every = {every}
            [parallel]
            zero = {zero}
            """);
        return path;
    }

    static byte[] FinalWeights(string dir, string name) => File.ReadAllBytes(Path.Combine(dir, "out_" + name, "final", ModelIO.WeightsFile));

    static double[] Losses(string stdout) => Regex.Matches(stdout, @"step +\d+/\d+ loss (\d+\.\d+)")
        .Select(m => double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).ToArray();

    /// <summary>Runs engine with <paramref name="args"/> (a 12-step run), sends it SIGTERM once its console shows step 3,
    /// and returns its exit code and everything it printed.</summary>
    static Task<(int ExitCode, string All)> RunAndSigterm(IEnumerable<string> args) => RunAndAct(args, @"step +3/12", p =>
    {
        using var kill = Process.Start("kill", ["-TERM", p.Id.ToString(CultureInfo.InvariantCulture)])!;
        kill.WaitForExit();
    });

    /// <summary>Runs engine with <paramref name="args"/>, calls <paramref name="act"/> once a console line matches
    /// <paramref name="trigger"/>, and returns its exit code and everything it printed.</summary>
    static async Task<(int ExitCode, string All)> RunAndAct(IEnumerable<string> args, string trigger, Action<Process> act)
    {
        var psi = new ProcessStartInfo(EngineProcess.Engine[0]) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in EngineProcess.Engine.Skip(1).Concat(args)) psi.ArgumentList.Add(a);
        foreach (var (k, v) in EngineProcess.BaseEnvironment()) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        var third = new TaskCompletionSource();
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not { } l) return;
            lock (stdout) stdout.AppendLine(l);
            if (Regex.IsMatch(l, trigger)) third.TrySetResult();
        };
        p.ErrorDataReceived += (_, e) => { if (e.Data is { } l) lock (stderr) stderr.AppendLine(l); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        await third.Task.WaitAsync(Limit, TestContext.Current.CancellationToken);
        act(p);
        await p.WaitForExitAsync(TestContext.Current.CancellationToken).WaitAsync(Limit, TestContext.Current.CancellationToken);
        p.WaitForExit();
        string all;
        lock (stdout) lock (stderr) all = $"exit {p.ExitCode}\n{stdout}\n--- stderr\n{stderr}";
        return (p.ExitCode, all);
    }

    [Fact]
    public async Task Sigterm_saves_at_a_step_boundary_exits_zero_and_resume_equals_the_uninterrupted_run()
    {
        using var dir = new TempFolder();
        var straight = await EngineProcess.RunEngine(["train", "--config", Config(dir.Path, "straight", 12, 0)], EngineProcess.BaseEnvironment(), Limit);
        Assert.True(straight.ExitCode == 0, straight.All);

        string cfg = Config(dir.Path, "signalled", 12, 0);
        var (code, all) = await RunAndSigterm(["train", "--config", cfg]);
        Assert.True(code == 0, all);
        var stopped = Regex.Match(all, @"stopped after step (\d+) of 12");
        Assert.True(stopped.Success, all);
        int at = int.Parse(stopped.Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.InRange(at, 3, 11);
        Assert.True(Directory.Exists(Path.Combine(dir.Path, "out_signalled", "checkpoints", $"step_{at:D8}")), all);

        var resumed = await EngineProcess.RunEngine(["train", "--config", cfg, "--resume", "latest"], EngineProcess.BaseEnvironment(), Limit);
        Assert.True(resumed.ExitCode == 0, resumed.All);
        Assert.Contains($"at step {at}", resumed.Stdout);
        Assert.Equal(Losses(straight.Stdout).Skip(at), Losses(resumed.Stdout));
        Assert.Equal(FinalWeights(dir.Path, "straight"), FinalWeights(dir.Path, "signalled"));
    }

    /// <summary>SIGTERM to `engine launch` (as Slurm's scancel or a preemption sends it): every rank finishes the same
    /// step, the job saves one checkpoint and exits 0 within the grace period (under mpirun too, whose own SIGKILL
    /// would otherwise follow after 1 s), and a launched resume ends with the uninterrupted 2-rank run's weights.</summary>
    [Theory]
    [InlineData(false, 0)]
    [InlineData(true, 0)]   // torchrun-style children
    [InlineData(false, 3)]  // ZeRO-3: every rank saves its slices of the weights
    public async Task Sigterm_to_the_launcher_saves_every_rank_at_one_step_boundary_and_resume_equals_the_uninterrupted_run(bool spawn, int zero)
    {
        EngineProcess.RequireMpi();
        using var dir = new TempFolder();
        string[] Launch(string cfg, params string[] extra) => ["launch", "--nproc-per-node", "2",
            .. spawn ? new[] { "--spawn", "--master-port", StoreTests.FreePort().ToString(CultureInfo.InvariantCulture) } : [],
            "--", "train", "--config", cfg, .. extra];
        var straight = await EngineProcess.RunEngine(Launch(Config(dir.Path, "straight", 12, 0, zero)), EngineProcess.BaseEnvironment(), Limit);
        Assert.True(straight.ExitCode == 0, straight.All);

        string cfg = Config(dir.Path, "signalled", 12, 0, zero);
        var (code, all) = await RunAndSigterm(Launch(cfg));
        Assert.True(code == 0, all);
        var stopped = Regex.Match(all, @"stopped\s+after\s+step\s+(\d+)\s+of\s+12");
        Assert.True(stopped.Success, all);
        int at = int.Parse(stopped.Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.InRange(at, 3, 11);
        string ckpt = Path.Combine(dir.Path, "out_signalled", "checkpoints", $"step_{at:D8}");
        Assert.True(File.Exists(Path.Combine(ckpt, "manifest.json")), all);
        Assert.Equal(2, Directory.GetFiles(Path.Combine(ckpt, "optimizer")).Length);   // both ranks wrote their shard
        Assert.Equal(zero == 3, !File.Exists(Path.Combine(ckpt, ModelIO.WeightsFile)));   // ZeRO-3: the weights are in the shards

        var resumed = await EngineProcess.RunEngine(Launch(cfg, "--resume", "latest"), EngineProcess.BaseEnvironment(), Limit);
        Assert.True(resumed.ExitCode == 0, resumed.All);
        Assert.Equal(Losses(straight.Stdout).Skip(at), Losses(resumed.Stdout));
        Assert.Equal(FinalWeights(dir.Path, "straight"), FinalWeights(dir.Path, "signalled"));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]   // torchrun-style children
    public async Task Launch_restarts_every_rank_from_the_last_checkpoint_when_one_dies(bool spawn)
    {
        EngineProcess.RequireMpi();
        using var dir = new TempFolder();
        string[] Launch(string name, params string[] extra) => ["launch", "--nproc-per-node", "2",
            .. spawn ? new[] { "--spawn", "--master-port", StoreTests.FreePort().ToString(CultureInfo.InvariantCulture) } : [],
            .. extra, "--", "train", "--config", Config(dir.Path, name, 6, 2)];
        var straight = await EngineProcess.RunEngine(Launch("straight"), EngineProcess.BaseEnvironment(), Limit);
        Assert.True(straight.ExitCode == 0, straight.All);

        var env = EngineProcess.BaseEnvironment();
        env["ENGINE_FAULT_AT_STEP"] = "3";
        env["ENGINE_FAULT_RANK"] = "1";
        var faulty = await EngineProcess.RunEngine(Launch("faulty", "--max-restarts", "1"), env, Limit);
        Assert.True(faulty.ExitCode == 0, faulty.All);
        Assert.Contains("rank 1 dies after step 3 (injected fault)", faulty.Stderr);
        Assert.Contains("engine launch: restarting every rank (restart 1 of 1) from the last good checkpoint (--resume auto)", faulty.Stderr);
        // (rank 0's console lines are wrapped at the terminal width)
        Assert.True(Regex.IsMatch(faulty.Stdout, @"resuming from\s+\S*step_00000002\s+at\s+step\s+2\b"), faulty.All);
        var a = Losses(straight.Stdout);
        var b = Losses(faulty.Stdout);
        Assert.Equal(6, a.Length);
        Assert.Equal(a[^1], b[^1]);
        Assert.Equal(a.Skip(2), b.TakeLast(4));
        Assert.Equal(FinalWeights(dir.Path, "straight"), FinalWeights(dir.Path, "faulty"));

        // without restarts the launcher reports the dead rank and fails
        var env2 = EngineProcess.BaseEnvironment();
        env2["ENGINE_FAULT_AT_STEP"] = "3";
        var failed = await EngineProcess.RunEngine(Launch("nore"), env2, Limit);
        Assert.NotEqual(0, failed.ExitCode);
        Assert.Contains("rank 1", failed.Stderr);
        Assert.DoesNotContain("restarting", failed.Stderr);
    }

    /// <summary>
    /// kill -9 of one rank of a ZeRO-3 job (no handler, no flush; its slices of the weights exist only in its memory and
    /// its checkpoint files): `engine launch --max-restarts 1` restarts every rank from the last checkpoint (--resume
    /// auto), and the job ends with the uninterrupted run's losses and weights bit for bit.
    /// </summary>
    [Fact]
    public async Task Kill_nine_of_a_zero3_rank_restarts_from_the_sharded_checkpoint_and_equals_the_uninterrupted_run()
    {
        EngineProcess.RequireMpi();
        using var dir = new TempFolder();
        string[] Launch(string cfg, params string[] extra) => ["launch", "--nproc-per-node", "2", .. extra, "--", "train", "--config", cfg];
        var straight = await EngineProcess.RunEngine(Launch(Config(dir.Path, "straight", 8, 2, zero: 3)), EngineProcess.BaseEnvironment(), Limit);
        Assert.True(straight.ExitCode == 0, straight.All);

        // once step 4 is printed its checkpoint is complete on both ranks; rank 1 then dies during step 5 or 6
        string cfg = Config(dir.Path, "killed", 8, 2, zero: 3);
        int victim = -1;
        var (code, all) = await RunAndAct(Launch(cfg, "--max-restarts", "1"), @"step +4/8", _ =>
        {
            victim = RankProcess(cfg, rank: 1);
            Assert.True(victim > 0, "no process of rank 1 found");
            using var kill = Process.Start("kill", ["-KILL", victim.ToString(CultureInfo.InvariantCulture)])!;
            kill.WaitForExit();
        });
        Assert.True(code == 0, all);
        Assert.Contains("restarting every rank (restart 1 of 1)", all);
        Assert.True(Regex.IsMatch(all, @"resuming from\s+\S*step_0000000[46]\s+at\s+step\s+[46]\b"), all);
        var a = Losses(straight.Stdout);
        var b = Losses(all);
        Assert.Equal(a[^1], b[^1]);
        Assert.Equal(a.TakeLast(2), b.TakeLast(2));
        Assert.Equal(FinalWeights(dir.Path, "straight"), FinalWeights(dir.Path, "killed"));
    }

    /// <summary>The process of Open MPI rank <paramref name="rank"/> whose command line names <paramref name="marker"/>
    /// (its config file), from /proc; -1 when there is none.</summary>
    static int RankProcess(string marker, int rank)
    {
        foreach (var d in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out int pid)) continue;
            try
            {
                if (!File.ReadAllText(Path.Combine(d, "cmdline")).Contains(marker, StringComparison.Ordinal)) continue;
                if (File.ReadAllText(Path.Combine(d, "environ")).Split('\0').Contains($"OMPI_COMM_WORLD_RANK={rank}")) return pid;
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
        return -1;
    }

    sealed class TempFolder : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("engine-resilience-").FullName;
        public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
    }
}
