using System.Globalization;
using Engine.Core;
using Engine.Training.Config;
using Engine.Training.Recipes;

namespace Engine.Training.Scaling;

/// <summary>
/// `engine ladder`'s config: the recipe's sources, tokenizer, model defaults and evaluation, plus a grid of model sizes ×
/// token budgets × domain ratios (× learning rates) whose points are each trained as a one-stage recipe — from random
/// weights or from a general-only base of the same size — and the fits made from their held-out losses.
/// </summary>
public sealed class LadderConfig
{
    public string Name { get; set; } = "ladder";
    public ulong Seed { get; set; } = 1234;
    /// <summary>One tokenizer for every point (trained once, or loaded): losses of different tokenizers do not compare.</summary>
    public TokenizerSection Tokenizer { get; set; } = new();
    /// <summary>What every size shares (vocabulary, RoPE, positions, tying); each size sets its own width and depth.</summary>
    public ModelSection Model { get; set; } = new();
    public Dictionary<string, SourceSection> Sources { get; set; } = new();
    public LadderSection Ladder { get; set; } = new();
    public LadderTrainSection Train { get; set; } = new();
    /// <summary>ladder.init = "base": the general-only pretraining every size's points continue from.</summary>
    public LadderBaseSection? Base { get; set; }
    public EvalSection Eval { get; set; } = new() { Instruction = false };
    public FitSection Fit { get; set; } = new();
    public ForgettingSection Forgetting { get; set; } = new();
    public TargetSection Target { get; set; } = new();
    public LadderOutput Output { get; set; } = new();
    /// <summary>The layout of one point on its rank group (ladder.ranks_per_point ranks).</summary>
    public Parallel.ParallelSection Parallel { get; set; } = new();

    public string BaseDirectory { get; set; } = Directory.GetCurrentDirectory();
    public string Resolve(string path) => Engine.Data.DataPaths.Resolve(path, BaseDirectory);

    public static LadderConfig Load(string path, IEnumerable<string>? overrides = null)
    {
        var cfg = ConfigBinder.Load<LadderConfig>(path, overrides);
        cfg.BaseDirectory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        try { cfg.Validate(); }
        catch (ConfigException e) { throw new ConfigException($"{path}: {ErrorText.OneLine(e.Message)}"); }
        return cfg;
    }

    public void Validate()
    {
        var errors = new List<string>();
        var l = Ladder;
        if (l.Sizes.Count < 2) errors.Add("ladder.sizes: at least two sizes are needed (the largest is held out of the fits)");
        if (l.Tokens.Length == 0 || l.Tokens.Any(t => t <= 0)) errors.Add("ladder.tokens: at least one positive token budget is needed");
        if (l.Ratios.Length == 0 || l.Ratios.Any(r => r is < 0 or >= 1)) errors.Add("ladder.ratios: at least one domain ratio in [0, 1) is needed");
        if (l.Lrs.Any(x => !(x > 0) || x > 1)) errors.Add("ladder.lrs: every learning rate must be in (0, 1]");
        if (l.Tokens.Distinct().Count() != l.Tokens.Length || l.Ratios.Distinct().Count() != l.Ratios.Length || l.Lrs.Distinct().Count() != l.Lrs.Length)
            errors.Add("ladder.tokens, ladder.ratios and ladder.lrs must not repeat a value");
        if (l.Init is not ("scratch" or "base")) errors.Add($"ladder.init must be scratch or base (got {l.Init})");
        if (l.Init == "base" && Base == null) errors.Add("ladder.init = \"base\" needs a [base] section (the general pretraining of every size)");
        if (l.Init == "scratch" && Base != null) errors.Add("a [base] section is only read with ladder.init = \"base\"");
        if (l.General.Count == 0 || l.Domain.Count == 0) errors.Add("ladder.general and ladder.domain must each name at least one source");
        foreach (var (key, table) in new[] { ("ladder.general", l.General), ("ladder.domain", l.Domain) })
            foreach (var (name, w) in table)
            {
                if (!Sources.TryGetValue(name, out var s)) errors.Add($"{key}: unknown source '{name}'");
                else if (s.Kind != "pretrain") errors.Add($"{key}: source '{name}' is {s.Kind}; the ladder mixes pretraining text");
                if (!(w > 0)) errors.Add($"{key}.{name} must be > 0 (got {w})");
            }
        if (l.General.Keys.Intersect(l.Domain.Keys).Any()) errors.Add("ladder.general and ladder.domain must not share a source");
        var generalDomains = l.General.Keys.Where(Sources.ContainsKey).Select(k => Sources[k].Domain).Distinct().ToList();
        var domainDomains = l.Domain.Keys.Where(Sources.ContainsKey).Select(k => Sources[k].Domain).Distinct().ToList();
        if (generalDomains.Count > 1 || domainDomains.Count > 1 || (generalDomains.Count == 1 && domainDomains.Count == 1 && generalDomains[0] == domainDomains[0]))
            errors.Add("the ladder.general sources must share one domain and the ladder.domain sources another (their held-out losses are the general and domain losses)");
        if (!l.Ratios.Contains(l.ReferenceRatio)) errors.Add($"ladder.reference_ratio ({l.ReferenceRatio}) must be one of ladder.ratios [{string.Join(", ", l.Ratios.Select(F))}]");
        if (l.RanksPerPoint < 1) errors.Add($"ladder.ranks_per_point must be >= 1 (got {l.RanksPerPoint})");
        foreach (var (name, s) in l.Sizes)
            if (s.HiddenSize <= 0 || s.NumLayers <= 0 || s.NumHeads <= 0 || s.IntermediateSize <= 0)
                errors.Add($"ladder.sizes.{name}: hidden_size, intermediate_size, num_layers and num_heads must be positive");
            else
            {
                try { Shape(name); }
                catch (ArgumentException e) { errors.Add($"ladder.sizes.{name}: {e.Message}"); }
            }
        if (l.Holdout is { } h)
        {
            if (!l.Sizes.ContainsKey(h.Size)) errors.Add($"ladder.holdout.size '{h.Size}' is not one of ladder.sizes");
            if (h.Tokens <= 0) errors.Add("ladder.holdout.tokens must be positive");
            if (h.Ratio is { } hr && !l.Ratios.Contains(hr)) errors.Add($"ladder.holdout.ratio ({hr}) must be one of ladder.ratios");
            if (h.Lr is { } hl && !(hl > 0 && hl <= 1)) errors.Add($"ladder.holdout.lr must be in (0, 1] (got {hl})");
        }
        if (Train.BatchSize <= 0 || Train.SeqLen <= 1 || Train.GradAccum <= 0) errors.Add("train: batch_size, seq_len and grad_accum must be positive (seq_len > 1)");
        if (Train.BatchSize % Replicas != 0) errors.Add($"train.batch_size ({Train.BatchSize}, sequences per step) must be a multiple of the {Replicas} data-parallel replica(s) of a point");
        TrainConfig.CheckOptim(Train.Optim, Train.Schedule, "train.optim", "train.schedule", errors);
        if (Base is { } b)
        {
            if (b.Tokens <= 0) errors.Add("base.tokens must be positive");
            TrainConfig.CheckOptim(b.Optim ?? Train.Optim, b.Schedule ?? Train.Schedule, "base.optim", "base.schedule", errors);
        }
        if (!(Fit.HuberDelta > 0) || Fit.Bootstrap < 0 || Fit.Level is <= 0 or >= 1) errors.Add("fit: huber_delta must be > 0, bootstrap >= 0, level in (0, 1)");
        if (Fit.Resampling is not ("residuals" or "cases")) errors.Add($"fit.resampling must be residuals or cases (got {Fit.Resampling})");
        if (Fit.Parameters is not ("non_embedding" or "total")) errors.Add($"fit.parameters must be non_embedding or total (got {Fit.Parameters})");
        if (!(Forgetting.Tolerance >= 0)) errors.Add($"forgetting.tolerance must be >= 0 (got {Forgetting.Tolerance})");
        if (Forgetting.RampStartFraction is <= 0 or > 1) errors.Add($"forgetting.ramp_start_fraction must be in (0, 1] (got {Forgetting.RampStartFraction})");
        if (Forgetting.BaseGeneralLoss is { } bl && !(bl > 0)) errors.Add("forgetting.base_general_loss must be positive");
        if (Target.HiddenSize < 0 || Target.Tokens < 0 || Target.ComputeBudget < 0 || Target.SeqLen < 0 || Target.VocabSize < 0) errors.Add("target: sizes, tokens and compute_budget must be >= 0");
        if (Target.HiddenSize > 0 && (Target.IntermediateSize <= 0 || Target.NumLayers <= 0 || Target.NumHeads <= 0 || !(Target.Tokens > 0)))
            errors.Add("target: a target with hidden_size needs intermediate_size, num_layers, num_heads and tokens");
        if (Output.CheckpointEvery < 0 || Output.KeepCheckpoints < 1) errors.Add("output: checkpoint_every must be >= 0 and keep_checkpoints >= 1");
        if (errors.Count > 0) throw new ConfigException(string.Join("; ", errors));
        // every point is a recipe: the recipe's own validation covers sources, tokenizer, shapes, optimizer and layout
        foreach (var p in Points())
        {
            try { ToRecipe(p, "validate", null).Validate(); }
            catch (ConfigException e) { throw new ConfigException($"point {p.Id}: {ErrorText.OneLine(e.Message)}"); }
        }
    }

    static string F(double v) => v.ToString("G6", CultureInfo.InvariantCulture);

    /// <summary>Data-parallel replicas of one point.</summary>
    public int Replicas => Math.Max(1, Ladder.RanksPerPoint / Math.Max(1, Parallel.Pp));

    /// <summary>Sizes by parameter count, smallest first.</summary>
    public IReadOnlyList<string> SizeOrder => Ladder.Sizes.Keys.OrderBy(k => Shape(k).ParameterCount()).ThenBy(k => k, StringComparer.Ordinal).ToList();

    /// <summary>The Llama shape of a size (vocabulary: model.vocab_size, or the tokenizer's when that is 0 — see
    /// <paramref name="vocab"/>).</summary>
    public Engine.Model.LlamaConfig Shape(string size, int vocab = 0) => SizeModel(size).ToLlamaConfig(vocab > 0 ? vocab : Math.Max(1, Model.VocabSize > 0 ? Model.VocabSize : Tokenizer.VocabSize));

    ModelSection SizeModel(string size) => WithShape(Ladder.Sizes[size]);

    /// <summary>The target's shape (null when [target] names none). Not validated against the engine's flat-store
    /// limit: a target is counted (parameters, FLOPs), never built here.</summary>
    public Engine.Model.LlamaConfig? TargetShape(int vocab) => Target.HiddenSize <= 0 ? null : new Engine.Model.LlamaConfig
    {
        VocabSize = Target.VocabSize > 0 ? Target.VocabSize : vocab,
        HiddenSize = Target.HiddenSize,
        IntermediateSize = Target.IntermediateSize,
        NumLayers = Target.NumLayers,
        NumHeads = Target.NumHeads,
        NumKvHeads = Target.NumKvHeads > 0 ? Target.NumKvHeads : Target.NumHeads,
        TieWordEmbeddings = Model.TieWordEmbeddings,
    };

    ModelSection WithShape(SizeSection s)
    {
        return new ModelSection
        {
            VocabSize = Model.VocabSize,
            HiddenSize = s.HiddenSize,
            IntermediateSize = s.IntermediateSize,
            NumLayers = s.NumLayers,
            NumHeads = s.NumHeads,
            NumKvHeads = s.NumKvHeads,
            MaxPositionEmbeddings = Model.MaxPositionEmbeddings,
            RmsNormEps = Model.RmsNormEps,
            RopeTheta = Model.RopeTheta,
            TieWordEmbeddings = Model.TieWordEmbeddings,
            NormHead = Model.NormHead,
            InitializerRange = Model.InitializerRange,
            Recompute = Model.Recompute,
            CheckpointActivations = Model.CheckpointActivations,
        };
    }

    /// <summary>The holdout: ladder.holdout, else the largest size at the largest budget and the reference ratio.</summary>
    public (string Size, long Tokens, double Ratio) Holdout => Ladder.Holdout is { } h
        ? (h.Size, h.Tokens, h.Ratio ?? Ladder.ReferenceRatio)
        : (SizeOrder[^1], Ladder.Tokens.Max(), Ladder.ReferenceRatio);

    public double[] LearningRates => Ladder.Lrs.Length > 0 ? Ladder.Lrs : [Train.Optim.Lr];

    /// <summary>The sizes of the grid: every size but the holdout's, which is trained at the holdout point alone (no
    /// fit ever sees it: the prediction extrapolates in model size, as Baichuan 2 predicted its 7B and 13B).</summary>
    public IReadOnlyList<string> GridSizes => SizeOrder.Where(s => s != Holdout.Size).ToList();

    /// <summary>Every point: with init = base one base per size first, then the grid, then the holdout.</summary>
    public IReadOnlyList<LadderPoint> Points()
    {
        var list = new List<LadderPoint>();
        var (hs, ht, hr) = Holdout;
        if (Ladder.Init == "base")
            foreach (var s in SizeOrder) list.Add(new LadderPoint(s, Base!.Tokens, 0, (Base.Optim ?? Train.Optim).Lr, LadderPointKind.Base));
        foreach (var s in GridSizes)
            foreach (long t in Ladder.Tokens.Order())
                foreach (double r in Ladder.Ratios.Order())
                    foreach (double lr in LearningRates)
                        list.Add(new LadderPoint(s, t, r, lr, LadderPointKind.Grid));
        list.Add(new LadderPoint(hs, ht, hr, Ladder.Holdout?.Lr ?? LearningRates[0], LadderPointKind.Holdout));
        return list;
    }

    /// <summary>Sequences per optimizer step (global: every replica and micro-batch of the point).</summary>
    public long SequencesPerStep => (long)Train.BatchSize * Train.GradAccum;

    /// <summary>Optimizer steps that cover a budget (rounded up); the point trains exactly steps × sequences × seq_len tokens.</summary>
    public int Steps(long tokens) => (int)Math.Max(1, (tokens + SequencesPerStep * Train.SeqLen - 1) / (SequencesPerStep * Train.SeqLen));

    /// <summary>The mixture weights of a domain ratio: r spread over ladder.domain, 1 − r over ladder.general.</summary>
    public Dictionary<string, double> Weights(double ratio)
    {
        var w = new Dictionary<string, double>(StringComparer.Ordinal);
        double gs = Ladder.General.Values.Sum(), ds = Ladder.Domain.Values.Sum();
        foreach (var (k, v) in Ladder.General) if (ratio < 1) w[k] = (1 - ratio) * v / gs;
        foreach (var (k, v) in Ladder.Domain) if (ratio > 0) w[k] = ratio * v / ds;
        return w;
    }

    /// <summary>A point as a one-stage recipe writing under <paramref name="outDir"/>; <paramref name="baseWeights"/> is
    /// the size's base model directory when the ladder continues from bases.</summary>
    public RecipeConfig ToRecipe(LadderPoint p, string outDir, string? baseWeights, string? tokenizerFile = null)
    {
        var optim = p.Kind == LadderPointKind.Base ? Base!.Optim ?? Train.Optim : Train.Optim;
        var schedule = p.Kind == LadderPointKind.Base ? Base!.Schedule ?? Train.Schedule : Train.Schedule;
        // the schedule's floor scales with the point's learning rate (a learning-rate grid keeps its shape)
        schedule = schedule with { MinLr = schedule.MinLr * p.Lr / optim.Lr };
        var weights = p.Kind == LadderPointKind.Base
            ? (Base!.Weights.Count > 0 ? Base.Weights : Ladder.General).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal)
            : Weights(p.Ratio);
        var tokenizer = tokenizerFile == null ? Tokenizer : new TokenizerSection { Kind = "bpe", Path = tokenizerFile, VocabSize = Tokenizer.VocabSize };
        return new RecipeConfig
        {
            Name = $"{Name}: {p.Id}",
            Seed = Seed,
            Tokenizer = tokenizer,
            Model = SizeModel(p.Size),
            Sources = Sources,
            Stages =
            [
                new StageSection
                {
                    Name = StageName,
                    Init = p.Kind != LadderPointKind.Base && Ladder.Init == "base" ? baseWeights ?? "base/unknown" : "random",
                    Weights = weights,
                    Steps = Steps(p.Tokens),
                    BatchSize = Train.BatchSize / Replicas,
                    SeqLen = Train.SeqLen,
                    GradAccum = Train.GradAccum,
                    Optim = optim with { Lr = p.Lr },
                    Schedule = schedule,
                    ZLoss = Train.ZLoss,
                },
            ],
            Eval = Eval,
            Output = new RecipeOutput { Dir = outDir, CheckpointEvery = Output.CheckpointEvery, KeepCheckpoints = Output.KeepCheckpoints },
            Parallel = Parallel,
            BaseDirectory = BaseDirectory,
        };
    }

    /// <summary>The stage name inside each point's one-stage recipe.</summary>
    public const string StageName = "point";

    /// <summary>The domain names of the general and the domain sources (the held-out groups' domains).</summary>
    public (string General, string Domain) DomainNames => (Sources[Ladder.General.Keys.First()].Domain, Sources[Ladder.Domain.Keys.First()].Domain);
}

public enum LadderPointKind { Grid, Holdout, Base }

/// <summary>One run of the ladder.</summary>
public sealed record LadderPoint(string Size, long Tokens, double Ratio, double Lr, LadderPointKind Kind)
{
    /// <summary>A file-system-safe name: size, tokens, ratio, learning rate (bases: base_SIZE).</summary>
    public string Id => Kind == LadderPointKind.Base ? $"base_{Size}"
        : string.Create(CultureInfo.InvariantCulture, $"{Size}_t{Tokens}_r{Ratio:0.####}_lr{Lr:0.#####e0}") + (Kind == LadderPointKind.Holdout ? "_holdout" : "");
}

public sealed class LadderSection
{
    /// <summary>Named model sizes (the rest of the shape comes from [model]).</summary>
    public Dictionary<string, SizeSection> Sizes { get; set; } = new();
    /// <summary>Training tokens per point (each budget its own run, its own full schedule).</summary>
    public long[] Tokens { get; set; } = [];
    /// <summary>Domain shares of the mixture (the rest is general text).</summary>
    public double[] Ratios { get; set; } = [];
    /// <summary>Peak learning rates (empty = train.optim.lr alone).</summary>
    public double[] Lrs { get; set; } = [];
    /// <summary>Relative weights of the general sources inside the general share, and of the domain sources inside the domain share.</summary>
    public Dictionary<string, double> General { get; set; } = new();
    public Dictionary<string, double> Domain { get; set; } = new();
    /// <summary>scratch (every point from random weights) or base (every point continues its size's [base] model).</summary>
    public string Init { get; set; } = "scratch";
    /// <summary>The ratio of the L(C) and L(N, D) fits and of the holdout (one of ratios).</summary>
    public double ReferenceRatio { get; set; }
    /// <summary>The point kept out of every fit, predicted and then compared (default: the largest size and budget at the reference ratio).</summary>
    public HoldoutSection? Holdout { get; set; }
    /// <summary>Ranks that train one point together (its [parallel] layout); the job's ranks form world ÷ this groups.</summary>
    public int RanksPerPoint { get; set; } = 1;
}

public sealed class SizeSection
{
    public int HiddenSize { get; set; }
    public int IntermediateSize { get; set; }
    public int NumLayers { get; set; }
    public int NumHeads { get; set; }
    /// <summary>0 = num_heads.</summary>
    public int NumKvHeads { get; set; }
}

public sealed class HoldoutSection
{
    public string Size { get; set; } = "";
    public long Tokens { get; set; }
    /// <summary>Default: ladder.reference_ratio.</summary>
    public double? Ratio { get; set; }
    /// <summary>Default: the first of ladder.lrs (or train.optim.lr).</summary>
    public double? Lr { get; set; }
}

public sealed class LadderTrainSection
{
    /// <summary>Sequences per micro-batch summed over a point's replicas (the same global batch on any layout).</summary>
    public int BatchSize { get; set; } = 8;
    public int SeqLen { get; set; } = 128;
    public int GradAccum { get; set; } = 1;
    public AdamWOptions Optim { get; set; } = new();
    public ScheduleOptions Schedule { get; set; } = new();
    public double ZLoss { get; set; }
}

public sealed class LadderBaseSection
{
    public long Tokens { get; set; }
    /// <summary>Default: ladder.general.</summary>
    public Dictionary<string, double> Weights { get; set; } = new();
    public AdamWOptions? Optim { get; set; }
    public ScheduleOptions? Schedule { get; set; }
}

public sealed class FitSection
{
    public double HuberDelta { get; set; } = 1e-3;
    public int Bootstrap { get; set; } = 200;
    /// <summary>residuals or cases (see <see cref="Scaling.Resampling"/>).</summary>
    public string Resampling { get; set; } = "residuals";
    /// <summary>Central coverage of every reported interval.</summary>
    public double Level { get; set; } = 0.9;
    /// <summary>N in the laws: non_embedding (Kaplan et al.; the default — embeddings dominate small models) or total (Hoffmann et al.).</summary>
    public string Parameters { get; set; } = "non_embedding";
    public ulong Seed { get; set; } = 1;

    public FitOptions Options => new()
    {
        HuberDelta = HuberDelta,
        Bootstrap = Bootstrap,
        Resampling = Resampling == "cases" ? Scaling.Resampling.Cases : Scaling.Resampling.Residuals,
        Level = Level,
        Seed = Seed,
    };
}

public sealed class ForgettingSection
{
    /// <summary>How far the general loss may rise above the base model's, relative (0.01 = 1 %).</summary>
    public double Tolerance { get; set; } = 0.01;
    /// <summary>The base model's general loss at the target (a real model's measured loss); default: the ladder's own base of that size.</summary>
    public double? BaseGeneralLoss { get; set; }
    /// <summary>The ramp starts at the ratio that is optimal for this fraction of the budget.</summary>
    public double RampStartFraction { get; set; } = 0.1;
}

/// <summary>A run beyond the ladder to predict (hidden_size 0 = none): its shape (the rest from [model]; vocab_size
/// 0 = the ladder's tokenizer), training tokens and sequence length — N and the FLOPs come from the shape exactly as
/// for the ladder's points. compute_budget (FLOPs, 0 = none) is split compute-optimally.</summary>
public sealed class TargetSection
{
    public string Name { get; set; } = "target";
    public int HiddenSize { get; set; }
    public int IntermediateSize { get; set; }
    public int NumLayers { get; set; }
    public int NumHeads { get; set; }
    public int NumKvHeads { get; set; }
    public int VocabSize { get; set; }
    public int SeqLen { get; set; }
    public double Tokens { get; set; }
    public double ComputeBudget { get; set; }
}

public sealed class LadderOutput
{
    public string Dir { get; set; } = "runs/ladder";
    /// <summary>A checkpoint every N steps inside a point (0 = none: a killed point restarts; finished points are always kept).</summary>
    public int CheckpointEvery { get; set; }
    public int KeepCheckpoints { get; set; } = 1;
}
