using System.Diagnostics;
using System.Text;
using Engine.Model.IO;
using Engine.Training;

namespace Engine.Tests.Training;

/// <summary>
/// Issue 28 as an operator meets it, with `engine train` as a child process: a full disk during a checkpoint, on the
/// final weights and on metrics.jsonl, too little free space for the next save, a read-only output directory — each one
/// line on stderr naming the path, the cause, the fix and the last good checkpoint (never a stack trace), the earlier
/// checkpoints intact, and a resume in place after the fault continuing exactly. Faults come from the file layer's seam
/// (ENGINE_IO_FAULT, the errno and message the kernel gives) and, where this machine lets the test mount one, from a
/// real tmpfs of 4 MB (skipped, and counted as skipped, without root). Also: a second `engine train` on a running
/// run's directory is refused naming it, and a killed run's lock is taken over; devices and FIFOs as data are refused.
/// </summary>
public class StorageFaultProcessTests
{
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(3);

    static string Config(string dir, string name, int steps, int every, string? outDir = null, string? data = null) =>
        RestartReplayTests.Config(dir, name, steps, every, layers: 1, outDir: outDir, data: data);

    static Dictionary<string, string> Fault(string spec) => new() { [SafeIo.FaultVariable] = spec };

    /// <summary>Exactly one line on stderr, "error: …", and no trace of an unhandled exception anywhere.</summary>
    static string OneLineError(ChildEngine.Result r)
    {
        Assert.True(r.ExitCode == 2, r.All);
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(lines.Length == 1, r.All);
        Assert.StartsWith("error: ", lines[0]);
        Assert.DoesNotContain("Unhandled exception", r.All);
        Assert.DoesNotContain("   at ", r.All);
        return lines[0];
    }

    static string WeightsHash(string outDir) =>
        Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(Path.Combine(outDir, "final", ModelIO.WeightsFile))));

    [Fact]
    public async Task A_full_disk_during_a_checkpoint_is_one_line_and_a_resume_in_place_continues_exactly()
    {
        using var dir = new TempDir();
        var straight = await ChildEngine.Run(["train", "-c", Config(dir.Path, "straight", 6, 2)], Limit);
        Assert.True(straight.ExitCode == 0, straight.All);

        string cfg = Config(dir.Path, "full", 6, 2), root = Path.Combine(dir.Path, "full", "checkpoints");
        var failed = await ChildEngine.Run(["train", "-c", cfg], Limit, env: Fault("ENOSPC:.step_00000004.tmp"));
        string line = OneLineError(failed);
        Assert.StartsWith($"error: cannot write the checkpoint of step 4 under {root}: the disk is full (No space left on device : '{root}/.step_00000004.tmp/", line);
        Assert.Contains("free space on that filesystem or set output.dir to a larger disk, then resume with --resume latest", line);
        Assert.EndsWith($"last good checkpoint: {Path.Combine(root, "step_00000002")}", line);
        Checkpoints.Open(Path.Combine(root, "step_00000002"));   // intact: manifest and hashes verify

        // space freed: the run continues in place from step 2 and ends as if nothing had happened
        var resumed = await ChildEngine.Run(["train", "-c", cfg, "--resume", "latest"], Limit);
        Assert.True(resumed.ExitCode == 0, resumed.All);
        Assert.Equal(WeightsHash(Path.Combine(dir.Path, "straight")), WeightsHash(Path.Combine(dir.Path, "full")));
    }

    [Theory]
    [InlineData("ENOSPC:/final/", "the final weights", "the disk is full", "step_00000004")]
    [InlineData("ENOSPC:metrics.jsonl", "the metrics", "the disk is full", null)]
    [InlineData("EROFS:.step_00000002.tmp", "the checkpoint of step 2", "the filesystem is read-only", null)]
    [InlineData("EIO:/final/", "the final weights", "an I/O error", "step_00000004")]
    public async Task Write_failures_are_one_line_with_the_cause_and_the_last_good_checkpoint(string fault, string what, string cause, string? lastGood)
    {
        using var dir = new TempDir();
        var r = await ChildEngine.Run(["train", "-c", Config(dir.Path, "run", 5, 2)], Limit, env: Fault(fault));
        string line = OneLineError(r);
        Assert.StartsWith($"error: cannot write {what} under ", line);
        Assert.Contains($": {cause} (", line);
        Assert.EndsWith(lastGood != null ? $"last good checkpoint: {Path.Combine(dir.Path, "run", "checkpoints", lastGood)}" : "no checkpoint was saved yet", line);
    }

    [Fact]
    public async Task Too_little_free_space_refuses_a_save_before_writing_it()
    {
        using var dir = new TempDir();
        var r = await ChildEngine.Run(["train", "-c", Config(dir.Path, "run", 4, 2)], Limit, env: Fault("FREE:1000"));
        string line = OneLineError(r);
        string root = Path.Combine(dir.Path, "run", "checkpoints");
        Assert.StartsWith($"error: the checkpoint of step 2 needs about ", line);
        Assert.Contains($" under {root}, but 1 KiB are free there: free space on that filesystem or set output.dir to a larger disk", line);
        Assert.EndsWith("no checkpoint was saved yet", line);
        Assert.False(Directory.Exists(Path.Combine(root, ".step_00000002.tmp")));
    }

    [Fact]
    public async Task A_file_named_checkpoints_is_refused_before_training()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(Path.Combine(dir.Path, "run"));
        File.WriteAllText(Path.Combine(dir.Path, "run", "checkpoints"), "");
        var r = await ChildEngine.Run(["train", "-c", Config(dir.Path, "run", 4, 2)], Limit);
        Assert.Equal($"error: {Path.Combine(dir.Path, "run", "checkpoints")} is a file, but the run writes a directory there: remove or rename that file, or set output.dir to another directory", OneLineError(r));
        Assert.DoesNotContain("step ", r.Stdout);
    }

    /// <summary>A tmpfs mounted for the test (root only; skipped otherwise, and so counted).</summary>
    sealed class Tmpfs : IDisposable
    {
        public string Path { get; }

        public Tmpfs(string dir, string options)
        {
            Path = dir;
            Directory.CreateDirectory(dir);
            if (Environment.UserName != "root" && Environment.GetEnvironmentVariable("USER") != "root")
                Assert.Skip("mounting a tmpfs needs root: the fault-injection cases above cover this path");
            using var p = Process.Start(new ProcessStartInfo("mount", ["-t", "tmpfs", "-o", options, "tmpfs", dir]) { RedirectStandardError = true })!;
            string err = p.StandardError.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0) Assert.Skip($"cannot mount a tmpfs here ({err.Trim()}): the fault-injection cases above cover this path");
        }

        public void Dispose()
        {
            using var p = Process.Start("umount", ["-l", Path]);
            p.WaitForExit();
        }
    }

    /// <summary>A real 4 MB tmpfs: the first checkpoint needs more than is free (statvfs), refused before writing;
    /// filled to the last page, even the run's lock record cannot be written (ENOSPC from the kernel) — one line each.</summary>
    [Fact]
    public async Task A_real_small_tmpfs_fills_with_one_line_errors()
    {
        using var dir = new TempDir();
        using var fs = new Tmpfs(Path.Combine(dir.Path, "mnt"), "size=4m");
        string outDir = Path.Combine(fs.Path, "run");
        var r = await ChildEngine.Run(["train", "-c", Config(dir.Path, "run", 4, 2, outDir)], Limit);
        string line = OneLineError(r);
        Assert.StartsWith($"error: the checkpoint of step 2 needs about ", line);
        Assert.Contains($" under {Path.Combine(outDir, "checkpoints")}, but ", line);

        // fill every page, then start again
        Directory.Delete(outDir, recursive: true);
        using (var ballast = new FileStream(Path.Combine(fs.Path, "ballast"), FileMode.Create))
        {
            var block = new byte[4096];
            try { while (true) { ballast.Write(block); ballast.Flush(flushToDisk: true); } }
            catch (IOException e) when (e.HResult == 28) { }
        }
        var full = await ChildEngine.Run(["train", "-c", Config(dir.Path, "run", 4, 2, outDir)], Limit);
        string fullLine = OneLineError(full);
        Assert.Contains($"under {outDir}: the disk is full (No space left on device", fullLine);
    }

    [Fact]
    public async Task A_read_only_output_directory_is_one_line()
    {
        using var dir = new TempDir();
        using var fs = new Tmpfs(Path.Combine(dir.Path, "ro"), "size=1m,ro");
        var r = await ChildEngine.Run(["train", "-c", Config(dir.Path, "run", 4, 2, Path.Combine(fs.Path, "run"))], Limit);
        string line = OneLineError(r);
        Assert.StartsWith($"error: cannot write the output directory under {Path.Combine(fs.Path, "run")}: the filesystem is read-only (Read-only file system", line);
        Assert.Contains("set output.dir to a writable directory", line);
    }

    /// <summary>Two runs on one output directory: the second is refused at once naming the first (pid, host, start,
    /// command) and exits 2; the first, killed with SIGKILL, leaves a record the next run takes over.</summary>
    [Fact]
    public async Task A_second_run_on_a_running_runs_directory_is_refused_and_a_killed_runs_lock_is_taken_over()
    {
        using var dir = new TempDir();
        string cfg = Config(dir.Path, "run", 400, 0);
        string exe = Path.Combine(AppContext.BaseDirectory, "engine");
        var psi = File.Exists(exe) ? new ProcessStartInfo(exe) : new ProcessStartInfo(Environment.ProcessPath!) { ArgumentList = { Path.Combine(AppContext.BaseDirectory, "engine.dll") } };
        foreach (var a in new[] { "train", "-c", cfg }) psi.ArgumentList.Add(a);
        psi.RedirectStandardOutput = psi.RedirectStandardError = true;
        psi.Environment["TERM"] = "dumb";
        using var first = Process.Start(psi)!;
        var training = new TaskCompletionSource();
        var output = new StringBuilder();
        first.OutputDataReceived += (_, e) => { if (e.Data is { } l) { lock (output) output.AppendLine(l); if (l.Contains("step     1/", StringComparison.Ordinal)) training.TrySetResult(); } };
        first.ErrorDataReceived += (_, e) => { if (e.Data is { } l) lock (output) output.AppendLine(l); };
        first.BeginOutputReadLine();
        first.BeginErrorReadLine();
        try
        {
            await training.Task.WaitAsync(Limit, TestContext.Current.CancellationToken);
            var second = await ChildEngine.Run(["train", "-c", cfg, "--set", "optim.lr=1e-3"], Limit);
            string line = OneLineError(second);
            Assert.StartsWith($"error: {Path.Combine(dir.Path, "run")} is in use by another run: pid {first.Id} on host {Environment.MachineName}, started ", line);
            Assert.Contains($"train -c {cfg})", line);
            Assert.False(first.HasExited, output.ToString());
        }
        finally
        {
            first.Kill();   // SIGKILL: no handler runs, the lock record stays
            await first.WaitForExitAsync(CancellationToken.None);
        }
        var third = await ChildEngine.Run(["train", "-c", cfg, "--set", "train.steps=2"], Limit);
        Assert.True(third.ExitCode == 0, third.All);
        // (the console wraps long lines: compare with whitespace runs made single spaces)
        string said = System.Text.RegularExpressions.Regex.Replace(third.Stdout, @"\s+", " ");
        Assert.Contains($"took over the lock of pid {first.Id} on host {Environment.MachineName}, started ", said);
        Assert.Contains("which is no longer running", said);
    }

    [Fact]
    public async Task Devices_and_fifos_as_data_are_refused_by_name_without_reading_them()
    {
        using var dir = new TempDir();
        var zero = await ChildEngine.Run(["train", "-c", Config(dir.Path, "zero", 2, 0, data: "/dev/zero")], TimeSpan.FromMinutes(1));
        Assert.Equal("error: data file /dev/zero is a character device, not a regular file: data, configs and weights are read from regular files (a device never ends, a FIFO blocks)", OneLineError(zero));

        string fifo = Path.Combine(dir.Path, "pipe.txt");
        using (var mk = Process.Start("mkfifo", [fifo])) mk.WaitForExit();
        Assert.True(File.Exists(fifo));
        var blocked = await ChildEngine.Run(["train", "-c", Config(dir.Path, "fifo", 2, 0, data: fifo)], TimeSpan.FromMinutes(1));
        Assert.Equal($"error: data file {fifo} is a FIFO (named pipe), not a regular file: data, configs and weights are read from regular files (a device never ends, a FIFO blocks)", OneLineError(blocked));
    }
}
