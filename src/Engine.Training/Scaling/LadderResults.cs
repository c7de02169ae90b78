using System.Text.Json;
using System.Text.Json.Serialization;

namespace Engine.Training.Scaling;

/// <summary>
/// One finished ladder point, written once (atomically) to points/ID/result.json — the file a resumed ladder skips the
/// point by and `engine ladder --collect` fits from. Losses are mean held-out NLL per token (nats) of the ladder's one
/// tokenizer: per (domain, language) group and per domain (the mean over its languages, i.e. ln of the recipe's
/// domain perplexity). FLOPs are the engine's own count (<see cref="Engine.Model.LlamaConfig.TrainingFlopsPerToken"/>,
/// PaLM's 6N + 12·L·H·Q·T) × tokens trained.
/// </summary>
public sealed record PointResult
{
    public const string CurrentSchema = "engine.ladder.point/1";
    public string Schema { get; init; } = CurrentSchema;
    public required string Id { get; init; }
    /// <summary>grid, holdout or base.</summary>
    public required string Kind { get; init; }
    public required string Size { get; init; }
    public long Parameters { get; init; }
    public long NonEmbeddingParameters { get; init; }
    public double FlopsPerToken { get; init; }
    public long Tokens { get; init; }
    public int Steps { get; init; }
    /// <summary>Domain share of the mixture (0 for a base).</summary>
    public double Ratio { get; init; }
    public double Lr { get; init; }
    /// <summary>Training FLOPs of this point, and of the base it continued (0 from scratch).</summary>
    public double Flops { get; init; }
    public double BaseFlops { get; init; }
    public double GeneralLoss { get; init; }
    public double DomainLoss { get; init; }
    public Dictionary<string, double> Losses { get; init; } = new();
    public Dictionary<string, double> BitsPerByte { get; init; } = new();
    public double TrainSeconds { get; init; }
    public double EvalSeconds { get; init; }
    /// <summary>Ranks that trained it.</summary>
    public int Ranks { get; init; }
    /// <summary>random, or the base weights it continued.</summary>
    public string Init { get; init; } = "random";
    /// <summary>SHA-256 of the settings that determine the result (a result made with others is refused, not reused).</summary>
    public string Settings { get; init; } = "";

    public double TotalFlops => Flops + BaseFlops;
    public double Loss(string which) => which == "domain" ? DomainLoss : GeneralLoss;
    /// <summary>N in the laws (fit.parameters).</summary>
    public double N(string parameters) => parameters == "total" ? Parameters : NonEmbeddingParameters;
}

/// <summary>A value with its interval, as written to ladder.json.</summary>
public sealed record Interval(double Value, double Low, double High)
{
    public static Interval Of(Estimate e) => new(e.Value, e.Low, e.High);
}

public sealed record FitReport
{
    /// <summary>compute, chinchilla or dcpt.</summary>
    public required string Law { get; init; }
    /// <summary>general or domain.</summary>
    public required string Loss { get; init; }
    public string Formula { get; init; } = "";
    /// <summary>What the law is fitted on, in words.</summary>
    public string Data { get; init; } = "";
    public List<string> Points { get; init; } = [];
    /// <summary>Why the law was not fitted (too few points); null when it was.</summary>
    public string? Skipped { get; init; }
    public Dictionary<string, Interval> Parameters { get; init; } = new();
    public double RmsLogResidual { get; init; }
    public int Converged { get; init; }
    public int Starts { get; init; }
}

/// <summary>The holdout (or target) predicted by one fit; for the holdout, its measured loss beside.</summary>
public sealed record PredictionReport
{
    public required string Law { get; init; }
    public required string Loss { get; init; }
    public double Predicted { get; init; }
    public Interval Curve { get; init; } = new(double.NaN, double.NaN, double.NaN);
    public Interval Observation { get; init; } = new(double.NaN, double.NaN, double.NaN);
    public double? Observed { get; init; }
    /// <summary>(predicted − observed) / observed.</summary>
    public double? RelativeError { get; init; }
    /// <summary>The observed loss lies inside the prediction interval of a new observation.</summary>
    public bool? Inside { get; init; }
}

public sealed record SplitReport(string Loss, double Flops, Interval Parameters, Interval Tokens);

public sealed record RatioReport
{
    /// <summary>Where the ratio is chosen: model size (N), tokens, and what that is (the holdout or the target).</summary>
    public required string At { get; init; }
    public double N { get; init; }
    public double Tokens { get; init; }
    public double BaseGeneralLoss { get; init; }
    public string BaseGeneralLossSource { get; init; } = "";
    public double Tolerance { get; init; }
    /// <summary>The range searched (the grid's ratios: no extrapolation in r).</summary>
    public double RatioLow { get; init; }
    public double RatioHigh { get; init; }
    /// <summary>The domain ratio minimising the domain loss with the general loss within tolerance; null when none is feasible.</summary>
    public Interval? Ratio { get; init; }
    public double? DomainLoss { get; init; }
    public double? GeneralLoss { get; init; }
    public string Note { get; init; } = "";
    public RampReport? Ramp { get; init; }
}

/// <summary>The ratio schedule: a linear ramp from the ratio optimal at a fraction of the budget to the one optimal at
/// the whole budget, as a recipe stage's weights / end_weights / ramp_tokens.</summary>
public sealed record RampReport
{
    public double StartRatio { get; init; }
    public double EndRatio { get; init; }
    public long RampTokens { get; init; }
    public Dictionary<string, double> Weights { get; init; } = new();
    public Dictionary<string, double> EndWeights { get; init; } = new();
    /// <summary>The mean ratio over the ramp and the D-CPT losses at that constant ratio (an approximation: the law is fitted on constant mixtures).</summary>
    public double MeanRatio { get; init; }
    public double? DomainLossAtMean { get; init; }
    public double? GeneralLossAtMean { get; init; }
    public string Toml { get; init; } = "";
}

/// <summary>A fitted curve sampled for plots and the dashboard: x, value and the curve interval.</summary>
public sealed record CurveReport(string Law, string Loss, string X, string Label, List<double[]> Points);

/// <summary>ladder.json: everything `engine ladder` measured and fitted.</summary>
public sealed record LadderSummary
{
    public const string CurrentSchema = "engine.ladder/1";
    public string Schema { get; init; } = CurrentSchema;
    public string Name { get; init; } = "";
    public string Date { get; init; } = "";
    public string Commit { get; init; } = "";
    public string Machine { get; init; } = "";
    public string Init { get; init; } = "scratch";
    public double ReferenceRatio { get; init; }
    public double Level { get; init; }
    public string ParameterCount { get; init; } = "non_embedding";
    public string Holdout { get; init; } = "";
    public List<PointResult> Points { get; init; } = [];
    public List<FitReport> Fits { get; init; } = [];
    public List<PredictionReport> Validation { get; init; } = [];
    public string? TargetName { get; init; }
    public List<PredictionReport> Target { get; init; } = [];
    public List<SplitReport> ComputeOptimal { get; init; } = [];
    public RatioReport? Ratio { get; init; }
    public List<CurveReport> Curves { get; init; } = [];
    public List<string> Notes { get; init; } = [];
    public double WallSeconds { get; init; }

    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    public static LadderSummary Read(string path)
    {
        try
        {
            var s = JsonSerializer.Deserialize<LadderSummary>(File.ReadAllText(path), Json) ?? throw new InvalidDataException($"{path}: empty");
            if (s.Schema != CurrentSchema) throw new InvalidDataException($"{path}: schema '{s.Schema}', expected {CurrentSchema}");
            return s;
        }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not a ladder summary ({e.Message})"); }
    }

    public static PointResult ReadPoint(string path)
    {
        try
        {
            var p = JsonSerializer.Deserialize<PointResult>(File.ReadAllText(path), Json) ?? throw new InvalidDataException($"{path}: empty");
            if (p.Schema != PointResult.CurrentSchema) throw new InvalidDataException($"{path}: schema '{p.Schema}', expected {PointResult.CurrentSchema}");
            return p;
        }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not a ladder point result ({e.Message})"); }
    }
}
