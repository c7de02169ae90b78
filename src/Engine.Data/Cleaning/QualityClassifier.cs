namespace Engine.Data.Cleaning;

/// <summary>
/// A small quality model in the spirit of XuanYuan-70B's: logistic regression over hashed features — word unigrams and
/// bigrams (lower-cased; each Han character a word) in 2^<c>bits</c> buckets, L2-normalized — trained with AdaGrad
/// SGD to separate curated text (label 1) from raw web-like text (label 0). <see cref="Score"/> is P(curated).
/// Training is deterministic from the seed.
/// </summary>
public sealed class QualityClassifier
{
    readonly float[] _w;
    readonly int _mask;
    float _bias;

    QualityClassifier(int bits)
    {
        if (bits is < 8 or > 26) throw new ArgumentOutOfRangeException(nameof(bits), bits, "hash bits must be in 8..26");
        _w = new float[1 << bits];
        _mask = (1 << bits) - 1;
    }

    (int[] Index, float[] Value) Features(string text)
    {
        var words = TextCleaner.Words(text);
        var counts = new Dictionary<int, float>();
        uint prev = 0;
        foreach (var w in words)
        {
            uint h = Hash(w.ToLowerInvariant());
            int u = (int)(h & (uint)_mask);
            counts[u] = counts.GetValueOrDefault(u) + 1;
            if (prev != 0)
            {
                int b = (int)((prev * 0x9E3779B1u ^ h) * 0x85EBCA6Bu >> 7) & _mask;
                counts[b] = counts.GetValueOrDefault(b) + 1;
            }
            prev = h | 1;
        }
        double norm = Math.Sqrt(counts.Values.Sum(v => (double)v * v));
        var idx = counts.Keys.ToArray();
        var val = idx.Select(k => (float)(counts[k] / Math.Max(norm, 1e-9))).ToArray();
        return (idx, val);
    }

    static uint Hash(string s)
    {
        uint h = 2166136261;
        foreach (char c in s) h = (h ^ c) * 16777619;
        return h ^ (h >> 15);
    }

    /// <summary>P(curated) for <paramref name="text"/>.</summary>
    public double Score(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var (idx, val) = Features(text);
        double z = _bias;
        for (int i = 0; i < idx.Length; i++) z += _w[idx[i]] * val[i];
        return 1 / (1 + Math.Exp(-z));
    }

    /// <summary>Trains on curated (<paramref name="positive"/>) vs web-like (<paramref name="negative"/>) texts, classes balanced by weight.</summary>
    public static QualityClassifier Train(IReadOnlyList<string> positive, IReadOnlyList<string> negative, int epochs = 4, int bits = 18, double learningRate = 0.5, double l2 = 1e-6, ulong seed = 1)
    {
        ArgumentNullException.ThrowIfNull(positive);
        ArgumentNullException.ThrowIfNull(negative);
        if (positive.Count == 0 || negative.Count == 0) throw new ArgumentException("the quality classifier needs both curated (positive) and web-like (negative) examples");
        ArgumentOutOfRangeException.ThrowIfLessThan(epochs, 1);
        var model = new QualityClassifier(bits);
        var data = positive.Select(t => (Text: t, Label: 1)).Concat(negative.Select(t => (Text: t, Label: 0))).ToArray();
        var feats = data.Select(d => model.Features(d.Text)).ToArray();
        double wPos = data.Length / (2.0 * positive.Count), wNeg = data.Length / (2.0 * negative.Count);
        var g2 = new float[model._w.Length];
        double g2b = 0;
        for (int e = 0; e < epochs; e++)
        {
            var order = SplitMix64.Permutation(data.Length, SplitMix64.Derive(seed, e));
            foreach (int n in order)
            {
                var (idx, val) = feats[n];
                double z = model._bias;
                for (int i = 0; i < idx.Length; i++) z += model._w[idx[i]] * val[i];
                double p = 1 / (1 + Math.Exp(-z));
                double g = (p - data[n].Label) * (data[n].Label == 1 ? wPos : wNeg);
                for (int i = 0; i < idx.Length; i++)
                {
                    int k = idx[i];
                    double gi = g * val[i] + l2 * model._w[k];
                    g2[k] += (float)(gi * gi);
                    model._w[k] -= (float)(learningRate * gi / Math.Sqrt(g2[k] + 1e-8));
                }
                g2b += g * g;
                model._bias -= (float)(learningRate * g / Math.Sqrt(g2b + 1e-8));
            }
        }
        return model;
    }
}
