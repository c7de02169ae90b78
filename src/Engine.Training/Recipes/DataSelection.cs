using Engine.Core;
using Engine.Core.Autograd;
using Engine.Data;
using Engine.Model;

namespace Engine.Training.Recipes;

/// <summary>
/// Task-aware data selection in the spirit of FinPythia's ETS-DACP: each candidate document is embedded as the mean
/// final hidden state of the current model over its first tokens, the task set likewise, and documents are ranked by
/// cosine similarity to the task centroid (all embeddings centred on the candidates' mean). The top fraction is kept (optionally ordered as a curriculum).
/// </summary>
public static class DataSelection
{
    public sealed record Result(List<string> Kept, double MeanScoreKept, double MeanScoreAll, int Candidates);

    public static float[] Embed(LlamaModel model, ITokenizer tok, string text, int maxTokens)
    {
        var ids = tok.Encode(text);
        if (ids.Length == 0) ids = [tok.EosId];
        if (ids.Length > maxTokens) ids = ids[..maxTokens];
        var be = model.Backend;
        using var ng = Grad.NoGrad();
        using var scope = new TensorScope();
        var t = be.Empty([ids.Length], DType.I32);
        be.Upload(t, ids);
        var h = model.Hidden(t, 1, ids.Length).ToArray();
        int c = model.Config.HiddenSize;
        var mean = new float[c];
        for (int i = 0; i < ids.Length; i++)
            for (int j = 0; j < c; j++) mean[j] += h[i * c + j] / ids.Length;
        return mean;
    }

    public static double Cosine(float[] a, float[] b)
    {
        double d = 0, na = 0, nb = 0;
        for (int i = 0; i < a.Length; i++) { d += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
        return d / Math.Sqrt(Math.Max(na * nb, 1e-30));
    }

    public static Result Select(LlamaModel model, ITokenizer tok, IReadOnlyList<string> candidates, IReadOnlyList<string> task,
        double topFraction, bool curriculum, int maxTokens = 128)
    {
        if (task.Count == 0) throw new ArgumentException("data selection needs task examples");
        if (candidates.Count == 0) throw new ArgumentException("data selection needs candidate documents");
        int c = model.Config.HiddenSize;
        var emb = candidates.Select(d => Embed(model, tok, d, maxTokens)).ToList();
        // centre on the candidates' mean: raw mean hidden states share a large common direction (cosines ~0.99),
        // the deviations carry what distinguishes one document from another
        var mu = new float[c];
        foreach (var e in emb)
            for (int j = 0; j < c; j++) mu[j] += e[j] / emb.Count;
        var centroid = new float[c];
        foreach (var t in task)
        {
            var e = Embed(model, tok, t, maxTokens);
            for (int j = 0; j < c; j++) centroid[j] += (e[j] - mu[j]) / task.Count;
        }
        var scored = candidates.Select((d, i) => (Doc: d, Score: Cosine(emb[i].Select((x, j) => x - mu[j]).ToArray(), centroid))).ToList();
        int keep = Math.Max(1, (int)Math.Round(candidates.Count * topFraction));
        var top = scored.OrderByDescending(x => x.Score).Take(keep).ToList();
        if (curriculum) top = top.OrderBy(x => x.Score).ToList();
        return new Result(top.Select(x => x.Doc).ToList(), top.Average(x => x.Score), scored.Average(x => x.Score), candidates.Count);
    }
}
