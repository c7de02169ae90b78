using System.Globalization;
using System.Text;

namespace Engine.Training.Scaling;

/// <summary>
/// The fits of a ladder's results, pure arithmetic on the point files (no training):
/// <list type="bullet">
/// <item>L(C) (Baichuan 2) on the grid's largest budget at the reference ratio, one point per size (every size on the
/// same tokens, as Baichuan 2 trained its 10M–3B ladder); C = the point's FLOPs plus its base's.</item>
/// <item>L(N, D) (Hoffmann et al.) on every grid point at the reference ratio.</item>
/// <item>D-CPT L(N, D, r) on every grid point: the domain loss with r = the domain ratio, the general loss with r = 1 − it.</item>
/// </list>
/// Each law is fitted to the general and to the domain loss. With several learning rates, each (size, tokens, ratio)
/// cell contributes its best learning rate for the loss fitted. The holdout never enters a fit; it is predicted by each
/// and compared. Then: predictions for [target], the compute-optimal split of target.compute_budget, and the domain
/// ratio that minimises the domain loss while the general loss stays within forgetting.tolerance of the base model,
/// with the ramp that follows.
/// </summary>
public static class LadderAnalysis
{
    static readonly string[] Losses = ["general", "domain"];

    public static LadderSummary Analyze(LadderConfig cfg, IReadOnlyList<PointResult> results, int vocab)
    {
        var o = cfg.Fit.Options;
        string nKind = cfg.Fit.Parameters;
        double rRef = cfg.Ladder.ReferenceRatio;
        var notes = new List<string>();
        var grid = results.Where(r => r.Kind == "grid").ToList();
        var holdout = results.FirstOrDefault(r => r.Kind == "holdout");
        var fits = new List<FitReport>();
        var fitted = new Dictionary<(string Law, string Loss), LawFit>();
        var validation = new List<PredictionReport>();
        var curves = new List<CurveReport>();
        long maxTokens = grid.Count > 0 ? grid.Max(r => r.Tokens) : 0;

        foreach (string loss in Losses)
        {
            // the best learning rate of each (size, tokens, ratio) cell for this loss
            var cells = grid.GroupBy(r => (r.Size, r.Tokens, r.Ratio)).Select(g => g.MinBy(r => r.Loss(loss))!).OrderBy(r => r.Id, StringComparer.Ordinal).ToList();
            var atRef = cells.Where(r => r.Ratio == rRef).ToList();
            var lastBudget = atRef.Where(r => r.Tokens == maxTokens).ToList();

            Add(new ComputeLaw(ScalingLaw.GeometricMean(lastBudget.Select(r => r.TotalFlops).DefaultIfEmpty(1))), loss,
                $"grid points at ratio {F(rRef)} and the largest budget ({maxTokens:N0} tokens), one per size; C = training FLOPs (incl. the base's)",
                lastBudget, r => [r.TotalFlops], h => [h.TotalFlops]);
            Add(new ChinchillaLaw(ScalingLaw.GeometricMean(atRef.Select(r => r.N(nKind)).DefaultIfEmpty(1)), ScalingLaw.GeometricMean(atRef.Select(r => (double)r.Tokens).DefaultIfEmpty(1))), loss,
                $"grid points at ratio {F(rRef)}; N = {nKind.Replace('_', '-')} parameters, D = training tokens",
                atRef, r => [r.N(nKind), r.Tokens], h => [h.N(nKind), h.Tokens]);
            Add(new DcptLaw(ScalingLaw.GeometricMean(cells.Select(r => r.N(nKind)).DefaultIfEmpty(1)), ScalingLaw.GeometricMean(cells.Select(r => (double)r.Tokens).DefaultIfEmpty(1))), loss,
                $"every grid point; r = {(loss == "domain" ? "the domain ratio" : "1 − the domain ratio (the general share)")}",
                cells, r => [r.N(nKind), r.Tokens, Share(loss, r.Ratio)], h => [h.N(nKind), h.Tokens, Share(loss, h.Ratio)]);
        }

        void Add(ScalingLaw law, string loss, string data, List<PointResult> pts, Func<PointResult, double[]> x, Func<PointResult, double[]> hx)
        {
            LawFit fit;
            try { fit = LawFit.Fit(law, pts.Select(x).ToList(), pts.Select(r => r.Loss(loss)).ToList(), o); }
            catch (ArgumentException e)
            {
                fits.Add(new FitReport { Law = law.Name, Loss = loss, Formula = law.Formula, Data = data, Points = pts.Select(r => r.Id).ToList(), Skipped = e.Message });
                notes.Add($"{law.Name} ({loss} loss) not fitted: {e.Message}");
                return;
            }
            fitted[(law.Name, loss)] = fit;
            fits.Add(new FitReport
            {
                Law = law.Name,
                Loss = loss,
                Formula = law.Formula,
                Data = data,
                Points = pts.Select(r => r.Id).ToList(),
                Parameters = fit.ParameterIntervals().ToDictionary(kv => kv.Key, kv => Interval.Of(kv.Value)),
                RmsLogResidual = fit.RmsLogResidual,
                Converged = fit.Converged,
                Starts = fit.Starts,
            });
            if (holdout != null) validation.Add(Compare(law.Name, loss, fit.Predict(hx(holdout)), holdout.Loss(loss)));
        }

        // curves for plots: L(C) over compute (to the holdout's and beyond), D-CPT over the ratio at the holdout's N and D
        foreach (string loss in Losses)
        {
            if (fitted.TryGetValue(("compute", loss), out var cf))
            {
                double lo = cf.X.Min(x => x[0]) / 2, hi = Math.Max(cf.X.Max(x => x[0]), holdout?.TotalFlops ?? 0) * 4;
                curves.Add(new CurveReport("compute", loss, "flops", $"L(C), {loss}", Enumerable.Range(0, 41).Select(i => lo * Math.Pow(hi / lo, i / 40.0))
                    .Select(c => Row(c, cf.Predict(c))).ToList()));
            }
            if (fitted.TryGetValue(("dcpt", loss), out var df) && holdout != null)
                curves.Add(new CurveReport("dcpt", loss, "ratio", $"D-CPT {loss} at the holdout's N and D", RatioAxis(cfg)
                    .Select(r => Row(r, df.Predict(holdout.N(nKind), holdout.Tokens, Share(loss, r)))).ToList()));
        }

        // the target beyond the ladder
        var target = new List<PredictionReport>();
        var shape = cfg.TargetShape(vocab);
        double tN = 0, tD = cfg.Target.Tokens;
        if (shape != null)
        {
            tN = nKind == "total" ? shape.ParameterCount() : shape.NonEmbeddingParameterCount();
            double tC = shape.TrainingFlopsPerToken(cfg.Target.SeqLen > 0 ? cfg.Target.SeqLen : cfg.Train.SeqLen) * tD;
            foreach (var ((law, loss), fit) in fitted.OrderBy(k => k.Key.Law, StringComparer.Ordinal).ThenBy(k => k.Key.Loss, StringComparer.Ordinal))
                target.Add(Compare(law, loss, law switch
                {
                    "compute" => fit.Predict(tC),
                    "chinchilla" => fit.Predict(tN, tD),
                    _ => fit.Predict(tN, tD, Share(loss, rRef)),
                }, null));
            if (cfg.Ladder.Init == "base" && fitted.ContainsKey(("compute", "general")))
                notes.Add("target: L(C) counts the base's FLOPs in the ladder but only the target's own training in its prediction");
        }

        var splits = new List<SplitReport>();
        if (cfg.Target.ComputeBudget > 0)
            foreach (string loss in Losses)
                if (fitted.TryGetValue(("chinchilla", loss), out var ch))
                    splits.Add(new SplitReport(loss, cfg.Target.ComputeBudget,
                        Interval.Of(ch.Derived(p => ChinchillaLaw.ComputeOptimal(p, cfg.Target.ComputeBudget).N)),
                        Interval.Of(ch.Derived(p => ChinchillaLaw.ComputeOptimal(p, cfg.Target.ComputeBudget).D))));

        RatioReport? ratio = null;
        if (fitted.TryGetValue(("dcpt", "general"), out var gFit) && fitted.TryGetValue(("dcpt", "domain"), out var dFit))
        {
            if (shape != null) ratio = ChooseRatio(cfg, gFit, dFit, $"target {cfg.Target.Name}", tN, tD, null, results, notes);
            else if (holdout != null) ratio = ChooseRatio(cfg, gFit, dFit, $"holdout {holdout.Id}", holdout.N(nKind), holdout.Tokens, holdout.Size, results, notes);
        }

        var (hs, ht, hr) = cfg.Holdout;
        return new LadderSummary
        {
            Name = cfg.Name,
            Date = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
            Commit = Bench.MachineInfo.GitCommit(),
            Machine = $"{Bench.MachineInfo.CpuModel()} ({Environment.ProcessorCount} cores)",
            Init = cfg.Ladder.Init,
            ReferenceRatio = rRef,
            Level = o.Level,
            ParameterCount = nKind,
            Holdout = $"{hs} at {ht:N0} tokens, ratio {F(hr)}",
            Points = results.OrderBy(r => r.Kind == "base" ? 0 : r.Kind == "grid" ? 1 : 2).ThenBy(r => r.Id, StringComparer.Ordinal).ToList(),
            Fits = fits,
            Validation = validation,
            TargetName = shape != null ? cfg.Target.Name : null,
            Target = target,
            ComputeOptimal = splits,
            Ratio = ratio,
            Curves = curves,
            Notes = notes,
        };
    }

    static double[] Row(double x, Prediction p) => [x, p.Value, p.Curve.Low, p.Curve.High, p.Observation.Low, p.Observation.High];

    /// <summary>The r the D-CPT law of <paramref name="loss"/> reads for a domain ratio.</summary>
    public static double Share(string loss, double domainRatio) => loss == "domain" ? domainRatio : 1 - domainRatio;

    static IEnumerable<double> RatioAxis(LadderConfig cfg)
    {
        double lo = cfg.Ladder.Ratios.Min(), hi = cfg.Ladder.Ratios.Max();
        return Enumerable.Range(0, 41).Select(i => lo + (hi - lo) * i / 40.0);
    }

    static PredictionReport Compare(string law, string loss, Prediction p, double? observed) => new()
    {
        Law = law,
        Loss = loss,
        Predicted = p.Value,
        Curve = Interval.Of(p.Curve),
        Observation = Interval.Of(p.Observation),
        Observed = observed,
        RelativeError = observed is { } y ? (p.Value - y) / y : null,
        Inside = observed is { } v ? p.Observation.Contains(v) : null,
    };

    /// <summary>The domain ratio r* in [min, max of the grid's ratios] minimising the D-CPT domain loss at (N, D) with the
    /// general loss at most (1 + tolerance) × the base's; NaN when no ratio is feasible.</summary>
    public static double OptimalRatio(Func<double, double> general, Func<double, double> domain, double limit, double lo, double hi)
    {
        const int Steps = 400;
        double best = double.NaN, bestLoss = double.PositiveInfinity;
        for (int i = 0; i <= Steps; i++)
        {
            double r = lo + (hi - lo) * i / Steps;
            if (!(general(r) <= limit)) continue;
            double d = domain(r);
            if (d < bestLoss) { bestLoss = d; best = r; }
        }
        return best;
    }

    static RatioReport ChooseRatio(LadderConfig cfg, LawFit g, LawFit d, string at, double n, double tokens, string? size, IReadOnlyList<PointResult> results, List<string> notes)
    {
        double lo = cfg.Ladder.Ratios.Min(), hi = cfg.Ladder.Ratios.Max(), tol = cfg.Forgetting.Tolerance;
        // the base model's general loss: stated, measured (the ladder's base of that size), or — from scratch — the
        // general law with no domain data at all
        double? measured = size != null ? results.FirstOrDefault(r => r.Kind == "base" && r.Size == size)?.GeneralLoss : null;
        Func<double[], double> baseLoss;
        string source;
        if (cfg.Forgetting.BaseGeneralLoss is { } stated) { baseLoss = _ => stated; source = "forgetting.base_general_loss"; }
        else if (measured is { } m) { baseLoss = _ => m; source = $"measured: base_{size}"; }
        else if (cfg.Ladder.Init == "scratch") { baseLoss = th => g.Law.Loss(th, [n, tokens, 1.0]); source = "D-CPT general law at domain ratio 0 (a general-only run of the same size and budget)"; }
        else
        {
            notes.Add($"ratio at {at}: no base general loss (set forgetting.base_general_loss to the base model's measured general loss)");
            return new RatioReport { At = at, N = n, Tokens = tokens, Tolerance = tol, RatioLow = lo, RatioHigh = hi, Note = "no base general loss" };
        }
        double Solve(double[] thG, double[] thD, double budget) => OptimalRatio(
            r => g.Law.Loss(thG, [n, budget, 1 - r]), r => d.Law.Loss(thD, [n, budget, r]), (1 + tol) * baseLoss(thG), lo, hi);
        double rStar = Solve(g.Theta, d.Theta, tokens);
        var reps = Enumerable.Range(0, Math.Min(g.Replicates.Count, d.Replicates.Count))
            .Select(b => Solve(g.Replicates[b], d.Replicates[b], tokens)).Where(double.IsFinite).OrderBy(v => v).ToArray();
        double tail = (1 - cfg.Fit.Level) / 2;
        int infeasible = Math.Min(g.Replicates.Count, d.Replicates.Count) - reps.Length;
        string note = infeasible > 0 ? $"{infeasible} bootstrap replicate(s) had no feasible ratio" : "";
        var common = new RatioReport
        {
            At = at,
            N = n,
            Tokens = tokens,
            BaseGeneralLoss = baseLoss(g.Theta),
            BaseGeneralLossSource = source,
            Tolerance = tol,
            RatioLow = lo,
            RatioHigh = hi,
        };
        if (!double.IsFinite(rStar))
            return common with { Note = $"no ratio in [{F(lo)}, {F(hi)}] keeps the general loss within {tol:P1} of the base's {baseLoss(g.Theta):F4}" };
        var interval = reps.Length > 0 ? new Interval(rStar, LawFit.Quantile(reps, tail), LawFit.Quantile(reps, 1 - tail)) : new Interval(rStar, double.NaN, double.NaN);
        // the ramp: from the ratio that would be optimal were the run to stop at ramp_start_fraction of its budget to r*
        double rStart = Solve(g.Theta, d.Theta, tokens * cfg.Forgetting.RampStartFraction);
        if (!double.IsFinite(rStart) || rStart > rStar) rStart = rStar;
        double mean = (rStart + rStar) / 2;
        var ramp = new RampReport
        {
            StartRatio = rStart,
            EndRatio = rStar,
            RampTokens = (long)tokens,
            Weights = Round(cfg.Weights(rStart)),
            EndWeights = Round(cfg.Weights(rStar)),
            MeanRatio = mean,
            DomainLossAtMean = d.Law.Loss(d.Theta, [n, tokens, mean]),
            GeneralLossAtMean = g.Law.Loss(g.Theta, [n, tokens, 1 - mean]),
        };
        ramp = ramp with { Toml = RampToml(ramp, at) };
        return common with
        {
            Ratio = interval,
            DomainLoss = d.Law.Loss(d.Theta, [n, tokens, rStar]),
            GeneralLoss = g.Law.Loss(g.Theta, [n, tokens, 1 - rStar]),
            Note = note,
            Ramp = ramp,
        };
    }

    static Dictionary<string, double> Round(Dictionary<string, double> w) => w.ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 4), StringComparer.Ordinal);

    /// <summary>A recipe stage's mixture keys for the ramp (constant weights when the ramp is flat).</summary>
    static string RampToml(RampReport r, string at)
    {
        static string Table(Dictionary<string, double> w) => "{ " + string.Join(", ", w.OrderBy(k => k.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key} = {F(kv.Value)}")) + " }";
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"# domain ratio {F(r.StartRatio)} → {F(r.EndRatio)} over {r.RampTokens:N0} tokens (engine ladder, {at})");
        sb.AppendLine($"weights = {Table(r.Weights)}");
        if (r.StartRatio < r.EndRatio)
        {
            sb.AppendLine($"end_weights = {Table(r.EndWeights)}");
            sb.AppendLine(CultureInfo.InvariantCulture, $"ramp_tokens = {r.RampTokens}");
        }
        return sb.ToString();
    }

    static string F(double v) => v.ToString("0.####", CultureInfo.InvariantCulture);
}
