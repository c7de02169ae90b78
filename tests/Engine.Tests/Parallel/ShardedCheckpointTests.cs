using System.Text.Json;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Tests.Training;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Parallel;

namespace Engine.Tests.Parallel;

/// <summary>
/// `engine train` on thread ranks: sharded checkpoints written by every rank, resumed bit-exactly at the same layout
/// and resharded to another data-parallel size or ZeRO stage (the global batch — world size × grad_accum × batch —
/// kept), then compared with the uninterrupted run within the data-parallel tolerance of
/// <see cref="DataParallelTests"/> (fp32 sums in another order).
/// </summary>
public class ShardedCheckpointTests
{
    const double WeightTol = 5e-5;

    static TrainConfig Config(string outDir, int steps, int zero, int accum) => new()
    {
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
        Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 2, GradAccum = accum, Steps = steps, Seed = 5, EvalBatches = 1 },
        Optim = new AdamWOptions { Lr = 5e-3, WeightDecay = 0.01 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Cosine, WarmupSteps = 2, MinLr = 1e-3 },
        Output = new OutputSection { Dir = outDir, CheckpointEvery = 3, KeepCheckpoints = 5 },
        Parallel = new ParallelSection { Zero = zero, BucketMb = 0.01 },
    };

    /// <summary>Runs `train` on <paramref name="world"/> thread ranks; returns rank 0's result.</summary>
    static TrainResult Train(int world, TrainConfig cfg, string? resume = null)
    {
        cfg.Validate();
        var results = ThreadCommunicator.Run(world, c =>
            new Trainer(cfg, CpuBackend.Instance) { Communicator = c, Resume = resume }.Run(TestContext.Current.CancellationToken));
        return results[0];
    }

    static Dictionary<string, float[]> Weights(TrainResult r)
    {
        using var f = SafeTensorsFile.Open(Path.Combine(r.WeightsDir, ModelIO.WeightsFile));
        return f.Entries.ToDictionary(e => e.Name, e => f.ReadFloat32(e.Name));
    }

    static double MaxDiff(Dictionary<string, float[]> a, Dictionary<string, float[]> b) =>
        a.Max(kv => kv.Value.Zip(b[kv.Key], (x, y) => Math.Abs((double)x - y)).Max());

    [Fact]
    public void EveryRankWritesItsSlicesAndTheManifestDescribesTheLayout()
    {
        using var dir = new TempDir();
        Train(2, Config(dir.Path, 4, zero: 2, accum: 1));
        string ckpt = Checkpoints.List(Path.Combine(dir.Path, "checkpoints")).Single();
        Assert.True(File.Exists(Path.Combine(ckpt, "optimizer", "rank00000.safetensors")));
        Assert.True(File.Exists(Path.Combine(ckpt, "optimizer", "rank00001.safetensors")));
        var loaded = Checkpoints.Open(ckpt);
        Assert.Equal(2, loaded.Manifest.WorldSize);
        Assert.Equal(2, loaded.Manifest.Zero);
        // the two ranks' slices cover the flat buffer once, without overlap
        var slices = loaded.Manifest.Stages.Single().Shards.SelectMany(s => s.Slices).OrderBy(s => s.Start).ToList();
        Assert.Equal(0, slices[0].Start);
        for (int i = 1; i < slices.Count; i++) Assert.Equal(slices[i - 1].Start + slices[i - 1].Length, slices[i].Start);
        Assert.Equal(loaded.Manifest.Stages.Single().Capacity, slices[^1].Start + slices[^1].Length);
        // each rank file holds half of the moments
        using var f0 = SafeTensorsFile.Open(Path.Combine(ckpt, "optimizer", "rank00000.safetensors"));
        Assert.Equal(loaded.Manifest.Stages.Single().Capacity / 2, f0["exp_avg"].Numel);
    }

    [Theory]
    [InlineData(2, 1)]
    [InlineData(2, 2)]
    [InlineData(1, 0)]
    public void ResumeAtTheSameLayoutIsBitExact(int world, int zero)
    {
        using var a = new TempDir();
        var straight = Train(world, Config(a.Path, 6, zero, accum: 1));
        string step3 = Checkpoints.List(Path.Combine(a.Path, "checkpoints")).First(d => d.EndsWith("step_00000003", StringComparison.Ordinal));
        using var b = new TempDir();
        var resumed = Train(world, Config(b.Path, 6, zero, accum: 1), resume: step3);
        Assert.Equal(straight.Steps.Skip(3).Select(s => s.Loss), resumed.Steps.Select(s => s.Loss));
        Assert.Equal(straight.Steps.Skip(3).Select(s => s.GradNorm), resumed.Steps.Select(s => s.GradNorm));
        Assert.Equal(File.ReadAllBytes(Path.Combine(straight.WeightsDir, ModelIO.WeightsFile)), File.ReadAllBytes(Path.Combine(resumed.WeightsDir, ModelIO.WeightsFile)));
    }

    [Theory]
    [InlineData(2, 1, 4, 2)]   // 2 → 4 ranks, ZeRO-1 → ZeRO-2
    [InlineData(4, 2, 2, 1)]   // 4 → 2 ranks, ZeRO-2 → ZeRO-1
    [InlineData(1, 0, 2, 1)]   // one process → 2 ranks
    [InlineData(2, 2, 2, 1)]   // ZeRO-2 → ZeRO-1 at 2 ranks
    [InlineData(2, 0, 1, 0)]   // 2 ranks → one process
    public void ResumeOnAnotherLayoutFollowsTheUninterruptedRun(int worldA, int zeroA, int worldB, int zeroB)
    {
        const int globalMicroBatches = 4;
        using var a = new TempDir();
        var straight = Train(worldA, Config(a.Path, 6, zeroA, accum: globalMicroBatches / worldA));
        string step3 = Checkpoints.List(Path.Combine(a.Path, "checkpoints")).First(d => d.EndsWith("step_00000003", StringComparison.Ordinal));
        using var b = new TempDir();
        var resumed = Train(worldB, Config(b.Path, 6, zeroB, accum: globalMicroBatches / worldB), resume: step3);
        Assert.Equal([4, 5, 6], resumed.Steps.Select(s => s.Step));
        for (int i = 0; i < 3; i++)
            Assert.Equal(straight.Steps[3 + i].Loss, resumed.Steps[i].Loss, 1e-4);
        double diff = MaxDiff(Weights(straight), Weights(resumed));
        Assert.True(diff <= WeightTol, $"{worldA}×ZeRO-{zeroA} → {worldB}×ZeRO-{zeroB}: final weights differ by {diff:E2}");
    }

    [Fact]
    public void AResumeThatLosesItsMomentsIsNoticed()
    {
        // control for the test above: resuming the weights with zeroed moments must drift measurably further
        using var a = new TempDir();
        var straight = Train(2, Config(a.Path, 6, 1, accum: 2));
        string step3 = Checkpoints.List(Path.Combine(a.Path, "checkpoints")).First(d => d.EndsWith("step_00000003", StringComparison.Ordinal));
        foreach (var f in Directory.GetFiles(Path.Combine(step3, "optimizer")))
        {
            using (var st = SafeTensorsFile.Open(f))
            {
                long n = st["exp_avg"].Numel;
                var zeros = new float[n];
                var tmp = f + ".zero";
                SafeTensorsWriter.Write(tmp, [new SafeTensorWrite("exp_avg", [n], zeros), new SafeTensorWrite("exp_avg_sq", [n], zeros)]);
                st.Dispose();
                File.Move(tmp, f, overwrite: true);
            }
        }
        // re-sign the manifest so the damage is semantic, not a checksum failure
        var manifestPath = Path.Combine(step3, "manifest.json");
        var json = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(File.ReadAllText(manifestPath))!;
        var files = JsonSerializer.Deserialize<Dictionary<string, string>>(json["files"].GetRawText())!;
        foreach (var key in files.Keys.ToList())
            files[key] = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(Path.Combine(step3, key))));
        json["files"] = JsonSerializer.SerializeToElement(files);
        json["sizes"] = JsonSerializer.SerializeToElement(files.Keys.ToDictionary(k => k, k => new FileInfo(Path.Combine(step3, k)).Length));
        File.WriteAllText(manifestPath, JsonSerializer.Serialize(json));
        using var b = new TempDir();
        var resumed = Train(2, Config(b.Path, 6, 1, accum: 2), resume: step3);
        double diff = MaxDiff(Weights(straight), Weights(resumed));
        Assert.True(diff > 20 * WeightTol, $"zeroed moments moved the weights by only {diff:E2}: the resharding tolerance would not catch lost state");
    }

    [Fact]
    public void ADataParallelSizeTheJobDoesNotHaveIsRefused()
    {
        using var dir = new TempDir();
        var cfg = Config(dir.Path, 2, 0, 1);
        cfg.Parallel = new ParallelSection { Dp = 4 };
        var e = Assert.Throws<ConfigException>(() => new Trainer(cfg, CpuBackend.Instance) { Communicator = new SingleRankCommunicator(CpuBackend.Instance) }.Run(TestContext.Current.CancellationToken));
        Assert.Contains("parallel.dp = 4 but the job has 1 rank", e.Message);
    }
}

/// <summary>`engine train` with pipeline stages on thread ranks: equal to one process, saved as one Hugging Face
/// directory (a shard per stage + index), checkpoints that resume bit-exactly at the same layout and reshard to another
/// (pp 2 × dp 2 → one process).</summary>
public class PipelineTrainTests
{
    const double WeightTol = 5e-5;

    static TrainConfig Config(string outDir, int accum, int pp = 1, string schedule = "1f1b", int zero = 0, bool tied = false) => new()
    {
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 4, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64, TieWordEmbeddings = tied },
        Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 2, GradAccum = accum, Steps = 6, Seed = 5, EvalBatches = 2 },
        Optim = new AdamWOptions { Lr = 5e-3, WeightDecay = 0.01 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Cosine, WarmupSteps = 2, MinLr = 1e-3 },
        Output = new OutputSection { Dir = outDir, CheckpointEvery = 3, KeepCheckpoints = 5 },
        Parallel = new ParallelSection { Pp = pp, Zero = zero, Schedule = schedule, BucketMb = 0.01 },
    };

    static TrainResult Train(int world, TrainConfig cfg, string? resume = null)
    {
        cfg.Validate();
        return ThreadCommunicator.Run(world, c =>
            new Trainer(cfg, CpuBackend.Instance) { Communicator = c, Resume = resume }.Run(TestContext.Current.CancellationToken))[0];
    }

    static Dictionary<string, float[]> Weights(TrainResult r)
    {
        // written by one rank or by every pipeline stage, the directory carries the run's tokenizer
        Assert.IsType<Engine.Data.ByteTokenizer>(Engine.Data.TokenizerFiles.FromDirectory(r.WeightsDir));
        using var m = ModelIO.Load(r.WeightsDir, CpuBackend.Instance);
        return m.Parameters.ToDictionary(p => p.Name, p => p.Tensor.ToArray());
    }

    static double MaxDiff(Dictionary<string, float[]> a, Dictionary<string, float[]> b) =>
        a.Max(kv => kv.Value.Zip(b[kv.Key], (x, y) => Math.Abs((double)x - y)).Max());

    [Theory]
    [InlineData(2, 1, "1f1b", false)]
    [InlineData(2, 2, "gpipe", true)]
    [InlineData(4, 1, "1f1b", true)]
    public void PipelinedTrainingEqualsOneProcess(int pp, int dp, string schedule, bool tied)
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var single = Train(1, Config(a.Path, 4, tied: tied));
        var piped = Train(pp * dp, Config(b.Path, 4 / dp, pp, schedule, zero: dp > 1 ? 1 : 0, tied: tied));
        for (int i = 0; i < 6; i++) Assert.Equal(single.Steps[i].Loss, piped.Steps[i].Loss, 1e-4);
        Assert.Equal(single.FinalValidLoss!.Value, piped.FinalValidLoss!.Value, 1e-4);
        Assert.True(File.Exists(Path.Combine(piped.WeightsDir, "model.safetensors.index.json")), "a pipelined run saves one shard per stage with an index");
        double diff = MaxDiff(Weights(single), Weights(piped));
        Assert.True(diff <= WeightTol, $"pp {pp} × dp {dp}: final weights differ by {diff:E2}");
    }

    [Fact]
    public void PipelineCheckpointsResumeExactlyAndReshardToOneProcess()
    {
        using var a = new TempDir();
        var straight = Train(4, Config(a.Path, 2, pp: 2, zero: 1, tied: true));
        string step3 = Checkpoints.List(Path.Combine(a.Path, "checkpoints")).First(d => d.EndsWith("step_00000003", StringComparison.Ordinal));
        var manifest = Checkpoints.Open(step3).Manifest;
        Assert.Equal(2, manifest.Pp);
        Assert.Equal(4, manifest.Stages.Sum(s => s.Shards.Count));
        // same layout: bit-exact
        using var b = new TempDir();
        var same = Train(4, Config(b.Path, 2, pp: 2, zero: 1, tied: true), resume: step3);
        Assert.Equal(straight.Steps.Skip(3).Select(s => s.Loss), same.Steps.Select(s => s.Loss));
        Assert.Equal(0, MaxDiff(Weights(straight), Weights(same)));
        // one process with the same global batch (grad_accum 2 × 2 replicas): within tolerance
        using var c = new TempDir();
        var one = Train(1, Config(c.Path, 4, tied: true), resume: step3);
        double diff = MaxDiff(Weights(straight), Weights(one));
        Assert.True(diff <= WeightTol, $"pp 2 × dp 2 → one process: final weights differ by {diff:E2}");
    }

    [Fact]
    public void LayoutsThatDoNotFitAreRefusedByName()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<ConfigException>(() => Train(4, Config(dir.Path, 1, pp: 3)));
        Assert.Contains("parallel.pp = 3 does not divide the job's 4 rank(s)", e.Message);
        e = Assert.Throws<ConfigException>(() => Train(2, Config(dir.Path, 1, pp: 2, zero: 2)));
        Assert.Contains("parallel.zero = 2 is not supported with pipeline stages", e.Message);
        var cfg = Config(dir.Path, 1, pp: 2);
        cfg.Parallel = cfg.Parallel with { Layers = [3, 2] };
        e = Assert.Throws<ConfigException>(() => Train(2, cfg));
        Assert.Contains("must give every stage at least one layer and sum to the model's 4", e.Message);
    }
}
