using Engine.Core;
using Engine.Model;

namespace Engine.Training;

/// <summary>AdamW settings; defaults are the seeds' pretraining values (β = 0.9/0.95, wd 0.1, clip 1.0).</summary>
public sealed record AdamWOptions
{
    public double Lr { get; init; } = 1.2e-4;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;
    public double Eps { get; init; } = 1e-8;
    public double WeightDecay { get; init; } = 0.1;
    /// <summary>Global gradient-norm clip; 0 disables clipping.</summary>
    public double ClipNorm { get; init; } = 1.0;
    /// <summary>Skip weight decay on 1-D parameters (norm weights), as Megatron and TorchTitan do.</summary>
    public bool NoDecayOnNorms { get; init; } = true;
}

/// <summary>
/// AdamW with fp32 state over a model's parameters, global-norm clipping folded into the update as a gradient
/// scale, and frozen parameters skipped (stage-1 vocabulary training).
/// </summary>
public sealed class AdamW : IDisposable
{
    readonly LlamaModel model;
    readonly Dictionary<string, (Tensor M, Tensor V)> state = new(StringComparer.Ordinal);

    public AdamW(LlamaModel model, AdamWOptions options)
    {
        this.model = model;
        Options = options;
    }

    public AdamWOptions Options { get; }
    public int Step { get; private set; }

    /// <summary>sqrt(sum of squared gradients) over trainable parameters.</summary>
    public double GradNorm()
    {
        double ss = 0;
        foreach (var (_, p) in model.Parameters)
            if (!p.Frozen && p.Grad != null) ss += p.Backend.SumOfSquares(p.Grad);
        return Math.Sqrt(ss);
    }

    /// <summary>Clips by global norm and applies one AdamW update at learning rate lr. Returns the pre-clip norm.</summary>
    public double Update(double lr)
    {
        using var prof = Profiler.Time("adamw");
        double norm = GradNorm();
        if (!double.IsFinite(norm)) throw new InvalidOperationException($"gradient norm is {norm} at step {Step + 1}: refusing to update the weights");
        float scale = Options.ClipNorm > 0 && norm > Options.ClipNorm ? (float)(Options.ClipNorm / (norm + 1e-6)) : 1f;
        Step++;
        foreach (var (name, p) in model.Parameters)
        {
            if (p.Frozen || p.Grad == null) continue;
            if (!state.TryGetValue(name, out var s))
            {
                s = (p.Backend.Zeros(p.Shape).Keep(), p.Backend.Zeros(p.Shape).Keep());
                state[name] = s;
            }
            // after a vocabulary resize the state no longer matches: restart it for that tensor
            if (s.M.Numel != p.Numel)
            {
                s.M.Dispose(); s.V.Dispose();
                s = (p.Backend.Zeros(p.Shape).Keep(), p.Backend.Zeros(p.Shape).Keep());
                state[name] = s;
            }
            float wd = Options.NoDecayOnNorms && p.Rank == 1 ? 0f : (float)Options.WeightDecay;
            p.Backend.AdamW(p, p.Grad, s.M, s.V, new AdamWStep((float)lr, (float)Options.Beta1, (float)Options.Beta2, (float)Options.Eps, wd, Step, scale));
        }
        return norm;
    }

    /// <summary>Optimizer state for checkpoints: (name, m, v) on the host.</summary>
    public IEnumerable<(string Name, float[] M, float[] V)> ExportState() =>
        state.Select(kv => (kv.Key, kv.Value.M.ToArray(), kv.Value.V.ToArray()));

    public void ImportState(int step, IEnumerable<(string Name, float[] M, float[] V)> entries)
    {
        Step = step;
        foreach (var (name, m, v) in entries)
        {
            var p = model[name];
            var mt = p.Backend.Empty(p.Shape).Keep();
            var vt = p.Backend.Empty(p.Shape).Keep();
            p.Backend.Upload(mt, m);
            p.Backend.Upload(vt, v);
            state[name] = (mt, vt);
        }
    }

    public void Dispose()
    {
        foreach (var (m, v) in state.Values) { m.Dispose(); v.Dispose(); }
        state.Clear();
    }
}

/// <summary>Learning-rate schedules.</summary>
public enum ScheduleKind { Cosine, Constant, Linear }

public sealed record ScheduleOptions
{
    public ScheduleKind Kind { get; init; } = ScheduleKind.Cosine;
    public int WarmupSteps { get; init; }
    /// <summary>Floor of the cosine/linear decay (the seeds: 1.2e-4 → 1e-5).</summary>
    public double MinLr { get; init; } = 1e-5;
}

public static class Schedule
{
    /// <summary>lr at step (0-based) of total: linear warmup, then cosine or linear decay to minLr, or constant.</summary>
    public static double LearningRate(ScheduleOptions s, double peak, int step, int total)
    {
        if (s.WarmupSteps > 0 && step < s.WarmupSteps) return peak * (step + 1) / s.WarmupSteps;
        if (s.Kind == ScheduleKind.Constant) return peak;
        int decay = Math.Max(1, total - s.WarmupSteps);
        double progress = Math.Clamp((double)(step - s.WarmupSteps) / decay, 0, 1);
        double factor = s.Kind == ScheduleKind.Cosine ? 0.5 * (1 + Math.Cos(Math.PI * progress)) : 1 - progress;
        return s.MinLr + (peak - s.MinLr) * factor;
    }
}
