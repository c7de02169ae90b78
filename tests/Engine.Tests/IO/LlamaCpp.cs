using System.Diagnostics;
using System.Text.Json;

namespace Engine.Tests.IO;

/// <summary>
/// Runs the scripts of tools/llamacpp-check (logits.mjs, tokenize.mjs, generate.mjs): llama.cpp (node-llama-cpp 3.21.1,
/// installed by .ci/run) on GGUF files.
/// <see cref="Unavailable"/> says why it cannot run here (no node, package not installed), for Assert.Skip.
/// </summary>
public static class LlamaCpp
{
    static string? FindScript(string name = "logits.mjs")
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string s = Path.Combine(d.FullName, "tools", "llamacpp-check", name);
            if (File.Exists(s)) return s;
        }
        return null;
    }

    static string? FindNode()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
        {
            if (dir.Length == 0) continue;
            string p = Path.Combine(dir, "node");
            if (File.Exists(p)) return p;
        }
        return null;
    }

    public static string? Unavailable
    {
        get
        {
            var script = FindScript();
            if (script == null) return "tools/llamacpp-check/logits.mjs not found above the test binaries";
            if (FindNode() is not { } node) return "node is not on PATH (the llama.cpp check needs Node.js >= 20; .ci/run installs node-llama-cpp with npm)";
            if (NodeMajorVersion(node) is var major && major < 20) return $"node-llama-cpp 3.21.1 needs Node.js >= 20, this node is version {major}";
            string pkg = Path.Combine(Path.GetDirectoryName(script)!, "node_modules", "node-llama-cpp", "package.json");
            if (!File.Exists(pkg)) return "node-llama-cpp is not installed in tools/llamacpp-check (run .ci/run, or `npm ci --omit=optional --ignore-scripts` there)";
            return null;
        }
    }

    static int NodeMajorVersion(string node)
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo(node, ["--version"]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
            string v = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit(10_000);
            return int.TryParse(v.TrimStart('v').Split('.')[0], out int major) ? major : 0;
        }
        catch (System.ComponentModel.Win32Exception) { return 0; }
    }

    /// <summary>Runs a script (logits.mjs by default) on a request object; returns the parsed result.</summary>
    public static JsonDocument Run(object request, string workDir, int timeoutSeconds = 300, string script = "logits.mjs")
    {
        script = FindScript(script) ?? throw new FileNotFoundException($"tools/llamacpp-check/{script} not found above the test binaries");
        string reqPath = Path.Combine(workDir, "llamacpp-request.json");
        File.WriteAllText(reqPath, JsonSerializer.Serialize(request));
        var psi = new ProcessStartInfo(FindNode()!, [script, reqPath])
        {
            WorkingDirectory = Path.GetDirectoryName(script)!,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"llama.cpp check did not finish in {timeoutSeconds} s");
        }
        if (p.ExitCode != 0) throw new InvalidOperationException($"llama.cpp check failed (exit {p.ExitCode}): {stderr.Result}");
        return JsonDocument.Parse(stdout.Result);
    }
}
