using Engine.Core.Distributed;
using Engine.Data;
using Engine.Model;

namespace Engine.Training.Eval;

/// <summary>One evaluation set scored zero-shot in instruction format: raw and contextually calibrated accuracy and
/// macro-F1, and how often each label was predicted (raw) — a constant prediction shows at once.</summary>
public sealed record InstructionEvalScore(double Accuracy, double MacroF1, double? CalibratedAccuracy, double? CalibratedMacroF1, int Count,
    Dictionary<string, int> Predicted);

/// <summary>
/// Classification the way an instruction-tuned model is used: each example becomes the prompt the model was trained
/// on — <see cref="ChatTemplate"/> around the instruction and the text, ending with the assistant marker, encoded
/// piece by piece exactly as <see cref="InstructionStream"/> renders training examples — and the prediction is the
/// label whose answer tokens (the label as the answer is encoded, then EOS, as training closes answers) have the
/// highest log-likelihood after the marker. No shots. Contextual calibration (Zhao et al. 2021) subtracts each label's
/// log-likelihood after the same prompt with the content-free input "N/A".
/// </summary>
public static class InstructionEval
{
    /// <summary>The content-free input of contextual calibration.</summary>
    public const string ContentFree = "N/A";

    /// <summary>Prompt ids for one example (input cut from its end, then the instruction, when longer than maxTokens; the marker is kept).</summary>
    public static int[] Prompt(ITokenizer tok, ChatTemplate template, string instruction, string text, int maxTokens)
    {
        var (head, input, marker) = template.EncodeParts(tok, instruction, text);
        int room = maxTokens - marker.Length;
        if (room < 0) throw new ArgumentException($"the chat template's assistant marker ({marker.Length} tokens) does not fit {maxTokens} positions");
        int inputKeep = Math.Min(input.Length, Math.Max(0, room - head.Length));
        int headKeep = Math.Min(head.Length, room - inputKeep);
        return [.. head.AsSpan(0, headKeep), .. input.AsSpan(0, inputKeep), .. marker];
    }

    /// <summary>The answer ids of a label: the label encoded as training encodes an answer, then EOS.</summary>
    public static int[] Answer(ITokenizer tok, string label) => [.. tok.Encode(label), tok.EosId];

    /// <summary>
    /// Zero-shot instruction-format classification of up to maxExamples examples (evenly spread over the set, <see cref="Pick"/>)
    /// over the given labels (default: the set's labels, sorted). With a communicator, examples are split across ranks and the confusion matrices summed.
    /// </summary>
    public static (ClassificationResult Raw, ClassificationResult? Calibrated) ZeroShot(LlamaModel model, ITokenizer tok,
        IReadOnlyList<LabeledExample> test, string instruction, ChatTemplate? template = null, int maxExamples = int.MaxValue,
        bool calibrate = true, IReadOnlyList<string>? labels = null, ICommunicator? comm = null)
    {
        if (test.Count == 0) throw new ArgumentException("no examples to evaluate", nameof(test));
        template ??= ChatTemplate.Default;
        int world = comm?.WorldSize ?? 1, rank = comm?.Rank ?? 0;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var labelList = (labels ?? [.. test.Select(e => e.Label).Distinct().Order(StringComparer.Ordinal)]).ToList();
        var answers = labelList.Select(l => Answer(tok, l)).ToList();
        int limit = model.Config.MaxPositionEmbeddings - answers.Max(a => a.Length);
        double[]? prior = calibrate
            ? Evaluator.ContinuationLogLikelihoods(model, Prompt(tok, template, instruction, ContentFree, limit), answers)
            : null;
        int n = Math.Min(test.Count, maxExamples), L = labelList.Count;
        var raw = new int[L, L];
        var cal = new int[L, L];
        for (int j = 0; j < n; j++)
        {
            if (j % world != rank) continue;
            int i = Pick(j, n, test.Count);
            int truth = labelList.IndexOf(test[i].Label);
            if (truth < 0) throw new ArgumentException($"example {i} has label '{test[i].Label}', not one of {string.Join(", ", labelList)}");
            var ll = Evaluator.ContinuationLogLikelihoods(model, Prompt(tok, template, instruction, test[i].Text, limit), answers);
            raw[truth, ArgMax(ll)]++;
            if (prior != null) cal[truth, ArgMax(ll.Select((x, j) => x - prior[j]).ToArray())]++;
        }
        if (world > 1)
        {
            var counts = new double[2 * L * L];
            for (int a = 0; a < L; a++)
                for (int b = 0; b < L; b++) { counts[a * L + b] = raw[a, b]; counts[L * L + a * L + b] = cal[a, b]; }
            comm!.AllReduce(counts);
            for (int a = 0; a < L; a++)
                for (int b = 0; b < L; b++) { raw[a, b] = (int)counts[a * L + b]; cal[a, b] = (int)counts[L * L + a * L + b]; }
        }
        double secs = sw.Elapsed.TotalSeconds;
        return (Evaluator.Score(labelList, raw, n, secs), prior != null ? Evaluator.Score(labelList, cal, n, secs) : null);
    }

    /// <summary>The report's record of a set's result.</summary>
    public static InstructionEvalScore Summary(ClassificationResult raw, ClassificationResult? calibrated)
    {
        var predicted = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int p = 0; p < raw.Labels.Count; p++)
        {
            int c = 0;
            for (int t = 0; t < raw.Labels.Count; t++) c += raw.Confusion[t, p];
            predicted[raw.Labels[p]] = c;
        }
        return new InstructionEvalScore(raw.Accuracy, raw.MacroF1, calibrated?.Accuracy, calibrated?.MacroF1, raw.Count, predicted);
    }

    /// <summary>The j-th of n examples evenly spread over a set of count (all of them, in order, when n = count): sets
    /// sorted by label (TFNS is) are then sampled across every label rather than cut to the first.</summary>
    public static int Pick(int j, int n, int count) => (int)((long)j * count / n);

    /// <summary>First index of the largest value (ties go to the earlier label, as Array.IndexOf(Max) does in few-shot).</summary>
    static int ArgMax(double[] v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
