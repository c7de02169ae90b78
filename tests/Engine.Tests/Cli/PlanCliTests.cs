using System.CommandLine;
using Engine.Cli.Commands;

namespace Engine.Tests.Cli;

/// <summary>`engine plan` and `engine train --dry-run`: ranked layouts, the memory estimate before anything is allocated,
/// a layout that cannot fit refused in one line.</summary>
[Collection("console")]
public class PlanCliTests
{
    /// <summary>`engine plan|train ARGS` in process: exit code, stdout, stderr.</summary>
    internal static (int Code, string Out, string Err) Run(params string[] args) => InProcessCli.Run([PlanCommand.Create(), TrainCommand.Create()], args);

    static string Config(string name)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "configs", name))) return Path.Combine(d.FullName, "configs", name);
        throw new FileNotFoundException(name);
    }

    [Fact]
    public void PlanRanksLayoutsOfA7BModelOnOneNode()
    {
        var (code, output, err) = Run("plan", "--model", "llama2-7b", "--gpus", "8", "--seq-len", "4096", "--global-batch", "256");
        Assert.True(code == 0, err);
        Assert.Contains("6.74B parameters", output);
        Assert.Contains("best: dp ", output);
        // a whole 7B replica without ZeRO needs 16 bytes per parameter before activations: over 80 GB, never first
        var first = output.Split('\n').First(l => l.TrimStart().StartsWith("1 "));
        Assert.DoesNotContain("NO", first);
    }

    /// <summary>TorchTitan's Llama-2-70B run on 64 A100 (FSDP, full recompute, local batch 2, sequence 4096): the
    /// planner puts ZeRO-3 across all 64 GPUs first, and `--dp/--zero/--micro-batch/--recompute` evaluate that one
    /// layout; the memory beyond the tensors is printed with its parameters.</summary>
    [Fact]
    public void PlanPutsZero3FirstForTorchTitans70BRunAndEvaluatesAGivenLayout()
    {
        // without tensor or context ranks (TorchTitan's FSDP-only run) ZeRO-3 comes first; with them, FSDP × TP 4
        var (code, output, err) = Run("plan", "--model", "llama2-70b", "--gpus", "64", "--gpu", "a100", "--seq-len", "4096", "--global-batch", "128", "--tp", "1", "--cp", "1");
        Assert.True(code == 0, err);
        Assert.Contains("best: dp 64 × pp 1, ZeRO-3, micro-batch 2 × 1, full recompute", output);
        (code, output, err) = Run("plan", "--model", "llama2-70b", "--gpus", "64", "--gpu", "a100", "--seq-len", "4096", "--global-batch", "128");
        Assert.True(code == 0, err);
        Assert.Contains("best: dp 16 × pp 1 × tp 4 (sequence parallel), ZeRO-3", output);
        Assert.Contains("CUDA context 0.70 GiB, NCCL 0.65 GiB per communicator, fragmentation 15 %", output);
        (code, output, err) = Run("plan", "--model", "llama2-70b", "--gpus", "64", "--gpu", "a100", "--seq-len", "4096", "--global-batch", "128",
            "--dp", "64", "--zero", "3", "--micro-batch", "2", "--recompute", "selective");
        Assert.True(code == 0, err);
        var rows = output.Split('\n').Where(l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^\s+\d+\s+64\s")).ToList();
        Assert.Single(rows);
        Assert.Contains("selective", rows[0]);
        (code, _, err) = Run("plan", "--model", "llama2-70b", "--gpus", "64", "--recompute", "some");
        Assert.Equal(2, code);
        Assert.Contains("--recompute must be none, selective or full", err);
    }

    [Fact]
    public void PlanRefusesBadArguments()
    {
        var (code, _, err) = Run("plan", "--model", "llama9-1t", "--gpus", "8");
        Assert.Equal(2, code);
        Assert.Contains("neither a preset", err);
        (code, _, err) = Run("plan", "--model", "llama2-7b", "--gpus", "12", "--nodes", "5");
        Assert.Equal(2, code);
        Assert.Contains("does not divide", err);
    }

    [Fact]
    public void DryRunPrintsTheEstimateAndRefusesALayoutThatCannotFit()
    {
        var cfg = Config("tiny_shakespeare.toml");
        var (code, output, err) = Run("train", "--config", cfg, "--dry-run");
        Assert.True(code == 0, err);
        Assert.Contains("stage 0:", output);
        Assert.Contains("per device:", output);
        // a million sequences per micro-batch: hundreds of GB of activations for the small model, on any machine
        (code, _, err) = Run("train", "--config", cfg, "--dry-run", "--set", "train.batch_size=1000000");
        Assert.Equal(2, code);
        Assert.Contains("model does not fit", err);
        Assert.DoesNotContain("   at ", err);
    }
}
