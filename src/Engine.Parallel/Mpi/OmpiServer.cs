using System.Diagnostics;
using Engine.Core.Distributed;
using Engine.Parallel.Interop;

namespace Engine.Parallel.Mpi;

/// <summary>
/// Open MPI's ompi-server as a child of rank 0: the PMIx server through which singleton processes (started without
/// mpirun) find each other for MPI_Comm_connect/accept. It runs under a small sh watcher that stops it when rank 0
/// ends, even by SIGKILL, so no server outlives its job.
/// </summary>
public sealed class OmpiServer : IDisposable
{
    readonly Process watcher;
    readonly string directory;

    OmpiServer(Process watcher, string directory, string uri)
    {
        this.watcher = watcher; this.directory = directory; Uri = uri;
    }

    /// <summary>The server's contact URI (the value of OMPI_MCA_pmix_server_uri for every rank).</summary>
    public string Uri { get; }

    public static OmpiServer Start(TimeSpan timeout)
    {
        string exe = FindOnPath("ompi-server") ?? throw new NotSupportedException(
            "ompi-server not found on PATH: torchrun-style CPU ranks form their MPI world through it (install Debian's openmpi-bin)");
        string dir = Directory.CreateTempSubdirectory("engine-ompi-").FullName;
        string uriFile = Path.Combine(dir, "uri");
        const string script = "\"$1\" --no-daemonize -r \"$2\" & s=$!; trap 'kill $s 2>/dev/null; wait $s; exit 0' TERM INT; " +
            "while kill -0 \"$3\" 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 1; done; kill $s 2>/dev/null; wait $s";
        var psi = new ProcessStartInfo("/bin/sh") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-c", script, "sh", exe, uriFile, Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture) })
            psi.ArgumentList.Add(a);
        if (NativeMethods.IsRoot)
        {
            psi.Environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1";
            psi.Environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1";
        }
        var p = Process.Start(psi) ?? throw new CommException("could not start ompi-server");
        var output = new System.Text.StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data is { } l) lock (output) output.AppendLine(l); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is { } l) lock (output) output.AppendLine(l); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (File.Exists(uriFile) && File.ReadAllText(uriFile).Trim() is { Length: > 0 } uri && uri.Contains("://", StringComparison.Ordinal))
                return new OmpiServer(p, dir, uri);
            if (p.HasExited || clock.Elapsed > timeout)
            {
                Stop(p);
                string text;
                lock (output) text = output.ToString().Trim();
                throw new CommException($"ompi-server did not start{(p.HasExited ? "" : $" within {timeout.TotalSeconds:F0} s")}: {(text.Length > 0 ? text : "no output")}");
            }
            Thread.Sleep(20);
        }
    }

    static string? FindOnPath(string name)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
        {
            string p = Path.Combine(dir, name);
            if (File.Exists(p)) return p;
        }
        return null;
    }

    static void Stop(Process p)
    {
        if (p.HasExited) return;
        NativeMethods.kill(p.Id, NativeMethods.SIGTERM);   // the watcher's trap stops the server
        if (!p.WaitForExit(5000)) p.Kill(entireProcessTree: true);
    }

    public void Dispose()
    {
        Stop(watcher);
        watcher.Dispose();
        try { Directory.Delete(directory, recursive: true); }
        catch (IOException) { }
    }
}
