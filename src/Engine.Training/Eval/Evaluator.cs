using Engine.Core;
using Engine.Core.Autograd;
using Engine.Core.Distributed;
using Engine.Data;
using Engine.Model;

namespace Engine.Training.Eval;

public sealed record PerplexityResult(double MeanNll, double Perplexity, long Tokens, double Seconds)
{
    /// <summary>Bits per UTF-8 byte of the evaluated text (tokenizer-independent), when the tokenizer was given.</summary>
    public double? BitsPerByte { get; init; }

    public double TokensPerSecond => Tokens / Math.Max(Seconds, 1e-9);
}

public sealed record ClassificationResult(double Accuracy, double MacroF1, int Count, IReadOnlyList<string> Labels, int[,] Confusion, double Seconds);

/// <summary>Held-out perplexity and few-shot classification by label likelihood (FinPythia / FLARE style).</summary>
public static class Evaluator
{
    /// <summary>
    /// exp(mean NLL) over the targets of non-overlapping windows of seqLen+1 tokens from the stream (documents
    /// joined by EOS), at most maxTokens targets. No gradients.
    /// </summary>
    public static PerplexityResult Perplexity(LlamaModel model, IReadOnlyList<int> tokens, int seqLen, int batch, long maxTokens = long.MaxValue,
        ITokenizer? tokenizer = null, ICommunicator? comm = null)
    {
        int world = comm?.WorldSize ?? 1, rank = comm?.Rank ?? 0;
        if (seqLen <= 0 || batch <= 0) throw new ArgumentException("seqLen and batch must be positive");
        var be = model.Backend;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int windows = (int)Math.Min((tokens.Count - 1) / seqLen, Math.Max(1, maxTokens / seqLen));
        if (windows <= 0) throw new InvalidDataException($"evaluation text has {tokens.Count} tokens, fewer than seq_len + 1 = {seqLen + 1}");
        double nll = 0; long count = 0;
        var ids = new int[batch * seqLen];
        var tg = new int[batch * seqLen];
        using var ng = Grad.NoGrad();
        for (int w0 = 0, part = 0; w0 < windows; w0 += batch, part++)
        {
            int nb = Math.Min(batch, windows - w0);
            if (part % world != rank) continue;          // data parallel: every rank scores every world-th batch
            for (int b = 0; b < nb; b++)
                for (int t = 0; t < seqLen; t++)
                {
                    int s = (w0 + b) * seqLen + t;
                    ids[b * seqLen + t] = tokens[s];
                    tg[b * seqLen + t] = tokens[s + 1];
                }
            using var scope = new TensorScope();
            var idT = be.Empty([nb * seqLen], DType.I32);
            var tgT = be.Empty([nb * seqLen], DType.I32);
            be.Upload(idT, ids.AsSpan(0, nb * seqLen));
            be.Upload(tgT, tg.AsSpan(0, nb * seqLen));
            var (_, rows) = model.Loss(idT, tgT, nb, seqLen, 1f);
            nll += be.Sum(rows);
            count += nb * seqLen;
        }
        if (world > 1)
        {
            Span<double> sums = [nll, count];
            comm!.AllReduce(sums);
            (nll, count) = (sums[0], (long)sums[1]);
        }
        double mean = nll / count;
        double? bpb = null;
        if (tokenizer != null)
        {
            // the predicted text is tokens[1 .. count]: its UTF-8 size makes the score comparable across tokenizers
            var targets = new int[count];
            for (int i = 0; i < count; i++) targets[i] = tokens[i + 1];
            long bytes = System.Text.Encoding.UTF8.GetByteCount(tokenizer.Decode(targets));
            if (bytes > 0) bpb = nll / Math.Log(2) / bytes;
        }
        return new PerplexityResult(mean, Math.Exp(mean), count, sw.Elapsed.TotalSeconds) { BitsPerByte = bpb };
    }

    /// <summary>Tokens of documents joined by EOS, capped at maxTokens.</summary>
    public static List<int> TokenStream(IEnumerable<string> docs, ITokenizer tok, long maxTokens)
    {
        var list = new List<int>();
        foreach (var d in docs)
        {
            list.AddRange(tok.Encode(d));
            list.Add(tok.EosId);
            if (list.Count >= maxTokens) break;
        }
        if (list.Count > maxTokens) list.RemoveRange((int)maxTokens, list.Count - (int)maxTokens);
        return list;
    }

    /// <summary>The k-shot prompt: shots then the query, each "Sentence: …\nSentiment: label".</summary>
    public static string Prompt(IReadOnlyList<LabeledExample> shots, string text, string instruction)
    {
        var sb = new System.Text.StringBuilder(instruction);
        if (instruction.Length > 0) sb.Append("\n\n");
        foreach (var s in shots) sb.Append("Sentence: ").Append(s.Text).Append("\nSentiment: ").Append(s.Label).Append("\n\n");
        sb.Append("Sentence: ").Append(text).Append("\nSentiment:");
        return sb.ToString();
    }

    /// <summary>Sum of log p(continuation | prompt) for each continuation, sharing the prompt's KV cache.</summary>
    public static double[] ContinuationLogLikelihoods(LlamaModel model, int[] prompt, IReadOnlyList<int[]> continuations)
    {
        var be = model.Backend;
        int maxCont = continuations.Max(c => c.Length);
        using var cache = new KvCache(model.Config, be, prompt.Length + maxCont);
        using var scope = new TensorScope();
        var pid = be.Empty([prompt.Length], DType.I32);
        be.Upload(pid, prompt);
        var logits = model.LogitsWithCache(pid, cache);
        var last = logits.Narrow0(prompt.Length - 1, 1).ToArray();
        var result = new double[continuations.Count];
        for (int c = 0; c < continuations.Count; c++)
        {
            var cont = continuations[c];
            if (cont.Length == 0) throw new ArgumentException($"continuation {c} is empty");
            double ll = LogSoftmaxAt(last, cont[0]);
            if (cont.Length > 1)
            {
                cache.Truncate(prompt.Length);
                using var inner = new TensorScope();
                var cid = be.Empty([cont.Length - 1], DType.I32);
                be.Upload(cid, cont.AsSpan(0, cont.Length - 1));
                var lg = model.LogitsWithCache(cid, cache).ToArray();
                int v = model.Config.VocabSize;
                for (int i = 1; i < cont.Length; i++) ll += LogSoftmaxAt(lg.AsSpan((i - 1) * v, v), cont[i]);
            }
            result[c] = ll;
        }
        return result;
    }

    static double LogSoftmaxAt(ReadOnlySpan<float> logits, int index)
    {
        double m = double.NegativeInfinity;
        foreach (float x in logits) m = Math.Max(m, x);
        double s = 0;
        foreach (float x in logits) s += Math.Exp(x - m);
        return logits[index] - m - Math.Log(s);
    }

    /// <summary>
    /// k-shot classification: for each test example a prompt with k shots drawn (seeded) from the pool, prediction =
    /// the label whose tokens have the highest log-likelihood. Accuracy and macro-F1 over the labels.
    /// </summary>
    public static ClassificationResult FewShot(LlamaModel model, ITokenizer tok, IReadOnlyList<LabeledExample> test,
        IReadOnlyList<LabeledExample> pool, int k, ulong seed, int maxExamples = int.MaxValue, string instruction = "", int maxPromptTokens = 0) =>
        FewShotWithCalibration(model, tok, test, pool, k, seed, maxExamples, instruction, maxPromptTokens, calibrate: false).Raw;

    /// <summary>
    /// As <see cref="FewShot"/>, plus contextual calibration (Zhao et al. 2021): each label's log-likelihood is also
    /// scored after the same shots with a content-free query ("N/A"), and the calibrated prediction maximises the
    /// difference — removing the model's prior preference for one label string.
    /// </summary>
    public static (ClassificationResult Raw, ClassificationResult? Calibrated) FewShotWithCalibration(LlamaModel model, ITokenizer tok,
        IReadOnlyList<LabeledExample> test, IReadOnlyList<LabeledExample> pool, int k, ulong seed, int maxExamples = int.MaxValue,
        string instruction = "", int maxPromptTokens = 0, bool calibrate = true, ICommunicator? comm = null)
    {
        int world = comm?.WorldSize ?? 1, rank = comm?.Rank ?? 0;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var labels = test.Select(e => e.Label).Concat(pool.Select(e => e.Label)).Distinct().OrderBy(l => l, StringComparer.Ordinal).ToList();
        if (test.Count == 0) throw new ArgumentException("few-shot: no test examples");
        if (labels.Count < 2)
            throw new ArgumentException($"few-shot: every example has the label '{labels[0]}' ({test.Count} test examples): with one label the accuracy is 100% whatever the model does");
        var contTokens = labels.Select(l => tok.Encode(" " + l)).ToList();
        var rng = new Rng(seed);
        int n = Math.Min(test.Count, maxExamples);
        var raw = new int[labels.Count, labels.Count];
        var cal = new int[labels.Count, labels.Count];
        int limit = maxPromptTokens > 0 ? maxPromptTokens : model.Config.MaxPositionEmbeddings - contTokens.Max(c => c.Length);
        for (int i = 0; i < n; i++)
        {
            var shots = DrawShots(pool, k, rng, test[i]);
            if (i % world != rank) continue;             // data parallel: shots are drawn for every example, scored once
            int[] Encode(string text)
            {
                var sh = new List<LabeledExample>(shots);
                int[] p = tok.Encode(Prompt(sh, text, instruction));
                while (p.Length > limit && sh.Count > 0)
                {
                    sh.RemoveAt(0);
                    p = tok.Encode(Prompt(sh, text, instruction));
                }
                return p.Length > limit ? p[^limit..] : p;
            }
            var ll = ContinuationLogLikelihoods(model, Encode(test[i].Text), contTokens);
            int truth = labels.IndexOf(test[i].Label);
            raw[truth, Array.IndexOf(ll, ll.Max())]++;
            if (calibrate)
            {
                var prior = ContinuationLogLikelihoods(model, Encode("N/A"), contTokens);
                var adj = ll.Select((x, j) => x - prior[j]).ToArray();
                cal[truth, Array.IndexOf(adj, adj.Max())]++;
            }
        }
        if (world > 1)
        {
            int L = labels.Count;
            var counts = new double[2 * L * L];
            for (int a = 0; a < L; a++)
                for (int b = 0; b < L; b++) { counts[a * L + b] = raw[a, b]; counts[L * L + a * L + b] = cal[a, b]; }
            comm!.AllReduce(counts);
            for (int a = 0; a < L; a++)
                for (int b = 0; b < L; b++) { raw[a, b] = (int)counts[a * L + b]; cal[a, b] = (int)counts[L * L + a * L + b]; }
        }
        double secs = sw.Elapsed.TotalSeconds;
        return (Score(labels, raw, n, secs), calibrate ? Score(labels, cal, n, secs) : null);
    }

    /// <summary>
    /// k shots drawn with replacement (seeded) from the pool; a draw that is the query itself is dropped (its label
    /// would be in the prompt), so the query gets fewer shots rather than its own answer.
    /// </summary>
    public static List<LabeledExample> DrawShots(IReadOnlyList<LabeledExample> pool, int k, Rng rng, LabeledExample query)
    {
        var shots = new List<LabeledExample>(k);
        for (int s = 0; s < k && pool.Count > 0; s++)
        {
            var shot = pool[rng.NextInt(pool.Count)];
            if (!ReferenceEquals(shot, query)) shots.Add(shot);
        }
        return shots;
    }

    public static ClassificationResult Score(IReadOnlyList<string> labels, int[,] confusion, int n, double seconds)
    {
        int correct = 0;
        double f1Sum = 0;
        int present = 0;
        for (int c = 0; c < labels.Count; c++)
        {
            correct += confusion[c, c];
            int tp = confusion[c, c], fp = 0, fn = 0;
            for (int o = 0; o < labels.Count; o++)
            {
                if (o == c) continue;
                fp += confusion[o, c];
                fn += confusion[c, o];
            }
            if (tp + fn == 0 && tp + fp == 0) continue; // label absent from truth and predictions
            present++;
            double p = tp + fp == 0 ? 0 : (double)tp / (tp + fp), r = tp + fn == 0 ? 0 : (double)tp / (tp + fn);
            f1Sum += p + r == 0 ? 0 : 2 * p * r / (p + r);
        }
        return new ClassificationResult(n == 0 ? 0 : (double)correct / n, present == 0 ? 0 : f1Sum / present, n, labels, confusion, seconds);
    }
}
