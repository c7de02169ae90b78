using System.Diagnostics;
using System.Text;

namespace Engine.Parallel.Tests;

/// <summary>Runs the engine CLI (built into this test's output folder) or a launcher around it, with a time limit.</summary>
static class EngineProcess
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr, TimeSpan Elapsed)
    {
        public string All => $"exit {ExitCode} after {Elapsed.TotalSeconds:F1} s\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
    }

    /// <summary>The engine executable and its leading arguments (the apphost when present, else dotnet engine.dll).</summary>
    public static string[] Engine
    {
        get
        {
            string dir = AppContext.BaseDirectory;
            string apphost = Path.Combine(dir, "engine");
            return File.Exists(apphost) ? [apphost] : [Environment.ProcessPath!, Path.Combine(dir, "engine.dll")];
        }
    }

    /// <summary>Environment for every child: fast failure in tests, Open MPI allowed as root and yielding on a loaded machine.</summary>
    public static Dictionary<string, string?> BaseEnvironment(double commTimeoutSeconds = 120) => new()
    {
        ["ENGINE_COMM_TIMEOUT"] = commTimeoutSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["ENGINE_COMM_HEARTBEAT"] = "0.5",
        ["OMPI_ALLOW_RUN_AS_ROOT"] = "1",
        ["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1",
        ["OMPI_MCA_mpi_yield_when_idle"] = "1",
        ["TERM"] = "dumb",
    };

    public static Task<Result> Run(string file, IEnumerable<string> args, IDictionary<string, string?> env, TimeSpan limit)
    {
        var psi = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env)
        {
            if (v is null) psi.Environment.Remove(k);
            else psi.Environment[k] = v;
        }
        return Run(psi, limit);
    }

    public static Task<Result> RunEngine(IEnumerable<string> args, IDictionary<string, string?> env, TimeSpan limit) =>
        Run(Engine[0], Engine.Skip(1).Concat(args), env, limit);

    static async Task<Result> Run(ProcessStartInfo psi, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is { } l) lock (stdout) stdout.AppendLine(l); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is { } l) lock (stderr) stderr.AppendLine(l); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(limit);
        try { await p.WaitForExitAsync(cts.Token); }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync(CancellationToken.None);
            string o, e;
            lock (stdout) o = stdout.ToString();
            lock (stderr) e = stderr.ToString();
            Assert.Fail($"{psi.FileName} {string.Join(' ', psi.ArgumentList)} still running after {limit.TotalSeconds:F0} s (hang)\n--- stdout\n{o}\n--- stderr\n{e}");
        }
        p.WaitForExit();   // drains the output events
        lock (stdout) lock (stderr) return new Result(p.ExitCode, stdout.ToString(), stderr.ToString(), clock.Elapsed);
    }

    public static string? OnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    public static void RequireMpi()
    {
        if (OnPath("mpirun") is null || OnPath("ompi-server") is null || !File.Exists("/usr/lib/x86_64-linux-gnu/libmpi.so.40") && !File.Exists("/usr/lib/aarch64-linux-gnu/libmpi.so.40"))
            Assert.Skip("Open MPI is not installed (mpirun, ompi-server, libmpi.so.40): .ci/run installs openmpi-bin and libopenmpi-dev");
    }
}
