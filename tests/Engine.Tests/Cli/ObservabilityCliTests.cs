using System.CommandLine;
using System.Text.Json;
using Engine.Cli.Commands;
using Engine.Core;
using Engine.Model;
using Engine.Model.IO;
using Engine.Model.Lora;
using Engine.Tests.Training;

namespace Engine.Tests.Cli;

/// <summary>
/// What a user reads from the command line: argument mistakes as one line and exit code 2, `eval --json` with bits
/// per byte, `generate --adapter`, `--set` paths against the working directory (shown by --dry-run), and summary lines
/// that stay one line when the output goes to a file.
/// </summary>
[Collection("console")]
public class ObservabilityCliTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => InProcessCli.Run([TrainCommand.Create(), EvalCommand.Create(), EvalCommand.CreateGenerate(), BenchCommand.Create()], args);

    static string TinyModel(TempDir dir) => LoraCliTests.TinyModel(dir);

    [Theory]
    [InlineData(new[] { "train", "--bogus" }, "Unrecognized command or argument '--bogus'", "engine train --help")]
    [InlineData(new[] { "train" }, "Option '--config' is required", "engine train --help")]
    [InlineData(new[] { "eval", "-m", "x", "-t", "byte", "--shots", "three" }, "Cannot parse argument 'three' for option '--shots'", "engine eval --help")]
    [InlineData(new[] { "bench", "gemm", "--rounds", "x" }, "Cannot parse argument 'x' for option '--rounds'", "engine bench gemm --help")]
    [InlineData(new[] { "nonsense" }, "Unrecognized command or argument 'nonsense'", "engine --help")]
    public void ArgumentErrorsAreOneLineWithExitCodeTwo(string[] args, string message, string help)
    {
        var (code, stdout, err) = Run(args);
        Assert.Equal(2, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.StartsWith("error: ", err);
        Assert.Contains(message, err);
        Assert.EndsWith($"(see {help})", err.Trim());
        Assert.Equal("", stdout);   // no help text
    }

    [Fact]
    public void EvalJsonHoldsBitsPerByte()
    {
        using var dir = new TempDir();
        string model = TinyModel(dir);
        File.WriteAllText(dir.File("t.txt"), string.Concat(Enumerable.Repeat("Revenue rose 5% in the quarter while costs fell. ", 20)));
        var (code, stdout, err) = Run("eval", "-m", model, "-t", "byte", "--text", dir.File("t.txt"), "--seq-len", "64", "--json", dir.File("r.json"));
        Assert.True(code == 0, err);
        using var doc = JsonDocument.Parse(File.ReadAllText(dir.File("r.json")));
        var r = doc.RootElement.GetProperty(dir.File("t.txt"));
        Assert.Equal(JsonValueKind.Number, r.GetProperty("BitsPerByte").ValueKind);
        // byte tokens: one target per byte of ASCII text, so bits per byte is the mean NLL in bits
        double nll = r.GetProperty("MeanNll").GetDouble(), bpb = r.GetProperty("BitsPerByte").GetDouble();
        Assert.Equal(nll / Math.Log(2), bpb, 9);
        Assert.Contains(FormattableString.Invariant($"{bpb:F4} bits/byte"), stdout);
    }

    [Fact]
    public void GenerateWithAnAdapterEqualsTheMergedModel()
    {
        using var dir = new TempDir();
        string model = TinyModel(dir), adapter = dir.File("adapter"), merged = dir.File("merged");
        using (var m = ModelIO.Load(model, CpuBackend.Instance))
        using (var a = LoraAdapters.Attach(m, new LoraConfig { R = 2, TargetModules = ["q_proj", "v_proj", "down_proj"] }, 1))
        {
            foreach (var module in new[] { "self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj" })
            {
                var b = a.Of("model.layers.0." + module).B;
                CpuBackend.Instance.Upload(b, Enumerable.Range(0, (int)b.Numel).Select(i => 0.4f * (i % 5 - 2)).ToArray());
            }
            a.Save(adapter);
            a.Merge();
            ModelIO.Save(m, merged);
        }
        string[] common = ["-t", "byte", "-p", "Net income", "--max-new-tokens", "24"];
        var withAdapter = Run(["generate", "-m", model, "--adapter", adapter, .. common]);
        var viaMerge = Run(["generate", "-m", merged, .. common]);
        var plain = Run(["generate", "-m", model, .. common]);
        Assert.True(withAdapter.Code == 0, withAdapter.Err);
        Assert.Equal(viaMerge.Out, withAdapter.Out);
        Assert.NotEqual(plain.Out, withAdapter.Out);   // the adapter changes the greedy continuation
        var missing = Run(["generate", "-m", model, "--adapter", dir.File("nope"), .. common]);
        Assert.Equal(2, missing.Code);
        Assert.Contains("adapter directory not found", missing.Err);
    }

    [Fact]
    public async Task SetPathsFollowTheWorkingDirectoryAndRedirectedLinesAreNotWrapped()
    {
        using var dir = new TempDir();
        string configs = dir.File("configs"), cwd = dir.File("work");
        Directory.CreateDirectory(configs);
        Directory.CreateDirectory(cwd);
        File.WriteAllText(Path.Combine(configs, "c.toml"), """
            [model]
            hidden_size = 16
            intermediate_size = 32
            num_layers = 1
            num_heads = 2
            max_position_embeddings = 64
            [data]
            train = ["data:general_en/tinyshakespeare.txt"]
            [train]
            steps = 2
            seq_len = 16
            batch_size = 2
            [output]
            dir = "runs/in-file"
            """);
        var limit = TimeSpan.FromMinutes(3);
        // --dry-run names where the run would write: the file's folder for its own paths, the working directory for --set's
        var plan = await ChildEngine.Run(["train", "-c", "../configs/c.toml", "--dry-run"], limit, cwd);
        Assert.True(plan.ExitCode == 0, plan.All);
        Assert.Contains($"output: {Path.Combine(configs, "runs", "in-file")}\n", plan.Stdout);
        string deep = string.Join('/', Enumerable.Repeat("a-folder-name", 8));   // the summary lines run past 80 columns
        plan = await ChildEngine.Run(["train", "-c", "../configs/c.toml", "--dry-run", "--set", $"output.dir={deep}"], limit, cwd);
        Assert.Contains($"output: {Path.Combine(cwd, deep)}\n", plan.Stdout);

        var run = await ChildEngine.Run(["train", "-c", "../configs/c.toml", "--set", $"output.dir={deep}", "--peak", "50"], limit, cwd);
        Assert.True(run.ExitCode == 0, run.All);
        string outDir = Path.Combine(cwd, deep);
        Assert.True(File.Exists(Path.Combine(outDir, "metrics.jsonl")), run.All);
        Assert.False(Directory.Exists(Path.Combine(configs, "a-folder-name")));
        // one line each, however long (Spectre.Console wraps at 80 columns unless told the redirected width)
        Assert.Contains($"weights: {Path.Combine(outDir, "final")}  metrics: {Path.Combine(outDir, "metrics.jsonl")}\n", run.Stdout);
        Assert.Contains("MFU peak: CPU 50.0 GFLOP/s (pinned by --peak / ENGINE_PEAK_GFLOPS=50) × 1\n", run.Stdout);
        var lastLine = File.ReadLines(Path.Combine(outDir, "metrics.jsonl")).Last();
        Assert.Contains("\"mfu_peak_flops\":50000000000", lastLine);
    }
}
