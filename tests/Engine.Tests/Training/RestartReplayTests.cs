using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Engine.Model.IO;
using Engine.Training;

namespace Engine.Tests.Training;

/// <summary>
/// Restart replay with real crashes: `engine train` runs as a child process and is killed with SIGKILL (no handler, no
/// flush, no cleanup), then resumed from its checkpoints.
/// <list type="bullet">
/// <item>2N = N + N: a straight 2N-step run, against a run killed after step N+2 (checkpoint at N) and resumed with
/// `--resume latest`: steps N+1..2N have identical losses, gradient norms, learning rates and token counts, bit for bit,
/// and the final weights the same SHA-256; the killed run's steps 1..N+2 equal the straight run's.</item>
/// <item>Killed during a checkpoint save (while the temporary directory is being written): the half-written directory
/// is never taken for a checkpoint, the previous checkpoint opens (manifest and SHA-256 verified), and both the explicit
/// directory and `--resume latest` continue from it, replaying the step whose save was cut off bit-exactly.</item>
/// </list>
/// (`--resume auto` is added by the resume work of issue 13 items 1-4; these tests use `latest` and explicit directories.)
/// </summary>
public class RestartReplayTests
{
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(3);

    /// <summary>A tiny train config written to DIR/NAME.toml; output in DIR/NAME unless <paramref name="outDir"/>, data
    /// the shipped tinyshakespeare unless <paramref name="data"/> (also StorageFaultProcessTests').</summary>
    internal static string Config(string dir, string name, int steps, int checkpointEvery, int hidden = 32, int layers = 2, int keep = 2,
        string? outDir = null, string? data = null)
    {
        string path = Path.Combine(dir, name + ".toml");
        File.WriteAllText(path, $"""
            [model]
            hidden_size = {hidden}
            intermediate_size = {hidden * 2}
            num_layers = {layers}
            num_heads = 4
            num_kv_heads = 2
            max_position_embeddings = 64
            [data]
            train = ["{data ?? Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")}"]
            valid_fraction = 0.02
            [train]
            seq_len = 32
            batch_size = 4
            steps = {steps}
            seed = 11
            log_every = 1
            eval_batches = 2
            [optim]
            lr = 1e-2
            weight_decay = 0.01
            [schedule]
            kind = "cosine"
            warmup_steps = 3
            min_lr = 1e-3
            [output]
            dir = "{outDir ?? Path.Combine(dir, name)}"
            checkpoint_every = {checkpointEvery}
            keep_checkpoints = {keep}
            """);
        return path;
    }

    /// <summary>One line of metrics.jsonl, the fields a replay must reproduce.</summary>
    sealed record Step(int Number, double Loss, double GradNorm, double Lr, long Tokens);

    static List<Step> Metrics(string outDir) => File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Select(l =>
    {
        var e = JsonDocument.Parse(l).RootElement;
        return new Step(e.GetProperty("step").GetInt32(), e.GetProperty("loss").GetDouble(), e.GetProperty("grad_norm").GetDouble(),
            e.GetProperty("lr").GetDouble(), e.GetProperty("tokens").GetInt64());
    }).ToList();

    /// <summary>Same step, bit-identical loss, gradient norm and learning rate, same token count.</summary>
    static void SameSteps(IReadOnlyList<Step> want, IReadOnlyList<Step> got, string what)
    {
        Assert.True(want.Count == got.Count, $"{what}: {got.Count} steps, expected {want.Count}");
        for (int i = 0; i < want.Count; i++)
        {
            var (w, g) = (want[i], got[i]);
            bool same = w.Number == g.Number && w.Tokens == g.Tokens && Bits(w.Loss) == Bits(g.Loss) && Bits(w.GradNorm) == Bits(g.GradNorm) && Bits(w.Lr) == Bits(g.Lr);
            Assert.True(same, $"{what}: step {g.Number} differs — expected {w}, got {g}");
        }
        static long Bits(double x) => BitConverter.DoubleToInt64Bits(x);
    }

    static string WeightsHash(string outDir) =>
        Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(outDir, "final", ModelIO.WeightsFile))));

    [Fact]
    public async Task TwoNStepsEqualNStepsThenKillNineThenResumeForNMore()
    {
        const int N = 10;
        using var dir = new TempDir();
        string straightOut = Path.Combine(dir.Path, "straight"), crashOut = Path.Combine(dir.Path, "crash");

        var straight = await ChildEngine.Run(["train", "-c", Config(dir.Path, "straight", 2 * N, checkpointEvery: 0)], Limit);
        Assert.True(straight.ExitCode == 0, straight.All);
        var want = Metrics(straightOut);
        Assert.Equal(Enumerable.Range(1, 2 * N), want.Select(s => s.Number));

        // killed once step N+2 is logged: the checkpoint at N is complete, steps N+1 and N+2 are lost
        string crashCfg = Config(dir.Path, "crash", 2 * N, checkpointEvery: N);
        var killed = await ChildEngine.RunAndKill(["train", "-c", crashCfg], line => line.Contains($"step {N + 2,5}/", StringComparison.Ordinal), Limit);
        Assert.True(killed.Killed, "the run finished before it could be killed: " + killed.All);
        Assert.False(Directory.Exists(Path.Combine(crashOut, "final")), "a killed run left final weights");
        var beforeKill = Metrics(crashOut);
        Assert.True(beforeKill.Count >= N + 2 && beforeKill.Count < 2 * N, $"the kill landed after {beforeKill.Count} steps, not between {N + 2} and {2 * N - 1}");
        SameSteps(want.Take(beforeKill.Count).ToList(), beforeKill, "killed run before the kill");
        Assert.EndsWith($"step_{N:D8}", Assert.Single(Checkpoints.List(Path.Combine(crashOut, "checkpoints"))));

        var resumed = await ChildEngine.Run(["train", "-c", crashCfg, "--resume", "latest"], Limit);
        Assert.True(resumed.ExitCode == 0, resumed.All);
        Assert.Contains("resuming from", resumed.Stdout);
        // on resume metrics.jsonl is cut back to the checkpoint's step, then appended to: each step appears once
        var whole = Metrics(crashOut);
        Assert.Equal(Enumerable.Range(1, 2 * N), whole.Select(s => s.Number));
        var after = whole.Where(s => s.Number > N).ToList();
        SameSteps(want.Skip(N).ToList(), after, "resumed run");
        Assert.Equal(WeightsHash(straightOut), WeightsHash(crashOut));
    }

    [Fact]
    public async Task KillNineDuringACheckpointSaveLeavesThePreviousCheckpointLoadable()
    {
        using var dir = new TempDir();
        // a ~2.6M-parameter model (10 MB of weights, 20 MB of moments, all hashed): a save long enough to be caught
        // mid-write; a checkpoint every step, keep 3. Kill as soon as a save after step 3 has started writing its
        // temporary directory; should the save finish between seeing it and the kill, run again (3 tries).
        string outDir = "", root = "", cfg = "";
        string? caught = null;
        for (int attempt = 0; attempt < 3 && caught == null; attempt++)
        {
            string name = $"run{attempt}";
            outDir = Path.Combine(dir.Path, name);
            root = Path.Combine(outDir, "checkpoints");
            cfg = Config(dir.Path, name, steps: 40, checkpointEvery: 1, hidden: 256, layers: 4, keep: 3);
            string? seen = null;
            var killed = await ChildEngine.RunAndKill(["train", "-c", cfg], null, Limit, poll: () =>
            {
                if (!Directory.Exists(root)) return false;
                foreach (var tmp in Directory.GetDirectories(root, ".step_*.tmp"))
                    if (string.CompareOrdinal(Path.GetFileName(tmp), ".step_00000004.tmp") >= 0
                        && Directory.EnumerateFiles(tmp, "*", SearchOption.AllDirectories).Any())
                    {
                        seen = tmp;
                        return true;
                    }
                return false;
            });
            Assert.True(killed.Killed && seen != null, "the run finished before a save could be caught: " + killed.All);
            if (Directory.Exists(seen)) caught = seen;   // else the save completed (renamed) before the kill
        }
        Assert.True(caught != null, "three kills all landed after the save they aimed at had completed");
        int cutStep = int.Parse(Path.GetFileName(caught)[6..14], System.Globalization.CultureInfo.InvariantCulture);

        // the half-written directory is not a checkpoint; the newest one is the step before, and it verifies
        var list = Checkpoints.List(root);
        Assert.DoesNotContain(list, d => d.Contains(".tmp", StringComparison.Ordinal));
        string previous = list[^1];
        Assert.EndsWith($"step_{cutStep - 1:D8}", previous);
        var opened = Checkpoints.Open(previous);
        Assert.Equal(cutStep - 1, opened.State.Step);
        using (var model = opened.LoadModel(Engine.Core.CpuBackend.Instance))
            Assert.True(model.ParameterCount > 2_000_000);
        var killedRun = Metrics(outDir);
        var cutStepMetrics = killedRun.Single(s => s.Number == cutStep);   // logged before its save was cut off

        // an explicit directory and `latest` both continue from it; the replayed step is bit-identical
        foreach (var spec in new[] { previous, "latest" })
        {
            string resumeCfg = Config(dir.Path, Path.GetFileName(outDir), steps: cutStep + 1, checkpointEvery: 0, hidden: 256, layers: 4);
            var resumed = await ChildEngine.Run(["train", "-c", resumeCfg, "--resume", spec], Limit);
            Assert.True(resumed.ExitCode == 0, $"--resume {spec}: " + resumed.All);
            Assert.Contains("resuming from", resumed.Stdout);
            // metrics.jsonl is cut back to the checkpoint's step on resume: the replayed steps appear once each
            var all = Metrics(outDir);
            Assert.Equal(Enumerable.Range(1, cutStep + 1), all.Select(s => s.Number));
            var replay = all.Where(s => s.Number >= cutStep).ToList();
            SameSteps([cutStepMetrics], replay.Take(1).ToList(), $"--resume {spec}, the step whose save was cut off");
        }
    }
}

/// <summary>The engine CLI (built into this test's output folder) as a child process, with a time limit.</summary>
static class ChildEngine
{
    public sealed record Result(int ExitCode, bool Killed, string Stdout, string Stderr)
    {
        public string All => $"exit {ExitCode}{(Killed ? " (killed)" : "")}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
    }

    static ProcessStartInfo Start(IEnumerable<string> args, string? workingDirectory = null, IReadOnlyDictionary<string, string>? env = null)
    {
        string dir = AppContext.BaseDirectory, apphost = Path.Combine(dir, "engine");
        var psi = File.Exists(apphost) ? new ProcessStartInfo(apphost) : new ProcessStartInfo(Environment.ProcessPath!) { ArgumentList = { Path.Combine(dir, "engine.dll") } };
        psi.UseShellExecute = false;
        psi.RedirectStandardOutput = psi.RedirectStandardError = true;
        psi.Environment["TERM"] = "dumb";
        if (workingDirectory != null) psi.WorkingDirectory = workingDirectory;
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }

    public static Task<Result> Run(IEnumerable<string> args, TimeSpan limit, string? workingDirectory = null, IReadOnlyDictionary<string, string>? env = null) =>
        RunAndKill(args, null, limit, workingDirectory: workingDirectory, env: env);

    /// <summary>
    /// Runs the engine; the first stdout line for which <paramref name="killOn"/> holds, or the first time
    /// <paramref name="poll"/> (called every millisecond or so) does, kills it with SIGKILL at once.
    /// </summary>
    public static async Task<Result> RunAndKill(IEnumerable<string> args, Func<string, bool>? killOn, TimeSpan limit, Func<bool>? poll = null,
        string? workingDirectory = null, IReadOnlyDictionary<string, string>? env = null)
    {
        var psi = Start(args, workingDirectory, env);
        using var p = Process.Start(psi)!;
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        bool killed = false;
        void Kill()
        {
            lock (stdout)
            {
                if (killed) return;
                try { p.Kill(); killed = true; }   // SIGKILL on Unix; the child itself only, it has none of its own
                catch (InvalidOperationException) { }   // already exited
            }
        }
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not { } l) return;
            lock (stdout) stdout.AppendLine(l);
            if (killOn?.Invoke(l) == true) Kill();
        };
        p.ErrorDataReceived += (_, e) => { if (e.Data is { } l) lock (stderr) stderr.AppendLine(l); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var clock = Stopwatch.StartNew();
        while (!p.HasExited)
        {
            if (poll != null && poll()) Kill();
            if (clock.Elapsed > limit)
            {
                p.Kill();
                await p.WaitForExitAsync(CancellationToken.None);
                Assert.Fail($"engine {string.Join(' ', psi.ArgumentList)} still running after {limit.TotalSeconds:F0} s\n{stdout}\n{stderr}");
            }
            await Task.Delay(poll != null ? 1 : 20, TestContext.Current.CancellationToken);
        }
        p.WaitForExit();   // drains the output events
        lock (stdout) lock (stderr) return new Result(p.ExitCode, killed, stdout.ToString(), stderr.ToString());
    }
}
