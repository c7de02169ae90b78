using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace Engine.Cuda.Tests.Reference;

/// <summary>One kernel's machine code for one architecture, as cuobjdump reports it.</summary>
public sealed record SassFunction(string File, string Name, string Arch, int Registers, int Stack, int Shared, int Local, IReadOnlySet<string> Opcodes)
{
    /// <summary>Any opcode whose name (without modifiers) is <paramref name="op"/>, e.g. HMMA for HMMA.16816.F32.BF16.</summary>
    public bool Has(string op) => Opcodes.Any(o => o == op || o.StartsWith(op + ".", StringComparison.Ordinal));
    /// <summary>A 16-byte global access: LDG.E.128 / STG.E.128 (any cache modifiers).</summary>
    public bool HasWide(string op) => Opcodes.Any(o => o.StartsWith(op + ".", StringComparison.Ordinal) && o.EndsWith(".128", StringComparison.Ordinal));
}

/// <summary>
/// The CUDA toolchain on PATH (Debian's nvcc 11.8 + cuobjdump in CI) and what it reads out of the fatbins: resource
/// usage (`cuobjdump -res-usage`) and the opcodes of every function (`cuobjdump -sass`), per architecture.
/// </summary>
public static partial class Sass
{
    public static string? Find(string tool)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries).Append("/usr/local/cuda/bin"))
            if (System.IO.File.Exists(Path.Combine(dir, tool))) return Path.Combine(dir, tool);
        return null;
    }

    public static string Run(string exe, params string[] args)
    {
        var psi = new ProcessStartInfo(exe, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{exe} {string.Join(' ', args)}: exit {p.ExitCode}\n{err.Result}");
        return output;
    }

    /// <summary>"11.8" from `nvcc --version`.</summary>
    public static string NvccVersion(string nvcc) => ReleaseRegex().Match(Run(nvcc, "--version")) is { Success: true } m ? m.Groups[1].Value : "unknown";

    /// <summary>Every function of every ELF (cubin) in <paramref name="fatbin"/>.</summary>
    public static List<SassFunction> Read(string cuobjdump, string fatbin)
    {
        string file = Path.GetFileNameWithoutExtension(fatbin);
        var usage = new Dictionary<(string Arch, string Name), int[]>();
        string arch = "";
        string? fn = null;
        foreach (var line in Run(cuobjdump, "-res-usage", fatbin).Split('\n'))
        {
            if (ArchRegex().Match(line) is { Success: true } a) arch = a.Groups[1].Value;
            else if (UsageFunctionRegex().Match(line) is { Success: true } f) fn = f.Groups[1].Value;
            else if (fn != null && UsageRegex().Match(line) is { Success: true } u)
            {
                usage[(arch, fn)] = [int.Parse(u.Groups[1].Value), int.Parse(u.Groups[2].Value), int.Parse(u.Groups[3].Value), int.Parse(u.Groups[4].Value)];
                fn = null;
            }
        }
        var ops = new Dictionary<(string Arch, string Name), HashSet<string>>();
        HashSet<string>? current = null;
        foreach (var line in Run(cuobjdump, "-sass", fatbin).Split('\n'))
        {
            if (ArchRegex().Match(line) is { Success: true } a) { arch = a.Groups[1].Value; current = null; }
            else if (SassFunctionRegex().Match(line) is { Success: true } f) ops[(arch, f.Groups[1].Value)] = current = new HashSet<string>(StringComparer.Ordinal);
            else if (current != null && InstructionRegex().Match(line) is { Success: true } i) current.Add(i.Groups[1].Value);
        }
        return [.. usage.Select(kv => new SassFunction(file, kv.Key.Name, kv.Key.Arch, kv.Value[0], kv.Value[1], kv.Value[2], kv.Value[3],
            ops.TryGetValue(kv.Key, out var o) ? o : new HashSet<string>()))];
    }

    /// <summary>
    /// The table recorded in docs/KERNELS.md: one row per kernel, both architectures in the row — registers, stack
    /// frame, static shared memory, local memory traffic (LDL/STL, spills), tensor-core instructions (HMMA, LDSM =
    /// ldmatrix, LDGSTS = cp.async) and 16-byte global accesses.
    /// </summary>
    public static string Table(IEnumerable<SassFunction> all)
    {
        var sb = new StringBuilder();
        sb.Append("| file | kernel | registers sm_80 / sm_90 | stack | static smem | LDL/STL | HMMA LDSM LDGSTS | 16-byte LDG/STG |\n");
        sb.Append("|---|---|---|---|---|---|---|---|\n");
        foreach (var g in all.GroupBy(f => (f.File, f.Name)).OrderBy(g => g.Key.File, StringComparer.Ordinal).ThenBy(g => g.Key.Name, StringComparer.Ordinal))
        {
            var byArch = g.OrderBy(f => f.Arch, StringComparer.Ordinal).ToList();
            string Col(Func<SassFunction, string> f) => byArch.Select(f).Distinct().Count() == 1 ? f(byArch[0]) : string.Join(" / ", byArch.Select(f));
            string Flags(Func<SassFunction, string[]> f) => Col(x => f(x) is { Length: > 0 } s ? string.Join(" ", s) : "–");
            sb.Append($"| {g.Key.File} | `{g.Key.Name}` | {string.Join(" / ", byArch.Select(f => f.Registers))} | {Col(f => f.Stack.ToString())} | " +
                $"{Col(f => f.Shared.ToString())} | {Flags(f => new[] { "LDL", "STL" }.Where(f.Has).ToArray())} | " +
                $"{Flags(f => new[] { "HMMA", "LDSM", "LDGSTS" }.Where(f.Has).ToArray())} | {Flags(f => new[] { "LDG", "STG" }.Where(f.HasWide).ToArray())} |\n");
        }
        return sb.ToString();
    }

    [GeneratedRegex(@"release (\d+\.\d+)")] private static partial Regex ReleaseRegex();
    [GeneratedRegex(@"^arch = (sm_\d+a?)")] private static partial Regex ArchRegex();
    [GeneratedRegex(@"^\s*Function (\w+):\s*$")] private static partial Regex UsageFunctionRegex();
    [GeneratedRegex(@"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")] private static partial Regex UsageRegex();
    [GeneratedRegex(@"^\s*Function : (\w+)\s*$")] private static partial Regex SassFunctionRegex();
    [GeneratedRegex(@"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z][A-Z0-9_.]*)")] private static partial Regex InstructionRegex();
}
