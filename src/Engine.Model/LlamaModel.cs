using Engine.Core;

namespace Engine.Model;

/// <summary>
/// Llama decoder (RMSNorm, RoPE, grouped-query causal attention, SwiGLU MLP, optional tied embeddings and NormHead).
/// Parameters carry Hugging Face LlamaForCausalLM names and layouts ([out, in] weights). Device-agnostic: every op
/// goes through the tensors' backend.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    readonly Dictionary<string, Tensor> parameters = new(StringComparer.Ordinal);
    readonly List<string> order = new();

    public LlamaModel(LlamaConfig config, IBackend backend)
    {
        Config = config.Validate();
        Backend = backend;
        int c = config.HiddenSize, kv = config.NumKvHeads * config.HeadDim, f = config.IntermediateSize;
        Add("model.embed_tokens.weight", config.VocabSize, c);
        for (int i = 0; i < config.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            Add(p + "input_layernorm.weight", c);
            Add(p + "self_attn.q_proj.weight", c, c);
            Add(p + "self_attn.k_proj.weight", kv, c);
            Add(p + "self_attn.v_proj.weight", kv, c);
            Add(p + "self_attn.o_proj.weight", c, c);
            Add(p + "post_attention_layernorm.weight", c);
            Add(p + "mlp.gate_proj.weight", f, c);
            Add(p + "mlp.up_proj.weight", f, c);
            Add(p + "mlp.down_proj.weight", c, f);
        }
        Add("model.norm.weight", c);
        if (!config.TieWordEmbeddings) Add("lm_head.weight", config.VocabSize, c);
    }

    public LlamaConfig Config { get; private set; }
    public IBackend Backend { get; }

    /// <summary>Use activation checkpointing per transformer block (recompute in backward, keep only block inputs).</summary>
    public bool CheckpointActivations { get; set; }

    /// <summary>Parameters in a fixed order (the Hugging Face state-dict order).</summary>
    public IEnumerable<(string Name, Tensor Tensor)> Parameters => order.Select(n => (n, parameters[n]));

    public Tensor this[string name] => parameters.TryGetValue(name, out var t) ? t
        : throw new KeyNotFoundException($"no parameter named '{name}'");

    public bool HasParameter(string name) => parameters.ContainsKey(name);

    public long ParameterCount => parameters.Values.Sum(t => t.Numel);

    void Add(string name, params int[] shape)
    {
        var t = Backend.Zeros(shape).Keep();
        t.Name = name; t.RequiresGrad = true; t.IsParameter = true;
        parameters[name] = t; order.Add(name);
    }

    /// <summary>Hugging Face's init: N(0, initializer_range) for linear and embedding weights, ones for norms.</summary>
    public void InitializeWeights(ulong seed)
    {
        var rng = new Rng(seed);
        foreach (var (name, t) in Parameters)
        {
            var host = new float[t.Numel];
            if (name.EndsWith("norm.weight", StringComparison.Ordinal) || name.EndsWith("layernorm.weight", StringComparison.Ordinal)) host.AsSpan().Fill(1f);
            else rng.FillNormal(host, 0, Config.InitializerRange);
            Backend.Upload(t, host);
        }
    }

    /// <summary>Replaces a parameter's values (e.g. from a checkpoint), checking the shape.</summary>
    public void Load(string name, ReadOnlySpan<float> values)
    {
        var t = this[name];
        if (values.Length != t.Numel) throw new ArgumentException($"{name}: expected {t.Numel} values ({Shape.Format(t.Shape)}), got {values.Length}");
        Backend.Upload(t, values);
    }

    /// <summary>Swaps in a resized parameter (vocabulary expansion); the old tensor is disposed.</summary>
    public void Replace(string name, Tensor t)
    {
        if (!parameters.TryGetValue(name, out var old)) throw new KeyNotFoundException($"no parameter named '{name}'");
        t.Keep(); t.Name = name; t.IsParameter = true; t.Frozen = old.Frozen; t.RequiresGrad = !old.Frozen;
        old.Grad?.Dispose();
        old.Dispose();
        parameters[name] = t;
    }

    /// <summary>
    /// Vocabulary expansion: grows embed_tokens (and an untied lm_head) to newVocab rows; new rows start at the mean
    /// of the old rows (so new tokens begin as an "average" token rather than noise). Existing rows are unchanged.
    /// </summary>
    public void ResizeVocabulary(int newVocab)
    {
        int old = Config.VocabSize;
        if (newVocab < old) throw new ArgumentException($"vocabulary can only grow: {old} → {newVocab}");
        if (newVocab == old) return;
        foreach (var name in new[] { "model.embed_tokens.weight", "lm_head.weight" })
        {
            if (!HasParameter(name)) continue;
            var t = this[name];
            int c = t.Shape[1];
            var host = t.ToArray();
            var grown = new float[(long)newVocab * c];
            host.CopyTo(grown, 0);
            var mean = new double[c];
            for (int r = 0; r < old; r++)
                for (int j = 0; j < c; j++) mean[j] += host[(long)r * c + j];
            for (int r = old; r < newVocab; r++)
                for (int j = 0; j < c; j++) grown[(long)r * c + j] = (float)(mean[j] / old);
            var nt = Backend.Empty([newVocab, c]);
            Backend.Upload(nt, grown);
            Replace(name, nt);
        }
        Config = Config with { VocabSize = newVocab };
    }

    /// <summary>Context extension: RoPE scaling (linear or NTK) and a longer maximum length from now on.</summary>
    public void SetRopeScaling(RopeScalingKind kind, double factor, int maxPositions)
    {
        Config = (Config with { RopeScaling = kind, RopeScalingFactor = factor, MaxPositionEmbeddings = maxPositions }).Validate();
    }

    /// <summary>Trains only the named parameters (stage 1 of vocabulary expansion: embeddings + LM head); null unfreezes all.</summary>
    public void SetTrainable(Func<string, bool>? trainable)
    {
        foreach (var (name, t) in Parameters)
        {
            bool on = trainable == null || trainable(name);
            t.Frozen = !on;
            t.RequiresGrad = on;
            if (!on && t.Grad != null) { t.Grad.Dispose(); t.Grad = null; }
        }
    }

    /// <summary>The stage-1 set: token embeddings and the LM head.</summary>
    public static bool IsEmbeddingOrHead(string name) => name is "model.embed_tokens.weight" or "lm_head.weight";

    public void ZeroGrad()
    {
        foreach (var t in parameters.Values)
            if (t.Grad != null) Backend.Fill(t.Grad, 0f);
    }

    /// <summary>Final hidden states [B*T, C] for token ids [B*T] (int32), positions offset..offset+T-1.</summary>
    public Tensor Hidden(Tensor ids, int batch, int seqLen, int positionOffset = 0)
    {
        if (ids.Numel != (long)batch * seqLen) throw new ArgumentException($"ids hold {ids.Numel} tokens, expected batch {batch} × seq {seqLen}");
        if (seqLen + positionOffset > Config.MaxPositionEmbeddings * Math.Max(1.0, Config.RopeScalingFactor))
            throw new ArgumentException($"sequence of {seqLen + positionOffset} positions exceeds max_position_embeddings {Config.MaxPositionEmbeddings}");
        var x = F.Embedding(ids, this["model.embed_tokens.weight"]);
        for (int i = 0; i < Config.NumLayers; i++)
        {
            int layer = i;
            Tensor Block(Tensor h) => TransformerBlock(h, layer, batch, seqLen, positionOffset);
            x = CheckpointActivations ? F.Checkpoint(Block, x) : Block(x);
        }
        return F.RmsNorm(x, this["model.norm.weight"], Config.RmsNormEps);
    }

    /// <summary>The LM head weight as used (tied embeddings, NormHead-normalised rows, or lm_head).</summary>
    public Tensor HeadWeight()
    {
        var w = Config.TieWordEmbeddings ? this["model.embed_tokens.weight"] : this["lm_head.weight"];
        return Config.NormHead ? F.RowNormalize(w) : w;
    }

    /// <summary>Logits [B*T, V].</summary>
    public Tensor Logits(Tensor ids, int batch, int seqLen, int positionOffset = 0) =>
        F.Linear(Hidden(ids, batch, seqLen, positionOffset), HeadWeight());

    /// <summary>
    /// Loss over targets [B*T] (int32, -100 = ignored) divided by normalizer (the global count of valid targets
    /// across micro-batches), plus zLoss·lse². Returns the scalar loss and the per-token losses.
    /// </summary>
    public (Tensor Loss, Tensor TokenLosses) Loss(Tensor ids, Tensor targets, int batch, int seqLen, float normalizer, float zLoss = 0f)
    {
        var logits = Logits(ids, batch, seqLen);
        return F.CrossEntropy(logits, targets, normalizer, zLoss);
    }

    /// <summary>
    /// Logits [n, V] of n new tokens of one sequence, continuing from the cache (positions cache.Length..), and
    /// appends their keys and values to it. No gradients are recorded.
    /// </summary>
    public Tensor LogitsWithCache(Tensor ids, KvCache cache)
    {
        int n = (int)ids.Numel, offset = cache.Length;
        if (offset + n > cache.MaxLength) throw new ArgumentException($"KV cache full: {offset} + {n} tokens exceed its {cache.MaxLength} positions");
        var cfg = Config;
        using var ng = Engine.Core.Autograd.Grad.NoGrad();
        var x = F.Embedding(ids, this["model.embed_tokens.weight"]);
        for (int i = 0; i < cfg.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            var h = F.RmsNorm(x, this[p + "input_layernorm.weight"], cfg.RmsNormEps);
            var q = F.Rope(F.Linear(h, this[p + "self_attn.q_proj.weight"]), cfg.Rope, 1, n, cfg.NumHeads, offset);
            var k = F.Rope(F.Linear(h, this[p + "self_attn.k_proj.weight"]), cfg.Rope, 1, n, cfg.NumKvHeads, offset);
            var v = F.Linear(h, this[p + "self_attn.v_proj.weight"]);
            Backend.Copy(k, cache.K[i].Narrow0(offset, n));
            Backend.Copy(v, cache.V[i].Narrow0(offset, n));
            var a = Backend.Empty(q.Shape, q.DType);
            Backend.AttentionDecode(q, cache.K[i].Narrow0(0, offset + n), cache.V[i].Narrow0(0, offset + n), a, cfg.NumHeads, cfg.NumKvHeads, cfg.HeadDim, offset);
            x = F.Add(x, F.Linear(a, this[p + "self_attn.o_proj.weight"]));
            var h2 = F.RmsNorm(x, this[p + "post_attention_layernorm.weight"], cfg.RmsNormEps);
            var m = F.SwiGlu(F.Linear(h2, this[p + "mlp.gate_proj.weight"]), F.Linear(h2, this[p + "mlp.up_proj.weight"]));
            x = F.Add(x, F.Linear(m, this[p + "mlp.down_proj.weight"]));
        }
        cache.Length = offset + n;
        return F.Linear(F.RmsNorm(x, this["model.norm.weight"], cfg.RmsNormEps), HeadWeight());
    }

    Tensor TransformerBlock(Tensor x, int i, int batch, int seqLen, int positionOffset)
    {
        string p = $"model.layers.{i}.";
        var cfg = Config;
        var h = F.RmsNorm(x, this[p + "input_layernorm.weight"], cfg.RmsNormEps);
        var q = F.Linear(h, this[p + "self_attn.q_proj.weight"]);
        var k = F.Linear(h, this[p + "self_attn.k_proj.weight"]);
        var v = F.Linear(h, this[p + "self_attn.v_proj.weight"]);
        q = F.Rope(q, cfg.Rope, batch, seqLen, cfg.NumHeads, positionOffset);
        k = F.Rope(k, cfg.Rope, batch, seqLen, cfg.NumKvHeads, positionOffset);
        var a = F.Attention(q, k, v, new AttentionDims(batch, seqLen, cfg.NumHeads, cfg.NumKvHeads, cfg.HeadDim));
        x = F.Add(x, F.Linear(a, this[p + "self_attn.o_proj.weight"]));
        var h2 = F.RmsNorm(x, this[p + "post_attention_layernorm.weight"], cfg.RmsNormEps);
        var m = F.SwiGlu(F.Linear(h2, this[p + "mlp.gate_proj.weight"]), F.Linear(h2, this[p + "mlp.up_proj.weight"]));
        return F.Add(x, F.Linear(m, this[p + "mlp.down_proj.weight"]));
    }

    public void Dispose()
    {
        foreach (var t in parameters.Values) { t.Grad?.Dispose(); t.Dispose(); }
        parameters.Clear();
    }
}
