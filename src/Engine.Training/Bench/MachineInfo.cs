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

    /// <summary>Runs a command, returning (exit code, stdout, stderr).</summary>
    public static (int Code, string Out, string Err) Run(string file, string args, IDictionary<string, string>? env = null, int timeoutMs = 600_000)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {file}");
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutMs)) { p.Kill(true); return (-1, so.Result, "timed out"); }
        return (p.ExitCode, so.Result, se.Result);
    }
}
