using System.Diagnostics;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Model.IO;
using Engine.Model.Lora;
using Engine.Parallel;
using Engine.Training.Config;
using Engine.Training.Forgetting;
using Engine.Training.Parallel;

namespace Engine.Training.Run;

/// <summary>How a run ended: its steps, and why it stopped early (a checkpoint saved) if it did.</summary>
public sealed record RunOutcome(List<StepMetrics> Steps)
{
    public string? StoppedReason { get; init; }
    public string? Checkpoint { get; init; }
}

/// <summary>
/// The one run assembler (TorchTitan's order): the layout, validated for the job and the model (<see cref="RunLayout"/>)
/// and checked to fit → this rank's stage of the model → the scalar head → LoRA adapters → data parallelism / ZeRO
/// over each trainable store of the stage, and the pipeline schedule → the optimizers → data, loss, EWC → resume with
/// the exact-resume check; <see cref="AssembledRun.Train"/> then runs the loop (<see cref="TrainingLoop"/>, through
/// <see cref="PipelineRunner"/> when the model is split) with the checkpoint hooks and metrics. The model stays
/// single-device code: parallelism is applied to it here.
/// </summary>
public static class RunAssembler
{
    public static AssembledRun Assemble(RunSpec spec, ICommunicator world, IBackend backend)
    {
        var needs = new RunNeeds(spec.Name) { Lora = spec.Lora, Sampling = spec.Sampling, OwnLoss = spec.Loss != null || spec.ScalarHead != null };
        var layout = ParallelLayout.Create(world, spec.Layout, spec.Model.Shape, spec.GradAccum, needs);
        var run = new AssembledRun(spec, world, backend, layout);
        try
        {
            run.CheckFit();
            run.BuildModel();
            run.AttachAdapters();
            run.Parallelize();
            run.BuildOptimizers();
            run.BuildData();
            run.Resume();
            return run;
        }
        catch
        {
            run.Dispose();
            throw;
        }
    }
}

/// <summary>A run built by <see cref="RunAssembler"/>: this rank's model, adapters, data parallelism, pipeline,
/// optimizers, data and loss; <see cref="Train"/> runs it.</summary>
public sealed class AssembledRun : IDisposable
{
    readonly List<DataParallel> parallel = [];
    Dictionary<string, string>? exact;

    internal AssembledRun(RunSpec spec, ICommunicator world, IBackend backend, ParallelLayout layout)
    {
        Spec = spec; World = world; Backend = backend; Layout = layout;
    }

    public RunSpec Spec { get; }
    public ICommunicator World { get; }
    public IBackend Backend { get; }
    public ParallelLayout Layout { get; }
    /// <summary>This rank's model: the whole model, or its pipeline stage.</summary>
    public LlamaModel Model { get; private set; } = null!;
    /// <summary>The scalar head around <see cref="Model"/> (reward model, critic); null when the spec has none.</summary>
    public ScalarHeadModel? Head { get; private set; }
    public LoraAdapters? Lora { get; private set; }
    public PipelineRunner? Pipeline { get; private set; }
    public OptimizerSet Optimizers { get; private set; } = null!;
    /// <summary>The spec's batch source; null for a run trained in rounds (<see cref="Loop"/>).</summary>
    public IBatchSource? Data { get; private set; }
    public ITrainingLoss Loss { get; private set; } = null!;
    public Ewc? Ewc { get; private set; }
    /// <summary>The step the loop starts from (the resumed checkpoint's, else 0).</summary>
    public int StartStep => Spec.Resume?.State.Step ?? 0;

    public bool Lead => World.Rank == 0;
    /// <summary>Micro-batches each replica runs per step (<see cref="RunLayout.MicroBatches"/>).</summary>
    public int MicroBatches => Layout.MicroBatches(Spec.GradAccum);
    /// <summary>Rows (sequences, pairs) per optimizer step over the job.</summary>
    public long GlobalBatch => (long)Layout.Replicas * MicroBatches * Spec.MicroBatchRows;
    /// <summary>The trainable store of the body (the adapters' with LoRA).</summary>
    public ParameterStore TrainedStore => Lora?.Store ?? Model.Store;
    /// <summary>Parameters the run trains on this rank (adapters, or the body's unfrozen ones; the head's too).</summary>
    public long TrainableParameters => Optimizers.Members.Sum(o => o.Parallel.Store.Slots.Where(s => !s.Tensor.Frozen).Sum(s => s.Numel));
    /// <summary>The tensor/sequence/context-parallel plan the model runs (null: none).</summary>
    public MeshPlan? Plan { get; private set; }
    Action? afterGradients;

    /// <summary>What the loop trains.</summary>
    public TrainTarget Target => new(Model, Loss, Optimizers) { Pipeline = Pipeline, Ewc = Ewc, Mesh = Layout.Mesh, AfterGradients = afterGradients };

    /// <summary>The checkpoint's exact settings with the layout's sequences per step.</summary>
    public IReadOnlyDictionary<string, string> Exact => exact ??= Spec.Checkpoint is { } ck
        ? new Dictionary<string, string>(ck.Exact, StringComparer.Ordinal) { [ck.SequencesKey] = GlobalBatch.ToString(System.Globalization.CultureInfo.InvariantCulture) }
        : new Dictionary<string, string>();

    void Say(string message) { if (Lead) Spec.Log?.Invoke(message); }

    // ---- assembly, in order ----------------------------------------------------------------------------------------

    /// <summary>The memory model's estimate of the layout against the device, before anything is allocated.</summary>
    internal void CheckFit()
    {
        if (Spec.Model.Borrowed) return;   // already in memory
        var plan = Spec.Layout.Plan(World.WorldSize, Spec.MicroBatchRows, Spec.GradAccum, Spec.SeqLen);
        FitCheck.Require(Spec.Model.Shape, Spec.Layout, plan, Backend.Name != "cpu", Backend.AvailableMemoryBytes());
    }

    /// <summary>This rank's stage of the model (or all of it), its recompute mode, and the scalar head.</summary>
    internal void BuildModel()
    {
        Model = Spec.Model.Build(Layout.Stage(Spec.Model.Shape.NumLayers));
        Model.Recompute = Spec.Layout.Mode;
        if (Spec.ScalarHead is { } head)
        {
            Head = head(Model);
            // the head reads the last stage's hidden states: elsewhere it is not trained
            if (!Model.Stage.IsLast)
            {
                var h = Head.Head[ScalarHeadModel.HeadName];
                (h.Frozen, h.RequiresGrad) = (true, false);
            }
        }
        var mesh = Layout.Mesh;
        Say($"{Spec.Name}: {Model.ParameterCount:N0} parameters on {Backend.Name}" + (World.WorldSize == 1 ? ""
            : mesh.Stages > 1 || Layout.SplitsModel
            ? $" ({(Layout.SplitsModel ? "before splitting, " : "")}stage 0 of {mesh.Stages}), layout {mesh.Describe()} ({World.Kind}), ZeRO-{Layout.Section.Zero}" +
              (mesh.Stages > 1 ? $", {Layout.Section.Schedule} over {MicroBatches} micro-batches" + (Layout.Section.VirtualStages > 1 ? $" × {Layout.Section.VirtualStages} chunks per stage" : "") : "") +
              (mesh.TensorSize > 1 ? Layout.Section.SequenceParallel ? ", sequence parallel" : ", no sequence parallelism" : "")
            : $", {World.WorldSize} data-parallel ranks ({World.Kind}), ZeRO-{Layout.Section.Zero}"));
    }

    /// <summary>LoRA: the base freezes, the adapters of this stage's layers become the trained store.</summary>
    internal void AttachAdapters()
    {
        if (Spec.Lora is not { } section) return;
        Lora = LoraSetup.Attach(Model, section, Spec.LoraSeed, Spec.Resolve);
        Say(LoraSetup.Describe(Lora, Model));
    }

    /// <summary>Tensor/sequence and context parallelism on the stage's model (its store cut into this rank's slices by
    /// the Llama plan; the plan's hooks at the module boundaries), then data parallelism / ZeRO over each trainable store
    /// of the stage (lays the store out anew: parameters are looked up by name from here on), and the pipeline schedule
    /// over the stage's gradient hooks. At ZeRO-3 the body's weights are sharded unit by unit (with LoRA: the frozen base
    /// alongside the adapters); a scalar head, read outside the body's units, keeps whole weights with ZeRO-2's sharded
    /// gradients and moments.</summary>
    internal void Parallelize()
    {
        if (Layout.SplitsModel)
        {
            if (Layout.Mesh.ContextSize > 1 && Backend.Name != "cpu")
                Say($"note: context parallelism on {Backend.Name} merges its attention blocks through the host (built, not yet run on a GPU)");
            Plan = Layout.CreatePlan(Model);
            Model.Parallelize(Plan);
        }
        parallel.Add(Layout.CreateDataParallel(Model, Lora));
        if (Head != null && Model.Stage.IsLast) parallel.Add(Layout.CreateDataParallel(Head.Head, maxZero: 2));
        Pipeline = Layout.CreateRunner(Model, new GradientSync([.. parallel]));
    }

    /// <summary>AdamW per trainable store; the body's gradient norm spans the pipeline's stages.</summary>
    internal void BuildOptimizers()
    {
        var body = new AdamW(TrainedStore, Spec.Optim, parallel[0])
        {
            NormGroup = Layout.Mesh.TensorSize > 1 ? Layout.Mesh.ModelParallel : Layout.Grid?.Pipe,
            NormExclude = Lora == null ? Pipeline?.NormDuplicate : null,
            NormDuplicates = Plan?.Duplicates(Model.Store, Layout.WholeShape(Model)) ?? [],
        };
        if (Plan is { } plan)
        {
            var partial = plan.PartialGradients(Model.Store, Layout.WholeShape(Model));
            afterGradients = partial.Count > 0 ? () => plan.SyncGradients(parallel[0], partial) : null;
        }
        Optimizers = parallel.Count == 1 ? new OptimizerSet(body) : new OptimizerSet(body, new AdamW(Head!.Head, Spec.HeadOptim ?? Spec.Optim, parallel[1]));
    }

    /// <summary>The batch source, the loss and EWC (each may read the assembled model).</summary>
    internal void BuildData()
    {
        Data = Spec.Data?.Invoke(this);
        Loss = Spec.Loss?.Invoke(this) ?? new LanguageModelLoss(Model, (Data ?? throw new InvalidOperationException($"{Spec.Name}: the language-model loss needs the spec's data")).SourceNames, Spec.ZLoss);
        Ewc = Spec.Ewc?.Invoke(this);
    }

    /// <summary>Continues from the spec's checkpoint: the settings an exact resume needs are compared (a change is
    /// refused by name), then the adapter or weights, the optimizer moments (resharded by name to this layout) and the
    /// run's own state are loaded.</summary>
    internal void Resume()
    {
        if (Spec.Resume is not { } r) return;
        r.RequireKind(lora: Lora != null);
        if (r.State.Step >= Spec.Steps)
            throw new ConfigException($"checkpoint {r.Directory} is at step {r.State.Step}, not before {Spec.Name}'s {Spec.Steps} steps: nothing to resume");
        var mf = r.Manifest;
        var section = Layout.Section;
        Say($"resuming from {r.Directory} at step {r.State.Step}" + (r.HasAdapter ? " (LoRA adapter; base as at the run's start)" : "")
            + (mf.WorldSize != World.WorldSize || mf.Zero != section.Zero || mf.Pp != section.Pp
            ? $" (written by {mf.WorldSize} rank(s), pp {mf.Pp}, ZeRO-{mf.Zero}; resharded to {World.WorldSize}, pp {section.Pp}, ZeRO-{section.Zero})" : ""));
        var ck = Spec.Checkpoint ?? throw new InvalidOperationException($"{Spec.Name}: a resume needs the run's checkpoint settings");
        var effective = ResumeCheck.Check(r.Directory, r.State.Exact, Exact, r.State.Overridable, ck.Overridable);
        Say("resume: settings in effect: " + string.Join(", ", effective) + (Spec.SkipBatches is { } sb ? $", skipping the batches of steps {sb.First}-{sb.Last}" : ""));
        if (Lora != null) r.LoadAdapter(Lora);
        else if (!Spec.Model.ReadsCheckpoint) r.LoadWeights(Model, parallel[0]);   // into the model, or at ZeRO-3 into this rank's master slices
        r.LoadOptimizer(Optimizers.Primary, Model);
        ck.Restore?.Invoke(r);
        if (Spec.Control != null) Spec.Control.LastCheckpoint = r.Directory;
    }

    // ---- running ---------------------------------------------------------------------------------------------------

    /// <summary>The loop's settings for the spec's steps (from the resumed step on).</summary>
    public LoopOptions LoopOptions => new()
    {
        Steps = Spec.Steps,
        BatchSize = Spec.MicroBatchRows,
        SeqLen = Spec.SeqLen,
        GradAccum = MicroBatches,
        Optim = Spec.Optim,
        Schedule = Spec.Schedule,
        ZLoss = Spec.ZLoss,
        EvalEvery = Spec.EvalEvery,
        StartStep = Spec.Resume?.State.Step ?? 0,
        StartTokens = Spec.Resume?.State.Tokens ?? 0,
        StartSkipped = Spec.Resume?.State.SkippedSteps ?? 0,
        Guard = Spec.Guard,
        SkipBatches = Spec.SkipBatches,
    };

    /// <summary>
    /// Forward-only loss of <paramref name="batches"/> (ids, targets; <paramref name="rows"/> rows each) at any layout:
    /// through the pipeline's stages, or this rank's model over its tokens of each batch; the token-summed NLL and the
    /// scored targets, the same on every rank of a model copy. Collective over the copy's ranks.
    /// </summary>
    public (double Nll, long Count) Evaluate(IReadOnlyList<(int[] Ids, int[] Targets)> batches, int rows)
    {
        if (Pipeline != null) return Pipeline.Evaluate(batches, rows);
        double nll = 0;
        long count = 0;
        using (Engine.Core.Autograd.Grad.NoGrad())
            foreach (var (ids, targets) in batches)
            {
                using var scope = new TensorScope();
                var b = new Batch(ids, targets, new string[rows]).For(Model.Plan);
                var x = Backend.Empty([b.LocalIds.Length], DType.I32);
                Backend.Upload(x, b.LocalIds);
                var (l, k) = PipelineRunner.Score(Model, x, b);
                (nll, count) = (nll + l, count + k);
            }
        Span<double> sums = [nll, count];
        return PipelineRunner.Reduce(Layout.Mesh, sums);
    }

    /// <summary>Trainable parameters of the model copy this rank belongs to, counted once: this rank's, less those
    /// another tensor rank's copy counts (sum it over the copy's stages and tensor ranks: <see cref="DeviceMesh.ModelParallel"/>).</summary>
    public long TrainableParametersCounted
    {
        get
        {
            var duplicates = new HashSet<string>(Optimizers.Primary.NormDuplicates, StringComparer.Ordinal);
            return TrainableParameters - TrainedStore.Slots.Where(s => !s.Tensor.Frozen && duplicates.Contains(s.Name)).Sum(s => s.Numel);
        }
    }

    /// <summary>The loop over <paramref name="data"/> with <paramref name="options"/> alone (no checkpoints or metrics):
    /// a run that trains in rounds (PPO's epochs over each batch of rollouts).</summary>
    public List<StepMetrics> Loop(IBatchSource data, LoopOptions options, Action<StepMetrics>? onStep = null, CancellationToken cancel = default) =>
        TrainingLoop.Run(Target, data, options, onStep, cancel: cancel);

    /// <summary>Runs the spec's steps: the loop with checkpoints every <see cref="CheckpointSpec.Every"/> steps and
    /// when stopped early, every step's record in <paramref name="metrics"/>, validation; the pipeline's measured idle
    /// share at the end.</summary>
    public RunOutcome Train(Metrics.MetricsLog? metrics = null, CancellationToken cancel = default)
    {
        var ck = Spec.Checkpoint;
        var control = Spec.Control;
        int savedStep = Spec.Resume?.State.Step ?? -1;
        string? saved = null;
        void Save(StepMetrics m)
        {
            // a step that failed the finite check never reaches here (guard "fail" throws; "skip" left the weights as they were)
            if (!(m.Skipped || double.IsFinite(m.Loss))) throw new InvalidOperationException($"step {m.Step} is not finite: not checkpointed");
            var clock = Stopwatch.StartNew();
            saved = Checkpoints.Save(ck!.Root, Model, Optimizers.Primary, ck.State(new CheckpointState(m.Step, m.Tokens, [0, 0, 0, 0], Optimizers.Step)
            {
                SkippedSteps = m.SkippedSteps,
                Exact = new Dictionary<string, string>(Exact, StringComparer.Ordinal),
                Overridable = new Dictionary<string, string>(ck.Overridable, StringComparer.Ordinal),
            }), ck.Keep, Layout, Lora);
            savedStep = m.Step;
            control?.SaveDone(clock.Elapsed.TotalSeconds);
            if (control != null) control.LastCheckpoint = saved;
            Say($"checkpoint {saved}");
        }
        var validate = Spec.Validate?.Invoke(this);
        var data = Data ?? throw new InvalidOperationException($"{Spec.Name} has no data of its own: it trains in rounds (Loop)");
        var steps = TrainingLoop.Run(Target, data, LoopOptions, m =>
        {
            var record = metrics?.Record(m);
            if (ck != null && ck.Every > 0 && m.Step % ck.Every == 0 && m.Step < m.TotalSteps) Save(m);
            if (Lead) Spec.OnStep?.Invoke(m, record);
        }, validate, cancel, control);
        ReportPipelineIdle();
        if (control?.Stopped == true && steps.Count > 0 && steps[^1].Step < Spec.Steps)
        {
            if (ck != null && savedStep != steps[^1].Step) Save(steps[^1]);
            return new RunOutcome(steps) { StoppedReason = control.StopReason, Checkpoint = saved };
        }
        return new RunOutcome(steps);
    }

    /// <summary>Every stage's idle share of its pipelined steps, averaged over the world (all stages, all replicas),
    /// next to the schedule's theory.</summary>
    void ReportPipelineIdle()
    {
        if (Pipeline is not { } runner) return;
        Span<double> idle = [runner.StepSeconds > 0 ? runner.WaitSeconds / runner.StepSeconds : 0, runner.TimedSteps > 0 ? 1 : 0];
        World.AllReduce(idle);
        int P = Layout.Section.Pp, M = MicroBatches, v = runner.Chunks;
        if (idle[1] > 0)
            Say($"pipeline: stages idle {idle[0] / idle[1]:P1} of each step on average (measured: bubble + transfers, {runner.TimedSteps} step(s) after the first); " +
                (v > 1 ? $"theory (P−1)/(v·M+P−1) = {PipelineSchedule.Bubble(P, M, v):P1} for P = {P}, M = {M}, v = {v}"
                : $"theory (P−1)/(M+P−1) = {PipelineSchedule.Bubble(P, M):P1} for P = {P}, M = {M}"));
    }

    // ---- results ---------------------------------------------------------------------------------------------------

    /// <summary>The whole model in Hugging Face layout from however many stages hold it (collective; at ZeRO-3 every
    /// unit is gathered while the weights are written). Weights that are not finite are refused, the free space is
    /// checked first and an I/O failure is one line naming the last good checkpoint (<see cref="SafeIo"/>).</summary>
    public void SaveWeights(string directory, string dtype = "F32", IReadOnlyDictionary<string, string>? metadata = null, string what = "the final weights")
    {
        using var whole = Gathered();
        SafeIo.SaveWeights(directory, Model, World, LastGoodCheckpoint, () => Layout.SaveModel(Model, directory, dtype, metadata), what);
    }

    /// <summary>The newest checkpoint of this run (named by storage errors), or null.</summary>
    public string? LastGoodCheckpoint => Spec.Checkpoint is { } ck ? Checkpoints.List(ck.Root).LastOrDefault() : null;

    /// <summary>ZeRO-3: every unit of the body gathered until disposed (whole weights for a save or an evaluation on
    /// this rank alone, with no collectives inside); a no-op at ZeRO 0-2.</summary>
    public IDisposable Gathered() => (parallel[0].Alongside ?? parallel[0]).Gathered();

    /// <summary>The adapter in PEFT's layout, gathered from every stage (collective).</summary>
    public void SaveAdapter(string directory, string? baseModel)
    {
        if (Lora == null) throw new InvalidOperationException($"{Spec.Name} has no LoRA adapter");
        SafeIo.Writing("the adapter", directory, LastGoodCheckpoint, () => Layout.SaveAdapter(Lora, directory, baseModel));
    }

    public void Dispose()
    {
        Ewc?.Dispose();
        if (Optimizers != null) foreach (var o in Optimizers.Members) o.Dispose();
        foreach (var dp in parallel) dp.Dispose();
        Plan?.Dispose();
        Lora?.Dispose();
        if (!Spec.Model.Borrowed)
        {
            if (Head != null) Head.Dispose();
            else Model?.Dispose();
        }
        Layout.Dispose();
    }
}
