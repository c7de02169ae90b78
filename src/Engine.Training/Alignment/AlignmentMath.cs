namespace Engine.Training.Alignment;

/// <summary>
/// The alignment losses and estimators as plain fp64 functions of small host vectors (one value per sequence or per
/// answer token), each returning its value and its gradient; <see cref="HostOps"/> connects them to the tape.
/// <code>
/// Bradley–Terry    L = mean_i −log σ(r⁺_i − r⁻_i)                      ∂L/∂r⁺_i = −σ(r⁻_i − r⁺_i)/n = −∂L/∂r⁻_i
/// DPO              L = mean_i −log σ(β[(π⁺_i − ρ⁺_i) − (π⁻_i − ρ⁻_i)])  (π, ρ: policy / reference sequence log-probs)
/// KL reward        r_t = −β (log π_old(y_t) − log π_ref(y_t)),  r_T += score   (per answer token; Ziegler et al.)
/// GAE              δ_t = r_t + γ V_{t+1} − V_t,  A_t = δ_t + γλ A_{t+1},  V_{T+1} = 0,  R_t = A_t + V_t
/// PPO policy       ρ_t = exp(log π − log π_old),  L = mean_t max(−A_t ρ_t, −A_t clip(ρ_t, 1 ± ε))
/// PPO value        L = ½ mean_t max((V_t − R_t)², (clip(V_t, V_old ± ε_v) − R_t)²)
/// </code>
/// Means over answer tokens of a mini-batch (TRL's masked_mean); advantages whitened over the batch's answer tokens.
/// </summary>
public static class AlignmentMath
{
    public static double Sigmoid(double x) => x >= 0 ? 1 / (1 + Math.Exp(-x)) : Math.Exp(x) / (1 + Math.Exp(x));

    /// <summary>log σ(x) without overflow.</summary>
    public static double LogSigmoid(double x) => x >= 0 ? -Math.Log(1 + Math.Exp(-x)) : x - Math.Log(1 + Math.Exp(x));

    /// <summary>Pairwise ranking loss over (chosen, rejected) scores; Accuracy = share with chosen &gt; rejected.</summary>
    public static (double Loss, double[] DChosen, double[] DRejected, double Accuracy) BradleyTerry(ReadOnlySpan<double> chosen, ReadOnlySpan<double> rejected)
    {
        int n = chosen.Length;
        if (n == 0 || rejected.Length != n) throw new ArgumentException($"Bradley-Terry needs equally many chosen and rejected scores (got {chosen.Length} and {rejected.Length})");
        var dc = new double[n];
        var dr = new double[n];
        double loss = 0, right = 0;
        for (int i = 0; i < n; i++)
        {
            double m = chosen[i] - rejected[i];
            loss -= LogSigmoid(m);
            double g = -Sigmoid(-m) / n;
            dc[i] = g;
            dr[i] = -g;
            if (m > 0) right++;
        }
        return (loss / n, dc, dr, right / n);
    }

    /// <summary>DPO (Rafailov et al. 2023) over sequence log-probs; gradients with respect to the policy's. Accuracy =
    /// share of pairs whose implicit reward margin is positive; Margin = mean β·margin.</summary>
    public static (double Loss, double[] DChosen, double[] DRejected, double Accuracy, double Margin) Dpo(
        ReadOnlySpan<double> policyChosen, ReadOnlySpan<double> policyRejected, ReadOnlySpan<double> refChosen, ReadOnlySpan<double> refRejected, double beta)
    {
        int n = policyChosen.Length;
        if (n == 0 || policyRejected.Length != n || refChosen.Length != n || refRejected.Length != n)
            throw new ArgumentException("DPO needs equally many policy and reference log-probs for chosen and rejected answers");
        if (!(beta > 0)) throw new ArgumentOutOfRangeException(nameof(beta), $"DPO beta must be positive (got {beta})");
        var dc = new double[n];
        var dr = new double[n];
        double loss = 0, right = 0, margins = 0;
        for (int i = 0; i < n; i++)
        {
            double z = beta * ((policyChosen[i] - refChosen[i]) - (policyRejected[i] - refRejected[i]));
            loss -= LogSigmoid(z);
            double g = -Sigmoid(-z) * beta / n;
            dc[i] = g;
            dr[i] = -g;
            if (z > 0) right++;
            margins += z;
        }
        return (loss / n, dc, dr, right / n, margins / n);
    }

    /// <summary>Per-token rewards of one answer: the KL penalty on every token and the score added on the last.</summary>
    public static double[] KlPenalizedRewards(ReadOnlySpan<double> logProbs, ReadOnlySpan<double> refLogProbs, double score, double beta)
    {
        if (logProbs.Length == 0 || refLogProbs.Length != logProbs.Length) throw new ArgumentException("an answer needs at least one token and a reference log-prob per token");
        var r = new double[logProbs.Length];
        for (int t = 0; t < r.Length; t++) r[t] = -beta * (logProbs[t] - refLogProbs[t]);
        r[^1] += score;
        return r;
    }

    /// <summary>Generalized advantage estimation over one answer (the episode ends after its last token).</summary>
    public static (double[] Advantages, double[] Returns) Gae(ReadOnlySpan<double> rewards, ReadOnlySpan<double> values, double gamma, double lambda)
    {
        int n = rewards.Length;
        if (values.Length != n) throw new ArgumentException($"GAE: {n} rewards but {values.Length} values");
        var adv = new double[n];
        var ret = new double[n];
        double next = 0, last = 0;
        for (int t = n - 1; t >= 0; t--)
        {
            double delta = rewards[t] + gamma * next - values[t];
            last = delta + gamma * lambda * last;
            adv[t] = last;
            ret[t] = last + values[t];
            next = values[t];
        }
        return (adv, ret);
    }

    /// <summary>x ← (x − mean) / (std + 1e-8) (the population std, as TRL's whiten).</summary>
    public static void Whiten(Span<double> x)
    {
        if (x.Length < 2) return;
        double mean = 0;
        foreach (var v in x) mean += v;
        mean /= x.Length;
        double var = 0;
        foreach (var v in x) var += (v - mean) * (v - mean);
        double std = Math.Sqrt(var / x.Length);
        for (int i = 0; i < x.Length; i++) x[i] = (x[i] - mean) / (std + 1e-8);
    }

    /// <summary>The clipped surrogate over answer tokens: loss, ∂loss/∂log π, the share of tokens where the clip was
    /// active, and the approximate KL ½·mean (log π − log π_old)².</summary>
    public static (double Loss, double[] DLogProbs, double ClipFraction, double ApproxKl) PolicyLoss(
        ReadOnlySpan<double> logProbs, ReadOnlySpan<double> oldLogProbs, ReadOnlySpan<double> advantages, double clip)
    {
        int n = logProbs.Length;
        if (n == 0 || oldLogProbs.Length != n || advantages.Length != n) throw new ArgumentException("PPO policy loss needs one old log-prob and one advantage per token");
        var d = new double[n];
        double loss = 0, clipped = 0, kl = 0;
        for (int t = 0; t < n; t++)
        {
            double diff = logProbs[t] - oldLogProbs[t];
            double ratio = Math.Exp(diff), a = advantages[t];
            double c = Math.Clamp(ratio, 1 - clip, 1 + clip);
            double l1 = -a * ratio, l2 = -a * c;
            // max(l1, l2): the unclipped branch carries the gradient unless the clipped one is strictly larger
            if (l2 > l1) { loss += l2; clipped++; }
            else { loss += l1; d[t] = -a * ratio / n; }
            kl += 0.5 * diff * diff;
        }
        return (loss / n, d, clipped / n, kl / n);
    }

    /// <summary>The clipped value loss over answer tokens, its gradient with respect to the values, and the share of
    /// tokens where the clipped term was the larger.</summary>
    public static (double Loss, double[] DValues, double ClipFraction) ValueLoss(
        ReadOnlySpan<double> values, ReadOnlySpan<double> oldValues, ReadOnlySpan<double> returns, double clip)
    {
        int n = values.Length;
        if (n == 0 || oldValues.Length != n || returns.Length != n) throw new ArgumentException("PPO value loss needs one old value and one return per token");
        var d = new double[n];
        double loss = 0, clipped = 0;
        for (int t = 0; t < n; t++)
        {
            double v = values[t];
            double vc = Math.Clamp(v, oldValues[t] - clip, oldValues[t] + clip);
            double e1 = v - returns[t], e2 = vc - returns[t];
            if (e2 * e2 > e1 * e1)
            {
                loss += 0.5 * e2 * e2;
                clipped++;
                // the clipped value moves with v only inside the clip window
                d[t] = vc == v ? e2 / n : 0;
            }
            else { loss += 0.5 * e1 * e1; d[t] = e1 / n; }
        }
        return (loss / n, d, clipped / n);
    }
}

/// <summary>
/// The adaptive KL coefficient of Ziegler et al. (2019), as TRL's AdaptiveKLController: β ← β·(1 + clip(KL/target − 1,
/// ±0.2)·n/horizon) after each batch of n rollouts; a target of 0 keeps β fixed.
/// </summary>
public sealed class AdaptiveKlController(double initial, double target, double horizon)
{
    public double Value { get; private set; } = initial >= 0 ? initial : throw new ArgumentOutOfRangeException(nameof(initial), $"the initial KL coefficient must be >= 0 (got {initial})");
    public double Target { get; } = target;

    public void Update(double kl, int rollouts)
    {
        if (Target <= 0 || horizon <= 0) return;
        double error = Math.Clamp(kl / Target - 1, -0.2, 0.2);
        Value *= 1 + error * rollouts / horizon;
    }
}
