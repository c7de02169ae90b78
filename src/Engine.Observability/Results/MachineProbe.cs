using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace Engine.Observability.Results;

/// <summary>What a runner records about the machine and the commit: /proc, cpufreq, nvidia-smi and git, each where readable.</summary>
public static class MachineProbe
{
    /// <summary>The query whose output ParseNvidiaSmi reads (memory in MiB, clocks in MHz).</summary>
    public const string NvidiaSmiArgs = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader,nounits";

    /// <summary>CPU model, cores, max clock, OS, runtime, AVX-512, host, and the GPUs nvidia-smi lists (none when it is absent).</summary>
    public static MachineRecord Describe(bool probeGpus = true) => new()
    {
        CpuModel = CpuModel(),
        CpuId = CpuId(File.Exists("/proc/cpuinfo") ? File.ReadLines("/proc/cpuinfo").Take(64) : []),
        Cores = Environment.ProcessorCount,
        CpuMhzMax = CpuMhzMax(),
        Os = RuntimeInformation.OSDescription,
        Runtime = RuntimeInformation.FrameworkDescription,
        Avx512 = System.Runtime.Intrinsics.X86.Avx512F.IsSupported,
        Host = Environment.MachineName,
        Gpus = probeGpus && Run("nvidia-smi", NvidiaSmiArgs) is { Code: 0 } r ? ParseNvidiaSmi(r.Out) : [],
    };

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

    /// <summary>"vendor family F model M stepping S" from /proc/cpuinfo's first processor (null where it lacks them): a
    /// VM's "AMD EPYC" model name hides the generation, and SGEMM ratios against a library's kernels depend on it
    /// (family 26 is Zen 5, whose 512-bit units run AVX-512 at full width; Zen 4, family 25, splits them).</summary>
    public static string? CpuId(IEnumerable<string> cpuinfo)
    {
        string? vendor = null, family = null, model = null, stepping = null;
        try
        {
            foreach (var line in cpuinfo)
            {
                if (line.Length == 0) break;   // the first processor's block ends
                int colon = line.IndexOf(':');
                if (colon < 0) continue;
                string key = line[..colon].Trim(), value = line[(colon + 1)..].Trim();
                switch (key)
                {
                    case "vendor_id": vendor = value; break;
                    case "cpu family": family = value; break;
                    case "model": model = value; break;
                    case "stepping": stepping = value; break;
                }
            }
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
        return family == null || model == null ? null
            : $"{vendor ?? "cpu"} family {family} model {model}" + (stepping != null ? $" stepping {stepping}" : "");
    }

    static double? CpuMhzMax()
    {
        try
        {
            string s = File.ReadAllText("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").Trim();
            return double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double khz) ? khz / 1000 : null;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>One GpuRecord per line of nvidia-smi's CSV (see NvidiaSmiArgs); "[N/A]" fields stay null.</summary>
    public static IReadOnlyList<GpuRecord> ParseNvidiaSmi(string csv)
    {
        var gpus = new List<GpuRecord>();
        foreach (var raw in csv.Split('\n'))
        {
            var f = raw.Split(',').Select(x => x.Trim()).ToArray();
            if (f.Length < 2 || f[0].Length == 0) continue;
            gpus.Add(new GpuRecord
            {
                Name = f[0],
                Driver = f[1],
                MemoryBytes = Number(f, 2) is { } mib ? (long)(mib * 1024 * 1024) : null,
                SmClockMhzMax = Number(f, 3),
                MemClockMhzMax = Number(f, 4),
            });
        }
        return gpus;
    }

    static double? Number(string[] f, int i) =>
        i < f.Length && double.TryParse(f[i], NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : null;

    /// <summary>(full HEAD hash or "unknown", whether tracked files differ from HEAD or null when git is unavailable).</summary>
    public static (string Commit, bool? Dirty) Git(string? workingDirectory = null)
    {
        var head = Run("git", "rev-parse HEAD", workingDirectory);
        if (head is not { Code: 0 } h || h.Out.Trim().Length == 0) return ("unknown", null);
        var status = Run("git", "status --porcelain --untracked-files=no", workingDirectory);
        return (h.Out.Trim(), status is { Code: 0 } s ? s.Out.Trim().Length > 0 : null);
    }

    static (int Code, string Out)? Run(string file, string args, string? cwd = null)
    {
        try
        {
            var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
            if (cwd is not null) psi.WorkingDirectory = cwd;
            using var p = Process.Start(psi);
            if (p is null) return null;
            var so = p.StandardOutput.ReadToEndAsync();
            _ = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(30_000)) { p.Kill(true); return null; }
            return (p.ExitCode, so.Result);
        }
        catch (System.ComponentModel.Win32Exception) { return null; }
    }
}
