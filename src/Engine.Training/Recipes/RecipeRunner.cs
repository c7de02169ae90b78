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
using Engine.Training.Run;

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
    /// <summary>Zero-shot instruction-format classification per eval.instruction_files set (file name without extension).</summary>
    public Dictionary<string, InstructionEvalScore> Instruction { get; init; } = new();
    /// <summary>Parameters the stage trained (LoRA: the adapters alone) and this rank's AdamW moment bytes.</summary>
    public long TrainableParameters { get; init; }
    public long OptimizerStateBytes { get; init; }
    /// <summary>LoRA stages: the adapter directory (PEFT layout); the stage's weights are the merged model.</summary>
    public string? AdapterDir { get; init; }
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
    readonly List<(string Name, List<LabeledExample> Examples)> instructionSets = [];
    ITokenizer? baseTokenizer, expandedTokenizer;

    /// <summary>Messages about the whole run (rank 0 only).</summary>
    public Action<string>? Log { get; set; }
    /// <summary>Every training step (rank 0 only): the stage and its metrics.jsonl record.</summary>
    public Action<string, Metrics.StepRecord>? OnStep { get; set; }
    /// <summary>Each stage once trained and evaluated (rank 0 only): with <see cref="RecipeProgress"/>, the whole run's ETA.</summary>
    public Action<StageReport>? OnStageDone { get; set; }

    /// <summary>The job's ranks (null = this process alone): each stage trains data-parallel over them
    /// ([parallel] section), evaluation is split across them, rank 0 writes weights, reports and metrics.</summary>
    public ICommunicator? Communicator { get; set; }

    /// <summary>The alignment phase's report (null when the recipe has no [alignment] section).</summary>
    public Alignment.AlignmentReport? Alignment { get; private set; }

    ICommunicator comm = null!;
    bool Lead => comm.Rank == 0;

    void Say(string message) { if (Lead) Log?.Invoke(message); }

    /// <summary>Resume a stopped run: "latest" or "auto" (the first stage without a finished record, from its newest
    /// checkpoint — auto skips damaged ones — or from its start), or a stage checkpoint directory; null = fresh run.</summary>
    public string? Resume { get; set; }

    /// <summary>Early stops (signals, time limit, step count) and the injected test fault; null = none.</summary>
    public RunControl? Control { get; set; }

    /// <summary>Why the run stopped before its last stage finished (a checkpoint was saved); null when it finished.</summary>
    public string? StoppedReason { get; private set; }

    /// <summary>stages/NAME/stage.json: a finished stage's report and steps, and the settings it ran with.</summary>
    sealed record StageRecord(StageReport Report, List<StepMetrics> Steps, Dictionary<string, string> Exact)
    {
        /// <summary>The stage's outputs (weights, adapter) by path relative to the run directory and SHA-256, verified
        /// before a resumed run uses them (<see cref="ContentHashes.Verify"/>); null in records of older runs.</summary>
        public Dictionary<string, string>? Files { get; init; }
    }

    static readonly JsonSerializerOptions RecordJson = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    static string StageRecordPath(string outDir, string stage) => Path.Combine(outDir, "stages", stage, "stage.json");
    string StageCheckpoints(string outDir, int index) => Path.Combine(outDir, "checkpoints", $"{index:D2}_{cfg.Stages[index].Name}");

    public List<StageReport> Run(CancellationToken cancel = default)
    {
        comm = Communicator ?? new SingleRankCommunicator(backend);
        // every stage's and alignment phase's layout, for this job, before any work (each run checks it again with its model)
        foreach (var st in cfg.Stages) cfg.Layout.Validate(comm.WorldSize, gradAccum: st.GradAccum, needs: RecipeConfig.StageNeeds(st));
        if (cfg.Alignment != null) foreach (var needs in cfg.Alignment.Needs) cfg.Layout.Validate(comm.WorldSize, needs: needs);
        string outDir = cfg.Resolve(cfg.Output.Dir);
        using var runLock = RunDirectoryLock.Acquire(outDir, comm, Say);   // one run per output directory
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
        // a trained tokenizer is trained and saved by rank 0; the other ranks load the file it wrote (a resumed run
        // loads the one its first run trained)
        string baseFile = Path.Combine(outDir, "tokenizer.json"), expandedFile = Path.Combine(outDir, "tokenizer_expanded.json");
        bool trained = cfg.Tokenizer.Kind == "bpe" && cfg.Tokenizer.Path == null;
        baseTokenizer = Resume != null && trained && File.Exists(baseFile) ? BpeTokenizer.Load(baseFile)
            : OnLead(() => RecipeTokenizers.Build(cfg, sources, outDir, Log),
                () => !trained ? RecipeTokenizers.Build(cfg, sources, outDir, null) : BpeTokenizer.Load(baseFile));
        if (cfg.Stages.Any(s => s.ExpandedVocab))
            expandedTokenizer = Resume != null && File.Exists(expandedFile) ? BpeTokenizer.Load(expandedFile)
                : OnLead(() => RecipeTokenizers.Expand(cfg, baseTokenizer, sources, outDir, Log), () => BpeTokenizer.Load(expandedFile));
        var evalSet = LoadFewShot();
        // zero-shot instruction format: the few-shot set itself (beside its k-shot score), then any further sets
        if (cfg.Eval.Instruction && cfg.Eval.FewShotFile is { } fsf && evalSet is { } es0)
            instructionSets.Add((Path.GetFileNameWithoutExtension(fsf), es0.Test));
        foreach (var f in cfg.Eval.InstructionFiles)
            instructionSets.Add((Path.GetFileNameWithoutExtension(f), LabeledData.Read(cfg.Resolve(f)).Examples));
        var reports = new List<StageReport>();
        var (first, resumed) = Resume != null ? ResumePoint(outDir) : (0, null);
        string metricsPath = Path.Combine(outDir, "metrics.jsonl");
        var earlier = new List<StepMetrics>();
        if (Resume != null)
        {
            for (int i = 0; i < first; i++)
            {
                string path = StageRecordPath(outDir, cfg.Stages[i].Name);
                StageRecord rec;
                try { rec = JsonSerializer.Deserialize<StageRecord>(File.ReadAllText(path), RecordJson) ?? throw new InvalidDataException($"{path}: empty"); }
                catch (JsonException e) { throw new InvalidDataException($"{path}: not a stage record ({e.Message})"); }
                // the finished stage must have run with today's settings (its selection is not recomputed here)
                var saved = rec.Exact.Where(kv => !kv.Key.EndsWith(".selection", StringComparison.Ordinal)).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
                ResumeCheck.Check(path, saved, ExactSettings(cfg.Stages[i], null), null, new Dictionary<string, string>());
                ContentHashes.Verify(outDir, rec.Files ?? [], path);   // its weights as the stage left them
                // paths relative to this run directory (a copied run directory uses its own stage files)
                var report = rec.Report with { Steps = rec.Steps, WeightsDir = Path.Combine(outDir, "stages", rec.Report.Name), AdapterDir = rec.Report.AdapterDir is { } ad ? Path.GetFullPath(Path.Combine(outDir, ad)) : null };
                reports.Add(report);
                stageWeights[rec.Report.Name] = report.WeightsDir;
                Say($"stage {rec.Report.Name}: finished in the earlier run (stages/{rec.Report.Name}/stage.json)");
            }
            int keepStep = resumed?.State.Step ?? 0;
            string? current = first < cfg.Stages.Length ? cfg.Stages[first].Name : null;
            var index = cfg.Stages.Select((st, i) => (st.Name, i)).ToDictionary(x => x.Name, x => x.i, StringComparer.Ordinal);
            bool Keep(JsonElement e)
            {
                string name = e.GetProperty("stage").GetString() ?? "";
                return index.TryGetValue(name, out int i) && (i < first || (name == current && e.GetProperty("step").GetInt32() <= keepStep));
            }
            if (Lead) ResumeCheck.TruncateMetrics(metricsPath, Keep);
            comm.Barrier();   // every rank reads the truncated file
            // the resumed stage's steps before its checkpoint, for its report and loss plot
            if (current != null && resumed != null && File.Exists(metricsPath))
                foreach (var line in File.ReadLines(metricsPath))
                {
                    using var doc = JsonDocument.Parse(line);
                    var e = doc.RootElement;
                    if (e.GetProperty("stage").GetString() == current && e.GetProperty("step").GetInt32() <= keepStep) earlier.Add(FromMetricsLine(e));
                }
            comm.Barrier();
        }
        using var metrics = new Metrics.MetricsLog(comm, backend, new Metrics.Throughput(1, null, 1, "set per stage"), metricsPath, append: Resume != null,
            tensorBoardDir: cfg.Output.Tensorboard ? Path.Combine(outDir, "tensorboard") : null);
        for (int i = first; i < cfg.Stages.Length; i++)
        {
            cancel.ThrowIfCancellationRequested();
            var r = RunStage(cfg.Stages[i], i, outDir, evalSet, metrics, cancel, i == first ? resumed : null, i == first ? earlier : []);
            if (r == null) break;   // stopped early: a checkpoint of the stage was saved
            reports.Add(r);
            if (Lead) RecipeReportWriter.Write(outDir, cfg, reports);
            if (Lead) OnStageDone?.Invoke(r);
        }
        if (cfg.Alignment is { } al)
        {
            Alignment = new Alignment.AlignmentRunner(cfg, al, backend, sources, n => stageWeights.TryGetValue(n, out var d) ? d : cfg.Resolve(n), baseTokenizer!)
            { Log = Log, Communicator = comm }.Run(outDir);
            if (Lead) RecipeReportWriter.Write(outDir, cfg, reports, Alignment);
        }
        else if (Lead && first == cfg.Stages.Length && reports.Count > 0) RecipeReportWriter.Write(outDir, cfg, reports);
        comm.Barrier();
        return reports;
    }

    /// <summary>The first stage to run and the checkpoint to continue it from (null: from its start).</summary>
    (int First, Checkpoints.Loaded? Checkpoint) ResumePoint(string outDir)
    {
        int first = 0;
        while (first < cfg.Stages.Length && File.Exists(StageRecordPath(outDir, cfg.Stages[first].Name))) first++;
        Checkpoints.Loaded? ckpt;
        if (Resume is "latest" or "auto")
        {
            if (first == cfg.Stages.Length) { Say("--resume: every stage has finished; rewriting the report"); return (first, null); }
            string root = StageCheckpoints(outDir, first);
            ckpt = Checkpoints.List(root).Count == 0 ? null : Checkpoints.OpenForResume(Resume, root, Say);
        }
        else
        {
            ckpt = Checkpoints.Open(Checkpoints.Resolve(Resume!, outDir));
            int at = ckpt.State.StageIndex;
            if (ckpt.State.Stage == null || at < 0 || at >= cfg.Stages.Length || cfg.Stages[at].Name != ckpt.State.Stage)
                throw new InvalidDataException($"{ckpt.Directory}: not a checkpoint of a stage of this recipe (stage '{ckpt.State.Stage}' at index {at})");
            if (at > first)
                throw new InvalidDataException($"{ckpt.Directory}: a checkpoint of stage {ckpt.State.Stage}, but stage {cfg.Stages[first].Name} before it has not finished ({StageRecordPath(outDir, cfg.Stages[first].Name)} is missing)");
            first = at;
        }
        Say(ckpt != null ? $"resuming stage {cfg.Stages[first].Name} from {ckpt.Directory} at step {ckpt.State.Step}"
            : $"resuming at the start of stage {cfg.Stages[first].Name}" + (Resume == "auto" ? " (no valid checkpoint of it)" : ""));
        return (first, ckpt);
    }

    static StepMetrics FromMetricsLine(JsonElement e)
    {
        static double D(JsonElement e, string name) => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : double.NaN;
        Dictionary<string, double>? sl = null;
        if (e.TryGetProperty("source_loss", out var s) && s.ValueKind == JsonValueKind.Object)
            sl = s.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble(), StringComparer.Ordinal);
        // a metrics.jsonl line (Metrics.StepRecord, snake_case)
        return new StepMetrics(e.GetProperty("step").GetInt32(), e.GetProperty("total_steps").GetInt32(), D(e, "loss"), D(e, "lr"), D(e, "grad_norm"),
            e.GetProperty("tokens").GetInt64(), D(e, "tokens_per_s"), D(e, "elapsed_s"), null, sl, e.TryGetProperty("ewc_penalty", out var ep) && ep.ValueKind == JsonValueKind.Number ? ep.GetDouble() : 0,
            e.TryGetProperty("skipped", out var sk) && sk.ValueKind == JsonValueKind.True, e.TryGetProperty("skipped_steps", out var n) ? n.GetInt32() : 0);
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

    /// <summary>Trains and evaluates one stage (from <paramref name="resumed"/> when given); null when the run
    /// stopped early (a checkpoint of the stage was saved). The stage is a short translation into a <see cref="RunSpec"/>
    /// (its init model, mixture, optimizer, EWC, LoRA, checkpoints) that <see cref="RunAssembler"/> builds on the
    /// recipe's layout; evaluation then reads the stage's saved weights.</summary>
    StageReport? RunStage(StageSection st, int stageIndex, string outDir, (List<LabeledExample> Test, List<LabeledExample> Pool)? evalSet,
        Metrics.MetricsLog metrics, CancellationToken cancel, Checkpoints.Loaded? resumed, List<StepMetrics> earlier)
    {
        var notes = new List<string>();
        var tok = st.ExpandedVocab ? expandedTokenizer! : baseTokenizer!;
        Say($"stage {st.Name}: init {st.Init}, {st.Steps} steps × {st.BatchSize}×{st.SeqLen} tokens, mixture {string.Join(", ", st.Weights.Select(w => $"{w.Key}={w.Value}"))}");
        var init = InitSource(st, tok, notes, outDir);
        ulong seed = cfg.Seed ^ RecipeSources.StableHash(st.Name);
        var (streams, selection) = Streams(st, tok, seed, init, evalSet, notes);
        MixtureStream? mixture = null;
        var exact = ExactSettings(st, selection);
        string ckptRoot = StageCheckpoints(outDir, stageIndex);
        var spec = new RunSpec
        {
            Name = $"stage {st.Name}",
            Layout = cfg.Layout,
            Model = init,
            Lora = st.Lora,
            LoraSeed = seed,
            Resolve = cfg.Resolve,
            Optim = st.Optim,
            Schedule = st.Schedule,
            Data = _ =>
            {
                var names = streams.Select(x => x.Name).ToList();
                double[] start = names.Select(n => st.Weights.GetValueOrDefault(n)).ToArray();
                var schedule = st.EndWeights == null ? WeightSchedule.Constant(start)
                    : WeightSchedule.Linear(start, names.Select(n => st.EndWeights.GetValueOrDefault(n)).ToArray(), st.RampTokens);
                mixture = new MixtureStream(streams, schedule, seed);
                return new StreamBatches(mixture);
            },
            MicroBatchRows = st.BatchSize,
            SeqLen = st.SeqLen,
            GradAccum = st.GradAccum,
            Steps = st.Steps,
            ZLoss = st.ZLoss,
            Ewc = st.EwcLambda > 0 ? run => EstimateEwc(run, st, tok, seed) : null,
            Checkpoint = new CheckpointSpec(ckptRoot, cfg.Output.CheckpointEvery, cfg.Output.KeepCheckpoints)
            {
                Exact = exact,
                Overridable = ResumeCheck.Overridable("", st.Optim, st.Steps),
                SequencesKey = $"stages.{st.Name}.sequences_per_step",
                State = s => s with { StageIndex = stageIndex, Stage = st.Name, Sampler = mixture!.SaveState().ToJson() },
                // selection and the EWC Fisher came from the stage's initial weights, as in the first run; now its state
                Restore = r => mixture!.LoadState(SamplerState.FromJson(r.State.Sampler
                    ?? throw new InvalidDataException($"{r.Directory}: state.json has no sampler state (not a recipe checkpoint)"))),
            },
            Resume = resumed,
            Control = Control,
            OnStep = (_, record) => OnStep?.Invoke(st.Name, record!),
            Log = Log,
        };
        string weights = Path.Combine(outDir, "stages", st.Name);
        string? adapterDir = null;
        List<StepMetrics> steps;
        double trainSeconds;
        long trainable, stateBytes;
        using (var run = RunAssembler.Assemble(spec, comm, backend))
        {
            if (run.Lora != null) notes.Add(Config.LoraSetup.Describe(run.Lora, run.Model));
            metrics.BeginStage(st.Name, Metrics.Throughput.For(backend, run.Model.Config, st.SeqLen, comm.WorldSize));
            var outcome = run.Train(metrics, cancel);
            steps = outcome.Steps;
            if (outcome.StoppedReason != null)
            {
                StoppedReason = outcome.StoppedReason;
                Say($"{outcome.StoppedReason}: stopped in stage {st.Name} after step {steps[^1].Step} of {st.Steps}; resume with --resume latest");
                return null;
            }
            trainSeconds = steps.Count > 0 ? steps[^1].ElapsedSeconds : 0;
            // the report counts the whole model (the stages of one replica) and the moments AdamW now holds
            Span<double> counts = [run.TrainableParametersCounted, run.Optimizers.StateBytes];
            if (run.Layout.Mesh.ModelParallel.WorldSize > 1) run.Layout.Mesh.ModelParallel.AllReduce(counts);
            (trainable, stateBytes) = ((long)counts[0], (long)counts[1]);
            if (run.Lora != null)
            {
                // the adapter in PEFT's layout, then merged: later stages, evaluation and export see one plain model
                adapterDir = Path.Combine(outDir, "stages", st.Name + "_adapter");
                run.SaveAdapter(adapterDir, stageWeights.TryGetValue(st.Init, out var b) ? b : cfg.Resolve(st.Init));
                run.Lora.Merge();
                notes.Add($"adapter saved to {adapterDir} (PEFT layout) and merged into the stage's weights; AdamW state {stateBytes:N0} bytes");
            }
            run.SaveWeights(weights, what: $"stage {st.Name}'s weights");
        }
        steps.InsertRange(0, earlier);
        stageWeights[st.Name] = weights;

        var sw = Stopwatch.StartNew();
        // evaluation reads the saved weights, whole, on every rank and splits the examples over all of them: the same
        // model and scorer as one process, whatever the layout (the training state is freed by now)
        using var model = ModelIO.Load(weights, backend);
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
        var instruction = new Dictionary<string, InstructionEvalScore>(StringComparer.Ordinal);
        foreach (var (setName, examples) in instructionSets)
        {
            var (raw, cal) = InstructionEval.ZeroShot(model, tok, examples, RecipeSources.SentimentInstruction,
                maxExamples: cfg.Eval.InstructionMaxExamples > 0 ? cfg.Eval.InstructionMaxExamples : cfg.Eval.MaxExamples, comm: comm);
            instruction[setName] = InstructionEval.Summary(raw, cal);
        }
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
            Instruction = instruction,
            TrainableParameters = trainable,
            OptimizerStateBytes = stateBytes,
            AdapterDir = adapterDir,
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
            (fs != null ? $", few-shot acc {fs.Accuracy:P1} F1 {fs.MacroF1:F3} (calibrated {fsCal!.Accuracy:P1} / {fsCal.MacroF1:F3})" : "") +
            string.Concat(instruction.Select(i => $", 0-shot instruction {i.Key} acc {i.Value.Accuracy:P1} F1 {i.Value.MacroF1:F3}")) + $", {report.TokensTrained:N0} tokens in {trainSeconds:F0} s");
        if (Lead)
        {
            // the stage is finished: its record lets a resumed run skip it; its checkpoints are no longer needed
            SafeIo.Writing($"stage {st.Name}'s record", StageRecordPath(outDir, st.Name), SafeIo.LastCheckpoint(outDir), () => Durable.WriteAllText(StageRecordPath(outDir, st.Name), JsonSerializer.Serialize(new StageRecord(report with { WeightsDir = ContentHashes.Relative(outDir, weights), AdapterDir = adapterDir is null ? null : ContentHashes.Relative(outDir, adapterDir) }, steps, exact) { Files = ContentHashes.Record(outDir, [weights, .. adapterDir is null ? Array.Empty<string>() : [adapterDir]]) }, RecordJson)));
            if (Directory.Exists(ckptRoot)) Directory.Delete(ckptRoot, recursive: true);
        }
        comm.Barrier();
        return report;
    }

    static double? Finite(double v) => double.IsFinite(v) ? v : null;

    /// <summary>The settings a stage's exact resume needs unchanged (see <see cref="ResumeCheck"/>): the recipe's
    /// data, tokenizer, model and evaluation, and the stage's own except steps and the optimizer's lr, betas and clip.</summary>
    Dictionary<string, string> ExactSettings(StageSection st, string? selection)
    {
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        string Json(object o) => JsonSerializer.Serialize(o, RecordJson);
        var model = System.Text.Json.Nodes.JsonNode.Parse(Json(cfg.Model))!.AsObject();
        model.Remove(nameof(cfg.Model.CheckpointActivations));
        model.Remove(nameof(cfg.Model.Recompute));
        var d = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["seed"] = cfg.Seed.ToString(inv),
            ["model"] = model.ToJsonString(),
            ["tokenizer"] = Json(cfg.Tokenizer),
            ["tokenizer.files"] = cfg.Tokenizer.Kind == "byte" ? "byte" : string.Join("; ", new[] { cfg.Tokenizer.Path is { } tp ? cfg.Resolve(tp) : Path.Combine(cfg.Resolve(cfg.Output.Dir), "tokenizer.json"), Path.Combine(cfg.Resolve(cfg.Output.Dir), "tokenizer_expanded.json") }.Where(File.Exists).Select(ContentHashes.Describe)),
            ["sources"] = Json(cfg.Sources.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => new
            {
                kv.Key,
                kv.Value.Kind,
                kv.Value.Domain,
                kv.Value.Language,
                kv.Value.MaxDocs,
                kv.Value.HeldOut,
                Files = kv.Value.Files.Select(f => ContentHashes.Describe(cfg.Resolve(f))),   // contents: a same-size edit is refused
            })),
            ["eval"] = Json(cfg.Eval),
            [$"stages.{st.Name}"] = Json(new
            {
                st.Init,
                st.Weights,
                st.EndWeights,
                st.RampTokens,
                st.SeqLen,
                st.ZLoss,
                st.Trainable,
                st.EwcLambda,
                st.EwcSource,
                st.EwcBatches,
                st.ExpandedVocab,
                st.RopeScaling,
                st.RopeScalingFactor,
                st.SelectTop,
                st.SelectSource,
                st.Curriculum,
                st.Schedule,
                st.Optim.WeightDecay,
                st.Optim.Eps,
                st.Lora,
            }),
            [$"stages.{st.Name}.init_weights"] = st.Init == "random" ? "random" : ContentHashes.DescribeWeights(stageWeights.TryGetValue(st.Init, out var iw) ? iw : cfg.Resolve(st.Init)),
            [$"stages.{st.Name}.sequences_per_step"] = cfg.Layout.GlobalBatch(comm.WorldSize, st.BatchSize, st.GradAccum).ToString(inv),
        };
        if (selection != null) d[$"stages.{st.Name}.selection"] = selection;
        return d;
    }

    /// <summary>The stage's init model as a source: random weights, an earlier stage or a model directory (for a
    /// pipeline stage only its parameters), grown to the stage's vocabulary (new rows = the mean of the old), with the
    /// stage's RoPE scaling and trainable set.</summary>
    ModelSource InitSource(StageSection st, ITokenizer tok, List<string> notes, string outDir)
    {
        string? dir = st.Init == "random" ? null : stageWeights.TryGetValue(st.Init, out var d) ? d : cfg.Resolve(st.Init);
        var initial = dir == null ? cfg.Model.ToLlamaConfig(tok.VocabSize) : ModelIO.LoadConfig(dir);
        if (dir == null && initial.VocabSize < tok.VocabSize)
            throw new Config.ConfigException($"model.vocab_size ({initial.VocabSize}) is smaller than the tokenizer's vocabulary ({tok.VocabSize})");
        var shape = initial;
        if (tok.VocabSize > shape.VocabSize)
        {
            notes.Add($"vocabulary expanded {shape.VocabSize} → {tok.VocabSize} (new rows = mean of old rows)");
            shape = shape with { VocabSize = tok.VocabSize };
        }
        if (st.RopeScaling != RopeScalingKind.None)
        {
            shape = shape with { RopeScaling = st.RopeScaling, RopeScalingFactor = st.RopeScalingFactor, MaxPositionEmbeddings = Math.Max(shape.MaxPositionEmbeddings, st.SeqLen) };
            notes.Add($"context extension: RoPE {st.RopeScaling} ×{st.RopeScalingFactor}, seq_len {st.SeqLen}");
        }
        return new ModelSource(shape, stage =>
        {
            LlamaModel model;
            if (dir == null)
            {
                model = new LlamaModel(initial, backend, stage);
                model.InitializeWeights(cfg.Seed);
            }
            else model = ModelIO.Load(dir, backend, stage == null ? null : _ => stage);
            if (tok.VocabSize > model.Config.VocabSize) model.ResizeVocabulary(tok.VocabSize);
            if (st.RopeScaling != RopeScalingKind.None)
                model.SetRopeScaling(st.RopeScaling, st.RopeScalingFactor, Math.Max(model.Config.MaxPositionEmbeddings, st.SeqLen));
            try
            {
                // the stage's tokenizer (chat template when it tunes on a chat format) and name ride with its weights
                RunArtifacts.Attach(model, tok, $"{RunArtifacts.RunName(outDir)}-{st.Name}", RecipeSources.ChatFormat(st, sources),
                    cfg.Tokenizer.Force ? null : $"stages[{st.Name}].init {st.Init} carries another tokenizer than the stage trains with (set tokenizer.kind = \"model\" to use the model's, or tokenizer.force = true)", st.ExpandedVocab);
            }
            catch
            {
                model.Dispose();
                throw;
            }
            model.SetTrainable(st.Trainable == "embeddings_and_head" ? LlamaModel.IsEmbeddingOrHead : null);
            return model;
        });
    }

    /// <summary>The stage's sample stream per source; with select_top, the selected source's documents kept by task
    /// similarity under the stage's initial model (built whole for the selection, before the run), and a record of
    /// the selection for the exact-resume check.</summary>
    (List<(string Name, ISampleStream Stream)> Streams, string? Selection) Streams(StageSection st, ITokenizer tok, ulong seed, ModelSource init,
        (List<LabeledExample> Test, List<LabeledExample> Pool)? evalSet, List<string> notes)
    {
        var streams = new List<(string Name, ISampleStream Stream)>();
        string? selection = null;
        var names = st.Weights.Keys.Concat(st.EndWeights?.Keys ?? Enumerable.Empty<string>()).Distinct().ToList();
        foreach (var name in names)
        {
            var src = sources[name];
            var docs = src.TrainDocs;
            bool shuffle = true;
            if (st.SelectTop > 0 && name == st.SelectSource)
            {
                var task = evalSet?.Pool.Select(e => e.Text).Take(256).ToList() ?? throw new InvalidOperationException("data selection needs eval.few_shot_pool as the task set");
                DataSelection.Result sel;
                using (var model = init.Build(null))
                    sel = DataSelection.Select(model, tok, docs, task, st.SelectTop, st.Curriculum, Math.Min(128, model.Config.MaxPositionEmbeddings));
                notes.Add($"selected {sel.Kept.Count}/{sel.Candidates} {name} documents by task similarity: mean cosine {sel.MeanScoreKept:F3} kept vs {sel.MeanScoreAll:F3} all");
                Say(notes[^1]);
                docs = sel.Kept;
                shuffle = !st.Curriculum;
                selection = $"{sel.Kept.Count}/{sel.Candidates} documents, SHA-256 {Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(string.Join("\u0000", sel.Kept))))}";
            }
            streams.Add((name, Stream(src, docs, tok, st.SeqLen, seed + (ulong)streams.Count, shuffle)));
        }
        return (streams, selection);
    }

    /// <summary>EWC's Fisher from the stage's initial model on ewc_source batches (split over the data-parallel
    /// replicas), each batch's gradient through the pipeline's stages when the model is split.</summary>
    Ewc EstimateEwc(AssembledRun run, StageSection st, ITokenizer tok, ulong seed)
    {
        var src = sources[st.EwcSource!];
        var batches = new StreamBatches(Stream(src, src.TrainDocs, tok, st.SeqLen, seed ^ 0xE3C, shuffle: true));
        var list = Enumerable.Range(0, st.EwcBatches).Select(_ => batches.Next(st.BatchSize, st.SeqLen)).Select(b => (b.Ids, b.Targets)).ToList();
        Say($"EWC: Fisher from {st.EwcBatches} batches of {src.Name}, λ = {st.EwcLambda}");
        return Ewc.Estimate(run.Model, list, st.BatchSize, st.SeqLen, (float)st.EwcLambda, run.Optimizers.Parallel, run.Pipeline);
    }

    /// <summary>A source's sample stream: packed documents for pretraining text, rendered examples for instructions.</summary>
    static ISampleStream Stream(LoadedSource src, IReadOnlyList<string> docs, ITokenizer tok, int seqLen, ulong seed, bool shuffle) =>
        src.IsPretrain
            ? new PackedPretrainStream(InMemoryTokenSource.FromTexts(docs, tok), seqLen, tok.EosId, seed, shuffle, src.Name)
            : new InstructionStream(src.Examples, tok, seqLen, seed, name: src.Name);
}
