using Engine.Core;
using Engine.Model;

namespace Engine.Training.Config;

/// <summary>One training run, as read from a TOML or JSON file (snake_case keys; every key optional but validated).</summary>
public sealed class TrainConfig
{
    public ModelSection Model { get; set; } = new();
    public DataSection Data { get; set; } = new();
    public TrainSection Train { get; set; } = new();
    public AdamWOptions Optim { get; set; } = new();
    public ScheduleOptions Schedule { get; set; } = new();
    public OutputSection Output { get; set; } = new();
    public Parallel.ParallelSection Parallel { get; set; } = new();
    /// <summary>LoRA fine-tuning of model.init_from (null: every parameter is trained).</summary>
    public LoraSection? Lora { get; set; }

    /// <summary>Reads <paramref name="path"/>: its relative paths against its folder, those of <paramref name="overrides"/>
    /// (--set) against <paramref name="workingDirectory"/> (default: the current directory).</summary>
    public static TrainConfig Load(string path, IEnumerable<string>? overrides = null, string? workingDirectory = null)
    {
        var cfg = ConfigBinder.Load<TrainConfig>(path, overrides, workingDirectory);
        cfg.BaseDirectory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        try { cfg.Validate(); }
        catch (ConfigException e) { throw new ConfigException($"{path}: {ErrorText.OneLine(e.Message)}"); }
        return cfg;
    }

    /// <summary>Relative data/output paths resolve against the config file's folder.</summary>
    public string BaseDirectory { get; set; } = Directory.GetCurrentDirectory();

    public string Resolve(string path) => Engine.Data.DataPaths.Resolve(path, BaseDirectory);

    public void Validate()
    {
        var errors = new List<string>();
        if (Train.SeqLen <= 0) errors.Add($"train.seq_len must be positive (got {Train.SeqLen})");
        if (Train.BatchSize <= 0) errors.Add($"train.batch_size must be positive (got {Train.BatchSize})");
        if (Train.GradAccum <= 0) errors.Add($"train.grad_accum must be positive (got {Train.GradAccum})");
        if (Train.Steps <= 0) errors.Add($"train.steps must be positive (got {Train.Steps})");
        if (Train.SeqLen > Model.MaxPositionEmbeddings) errors.Add($"train.seq_len ({Train.SeqLen}) exceeds model.max_position_embeddings ({Model.MaxPositionEmbeddings})");
        CheckOptim(Optim, Schedule, "optim", "schedule", errors);
        if (Train.ZLoss is < 0 || !double.IsFinite(Train.ZLoss)) errors.Add($"train.z_loss must be a finite number >= 0 (got {Train.ZLoss})");
        if (Train.EvalEvery < 0) errors.Add($"train.eval_every must be >= 0 (got {Train.EvalEvery})");
        if (Train.EvalBatches < 1) errors.Add($"train.eval_batches must be >= 1 (got {Train.EvalBatches})");
        if (Train.LogEvery < 1) errors.Add($"train.log_every must be >= 1 (got {Train.LogEvery})");
        if (Data.Train.Length == 0) errors.Add("data.train must name at least one text file");
        if (Data.ValidFraction is < 0 or >= 1) errors.Add($"data.valid_fraction must be in [0, 1) (got {Data.ValidFraction})");
        if (Output.SaveDtype is not ("F32" or "BF16")) errors.Add($"output.save_dtype must be F32 or BF16 (got {Output.SaveDtype})");
        if (Output.CheckpointEvery < 0) errors.Add($"output.checkpoint_every must be >= 0 (got {Output.CheckpointEvery})");
        if (Output.KeepCheckpoints < 1) errors.Add($"output.keep_checkpoints must be >= 1 (got {Output.KeepCheckpoints})");
        if (Train.Guard is not ("fail" or "skip")) errors.Add($"train.guard must be fail or skip (got {Train.Guard})");
        if (Train.GuardZ < 0 || Train.GuardWindow < 2) errors.Add($"train.guard_z must be >= 0 and train.guard_window >= 2 (got {Train.GuardZ}, {Train.GuardWindow})");
        if (Train.Device is not ("cpu" or "cuda")) errors.Add($"train.device must be cpu or cuda (got {Train.Device})");
        // paths: no NUL (the one character a Linux path cannot hold), and output.dir not an existing file
        foreach (var (key, value) in Data.Train.Select((f, i) => ($"data.train[{i}]", f))
            .Append(("data.tokenizer", Data.Tokenizer)).Append(("output.dir", Output.Dir)).Append(("model.init_from", Model.InitFrom ?? "")))
            if (value.Contains('\0')) errors.Add($"{key} holds a NUL character, which no path can");
        if (!Output.Dir.Contains('\0') && File.Exists(Resolve(Output.Dir))) errors.Add($"output.dir names a file, not a directory: {Resolve(Output.Dir)}");
        // the model's shape, before any data is read (the tokenizer's vocabulary is not known yet: 1 stands in for 0)
        if (Model.InitFrom == null)
        {
            try { Model.ToLlamaConfig(Math.Max(Model.VocabSize, 1)); }
            catch (ArgumentException e) { errors.Add("model: " + e.Message); }
        }
        var layout = Run.RunLayout.From(Parallel, Model);
        if (Lora != null)
        {
            Lora.Validate("lora", layout.Mode == RecomputeMode.Full, errors);
            if (Model.InitFrom == null) errors.Add("lora needs model.init_from: the base model the adapters adapt");
        }
        if (errors.Count > 0) throw new ConfigException(string.Join("; ", errors));
        // the layout's own checks that need no job (its ranks are known when the run starts)
        layout.Validate(gradAccum: Train.GradAccum, needs: Needs);
    }

    /// <summary>
    /// AdamW and schedule values a run can use, each error naming its key: lr finite in (0, 1] (AdamW rates are
    /// ~1e-5..1e-2; a larger one only diverges), betas in [0, 1), eps, weight decay and clip finite and not negative
    /// (eps positive), warmup >= 0, min_lr in [0, lr].
    /// </summary>
    public static void CheckOptim(AdamWOptions o, ScheduleOptions s, string optim, string schedule, List<string> errors)
    {
        if (!(o.Lr > 0) || !(o.Lr <= 1)) errors.Add($"{optim}.lr must be positive and at most 1 (got {o.Lr})");
        if (!(o.Beta1 >= 0 && o.Beta1 < 1)) errors.Add($"{optim}.beta1 must be in [0, 1) (got {o.Beta1})");
        if (!(o.Beta2 >= 0 && o.Beta2 < 1)) errors.Add($"{optim}.beta2 must be in [0, 1) (got {o.Beta2})");
        if (!(o.Eps > 0) || !double.IsFinite(o.Eps)) errors.Add($"{optim}.eps must be a positive finite number (got {o.Eps})");
        if (!(o.WeightDecay >= 0) || !double.IsFinite(o.WeightDecay)) errors.Add($"{optim}.weight_decay must be >= 0 (got {o.WeightDecay})");
        if (!(o.ClipNorm >= 0) || !double.IsFinite(o.ClipNorm)) errors.Add($"{optim}.clip_norm must be >= 0 (got {o.ClipNorm})");
        if (s.WarmupSteps < 0) errors.Add($"{schedule}.warmup_steps must be >= 0 (got {s.WarmupSteps})");
        if (!(s.MinLr >= 0 && s.MinLr <= o.Lr)) errors.Add($"{schedule}.min_lr must be in [0, {optim}.lr] (got {s.MinLr})");
    }

    /// <summary>The model config; vocab_size 0 takes the tokenizer's size.</summary>
    public LlamaConfig ToLlamaConfig(int tokenizerVocab) => Model.ToLlamaConfig(tokenizerVocab);

    /// <summary>What `engine train` asks of its layout.</summary>
    public Run.RunNeeds Needs => new("train") { Lora = Lora };
}

public sealed class ModelSection
{
    /// <summary>The model config; vocab_size 0 takes the tokenizer's size.</summary>
    public LlamaConfig ToLlamaConfig(int tokenizerVocab) => new LlamaConfig
    {
        VocabSize = VocabSize > 0 ? VocabSize : tokenizerVocab,
        HiddenSize = HiddenSize,
        IntermediateSize = IntermediateSize,
        NumLayers = NumLayers,
        NumHeads = NumHeads,
        NumKvHeads = NumKvHeads > 0 ? NumKvHeads : NumHeads,
        MaxPositionEmbeddings = MaxPositionEmbeddings,
        RmsNormEps = (float)RmsNormEps,
        RopeTheta = RopeTheta,
        RopeScaling = RopeScaling,
        RopeScalingFactor = RopeScalingFactor,
        TieWordEmbeddings = TieWordEmbeddings,
        NormHead = NormHead,
        InitializerRange = InitializerRange,
        Family = Family,
        Position = PositionEmbedding,
        MaxZLossWeight = MaxZLoss,
    }.Validate();

    /// <summary>0 = the tokenizer's vocabulary size.</summary>
    public int VocabSize { get; set; }
    public int HiddenSize { get; set; } = 256;
    public int IntermediateSize { get; set; } = 688;
    public int NumLayers { get; set; } = 4;
    public int NumHeads { get; set; } = 4;
    /// <summary>0 = same as num_heads (multi-head attention).</summary>
    public int NumKvHeads { get; set; }
    public int MaxPositionEmbeddings { get; set; } = 1024;
    public double RmsNormEps { get; set; } = 1e-5;
    public double RopeTheta { get; set; } = 10000;
    public RopeScalingKind RopeScaling { get; set; } = RopeScalingKind.None;
    public double RopeScalingFactor { get; set; } = 1;
    public bool TieWordEmbeddings { get; set; }
    public bool NormHead { get; set; }
    public double InitializerRange { get; set; } = 0.02;
    /// <summary>Activation recompute in backward: "none", "full" (each block keeps only its input) or "selective";
    /// empty = from checkpoint_activations (see <see cref="Run.RunLayout.From"/>).</summary>
    public string Recompute { get; set; } = "";
    /// <summary>The Hugging Face layout the model is saved in: llama (default) or baichuan (W_pack, Baichuan 2's config).</summary>
    public ModelFamily Family { get; set; } = ModelFamily.Llama;
    /// <summary>rope (default) or alibi (Baichuan 2-13B style; needs family = "baichuan").</summary>
    public PositionEmbedding PositionEmbedding { get; set; } = PositionEmbedding.Rope;
    /// <summary>Baichuan 2's max-z loss weight (its z_loss_weight; 2e-4 in the paper): training adds it times the squared
    /// largest logit per token. Distinct from train.z_loss (PaLM's, on the log-normalizer).</summary>
    public double MaxZLoss { get; set; }
    /// <summary>The older switch for recompute = "full" (still read).</summary>
    public bool CheckpointActivations { get; set; }
    /// <summary>Start from a Hugging Face-layout directory (config.json + model.safetensors) instead of random init.</summary>
    [ConfigPath]
    public string? InitFrom { get; set; }
}

public sealed class DataSection
{
    /// <summary>Text files (.txt, .jsonl with "text", FPB .csv, instruction .json/.jsonl) to train on.</summary>
    [ConfigPath]
    public string[] Train { get; set; } = [];
    /// <summary>"byte" for the byte-level tokenizer, the path of a Hugging Face tokenizer.json, or "model": the
    /// tokenizer.json of model.init_from's directory. A model that carries another tokenizer is refused.</summary>
    [ConfigPath(Words = ["byte", "model"])]
    public string Tokenizer { get; set; } = "byte";
    /// <summary>Share of the tokens held out (from the end of each file) for validation loss.</summary>
    public double ValidFraction { get; set; } = 0.05;
}

public sealed class TrainSection
{
    public int SeqLen { get; set; } = 256;
    public int BatchSize { get; set; } = 8;
    /// <summary>Micro-batches accumulated per optimizer step.</summary>
    public int GradAccum { get; set; } = 1;
    public int Steps { get; set; } = 100;
    public ulong Seed { get; set; } = 1234;
    /// <summary>Baichuan 2 max-z loss coefficient (2e-4 in the paper; 0 disables).</summary>
    public double ZLoss { get; set; }
    public string Device { get; set; } = "cpu";
    public int LogEvery { get; set; } = 10;
    /// <summary>Validation every N steps (0 = only at the end).</summary>
    public int EvalEvery { get; set; }
    public int EvalBatches { get; set; } = 4;
    /// <summary>Numeric guard: "fail" stops at a non-finite loss or gradient norm; "skip" skips such a step, and a loss
    /// spike above guard_z standard deviations of the last guard_window losses (llm.c's rule; 0 = no spike rule).</summary>
    public string Guard { get; set; } = "fail";
    public double GuardZ { get; set; } = 5;
    public int GuardWindow { get; set; } = 128;
}

public sealed class OutputSection
{
    [ConfigPath]
    public string Dir { get; set; } = "runs/train";
    /// <summary>Weights dtype in model.safetensors: F32 or BF16.</summary>
    public string SaveDtype { get; set; } = "F32";
    /// <summary>Write a resumable checkpoint every N steps under dir/checkpoints (0 = never).</summary>
    public int CheckpointEvery { get; set; }
    /// <summary>How many of the newest checkpoints to keep.</summary>
    public int KeepCheckpoints { get; set; } = 2;
    /// <summary>Also write the step metrics as TensorBoard event files under dir/tensorboard.</summary>
    public bool Tensorboard { get; set; }
}
