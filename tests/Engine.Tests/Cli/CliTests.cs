using System.CommandLine;
using Engine.Cli.Commands;

namespace Engine.Tests.Cli;

[CollectionDefinition("console", DisableParallelization = true)]
public sealed class ConsoleCollection;

/// <summary>The engine command line: user mistakes give one line on stderr naming the problem and exit code 2.</summary>
[Collection("console")]
public class CliTests
{
    static (int Code, string Err) Run(params string[] args)
    {
        var (code, _, err) = InProcessCli.Run([TrainCommand.Create(), EvalCommand.Create()], args);
        return (code, err);
    }

    [Fact]
    public void UnknownConfigKeyIsOneLineNamingIt()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("c.toml"), "[train]\nsteps = 3\nbatchsize = 4\n[data]\ntrain = [\"a.txt\"]\n");
        var (code, err) = Run("train", "--config", dir.File("c.toml"));
        Assert.Equal(2, code);
        Assert.Equal($"error: {dir.File("c.toml")}: unknown config key 'train.batchsize' (known keys here: seq_len, batch_size, grad_accum, steps, seed, z_loss, device, log_every, eval_every, eval_batches, guard, guard_z, guard_window)", err.Trim());
    }

    [Fact]
    public void MissingConfigAndMissingDataAreNamed()
    {
        var (code, err) = Run("train", "--config", "/nowhere/run.toml");
        Assert.Equal(2, code);
        Assert.Contains("/nowhere/run.toml", err);
        using var dir = new TempDir();
        File.WriteAllText(dir.File("c.toml"), "[data]\ntrain = [\"missing.txt\"]\n[train]\nsteps = 1\nseq_len = 8\n[model]\nhidden_size = 16\nintermediate_size = 16\nnum_layers = 1\nnum_heads = 2\n");
        (code, err) = Run("train", "--config", dir.File("c.toml"));
        Assert.Equal(2, code);
        Assert.Contains("missing.txt", err);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void CudaDeviceWithoutAGpuIsAClearError()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("c.toml"), "[data]\ntrain = [\"a.txt\"]\n");
        if (Engine.Cuda.Backend.CudaBackend.TryGetShared(out _, out _))
            Assert.Skip("a usable GPU is present: this test checks the message given without one");
        var (code, err) = Run("train", "--config", dir.File("c.toml"), "--device", "cuda");
        Assert.Equal(2, code);
        // the device error itself, on one line, before anything else is tried (a.txt does not exist either)
        Assert.StartsWith("error: device 'cuda': ", err.Trim());
        Assert.EndsWith("use device = \"cpu\"", err.Trim());
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void EvalWithNothingToEvaluateSaysSo()
    {
        using var dir = new TempDir();
        using var m = Model.TestModels.Create(Model.TestModels.Tiny() with { VocabSize = 258 });
        Engine.Model.IO.ModelIO.Save(m, dir.Path);
        var (code, err) = Run("eval", "--model", dir.Path, "--tokenizer", "byte");
        Assert.Equal(2, code);
        Assert.Contains("nothing to evaluate", err);
    }

    [Fact]
    public void ResumeAndStopOptionsRefuseBadValuesInOneLine()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("c.toml"), $"[train]\nsteps = 3\n[data]\ntrain = [\"a.txt\"]\n[output]\ndir = \"{dir.Path}\"\n");
        var (code, err) = Run("train", "--config", dir.File("c.toml"), "--init-from", dir.Path, "--resume", "latest");
        Assert.Equal(2, code);
        Assert.Equal("error: --init-from and --resume exclude each other: --resume continues a run, --init-from starts a new one from its weights", err.Trim());
        (code, err) = Run("train", "--config", dir.File("c.toml"), "--time-limit", "1:xx");
        Assert.Equal(2, code);
        Assert.Equal("error: --time-limit '1:xx': expected HH:MM:SS or a number of seconds > 0", err.Trim());
        (code, err) = Run("train", "--config", dir.File("c.toml"), "--skip-batches", "5-2");
        Assert.Equal(2, code);
        Assert.Equal("error: --skip-batches '5-2': expected A-B with 1 <= A <= B (steps, 1-based)", err.Trim());
        (code, err) = Run("train", "--config", dir.File("c.toml"), "--init-from", dir.File("nope"));
        Assert.Equal(2, code);
        Assert.Contains("--init-from: directory not found", err);
    }
}
