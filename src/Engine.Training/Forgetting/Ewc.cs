using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;

namespace Engine.Training.Forgetting;

/// <summary>
/// Elastic weight consolidation (Kirkpatrick et al. 2017) with a diagonal Fisher: the anchor θ* is the base model,
/// F_i the mean over batches of the squared gradient of the base model's loss on general data (empirical Fisher).
/// Penalty λ/2 Σ F_i (θ_i − θ*_i)², gradient λ F_i (θ_i − θ*_i), added after backward and before clipping.
/// </summary>
public sealed class Ewc : IDisposable
{
    readonly Dictionary<string, (Tensor Anchor, Tensor Fisher)> terms;

    Ewc(Dictionary<string, (Tensor, Tensor)> terms, float lambda)
    {
        this.terms = terms;
        Lambda = lambda;
    }

    public float Lambda { get; }

    /// <summary>Builds the anchor and Fisher from the current weights of model and batches of (ids, targets).</summary>
    public static Ewc Estimate(LlamaModel model, IEnumerable<(int[] Ids, int[] Targets)> batches, int batch, int seqLen, float lambda)
    {
        var be = model.Backend;
        var fisher = new Dictionary<string, (Tensor, Tensor)>(StringComparer.Ordinal);
        foreach (var (name, p) in model.Parameters)
        {
            var anchor = be.Empty(p.Shape).Keep();
            be.Copy(p, anchor);
            fisher[name] = (anchor, be.Zeros(p.Shape).Keep());
        }
        int count = 0;
        foreach (var (ids, tg) in batches)
        {
            model.ZeroGrad();
            using (var scope = new TensorScope())
            {
                var idT = be.Empty([ids.Length], DType.I32);
                var tgT = be.Empty([tg.Length], DType.I32);
                be.Upload(idT, ids);
                be.Upload(tgT, tg);
                int valid = tg.Count(t => t != -100);
                Grad.Backward(model.Loss(idT, tgT, batch, seqLen, Math.Max(1, valid)).Loss);
            }
            foreach (var (name, p) in model.Parameters)
                if (p.Grad != null) be.AddSquare(fisher[name].Item2, p.Grad);
            count++;
        }
        if (count == 0) throw new ArgumentException("EWC needs at least one batch to estimate the Fisher information");
        foreach (var (_, f) in fisher.Values) be.Scale(f, 1f / count);
        model.ZeroGrad();
        return new Ewc(fisher, lambda);
    }

    /// <summary>Builds EWC from given anchors and Fisher diagonals (tests, loading).</summary>
    public static Ewc FromTensors(IBackend be, IEnumerable<(string Name, float[] Anchor, float[] Fisher, int[] Shape)> items, float lambda)
    {
        var d = new Dictionary<string, (Tensor, Tensor)>(StringComparer.Ordinal);
        foreach (var (name, a, f, shape) in items)
        {
            var at = be.Empty(shape).Keep(); be.Upload(at, a);
            var ft = be.Empty(shape).Keep(); be.Upload(ft, f);
            d[name] = (at, ft);
        }
        return new Ewc(d, lambda);
    }

    /// <summary>Adds λF(θ−θ*) to every trainable parameter's gradient; returns the penalty value.</summary>
    public double Apply(LlamaModel model)
    {
        double penalty = 0;
        foreach (var (name, p) in model.Parameters)
        {
            if (p.Frozen || !terms.TryGetValue(name, out var t)) continue;
            if (t.Anchor.Numel != p.Numel) continue; // resized by vocabulary expansion: no anchor for new rows
            penalty += p.Backend.Ewc(p, t.Anchor, t.Fisher, Grad.GradBuffer(p), Lambda);
        }
        return penalty;
    }

    public void Dispose()
    {
        foreach (var (a, f) in terms.Values) { a.Dispose(); f.Dispose(); }
        terms.Clear();
    }
}
