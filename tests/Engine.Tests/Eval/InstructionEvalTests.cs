using Engine.Core;
using Engine.Core.Autograd;
using Engine.Data;
using Engine.Model;
using Engine.Tests.Model;
using Engine.Training.Eval;
using Engine.Training.Recipes;

namespace Engine.Tests.Eval;

/// <summary>Zero-shot classification in instruction format: the prompt is exactly what training renders, and the
/// scores (raw and calibrated) equal an independent full-sequence computation.</summary>
public class InstructionEvalTests
{
    static readonly ByteTokenizer Tok = new();
    static LlamaModel Model(ulong seed) => TestModels.Create(TestModels.Tiny() with { VocabSize = 260, MaxPositionEmbeddings = 256 }, seed);

    static readonly LabeledExample[] Set =
    [
        new("Profit rose 20%.", "positive"),
        new("The firm cut its outlook.", "negative"),
        new("Shares were flat.", "neutral"),
        new("Sales fell.", "negative"),
        new("Record quarter!", "positive"),
        new("The meeting is on Monday.", "neutral"),
    ];

    [Fact]
    public void PromptAndAnswerAreWhatTheInstructionStreamTrainsOn()
    {
        var ex = new InstructionExample(RecipeSources.SentimentInstruction, "Operating profit rose to EUR 13.1 mn.", "positive");
        var (sample, truncated) = InstructionStream.Render(ex, Tok, ChatTemplate.Default, 200, "s");
        Assert.False(truncated);
        int[] prompt = InstructionEval.Prompt(Tok, ChatTemplate.Default, ex.Instruction, ex.Input, 200);
        int[] answer = InstructionEval.Answer(Tok, ex.Output);
        Assert.Equal([.. prompt, .. answer], sample.Tokens.Take(prompt.Length + answer.Length));
        // the answer is what the loss is on
        Assert.Equal(answer.Length, sample.LossMask.Count(b => b));
        Assert.True(sample.LossMask[prompt.Length - 1]);
        Assert.False(sample.LossMask[prompt.Length - 2]);
    }

    [Fact]
    public void LongInputsAreCutAndTheAnswerMarkerKept()
    {
        string text = string.Concat(Enumerable.Repeat("revenue grew ", 40));
        var p = InstructionEval.Prompt(Tok, ChatTemplate.Default, RecipeSources.SentimentInstruction, text, 150);
        Assert.Equal(150, p.Length);
        var marker = Tok.Encode(ChatTemplate.Default.AssistantPrefix);
        Assert.Equal(marker, p[^marker.Length..]);
        var head = Tok.Encode(ChatTemplate.Default.UserPrefix + RecipeSources.SentimentInstruction);
        Assert.Equal(head, p[..head.Length]);
        Assert.Throws<ArgumentException>(() => InstructionEval.Prompt(Tok, ChatTemplate.Default, "x", "y", 3));
    }

    [Fact]
    public void ExamplesAreSpreadEvenlyOverTheSet()
    {
        Assert.Equal([0, 3, 6], Enumerable.Range(0, 3).Select(j => InstructionEval.Pick(j, 3, 9)));
        Assert.Equal(Enumerable.Range(0, 7), Enumerable.Range(0, 7).Select(j => InstructionEval.Pick(j, 7, 7)));
    }

    /// <summary>log p(answer | prompt) from one full forward over prompt + answer (no KV cache), in double.</summary>
    static double Score(LlamaModel m, int[] prompt, int[] answer)
    {
        int[] seq = [.. prompt, .. answer];
        using var s = new TensorScope();
        using var ng = Grad.NoGrad();
        var ids = CpuBackend.Instance.Empty([seq.Length], DType.I32);
        CpuBackend.Instance.Upload(ids, seq);
        var lg = m.Logits(ids, 1, seq.Length).ToArray();
        int v = m.Config.VocabSize;
        double ll = 0;
        for (int i = 0; i < answer.Length; i++)
        {
            var row = lg.AsSpan((prompt.Length - 1 + i) * v, v);
            double mx = double.NegativeInfinity, sum = 0;
            foreach (float x in row) mx = Math.Max(mx, x);
            foreach (float x in row) sum += Math.Exp(x - mx);
            ll += row[answer[i]] - mx - Math.Log(sum);
        }
        return ll;
    }

    [Theory]
    [InlineData(3UL)]
    [InlineData(4UL)]
    public void ZeroShotScoresEqualAnIndependentComputation(ulong seed)
    {
        using var m = Model(seed);
        string[] labels = ["negative", "neutral", "positive"];
        int limit = m.Config.MaxPositionEmbeddings - labels.Max(l => InstructionEval.Answer(Tok, l).Length);
        double[] LogLik(string text) => labels.Select(l => Score(m, InstructionEval.Prompt(Tok, ChatTemplate.Default, RecipeSources.SentimentInstruction, text, limit),
            InstructionEval.Answer(Tok, l))).ToArray();
        var prior = LogLik(InstructionEval.ContentFree);
        int rawCorrect = 0, calCorrect = 0;
        var predicted = new int[3];
        foreach (var e in Set)
        {
            var ll = LogLik(e.Text);
            int raw = Array.IndexOf(ll, ll.Max());
            var adj = ll.Select((x, j) => x - prior[j]).ToArray();
            int cal = Array.IndexOf(adj, adj.Max());
            predicted[raw]++;
            if (labels[raw] == e.Label) rawCorrect++;
            if (labels[cal] == e.Label) calCorrect++;
        }
        var (r, c) = InstructionEval.ZeroShot(m, Tok, Set, RecipeSources.SentimentInstruction);
        Assert.Equal(labels, r.Labels);
        Assert.Equal(Set.Length, r.Count);
        Assert.Equal((double)rawCorrect / Set.Length, r.Accuracy, 12);
        Assert.Equal((double)calCorrect / Set.Length, c!.Accuracy, 12);
        var summary = InstructionEval.Summary(r, c);
        Assert.Equal(predicted, labels.Select(l => summary.Predicted[l]));
        // max_examples takes an even spread: 3 of 6 are examples 0, 2 and 4
        var (r3, none) = InstructionEval.ZeroShot(m, Tok, Set, RecipeSources.SentimentInstruction, maxExamples: 3, calibrate: false);
        Assert.Null(none);
        Assert.Equal(3, r3.Count);
        var spread = InstructionEval.ZeroShot(m, Tok, [Set[0], Set[2], Set[4]], RecipeSources.SentimentInstruction, calibrate: false, labels: labels).Raw;
        Assert.Equal(spread.Accuracy, r3.Accuracy, 12);
    }

    [Fact]
    public void AnUnknownLabelIsAnError()
    {
        using var m = Model(5);
        var e = Assert.Throws<ArgumentException>(() => InstructionEval.ZeroShot(m, Tok, Set, "x", labels: ["negative", "positive"]));
        Assert.Contains("neutral", e.Message);
    }
}
