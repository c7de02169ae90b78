using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Model.IO;
using Engine.Tests.Model;
using Engine.Training;
using Engine.Training.Config;

namespace Engine.Tests.Training;

/// <summary>
/// Stopping and resuming `engine train`: a run stopped at a step boundary (step count, time limit) and resumed equals
/// the uninterrupted run bit for bit, with metrics.jsonl free of duplicate steps; `--resume auto` skips a damaged
/// checkpoint; a changed setting that breaks exactness is refused by name while lr/steps overrides are reported;
/// damaged checkpoints are refused naming the file; the numeric guard stops or skips.
/// </summary>
public class ResumeTests
{
    static TrainConfig Small(string outDir, int steps, int every = 2) => new()
    {
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
        Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 4, Steps = steps, Seed = 5, EvalBatches = 2 },
        Optim = new AdamWOptions { Lr = 1e-2, WeightDecay = 0.01 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Cosine, WarmupSteps = 2, MinLr = 1e-3 },
        Output = new OutputSection { Dir = outDir, CheckpointEvery = every, KeepCheckpoints = 3 },
    };

    static byte[] FinalWeights(TrainResult r) => File.ReadAllBytes(Path.Combine(r.WeightsDir, ModelIO.WeightsFile));

    static int[] MetricSteps(string dir) => File.ReadAllLines(Path.Combine(dir, "metrics.jsonl"))
        .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("step").GetInt32()).ToArray();

    [Fact]
    public void StoppedAndResumedEqualsUninterruptedAndMetricsHoldEveryStepOnce()
    {
        var ct = TestContext.Current.CancellationToken;
        using var a = new TempDir();
        var straight = new Trainer(Small(a.Path, 7), CpuBackend.Instance).Run(ct);

        using var b = new TempDir();
        var cfg = Small(b.Path, 7);
        // stops after step 3 (not a checkpoint step): saves step 3 itself
        using (var control = new RunControl { MaxSteps = 3 })
        {
            var stopped = new Trainer(cfg, CpuBackend.Instance) { Control = control }.Run(ct);
            Assert.NotNull(stopped.StoppedReason);
            Assert.EndsWith("step_00000003", stopped.Checkpoint);
            Assert.Equal([1, 2, 3], stopped.Steps.Select(s => s.Step));
        }
        // a crash after step 5 (its checkpoint at 4 written, step 5 logged): resume from the newest, step 4
        using (var control = new RunControl { MaxSteps = 2 })
            new Trainer(cfg, CpuBackend.Instance) { Resume = "latest", Control = control }.Run(ct);
        Assert.Equal([1, 2, 3, 4, 5], MetricSteps(b.Path));
        File.WriteAllText(Path.Combine(b.Path, "metrics.jsonl"), File.ReadAllText(Path.Combine(b.Path, "metrics.jsonl")) + "{\"step\": 6, \"loss\":");   // torn line
        string ckpt4 = Path.Combine(b.Path, "checkpoints", "step_00000004");
        Directory.Delete(Path.Combine(b.Path, "checkpoints", "step_00000005"), recursive: true);
        var resumed = new Trainer(cfg, CpuBackend.Instance) { Resume = "latest" }.Run(ct);
        Assert.Equal([5, 6, 7], resumed.Steps.Select(s => s.Step));
        Assert.Equal(straight.Steps.Skip(4).Select(s => s.Loss), resumed.Steps.Select(s => s.Loss));
        Assert.Equal(FinalWeights(straight), FinalWeights(resumed));
        Assert.Equal([1, 2, 3, 4, 5, 6, 7], MetricSteps(b.Path));
        Assert.True(Directory.Exists(ckpt4));
    }

    [Fact]
    public void AutoSkipsADamagedNewestCheckpointWithAWarning()
    {
        var ct = TestContext.Current.CancellationToken;
        using var a = new TempDir();
        var straight = new Trainer(Small(a.Path, 6), CpuBackend.Instance).Run(ct);
        using var b = new TempDir();
        var cfg = Small(b.Path, 6);
        using (var control = new RunControl { MaxSteps = 4 })
            new Trainer(cfg, CpuBackend.Instance) { Control = control }.Run(ct);
        // the newest (step 4) loses a byte of its weights
        string weights = Path.Combine(b.Path, "checkpoints", "step_00000004", ModelIO.WeightsFile);
        var bytes = File.ReadAllBytes(weights);
        bytes[bytes.Length / 2] ^= 0x10;
        File.WriteAllBytes(weights, bytes);
        // "latest" refuses the damaged one
        var e = Assert.Throws<InvalidDataException>(() => new Trainer(cfg, CpuBackend.Instance) { Resume = "latest" }.Run(ct));
        Assert.Contains("does not match its SHA-256", e.Message);
        var messages = new List<string>();
        var resumed = new Trainer(cfg, CpuBackend.Instance) { Resume = "auto", OnMessage = messages.Add }.Run(ct);
        Assert.Contains(messages, m => m.StartsWith("warning: skipping damaged checkpoint") && m.Contains("model.safetensors does not match its SHA-256"));
        Assert.Equal([3, 4, 5, 6], resumed.Steps.Select(s => s.Step));
        Assert.Equal(FinalWeights(straight), FinalWeights(resumed));
        // auto with nothing valid: a fresh start
        using var c = new TempDir();
        Assert.Null(Checkpoints.OpenForResume("auto", Path.Combine(c.Path, "checkpoints")));
    }

    [Fact]
    public void ChangedSettingsAreRefusedByNameAndOverridesReported()
    {
        var ct = TestContext.Current.CancellationToken;
        using var b = new TempDir();
        var cfg = Small(b.Path, 6);
        using (var control = new RunControl { MaxSteps = 2 })
            new Trainer(cfg, CpuBackend.Instance) { Control = control }.Run(ct);

        var seq = Small(b.Path, 6);
        seq.Train.SeqLen = 16;
        var e = Assert.Throws<ConfigException>(() => new Trainer(seq, CpuBackend.Instance) { Resume = "latest" }.Run(ct));
        Assert.Contains("train.seq_len: checkpoint 32, now 16", e.Message);
        var seed = Small(b.Path, 6);
        seed.Train.Seed = 6;
        seed.Model.HiddenSize = 64;
        e = Assert.Throws<ConfigException>(() => new Trainer(seed, CpuBackend.Instance) { Resume = "latest" }.Run(ct));
        Assert.Contains("train.seed: checkpoint 5, now 6", e.Message);
        Assert.Contains("model:", e.Message);

        var lr = Small(b.Path, 6);
        lr.Optim = lr.Optim with { Lr = 5e-3 };
        lr.Model.CheckpointActivations = true;   // memory, not math: accepted silently
        var messages = new List<string>();
        using (var control = new RunControl { MaxSteps = 1 })
            new Trainer(lr, CpuBackend.Instance) { Resume = "latest", OnMessage = messages.Add, Control = control }.Run(ct);
        Assert.Contains(messages, m => m.Contains("optim.lr = 0.005 (checkpoint: 0.01)") && m.Contains("steps = 6"));
    }

    /// <summary>Rewrites one checkpoint file and, as a buggy or hostile writer would, its manifest entry to match.</summary>
    static void Replace(string ckpt, string file, byte[] content)
    {
        File.WriteAllBytes(Path.Combine(ckpt, file), content);
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(ckpt, "manifest.json")))!.AsObject();
        manifest["files"]![file] = Convert.ToHexStringLower(SHA256.HashData(content));
        manifest["sizes"]![file] = content.Length;
        File.WriteAllText(Path.Combine(ckpt, "manifest.json"), manifest.ToJsonString());
    }

    [Fact]
    public void DamagedCheckpointsAreRefusedNamingTheFile()
    {
        var ct = TestContext.Current.CancellationToken;
        using var b = new TempDir();
        var cfg = Small(b.Path, 4);
        using (var control = new RunControl { MaxSteps = 2 })
            new Trainer(cfg, CpuBackend.Instance) { Control = control }.Run(ct);
        string good = Path.Combine(b.Path, "checkpoints", "step_00000002");
        Checkpoints.Open(good);   // valid as written
        string Copy()
        {
            string d = Path.Combine(b.Path, "c" + Guid.NewGuid().ToString("N")[..6]);
            foreach (var f in Directory.GetFiles(good, "*", SearchOption.AllDirectories))
            {
                string to = Path.Combine(d, Path.GetRelativePath(good, f));
                Directory.CreateDirectory(Path.GetDirectoryName(to)!);
                File.Copy(f, to);
            }
            return d;
        }
        string Refused(string dir) => Assert.Throws<InvalidDataException>(() => Checkpoints.Open(dir)).Message;

        var c = Copy();
        File.WriteAllText(Path.Combine(c, "manifest.json"), "{}");
        Assert.Contains("manifest.json", Refused(c));

        c = Copy();
        var w = File.ReadAllBytes(Path.Combine(c, ModelIO.WeightsFile));
        w[^5] ^= 0x01;
        File.WriteAllBytes(Path.Combine(c, ModelIO.WeightsFile), w);
        Assert.Contains("model.safetensors does not match its SHA-256", Refused(c));

        c = Copy();
        string opt = "optimizer/rank00000.safetensors";
        float[] m;
        using (var f = Engine.Model.IO.SafeTensorsFile.Open(Path.Combine(c, opt))) m = f.ReadFloat32("exp_avg");
        string tmp = Path.Combine(b.Path, "only_m.safetensors");
        SafeTensorsWriter.Write(tmp, [new SafeTensorWrite("exp_avg", [m.Length], m)]);
        Replace(c, opt, File.ReadAllBytes(tmp));
        var msg = Refused(c);
        Assert.Contains(opt, msg);
        Assert.Contains("exp_avg_sq", msg);

        c = Copy();
        Replace(c, opt, []);
        Assert.Contains(opt, Refused(c));

        c = Copy();
        var state = JsonNode.Parse(File.ReadAllText(Path.Combine(c, "state.json")))!.AsObject();
        state["Step"] = -1;
        Replace(c, "state.json", System.Text.Encoding.UTF8.GetBytes(state.ToJsonString()));
        msg = Refused(c);
        Assert.Contains("state.json", msg);
        Assert.Contains("negative step", msg);

        // a truncated file is named by its size before hashing
        c = Copy();
        using (var fs = new FileStream(Path.Combine(c, opt), FileMode.Open)) fs.SetLength(fs.Length - 4);
        Assert.Contains($"{opt} holds", Refused(c));
    }

    [Fact]
    public void TimeLimitSavesAndStopsBeforeTheBudget()
    {
        var ct = TestContext.Current.CancellationToken;
        Assert.Equal(TimeSpan.FromSeconds(5430), RunControl.ParseTimeLimit("01:30:30"));
        Assert.Equal(TimeSpan.FromSeconds(90), RunControl.ParseTimeLimit("90"));
        Assert.Throws<ArgumentException>(() => RunControl.ParseTimeLimit("1:xx"));
        Assert.Throws<ArgumentException>(() => RunControl.ParseTimeLimit("0"));
        using var b = new TempDir();
        // a budget shorter than one step plus a save: stops after the first step, with a checkpoint
        using var control = new RunControl { TimeLimit = TimeSpan.FromMilliseconds(1) };
        var r = new Trainer(Small(b.Path, 20, every: 0), CpuBackend.Instance) { Control = control }.Run(ct);
        Assert.Single(r.Steps);
        Assert.Contains("time limit", r.StoppedReason);
        Assert.EndsWith("step_00000001", r.Checkpoint);
        Checkpoints.Open(r.Checkpoint!);
    }

    /// <summary>Random token batches from a seeded RNG (a stand-in data stream for loop-level tests).</summary>
    sealed class RandomBatches(int vocab, ulong seed) : IBatchSource
    {
        readonly Rng rng = new(seed);

        public Batch Next(int batch, int seqLen)
        {
            var ids = new int[batch * seqLen];
            var tg = new int[batch * seqLen];
            for (int i = 0; i < ids.Length; i++) { ids[i] = (int)(rng.NextUInt64() % (ulong)vocab); tg[i] = (int)(rng.NextUInt64() % (ulong)vocab); }
            return new Batch(ids, tg, Enumerable.Repeat("train", batch).ToArray());
        }
    }

    static (List<StepMetrics> Steps, float[] Weights) Loop(LoopOptions o, Action<Engine.Model.LlamaModel, StepMetrics>? onStep = null)
    {
        using var model = TestModels.Create(TestModels.Tiny(), 3);
        using var opt = new AdamW(model, o.Optim);
        var steps = TrainingLoop.Run(model, new RandomBatches(37, 11), o, opt, onStep: m => onStep?.Invoke(model, m));
        return (steps, model.Store.Master.ToArray());
    }

    static LoopOptions Options(string guard = "fail", (int, int)? skip = null) => new()
    {
        Steps = 6,
        BatchSize = 2,
        SeqLen = 8,
        Optim = new AdamWOptions { Lr = 1e-2 },
        Guard = new GuardOptions { Mode = guard },
        SkipBatches = skip,
    };

    /// <summary>A non-finite loss at step 3 (the final norm poisoned after step 2, restored after step 3): "fail" stops
    /// naming the step and the loss; "skip" leaves weights and moments as they were, which equals drawing step 3's
    /// batches without training on them (--skip-batches 3-3) in a clean run.</summary>
    [Fact]
    public void GuardFailsOrSkipsANonFiniteStep()
    {
        float[]? saved = null;
        void Poison(Engine.Model.LlamaModel model, StepMetrics m)
        {
            const string name = "model.norm.weight";
            if (m.Step == 2)
            {
                saved = model[name].ToArray();
                model.Load(name, Enumerable.Repeat(float.NaN, saved.Length).ToArray());
            }
            if (m.Step == 3) model.Load(name, saved);
        }
        var e = Assert.Throws<InvalidDataException>(() => Loop(Options("fail"), Poison));
        Assert.StartsWith("step 3: the loss is NaN", e.Message);
        Assert.Contains("Last good checkpoint: none", e.Message);

        var skipped = Loop(Options("skip"), Poison);
        Assert.Equal([false, false, true, false, false, false], skipped.Steps.Select(s => s.Skipped));
        Assert.Equal(1, skipped.Steps[^1].SkippedSteps);
        Assert.All(skipped.Weights, w => Assert.True(float.IsFinite(w)));
        var clean = Loop(Options("fail", skip: (3, 3)));
        Assert.Equal([false, false, true, false, false, false], clean.Steps.Select(s => s.Skipped));
        Assert.Equal(clean.Weights, skipped.Weights);
        Assert.Equal(clean.Steps.Where(s => !s.Skipped).Select(s => s.Loss), skipped.Steps.Where(s => !s.Skipped).Select(s => s.Loss));
        // and skipping is not a no-op: the uninterrupted clean run differs
        Assert.NotEqual(Loop(Options("fail")).Weights, clean.Weights);
    }

    /// <summary>The spike rule with a window of 2: the z-score of the newer of two losses is +1 when it rose, −1 when
    /// it fell, so a threshold of 0.5 skips exactly the steps whose loss rose.</summary>
    [Fact]
    public void GuardSkipsLossSpikesByZScore()
    {
        var o = Options("skip") with { Steps = 10, Guard = new GuardOptions { Mode = "skip", ZScore = 0.5, Window = 2 }, Optim = new AdamWOptions { Lr = 5e-2 } };
        var (steps, _) = Loop(o);
        for (int i = 1; i < steps.Count; i++)
            Assert.True(steps[i].Skipped == (steps[i].Loss > steps[i - 1].Loss), $"step {i + 1}: loss {steps[i - 1].Loss} → {steps[i].Loss}, skipped {steps[i].Skipped}");
        Assert.False(steps[0].Skipped);
        Assert.Contains(steps, s => s.Skipped);
    }

    /// <summary>A stop requested on one rank (its SIGTERM) stops every rank after the same step.</summary>
    [Fact]
    public void EveryRankAgreesToStopWhenOneIsSignalled()
    {
        var decisions = Engine.Parallel.ThreadCommunicator.Run(3, c =>
        {
            using var control = new RunControl();
            bool first = control.ShouldStop(1, c);
            if (c.Rank == 2) control.RequestStop();
            return (first, control.ShouldStop(2, c), control.StopReason);
        });
        Assert.All(decisions, d => Assert.False(d.first));
        Assert.All(decisions, d => Assert.True(d.Item2));
        Assert.Equal("stop requested by signal", decisions[2].StopReason);
        Assert.Equal("another rank stopped", decisions[0].StopReason);
    }
}
