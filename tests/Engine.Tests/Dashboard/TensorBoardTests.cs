using System.Diagnostics;
using System.Text.Json.Nodes;
using Engine.Observability.TensorBoard;

namespace Engine.Tests.Dashboard;

/// <summary>
/// TensorBoard event files read back by an independent reader: TfEventsReader/read_tfevents.js (Node: protobufjs
/// decoding TensorFlow's Event/Summary messages, @aws-crypto/crc32c checking the record CRCs), installed by .ci/run.
/// </summary>
public class TensorBoardTests
{
    static readonly string ReaderDir = RepoFiles.Path("tests", "Engine.Tests", "Dashboard", "TfEventsReader");

    [Fact]
    public void Crc32cMatchesTheStandardCheckValue()
    {
        Assert.Equal(0xE3069283u, Crc32C.Compute("123456789"u8));   // the CRC-32C catalogue's check value
        Assert.Equal(0u, Crc32C.Compute([]));
    }

    [Fact]
    public void FileIsNamedLikeTensorFlowsAndStartsWithTheVersionRecord()
    {
        using var dir = new TempDir();
        string path;
        using (var w = new TensorBoardWriter(dir.Path, host: "box", clock: () => 1_764_000_000.25)) path = w.FilePath;
        Assert.Equal("events.out.tfevents.1764000000.box", Path.GetFileName(path));
        byte[] b = File.ReadAllBytes(path);
        ulong len = BitConverter.ToUInt64(b, 0);
        Assert.Equal((ulong)b.Length - 16, len);
        Assert.Contains("brain.Event:2", System.Text.Encoding.ASCII.GetString(b));
        using (var again = new TensorBoardWriter(dir.Path, host: "box", clock: () => 1_764_000_000.25))
            Assert.EndsWith(".box.1", again.FilePath);   // never appends to another writer's file
    }

    [Fact]
    public void ScalarsReadBackWithAnIndependentReader()
    {
        string node = SkipUnlessReader();
        using var dir = new TempDir();
        double t = 1_764_000_000.5;
        string path;
        using (var w = new TensorBoardWriter(dir.Path, host: "box", clock: () => t))
        {
            path = w.FilePath;
            t += 1;
            w.AddScalar("train/loss", 1, 9.0781);
            t += 1;
            w.AddScalars(2, [new("train/loss", 8.5), new("train/lr", 3e-4), new("train/tokens_per_s", 1911.5)]);
            t += 1;
            w.AddScalar("train/loss", 5_000_000_000L, -0.25);
        }
        var events = Read(node, path);
        Assert.Equal(4, events.Count);
        Assert.Equal("brain.Event:2", (string?)events[0]["file_version"]);
        Assert.Equal(1_764_000_000.5, (double)events[0]["wall_time"]!);
        Assert.Equal([1.0, 2.0, 5_000_000_000.0], events.Skip(1).Select(e => (double)e["step"]!));
        Assert.Equal([1_764_000_001.5, 1_764_000_002.5, 1_764_000_003.5], events.Skip(1).Select(e => (double)e["wall_time"]!));
        var step2 = events[2]["values"]!.AsArray();
        Assert.Equal(["train/loss", "train/lr", "train/tokens_per_s"], step2.Select(v => (string)v!["tag"]!));
        Assert.Equal([8.5f, 3e-4f, 1911.5f], step2.Select(v => (float)(double)v!["simple_value"]!));
        Assert.Equal(9.0781f, (float)(double)events[1]["values"]![0]!["simple_value"]!);
        Assert.Equal(-0.25, (double)events[3]["values"]![0]!["simple_value"]!);
    }

    [Fact]
    public void TheReaderRejectsACorruptedRecord()
    {
        string node = SkipUnlessReader();
        using var dir = new TempDir();
        string path;
        using (var w = new TensorBoardWriter(dir.Path, host: "box"))
        {
            path = w.FilePath;
            w.AddScalar("loss", 1, 2.5);
        }
        byte[] b = File.ReadAllBytes(path);
        b[^6] ^= 0x01;   // a byte of the last record's float
        File.WriteAllBytes(path, b);
        var (code, _, err) = RunNode(node, path);
        Assert.NotEqual(0, code);
        Assert.Contains("data CRC mismatch", err);
    }

    internal static List<JsonObject> Read(string node, string path)
    {
        var (code, stdout, stderr) = RunNode(node, path);
        Assert.True(code == 0, $"read_tfevents.js failed ({code}): {stderr}");
        return stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
    }

    static (int Code, string Out, string Err) RunNode(string node, string path)
    {
        var psi = new ProcessStartInfo(node) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(ReaderDir, "read_tfevents.js"));
        psi.ArgumentList.Add(path);
        using var p = Process.Start(psi)!;
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(60_000)) { p.Kill(true); throw new TimeoutException("read_tfevents.js did not finish in 60 s"); }
        return (p.ExitCode, so.Result, se.Result);
    }

    internal static string SkipUnlessReader()
    {
        string? node = Tools.Find("node");
        if (node is null) Assert.Skip("node is not installed: the independent TensorBoard reader (TfEventsReader/read_tfevents.js) needs it (.ci/run installs it)");
        if (!Directory.Exists(Path.Combine(ReaderDir, "node_modules", "protobufjs")) || !Directory.Exists(Path.Combine(ReaderDir, "node_modules", "@aws-crypto", "crc32c")))
            Assert.Skip($"the reader's npm packages are not installed: run `npm ci --prefix {ReaderDir}` (.ci/run does)");
        return node!;
    }
}

/// <summary>Executables on PATH.</summary>
static class Tools
{
    public static string? Find(string name)
    {
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            string p = Path.Combine(dir, name);
            if (File.Exists(p)) return p;
        }
        return null;
    }
}
