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

    public TrainResult Run(CancellationToken cancel = default)
    {
        var comm = Communicator ?? new SingleRankCommunicator(backend);
        bool lead = comm.Rank == 0;
        void Say(string m) { if (lead) OnMessage?.Invoke(m); }
        cfg.Parallel.Validate(comm.WorldSize);
        var tokenizer = LoadTokenizer(cfg);
        if (Resume == null && cfg.Model.InitFrom == null) // a fresh model that cannot fit is refused before any data is read or memory taken
        {
            var fresh = cfg.ToLlamaConfig(tokenizer.VocabSize);
            cfg.Parallel.Validate(comm.WorldSize, fresh.NumLayers);   // a bad layer split is named before it is estimated
            Fit(MemoryModel.Worst(fresh, PlanLayout(comm.WorldSize), backend.Name != "cpu", cfg.Parallel.Layers.Length > 0 ? cfg.Parallel.Layers : null), backend.AvailableMemoryBytes());
        }
        var files = cfg.Data.Train.Select(cfg.Resolve).ToList();
        foreach (var f in files) if (!File.Exists(f)) throw new FileNotFoundException($"data.train: file not found: {f}", f);
        Say($"tokenizing {files.Count} file(s)");
        var corpus = TokenCorpus.FromFiles(files, tokenizer, cfg.Data.ValidFraction);
        Say($"{corpus.TrainTokens:N0} training tokens, {corpus.ValidTokens:N0} held out");

        string outDir = cfg.Resolve(cfg.Output.Dir);
        string ckptRoot = Path.Combine(outDir, "checkpoints");
        Checkpoints.Loaded? resumed = null;
        if (Resume != null)
        {
            resumed = Checkpoints.OpenForResume(Resume, ckptRoot, Say);
            if (resumed == null) Say($"--resume auto: no valid checkpoint under {ckptRoot}: starting from step 0");
            else if (resumed.State.Step >= cfg.Train.Steps)
                throw new ConfigException($"checkpoint {resumed.Directory} is at step {resumed.State.Step}, not before train.steps = {cfg.Train.Steps}: nothing to resume");
            resumed?.RequireKind(lora: cfg.Lora != null);
        }
        // the layout needs the model's depth before any weights are built: from the checkpoint, init_from or the config
        var shape = resumed != null ? ModelIO.LoadConfig(resumed.Directory)
            : cfg.Model.InitFrom is { } init ? ModelIO.LoadConfig(cfg.Resolve(init)) : cfg.ToLlamaConfig(tokenizer.VocabSize);
        using var layout = ParallelLayout.Create(comm, cfg.Parallel, shape.NumLayers);
        var stage = layout.Stage(shape.NumLayers);
        LlamaModel created;
        if (resumed != null && !resumed.HasAdapter)
        {
            created = resumed.LoadModel(backend, _ => stage);
            if (created.Config.VocabSize < tokenizer.VocabSize)
            {
                created.Dispose();
                throw new InvalidDataException($"{resumed.Directory}: checkpoint vocabulary {created.Config.VocabSize} is smaller than the tokenizer's {tokenizer.VocabSize}");
            }
        }
        else created = CreateModel(tokenizer.VocabSize, stage);   // a LoRA run's frozen base: rebuilt as at its start
        if (resumed != null)
        {
            var mf = resumed.Manifest;
            Say($"resuming from {resumed.Directory} at step {resumed.State.Step}" + (resumed.HasAdapter ? " (LoRA adapter; base from model.init_from)" : "")
                + (mf.WorldSize != comm.WorldSize || mf.Zero != cfg.Parallel.Zero || mf.Pp != cfg.Parallel.Pp
                ? $" (written by {mf.WorldSize} rank(s), pp {mf.Pp}, ZeRO-{mf.Zero}; resharded to {comm.WorldSize}, pp {cfg.Parallel.Pp}, ZeRO-{cfg.Parallel.Zero})" : ""));
        }
        using var model = created;
        RunArtifacts.Attach(model, tokenizer, RunArtifacts.RunName(outDir), refuseAs: $"data.tokenizer ({cfg.Data.Tokenizer}) is not the tokenizer of the model it would train (set data.tokenizer = \"model\" to train with the model's own)");
        int B = cfg.Train.BatchSize, T = cfg.Train.SeqLen;
        CheckFits(shape, PlanLayout(comm.WorldSize), stage, backend.AvailableMemoryBytes(), gpu: backend.Name != "cpu");
        model.CheckpointActivations = cfg.Model.CheckpointActivations;
        Say($"model: {model.ParameterCount:N0} parameters on {backend.Name}" + (comm.WorldSize > 1
            ? layout.Pipelined ? $" on stage 0 of {cfg.Parallel.Pp} ({cfg.Parallel.Schedule}, {layout.MicroBatches(cfg.Train.GradAccum)} micro-batches), {layout.DataGroup.WorldSize} data-parallel replica(s) ({comm.Kind}), ZeRO-{cfg.Parallel.Zero}"
            : $", {comm.WorldSize} data-parallel ranks ({comm.Kind}), ZeRO-{cfg.Parallel.Zero}" : ""));

        // LoRA: the base is frozen; the optimizer and data parallelism work on the adapters' store alone
        using var lora = cfg.Lora != null ? LoraSetup.Attach(model, cfg.Lora, cfg.Train.Seed, cfg.Resolve) : null;
        if (lora != null) Say(LoraSetup.Describe(lora, model));
        using var dp = lora != null ? layout.CreateDataParallel(lora.Store) : layout.CreateDataParallel(model);
        var runner = layout.CreateRunner(model, dp);
        using var opt = lora != null ? new AdamW(lora.Store, cfg.Optim, dp) : layout.CreateOptimizer(model, cfg.Optim, dp, runner);
        int replicas = runner?.Grid.Replicas ?? dp.Comm.WorldSize, microBatches = layout.MicroBatches(cfg.Train.GradAccum);
        var exact = ExactSettings(files, (long)replicas * microBatches * B);
        var overridable = ResumeCheck.Overridable("", cfg.Optim, cfg.Train.Steps);
        if (resumed != null)
        {
            var effective = ResumeCheck.Check(resumed.Directory, resumed.State.Exact, exact, resumed.State.Overridable, overridable);
            Say("resume: settings in effect: " + string.Join(", ", effective) + (SkipBatches is { } sb ? $", skipping the batches of steps {sb.First}-{sb.Last}" : ""));
        }

        string metricsPath = Path.Combine(outDir, "metrics.jsonl");
        if (lead)
        {
            Directory.CreateDirectory(outDir);
            // steps after the checkpoint are trained again: their lines from the lost run go
            if (resumed != null) ResumeCheck.TruncateMetrics(metricsPath, e => e.GetProperty("step").GetInt32() <= resumed.State.Step);
        }
        comm.Barrier();
        var launch = Engine.Parallel.Launch.LaunchEnvironment.Detect();
        var throughput = Metrics.Throughput.For(backend, model.Config, T, comm.WorldSize, nodes: launch.WorldSize > 1 ? Math.Max(1, launch.WorldSize / launch.LocalWorldSize) : 1);
        Say($"MFU peak: {throughput.PeakSource}");
        using var metrics = new Metrics.MetricsLog(comm, backend, throughput, metricsPath, append: resumed != null,
            tensorBoardDir: cfg.Output.Tensorboard ? Path.Combine(outDir, "tensorboard") : null);
        if (metrics.TensorBoardFile is { } tb) Say($"TensorBoard events: {tb}");
        var rng = new Rng(cfg.Train.Seed);
        if (resumed != null)
        {
            if (lora != null) resumed.LoadAdapter(lora);
            resumed.LoadOptimizer(opt);
            var r = resumed.State.Rng;
            rng.State = (r[0], r[1], r[2], r[3]);
        }
        var options = new LoopOptions
        {
            Steps = cfg.Train.Steps,
            BatchSize = B,
            SeqLen = T,
            GradAccum = layout.MicroBatches(cfg.Train.GradAccum),
            Optim = cfg.Optim,
            Schedule = cfg.Schedule,
            ZLoss = cfg.Train.ZLoss,
            EvalEvery = cfg.Train.EvalEvery,
            StartStep = resumed?.State.Step ?? 0,
            StartTokens = resumed?.State.Tokens ?? 0,
            StartSkipped = resumed?.State.SkippedSteps ?? 0,
            Guard = new GuardOptions { Mode = cfg.Train.Guard, ZScore = cfg.Train.GuardZ, Window = cfg.Train.GuardWindow },
            SkipBatches = SkipBatches,
        };
        if (Control != null && resumed != null) Control.LastCheckpoint = resumed.Directory;
        double? lastValid = null;
        int savedStep = resumed?.State.Step ?? -1;
        string? saved = null;
        void Save(StepMetrics m)
        {
            // a step that failed the finite check never reaches here (guard "fail" throws; "skip" left the weights as they were)
            if (!(m.Skipped || double.IsFinite(m.Loss))) throw new InvalidOperationException($"step {m.Step} is not finite: not checkpointed");
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var (a, b, c, d) = rng.State;
            saved = Checkpoints.Save(ckptRoot, model, opt, new CheckpointState(m.Step, m.Tokens, [a, b, c, d], opt.Step)
            {
                SkippedSteps = m.SkippedSteps,
                Exact = exact,
                Overridable = overridable,
            }, cfg.Output.KeepCheckpoints, layout, lora);
            savedStep = m.Step;
            Control?.SaveDone(clock.Elapsed.TotalSeconds);
            if (Control != null) Control.LastCheckpoint = saved;
            Say($"checkpoint {saved}");
        }
        var steps = TrainingLoop.Run(model, new CorpusBatches(corpus, rng), options, opt, ewc: null,
            onStep: m =>
            {
                var record = metrics.Record(m);
                if (cfg.Output.CheckpointEvery > 0 && m.Step % cfg.Output.CheckpointEvery == 0 && m.Step < m.TotalSteps) Save(m);
                if (lead) OnStep?.Invoke(record);
            },
            validate: () => (lastValid = runner != null ? PipelineValidationLoss(runner, corpus) : ValidationLoss(model, corpus)).Value,
            cancel: cancel,
            pipeline: runner,
            control: Control);
        long tokens = steps.Count > 0 ? steps[^1].Tokens : 0;
        if (runner != null)
        {
            // every stage's idle share of its pipelined steps, averaged over the world (all stages, all replicas)
            Span<double> idle = [runner.StepSeconds > 0 ? runner.WaitSeconds / runner.StepSeconds : 0, runner.TimedSteps > 0 ? 1 : 0];
            comm.AllReduce(idle);
            int M = layout.MicroBatches(cfg.Train.GradAccum);
            if (idle[1] > 0)
                Say($"pipeline: stages idle {idle[0] / idle[1]:P1} of each step on average (measured: bubble + transfers, {runner.TimedSteps} step(s) after the first); " +
                    $"theory (P−1)/(M+P−1) = {PipelineSchedule.Bubble(cfg.Parallel.Pp, M):P1} for P = {cfg.Parallel.Pp}, M = {M}");
        }
        if (Control?.Stopped == true && steps.Count > 0 && steps[^1].Step < cfg.Train.Steps)
        {
            if (savedStep != steps[^1].Step) Save(steps[^1]);
            Say($"{Control.StopReason}: stopped after step {steps[^1].Step} of {cfg.Train.Steps}; resume with --resume latest");
            return new TrainResult(outDir, "", steps, lastValid, model.ParameterCount, steps[^1].TokensPerSecond)
            {
                StoppedReason = Control.StopReason,
                Checkpoint = saved,
            };
        }

        string weightsDir = Path.Combine(outDir, "final");
        if (lora != null)
        {
            if (lead) lora.Save(weightsDir, cfg.Model.InitFrom is { } b ? cfg.Resolve(b) : null);
            comm.Barrier();
            Say($"saved the adapter (PEFT layout) to {weightsDir}");
        }
        else
        {
            layout.SaveModel(model, weightsDir, cfg.Output.SaveDtype, new Dictionary<string, string>
            {
                ["engine.steps"] = cfg.Train.Steps.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["engine.tokens"] = tokens.ToString(System.Globalization.CultureInfo.InvariantCulture),
            });
            Say($"saved {weightsDir}");
        }
        return new TrainResult(outDir, weightsDir, steps, lastValid, model.ParameterCount, steps.Count > 0 ? steps[^1].TokensPerSecond : 0);
    }

    /// <summary>The settings an exact resume needs unchanged (see <see cref="ResumeCheck"/>).</summary>
    Dictionary<string, string> ExactSettings(List<string> files, long sequencesPerStep)
    {
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        var d = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["model"] = cfg.Model.InitFrom is { } init ? $"init_from {cfg.Resolve(init)}"
                : ModelShape(cfg.Model),
            ["data.train"] = string.Join("; ", files.Select(f => $"{Path.GetFullPath(f)} ({new FileInfo(f).Length} bytes)")),
            ["data.tokenizer"] = cfg.Data.Tokenizer == "byte" ? "byte" : cfg.Resolve(cfg.Data.Tokenizer),
            ["data.valid_fraction"] = ResumeCheck.Format(cfg.Data.ValidFraction),
            ["train.seq_len"] = cfg.Train.SeqLen.ToString(inv),
            ["train.sequences_per_step"] = sequencesPerStep.ToString(inv),
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
            d["lora.base_weights"] = string.Join("; ", Directory.GetFiles(baseDir, "*.safetensors").Order(StringComparer.Ordinal)
                .Select(f => $"{Path.GetFileName(f)} ({new FileInfo(f).Length} bytes)"));
        }
        return d;
    }

    /// <summary>The model section without what does not change the math (activation checkpointing).</summary>
    static string ModelShape(ModelSection m)
    {
        var node = System.Text.Json.Nodes.JsonNode.Parse(JsonSerializer.Serialize(m))!.AsObject();
        node.Remove(nameof(ModelSection.CheckpointActivations));
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

    /// <summary>As <see cref="ValidationLoss"/>, through the pipeline's stages (forward only).</summary>
    public double PipelineValidationLoss(PipelineRunner runner, TokenCorpus corpus)
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
        var (nll, count) = runner.Evaluate(batches, B);
        return nll / count;
    }

    /// <summary>Mean token NLL over up to eval_batches×batch_size held-out windows (no gradients).</summary>
    public double ValidationLoss(LlamaModel model, TokenCorpus corpus)
    {
        int T = cfg.Train.SeqLen, B = cfg.Train.BatchSize;
        if (corpus.ValidWindows(T) == 0) return double.NaN;
        return Eval.Evaluator.Perplexity(model, corpus.Valid, T, B, (long)cfg.Train.EvalBatches * B * T).MeanNll;
    }

    /// <summary>The layout this run's config describes, for the memory model (micro-batch = train.batch_size; micro-batches
    /// per step = parallel.micro_batches under a pipeline, else train.grad_accum).</summary>
    public PlanLayout PlanLayout(int worldSize)
    {
        var p = cfg.Parallel;
        int micro = p.Pp > 1 && p.MicroBatches > 0 ? p.MicroBatches : cfg.Train.GradAccum;
        return new PlanLayout(Math.Max(1, worldSize / Math.Max(1, p.Pp)), p.Pp, p.Zero, cfg.Train.BatchSize, micro, cfg.Train.SeqLen,
            cfg.Model.CheckpointActivations, p.Schedule, p.BucketMb);
    }

    /// <summary>
    /// <c>engine train --dry-run</c>: the per-device memory estimate of every stage of the configured layout, from the
    /// config alone (the tokenizer is read for the vocabulary; no weights are built), against the backend's memory.
    /// Throws <see cref="ConfigException"/> when the largest stage cannot fit.
    /// </summary>
    public string DryRun(int worldSize)
    {
        cfg.Parallel.Validate(worldSize);
        var tokenizer = LoadTokenizer(cfg);
        var shape = Resume != null ? ModelIO.LoadConfig(Checkpoints.Resolve(Resume, Path.Combine(cfg.Resolve(cfg.Output.Dir), "checkpoints")))
            : cfg.Model.InitFrom is { } init ? ModelIO.LoadConfig(cfg.Resolve(init)) : cfg.ToLlamaConfig(tokenizer.VocabSize);
        var l = PlanLayout(worldSize);
        bool gpu = backend.Name != "cpu";
        var stages = MemoryModel.Stages(shape, l, gpu, cfg.Parallel.Layers.Length > 0 ? cfg.Parallel.Layers : null);
        long available = backend.AvailableMemoryBytes();
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"model: {shape.ParameterCount():N0} parameters; layout: {l.Describe()}, {worldSize} rank(s) on {backend.Name}");
        foreach (var e in stages)
            sb.AppendLine($"  stage {e.Stage}: {e.Parameters:N0} parameters, {e.Describe()}");
        var worst = stages.MaxBy(e => e.Total)!;
        sb.Append($"per device: {MemoryEstimate.Gib(worst.Total)} of {MemoryEstimate.Gib(available)} available ({(backend.Name == "cpu" ? "host memory" : "device memory")})");
        Fit(worst, available);
        return sb.ToString();
    }

    /// <summary>Refuses a layout whose largest stage needs more than 90% of <paramref name="available"/> bytes.</summary>
    static void Fit(MemoryEstimate e, long available)
    {
        if (e.Total > available * 0.9)
            throw new ConfigException($"model does not fit: stage {e.Stage} needs about {e.Describe()} but {MemoryEstimate.Gib(available)} are available; " +
                "reduce train.batch_size or train.seq_len, the model size, set model.checkpoint_activations = true, raise parallel.zero, or add pipeline stages (engine plan ranks the layouts)");
    }

    /// <summary>Refuses a model whose weights, gradients, AdamW state and activations exceed available memory, by
    /// <see cref="MemoryModel"/> (the estimate of <c>engine plan</c> and <c>--dry-run</c>); null memory: this host's.</summary>
    public static void CheckFits(LlamaConfig c, PlanLayout layout, PipelineStage? stage = null, long? availableBytes = null, bool gpu = false) =>
        Fit(MemoryModel.ForStage(c, layout, stage ?? PipelineStage.Whole(c.NumLayers), gpu), availableBytes ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);
}
