using Engine.Core;
using Engine.Model.IO;
using Engine.Training;
using Engine.Training.Config;

namespace Engine.Tests.Training;

public class TrainerTests
{
    static TrainConfig Small(string outDir, int steps) => new()
    {
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
        Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 4, Steps = steps, Seed = 5, EvalBatches = 2 },
        Optim = new AdamWOptions { Lr = 1e-2, WeightDecay = 0.01 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Cosine, WarmupSteps = 5, MinLr = 1e-3 },
        Output = new OutputSection { Dir = outDir },
    };

    [Fact]
    public void LossFallsOnShippedEnglishTextAndWeightsAreSaved()
    {
        using var dir = new TempDir();
        var cfg = Small(dir.Path, 60);
        cfg.Validate();
        var result = new Trainer(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        double first = result.Steps.Take(5).Average(s => s.Loss);
        double last = result.Steps.TakeLast(5).Average(s => s.Loss);
        Assert.True(first > 5.0, $"initial loss {first} should be near ln(258) = 5.55");
        Assert.True(last < first - 1.5, $"loss did not fall clearly: {first:F3} → {last:F3}");
        Assert.NotNull(result.FinalValidLoss);
        Assert.True(result.FinalValidLoss < first - 1.0);
        Assert.Equal(60, File.ReadAllLines(Path.Combine(dir.Path, "metrics.jsonl")).Length);
        using var back = ModelIO.Load(result.WeightsDir, CpuBackend.Instance);
        Assert.Equal(258, back.Config.VocabSize);
    }

    [Fact]
    public void SameSeedSameLosses()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var ra = new Trainer(Small(a.Path, 4), CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        var rb = new Trainer(Small(b.Path, 4), CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        Assert.Equal(ra.Steps.Select(s => s.Loss), rb.Steps.Select(s => s.Loss));
    }

    [Fact]
    public void TrainsFromATokenShardWrittenByPrepare()
    {
        using var dir = new TempDir();
        var tok = new Engine.Data.ByteTokenizer();
        string basePath = Path.Combine(dir.Path, "shard");
        using (var w = new Engine.Data.Shards.ShardWriter(basePath, tok.VocabSize))
        {
            foreach (var doc in Engine.Data.Documents.Read(Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")).Take(40))
                w.Add(tok.Encode(doc));
            w.Complete();
        }
        var cfg = Small(Path.Combine(dir.Path, "out"), 3);
        cfg.Data.Train = [basePath + ".bin"];
        var r = new Trainer(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        Assert.Equal(3, r.Steps.Count);
        Assert.All(r.Steps, s => Assert.True(double.IsFinite(s.Loss)));
        // a corrupted shard is refused, naming the file
        var bin = basePath + ".bin";
        var bytes = File.ReadAllBytes(bin);
        bytes[^3] ^= 0x5A;
        File.WriteAllBytes(bin, bytes);
        // (the file itself is named …/shard.bin: the message must say what is wrong, not just mention the path)
        var e = Assert.Throws<InvalidDataException>(() => new Trainer(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken));
        Assert.Contains(bin, e.Message);
        Assert.Contains("checksum mismatch", e.Message);
    }

    [Fact]
    public void ResumeFromACheckpointIsBitExact()
    {
        using var a = new TempDir();
        var cfg = Small(a.Path, 6);
        cfg.Output.CheckpointEvery = 3;
        var straight = new Trainer(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        var ckpt = Assert.Single(Checkpoints.List(Path.Combine(a.Path, "checkpoints")));
        Assert.EndsWith("step_00000003", ckpt);
        var finalStraight = File.ReadAllBytes(Path.Combine(straight.WeightsDir, ModelIO.WeightsFile));

        using var b = new TempDir();
        var cfg2 = Small(b.Path, 6);
        var resumed = new Trainer(cfg2, CpuBackend.Instance) { Resume = ckpt }.Run(TestContext.Current.CancellationToken);
        Assert.Equal(straight.Steps.Skip(3).Select(s => s.Loss), resumed.Steps.Select(s => s.Loss));
        Assert.Equal([4, 5, 6], resumed.Steps.Select(s => s.Step));
        Assert.Equal(finalStraight, File.ReadAllBytes(Path.Combine(resumed.WeightsDir, ModelIO.WeightsFile)));

        // a corrupted checkpoint is refused before anything is loaded
        var opt = Path.Combine(ckpt, "optimizer", "rank00000.safetensors");
        var bytes = File.ReadAllBytes(opt);
        bytes[^1] ^= 1;
        File.WriteAllBytes(opt, bytes);
        var e = Assert.Throws<InvalidDataException>(() => new Trainer(cfg2, CpuBackend.Instance) { Resume = ckpt }.Run(TestContext.Current.CancellationToken));
        Assert.Contains("optimizer/rank00000.safetensors does not match its SHA-256", e.Message);
    }

    [Fact]
    public void MissingDataFileIsNamed()
    {
        using var dir = new TempDir();
        var cfg = Small(dir.Path, 2);
        cfg.Data.Train = [Path.Combine(dir.Path, "nope.txt")];
        var e = Assert.Throws<FileNotFoundException>(() => new Trainer(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken));
        Assert.Contains("nope.txt", e.Message);
    }
}
