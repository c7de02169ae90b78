using System.Buffers.Binary;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Cpu.Ops;
using Engine.Data;
using Engine.Model;
using Engine.Model.Export;
using Engine.Model.IO;
using Engine.Tests.Model;

namespace Engine.Tests.IO;

/// <summary>GGUF files parsed back, ggml block quantization (bit layout and error bounds), the llama.cpp q/k layout.</summary>
public class GgufTests
{
    // ---------------------------------------------------------------- quantization

    [Fact]
    public void Q8_0BlockIsBitExactOnAHandBlock()
    {
        // max |x| = 127 → d = 1 exactly; q = roundf(x) with halves away from zero (2.5 → 3, −2.5 → −3, 63.5 → 64)
        var x = new float[32];
        float[] head = [127, -127, 63.5f, -63.5f, 2.5f, -2.5f, 0.49f, -0.51f, 0];
        head.CopyTo(x, 0);
        var block = new byte[GgmlQuants.Q8_0Bytes];
        GgmlQuants.QuantizeQ8_0(x, block);
        Assert.Equal((Half)1f, BinaryPrimitives.ReadHalfLittleEndian(block));
        sbyte[] q = [.. block[2..].Select(b => (sbyte)b)];
        Assert.Equal([127, -127, 64, -64, 3, -3, 0, -1, 0], q[..9]);
        var y = new float[32];
        GgmlQuants.DequantizeQ8_0(block, y);
        Assert.Equal([127f, -127, 64, -64, 3, -3, 0, -1, 0], y[..9]);
    }

    [Fact]
    public void Q4_0BlockIsBitExactOnAHandBlock()
    {
        // the value of largest magnitude is −8 → d = −8 / −8 = 1; q = min(15, trunc(x + 8.5)); x ≈ (q − 8)·d
        var x = new float[32];
        float[] lo = [-8, 8, 0.5f, -0.5f, 7.4f, -3, 0, 6.5f];
        lo.CopyTo(x, 0);
        x[16] = 1; x[17] = -1; x[31] = 7;
        var block = new byte[GgmlQuants.Q4_0Bytes];
        GgmlQuants.QuantizeQ4_0(x, block);
        Assert.Equal((Half)1f, BinaryPrimitives.ReadHalfLittleEndian(block));
        int Q(int j) => j < 16 ? block[2 + j] & 0x0F : block[2 + j - 16] >> 4;
        Assert.Equal([0, 15, 9, 8, 15, 5, 8, 15], Enumerable.Range(0, 8).Select(Q)); // 8 clamps to 15 (the one error of a whole d)
        Assert.Equal([9, 7], new[] { Q(16), Q(17) });
        Assert.Equal(15, Q(31));
        var y = new float[32];
        GgmlQuants.DequantizeQ4_0(block, y);
        Assert.Equal([-8f, 7, 1, 0, 7, -3, 0, 7], y[..8]);
        // the first value of largest magnitude sets the sign of d: 4 before −4 → d = −0.5
        var tie = new float[32];
        tie[0] = 4; tie[1] = -4;
        GgmlQuants.QuantizeQ4_0(tie, block);
        Assert.Equal((Half)(-0.5f), BinaryPrimitives.ReadHalfLittleEndian(block));
    }

    /// <summary>Random blocks at many scales (and all-zero blocks) stay within the derived per-element bounds.</summary>
    [Theory]
    [InlineData(1e-6f)]
    [InlineData(0.02f)]
    [InlineData(1f)]
    [InlineData(300f)]
    public void QuantizationErrorStaysWithinTheDerivedBoundPerBlock(float scale)
    {
        var rng = new Rng(42);
        const int blocks = 400;
        var x = new float[blocks * 32];
        rng.FillNormal(x, 0, scale);
        for (int j = 0; j < 32; j++) x[5 * 32 + j] = 0; // an all-zero block
        for (int j = 0; j < 32; j++) x[6 * 32 + j] = scale * (j % 3 == 0 ? 10 : 0.001f); // an outlier-heavy block
        var q8 = new byte[blocks * GgmlQuants.Q8_0Bytes];
        var q4 = new byte[blocks * GgmlQuants.Q4_0Bytes];
        GgmlQuants.QuantizeQ8_0(x, q8);
        GgmlQuants.QuantizeQ4_0(x, q4);
        var y8 = new float[x.Length];
        var y4 = new float[x.Length];
        GgmlQuants.DequantizeQ8_0(q8, y8);
        GgmlQuants.DequantizeQ4_0(q4, y4);
        const double eps = 1e-5; // x·(1/d) rounding in fp32 can move a value across a rounding boundary
        for (int b = 0; b < blocks; b++)
        {
            var xb = x.AsSpan(b * 32, 32);
            float amax = 0, max = 0;
            foreach (float v in xb) if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
            double d8 = amax / 127f, d8h = (double)BinaryPrimitives.ReadHalfLittleEndian(q8.AsSpan(b * 34));
            double d4 = max / -8f, d4h = (double)BinaryPrimitives.ReadHalfLittleEndian(q4.AsSpan(b * 18));
            double bound8 = Math.Abs(d8) * (0.5 + eps) + 127 * Math.Abs(d8 - d8h);
            double bound4 = Math.Abs(d4) * (0.5 + eps) + 8 * Math.Abs(d4 - d4h);
            int clamped = 0;
            for (int j = 0; j < 32; j++)
            {
                double e8 = Math.Abs(xb[j] - y8[b * 32 + j]), e4 = Math.Abs(xb[j] - y4[b * 32 + j]);
                Assert.True(e8 <= bound8 + 1e-30, $"Q8_0 block {b} element {j}: error {e8:E3} > bound {bound8:E3} (x = {xb[j]})");
                if (e4 > bound4 + 1e-30)
                {
                    // only x/d ≥ 7.5 (the side opposite the block's extreme) clamps, with error up to one whole d
                    Assert.True(xb[j] / d4 >= 7.5 - 1e-4, $"Q4_0 block {b} element {j}: error {e4:E3} > bound {bound4:E3} (x/d = {xb[j] / d4})");
                    Assert.True(e4 <= Math.Abs(d4) * (1 + eps) + 8 * Math.Abs(d4 - d4h), $"Q4_0 block {b} element {j}: clamped error {e4:E3} > |d|");
                    clamped++;
                }
            }
            if (amax == 0) Assert.All(y8.AsSpan(b * 32, 32).ToArray().Concat(y4.AsSpan(b * 32, 32).ToArray()), v => Assert.Equal(0f, v));
        }
    }

    // ---------------------------------------------------------------- container

    [Fact]
    public void WrittenFileParsesBackWithHeaderMetadataTensorTableAndAlignment()
    {
        using var dir = new TempDir();
        var w = new GgufWriter();
        w.Add("general.architecture", GgufValue.Str("llama"));
        w.Add("test.u32", GgufValue.U32(7));
        w.Add("test.f32", GgufValue.F32(0.25f));
        w.Add("test.bool", GgufValue.Bool(true));
        w.Add("test.strings", GgufValue.Strings(["a", "", "ä 金"]));
        w.Add("test.ints", GgufValue.Int32s([1, -2, 3]));
        var rng = new Rng(1);
        var a = new float[3 * 5]; rng.FillNormal(a, 0, 1);
        var b = new float[64 * 2]; rng.FillNormal(b, 0, 1);
        byte[] Enc(GgmlType t, float[] v) { var o = new byte[new GgufTensorInfo("", [v.Length], t, 0).Bytes]; GgmlQuants.Quantize(t, v, o); return o; }
        w.AddTensor("a", [5, 3], GgmlType.F32, () => Enc(GgmlType.F32, a));  // 60 bytes: the next offset must be padded to 64
        w.AddTensor("b", [64, 2], GgmlType.Q4_0, () => Enc(GgmlType.Q4_0, b));
        w.AddTensor("c", [3], GgmlType.F16, () => Enc(GgmlType.F16, [1, 2, 3]));
        string path = dir.File("t.gguf");
        w.Write(path);

        using var f = GgufFile.Open(path);
        Assert.Equal(3u, f.Version);
        Assert.Equal(["general.architecture", "test.u32", "test.f32", "test.bool", "test.strings", "test.ints"], f.KeyOrder);
        Assert.Equal(GgufValueType.UInt32, f.Get("test.u32").Type);
        Assert.Equal(7, f.Get("test.u32").AsInteger);
        Assert.Equal(0.25, f.Get("test.f32").AsReal);
        Assert.Equal(true, f.Get("test.bool").Value);
        Assert.Equal(["a", "", "ä 金"], f.Get("test.strings").AsStrings);
        Assert.Equal([1, -2, 3], (IReadOnlyList<int>)f.Get("test.ints").Value);
        Assert.Equal(32, f.Alignment);
        Assert.Equal(0, f.DataStart % 32);
        Assert.Equal(["a", "b", "c"], f.Tensors.Select(t => t.Name));
        Assert.Equal([0L, 64, 64 + 96], f.Tensors.Select(t => t.Offset)); // 60 → 64, 72 → 96
        Assert.Equal([5L, 3], f["a"].Dims);
        Assert.Equal(GgmlType.Q4_0, f["b"].Type);
        Assert.Equal(a, f.ReadFloat32("a"));
        Assert.Equal([1f, 2, 3], f.ReadFloat32("c"));
        Assert.Equal(f.DataStart + 64 + 96 + 32, new FileInfo(path).Length); // each tensor padded to the alignment
        // the header bytes themselves: magic, version 3, counts
        var head = File.ReadAllBytes(path)[..24];
        Assert.Equal("GGUF"u8.ToArray(), head[..4]);
        Assert.Equal(3u, BinaryPrimitives.ReadUInt32LittleEndian(head.AsSpan(4)));
        Assert.Equal(3ul, BinaryPrimitives.ReadUInt64LittleEndian(head.AsSpan(8)));
        Assert.Equal(6ul, BinaryPrimitives.ReadUInt64LittleEndian(head.AsSpan(16)));
    }

    [Fact]
    public void BrokenFilesAreRefusedWithTheReason()
    {
        using var dir = new TempDir();
        var w = new GgufWriter();
        w.Add("general.architecture", GgufValue.Str("llama"));
        w.AddTensor("x", [32, 2], GgmlType.F32, () => new byte[256]);
        string good = dir.File("good.gguf");
        w.Write(good);
        byte[] bytes = File.ReadAllBytes(good);

        string Write(string name, byte[] content) { string p = dir.File(name); File.WriteAllBytes(p, content); return p; }
        string Fails(byte[] content) => Assert.Throws<InvalidDataException>(() => GgufFile.Open(Write("bad.gguf", content)).Dispose()).Message;

        var magic = (byte[])bytes.Clone(); magic[0] = (byte)'X';
        Assert.Contains("magic", Fails(magic));
        var version = (byte[])bytes.Clone(); BinaryPrimitives.WriteUInt32LittleEndian(version.AsSpan(4), 9);
        Assert.Contains("version 9", Fails(version));
        Assert.Contains("truncated", Fails(bytes[..^10]));
        Assert.Contains("truncated", Fails(bytes[..40]));
        // the tensor table entry's offset (last 8 bytes of the table) made unaligned, then its type unknown
        using (var f = GgufFile.Open(good))
        {
            long tableEnd = f.DataStart; // the header ends at or before the data start; find the offset field from the end of the table
            int offPos = Array.LastIndexOf(bytes, (byte)'x') + 1 + 4 + 16 + 4;
            var misaligned = (byte[])bytes.Clone(); BinaryPrimitives.WriteUInt64LittleEndian(misaligned.AsSpan(offPos), 4);
            Assert.Contains("not a multiple of the alignment", Fails(misaligned));
            var type = (byte[])bytes.Clone(); BinaryPrimitives.WriteUInt32LittleEndian(type.AsSpan(offPos - 4), 99);
            Assert.Contains("ggml type 99", Fails(type));
            Assert.True(offPos < tableEnd);
        }
        Assert.Throws<FileNotFoundException>(() => GgufFile.Open(dir.File("missing.gguf")));
    }

    // ---------------------------------------------------------------- llama layout

    [Fact]
    public void PermutedQkRowsMakeLlamaCppsAdjacentPairRopeEqualHuggingFacesRotateHalf()
    {
        const int heads = 3, d = 8, cols = 5, pos = 7;
        var rng = new Rng(3);
        var w = new float[heads * d * cols]; rng.FillNormal(w, 0, 1);
        var h = new float[cols]; rng.FillNormal(h, 0, 1);
        float[] MatVec(float[] m) => Enumerable.Range(0, heads * d).Select(r => Enumerable.Range(0, cols).Sum(c => m[r * cols + c] * h[c])).ToArray();
        var p = new RopeParams(d, 10000.0);
        // Hugging Face: rotate (i, i + d/2) — the engine's RopeCpu
        var qHf = MatVec(w);
        var (cos, sin) = RopeCpu.Tables(p.InverseFrequencies(), p.PositionDivisor, 1, pos);
        var yHf = new float[qHf.Length];
        RopeCpu.Apply(qHf, yHf, 1, 1, heads, d, cos, sin, inverse: false);
        // llama.cpp "llama" (normal) RoPE: rotate (2i, 2i + 1) of the permuted weights' output
        var qGg = MatVec(GgufExport.PermuteRows(w, heads, d, cols, toGguf: true));
        var yGg = new float[qGg.Length];
        var inv = p.InverseFrequencies();
        for (int hh = 0; hh < heads; hh++)
            for (int i = 0; i < d / 2; i++)
            {
                float a = pos * inv[i], x0 = qGg[hh * d + 2 * i], x1 = qGg[hh * d + 2 * i + 1];
                yGg[hh * d + 2 * i] = x0 * MathF.Cos(a) - x1 * MathF.Sin(a);
                yGg[hh * d + 2 * i + 1] = x0 * MathF.Sin(a) + x1 * MathF.Cos(a);
            }
        for (int hh = 0; hh < heads; hh++)
            for (int i = 0; i < d / 2; i++)
                for (int j = 0; j < 2; j++)
                    Assert.Equal(yHf[hh * d + j * d / 2 + i], yGg[hh * d + 2 * i + j], 5);
        Assert.Equal(w, GgufExport.PermuteRows(GgufExport.PermuteRows(w, heads, d, cols, true), heads, d, cols, false));
    }

    static float[] Logits(LlamaModel m, int[] ids)
    {
        using var scope = new TensorScope();
        using var ng = Grad.NoGrad();
        var t = m.Backend.Empty([ids.Length], DType.I32);
        m.Backend.Upload(t, ids);
        return m.Logits(t, 1, ids.Length).ToArray();
    }

    [Theory]
    [InlineData(false, false, RopeScalingKind.None)]
    [InlineData(true, false, RopeScalingKind.Linear)]
    [InlineData(false, true, RopeScalingKind.Ntk)]
    public void F32ExportReadsBackToTheSameLogitsWithLlamaMetadata(bool tied, bool normHead, RopeScalingKind rope)
    {
        using var dir = new TempDir();
        var cfg = TestModels.Tiny(tied, normHead) with { RopeScaling = rope, RopeScalingFactor = rope == RopeScalingKind.None ? 1 : 2 };
        using var m = TestModels.Create(cfg, 9);
        var vocab = GgufVocab.EngineBytes() with { Tokens = GgufVocab.EngineBytes().Tokens.Take(30).ToList(), TokenTypes = Enumerable.Repeat(1, 30).ToList(), EosId = 2, BosId = 1 };
        string path = dir.File("m.gguf");
        var report = GgufExport.Write(m, vocab, path, GgufQuant.F32, "tiny");
        using (var f = GgufFile.Open(path))
        {
            Assert.Equal("llama", f.Get("general.architecture").AsString);
            Assert.Equal("tiny", f.Get("general.name").AsString);
            Assert.Equal(0, f.Get("general.file_type").AsInteger);
            Assert.Equal(cfg.NumLayers, f.Get("llama.block_count").AsInteger);
            Assert.Equal(cfg.NumHeads, f.Get("llama.attention.head_count").AsInteger);
            Assert.Equal(cfg.NumKvHeads, f.Get("llama.attention.head_count_kv").AsInteger);
            Assert.Equal(cfg.HeadDim, f.Get("llama.rope.dimension_count").AsInteger);
            Assert.Equal(cfg.IntermediateSize, f.Get("llama.feed_forward_length").AsInteger);
            double theta = rope == RopeScalingKind.Ntk ? HfConfig.NtkTheta(cfg.RopeTheta, 2, cfg.HeadDim) : cfg.RopeTheta;
            Assert.Equal((float)theta, (float)f.Get("llama.rope.freq_base").AsReal);
            Assert.Equal(rope == RopeScalingKind.Ntk ? 2 * cfg.MaxPositionEmbeddings : cfg.MaxPositionEmbeddings, f.Get("llama.context_length").AsInteger);
            Assert.Equal(rope == RopeScalingKind.Linear, f.Metadata.ContainsKey("llama.rope.scaling.type"));
            // tokens padded with UNUSED entries to the model's 37-row vocabulary
            var tokens = f.Get("tokenizer.ggml.tokens").AsStrings;
            Assert.Equal(cfg.VocabSize, tokens.Count);
            Assert.Equal("[PAD36]", tokens[36]);
            Assert.Equal(GgufTokenType.Unused, ((IReadOnlyList<int>)f.Get("tokenizer.ggml.token_type").Value)[36]);
            Assert.Equal("gpt2", f.Get("tokenizer.ggml.model").AsString);
            Assert.Equal(2, f.Get("tokenizer.ggml.eos_token_id").AsInteger);
            Assert.Equal(tied, !f.Contains("output.weight"));
            Assert.Equal(GgmlType.F32, f["blk.1.attn_q.weight"].Type);
            Assert.Equal([(long)cfg.HiddenSize, cfg.VocabSize], f["token_embd.weight"].Dims);
            Assert.Equal([(long)cfg.IntermediateSize, cfg.HiddenSize], f["blk.0.ffn_down.weight"].Dims);
            Assert.Equal(f.Tensors.Count, report.Tensors.Count);
        }
        using var back = GgufExport.Load(path, CpuBackend.Instance);
        int[] ids = [3, 17, 5, 36, 0, 22, 9, 9, 1];
        var want = Logits(m, ids);
        var got = Logits(back, ids);
        for (int i = 0; i < want.Length; i++) Assert.Equal(want[i], got[i], 1e-4f);
    }

    [Fact]
    public void QuantizedExportFallsBackToF16ForRowsThatAreNotWholeBlocks()
    {
        using var dir = new TempDir();
        var cfg = new LlamaConfig { VocabSize = 40, HiddenSize = 32, IntermediateSize = 48, NumLayers = 1, NumHeads = 2, NumKvHeads = 1, MaxPositionEmbeddings = 16, InitializerRange = 0.1 };
        using var m = TestModels.Create(cfg, 10);
        string path = dir.File("q.gguf");
        var report = GgufExport.Write(m, GgufVocab.EngineBytes() with { Tokens = GgufVocab.EngineBytes().Tokens.Take(40).ToList(), TokenTypes = Enumerable.Repeat(1, 40).ToList(), EosId = 39, BosId = 38 }, path, GgufQuant.Q4_0);
        using var f = GgufFile.Open(path);
        Assert.Equal(2, f.Get("general.file_type").AsInteger);
        Assert.Equal(GgmlType.F32, f["blk.0.attn_norm.weight"].Type);
        Assert.Equal(GgmlType.Q4_0, f["blk.0.ffn_up.weight"].Type);          // rows of 32
        Assert.Equal(GgmlType.F16, f["blk.0.ffn_down.weight"].Type);         // rows of 48: not whole blocks
        Assert.Contains(report.Tensors, t => t.Name == "blk.0.ffn_down.weight" && t.Note!.Contains("48"));
        Assert.Equal(GgmlType.Q4_0, f["token_embd.weight"].Type);
        Assert.Equal(GgmlType.Q4_0, f["output.weight"].Type);
        // the stored blocks decode to the reference quantization of the (permuted) weights
        var q = m["model.layers.0.self_attn.q_proj.weight"].ToArray();
        var perm = GgufExport.PermuteRows(q, 2, 16, 32, toGguf: true);
        var blocks = new byte[perm.Length / 32 * 18];
        GgmlQuants.QuantizeQ4_0(perm, blocks);
        Assert.Equal(blocks, f.ReadBytes("blk.0.attn_q.weight"));
    }

    [Fact]
    public void TokenizerJsonBecomesAGpt2VocabularyAndSentencePieceStyleALlamaVocabularyWithMergeScores()
    {
        using var dir = new TempDir();
        var corpus = Documents.Read(Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")).Take(1).Select(d => d[..Math.Min(d.Length, 20_000)]).ToList();
        var bpe = BpeTokenizer.Train(corpus, new BpeTrainOptions { VocabSize = 400 });
        string path = dir.File("tokenizer.json");
        bpe.Save(path);
        var v = GgufVocab.FromTokenizerJson(path);
        Assert.Equal("gpt2", v.Model);
        Assert.Equal("qwen2", v.Pre); // the engine trains with Qwen2's split rule, which llama.cpp knows by that name
        Assert.Equal(bpe.EosId, v.BosId); // no BOS: BOS = EOS (not added), as Qwen's GGUF files have
        Assert.Equal(bpe.VocabSize, v.Tokens.Count);
        Assert.Equal(bpe.MergeCount, v.Merges.Count);
        Assert.Equal(bpe.EosId, v.EosId);
        Assert.Equal(GgufTokenType.Control, v.TokenTypes[bpe.EosId]);
        Assert.Equal(GgufTokenType.Normal, v.TokenTypes[bpe.Encode("e")[0]]);
        // each token's text is its byte-level spelling: decoding the ids of some text gives it back
        int[] ids = bpe.Encode("Before we proceed any further");
        string spelled = string.Concat(ids.Select(i => v.Tokens[i]));
        var bytes = spelled.Select(ch => (byte)Enumerable.Range(0, 256).First(b => GgufVocab.ByteChar((byte)b) == ch)).ToArray();
        Assert.Equal("Before we proceed any further", System.Text.Encoding.UTF8.GetString(bytes));
        // tokenizer_config.json names win and the chat template rides along
        var withCfg = GgufVocab.FromTokenizerJson(path, "{\"eos_token\": \"<|assistant|>\", \"chat_template\": \"{{ x }}\", \"add_bos_token\": false}");
        Assert.Equal(bpe.TokenToId("<|assistant|>"), withCfg.EosId);
        Assert.Equal("{{ x }}", withCfg.ChatTemplate);
        Assert.False(withCfg.AddBos);
        // without add_bos_token, a post-processor template that starts with the BOS token means llama.cpp should add it
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        json["post_processor"] = System.Text.Json.Nodes.JsonNode.Parse("""
            {"type": "Sequence", "processors": [{"type": "ByteLevel"}, {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|user|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}]}
            """);
        File.WriteAllText(dir.File("templ.json"), json.ToJsonString());
        var templ = GgufVocab.FromTokenizerJson(dir.File("templ.json"), "{\"bos_token\": \"<|user|>\"}");
        Assert.Equal(bpe.TokenToId("<|user|>"), templ.BosId);
        Assert.True(templ.AddBos);
        Assert.False(templ.AddEos);

        // SentencePiece-style: the "llama" vocabulary; a token's score is minus the rank of the first merge making it
        File.WriteAllText(dir.File("spm.json"), """
            {"model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
              "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "\u2581": 4, "a": 5, "b": 6, "ab": 7, "\u2581ab": 8, "\u2581a": 9},
              "merges": ["a b", "\u2581 ab", "\u2581 a"]},
             "added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true}, {"id": 2, "content": "</s>", "special": true}],
             "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}}
            """);
        var spm = GgufVocab.FromTokenizerJson(dir.File("spm.json"));
        Assert.Equal("llama", spm.Model);
        Assert.True(spm.AddSpacePrefix);
        Assert.Equal([0f, 0f, 0f, 0f, 0f, 0f, 0f, 0f, -1f, -2f], spm.Scores!);
        Assert.Equal([GgufTokenType.Unknown, GgufTokenType.Control, GgufTokenType.Control, GgufTokenType.Byte, GgufTokenType.Normal], spm.TokenTypes.Take(5));
        Assert.Equal((1, 2, 0), (spm.BosId, spm.EosId, spm.UnkId));
        File.WriteAllText(dir.File("wp.json"), "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
        Assert.Contains("WordPiece", Assert.Throws<NotSupportedException>(() => GgufVocab.FromTokenizerJson(dir.File("wp.json"))).Message);
    }

    [Fact]
    public void ByteCharIsGpt2sBytesToUnicode()
    {
        Assert.Equal('!', GgufVocab.ByteChar((byte)'!'));
        Assert.Equal('Ġ', GgufVocab.ByteChar((byte)' '));   // 0x20 → U+0120
        Assert.Equal('Ċ', GgufVocab.ByteChar((byte)'\n'));  // 0x0A → U+010A
        Assert.Equal('Ā', GgufVocab.ByteChar(0));
        Assert.Equal('ÿ', GgufVocab.ByteChar(0xFF));
        Assert.Equal(256, Enumerable.Range(0, 256).Select(b => GgufVocab.ByteChar((byte)b)).Distinct().Count());
    }
}
