using Engine.Core;
using Engine.Training.Config;

namespace Engine.Training.Recipes;

/// <summary>
/// A domain-adaptation recipe as data: named sources, a tokenizer, a model shape, and stages (base pretraining,
/// naive or mixed continual pretraining, hybrid-tuning, vocabulary expansion, context extension) each with its own
/// mixture, optimiser, trainable set and forgetting control. Every stage is evaluated the same way.
/// </summary>
public sealed class RecipeConfig
{
    public string Name { get; set; } = "recipe";
    public ulong Seed { get; set; } = 1234;
    public TokenizerSection Tokenizer { get; set; } = new();
    public ModelSection Model { get; set; } = new();
    public Dictionary<string, SourceSection> Sources { get; set; } = new();
    public StageSection[] Stages { get; set; } = [];
    public EvalSection Eval { get; set; } = new();
    public RecipeOutput Output { get; set; } = new();
    public Parallel.ParallelSection Parallel { get; set; } = new();
    /// <summary>Optional: align the tuned model after the stages (reward model, PPO, DPO; Alignment/).</summary>
    public Alignment.AlignmentSection? Alignment { get; set; }

    public string BaseDirectory { get; set; } = Directory.GetCurrentDirectory();
    /// <summary>A config path: <c>data:…</c> under the data folder, else relative to the config's folder (<see cref="Engine.Data.DataPaths.Resolve"/>).</summary>
    public string Resolve(string path) => Engine.Data.DataPaths.Resolve(path, BaseDirectory);

    /// <summary>Reads <paramref name="path"/>: its relative paths against its folder, those of <paramref name="overrides"/>
    /// (--set) against <paramref name="workingDirectory"/> (default: the current directory).</summary>
    public static RecipeConfig Load(string path, IEnumerable<string>? overrides = null, string? workingDirectory = null)
    {
        var cfg = ConfigBinder.Load<RecipeConfig>(path, overrides, workingDirectory);
        cfg.BaseDirectory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        try { cfg.Validate(); }
        catch (ConfigException e) { throw new ConfigException($"{path}: {ErrorText.OneLine(e.Message)}"); }
        return cfg;
    }

    public void Validate()
    {
        var errors = new List<string>();
        if (Sources.Count == 0) errors.Add("sources: at least one source is needed");
        foreach (var (name, s) in Sources)
        {
            if (s.Files.Length == 0) errors.Add($"sources.{name}.files must name at least one file");
            if (s.Kind is not ("pretrain" or "instruct" or "sentiment")) errors.Add($"sources.{name}.kind must be pretrain, instruct or sentiment (got {s.Kind})");
            if (s.HeldOut is < 0 or >= 1) errors.Add($"sources.{name}.held_out must be in [0, 1)");
        }
        if (Stages.Length == 0 && Alignment == null) errors.Add("stages: at least one stage is needed");
        var seen = new HashSet<string>();
        var layout = Layout;
        foreach (var st in Stages)
        {
            string p = $"stages[{st.Name}]";
            if (string.IsNullOrWhiteSpace(st.Name)) errors.Add("every stage needs a name");
            else if (!seen.Add(st.Name)) errors.Add($"stage name '{st.Name}' is used twice");
            if (st.Init != "random" && !seen.Contains(st.Init) && st.Init != st.Name && !st.Init.Contains('/'))
                errors.Add($"{p}.init '{st.Init}' is neither 'random', an earlier stage nor a model directory");
            if (st.Weights.Count == 0) errors.Add($"{p}.weights must name at least one source");
            foreach (var (w, x) in st.Weights.Concat(st.EndWeights ?? []))
                if (!(x >= 0)) errors.Add($"{p}: weight of '{w}' must be >= 0 (got {x})");
            if (st.Weights.Count > 0 && !(st.Weights.Values.Sum() > 0)) errors.Add($"{p}.weights must not all be 0");
            TrainConfig.CheckOptim(st.Optim, st.Schedule, $"{p}.optim", $"{p}.schedule", errors);
            if (!(st.ZLoss >= 0)) errors.Add($"{p}.z_loss must be >= 0 (got {st.ZLoss})");
            if (st.EwcBatches < 1) errors.Add($"{p}.ewc_batches must be >= 1 (got {st.EwcBatches})");
            if (st.RopeScaling != RopeScalingKind.None && !(st.RopeScalingFactor >= 1)) errors.Add($"{p}.rope_scaling_factor must be >= 1 (got {st.RopeScalingFactor})");
            foreach (var w in st.Weights.Keys.Concat(st.EndWeights?.Keys ?? Enumerable.Empty<string>()))
                if (!Sources.ContainsKey(w)) errors.Add($"{p}: unknown source '{w}' in weights");
            if (st.EndWeights != null && st.RampTokens <= 0) errors.Add($"{p}.ramp_tokens must be positive when end_weights is set");
            if (st.Steps <= 0 || st.BatchSize <= 0 || st.SeqLen <= 1 || st.GradAccum <= 0) errors.Add($"{p}: steps, batch_size, seq_len and grad_accum must be positive");
            if (st.Trainable is not ("all" or "embeddings_and_head")) errors.Add($"{p}.trainable must be all or embeddings_and_head (got {st.Trainable})");
            if (st.EwcLambda < 0) errors.Add($"{p}.ewc_lambda must be >= 0");
            if (st.EwcLambda > 0 && (st.EwcSource == null || !Sources.ContainsKey(st.EwcSource))) errors.Add($"{p}.ewc_source must name a source when ewc_lambda > 0");
            if (st.SelectTop is < 0 or > 1) errors.Add($"{p}.select_top must be in [0, 1]");
            if (st.SelectTop > 0 && (st.SelectSource == null || !Sources.ContainsKey(st.SelectSource))) errors.Add($"{p}.select_source must name a source when select_top > 0");
            if (st.SeqLen > Model.MaxPositionEmbeddings * Math.Max(1, st.RopeScalingFactor)) errors.Add($"{p}.seq_len ({st.SeqLen}) exceeds max_position_embeddings × rope factor");
            if (st.Lora != null)
            {
                st.Lora.Validate($"{p}.lora", layout.Mode == Engine.Model.RecomputeMode.Full, errors);
                if (st.Init == "random") errors.Add($"{p}.lora adapts a trained model: init must be an earlier stage or a model directory, not random");
                if (st.Trainable != "all") errors.Add($"{p}.lora trains the adapters alone: leave trainable = all");
                if (st.EwcLambda > 0) errors.Add($"{p}.lora cannot be combined with ewc_lambda (the base is frozen)");
                if (st.ExpandedVocab) errors.Add($"{p}.lora cannot be combined with expanded_vocab (the new embedding rows would stay untrained)");
            }
        }
        if (Alignment != null && !seen.Contains(Alignment.Policy) && !Alignment.Policy.Contains('/'))
            errors.Add($"alignment.policy '{Alignment.Policy}' is neither a stage nor a model directory");
        if (Tokenizer.Kind is not ("auto" or "byte" or "bpe" or "model")) errors.Add($"tokenizer.kind must be auto, byte, bpe or model (got {Tokenizer.Kind})");
        if (Tokenizer.Kind == "model" && !Stages.Any(s => RecipeTokenizers.IsDirectory(s.Init))) errors.Add("tokenizer.kind = \"model\" takes the tokenizer of the model directory a stage starts from, but every stage starts from random or an earlier stage");
        if (Tokenizer.VocabSize < 1 || Tokenizer.TrainChars < 1 || Tokenizer.ExpandBy < 0) errors.Add("tokenizer: vocab_size and train_chars must be positive, expand_by >= 0");
        if (Eval.SeqLen < 2 || Eval.Batch < 1 || Eval.PerplexityTokens < 1 || Eval.Shots < 0 || Eval.MaxExamples < 1)
            errors.Add("eval: seq_len must be >= 2, batch, perplexity_tokens and max_examples >= 1, shots >= 0");
        foreach (var (name, src) in Sources)
            if (src.MaxDocs < 0) errors.Add($"sources.{name}.max_docs must be >= 0 (got {src.MaxDocs})");
        try { Model.ToLlamaConfig(Math.Max(Model.VocabSize, 1)); }
        catch (ArgumentException e) { errors.Add("model: " + e.Message); }
        if (errors.Count > 0) throw new ConfigException(string.Join("; ", errors));
        Alignment?.Validate(Sources.ContainsKey, s => Sources[s].Kind != "pretrain");
        // the layout's own checks that need no job, for every stage and alignment phase (a refusal before any training)
        foreach (var st in Stages) layout.Validate(gradAccum: st.GradAccum, needs: StageNeeds(st));
        if (Alignment != null) foreach (var needs in Alignment.Needs) layout.Validate(needs: needs);
    }

    /// <summary>The layout every stage and alignment phase runs on: [parallel] and the model's recompute mode.</summary>
    public Run.RunLayout Layout => Run.RunLayout.From(Parallel, Model);

    /// <summary>What a stage asks of the layout.</summary>
    public static Run.RunNeeds StageNeeds(StageSection st) => new($"stage {st.Name}") { Lora = st.Lora, MergesLora = st.Lora != null, Ewc = st.EwcLambda > 0 };
}

public sealed class TokenizerSection
{
    /// <summary>byte (no training), bpe (trained on the recipe's pretraining sources, or loaded from path), model (the
    /// tokenizer.json of the model directory the first stage that starts from one starts from), or auto (the default:
    /// model when such a directory holds a tokenizer.json, else byte).</summary>
    public string Kind { get; set; } = "auto";
    /// <summary>Train a model directory with a tokenizer other than the one it carries (refused otherwise).</summary>
    public bool Force { get; set; }
    /// <summary>A Hugging Face tokenizer.json to load instead of training.</summary>
    [ConfigPath]
    public string? Path { get; set; }
    public int VocabSize { get; set; } = 4096;
    /// <summary>Sources whose training documents train the BPE (default: every pretrain source).</summary>
    public string[] TrainSources { get; set; } = [];
    public long TrainChars { get; set; } = 3_000_000;
    /// <summary>Vocabulary expansion: tokens added from expand_sources for stages with expanded_vocab.</summary>
    public int ExpandBy { get; set; }
    public string[] ExpandSources { get; set; } = [];
}

public sealed class SourceSection
{
    /// <summary>pretrain (packed text), instruct (instruction/input/output, answer-only loss), sentiment (label,text rendered as instructions).</summary>
    public string Kind { get; set; } = "pretrain";
    /// <summary>general or finance: groups sources for per-domain perplexity.</summary>
    public string Domain { get; set; } = "general";
    public string Language { get; set; } = "en";
    [ConfigPath]
    public string[] Files { get; set; } = [];
    /// <summary>Cap on documents read (0 = all), taken in file order.</summary>
    public int MaxDocs { get; set; }
    /// <summary>Share of documents held out (seeded) for per-domain perplexity; pretrain sources only.</summary>
    public double HeldOut { get; set; } = 0.05;
}

public sealed class StageSection
{
    public string Name { get; set; } = "";
    /// <summary>random, the name of an earlier stage, or a model directory (config.json + model.safetensors).</summary>
    [ConfigPath(NameOrPath = true, Words = ["random"])]
    public string Init { get; set; } = "random";
    /// <summary>Mixture weights by source name (normalised); end_weights + ramp_tokens make a linear schedule.</summary>
    public Dictionary<string, double> Weights { get; set; } = new();
    public Dictionary<string, double>? EndWeights { get; set; }
    public long RampTokens { get; set; }
    public int Steps { get; set; } = 100;
    public int BatchSize { get; set; } = 8;
    public int SeqLen { get; set; } = 128;
    public int GradAccum { get; set; } = 1;
    public AdamWOptions Optim { get; set; } = new();
    public ScheduleOptions Schedule { get; set; } = new();
    /// <summary>Baichuan 2 max-z loss coefficient.</summary>
    public double ZLoss { get; set; }
    /// <summary>all, or embeddings_and_head (stage 1 of vocabulary expansion).</summary>
    public string Trainable { get; set; } = "all";
    /// <summary>EWC penalty weight λ (0 = off); the Fisher comes from the stage's initial model on ewc_source.</summary>
    public double EwcLambda { get; set; }
    public string? EwcSource { get; set; }
    public int EwcBatches { get; set; } = 8;
    /// <summary>Use the expanded tokenizer; the model's embeddings and head grow (new rows = mean of old rows).</summary>
    public bool ExpandedVocab { get; set; }
    /// <summary>Context extension: RoPE scaling applied to the model from this stage on.</summary>
    public RopeScalingKind RopeScaling { get; set; } = RopeScalingKind.None;
    public double RopeScalingFactor { get; set; } = 1;
    /// <summary>ETS-DACP-style selection: keep this fraction of select_source's documents most similar to the task data (0 = off).</summary>
    public double SelectTop { get; set; }
    public string? SelectSource { get; set; }
    /// <summary>Curriculum: order the kept documents from least to most task-similar instead of shuffling.</summary>
    public bool Curriculum { get; set; }
    /// <summary>LoRA: train low-rank adapters on the frozen init model (PEFT layout); the stage saves the adapter to
    /// stages/NAME_adapter and the merged model to stages/NAME. Null: every trainable parameter is trained.</summary>
    public Config.LoraSection? Lora { get; set; }
}

public sealed class EvalSection
{
    public int SeqLen { get; set; } = 128;
    public int Batch { get; set; } = 8;
    /// <summary>Held-out tokens per domain for perplexity.</summary>
    public long PerplexityTokens { get; set; } = 16384;
    /// <summary>Few-shot classification set (csv label,sentence or jsonl text,label) and the pool its shots come from.</summary>
    [ConfigPath]
    public string? FewShotFile { get; set; }
    [ConfigPath]
    public string? FewShotPool { get; set; }
    public int Shots { get; set; } = 3;
    public int MaxExamples { get; set; } = 200;
    /// <summary>Also score few_shot_file zero-shot in instruction format (<see cref="Eval.InstructionEval"/>), beside k-shot.</summary>
    public bool Instruction { get; set; } = true;
    /// <summary>Further labelled sets (csv label,sentence or jsonl text,label) scored zero-shot in instruction format: the chat
    /// template sentiment sources train with, label likelihood after the answer marker (raw and calibrated).</summary>
    [ConfigPath]
    public string[] InstructionFiles { get; set; } = [];
    /// <summary>Examples per instruction-format set (0 = max_examples).</summary>
    public int InstructionMaxExamples { get; set; }
}

public sealed class RecipeOutput
{
    [ConfigPath]
    public string Dir { get; set; } = "runs/recipe";
    /// <summary>A checkpoint every N steps of a stage (checkpoints/NN_stage/step_…; 0 = only when stopped early).</summary>
    public int CheckpointEvery { get; set; } = 50;
    public int KeepCheckpoints { get; set; } = 2;
    /// <summary>Also write the step metrics as TensorBoard event files under dir/tensorboard (tags per stage).</summary>
    public bool Tensorboard { get; set; }
}
