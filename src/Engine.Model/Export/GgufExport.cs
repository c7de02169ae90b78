using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model.IO;

namespace Engine.Model.Export;

/// <summary>The weight encodings of `engine export --format gguf --type …` (llama.cpp's file types of the same names).</summary>
public enum GgufQuant { F32, F16, Q8_0, Q4_0 }

/// <summary>One written tensor: its GGUF name, type and dims (ggml order), and why its type differs from the requested one.</summary>
public sealed record GgufTensorReport(string Name, GgmlType Type, long[] Dims, string? Note);

public sealed record GgufExportReport(string Path, long Bytes, IReadOnlyList<GgufTensorReport> Tensors, string PreNote)
{
    /// <summary>The llama.cpp architecture written ("llama" or "baichuan") and why, when it is not the family's own.</summary>
    public string Architecture { get; init; } = GgufExport.Arch;
    public string? ArchitectureNote { get; init; }
}

/// <summary>
/// Writes a <see cref="LlamaModel"/> as a llama.cpp GGUF file with the tensor names and metadata keys that
/// convert_hf_to_gguf.py writes for the "llama" architecture, and reads such a file back into a model.
///
/// Layout: HF weights [out, in] are ggml tensors with ne = [in, out] (the same bytes, row-major). q_proj and k_proj
/// rows are permuted per head from Hugging Face's rotate-half pairs (i, i + D/2) to the adjacent pairs (2i, 2i + 1)
/// that llama.cpp's "llama" RoPE rotates: GGUF row h·D + 2i + j = HF row h·D + j·D/2 + i (convert_hf_to_gguf's
/// <c>permute</c>; k uses the KV-head count). The same permutation on q and k leaves q·k unchanged.
///
/// Types: 1-D tensors (norms) stay F32; 2-D weights take the requested type — all of them, embeddings and output
/// included, as convert_hf_to_gguf does for f16/q8_0 and llama-quantize --pure for q4_0. A weight whose row length is
/// not a multiple of the 32-element block falls back to F16, as convert_hf_to_gguf does.
///
/// RoPE: rope.freq_base is rope_theta (stored f32); linear scaling writes rope.scaling.type "linear" and its factor; the
/// engine's static NTK writes the equivalent base θ·f^(d/(d−2)) and context length ⌊L₀·f⌋ (see <see cref="HfConfig"/>).
/// NormHead is baked in: output.weight holds the row-normalised head, which is what the model multiplies by.
///
/// Baichuan: llama.cpp's "baichuan" architecture (convert_hf_to_gguf's BaichuanModel: W_pack split into attn_q/k/v,
/// q and k permuted as above, the "Meta AI original pth" data layout key). llama.cpp picks the position scheme from the
/// layer count — 32 layers: 7B, RoPE; 40 layers: 13B, ALiBi with max bias 8 — so a RoPE Baichuan of another depth is
/// written as "llama" (the same computation: Baichuan 7B is a Llama with packed q/k/v), and an ALiBi model must have 40
/// layers (no other llama.cpp architecture computes this block with ALiBi): anything else is refused by name.
/// </summary>
public static class GgufExport
{
    public const string Arch = "llama";
    public const string BaichuanArch = "baichuan";

    /// <summary>llama.cpp's Baichuan model types by layer count (llama-model.cpp: LLM_ARCH_BAICHUAN).</summary>
    public const int BaichuanRopeLayers = 32, BaichuanAlibiLayers = 40;

    /// <summary>The llama.cpp architecture a model is written as, and a note when it is not its family's own.</summary>
    public static (string Arch, string? Note) ArchitectureFor(LlamaConfig c)
    {
        if (c.Family != ModelFamily.Baichuan) return (Arch, null);
        if (c.Position == PositionEmbedding.Alibi)
            return c.NumLayers == BaichuanAlibiLayers ? (BaichuanArch, null)
                : throw new NotSupportedException($"llama.cpp runs a Baichuan model with ALiBi only as its 13B type, which it recognises by {BaichuanAlibiLayers} layers; " +
                    $"this model has {c.NumLayers} (llama.cpp would run it without positions): no GGUF is written");
        return c.NumLayers == BaichuanRopeLayers ? (BaichuanArch, null)
            : (Arch, $"llama.cpp's baichuan architecture takes a RoPE model only with {BaichuanRopeLayers} layers; this one has {c.NumLayers}, so it is written as \"llama\" (the same computation)");
    }

    /// <summary>llama.cpp's <c>llama_ftype</c> numbers.</summary>
    public static uint FileType(GgufQuant q) => q switch { GgufQuant.F32 => 0, GgufQuant.F16 => 1, GgufQuant.Q4_0 => 2, GgufQuant.Q8_0 => 7, _ => throw new ArgumentOutOfRangeException(nameof(q)) };

    static GgmlType Target(GgufQuant q) => q switch { GgufQuant.F32 => GgmlType.F32, GgufQuant.F16 => GgmlType.F16, GgufQuant.Q8_0 => GgmlType.Q8_0, _ => GgmlType.Q4_0 };

    /// <summary>The GGUF name of a Hugging Face Llama parameter.</summary>
    public static string TensorName(string hf)
    {
        if (hf == "model.embed_tokens.weight") return "token_embd.weight";
        if (hf == "model.norm.weight") return "output_norm.weight";
        if (hf == "lm_head.weight") return "output.weight";
        const string p = "model.layers.";
        if (hf.StartsWith(p, StringComparison.Ordinal))
        {
            int dot = hf.IndexOf('.', p.Length);
            string layer = hf[p.Length..dot], rest = hf[(dot + 1)..];
            string suffix = rest switch
            {
                "input_layernorm.weight" => "attn_norm.weight",
                "self_attn.q_proj.weight" => "attn_q.weight",
                "self_attn.k_proj.weight" => "attn_k.weight",
                "self_attn.v_proj.weight" => "attn_v.weight",
                "self_attn.o_proj.weight" => "attn_output.weight",
                "post_attention_layernorm.weight" => "ffn_norm.weight",
                "mlp.gate_proj.weight" => "ffn_gate.weight",
                "mlp.up_proj.weight" => "ffn_up.weight",
                "mlp.down_proj.weight" => "ffn_down.weight",
                _ => throw new NotSupportedException($"no GGUF name for parameter '{hf}'"),
            };
            return $"blk.{layer}.{suffix}";
        }
        throw new NotSupportedException($"no GGUF name for parameter '{hf}'");
    }

    /// <summary>
    /// Reorders the rows of a [heads·D, cols] q/k weight between Hugging Face's rotate-half layout and llama.cpp's
    /// interleaved one (toGguf) or back.
    /// </summary>
    public static float[] PermuteRows(ReadOnlySpan<float> w, int heads, int headDim, int cols, bool toGguf)
    {
        if (w.Length != (long)heads * headDim * cols) throw new ArgumentException($"expected {heads}×{headDim}×{cols} values, got {w.Length}");
        var y = new float[w.Length];
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
                for (int j = 0; j < 2; j++)
                {
                    int hfRow = h * headDim + j * half + i, ggRow = h * headDim + 2 * i + j;
                    int src = toGguf ? hfRow : ggRow, dst = toGguf ? ggRow : hfRow;
                    w.Slice(src * cols, cols).CopyTo(y.AsSpan(dst * cols, cols));
                }
        return y;
    }

    /// <summary>Writes the model as GGUF. The vocabulary is padded with UNUSED tokens up to the model's vocab_size;
    /// general.name is <paramref name="name"/>, else the run's name the model carries.</summary>
    public static GgufExportReport Write(LlamaModel model, GgufVocab vocab, string path, GgufQuant quant, string? name = null)
    {
        var c = model.Config;
        var (arch, archNote) = ArchitectureFor(c);
        vocab = vocab.PadTo(c.VocabSize);
        var w = new GgufWriter();
        string A(string key) => $"{arch}.{key}";
        double theta = c.RopeScaling == RopeScalingKind.Ntk ? HfConfig.NtkTheta(c.RopeTheta, c.RopeScalingFactor, c.HeadDim) : c.RopeTheta;
        int ctx = c.RopeScaling == RopeScalingKind.Ntk ? (int)Math.Floor(c.MaxPositionEmbeddings * c.RopeScalingFactor) : c.MaxPositionEmbeddings;

        w.Add("general.architecture", GgufValue.Str(arch));
        w.Add("general.type", GgufValue.Str("model"));
        name ??= c.NameOrPath;   // the run that made the model (config.json _name_or_path)
        if (!string.IsNullOrEmpty(name)) w.Add("general.name", GgufValue.Str(name));
        w.Add(A("block_count"), GgufValue.U32((uint)c.NumLayers));
        w.Add(A("context_length"), GgufValue.U32((uint)ctx));
        w.Add(A("embedding_length"), GgufValue.U32((uint)c.HiddenSize));
        w.Add(A("feed_forward_length"), GgufValue.U32((uint)c.IntermediateSize));
        w.Add(A("attention.head_count"), GgufValue.U32((uint)c.NumHeads));
        w.Add(A("attention.head_count_kv"), GgufValue.U32((uint)c.NumKvHeads));
        w.Add(A("rope.freq_base"), GgufValue.F32((float)theta));
        w.Add(A("attention.layer_norm_rms_epsilon"), GgufValue.F32(c.RmsNormEps));
        w.Add(A("attention.key_length"), GgufValue.U32((uint)c.HeadDim));
        w.Add(A("attention.value_length"), GgufValue.U32((uint)c.HeadDim));
        w.Add("general.file_type", GgufValue.U32(FileType(quant)));
        w.Add(A("vocab_size"), GgufValue.U32((uint)c.VocabSize));
        w.Add(A("rope.dimension_count"), GgufValue.U32((uint)c.HeadDim));
        if (arch == BaichuanArch) w.Add(A("tensor_data_layout"), GgufValue.Str("Meta AI original pth"));
        if (c.RopeScaling == RopeScalingKind.Linear)
        {
            w.Add(A("rope.scaling.type"), GgufValue.Str("linear"));
            w.Add(A("rope.scaling.factor"), GgufValue.F32((float)c.RopeScalingFactor));
        }
        w.Add("general.quantization_version", GgufValue.U32(2));
        w.Add("tokenizer.ggml.model", GgufValue.Str(vocab.Model));
        w.Add("tokenizer.ggml.pre", GgufValue.Str(vocab.Pre));
        w.Add("tokenizer.ggml.tokens", GgufValue.Strings(vocab.Tokens));
        if (vocab.Scores != null) w.Add("tokenizer.ggml.scores", GgufValue.Float32s(vocab.Scores));
        w.Add("tokenizer.ggml.token_type", GgufValue.Int32s(vocab.TokenTypes));
        if (vocab.Model == "gpt2") w.Add("tokenizer.ggml.merges", GgufValue.Strings(vocab.Merges));
        if (vocab.AddSpacePrefix is { } asp) w.Add("tokenizer.ggml.add_space_prefix", GgufValue.Bool(asp));
        void Id(string key, int? id)
        {
            if (id is not { } v) return;
            if (v < 0 || v >= c.VocabSize) throw new ArgumentException($"{key} {v} is outside the model's vocabulary of {c.VocabSize}");
            w.Add(key, GgufValue.U32((uint)v));
        }
        Id("tokenizer.ggml.bos_token_id", vocab.BosId);
        Id("tokenizer.ggml.eos_token_id", vocab.EosId);
        Id("tokenizer.ggml.unknown_token_id", vocab.UnkId);
        Id("tokenizer.ggml.padding_token_id", vocab.PadId);
        w.Add("tokenizer.ggml.add_bos_token", GgufValue.Bool(vocab.AddBos));
        w.Add("tokenizer.ggml.add_eos_token", GgufValue.Bool(vocab.AddEos));
        string? template = vocab.ChatTemplate ?? c.Hf?.ChatTemplate;
        if (template != null) w.Add("tokenizer.chat_template", GgufValue.Str(template));

        var reports = new List<GgufTensorReport>();
        var target = Target(quant);
        foreach (var (hf, t) in model.Parameters)
        {
            if (hf == "lm_head.weight" && c.TieWordEmbeddings) continue;
            string gname = TensorName(hf);
            long[] dims = t.Shape.Reverse().Select(d => (long)d).ToArray();
            GgmlType type = dims.Length == 1 ? GgmlType.F32 : target;
            string? note = null;
            if (dims.Length == 2 && dims[0] % GgmlQuants.BlockElements(type) != 0)
            {
                note = $"row length {dims[0]} is not a multiple of {GgmlQuants.BlockSize}: F16 instead of {type}";
                type = GgmlType.F16;
            }
            var tensor = t;
            GgmlType ty = type;
            w.AddTensor(gname, dims, ty, () => Encode(model, hf, tensor, ty));
            reports.Add(new GgufTensorReport(gname, type, dims, note));
        }
        w.Write(path);
        return new GgufExportReport(path, new FileInfo(path).Length, reports, vocab.PreNote) { Architecture = arch, ArchitectureNote = archNote };
    }

    /// <summary>A parameter as written: q/k permuted, the NormHead head normalised, encoded as type.</summary>
    static byte[] Encode(LlamaModel model, string hf, Tensor t, GgmlType type)
    {
        var c = model.Config;
        float[] v;
        if (hf == "lm_head.weight" && c.NormHead)
        {
            using var scope = new TensorScope();
            using var ng = Grad.NoGrad();
            v = F.RowNormalize(t).ToArray();
        }
        else v = t.ToArray();
        if (hf.EndsWith("self_attn.q_proj.weight", StringComparison.Ordinal)) v = PermuteRows(v, c.NumHeads, c.HeadDim, c.HiddenSize, toGguf: true);
        else if (hf.EndsWith("self_attn.k_proj.weight", StringComparison.Ordinal)) v = PermuteRows(v, c.NumKvHeads, c.HeadDim, c.HiddenSize, toGguf: true);
        if (type == GgmlType.F16)
            foreach (float x in v)
                if (float.IsFinite(x) && Half.IsInfinity((Half)x))
                    throw new ArgumentException($"parameter '{hf}' holds {x}, beyond fp16's range (±65504): export f32 or q8_0");
        var bytes = new byte[new GgufTensorInfo("", t.Shape.Reverse().Select(d => (long)d).ToArray(), type, 0).Bytes];
        GgmlQuants.Quantize(type, v, bytes);
        return bytes;
    }

    /// <summary>
    /// Reads a "llama" GGUF file (F32/F16/BF16/Q8_0/Q4_0 tensors) back into a model: tensors decoded to fp32, q/k rows
    /// returned to the Hugging Face layout, a missing output.weight meaning tied embeddings. Used to evaluate exported
    /// files in the engine (perplexity of the quantized weights).
    /// </summary>
    public static LlamaModel Load(string path, IBackend backend)
    {
        using var f = GgufFile.Open(path);
        LlamaConfig cfg;
        try { cfg = ReadConfig(f, path); }
        catch (OverflowException) { throw new InvalidDataException($"{path}: a {Arch}.* size does not fit a 32-bit integer"); }
        catch (ArgumentException e) { throw new InvalidDataException($"{path}: {ErrorText.OneLine(e.Message)}", e); }
        catch (InvalidDataException e) when (!e.Message.StartsWith(path, StringComparison.Ordinal)) { throw new InvalidDataException($"{path}: {ErrorText.OneLine(e.Message)}", e); }
        // the model is allocated only when the file holds at least as many values as the metadata describes
        long values = f.Tensors.Sum(t => t.Numel);
        if (cfg.ParameterCountEstimate() > values)
            throw new InvalidDataException($"{path}: metadata describes {cfg.ParameterCountEstimate():N0} parameters but the tensors hold only {values:N0} values");
        var model = new LlamaModel(cfg, backend);
        try
        {
            foreach (var (hf, t) in model.Parameters)
            {
                string g = TensorName(hf);
                var info = f[g];
                var want = t.Shape.Reverse().Select(d => (long)d).ToArray();
                if (!info.Dims.SequenceEqual(want))
                    throw new InvalidDataException($"{path}: tensor '{g}' has dims [{string.Join(", ", info.Dims)}], expected [{string.Join(", ", want)}]");
                float[] v = f.ReadFloat32(g);
                if (hf.EndsWith("self_attn.q_proj.weight", StringComparison.Ordinal)) v = PermuteRows(v, cfg.NumHeads, cfg.HeadDim, cfg.HiddenSize, toGguf: false);
                else if (hf.EndsWith("self_attn.k_proj.weight", StringComparison.Ordinal)) v = PermuteRows(v, cfg.NumKvHeads, cfg.HeadDim, cfg.HiddenSize, toGguf: false);
                model.Load(hf, v);
            }
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The model config a "llama" GGUF's metadata and token_embd.weight describe (validated).</summary>
    static LlamaConfig ReadConfig(GgufFile f, string path)
    {
        string arch = f.Get("general.architecture").AsString;
        if (arch != Arch && arch != BaichuanArch) throw new InvalidDataException($"{path}: architecture '{arch}' (only '{Arch}' and '{BaichuanArch}' are read)");
        int U(string key) => checked((int)f.Get($"{arch}.{key}").AsInteger);
        var emb = f["token_embd.weight"];
        if (emb.Dims.Length != 2) throw new InvalidDataException($"{path}: token_embd.weight has {emb.Dims.Length} dimensions, expected 2");
        if (f.Metadata.ContainsKey($"{arch}.rope.scaling.type") && f.Get($"{arch}.rope.scaling.type").AsString is var st && st is not ("linear" or "none"))
            throw new InvalidDataException($"{path}: rope scaling '{st}' is not supported");
        bool linear = f.Metadata.TryGetValue($"{arch}.rope.scaling.type", out var sv) && sv.AsString == "linear";
        int heads = U("attention.head_count");
        int layers = U("block_count");
        var position = PositionEmbedding.Rope;
        if (arch == BaichuanArch)
            position = layers switch
            {
                BaichuanRopeLayers => PositionEmbedding.Rope,
                BaichuanAlibiLayers => PositionEmbedding.Alibi,
                _ => throw new InvalidDataException($"{path}: a baichuan GGUF of {layers} layers has no position scheme in llama.cpp (32 layers: RoPE, 40: ALiBi)"),
            };
        var cfg = new LlamaConfig
        {
            VocabSize = checked((int)emb.Dims[1]),
            HiddenSize = U("embedding_length"),
            IntermediateSize = U("feed_forward_length"),
            NumLayers = layers,
            NumHeads = heads,
            NumKvHeads = f.Metadata.ContainsKey($"{arch}.attention.head_count_kv") ? U("attention.head_count_kv") : heads,
            MaxPositionEmbeddings = U("context_length"),
            RmsNormEps = (float)f.Get($"{arch}.attention.layer_norm_rms_epsilon").AsReal,
            RopeTheta = arch == BaichuanArch ? LlamaConfig.BaichuanRopeTheta : f.Metadata.TryGetValue($"{arch}.rope.freq_base", out var fb) ? fb.AsReal : 10000.0,
            RopeScaling = linear ? RopeScalingKind.Linear : RopeScalingKind.None,
            RopeScalingFactor = linear ? f.Get($"{arch}.rope.scaling.factor").AsReal : 1.0,
            TieWordEmbeddings = !f.Contains("output.weight"),
            Family = arch == BaichuanArch ? ModelFamily.Baichuan : ModelFamily.Llama,
            Position = position,
        };
        return cfg.Validate();
    }
}
