namespace Engine.Training.Scaling;

/*
 * The laws, each written as log L = LSE(t_0, t_1, …): the log of a sum of positive terms, every term an exponential
 * of parameters that are free reals (Besiroglu et al. 2024's parameterization of Hoffmann et al. 2022), and the
 * residuals are in log-loss (a 1 % error weighs the same at loss 2 and loss 6). The exponents are fitted through their
 * logs (α = e^φ, …): each stays positive, so a term can flatten out (α → 0) but never turn round and grow with scale —
 * unconstrained, a ladder whose sizes barely differ in loss fitted α = −41 with A → 0, and its prediction for a larger
 * model was 10^16.
 *
 *   compute (Baichuan 2):  L(C)       = a·C^b + L∞                         θ = (l, a', ln −b):  t = l, a' + b·ln(C/C₀)
 *   chinchilla:            L(N, D)    = E + A/N^α + B/D^β                   θ = (e, a, ln α, b, ln β)
 *   D-CPT (Que et al.):    L(N, D, r) = E + A/N^α + B·r^η/D^β + C/(r+ε)^γ   θ = (e, a, ln α, b, ln η, ln β, c, ln γ, s), ε = e^s
 *
 * Inputs are divided by reference scales (C₀, N₀, D₀: the geometric means of the fitted points) so one grid of
 * starting points suits every ladder; the reported parameters are converted back to raw units (A = e^a·N₀^α, …).
 * r in D-CPT is the share of the mixture that the modelled loss is about: the domain ratio for the domain loss, one
 * minus it for the general loss. At r = 0 the B·r^η term is 0 (η > 0 is assumed, as in the paper's fits).
 */

/// <summary>A loss law fitted in log space: its log-loss at an input and the gradient over its free parameters θ.</summary>
public abstract class ScalingLaw
{
    /// <summary>Short name used in files and reports ("compute", "chinchilla", "dcpt").</summary>
    public abstract string Name { get; }
    /// <summary>The law as a formula in the reported parameters' names.</summary>
    public abstract string Formula { get; }
    /// <summary>Names of the inputs, in the order <see cref="LogLoss"/> reads them.</summary>
    public abstract string[] Inputs { get; }
    /// <summary>Names of θ's entries (the free parameters L-BFGS moves).</summary>
    public abstract string[] Free { get; }

    /// <summary>ln L at <paramref name="x"/>; <paramref name="grad"/> (length <see cref="Free"/>) receives ∂ ln L/∂θ
    /// when it is not empty.</summary>
    public abstract double LogLoss(ReadOnlySpan<double> theta, ReadOnlySpan<double> x, Span<double> grad);

    /// <summary>The starting points of the fit (a grid over θ, as Hoffmann et al. and Besiroglu et al. do).</summary>
    public abstract IReadOnlyList<double[]> Starts(double minLoss);

    /// <summary>θ in the paper's parameters and raw units (E, A, α, …).</summary>
    public abstract IReadOnlyDictionary<string, double> Reported(ReadOnlySpan<double> theta);

    public double Loss(ReadOnlySpan<double> theta, ReadOnlySpan<double> x) => Math.Exp(LogLoss(theta, x, []));

    /// <summary>log-sum-exp of <paramref name="t"/>; <paramref name="w"/> gets the softmax weights (each term's share of L).</summary>
    protected static double Lse(ReadOnlySpan<double> t, Span<double> w)
    {
        double m = double.NegativeInfinity;
        foreach (double v in t) m = Math.Max(m, v);
        double s = 0;
        for (int i = 0; i < t.Length; i++) s += w[i] = Math.Exp(t[i] - m);
        for (int i = 0; i < t.Length; i++) w[i] /= s;
        return m + Math.Log(s);
    }

    /// <summary>The cartesian product of per-parameter value lists, one array per combination.</summary>
    protected static List<double[]> Grid(params double[][] axes)
    {
        var result = new List<double[]> { Array.Empty<double>() };
        foreach (var axis in axes)
            result = result.SelectMany(p => axis.Select(v => p.Append(v).ToArray())).ToList();
        return result;
    }

    /// <summary>ln of the values (grid axes of amplitudes are easier to read as the amplitudes themselves).</summary>
    protected static double[] Ln(params double[] v) => v.Select(x => Math.Log(x)).ToArray();

    /// <summary>Geometric mean: the reference scale of an input.</summary>
    public static double GeometricMean(IEnumerable<double> values)
    {
        double s = 0; int n = 0;
        foreach (double v in values)
        {
            if (!(v > 0)) throw new ArgumentException($"a scaling input must be positive (got {v})");
            s += Math.Log(v); n++;
        }
        return n == 0 ? 1 : Math.Exp(s / n);
    }
}

/// <summary>Baichuan 2's loss against training compute: L(C) = a·C^b + L∞ (b &lt; 0 when loss falls with compute).</summary>
public sealed class ComputeLaw(double c0) : ScalingLaw
{
    public double C0 { get; } = c0;
    public override string Name => "compute";
    public override string Formula => "L(C) = a·C^b + L_inf";
    public override string[] Inputs => ["C"];
    /// <summary>θ = (ln L∞, a', ln −b).</summary>
    public override string[] Free => ["l", "a", "b"];

    public override double LogLoss(ReadOnlySpan<double> th, ReadOnlySpan<double> x, Span<double> grad)
    {
        double w = Math.Log(x[0] / C0), b = Math.Exp(th[2]);
        Span<double> t = [th[0], th[1] - b * w];
        Span<double> s = stackalloc double[2];
        double y = Lse(t, s);
        if (!grad.IsEmpty) { grad[0] = s[0]; grad[1] = s[1]; grad[2] = -w * b * s[1]; }
        return y;
    }

    public override IReadOnlyList<double[]> Starts(double minLoss) =>
        Grid(Ln(0.3 * minLoss, 0.6 * minLoss, 0.85 * minLoss, 0.97 * minLoss), Ln(0.02, 0.1, 0.3, 1, 3), Ln(0.02, 0.05, 0.1, 0.2, 0.4, 0.8));

    public override IReadOnlyDictionary<string, double> Reported(ReadOnlySpan<double> th) => new Dictionary<string, double>
    {
        ["a"] = Math.Exp(th[1] + Math.Exp(th[2]) * Math.Log(C0)),
        ["b"] = -Math.Exp(th[2]),
        ["L_inf"] = Math.Exp(th[0]),
    };
}

/// <summary>Hoffmann et al. 2022's L(N, D) = E + A/N^α + B/D^β.</summary>
public sealed class ChinchillaLaw(double n0, double d0) : ScalingLaw
{
    public double N0 { get; } = n0;
    public double D0 { get; } = d0;
    public override string Name => "chinchilla";
    public override string Formula => "L(N, D) = E + A/N^alpha + B/D^beta";
    public override string[] Inputs => ["N", "D"];
    public override string[] Free => ["e", "a", "alpha", "b", "beta"];

    public override double LogLoss(ReadOnlySpan<double> th, ReadOnlySpan<double> x, Span<double> grad)
    {
        double u = Math.Log(x[0] / N0), v = Math.Log(x[1] / D0), alpha = Math.Exp(th[2]), beta = Math.Exp(th[4]);
        Span<double> t = [th[0], th[1] - alpha * u, th[3] - beta * v];
        Span<double> s = stackalloc double[3];
        double y = Lse(t, s);
        if (!grad.IsEmpty)
        {
            grad[0] = s[0];
            grad[1] = s[1]; grad[2] = -u * alpha * s[1];
            grad[3] = s[2]; grad[4] = -v * beta * s[2];
        }
        return y;
    }

    public override IReadOnlyList<double[]> Starts(double minLoss) =>
        Grid(Ln(0.3 * minLoss, 0.6 * minLoss, 0.85 * minLoss, 0.97 * minLoss), Ln(0.03, 0.2, 1), Ln(0.1, 0.3, 0.6, 1.2),
            Ln(0.03, 0.2, 1), Ln(0.1, 0.3, 0.6, 1.2));

    public override IReadOnlyDictionary<string, double> Reported(ReadOnlySpan<double> th) => new Dictionary<string, double>
    {
        ["E"] = Math.Exp(th[0]),
        ["A"] = Math.Exp(th[1] + Math.Exp(th[2]) * Math.Log(N0)),
        ["alpha"] = Math.Exp(th[2]),
        ["B"] = Math.Exp(th[3] + Math.Exp(th[4]) * Math.Log(D0)),
        ["beta"] = Math.Exp(th[4]),
    };

    /// <summary>Hoffmann et al.'s closed form under C = 6·N·D: N_opt = G·(C/6)^(β/(α+β)), D_opt = (C/6)/N_opt,
    /// G = (αA/(βB))^(1/(α+β)).</summary>
    public static (double N, double D) ComputeOptimal(IReadOnlyDictionary<string, double> p, double flops)
    {
        double alpha = p["alpha"], beta = p["beta"];
        if (!(alpha > 0) || !(beta > 0)) return (double.NaN, double.NaN);
        double g = Math.Pow(alpha * p["A"] / (beta * p["B"]), 1 / (alpha + beta));
        double n = g * Math.Pow(flops / 6, beta / (alpha + beta));
        return (n, flops / 6 / n);
    }
}

/// <summary>Que et al. 2024's D-CPT law: L(N, D, r) = E + A/N^α + B·r^η/D^β + C/(r+ε)^γ, r the share of the
/// mixture the loss is measured on (see the file's header).</summary>
public sealed class DcptLaw(double n0, double d0) : ScalingLaw
{
    public double N0 { get; } = n0;
    public double D0 { get; } = d0;
    public override string Name => "dcpt";
    public override string Formula => "L(N, D, r) = E + A/N^alpha + B·r^eta/D^beta + C/(r+epsilon)^gamma";
    public override string[] Inputs => ["N", "D", "r"];
    public override string[] Free => ["e", "a", "alpha", "b", "eta", "beta", "c", "gamma", "s"];

    public override double LogLoss(ReadOnlySpan<double> th, ReadOnlySpan<double> x, Span<double> grad)
    {
        double u = Math.Log(x[0] / N0), v = Math.Log(x[1] / D0), r = x[2];
        double eps = Math.Exp(th[8]), lr = r > 0 ? Math.Log(r) : 0, lre = Math.Log(r + eps);
        double alpha = Math.Exp(th[2]), eta = Math.Exp(th[4]), beta = Math.Exp(th[5]), gamma = Math.Exp(th[7]);
        Span<double> t = [th[0], th[1] - alpha * u, r > 0 ? th[3] + eta * lr - beta * v : double.NegativeInfinity, th[6] - gamma * lre];
        Span<double> s = stackalloc double[4];
        double y = Lse(t, s);
        if (!grad.IsEmpty)
        {
            grad[0] = s[0];
            grad[1] = s[1]; grad[2] = -u * alpha * s[1];
            grad[3] = s[2]; grad[4] = lr * eta * s[2]; grad[5] = -v * beta * s[2];
            grad[6] = s[3]; grad[7] = -lre * gamma * s[3]; grad[8] = -gamma * eps / (r + eps) * s[3];
        }
        return y;
    }

    public override IReadOnlyList<double[]> Starts(double minLoss) =>
        Grid(Ln(0.4 * minLoss, 0.8 * minLoss), Ln(0.05, 0.5), Ln(0.2, 0.8), Ln(0.05, 0.5), Ln(0.3, 1.0), Ln(0.2, 0.8),
            Ln(0.02, 0.2), Ln(0.3, 1.0), Ln(0.01, 0.1));

    public override IReadOnlyDictionary<string, double> Reported(ReadOnlySpan<double> th) => new Dictionary<string, double>
    {
        ["E"] = Math.Exp(th[0]),
        ["A"] = Math.Exp(th[1] + Math.Exp(th[2]) * Math.Log(N0)),
        ["alpha"] = Math.Exp(th[2]),
        ["B"] = Math.Exp(th[3] + Math.Exp(th[5]) * Math.Log(D0)),
        ["eta"] = Math.Exp(th[4]),
        ["beta"] = Math.Exp(th[5]),
        ["C"] = Math.Exp(th[6]),
        ["gamma"] = Math.Exp(th[7]),
        ["epsilon"] = Math.Exp(th[8]),
    };
}
