using System.Diagnostics;
using Engine.Parallel.Launch;

namespace Engine.Parallel.Tests;

/// <summary>A rank of `engine launch` ends when the launcher dies: the watch wakes on the launcher's exit (pidfd) and
/// ends the process with the fault exit code and one line (here a stand-in process plays the launcher, and the exit is
/// captured instead of taken).</summary>
public class LauncherWatchTests
{
    [Fact]
    public async Task The_watch_ends_the_rank_when_the_launcher_dies()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "the launcher watch is Linux-only (pidfd, /proc)");
        using var launcher = Process.Start(new ProcessStartInfo("sleep", ["600"]))!;
        var exited = new TaskCompletionSource<int>();
        var said = new List<string>();
        LauncherWatch.Start(launcher.Id, m => { lock (said) said.Add(m); }, code => exited.TrySetResult(code));
        Assert.False(exited.Task.IsCompleted);
        launcher.Kill();
        int code = await exited.Task.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal(CommOptions.FaultExitCode, code);
        Assert.StartsWith($"error: engine launch (pid {launcher.Id}) died: stopping this rank at once", Assert.Single(said));
    }

    [Fact]
    public async Task A_launcher_already_gone_ends_the_rank_at_once()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "the launcher watch is Linux-only (pidfd, /proc)");
        using var launcher = Process.Start(new ProcessStartInfo("true"))!;
        launcher.WaitForExit();
        var exited = new TaskCompletionSource<int>();
        LauncherWatch.Start(launcher.Id, _ => { }, code => exited.TrySetResult(code));
        Assert.Equal(CommOptions.FaultExitCode, await exited.Task.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken));
    }
}
