using Engine.Core;
using Engine.Model;
using Engine.Model.IO;
using Engine.Training.Config;
using Engine.Training.Forgetting;
using Engine.Training.Metrics;

namespace Engine.Training.Run;

/// <summary>
/// Where a run's model comes from: its shape (known before any weight is read: the layout needs the depth, the fit
/// check the size) and how to build this rank's part of it — the whole model, or one pipeline stage (only that
/// stage's parameters are created or read).
/// </summary>
public sealed record ModelSource(LlamaConfig Shape, Func<PipelineStage?, LlamaModel> Build)
{
    /// <summary><see cref="Build"/> reads the resumed checkpoint's weights itself (the resume then loads only the
    /// optimizer and the run's own state).</summary>
    public bool ReadsCheckpoint { get; init; }
    /// <summary>The model belongs to the caller: the run does not dispose it.</summary>
    public bool Borrowed { get; init; }

    /// <summary>A Hugging Face model directory (a pipeline stage reads only its own parameters).</summary>
    public static ModelSource Load(string directory, IBackend backend) =>
        new(ModelIO.LoadConfig(directory), stage => ModelIO.Load(directory, backend, stage == null ? null : _ => stage));

    /// <summary>A new model of <paramref name="config"/>'s shape (each parameter seeded by its name, so a stage holds
    /// what the whole model would).</summary>
    public static ModelSource Fresh(LlamaConfig config, IBackend backend, ulong seed) => new(config, stage =>
    {
        var m = new LlamaModel(config, backend, stage);
        m.InitializeWeights(seed);
        return m;
    });

    /// <summary>A whole model built by the caller (one pipeline stage only: there is nothing to split).</summary>
    public static ModelSource Existing(LlamaModel model) => new(model.Config, stage => stage == null ? model
        : throw new InvalidOperationException("an existing whole model cannot be split into pipeline stages"))
    { Borrowed = true };
}

/// <summary>What a run checkpoints, where and how often, and the settings an exact resume needs unchanged.</summary>
public sealed record CheckpointSpec(string Root, int Every, int Keep)
{
    /// <summary>Settings whose change breaks an exact resume (<see cref="ResumeCheck"/>); the assembler adds
    /// <see cref="SequencesKey"/> from the layout.</summary>
    public required IReadOnlyDictionary<string, string> Exact { get; init; }
    /// <summary>Settings a resume may change on purpose (printed).</summary>
    public required IReadOnlyDictionary<string, string> Overridable { get; init; }
    /// <summary>The exact setting that holds sequences per optimizer step (replicas × micro-batches × rows).</summary>
    public string SequencesKey { get; init; } = "train.sequences_per_step";
    /// <summary>Adds the run's own state to a checkpoint's (data position, generators, stage).</summary>
    public Func<CheckpointState, CheckpointState> State { get; init; } = s => s;
    /// <summary>Restores that state from the checkpoint a run resumes from.</summary>
    public Action<Checkpoints.Loaded>? Restore { get; init; }
}

/// <summary>
/// One run as data (TorchTitan's train spec + job config): the layout, the model source, LoRA, a scalar head, the
/// optimizer, the data and batch shape, the loss, the schedule, checkpointing and metrics. `engine train`, every
/// recipe stage, every alignment phase and the training benchmark are short translations of their config into one of
/// these; <see cref="RunAssembler"/> builds it, always in the same order. Members that need the built model are
/// functions of the assembled run (TorchTitan's build_*_fn).
/// </summary>
public sealed record RunSpec
{
    /// <summary>What runs, for messages and refusals ("train", "stage hybrid", "alignment.dpo").</summary>
    public required string Name { get; init; }

    // ---- layout ----------------------------------------------------------------------------------------------------
    public required RunLayout Layout { get; init; }
    /// <summary>PPO: the run samples from its model token by token (refused with pipeline stages).</summary>
    public bool Sampling { get; init; }

    // ---- model -----------------------------------------------------------------------------------------------------
    public required ModelSource Model { get; init; }
    /// <summary>A scalar head (reward model, PPO critic: <see cref="ScalarHeadModel"/>) around the built body, trained
    /// on the last stage; null = none. <see cref="NewHead"/> makes a fresh one.</summary>
    public Func<LlamaModel, ScalarHeadModel>? ScalarHead { get; init; }

    /// <summary>A fresh scalar head (transformers' init of score.weight from <paramref name="seed"/>).</summary>
    public static Func<LlamaModel, ScalarHeadModel> NewHead(ulong seed) => body => new ScalarHeadModel(body, seed);

    // ---- adapters --------------------------------------------------------------------------------------------------
    public LoraSection? Lora { get; init; }
    public ulong LoraSeed { get; init; }
    /// <summary>Resolves config paths (a LoRA init_from adapter directory).</summary>
    public Func<string, string> Resolve { get; init; } = p => p;

    // ---- optimizer and schedule ------------------------------------------------------------------------------------
    public required AdamWOptions Optim { get; init; }
    /// <summary>The scalar head's optimizer (default: <see cref="Optim"/>).</summary>
    public AdamWOptions? HeadOptim { get; init; }
    public ScheduleOptions Schedule { get; init; } = new() { Kind = ScheduleKind.Constant };

    // ---- data and batch --------------------------------------------------------------------------------------------
    /// <summary>The global stream of micro-batches (every rank builds the same one and trains on its share); null for a
    /// run driven in rounds, each with its own data (<see cref="AssembledRun.Loop"/>: PPO).</summary>
    public Func<AssembledRun, IBatchSource>? Data { get; init; }
    /// <summary>Rows per micro-batch (sequences, pairs, rollouts).</summary>
    public required int MicroBatchRows { get; init; }
    public required int SeqLen { get; init; }
    /// <summary>Micro-batches per replica per step unless parallel.micro_batches says (<see cref="RunLayout.MicroBatches"/>).</summary>
    public int GradAccum { get; init; } = 1;
    public required int Steps { get; init; }
    public double ZLoss { get; init; }
    public GuardOptions Guard { get; init; } = new();
    public (int First, int Last)? SkipBatches { get; init; }

    // ---- loss ------------------------------------------------------------------------------------------------------
    /// <summary>The per-micro-batch loss; null = the language-model loss over the data's sources.</summary>
    public Func<AssembledRun, ITrainingLoss>? Loss { get; init; }
    /// <summary>Elastic weight consolidation, estimated on the assembled run (before a resume loads later weights).</summary>
    public Func<AssembledRun, Ewc?>? Ewc { get; init; }

    // ---- checkpointing ---------------------------------------------------------------------------------------------
    public CheckpointSpec? Checkpoint { get; init; }
    /// <summary>The checkpoint to continue from (opened and verified by the caller); null = from the start.</summary>
    public Checkpoints.Loaded? Resume { get; init; }
    public RunControl? Control { get; init; }

    // ---- metrics (the records go to the MetricsLog handed to AssembledRun.Train) -----------------------------------
    /// <summary>Every step on the lead rank, with its metrics record when the run writes one.</summary>
    public Action<StepMetrics, StepRecord?>? OnStep { get; init; }
    /// <summary>Validation loss, run every train.eval_every steps and at the end; null = none.</summary>
    public Func<AssembledRun, Func<double>>? Validate { get; init; }
    public int EvalEvery { get; init; }
    /// <summary>One-line messages (lead rank).</summary>
    public Action<string>? Log { get; init; }
}
