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

namespace Engine.Training;

/// <summary>Outcome of a run: where the weights went and the loss trajectory.</summary>
public sealed record TrainResult(string OutputDir, string WeightsDir, IReadOnlyList<StepMetrics> Steps, double? FinalValidLoss,
    long Parameters, double TokensPerSecond);

/// <summary>
/// The training loop (TorchTitan shape): zero-grad → micro-batches (loss summed ÷ global valid tokens) → clip →
/// AdamW → schedule → log. Metrics go to metrics.jsonl in the output folder; final weights to final/ as
/// Hugging Face config.json + model.safetensors.
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

    /// <summary>Called after every step (progress display).</summary>
    public Action<StepMetrics>? OnStep { get; set; }
    /// <summary>Called with one-line status messages.</summary>
    public Action<string>? OnMessage { get; set; }

    /// <summary>Resume from a checkpoint directory, or "latest" under output.dir/checkpoints (null = fresh start).</summary>
    public string? Resume { get; set; }

    /// <summary>The job's ranks (null = this process alone). Rank 0 writes metrics, weights and messages.</summary>
    public ICommunicator? Communicator { get; set; }

    public static ITokenizer LoadTokenizer(TrainConfig cfg)
    {
        if (cfg.Data.Tokenizer == "byte") return new ByteTokenizer();
        string path = cfg.Resolve(cfg.Data.Tokenizer);
        if (!File.Exists(path)) throw new ConfigException($"data.tokenizer: neither \"byte\" nor an existing tokenizer.json: {path}");
        return BpeTokenizer.Load(path);
    }

    public TrainResult Run(CancellationToken cancel = default)
    {
        var comm = Communicator ?? new SingleRankCommunicator(backend);
        bool lead = comm.Rank == 0;
        void Say(string m) { if (lead) OnMessage?.Invoke(m); }
        cfg.Parallel.Validate(comm.WorldSize);
        var tokenizer = LoadTokenizer(cfg);
        if (Resume == null && cfg.Model.InitFrom == null) // a fresh model that cannot fit is refused before any data is read or memory taken
            CheckFits(cfg.ToLlamaConfig(tokenizer.VocabSize), cfg.Train.BatchSize, cfg.Train.SeqLen, cfg.Model.CheckpointActivations, zero: cfg.Parallel.Zero, dp: comm.WorldSize);
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
            string dir = Checkpoints.Resolve(Resume, ckptRoot);
            resumed = Checkpoints.Open(dir);
            if (resumed.State.Step >= cfg.Train.Steps)
                throw new ConfigException($"checkpoint {dir} is at step {resumed.State.Step}, not before train.steps = {cfg.Train.Steps}: nothing to resume");
        }
        // the layout needs the model's depth before any weights are built: from the checkpoint, init_from or the config
        var shape = resumed != null ? ModelIO.LoadConfig(resumed.Directory)
            : cfg.Model.InitFrom is { } init ? ModelIO.LoadConfig(cfg.Resolve(init)) : cfg.ToLlamaConfig(tokenizer.VocabSize);
        using var layout = ParallelLayout.Create(comm, cfg.Parallel, shape.NumLayers);
        var stage = layout.Stage(shape.NumLayers);
        LlamaModel created;
        if (resumed != null)
        {
            created = resumed.LoadModel(backend, _ => stage);
            if (created.Config.VocabSize < tokenizer.VocabSize)
            {
                created.Dispose();
                throw new InvalidDataException($"{resumed.Directory}: checkpoint vocabulary {created.Config.VocabSize} is smaller than the tokenizer's {tokenizer.VocabSize}");
            }
            var mf = resumed.Manifest;
            Say($"resuming from {resumed.Directory} at step {resumed.State.Step}" + (mf.WorldSize != comm.WorldSize || mf.Zero != cfg.Parallel.Zero || mf.Pp != cfg.Parallel.Pp
                ? $" (written by {mf.WorldSize} rank(s), pp {mf.Pp}, ZeRO-{mf.Zero}; resharded to {comm.WorldSize}, pp {cfg.Parallel.Pp}, ZeRO-{cfg.Parallel.Zero})" : ""));
        }
        else created = CreateModel(tokenizer.VocabSize, stage);
        using var model = created;
        int B = cfg.Train.BatchSize, T = cfg.Train.SeqLen;
        CheckFits(model.Config, B, T, cfg.Model.CheckpointActivations, zero: cfg.Parallel.Zero, dp: layout.DataGroup.WorldSize,
            parameters: model.ParameterCount, layers: model.Stage.Layers);
        model.CheckpointActivations = cfg.Model.CheckpointActivations;
        Say($"model: {model.ParameterCount:N0} parameters on {backend.Name}" + (comm.WorldSize > 1
            ? layout.Pipelined ? $" on stage 0 of {cfg.Parallel.Pp} ({cfg.Parallel.Schedule}, {layout.MicroBatches(cfg.Train.GradAccum)} micro-batches), {layout.DataGroup.WorldSize} data-parallel replica(s) ({comm.Kind}), ZeRO-{cfg.Parallel.Zero}"
            : $", {comm.WorldSize} data-parallel ranks ({comm.Kind}), ZeRO-{cfg.Parallel.Zero}" : ""));

        if (lead) Directory.CreateDirectory(outDir);
        comm.Barrier();
        using var metrics = lead ? new StreamWriter(Path.Combine(outDir, "metrics.jsonl"), append: resumed != null) : null;
        using var dp = layout.CreateDataParallel(model);
        var runner = layout.CreateRunner(model, dp);
        using var opt = layout.CreateOptimizer(model, cfg.Optim, dp, runner);
        var rng = new Rng(cfg.Train.Seed);
        if (resumed != null)
        {
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
        };
        double? lastValid = null;
        var steps = TrainingLoop.Run(model, new CorpusBatches(corpus, rng), options, opt, ewc: null,
            onStep: m =>
            {
                metrics?.WriteLine(MetricsJson(m));
                metrics?.Flush();
                if (cfg.Output.CheckpointEvery > 0 && m.Step % cfg.Output.CheckpointEvery == 0 && m.Step < m.TotalSteps)
                {
                    var (a, b, c, d) = rng.State;
                    string dir = Checkpoints.Save(ckptRoot, model, opt, new CheckpointState(m.Step, m.Tokens, [a, b, c, d], opt.Step), cfg.Output.KeepCheckpoints, layout);
                    Say($"checkpoint {dir}");
                }
                if (lead) OnStep?.Invoke(m);
            },
            validate: () => (lastValid = runner != null ? PipelineValidationLoss(runner, corpus) : ValidationLoss(model, corpus)).Value,
            cancel: cancel,
            pipeline: runner);
        long tokens = steps.Count > 0 ? steps[^1].Tokens : 0;

        string weightsDir = Path.Combine(outDir, "final");
        layout.SaveModel(model, weightsDir, cfg.Output.SaveDtype, new Dictionary<string, string>
        {
            ["engine.steps"] = cfg.Train.Steps.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["engine.tokens"] = tokens.ToString(System.Globalization.CultureInfo.InvariantCulture),
        });
        Say($"saved {weightsDir}");
        return new TrainResult(outDir, weightsDir, steps, lastValid, model.ParameterCount, steps.Count > 0 ? steps[^1].TokensPerSecond : 0);
    }

    /// <summary>One JSON line of metrics.jsonl.</summary>
    public static string MetricsJson(StepMetrics m) => JsonSerializer.Serialize(new
    {
        step = m.Step,
        loss = m.Loss,
        lr = m.Lr,
        grad_norm = m.GradNorm,
        tokens = m.Tokens,
        tokens_per_s = m.TokensPerSecond,
        elapsed_s = m.ElapsedSeconds,
        valid_loss = m.ValidLoss,
        source_loss = m.SourceLosses,
        ewc_penalty = m.EwcPenalty,
    });

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

    /// <summary>Refuses a model whose weights, gradients, AdamW state and activations exceed available memory
    /// (per rank: ZeRO-1 divides the moments by the data-parallel size, ZeRO-2 also the gradients).</summary>
    public static void CheckFits(LlamaConfig c, int batch, int seqLen, bool checkpoint, long? availableBytes = null, int zero = 0, int dp = 1,
        long? parameters = null, int? layers = null)
    {
        long available = availableBytes ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        double n = (parameters ?? c.ParameterCount()) * 4.0;
        int depth = layers ?? c.NumLayers;
        double state = n + (zero >= 2 ? n / dp : n) + (zero >= 1 ? 2 * n / dp : 2 * n); // weights, grads, m, v in fp32
        long tok = (long)batch * seqLen;
        int kv = c.NumKvHeads * c.HeadDim;
        double perLayer = tok * (8.0 * c.HiddenSize + 4.0 * kv + 4.0 * c.IntermediateSize) * 4 + (double)batch * c.NumHeads * seqLen * 4;
        double acts = (checkpoint ? tok * c.HiddenSize * 4.0 * depth + perLayer : perLayer * depth) + tok * (double)c.VocabSize * 4 * 2;
        double need = state + acts;
        if (need > available * 0.9)
            throw new ConfigException($"model does not fit: needs about {need / (1 << 30):F1} GiB (weights+grads+AdamW {state / (1 << 30):F1} GiB, activations {acts / (1 << 30):F1} GiB) but {available / (double)(1 << 30):F1} GiB are available; reduce train.batch_size or train.seq_len, the model size, or set model.checkpoint_activations = true");
    }
}
