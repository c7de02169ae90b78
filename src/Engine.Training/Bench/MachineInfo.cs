using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Engine.Training.Bench;

/// <summary>What a benchmark result records about where and on what it ran.</summary>
public static class MachineInfo
{
    public static string CpuModel()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return RuntimeInformation.ProcessArchitecture.ToString();
    }

    /// <summary>HEAD of the repository containing the working directory, or "unknown".</summary>
    public static string GitCommit()
    {
        try
        {
            var psi = new ProcessStartInfo("git", "rev-parse --short HEAD") { RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = Process.Start(psi)!;
            string s = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 && s.Length > 0 ? s : "unknown";
        }
        catch (System.ComponentModel.Win32Exception) { return "unknown"; }
    }

    public static object Describe() => new
    {
        cpu = CpuModel(),
        cores = Environment.ProcessorCount,
        os = RuntimeInformation.OSDescription,
        runtime = RuntimeInformation.FrameworkDescription,
        avx512 = System.Runtime.Intrinsics.X86.Avx512F.IsSupported,
    };

    /// <summary>
    /// Environment variables that hold a peer below its best on this machine: OPENBLAS_CORETYPE pins OpenBLAS's
    /// DYNAMIC_ARCH kernels to another CPU's (Haswell = AVX2 on an AVX-512 machine) and OPENBLAS_L2_SIZE its blocking;
    /// ATEN_CPU_CAPABILITY pins PyTorch's own kernels, MKL_ENABLE_INSTRUCTIONS / ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA
    /// MKL's and oneDNN's. A peer runs as its library chooses for this CPU: these are removed from its environment
    /// alone (the engine's process keeps its own), and the result names what was removed (<see cref="UnpinNote"/>).
    /// </summary>
    public static readonly string[] PeerPins =
        ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"];

    /// <summary>Removes <see cref="PeerPins"/> from a peer's environment.</summary>
    public static void Unpin(IDictionary<string, string?> environment)
    {
        foreach (string name in PeerPins) environment.Remove(name);
    }

    /// <summary>The note a result carries about its peers' environment: which pins this machine sets and the peers ran without.</summary>
    public static string UnpinNote(string peer)
    {
        var set = PeerPins.Where(n => Environment.GetEnvironmentVariable(n) is { Length: > 0 }).Select(n => $"{n}={Environment.GetEnvironmentVariable(n)}").ToList();
        return set.Count == 0
            ? $"{peer} ran as its libraries choose for this CPU (none of {string.Join(", ", PeerPins)} is set here)"
            : $"{peer} ran at its best: {string.Join(", ", set)}, set on this machine, removed from its environment alone";
    }

    /// <summary>Runs a command, returning (exit code, stdout, stderr); a <paramref name="peer"/> runs without
    /// <see cref="PeerPins"/> in its environment.</summary>
    public static (int Code, string Out, string Err) Run(string file, string args, IDictionary<string, string>? env = null, int timeoutMs = 600_000, bool peer = false)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        if (peer) Unpin(psi.Environment);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutMs)) { p.Kill(true); return (-1, so.Result, "timed out"); }
        return (p.ExitCode, so.Result, se.Result);
    }
}
