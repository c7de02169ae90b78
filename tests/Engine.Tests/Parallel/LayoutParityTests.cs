using Engine.Core;
using Engine.Core.Distributed;
using Engine.Data;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Parallel;
using Engine.Training.Recipes;

namespace Engine.Tests.Parallel;

/// <summary>
/// Every run kind goes through the one assembler, so every run kind accepts every layout: `engine train` and a recipe
/// stage (a mixture ramp with hybrid-tuning's answer-only instruction rows) on 2 thread ranks at ZeRO 0/1/2, on 2
/// pipeline stages (1F1B) and on 2 stages × 2 replicas each equal one process on the same global batch (replicas ×
/// micro-batches) — the losses of every step (and per source) within 1e-5 relative, every final weight tensor within
/// 1e-5 of its norm and each element within 1e-4 of the tensor's largest magnitude.
/// <para>
/// Why these bounds: the ranks compute the same sums in another order (the data-parallel reduction sums replicas' partial
/// gradients, the pipeline's gradient norm sums stages), so gradients differ in the last fp32 bits (~1e-7 relative) and
/// AdamW carries that into the weights at a similar size — far below 1e-5 for a tensor as a whole. One element can move
/// more: where a parameter's gradient sums to nearly zero (|g| ≲ AdamW's eps), the absolute noise of the sum is amplified
/// in the update by lr·eps/(|g| + eps)², so a single embedding row element was seen 2e-5 of its tensor's scale apart
/// after six steps on 2 replicas. A wrong batch, normalizer or missed reduction moves whole tensors and the losses.
/// </para>
/// </summary>
public class LayoutParityTests
{
    const double Rel = 1e-5, ElementRel = 1e-4;
    const int Steps = 3, MicroPerReplica = 2;

    /// <summary>(ranks, pipeline stages, ZeRO stage).</summary>
    public static TheoryData<int, int, int> Layouts => new() { { 2, 1, 0 }, { 2, 1, 1 }, { 2, 1, 2 }, { 2, 1, 3 }, { 2, 2, 0 }, { 4, 2, 1 }, { 4, 2, 3 } };

    /// <summary>The layouts without ZeRO-3, for a recipe's LoRA stage (refused by name at ZeRO-3: its merge would write
    /// the sharded base; `engine train` runs LoRA at ZeRO-3).</summary>
    public static TheoryData<int, int, int> LoraLayouts => new() { { 2, 1, 0 }, { 2, 1, 1 }, { 2, 1, 2 }, { 2, 2, 0 }, { 4, 2, 1 } };

    /// <summary>A run's steps and final weights, and how many pipeline stages wrote them (model-0000s-of-0000P shards; 1
    /// for one model.safetensors).</summary>
    public sealed record Outcome(IReadOnlyList<StepMetrics> Steps, Dictionary<string, float[]> Weights, int Stages);

    internal static Outcome Read(IReadOnlyList<StepMetrics> steps, string dir) =>
        new(steps, Weights(dir), Math.Max(1, Directory.GetFiles(dir, "model-*-of-*.safetensors").Length));

    /// <summary>Every tensor of every safetensors file in a model directory (one file, or one shard per stage).</summary>
    internal static Dictionary<string, float[]> Weights(string dir)
    {
        var all = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var file in Directory.GetFiles(dir, "*.safetensors"))
        {
            using var f = Engine.Model.IO.SafeTensorsFile.Open(file);
            foreach (var e in f.Entries) all.Add(e.Name, f.ReadFloat32(e.Name));
        }
        Assert.NotEmpty(all);
        return all;
    }

    /// <summary>Losses per step (and per source or account) within <see cref="Rel"/> of the loss; every tensor within Rel
    /// of its norm and each of its elements within <see cref="ElementRel"/> of its largest magnitude; the same set of tensors.</summary>
    internal static void AssertSame(Outcome single, Outcome multi, string what, bool tokens = true)
    {
        Assert.Equal(1, single.Stages);
        Assert.Equal(single.Steps.Count, multi.Steps.Count);
        for (int i = 0; i < single.Steps.Count; i++)
        {
            var (a, b) = (single.Steps[i], multi.Steps[i]);
            Assert.True(Math.Abs(a.Loss - b.Loss) <= Rel * Math.Abs(a.Loss), $"{what}: step {i + 1} loss {b.Loss} vs {a.Loss}");
            foreach (var (source, loss) in a.SourceLosses ?? new Dictionary<string, double>())
                Assert.True(Math.Abs(loss - b.SourceLosses![source]) <= Rel * Math.Abs(loss), $"{what}: step {i + 1} {source} loss {b.SourceLosses[source]} vs {loss}");
            if (tokens) Assert.Equal(a.Tokens, b.Tokens);
        }
        Assert.Equal(single.Weights.Keys.Order(StringComparer.Ordinal), multi.Weights.Keys.Order(StringComparer.Ordinal));
        foreach (var (name, w) in single.Weights)
        {
            var got = multi.Weights[name];
            double norm = 0, diff = 0, scale = 0, worst = 0;
            for (int i = 0; i < w.Length; i++)
            {
                double d = Math.Abs(w[i] - (double)got[i]);
                (norm, diff, scale, worst) = (norm + (double)w[i] * w[i], diff + d * d, Math.Max(scale, Math.Abs(w[i])), Math.Max(worst, d));
            }
            Assert.True(Math.Sqrt(diff) <= Rel * Math.Sqrt(norm), $"{what}: {name} differs by {Math.Sqrt(diff / norm):E2} of its norm (more than {Rel:E0})");
            Assert.True(worst <= ElementRel * scale, $"{what}: {name} differs by {worst:E2} in one element, more than {ElementRel:E0} of its largest magnitude {scale:E2}");
        }
    }

    // ---- engine train ------------------------------------------------------------------------------------------------

    static TrainConfig Train(string dir, int accum, ParallelSection parallel) => new()
    {
        BaseDirectory = dir,
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 4, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
        Data = new DataSection { Train = [DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.01 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 2, GradAccum = accum, Steps = Steps, Seed = 9, EvalBatches = 1 },
        Optim = new AdamWOptions { Lr = 1e-3 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
        Output = new OutputSection { Dir = Path.Combine(dir, "out") },
        Parallel = parallel,
    };

    static Outcome RunTrain(TrainConfig cfg, ICommunicator? comm)
    {
        cfg.Validate();
        var r = new Trainer(cfg, CpuBackend.Instance) { Communicator = comm }.Run(TestContext.Current.CancellationToken);
        return Read(r.Steps, r.WeightsDir);
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void TrainEqualsOneProcess(int world, int pp, int zero)
    {
        int replicas = world / pp;
        using var one = new TempDir();
        using var many = new TempDir();
        var single = RunTrain(Train(one.Path, replicas * MicroPerReplica, new ParallelSection()), null);
        var ranks = ThreadCommunicator.Run(world, c => RunTrain(Train(many.Path, MicroPerReplica, new ParallelSection { Pp = pp, Zero = zero, BucketMb = 0.01 }), c));
        AssertSame(single, ranks[0], $"train on {world} ranks, pp {pp}, ZeRO-{zero}");
        Assert.Equal(pp, ranks[0].Stages);
        foreach (var r in ranks.Skip(1)) Assert.Equal(ranks[0].Steps.Select(s => s.Loss), r.Steps.Select(s => s.Loss));
    }

    // ---- a recipe stage: mixture ramp + hybrid-tuning ----------------------------------------------------------------

    /// <summary>One stage from random weights, or (with <paramref name="lora"/>) a LoRA stage on the model in
    /// <paramref name="baseModel"/>.</summary>
    internal static RecipeConfig Recipe(string dir, int accum, ParallelSection parallel, LoraSection? lora = null, string? baseModel = null, int layers = 2) => new()
    {
        Name = "layouts",
        Seed = 11,
        BaseDirectory = dir,
        Tokenizer = new TokenizerSection { Kind = "byte" },
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = layers, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
        Sources = new()
        {
            ["gen"] = new SourceSection { Files = [DataPaths.File("general_en/wikitext2_test_a.txt")], Domain = "general", Language = "en", MaxDocs = 60 },
            ["inst"] = new SourceSection { Kind = "instruct", Files = [DataPaths.File("instruct/fin_en_formula.jsonl")], MaxDocs = 40 },
        },
        Stages = [lora == null ? HybridStage("hybrid", "random", accum) : HybridStage("lora", baseModel!, accum, lora)],
        Eval = new EvalSection { SeqLen = 32, Batch = 2, PerplexityTokens = 64 },
        Output = new RecipeOutput { Dir = Path.Combine(dir, "out"), CheckpointEvery = 0 },
        Parallel = parallel,
    };

    /// <summary>Pretraining text ramped down as instruction rows (answer-only loss) ramp up, over the stage's tokens.</summary>
    static StageSection HybridStage(string name, string init, int accum, LoraSection? lora = null) => new()
    {
        Lora = lora,
        Name = name,
        Init = init,
        Weights = new() { ["gen"] = 0.8, ["inst"] = 0.2 },
        EndWeights = new() { ["gen"] = 0.3, ["inst"] = 0.7 },
        RampTokens = 256,
        Steps = Steps,
        BatchSize = 2,
        SeqLen = 32,
        GradAccum = accum,
        Optim = new AdamWOptions { Lr = 1e-3 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Constant },
    };

    internal static Outcome RunRecipe(RecipeConfig cfg, ICommunicator? comm, string? resume = null)
    {
        cfg.Validate();
        var reports = new RecipeRunner(cfg, CpuBackend.Instance) { Communicator = comm, Resume = resume }.Run(TestContext.Current.CancellationToken);
        var last = reports[^1];
        return Read(last.Steps, last.WeightsDir);
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void RecipeStageEqualsOneProcess(int world, int pp, int zero)
    {
        int replicas = world / pp;
        using var one = new TempDir();
        using var many = new TempDir();
        var single = RunRecipe(Recipe(one.Path, replicas * MicroPerReplica, new ParallelSection()), null);
        Assert.Contains(single.Steps, s => s.SourceLosses!.ContainsKey("inst"));   // the ramp reached the instruction rows
        var ranks = ThreadCommunicator.Run(world, c => RunRecipe(Recipe(many.Path, MicroPerReplica, new ParallelSection { Pp = pp, Zero = zero, BucketMb = 0.01 }), c));
        AssertSame(single, ranks[0], $"recipe stage on {world} ranks, pp {pp}, ZeRO-{zero}");
        Assert.Equal(pp, ranks[0].Stages);
    }

    /// <summary>A recipe stage (mixture ramp with instruction rows, answer-only loss) at tensor parallel 2 with sequence
    /// parallel, and at dp 2 × tp 2: the heads, the MLP and the vocabulary split over the tensor ranks.</summary>
    [Theory]
    [InlineData(2, 1)]
    [InlineData(4, 2)]
    public void RecipeStageAtTensorParallelEqualsOneProcess(int world, int replicas)
    {
        using var one = new TempDir();
        using var many = new TempDir();
        var single = RunRecipe(Recipe(one.Path, replicas * MicroPerReplica, new ParallelSection()), null);
        Assert.Contains(single.Steps, s => s.SourceLosses!.ContainsKey("inst"));
        var ranks = ThreadCommunicator.Run(world, c => RunRecipe(Recipe(many.Path, MicroPerReplica, new ParallelSection { Tp = 2, Zero = replicas > 1 ? 1 : 0 }), c));
        AssertSame(single, ranks[0], $"recipe stage on {world} ranks, tp 2");
    }

    /// <summary>A recipe takes the whole [parallel] section as train does: GPipe, an uneven layer split and
    /// parallel.micro_batches in place of the stage's grad_accum.</summary>
    [Fact]
    public void RecipeStageTakesTheScheduleLayerSplitAndMicroBatches()
    {
        using var one = new TempDir();
        using var many = new TempDir();
        var single = RunRecipe(Recipe(one.Path, 3, new ParallelSection(), layers: 3), null);
        var ranks = ThreadCommunicator.Run(2, c => RunRecipe(Recipe(many.Path, 1, new ParallelSection { Pp = 2, Schedule = "gpipe", Layers = [1, 2], MicroBatches = 3 }, layers: 3), c));
        AssertSame(single, ranks[0], "recipe stage on 2 stages (GPipe, layers [1, 2], 3 micro-batches)");
        Assert.Equal(2, ranks[0].Stages);
    }

    /// <summary>The recipe features that touch the model, at every kind of layout: a BPE vocabulary expanded with domain
    /// tokens (every stage's embedding and head rows grown as one process grows them), stage 1 of the expansion training
    /// embeddings and head alone (a middle or first stage then trains only its share), then a stage with EWC (its Fisher
    /// through the stages), task-similarity data selection (on the whole initial model) and context extension. Every
    /// stage's losses and weights, and the evaluation, equal one process's.</summary>
    [Theory]
    [InlineData(2, 1, 1)]
    [InlineData(2, 2, 0)]
    [InlineData(4, 2, 1)]
    public void ExpansionEwcSelectionAndContextExtensionEqualOneProcess(int world, int pp, int zero)
    {
        RecipeConfig Make(string dir, int accum, ParallelSection parallel)
        {
            var cfg = Recipe(dir, accum, parallel);
            cfg.Tokenizer = new TokenizerSection { Kind = "bpe", VocabSize = 400, TrainChars = 60_000, ExpandBy = 20, ExpandSources = ["fin"] };
            cfg.Sources["fin"] = new SourceSection { Files = [DataPaths.File("finance_zh/cnews_finance.jsonl")], Domain = "finance", Language = "zh", MaxDocs = 60 };
            cfg.Eval.FewShotFile = DataPaths.File("eval/fpb_test.csv");
            cfg.Eval.FewShotPool = DataPaths.File("eval/fpb_train.csv");
            (cfg.Eval.Shots, cfg.Eval.MaxExamples) = (1, 2);
            var (b, e, a) = (HybridStage("base", "random", accum), HybridStage("expand", "base", accum), HybridStage("adapt", "expand", accum));
            (b.Steps, e.Steps, a.Steps) = (2, 2, 2);
            b.Weights = new() { ["gen"] = 1 }; b.EndWeights = null;
            e.Weights = new() { ["fin"] = 1 }; e.EndWeights = null;
            e.ExpandedVocab = true; e.Trainable = "embeddings_and_head";
            a.Weights = new() { ["fin"] = 0.7, ["gen"] = 0.3 }; a.EndWeights = null;
            a.ExpandedVocab = true;
            (a.EwcLambda, a.EwcSource, a.EwcBatches) = (10, "gen", 2);
            (a.SelectTop, a.SelectSource) = (0.5, "fin");
            (a.RopeScaling, a.RopeScalingFactor, a.SeqLen) = (Engine.Core.RopeScalingKind.Linear, 2, 48);
            cfg.Stages = [b, e, a];
            return cfg;
        }
        int replicas = world / pp;
        using var one = new TempDir();
        using var many = new TempDir();
        var single = RunRecipe(Make(one.Path, replicas * MicroPerReplica, new ParallelSection()), null);
        var ranks = ThreadCommunicator.Run(world, c => RunRecipe(Make(many.Path, MicroPerReplica, new ParallelSection { Pp = pp, Zero = zero, BucketMb = 0.01 }), c));
        AssertSame(single, ranks[0], $"expansion + EWC + selection + context extension on {world} ranks, pp {pp}, ZeRO-{zero}");
        Assert.Equal(pp, ranks[0].Stages);
        Assert.Equal(File.ReadAllText(Path.Combine(one.Path, "out", "tokenizer_expanded.json")), File.ReadAllText(Path.Combine(many.Path, "out", "tokenizer_expanded.json")));
    }

    // ---- a LoRA stage: adapters per pipeline stage -------------------------------------------------------------------

    [Theory]
    [MemberData(nameof(LoraLayouts))]
    public void LoraStageEqualsOneProcess(int world, int pp, int zero)
    {
        int replicas = world / pp;
        var lora = new LoraSection { R = 4, Alpha = 8, TargetModules = ["q_proj", "v_proj", "down_proj"] };
        using var one = new TempDir();
        using var many = new TempDir();
        // the frozen base both runs adapt, written once: a base trained at each layout would differ in its last bits, and
        // Adam's first steps turn absolute noise in a gradient element near zero (|g| ≲ eps) into an update difference of
        // up to lr·eps/(|g| + eps)² times it — once seen at 2e-4 of lora_B's scale; the stage itself stays within 1e-5
        string baseModel = BaseModel(one.Path);
        var single = RunRecipe(Recipe(one.Path, replicas * MicroPerReplica, new ParallelSection(), lora, baseModel), null);
        var ranks = ThreadCommunicator.Run(world, c => RunRecipe(Recipe(many.Path, MicroPerReplica, new ParallelSection { Pp = pp, Zero = zero, BucketMb = 0.01 }, lora, baseModel), c));
        string what = $"LoRA stage on {world} ranks, pp {pp}, ZeRO-{zero}";
        AssertSame(single, ranks[0], what);
        Assert.Equal(pp, ranks[0].Stages);
        // the adapter itself (PEFT layout, joined from the stages): every A and B of the whole model
        string adapter = Path.Combine("out", "stages", "lora_adapter");
        var a = new Outcome([], Weights(Path.Combine(one.Path, adapter)), 1);
        var b = new Outcome([], Weights(Path.Combine(many.Path, adapter)), 1);
        Assert.Equal(2 * 3 * 2, a.Weights.Count);   // A and B of three modules in each of two layers
        AssertSame(a, b, what + ", adapter");
        Assert.Equal(File.ReadAllText(Path.Combine(one.Path, adapter, Engine.Model.Lora.PeftAdapter.ConfigFile)),
            File.ReadAllText(Path.Combine(many.Path, adapter, Engine.Model.Lora.PeftAdapter.ConfigFile)));
    }

    /// <summary>A random model of the recipes' shape in DIR/base.</summary>
    static string BaseModel(string dir)
    {
        string path = Path.Combine(dir, "base");
        var shape = Recipe(dir, 1, new ParallelSection()).Model.ToLlamaConfig(new ByteTokenizer().VocabSize);
        using var m = new Engine.Model.LlamaModel(shape, CpuBackend.Instance);
        m.InitializeWeights(21);
        ModelIO.Save(m, path);
        return path;
    }

    /// <summary>A LoRA stage on 2 pipeline stages stopped after step 2 checkpoints its adapter joined from the stages;
    /// resumed, it ends with the uninterrupted run's losses, adapter and merged weights, bit for bit.</summary>
    [Fact]
    public void PipelinedLoraStageStoppedAndResumedEqualsTheUninterruptedRun()
    {
        var lora = new LoraSection { R = 4, Alpha = 8, TargetModules = ["q_proj", "down_proj"] };
        var layout = new ParallelSection { Pp = 2, BucketMb = 0.01 };
        using var a = new TempDir();
        using var b = new TempDir();
        string baseModel = BaseModel(a.Path);
        var straight = ThreadCommunicator.Run(2, c => RunRecipe(Recipe(a.Path, 2, layout, lora, baseModel), c));
        var checkpoints = ThreadCommunicator.Run(2, c =>
        {
            var cfg = Recipe(b.Path, 2, layout, lora, baseModel);
            cfg.Validate();
            using var control = new RunControl { MaxSteps = 2 };
            new RecipeRunner(cfg, CpuBackend.Instance) { Communicator = c, Control = control }.Run(TestContext.Current.CancellationToken);
            return control.LastCheckpoint!;
        });
        Assert.EndsWith(Path.Combine("00_lora", "step_00000002"), checkpoints[0]);
        var saved = Weights(Path.Combine(checkpoints[0], Checkpoints.AdapterDir));
        Assert.Equal(2 * 2 * 2, saved.Count);   // both stages' adapters in the one file
        var resumed = ThreadCommunicator.Run(2, c => RunRecipe(Recipe(b.Path, 2, layout, lora, baseModel), c, resume: "latest"));
        Assert.Equal(straight[0].Steps.Select(s => s.Loss), resumed[0].Steps.Select(s => s.Loss));
        foreach (var (name, w) in straight[0].Weights) Assert.True(w.AsSpan().SequenceEqual(resumed[0].Weights[name]), $"{name} differs after the resume");
        string adapter = Path.Combine("out", "stages", "lora_adapter", Engine.Model.Lora.PeftAdapter.WeightsFile);
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Path, adapter)), File.ReadAllBytes(Path.Combine(b.Path, adapter)));
    }
}
