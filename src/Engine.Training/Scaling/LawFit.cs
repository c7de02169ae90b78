using Engine.Core;
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.Optimization;

namespace Engine.Training.Scaling;

/// <summary>How a fit resamples for its intervals: residuals (the design kept, log residuals of the fit redrawn — the
/// default for a ladder of tens of points, where dropping points can leave a law unidentified) or cases (points drawn
/// with replacement, Besiroglu et al.'s bootstrap).</summary>
public enum Resampling { Residuals, Cases }

public sealed record FitOptions
{
    /// <summary>Huber δ on log-loss residuals (Hoffmann et al. and Besiroglu et al. use 1e-3).</summary>
    public double HuberDelta { get; init; } = 1e-3;
    /// <summary>Bootstrap replicates (0 = no intervals).</summary>
    public int Bootstrap { get; init; } = 200;
    public Resampling Resampling { get; init; } = Resampling.Residuals;
    /// <summary>Central coverage of the reported intervals (0.9 = the 5th to 95th percentile).</summary>
    public double Level { get; init; } = 0.9;
    public ulong Seed { get; init; } = 1;
    public int MaxIterations { get; init; } = 1000;
    /// <summary>Starting points of each bootstrap refit: the full fit's optimum and the next best grid results.</summary>
    public int BootstrapStarts { get; init; } = 4;
}

/// <summary>A value with its bootstrap interval (percentiles of the replicates; NaN bounds without a bootstrap).</summary>
public sealed record Estimate(double Value, double Low, double High)
{
    public bool Contains(double v) => v >= Low && v <= High;
}

/// <summary>A prediction: the fitted value, the interval of the fitted curve (confidence) and the interval of a new
/// observation (prediction: the curve's replicates times a redrawn log residual).</summary>
public sealed record Prediction(double Value, Estimate Curve, Estimate Observation);

/// <summary>
/// A law fitted to observed losses: Huber loss on log-loss residuals minimised by L-BFGS from every point of the law's
/// grid of starts (the best kept), then bootstrapped refits for intervals. Inputs are raw (FLOPs, parameters, tokens,
/// ratio); every fit is deterministic for its seed.
/// </summary>
public sealed class LawFit
{
    public ScalingLaw Law { get; }
    public IReadOnlyList<double[]> X { get; }
    public IReadOnlyList<double> Observed { get; }
    public FitOptions Options { get; }
    /// <summary>The best free parameters and the objective there (mean Huber/δ over the points).</summary>
    public double[] Theta { get; }
    public double Objective { get; }
    /// <summary>ln L_observed − ln L_fitted per point.</summary>
    public double[] Residuals { get; }
    /// <summary>Starts whose L-BFGS run ended at a finite objective, of all starts.</summary>
    public int Converged { get; }
    public int Starts { get; }
    /// <summary>Bootstrap replicates of θ, and per replicate one redrawn log residual (for prediction intervals).</summary>
    public IReadOnlyList<double[]> Replicates { get; }
    readonly double[] noise;

    public IReadOnlyDictionary<string, double> Parameters => Law.Reported(Theta);

    /// <summary>Root mean square of the log residuals (≈ relative error of the fitted losses).</summary>
    public double RmsLogResidual => Math.Sqrt(Residuals.Average(r => r * r));

    LawFit(ScalingLaw law, IReadOnlyList<double[]> x, IReadOnlyList<double> y, FitOptions o, double[] theta, double objective,
        int converged, int starts, List<double[]> replicates, double[] noise)
    {
        Law = law; X = x; Observed = y; Options = o; Theta = theta; Objective = objective; Converged = converged; Starts = starts;
        Replicates = replicates; this.noise = noise;
        Residuals = x.Select((xi, i) => Math.Log(y[i]) - law.LogLoss(theta, xi, [])).ToArray();
    }

    /// <summary>Fits <paramref name="law"/> to losses <paramref name="y"/> at inputs <paramref name="x"/>.</summary>
    public static LawFit Fit(ScalingLaw law, IReadOnlyList<double[]> x, IReadOnlyList<double> y, FitOptions? options = null)
    {
        var o = options ?? new FitOptions();
        int p = law.Free.Length;
        if (x.Count != y.Count) throw new ArgumentException($"{law.Name}: {x.Count} inputs but {y.Count} losses");
        if (x.Count < p + 1)
            throw new ArgumentException($"the {law.Name} law has {p} parameters and needs at least {p + 1} points to fit (with one left for the residual); the ladder gives {x.Count}");
        for (int i = 0; i < x.Count; i++)
        {
            if (x[i].Length != law.Inputs.Length) throw new ArgumentException($"{law.Name}: point {i} has {x[i].Length} inputs, the law takes {law.Inputs.Length} ({string.Join(", ", law.Inputs)})");
            if (!(y[i] > 0) || !double.IsFinite(y[i])) throw new ArgumentException($"{law.Name}: loss {y[i]} at point {i} is not a positive finite number");
        }
        if (!(o.HuberDelta > 0) || o.Bootstrap < 0 || o.Level is <= 0 or >= 1)
            throw new ArgumentException("fit: huber_delta must be positive, bootstrap >= 0 and level in (0, 1)");
        var logY = y.Select(v => Math.Log(v)).ToArray();
        var starts = law.Starts(y.Min());
        var results = new (double[] Theta, double Value)[starts.Count];
        System.Threading.Tasks.Parallel.For(0, starts.Count, i => results[i] = Minimize(law, x, logY, o, starts[i]));
        var order = Enumerable.Range(0, starts.Count).Where(i => double.IsFinite(results[i].Value))
            .OrderBy(i => results[i].Value).ThenBy(i => i).ToList();
        if (order.Count == 0) throw new InvalidOperationException($"{law.Name}: no starting point reached a finite objective");
        var best = results[order[0]];

        // bootstrap: refit from the best few full-data optima on resampled data
        var seeds = order.Take(Math.Max(1, o.BootstrapStarts)).Select(i => results[i].Theta).ToList();
        var fitted = x.Select(xi => law.LogLoss(best.Theta, xi, [])).ToArray();
        // residuals inflated by √(n/(n−p)): a fit's own residuals understate the noise by its degrees of freedom
        double inflate = Math.Sqrt((double)x.Count / (x.Count - p));
        var res = logY.Select((v, i) => (v - fitted[i]) * inflate).ToArray();
        var replicates = new double[o.Bootstrap][];
        var noise = new double[o.Bootstrap];
        System.Threading.Tasks.Parallel.For(0, o.Bootstrap, b =>
        {
            var rng = Rng.For(o.Seed, $"{law.Name}.bootstrap.{b}");
            IReadOnlyList<double[]> xb = x;
            double[] yb;
            if (o.Resampling == Resampling.Residuals)
                yb = fitted.Select(f => f + res[rng.NextInt(res.Length)]).ToArray();
            else
            {
                var idx = Enumerable.Range(0, x.Count).Select(_ => rng.NextInt(x.Count)).ToArray();
                xb = idx.Select(i => x[i]).ToArray();
                yb = idx.Select(i => logY[i]).ToArray();
            }
            noise[b] = res[rng.NextInt(res.Length)];
            var fit = seeds.Select(s => Minimize(law, xb, yb, o, s)).Where(r => double.IsFinite(r.Value)).MinBy(r => r.Value);
            replicates[b] = fit.Theta ?? best.Theta;
        });
        return new LawFit(law, x, y, o, best.Theta, best.Value, order.Count, starts.Count, replicates.ToList(), noise);
    }

    /// <summary>The fitted loss at <paramref name="x"/> with the interval of the curve and of a new observation.</summary>
    public Prediction Predict(params double[] x)
    {
        double value = Law.Loss(Theta, x);
        var curve = Replicates.Select(t => Law.Loss(t, x)).ToArray();
        var observation = curve.Select((c, b) => c * Math.Exp(noise[b])).ToArray();
        return new Prediction(value, Interval(value, curve), Interval(value, observation));
    }

    /// <summary>Any quantity of the reported parameters (an optimum, a split) with its bootstrap interval.</summary>
    public Estimate Derived(Func<IReadOnlyDictionary<string, double>, double> f) =>
        Interval(f(Parameters), Replicates.Select(t => f(Law.Reported(t))).ToArray());

    /// <summary>The same for a quantity of the free parameters (what needs <see cref="ScalingLaw.LogLoss"/>).</summary>
    public Estimate DerivedTheta(Func<double[], double> f) => Interval(f(Theta), Replicates.Select(f).ToArray());

    /// <summary>Per reported parameter, its value and interval.</summary>
    public Dictionary<string, Estimate> ParameterIntervals() =>
        Parameters.Keys.ToDictionary(k => k, k => Derived(p => p[k]), StringComparer.Ordinal);

    Estimate Interval(double value, double[] samples)
    {
        var s = samples.Where(double.IsFinite).OrderBy(v => v).ToArray();
        if (s.Length == 0) return new Estimate(value, double.NaN, double.NaN);
        double tail = (1 - Options.Level) / 2;
        return new Estimate(value, Quantile(s, tail), Quantile(s, 1 - tail));
    }

    /// <summary>Linear interpolation between order statistics (numpy's default).</summary>
    public static double Quantile(double[] sorted, double q)
    {
        double pos = q * (sorted.Length - 1);
        int lo = (int)Math.Floor(pos), hi = Math.Min(lo + 1, sorted.Length - 1);
        return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
    }

    /// <summary>One L-BFGS run from <paramref name="start"/> on mean Huber(δ)/δ of the log residuals. A run that stops
    /// on a failed line search (common at the Huber kink near the optimum) keeps the best point it evaluated.</summary>
    static (double[] Theta, double Value) Minimize(ScalingLaw law, IReadOnlyList<double[]> x, double[] logY, FitOptions o, double[] start)
    {
        int p = start.Length;
        double[] bestTheta = (double[])start.Clone();
        double bestValue = double.PositiveInfinity;
        double delta = o.HuberDelta;
        var grad = new double[p];
        (double, Vector<double>) Evaluate(Vector<double> v)
        {
            var th = v.ToArray();
            double f = 0;
            var g = new double[p];
            for (int i = 0; i < x.Count; i++)
            {
                double r = law.LogLoss(th, x[i], grad) - logY[i];
                double a = Math.Abs(r);
                f += a <= delta ? r * r / (2 * delta) : a - delta / 2;
                double psi = Math.Clamp(r / delta, -1, 1);
                for (int k = 0; k < p; k++) g[k] += psi * grad[k];
            }
            f /= x.Count;
            for (int k = 0; k < p; k++) g[k] /= x.Count;
            if (!double.IsFinite(f) || g.Any(v => !double.IsFinite(v))) return (double.MaxValue, Vector<double>.Build.Dense(p));
            if (f < bestValue) { bestValue = f; bestTheta = th; }
            return (f, Vector<double>.Build.DenseOfArray(g));
        }
        try
        {
            var min = new LimitedMemoryBfgsMinimizer(1e-10, 1e-12, 1e-13, 10, o.MaxIterations);
            min.FindMinimum(ObjectiveFunction.Gradient(Evaluate), Vector<double>.Build.DenseOfArray(start));
        }
        catch (Exception e) when (e is MaximumIterationsException or InnerOptimizationException or EvaluationException or MathNet.Numerics.NonConvergenceException) { }
        return (bestTheta, bestValue);
    }
}
