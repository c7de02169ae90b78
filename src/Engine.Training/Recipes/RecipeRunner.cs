using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Data;
using Engine.Model;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Training.Eval;
using Engine.Training.Forgetting;
using Engine.Training.Parallel;

namespace Engine.Training.Recipes;

/// <summary>What one stage produced and how its model scored.</summary>
public sealed record StageReport
{
    public required string Name { get; init; }
    public required string Init { get; init; }
    public Dictionary<string, double> Perplexity { get; init; } = new();
    /// <summary>Bits per UTF-8 byte per group and domain: comparable across tokenizers (vocabulary expansion).</summary>
    public Dictionary<string, double> BitsPerByte { get; init; } = new();
    public double? FewShotAccuracy { get; init; }
    public double? FewShotMacroF1 { get; init; }
    public double? FewShotCalibratedAccuracy { get; init; }
    public double? FewShotCalibratedMacroF1 { get; init; }
    public int FewShotCount { get; init; }
    public long TokensTrained { get; init; }
    public double TrainSeconds { get; init; }
    public double EvalSeconds { get; init; }
    public double TokensPerSecond { get; init; }
    public int VocabSize { get; init; }
    public string WeightsDir { get; init; } = "";
    public List<string> Notes { get; init; } = new();
    [System.Text.Json.Serialization.JsonIgnore] public List<StepMetrics> Steps { get; init; } = new();
}

/// <summary>Runs a <see cref="RecipeConfig"/>: stage after stage, each evaluated identically, then the report.</summary>
public sealed class RecipeRunner(RecipeConfig cfg, IBackend backend)
{
    readonly Dictionary<string, LoadedSource> sources = new(StringComparer.Ordinal);
    readonly Dictionary<string, string> stageWeights = new(StringComparer.Ordinal);
    ITokenizer? baseTokenizer, expandedTokenizer;

    /// <summary>Messages about the whole run (rank 0 only).</summary>
    public Action<string>? Log { get; set; }
    /// <summary>Every training step (rank 0 only).</summary>
    public Action<string, StepMetrics>? OnStep { get; set; }

    /// <summary>The job's ranks (null = this process alone): each stage trains data-parallel over them
    /// ([parallel] section), evaluation is split across them, rank 0 writes weights, reports and metrics.</summary>
    public ICommunicator? Communicator { get; set; }

    ICommunicator comm = null!;
    bool Lead => comm.Rank == 0;

    void Say(string message) { if (Lead) Log?.Invoke(message); }

    public List<StageReport> Run(CancellationToken cancel = default)
    {
        comm = Communicator ?? new SingleRankCommunicator(backend);
        cfg.Parallel.Validate(comm.WorldSize);
        if (cfg.Parallel.Pp > 1)
            throw new Config.ConfigException("parallel.pp > 1: recipes train data-parallel only (pipeline stages are for engine train); set parallel.pp = 1");
        string outDir = cfg.Resolve(cfg.Output.Dir);
        if (Lead) Directory.CreateDirectory(outDir);
        comm.Barrier();
        foreach (var (name, s) in cfg.Sources)
        {
            var loaded = RecipeSources.Load(name, s, cfg);
            sources[name] = loaded;
            Say(loaded.IsPretrain
                ? $"source {name}: {loaded.TrainDocs.Count} training documents, {loaded.HeldOutDocs.Count} held out"
                : $"source {name}: {loaded.Examples.Count} instruction examples");
        }
        // a trained tokenizer is trained and saved by rank 0; the other ranks load the file it wrote
        baseTokenizer = OnLead(() => RecipeTokenizers.Build(cfg, sources, outDir, Log),
            () => cfg.Tokenizer.Kind == "byte" || cfg.Tokenizer.Path != null ? RecipeTokenizers.Build(cfg, sources, outDir, null)
                : BpeTokenizer.Load(Path.Combine(outDir, "tokenizer.json")));
        if (cfg.Stages.Any(s => s.ExpandedVocab))
            expandedTokenizer = OnLead(() => RecipeTokenizers.Expand(cfg, baseTokenizer, sources, outDir, Log),
                () => BpeTokenizer.Load(Path.Combine(outDir, "tokenizer_expanded.json")));
        var evalSet = LoadFewShot();
        var reports = new List<StageReport>();
        using var metrics = Lead ? new StreamWriter(Path.Combine(outDir, "metrics.jsonl")) : null;
        foreach (var stage in cfg.Stages)
        {
            cancel.ThrowIfCancellationRequested();
            var r = RunStage(stage, outDir, evalSet, metrics, cancel);
            reports.Add(r);
            if (Lead) RecipeReportWriter.Write(outDir, cfg, reports);
        }
        comm.Barrier();
        return reports;
    }

    /// <summary>Runs lead on rank 0, then (after a barrier) follow on the other ranks.</summary>
    T OnLead<T>(Func<T> lead, Func<T> follow)
    {
        if (comm.WorldSize == 1) return lead();
        T result = Lead ? lead() : default!;
        comm.Barrier();
        return Lead ? result : follow();
    }

    (List<LabeledExample> Test, List<LabeledExample> Pool)? LoadFewShot()
    {
        if (cfg.Eval.FewShotFile == null) return null;
        var test = LabeledData.Read(cfg.Resolve(cfg.Eval.FewShotFile)).Examples;
        var pool = cfg.Eval.FewShotPool != null ? LabeledData.Read(cfg.Resolve(cfg.Eval.FewShotPool)).Examples : test;
        return (test, pool);
    }

    StageReport RunStage(StageSection st, string outDir, (List<LabeledExample> Test, List<LabeledExample> Pool)? evalSet, StreamWriter? metrics, CancellationToken cancel)
    {
        var notes = new List<string>();
        var tok = st.ExpandedVocab ? expandedTokenizer! : baseTokenizer!;
        Say($"stage {st.Name}: init {st.Init}, {st.Steps} steps × {st.BatchSize}×{st.SeqLen} tokens, mixture {string.Join(", ", st.Weights.Select(w => $"{w.Key}={w.Value}"))}");
        using var model = InitModel(st, tok, notes);
        if (st.Trainable == "embeddings_and_head") model.SetTrainable(LlamaModel.IsEmbeddingOrHead);
        else model.SetTrainable(null);

        ulong seed = cfg.Seed ^ RecipeSources.StableHash(st.Name);
        var streams = new List<(string Name, ISampleStream Stream)>();
        var names = st.Weights.Keys.Concat(st.EndWeights?.Keys ?? Enumerable.Empty<string>()).Distinct().ToList();
        foreach (var name in names)
        {
            var src = sources[name];
            var docs = src.TrainDocs;
            bool shuffle = true;
            if (st.SelectTop > 0 && name == st.SelectSource)
            {
                var task = evalSet?.Pool.Select(e => e.Text).Take(256).ToList() ?? throw new InvalidOperationException("data selection needs eval.few_shot_pool as the task set");
                var sel = DataSelection.Select(model, tok, docs, task, st.SelectTop, st.Curriculum, Math.Min(128, model.Config.MaxPositionEmbeddings));
                notes.Add($"selected {sel.Kept.Count}/{sel.Candidates} {name} documents by task similarity: mean cosine {sel.MeanScoreKept:F3} kept vs {sel.MeanScoreAll:F3} all");
                Say(notes[^1]);
                docs = sel.Kept;
                shuffle = !st.Curriculum;
            }
            streams.Add((name, Stream(src, docs, tok, st.SeqLen, seed + (ulong)streams.Count, shuffle)));
        }
        double[] start = names.Select(n => st.Weights.GetValueOrDefault(n)).ToArray();
        var schedule = st.EndWeights == null ? WeightSchedule.Constant(start)
            : WeightSchedule.Linear(start, names.Select(n => st.EndWeights.GetValueOrDefault(n)).ToArray(), st.RampTokens);
        var mixture = new MixtureStream(streams, schedule, seed);

        // data parallelism lays the store out anew: everything after this looks parameters up by name
        using var dp = DataParallel.Create(model.Store, comm, cfg.Parallel.Zero, cfg.Parallel.BucketMb);
        using var ewc = st.EwcLambda > 0 ? EstimateEwc(model, st, tok, seed, dp) : null;
        using var opt = new AdamW(model, st.Optim, dp);
        var options = new LoopOptions
        {
            Steps = st.Steps,
            BatchSize = st.BatchSize,
            SeqLen = st.SeqLen,
            GradAccum = st.GradAccum,
            Optim = st.Optim,
            Schedule = st.Schedule,
            ZLoss = st.ZLoss,
        };
        var steps = TrainingLoop.Run(model, new StreamBatches(mixture), options, opt, ewc, m =>
        {
            if (!Lead) return;
            metrics?.WriteLine(JsonSerializer.Serialize(new { stage = st.Name, m.Step, m.Loss, m.Lr, m.GradNorm, m.Tokens, m.TokensPerSecond, source_loss = m.SourceLosses, m.EwcPenalty }));
            metrics?.Flush();
            OnStep?.Invoke(st.Name, m);
        }, cancel: cancel);
        double trainSeconds = steps.Count > 0 ? steps[^1].ElapsedSeconds : 0;

        string weights = Path.Combine(outDir, "stages", st.Name);
        if (Lead) ModelIO.Save(model, weights);
        comm.Barrier();
        stageWeights[st.Name] = weights;

        var sw = Stopwatch.StartNew();
        // perplexity per (domain, language) group on its held-out documents; a domain's perplexity is the geometric
        // mean over its languages (equal weight per language, whatever their token counts)
        var ppl = new Dictionary<string, double>(StringComparer.Ordinal);
        var groupNll = new Dictionary<string, (string Domain, double Nll, double Bpb)>(StringComparer.Ordinal);
        var bpb = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var g in sources.Values.Where(s => s.IsPretrain && s.HeldOutDocs.Count > 0).GroupBy(s => s.Group).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            var tokens = Evaluator.TokenStream(g.SelectMany(s => s.HeldOutDocs), tok, cfg.Eval.PerplexityTokens + 1);
            if (tokens.Count <= cfg.Eval.SeqLen) { notes.Add($"{g.Key}: too little held-out text for perplexity"); continue; }
            var r = Evaluator.Perplexity(model, tokens, cfg.Eval.SeqLen, cfg.Eval.Batch, cfg.Eval.PerplexityTokens, tok, comm);
            ppl[g.Key] = r.Perplexity;
            bpb[g.Key] = r.BitsPerByte ?? double.NaN;
            groupNll[g.Key] = (g.First().Section.Domain, r.MeanNll, bpb[g.Key]);
        }
        foreach (var d in groupNll.Values.GroupBy(v => v.Domain))
        {
            ppl[d.Key] = Math.Exp(d.Average(v => v.Nll));
            bpb[d.Key] = d.Average(v => v.Bpb);
        }
        ClassificationResult? fs = null, fsCal = null;
        if (evalSet is { } es)
            (fs, fsCal) = Evaluator.FewShotWithCalibration(model, tok, es.Test, es.Pool, cfg.Eval.Shots, cfg.Seed, cfg.Eval.MaxExamples, comm: comm);
        var report = new StageReport
        {
            Name = st.Name,
            Init = st.Init,
            Perplexity = ppl,
            BitsPerByte = bpb,
            FewShotAccuracy = fs?.Accuracy,
            FewShotMacroF1 = fs?.MacroF1,
            FewShotCalibratedAccuracy = fsCal?.Accuracy,
            FewShotCalibratedMacroF1 = fsCal?.MacroF1,
            FewShotCount = fs?.Count ?? 0,
            TokensTrained = steps.Count > 0 ? steps[^1].Tokens : 0,
            TrainSeconds = trainSeconds,
            EvalSeconds = sw.Elapsed.TotalSeconds,
            TokensPerSecond = steps.Count > 0 ? steps[^1].TokensPerSecond : 0,
            VocabSize = model.Config.VocabSize,
            WeightsDir = weights,
            Notes = notes,
            Steps = steps,
        };
        Say($"stage {st.Name}: " + string.Join(", ", ppl.Select(p => $"ppl[{p.Key}] {p.Value:F2}")) +
            (fs != null ? $", few-shot acc {fs.Accuracy:P1} F1 {fs.MacroF1:F3} (calibrated {fsCal!.Accuracy:P1} / {fsCal.MacroF1:F3})" : "") + $", {report.TokensTrained:N0} tokens in {trainSeconds:F0} s");
        return report;
    }

    LlamaModel InitModel(StageSection st, ITokenizer tok, List<string> notes)
    {
        LlamaModel model;
        if (st.Init == "random")
        {
            var llama = cfg.Model.ToLlamaConfig(tok.VocabSize);
            if (llama.VocabSize < tok.VocabSize)
                throw new Config.ConfigException($"model.vocab_size ({llama.VocabSize}) is smaller than the tokenizer's vocabulary ({tok.VocabSize})");
            Trainer.CheckFits(llama, st.BatchSize, st.SeqLen, cfg.Model.CheckpointActivations, zero: cfg.Parallel.Zero, dp: comm.WorldSize);
            model = new LlamaModel(llama, backend);
            model.InitializeWeights(cfg.Seed);
        }
        else
        {
            string dir = stageWeights.TryGetValue(st.Init, out var d) ? d : cfg.Resolve(st.Init);
            model = ModelIO.Load(dir, backend);
        }
        model.CheckpointActivations = cfg.Model.CheckpointActivations;
        if (tok.VocabSize > model.Config.VocabSize)
        {
            notes.Add($"vocabulary expanded {model.Config.VocabSize} → {tok.VocabSize} (new rows = mean of old rows)");
            model.ResizeVocabulary(tok.VocabSize);
        }
        if (st.RopeScaling != RopeScalingKind.None)
        {
            model.SetRopeScaling(st.RopeScaling, st.RopeScalingFactor, Math.Max(model.Config.MaxPositionEmbeddings, st.SeqLen));
            notes.Add($"context extension: RoPE {st.RopeScaling} ×{st.RopeScalingFactor}, seq_len {st.SeqLen}");
        }
        return model;
    }

    Ewc EstimateEwc(LlamaModel model, StageSection st, ITokenizer tok, ulong seed, DataParallel dp)
    {
        var src = sources[st.EwcSource!];
        var batches = new StreamBatches(Stream(src, src.TrainDocs, tok, st.SeqLen, seed ^ 0xE3C, shuffle: true));
        var list = Enumerable.Range(0, st.EwcBatches).Select(_ => batches.Next(st.BatchSize, st.SeqLen)).Select(b => (b.Ids, b.Targets)).ToList();
        Say($"EWC: Fisher from {st.EwcBatches} batches of {src.Name}, λ = {st.EwcLambda}");
        return Ewc.Estimate(model, list, st.BatchSize, st.SeqLen, (float)st.EwcLambda, dp);
    }

    /// <summary>A source's sample stream: packed documents for pretraining text, rendered examples for instructions.</summary>
    static ISampleStream Stream(LoadedSource src, IReadOnlyList<string> docs, ITokenizer tok, int seqLen, ulong seed, bool shuffle) =>
        src.IsPretrain
            ? new PackedPretrainStream(InMemoryTokenSource.FromTexts(docs, tok), seqLen, tok.EosId, seed, shuffle, src.Name)
            : new InstructionStream(src.Examples, tok, seqLen, seed, name: src.Name);
}
