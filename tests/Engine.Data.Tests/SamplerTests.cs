using Engine.Data;

namespace Engine.Data.Tests;

public class SamplerTests
{
    static InMemoryTokenSource Docs(params int[][] docs) => new(docs);

    [Fact]
    public void Packed_stream_concatenates_documents_with_EOS_and_overlaps_one_token()
    {
        const int eos = 99;
        var src = Docs([1, 2, 3], [], [4, 5], [6, 7, 8, 9, 10]);
        var s = new PackedPretrainStream(src, seqLen: 4, eosId: eos, seed: 1, shuffle: false);
        var a = s.Next(); var b = s.Next(); var c = s.Next();
        Assert.Equal([1, 2, 3, eos, 4], a.Tokens);
        Assert.Equal([4, 5, eos, 6, 7], b.Tokens);
        Assert.Equal([7, 8, 9, 10, eos], c.Tokens);
        Assert.All([a, b, c], x => { Assert.Equal(4, x.LossMask.Length); Assert.All(x.LossMask, Assert.True); Assert.Equal("pretrain", x.Source); });
        Assert.Equal([eos, 1, 2, 3, eos], s.Next().Tokens); // next epoch, same order (no shuffle)
    }

    [Fact]
    public void Packed_stream_shuffles_per_epoch_and_covers_every_document()
    {
        var docs = Enumerable.Range(0, 50).Select(i => new[] { 1000 + i }).ToArray();
        var s = new PackedPretrainStream(Docs(docs), seqLen: 10, eosId: 0, seed: 7);
        var stream = new List<int>();
        for (int i = 0; i < 10; i++) stream.AddRange(s.Next().Tokens.Skip(i == 0 ? 0 : 1));
        var seen = stream.Take(100).Where(t => t != 0).ToList(); // one epoch: 50 × (document + EOS)
        Assert.Equal(50, seen.Count);
        Assert.Equal(Enumerable.Range(1000, 50), seen.Order());
        Assert.NotEqual(Enumerable.Range(1000, 50), seen);
    }

    [Fact]
    public void Instruction_samples_mask_only_the_answer_and_its_EOS()
    {
        var tok = TestData.SmallTokenizer;
        var ex = new InstructionExample("计算市盈率。", "price 20, EPS 2", "10");
        var (sample, truncated) = InstructionStream.Render(ex, tok, ChatTemplate.Default, 64, "sft");
        Assert.False(truncated);
        Assert.Equal(65, sample.Tokens.Length);
        Assert.Equal(64, sample.LossMask.Length);
        var prompt = ChatTemplate.Default.EncodePrompt(tok, ex.Instruction, ex.Input);
        Assert.Equal(prompt, sample.Tokens[..prompt.Length]);
        var targets = Enumerable.Range(0, 64).Where(i => sample.LossMask[i]).Select(i => sample.Tokens[i + 1]).ToArray();
        Assert.Equal([.. tok.Encode("10"), tok.EosId], targets);
        Assert.Equal(prompt.Length - 1, Array.IndexOf(sample.LossMask, true)); // first masked target is the answer's first token
        Assert.All(sample.Tokens[(prompt.Length + targets.Length)..], t => Assert.Equal(tok.EosId, t)); // EOS padding, unmasked
        Assert.Equal("<|user|>\n计算市盈率。\n\nprice 20, EPS 2\n<|assistant|>\n", ChatTemplate.Default.RenderPrompt(ex.Instruction, ex.Input));
    }

    [Fact]
    public void Instruction_truncation_keeps_the_marker_and_at_least_half_the_window_for_the_answer()
    {
        var tok = new ByteTokenizer();
        var ex = new InstructionExample("Q?", new string('i', 500), new string('a', 500));
        var (s, truncated) = InstructionStream.Render(ex, tok, ChatTemplate.Default, 127, "sft");
        Assert.True(truncated);
        Assert.Equal(64, s.LossTokens);                 // (T+1)/2 answer tokens, cut at the end (EOS dropped)
        string text = System.Text.Encoding.UTF8.GetString(s.Tokens.Select(t => (byte)t).ToArray());
        Assert.StartsWith("<|user|>\nQ?\n\niii", text);
        Assert.Contains("\n<|assistant|>\naaaa", text);
        var shortAnswer = new InstructionExample("Q?", new string('i', 500), "yes");
        var (s2, _) = InstructionStream.Render(shortAnswer, tok, ChatTemplate.Default, 127, "sft");
        Assert.Equal(4, s2.LossTokens);                 // whole answer + EOS kept, input cut
        Assert.Equal(tok.EosId, s2.Tokens[^1]);
    }

    [Fact]
    public void Mixture_ratios_follow_constant_weights()
    {
        var mix = Mixture(WeightSchedule.Constant(9, 1), seed: 3);
        const int n = 20_000;
        int finance = 0;
        for (int i = 0; i < n; i++) if (mix.Next().Source == "finance") finance++;
        // Binomial sd = sqrt(0.1·0.9/n) ≈ 0.0021; tolerance 0.01 ≈ 4.7 sd.
        Assert.InRange(finance / (double)n, 0.09, 0.11);
    }

    [Fact]
    public void Mixture_ratios_follow_a_linear_ramp_over_consumed_tokens()
    {
        const int seqLen = 8, n = 40_000;
        // general:finance 9:1 → 4:1 over n·seqLen tokens: finance share 0.1 → 0.2.
        var mix = Mixture(WeightSchedule.Linear([9, 1], [4, 1], (long)n * seqLen), seed: 11, seqLen: seqLen);
        int firstQuarter = 0, lastQuarter = 0;
        for (int i = 0; i < n; i++)
        {
            bool fin = mix.Next().Source == "finance";
            if (fin && i < n / 4) firstQuarter++;
            if (fin && i >= 3 * n / 4) lastQuarter++;
        }
        // Expected mean shares over the quarters: 0.1125 and 0.1875; sd ≈ 0.0033 each, tolerance 0.015.
        Assert.InRange(firstQuarter / (n / 4.0), 0.1125 - 0.015, 0.1125 + 0.015);
        Assert.InRange(lastQuarter / (n / 4.0), 0.1875 - 0.015, 0.1875 + 0.015);
        Assert.Equal([0.8, 0.2], mix.CurrentWeights.Select(w => Math.Round(w, 9)));
    }

    [Fact]
    public void Resume_gives_exactly_the_uninterrupted_sequence()
    {
        var tok = TestData.SmallTokenizer;
        var examples = Instructions.Read(TestData.File("instruct/fin_en_formula.jsonl")).Take(40).ToList();
        ISampleStream Build() => new MixtureStream(
        [
            ("general", new PackedPretrainStream(InMemoryTokenSource.FromTexts(Documents.Read(TestData.File("general_en/wikitext2_test_a.txt")).Take(30), tok), 32, tok.EosId, 5)),
            ("finance", new PackedPretrainStream(InMemoryTokenSource.FromTexts(Documents.Read(TestData.File("finance_zh/cnews_finance.jsonl")).Take(20), tok), 32, tok.EosId, 6)),
            ("sft", new InstructionStream(examples, tok, 32, 7)),
        ], WeightSchedule.Linear([6, 2, 2], [3, 3, 4], 20_000), seed: 42);

        var straight = Build();
        var expected = Enumerable.Range(0, 3000).Select(_ => straight.Next()).ToList();

        foreach (int cut in new[] { 0, 1, 137, 1999 })
        {
            var first = Build();
            for (int i = 0; i < cut; i++) first.Next();
            string json = first.SaveState().ToJson();
            var resumed = Build();
            resumed.LoadState(SamplerState.FromJson(json));
            for (int i = cut; i < expected.Count; i++)
            {
                var s = resumed.Next();
                Assert.True(expected[i].Tokens.SequenceEqual(s.Tokens) && expected[i].LossMask.SequenceEqual(s.LossMask) && expected[i].Source == s.Source,
                    $"sample {i} differs after resuming at {cut}");
            }
        }
    }

    [Fact]
    public void Mismatched_or_corrupt_state_is_refused()
    {
        var a = new PackedPretrainStream(Docs([1, 2, 3]), 2, 0, seed: 1);
        var b = new PackedPretrainStream(Docs([1, 2, 3]), 2, 0, seed: 2);
        Assert.Contains("seed", Assert.Throws<InvalidDataException>(() => b.LoadState(a.SaveState())).Message);
        var inst = new InstructionStream([new InstructionExample("a", "", "b")], new ByteTokenizer(), 64, 1);
        Assert.Throws<InvalidDataException>(() => inst.LoadState(a.SaveState()));
        Assert.Throws<InvalidDataException>(() => SamplerState.FromJson("{not json"));
        var st = a.SaveState();
        st.Values.Remove("offset");
        Assert.Contains("offset", Assert.Throws<InvalidDataException>(() => a.LoadState(st)).Message);
        Assert.Throws<ArgumentException>(() => WeightSchedule.Constant(1, -1));
        Assert.Throws<ArgumentException>(() => new PackedPretrainStream(Docs([]), 4, 0, 1));
    }

    static MixtureStream Mixture(WeightSchedule schedule, ulong seed, int seqLen = 4)
    {
        var general = new PackedPretrainStream(Docs([1, 2, 3, 4, 5]), seqLen, 0, 1, name: "g");
        var finance = new PackedPretrainStream(Docs([6, 7, 8]), seqLen, 0, 2, name: "f");
        return new MixtureStream([("general", general), ("finance", finance)], schedule, seed);
    }
}
