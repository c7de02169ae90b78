using Engine.Core;
using Engine.Parallel;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Run;

namespace Engine.Tests.Cli;

/// <summary>
/// One micro-batch rule (<see cref="RunLayout.MicroBatches"/>: parallel.micro_batches when set, else grad_accum, at
/// every pp): `engine train --dry-run`, `engine plan --model run.toml`, the fit check and the run that trains describe
/// the same layout — the same "dp × pp, ZeRO, micro-batch B × M" line and the same global batch, which the trained
/// step's token count confirms — for layouts with and without a pipeline, with micro_batches or grad_accum.
/// (Before, at pp = 1 with micro_batches set, the dry run and the fit check counted grad_accum while the run trained
/// micro_batches.)
/// </summary>
[Collection("console")]
public class MicroBatchRuleTests
{
    static string Config(string dir, int pp, int microBatches, int gradAccum, int batch = 2)
    {
        string path = Path.Combine(dir, $"run_{pp}_{microBatches}_{gradAccum}.toml");
        File.WriteAllText(path, $"""
            [model]
            hidden_size = 32
            intermediate_size = 64
            num_layers = 2
            num_heads = 4
            num_kv_heads = 2
            max_position_embeddings = 32
            [data]
            train = ["{Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")}"]
            valid_fraction = 0.01
            [train]
            seq_len = 16
            batch_size = {batch}
            grad_accum = {gradAccum}
            steps = 1
            eval_batches = 1
            [output]
            dir = "{Path.Combine(dir, $"out_{pp}_{microBatches}_{gradAccum}")}"
            [parallel]
            pp = {pp}
            micro_batches = {microBatches}
            bucket_mb = 0.01
            """);
        return path;
    }

    [Theory]
    [InlineData(1, 1, 0, 2)]
    [InlineData(1, 1, 3, 1)]    // micro_batches at pp = 1: what used to be described as one micro-batch
    [InlineData(2, 1, 0, 2)]
    [InlineData(2, 1, 2, 1)]
    [InlineData(2, 2, 0, 3)]
    [InlineData(2, 2, 4, 1)]
    [InlineData(4, 2, 2, 2)]    // both set to the same count
    public void DryRunPlanFitCheckAndTheTrainedRunDescribeTheSameLayout(int world, int pp, int microBatches, int gradAccum)
    {
        using var dir = new TempDir();
        string path = Config(dir.Path, pp, microBatches, gradAccum);
        var cfg = TrainConfig.Load(path);
        var plan = RunLayout.From(cfg.Parallel, cfg.Model).Plan(world, cfg.Train.BatchSize, cfg.Train.GradAccum, cfg.Train.SeqLen);
        Assert.Equal(microBatches > 0 ? microBatches : gradAccum, plan.MicroBatches);
        string described = $"{plan.Describe()}";

        string dry = new Trainer(cfg, CpuBackend.Instance).DryRun(world);
        Assert.Contains($"layout: {described}, {world} rank(s)", dry);
        Assert.Contains($"global batch: {plan.GlobalBatch} sequences × 16 tokens per step", dry);

        var (code, output, err) = PlanCliTests.Run("plan", "--model", path, "--gpus", world.ToString(System.Globalization.CultureInfo.InvariantCulture), "--top", "1");
        Assert.True(code == 0, err);
        Assert.Contains($"configured layout ({Path.GetFileName(path)} on {world} ranks): {described}; global batch: {plan.GlobalBatch} sequences", output);

        // the run that trains: its one step is the described global batch
        var steps = ThreadCommunicator.Run(world, c => new Trainer(TrainConfig.Load(path), CpuBackend.Instance) { Communicator = c }.Run(TestContext.Current.CancellationToken).Steps);
        Assert.Equal(plan.GlobalBatch * 16, steps[0][0].Tokens);

        // the fit check of the dry run and of the run refuse the same layout, described the same way
        var huge = TrainConfig.Load(path, ["train.batch_size=1000000"]);
        var hugePlan = RunLayout.From(huge.Parallel, huge.Model).Plan(world, 1000000, huge.Train.GradAccum, 16);
        var dryRefusal = Assert.Throws<ConfigException>(() => new Trainer(huge, CpuBackend.Instance).DryRun(world));
        var runRefusals = ThreadCommunicator.Run(world, c => Assert.Throws<ConfigException>(() => new Trainer(TrainConfig.Load(path, ["train.batch_size=1000000"]), CpuBackend.Instance) { Communicator = c }.Run(TestContext.Current.CancellationToken)));
        Assert.Contains($"model does not fit: on {hugePlan.Describe()}, stage ", dryRefusal.Message);
        Assert.Equal(dryRefusal.Message, runRefusals[0].Message);
    }

    [Fact]
    public void MicroBatchesAndGradAccumThatDisagreeAreRefusedByName()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<ConfigException>(() => TrainConfig.Load(Config(dir.Path, 2, 4, 2)));
        Assert.Contains("parallel.micro_batches = 4 and grad_accum = 2 both set the micro-batches", e.Message);
    }
}
