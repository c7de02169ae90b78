using System.Text.Json;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Core.Distributed;
using Engine.Data;
using Engine.Model;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Training.Config;
using Engine.Training.Parallel;

using Engine.Training.Planning;
using Engine.Training.Run;

namespace Engine.Training;

/// <summary>Outcome of a run: where the weights went and the loss trajectory.</summary>
public sealed record TrainResult(string OutputDir, string WeightsDir, IReadOnlyList<StepMetrics> Steps, double? FinalValidLoss,
    long Parameters, double TokensPerSecond)
{
    /// <summary>Why the run stopped before train.steps (signal, time limit, --stop-after); null when it finished.</summary>
    public string? StoppedReason { get; init; }
    /// <summary>The checkpoint saved when it stopped early.</summary>
    public string? Checkpoint { get; init; }
}

/// <summary>
/// The training loop (TorchTitan shape): zero-grad → micro-batches (loss summed ÷ global valid tokens) → clip →
/// AdamW → schedule → log. Metrics go to metrics.jsonl in the output folder; final weights to final/ as
/// Hugging Face config.json + model.safetensors (with [lora]: the adapter as PEFT's adapter_config.json +
/// adapter_model.safetensors).
/// </summary>
public sealed class Trainer
{
    readonly TrainConfig cfg;
    readonly IBackend backend;

    public Trainer(TrainConfig cfg, IBackend backend)
    {
        this.cfg = cfg;
        this.backend = backend;
    }

    /// <summary>Called after every step on the lead rank with its metrics.jsonl record (progress display).</summary>
    public Action<Metrics.StepRecord>? OnStep { get; set; }
    /// <summary>Called with one-line status messages.</summary>
    public Action<string>? OnMessage { get; set; }

    /// <summary>Resume from a checkpoint directory, "latest" (the newest under output.dir/checkpoints) or "auto" (the
    /// newest that validates; a fresh start when there is none); null = fresh start.</summary>
    public string? Resume { get; set; }

    /// <summary>Early stops (signals, time limit, step count) and the injected test fault; null = none.</summary>
    public RunControl? Control { get; set; }

    /// <summary>Steps (1-based, inclusive) whose batches are drawn but not trained (--skip-batches).</summary>
    public (int First, int Last)? SkipBatches { get; set; }

    /// <summary>The job's ranks (null = this process alone). Rank 0 writes metrics, weights and messages.</summary>
    public ICommunicator? Communicator { get; set; }

    public static ITokenizer LoadTokenizer(TrainConfig cfg) => RunArtifacts.TrainTokenizer(cfg);

    /// <summary>`engine train` as a run: its config translated into a <see cref="RunSpec"/>, assembled and trained by
    /// <see cref="RunAssembler"/>; then the final weights (or adapter).</summary>
    public TrainResult Run(CancellationToken cancel = default)
    {
        var comm = Communicator ?? new SingleRankCommunicator(backend);
        bool lead = comm.Rank == 0;
        void Say(string m) { if (lead) OnMessage?.Invoke(m); }
        var layout = RunLayout.From(cfg.Parallel, cfg.Model);
        layout.Validate(comm.WorldSize, gradAccum: cfg.Train.GradAccum, needs: cfg.Needs);
        using var runLock = RunDirectoryLock.Acquire(cfg.Resolve(cfg.Output.Dir), comm, Say);   // one run per output directory
        var tokenizer = LoadTokenizer(cfg);
        var files = cfg.Data.Train.Select(cfg.Resolve).ToList();
        foreach (var f in files) FileStat.RequireRegular(f, "data file");   // missing, a directory, a device or a FIFO: one line, nothing read
        string outDir = cfg.Resolve(cfg.Output.Dir);
        string ckptRoot = Path.Combine(outDir, "checkpoints");
        Checkpoints.Loaded? resumed = null;
        if (Resume != null)
        {
            resumed = Checkpoints.OpenForResume(Resume, ckptRoot, Say);
            if (resumed == null) Say($"--resume auto: no valid checkpoint under {ckptRoot}: starting from step 0");
        }
        int B = cfg.Train.BatchSize, T = cfg.Train.SeqLen;
        var rng = new Rng(cfg.Train.Seed);
        TokenCorpus? corpus = null;
        double? lastValid = null;
        var spec = new RunSpec
        {
            Name = "train",
            Layout = layout,
            Model = ModelSource(tokenizer, resumed, outDir),
            Lora = cfg.Lora,
            LoraSeed = cfg.Train.Seed,
            Resolve = cfg.Resolve,
            Optim = cfg.Optim,
            Schedule = cfg.Schedule,
            Data = _ =>
            {
                Say($"tokenizing {files.Count} file(s)");
                corpus = TokenCorpus.FromFiles(files, tokenizer, cfg.Data.ValidFraction);
                Say($"{corpus.TrainTokens:N0} training tokens, {corpus.ValidTokens:N0} held out");
                return new CorpusBatches(corpus, rng);
            },
            MicroBatchRows = B,
            SeqLen = T,
            GradAccum = cfg.Train.GradAccum,
            Steps = cfg.Train.Steps,
            ZLoss = cfg.Train.ZLoss,
            Guard = new GuardOptions { Mode = cfg.Train.Guard, ZScore = cfg.Train.GuardZ, Window = cfg.Train.GuardWindow },
            SkipBatches = SkipBatches,
            EvalEvery = cfg.Train.EvalEvery,
            Checkpoint = new CheckpointSpec(ckptRoot, cfg.Output.CheckpointEvery, cfg.Output.KeepCheckpoints)
            {
                Exact = ExactSettings(files),
                Overridable = ResumeCheck.Overridable("", cfg.Optim, cfg.Train.Steps),
                State = s => s with { Rng = [rng.State.Item1, rng.State.Item2, rng.State.Item3, rng.State.Item4] },
                Restore = r => rng.State = (r.State.Rng[0], r.State.Rng[1], r.State.Rng[2], r.State.Rng[3]),
            },
            Resume = resumed,
            Control = Control,
            OnStep = (_, record) => OnStep?.Invoke(record!),
            Validate = run => () => (lastValid = run.Pipeline != null || run.Layout.SplitsModel ? ValidationLoss(run, corpus!) : ValidationLoss(run.Model, corpus!)).Value,
            Log = Say,
        };
        using var run = RunAssembler.Assemble(spec, comm, backend);

        string metricsPath = Path.Combine(outDir, "metrics.jsonl");
        if (lead)
        {
            Directory.CreateDirectory(outDir);
            // steps after the checkpoint are trained again: their lines from the lost run go
            if (resumed != null) ResumeCheck.TruncateMetrics(metricsPath, e => e.GetProperty("step").GetInt32() <= resumed.State.Step);
        }
        comm.Barrier();
        var launch = Engine.Parallel.Launch.LaunchEnvironment.Detect();
        var throughput = Metrics.Throughput.For(backend, run.Model.Config, T, comm.WorldSize, nodes: launch.WorldSize > 1 ? Math.Max(1, launch.WorldSize / launch.LocalWorldSize) : 1);
        Say($"MFU peak: {throughput.PeakSource}");
        using var metrics = new Metrics.MetricsLog(comm, backend, throughput, metricsPath, append: resumed != null,
            tensorBoardDir: cfg.Output.Tensorboard ? Path.Combine(outDir, "tensorboard") : null);
        if (metrics.TensorBoardFile is { } tb) Say($"TensorBoard events: {tb}");
        var outcome = run.Train(metrics, cancel);
        var steps = outcome.Steps;
        long tokens = steps.Count > 0 ? steps[^1].Tokens : 0;
        if (outcome.StoppedReason != null)
        {
            Say($"{outcome.StoppedReason}: stopped after step {steps[^1].Step} of {cfg.Train.Steps}; resume with --resume latest");
            return new TrainResult(outDir, "", steps, lastValid, run.Model.ParameterCount, steps[^1].TokensPerSecond)
            {
                StoppedReason = outcome.StoppedReason,
                Checkpoint = outcome.Checkpoint,
            };
        }

        string weightsDir = Path.Combine(outDir, "final");
        if (cfg.Lora != null)
        {
            run.SaveAdapter(weightsDir, cfg.Model.InitFrom is { } b ? cfg.Resolve(b) : null);
            Say($"saved the adapter (PEFT layout) to {weightsDir}");
        }
        else
        {
            run.SaveWeights(weightsDir, cfg.Output.SaveDtype, new Dictionary<string, string>
            {
                ["engine.steps"] = cfg.Train.Steps.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["engine.tokens"] = tokens.ToString(System.Globalization.CultureInfo.InvariantCulture),
            });
            Say($"saved {weightsDir}");
        }
        return new TrainResult(outDir, weightsDir, steps, lastValid, run.Model.ParameterCount, steps.Count > 0 ? steps[^1].TokensPerSecond : 0);
    }

    /// <summary>The model's shape before any weight is read: the resumed checkpoint's, init_from's, or the config's.</summary>
    LlamaConfig Shape(int tokenizerVocab, string? checkpoint) =>
        checkpoint != null ? ModelIO.LoadConfig(checkpoint)
        : cfg.Model.InitFrom is { } init ? ModelIO.LoadConfig(cfg.Resolve(init)) : cfg.ToLlamaConfig(tokenizerVocab);

    /// <summary>A full checkpoint's weights, or (fresh runs, and LoRA runs whose frozen base is rebuilt as at their
    /// start) init_from or a new model.</summary>
    ModelSource ModelSource(ITokenizer tokenizer, Checkpoints.Loaded? resumed, string outDir)
    {
        int tokenizerVocab = tokenizer.VocabSize;
        // the tokenizer (and the run's name) ride with the model into every directory it is saved to
        LlamaModel WithArtifacts(LlamaModel m)
        {
            try
            {
                RunArtifacts.Attach(m, tokenizer, RunArtifacts.RunName(outDir),
                    refuseAs: $"data.tokenizer ({cfg.Data.Tokenizer}) is not the tokenizer of the model it would train (set data.tokenizer = \"model\" to train with the model's own)");
                return m;
            }
            catch
            {
                m.Dispose();
                throw;
            }
        }
        if (resumed != null && !resumed.HasAdapter)
            return new ModelSource(Shape(tokenizerVocab, resumed.Directory), stage =>
            {
                var m = resumed.LoadModel(backend, _ => stage);
                if (m.Config.VocabSize < tokenizerVocab)
                {
                    m.Dispose();
                    throw new InvalidDataException($"{resumed.Directory}: checkpoint vocabulary {m.Config.VocabSize} is smaller than the tokenizer's {tokenizerVocab}");
                }
                return WithArtifacts(m);
            })
            { ReadsCheckpoint = true };
        return new ModelSource(Shape(tokenizerVocab, null), stage => WithArtifacts(CreateModel(tokenizerVocab, stage)));
    }

    /// <summary>The settings an exact resume needs unchanged (see <see cref="ResumeCheck"/>).</summary>
    Dictionary<string, string> ExactSettings(List<string> files)
    {
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        var d = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["model"] = cfg.Model.InitFrom is { } init ? $"init_from {ContentHashes.DescribeWeights(cfg.Resolve(init))}"
                : ModelShape(cfg.Model),
            ["data.train"] = string.Join("; ", files.Select(ContentHashes.Describe)),   // contents, not names: a same-size edit is refused
            ["data.tokenizer"] = RunArtifacts.TrainTokenizerFile(cfg) is { } tok ? ContentHashes.Describe(tok) : "byte",
            ["data.valid_fraction"] = ResumeCheck.Format(cfg.Data.ValidFraction),
            ["train.seq_len"] = cfg.Train.SeqLen.ToString(inv),
            ["train.seed"] = cfg.Train.Seed.ToString(inv),
            ["train.z_loss"] = ResumeCheck.Format(cfg.Train.ZLoss),
            ["optim.weight_decay"] = ResumeCheck.Format(cfg.Optim.WeightDecay),
            ["optim.eps"] = ResumeCheck.Format(cfg.Optim.Eps),
            ["schedule"] = ResumeCheck.Json(cfg.Schedule),
        };
        if (cfg.Lora != null)
        {
            d["lora"] = ResumeCheck.Json(cfg.Lora);
            // a LoRA checkpoint holds the adapter only: the frozen base is read again from init_from, so it must not have changed
            string baseDir = cfg.Resolve(cfg.Model.InitFrom!);
            d["lora.base_weights"] = ContentHashes.DescribeWeights(baseDir);
        }
        return d;
    }

    /// <summary>The model section without what does not change the math (activation recompute).</summary>
    static string ModelShape(ModelSection m)
    {
        var node = System.Text.Json.Nodes.JsonNode.Parse(JsonSerializer.Serialize(m))!.AsObject();
        node.Remove(nameof(ModelSection.CheckpointActivations));
        node.Remove(nameof(ModelSection.Recompute));
        return node.ToJsonString();
    }

    sealed class CorpusBatches(TokenCorpus corpus, Rng rng) : IBatchSource
    {
        public Batch Next(int batch, int seqLen)
        {
            var ids = new int[batch * seqLen];
            var tg = new int[batch * seqLen];
            corpus.SampleTrain(rng, batch, seqLen, ids, tg);
            return new Batch(ids, tg, Enumerable.Repeat("train", batch).ToArray());
        }

        /// <summary>Draws the window starts without copying: every target of a window is valid.</summary>
        public int Skip(int batch, int seqLen)
        {
            corpus.SkipTrain(rng, batch, seqLen);
            return batch * seqLen;
        }
    }

    LlamaModel CreateModel(int tokenizerVocab, PipelineStage? stage)
    {
        if (cfg.Model.InitFrom is { } from)
        {
            var m = ModelIO.Load(cfg.Resolve(from), backend, stage == null ? null : _ => stage);
            if (m.Config.VocabSize < tokenizerVocab)
            {
                m.Dispose();
                throw new ConfigException($"model.init_from has vocab_size {m.Config.VocabSize}, smaller than the tokenizer's {tokenizerVocab}");
            }
            return m;
        }
        var llama = cfg.ToLlamaConfig(tokenizerVocab);
        if (llama.VocabSize < tokenizerVocab)
            throw new ConfigException($"model.vocab_size ({llama.VocabSize}) is smaller than the tokenizer's vocabulary ({tokenizerVocab})");
        var model = new LlamaModel(llama, backend, stage);
        model.InitializeWeights(cfg.Train.Seed);
        return model;
    }

    /// <summary>As <see cref="ValidationLoss(LlamaModel, TokenCorpus)"/> at the run's layout (through its pipeline's
    /// stages, tensor and context ranks; forward only).</summary>
    public double ValidationLoss(AssembledRun run, TokenCorpus corpus)
    {
        int T = cfg.Train.SeqLen, B = cfg.Train.BatchSize;
        var tokens = corpus.Valid;
        int windows = (int)Math.Min((tokens.Count - 1) / T, (long)cfg.Train.EvalBatches * B);
        if (windows <= 0) return double.NaN;
        var batches = new List<(int[], int[])>();
        for (int w0 = 0; w0 + B <= windows; w0 += B)
        {
            var ids = new int[B * T];
            var tg = new int[B * T];
            for (int i = 0; i < B * T; i++) { ids[i] = tokens[w0 * T + i]; tg[i] = tokens[w0 * T + i + 1]; }
            batches.Add((ids, tg));
        }
        if (batches.Count == 0) return double.NaN;
        var (nll, count) = run.Evaluate(batches, B);
        return nll / count;
    }

    /// <summary>Mean token NLL over up to eval_batches×batch_size held-out windows (no gradients).</summary>
    public double ValidationLoss(LlamaModel model, TokenCorpus corpus)
    {
        int T = cfg.Train.SeqLen, B = cfg.Train.BatchSize;
        if (corpus.ValidWindows(T) == 0) return double.NaN;
        return Eval.Evaluator.Perplexity(model, corpus.Valid, T, B, (long)cfg.Train.EvalBatches * B * T).MeanNll;
    }

    /// <summary>
    /// <c>engine train --dry-run</c>: the per-device memory estimate of every stage of the configured layout, from the
    /// config alone (the tokenizer is read for the vocabulary; no weights are built), against the backend's memory —
    /// the layout, micro-batch rule and fit check of <see cref="Run"/> (<see cref="RunLayout"/>, <see cref="FitCheck"/>).
    /// Throws <see cref="ConfigException"/> when the largest stage cannot fit.
    /// </summary>
    public string DryRun(int worldSize)
    {
        var layout = RunLayout.From(cfg.Parallel, cfg.Model);
        layout.Validate(worldSize, gradAccum: cfg.Train.GradAccum, needs: cfg.Needs);
        var tokenizer = LoadTokenizer(cfg);
        var shape = Shape(tokenizer.VocabSize, Resume != null ? Checkpoints.Resolve(Resume, Path.Combine(cfg.Resolve(cfg.Output.Dir), "checkpoints")) : null);
        layout.Validate(worldSize, shape.NumLayers, cfg.Train.GradAccum, cfg.Needs);
        var l = layout.Plan(worldSize, cfg.Train.BatchSize, cfg.Train.GradAccum, cfg.Train.SeqLen);
        bool gpu = backend.Name != "cpu";
        var stages = FitCheck.Stages(shape, layout, l, gpu);
        long available = backend.AvailableMemoryBytes();
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"model: {shape.ParameterCount():N0} parameters; layout: {l.Describe()}, {worldSize} rank(s) on {backend.Name}");
        sb.AppendLine($"global batch: {l.GlobalBatch} sequences × {l.SeqLen} tokens per step");
        foreach (var e in stages)
            sb.AppendLine($"  stage {e.Stage}: {e.Parameters:N0} parameters, {e.Describe()}");
        var worst = stages.MaxBy(e => e.Total)!;
        sb.Append($"per device: {MemoryEstimate.Gib(worst.Total)} of {MemoryEstimate.Gib(available)} available ({(backend.Name == "cpu" ? "host memory" : "device memory")})");
        FitCheck.Require(worst, available, l);
        return sb.ToString();
    }
}
