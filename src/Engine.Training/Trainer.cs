using System.Text.Json;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Data;
using Engine.Model;
using Engine.Model.IO;
using Engine.Training.Config;

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

    public static ITokenizer LoadTokenizer(TrainConfig cfg)
    {
        if (cfg.Data.Tokenizer == "byte") return new ByteTokenizer();
        string path = cfg.Resolve(cfg.Data.Tokenizer);
        if (!File.Exists(path)) throw new ConfigException($"data.tokenizer: neither \"byte\" nor an existing tokenizer.json: {path}");
        return BpeTokenizer.Load(path);
    }

    public TrainResult Run(CancellationToken cancel = default)
    {
        var tokenizer = LoadTokenizer(cfg);
        var files = cfg.Data.Train.Select(cfg.Resolve).ToList();
        foreach (var f in files) if (!File.Exists(f)) throw new FileNotFoundException($"data.train: file not found: {f}", f);
        OnMessage?.Invoke($"tokenizing {files.Count} file(s)");
        var corpus = TokenCorpus.FromFiles(files, tokenizer, cfg.Data.ValidFraction);
        OnMessage?.Invoke($"{corpus.TrainTokens:N0} training tokens, {corpus.ValidTokens:N0} held out");

        string outDir = cfg.Resolve(cfg.Output.Dir);
        string ckptRoot = Path.Combine(outDir, "checkpoints");
        CheckpointState? resumed = null;
        List<(string Name, float[] M, float[] V)>? moments = null;
        LlamaModel created;
        if (Resume != null)
        {
            string dir = Checkpoints.Resolve(Resume, ckptRoot);
            (created, resumed, moments) = Checkpoints.Load(dir, backend);
            if (created.Config.VocabSize < tokenizer.VocabSize)
            {
                created.Dispose();
                throw new InvalidDataException($"{dir}: checkpoint vocabulary {created.Config.VocabSize} is smaller than the tokenizer's {tokenizer.VocabSize}");
            }
            if (resumed.Step >= cfg.Train.Steps)
            {
                created.Dispose();
                throw new ConfigException($"checkpoint {dir} is at step {resumed.Step}, not before train.steps = {cfg.Train.Steps}: nothing to resume");
            }
            OnMessage?.Invoke($"resuming from {dir} at step {resumed.Step}");
        }
        else created = CreateModel(tokenizer.VocabSize);
        using var model = created;
        int B = cfg.Train.BatchSize, T = cfg.Train.SeqLen;
        CheckFits(model.Config, B, T, cfg.Model.CheckpointActivations);
        model.CheckpointActivations = cfg.Model.CheckpointActivations;
        OnMessage?.Invoke($"model: {model.ParameterCount:N0} parameters on {backend.Name}");

        Directory.CreateDirectory(outDir);
        using var metrics = new StreamWriter(Path.Combine(outDir, "metrics.jsonl"), append: resumed != null);
        using var opt = new AdamW(model, cfg.Optim);
        var rng = new Rng(cfg.Train.Seed);
        if (resumed != null)
        {
            opt.ImportState(resumed.AdamStep, moments!);
            rng.State = (resumed.Rng[0], resumed.Rng[1], resumed.Rng[2], resumed.Rng[3]);
        }
        var options = new LoopOptions
        {
            Steps = cfg.Train.Steps,
            BatchSize = B,
            SeqLen = T,
            GradAccum = cfg.Train.GradAccum,
            Optim = cfg.Optim,
            Schedule = cfg.Schedule,
            ZLoss = cfg.Train.ZLoss,
            EvalEvery = cfg.Train.EvalEvery,
            StartStep = resumed?.Step ?? 0,
            StartTokens = resumed?.Tokens ?? 0,
        };
        double? lastValid = null;
        var steps = TrainingLoop.Run(model, new CorpusBatches(corpus, rng), options, opt, ewc: null,
            onStep: m =>
            {
                metrics.WriteLine(MetricsJson(m));
                metrics.Flush();
                if (cfg.Output.CheckpointEvery > 0 && m.Step % cfg.Output.CheckpointEvery == 0 && m.Step < m.TotalSteps)
                {
                    var (a, b, c, d) = rng.State;
                    string dir = Checkpoints.Save(ckptRoot, model, opt, new CheckpointState(m.Step, m.Tokens, [a, b, c, d], opt.Step), cfg.Output.KeepCheckpoints);
                    OnMessage?.Invoke($"checkpoint {dir}");
                }
                OnStep?.Invoke(m);
            },
            validate: () => (lastValid = ValidationLoss(model, corpus)).Value,
            cancel: cancel);
        long tokens = steps.Count > 0 ? steps[^1].Tokens : 0;

        string weightsDir = Path.Combine(outDir, "final");
        ModelIO.Save(model, weightsDir, cfg.Output.SaveDtype, new Dictionary<string, string>
        {
            ["engine.steps"] = cfg.Train.Steps.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["engine.tokens"] = tokens.ToString(System.Globalization.CultureInfo.InvariantCulture),
        });
        OnMessage?.Invoke($"saved {weightsDir}");
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
    }

    LlamaModel CreateModel(int tokenizerVocab)
    {
        if (cfg.Model.InitFrom is { } from)
        {
            var m = ModelIO.Load(cfg.Resolve(from), backend);
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
        var model = new LlamaModel(llama, backend);
        model.InitializeWeights(cfg.Train.Seed);
        return model;
    }

    /// <summary>Mean token NLL over up to eval_batches×batch_size held-out windows (no gradients).</summary>
    public double ValidationLoss(LlamaModel model, TokenCorpus corpus)
    {
        int T = cfg.Train.SeqLen, B = cfg.Train.BatchSize;
        if (corpus.ValidWindows(T) == 0) return double.NaN;
        return Eval.Evaluator.Perplexity(model, corpus.Valid, T, B, (long)cfg.Train.EvalBatches * B * T).MeanNll;
    }

    /// <summary>Refuses a model whose weights, gradients, AdamW state and activations exceed available memory.</summary>
    public static void CheckFits(LlamaConfig c, int batch, int seqLen, bool checkpoint, long? availableBytes = null)
    {
        long available = availableBytes ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        double state = c.ParameterCount() * 4.0 * 4; // weights, grads, m, v in fp32
        long n = (long)batch * seqLen;
        int kv = c.NumKvHeads * c.HeadDim;
        double perLayer = n * (8.0 * c.HiddenSize + 4.0 * kv + 4.0 * c.IntermediateSize) * 4 + (double)batch * c.NumHeads * seqLen * 4;
        double acts = (checkpoint ? n * c.HiddenSize * 4.0 * c.NumLayers + perLayer : perLayer * c.NumLayers) + n * (double)c.VocabSize * 4 * 2;
        double need = state + acts;
        if (need > available * 0.9)
            throw new ConfigException($"model does not fit: needs about {need / (1 << 30):F1} GiB (weights+grads+AdamW {state / (1 << 30):F1} GiB, activations {acts / (1 << 30):F1} GiB) but {available / (double)(1 << 30):F1} GiB are available; reduce train.batch_size or train.seq_len, the model size, or set model.checkpoint_activations = true");
    }
}
