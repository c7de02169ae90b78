using Engine.Core;

namespace Engine.Model;

/// <summary>
/// Llama decoder (RMSNorm, RoPE, grouped-query causal attention, SwiGLU MLP, optional tied embeddings and NormHead).
/// Parameters carry Hugging Face LlamaForCausalLM names and layouts ([out, in] weights). Device-agnostic: every op
/// goes through the tensors' backend.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    /// <param name="stage">A pipeline stage (its layers, the embedding on the first, norm + head on the last); null = the
    /// whole model.</param>
    public LlamaModel(LlamaConfig config, IBackend backend, PipelineStage? stage = null)
    {
        Config = config.Validate();
        Backend = backend;
        Stage = stage ?? PipelineStage.Whole(Config.NumLayers);
        if (Stage.EndLayer > Config.NumLayers || Stage.FirstLayer < 0 || Stage.FirstLayer > Stage.EndLayer)
            throw new ArgumentException($"pipeline stage {Stage} does not fit a model of {Config.NumLayers} layers");
        Store = new ParameterStore(backend, Specs(Config, Stage));
    }

    /// <summary>The parameters in Hugging Face state-dict order with their shapes ([out, in] weights); for a pipeline
    /// stage only its own (a tied head on the last stage holds its own copy of model.embed_tokens.weight, kept equal to
    /// the first stage's by an all-reduce of their gradients).</summary>
    public static List<ParameterSpec> Specs(LlamaConfig config, PipelineStage? stage = null)
    {
        stage ??= PipelineStage.Whole(config.NumLayers);
        int c = config.HiddenSize, kv = config.NumKvHeads * config.HeadDim, f = config.IntermediateSize;
        var specs = new List<ParameterSpec>();
        void Add(string name, params int[] shape) => specs.Add(new ParameterSpec(name, shape));
        if (stage.IsFirst || (stage.IsLast && config.TieWordEmbeddings)) Add("model.embed_tokens.weight", config.VocabSize, c);
        for (int i = stage.FirstLayer; i < stage.EndLayer; i++)
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
        if (stage.IsLast)
        {
            Add("model.norm.weight", c);
            if (!config.TieWordEmbeddings) Add("lm_head.weight", config.VocabSize, c);
        }
        return specs;
    }

    /// <summary>Which part of the model this object holds (the whole model unless built for a pipeline stage).</summary>
    public PipelineStage Stage { get; }

    void RequireWhole(string what)
    {
        if (Stage.Count != 1) throw new InvalidOperationException($"{what} needs the whole model; this is pipeline stage {Stage.Index} of {Stage.Count}");
    }

    public LlamaConfig Config { get; private set; }
    public IBackend Backend { get; }

    /// <summary>The flat store every parameter (and its gradient) is a view of.</summary>
    public ParameterStore Store { get; }

    /// <summary>Use activation checkpointing per transformer block (recompute in backward, keep only block inputs).</summary>
    public bool CheckpointActivations { get; set; }

    /// <summary>Adds to the output of the Linear layers it targets (LoRA, <see cref="Lora.LoraAdapters"/>); null = none.</summary>
    public ILinearAdapter? Adapter { get; set; }

    /// <summary>x Wᵀ for the weight named <paramref name="weight"/>, plus the adapter's term where one targets it.</summary>
    Tensor Linear(Tensor x, string weight, Tensor? w = null)
    {
        var y = F.Linear(x, w ?? this[weight]);
        return Adapter?.Apply(weight, x, y) ?? y;
    }

    /// <summary>Parameters in a fixed order (the Hugging Face state-dict order).</summary>
    public IEnumerable<(string Name, Tensor Tensor)> Parameters => Store.Slots.Select(p => (p.Name, p.Tensor));

    public Tensor this[string name] => Store[name];

    public bool HasParameter(string name) => Store.Contains(name);

    public long ParameterCount => Store.Slots.Sum(p => p.Numel);

    /// <summary>Hugging Face's init: N(0, initializer_range) for linear and embedding weights, ones for norms. Each
    /// parameter draws from its own generator (the seed and its name), so a pipeline stage holding some of the
    /// parameters initializes them exactly as the whole model would.</summary>
    public void InitializeWeights(ulong seed)
    {
        foreach (var (name, t) in Parameters)
        {
            var rng = Rng.For(seed, name);
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

    /// <summary>
    /// Vocabulary expansion: grows embed_tokens (and an untied lm_head) to newVocab rows; new rows start at the mean
    /// of the old rows (so new tokens begin as an "average" token rather than noise). Existing rows are unchanged.
    /// The store is laid out anew (parameter tensors are new views: look them up by name afterwards).
    /// </summary>
    public void ResizeVocabulary(int newVocab)
    {
        int old = Config.VocabSize;
        if (newVocab < old) throw new ArgumentException($"vocabulary can only grow: {old} → {newVocab}");
        if (newVocab == old) return;
        var grown = Config with { VocabSize = newVocab };
        Store.Relayout(Specs(grown, Stage), fill: (name, before, after) =>
        {
            if (before == null) return;
            if (!IsEmbeddingOrHead(name)) { Backend.Copy(before, after); return; }
            int c = before.Shape[1];
            var host = before.ToArray();
            var rows = new float[(long)newVocab * c];
            host.CopyTo(rows, 0);
            var mean = new double[c];
            for (int r = 0; r < old; r++)
                for (int j = 0; j < c; j++) mean[j] += host[(long)r * c + j];
            for (int r = old; r < newVocab; r++)
                for (int j = 0; j < c; j++) rows[(long)r * c + j] = (float)(mean[j] / old);
            Backend.Upload(after, rows);
        });
        Config = grown;
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
        }
    }

    /// <summary>The stage-1 set: token embeddings and the LM head.</summary>
    public static bool IsEmbeddingOrHead(string name) => name is "model.embed_tokens.weight" or "lm_head.weight";

    /// <summary>Zeros every gradient (one fill of the store's gradient buffer).</summary>
    public void ZeroGrad() => Store.ZeroGrads();

    /// <summary>Final hidden states [B*T, C] for token ids [B*T] (int32), positions offset..offset+T-1.</summary>
    public Tensor Hidden(Tensor ids, int batch, int seqLen, int positionOffset = 0)
    {
        RequireWhole("Hidden");
        return F.RmsNorm(Blocks(Embed(ids, batch, seqLen, positionOffset), batch, seqLen, positionOffset), this["model.norm.weight"], Config.RmsNormEps);
    }

    Tensor Embed(Tensor ids, int batch, int seqLen, int positionOffset)
    {
        if (ids.Numel != (long)batch * seqLen) throw new ArgumentException($"ids hold {ids.Numel} tokens, expected batch {batch} × seq {seqLen}");
        if (seqLen + positionOffset > Config.MaxPositionEmbeddings * Math.Max(1.0, Config.RopeScalingFactor))
            throw new ArgumentException($"sequence of {seqLen + positionOffset} positions exceeds max_position_embeddings {Config.MaxPositionEmbeddings}");
        return F.Embedding(ids, this["model.embed_tokens.weight"]);
    }

    /// <summary>This model's (or stage's) transformer blocks over hidden states x [B*T, C].</summary>
    public Tensor Blocks(Tensor x, int batch, int seqLen, int positionOffset = 0)
    {
        for (int i = Stage.FirstLayer; i < Stage.EndLayer; i++)
        {
            int layer = i;
            Tensor Block(Tensor h) => TransformerBlock(h, layer, batch, seqLen, positionOffset);
            x = CheckpointActivations ? F.Checkpoint(Block, x, LayerParameters(layer)) : Block(x);
        }
        return x;
    }

    /// <summary>
    /// A pipeline stage's forward: token ids [B*T] on the first stage, the previous stage's hidden states [B*T, C]
    /// otherwise → hidden states [B*T, C] for the next stage. The last stage uses <see cref="StageLoss"/>.
    /// </summary>
    public Tensor StageForward(Tensor input, int batch, int seqLen)
    {
        if (Stage.IsLast) throw new InvalidOperationException("the last pipeline stage ends in the loss: use StageLoss");
        return Blocks(Stage.IsFirst ? Embed(input, batch, seqLen, 0) : input, batch, seqLen);
    }

    /// <summary>The last stage's forward: its blocks, the final norm, the head and the loss (as <see cref="Loss"/>).</summary>
    public (Tensor Loss, Tensor TokenLosses) StageLoss(Tensor input, Tensor targets, int batch, int seqLen, float normalizer, float zLoss = 0f) =>
        F.CrossEntropy(StageLogits(input, batch, seqLen), targets, normalizer, zLoss);

    /// <summary>The last stage's final (normed) hidden states [B*T, C] from its input (token ids when it is also the
    /// first stage, else the previous stage's hidden states): what a scalar head or the LM head reads.</summary>
    public Tensor StageHidden(Tensor input, int batch, int seqLen)
    {
        if (!Stage.IsLast) throw new InvalidOperationException($"pipeline stage {Stage.Index} of {Stage.Count} has no head");
        var x = Blocks(Stage.IsFirst ? Embed(input, batch, seqLen, 0) : input, batch, seqLen);
        return F.RmsNorm(x, this["model.norm.weight"], Config.RmsNormEps);
    }

    /// <summary>The last stage's logits [B*T, V] (see <see cref="StageHidden"/>).</summary>
    public Tensor StageLogits(Tensor input, int batch, int seqLen) => Linear(StageHidden(input, batch, seqLen), "lm_head.weight", HeadWeight());

    /// <summary>The LM head weight as used (tied embeddings, NormHead-normalised rows, or lm_head).</summary>
    public Tensor HeadWeight()
    {
        var w = Config.TieWordEmbeddings ? this["model.embed_tokens.weight"] : this["lm_head.weight"];
        return Config.NormHead ? F.RowNormalize(w) : w;
    }

    /// <summary>Logits [B*T, V].</summary>
    public Tensor Logits(Tensor ids, int batch, int seqLen, int positionOffset = 0) =>
        Linear(Hidden(ids, batch, seqLen, positionOffset), "lm_head.weight", HeadWeight());

    /// <summary>
    /// Loss over targets [B*T] (int32, -100 = ignored) divided by normalizer (the global count of valid targets
    /// across micro-batches), plus zLoss·lse². Returns the scalar loss and the per-token losses.
    /// </summary>
    public (Tensor Loss, Tensor TokenLosses) Loss(Tensor ids, Tensor targets, int batch, int seqLen, float normalizer, float zLoss = 0f)
    {
        RequireWhole("Loss");
        return StageLoss(ids, targets, batch, seqLen, normalizer, zLoss);
    }

    /// <summary>
    /// Logits [n, V] of n new tokens of one sequence, continuing from the cache (positions cache.Length..), and
    /// appends their keys and values to it. No gradients are recorded.
    /// </summary>
    public Tensor LogitsWithCache(Tensor ids, KvCache cache)
    {
        RequireWhole("generation");
        int n = (int)ids.Numel, offset = cache.Length;
        if (offset + n > cache.MaxLength) throw new ArgumentException($"KV cache full: {offset} + {n} tokens exceed its {cache.MaxLength} positions");
        var cfg = Config;
        using var ng = Engine.Core.Autograd.Grad.NoGrad();
        var x = F.Embedding(ids, this["model.embed_tokens.weight"]);
        for (int i = 0; i < cfg.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            var h = F.RmsNorm(x, this[p + "input_layernorm.weight"], cfg.RmsNormEps);
            var q = F.Rope(Linear(h, p + "self_attn.q_proj.weight"), cfg.Rope, 1, n, cfg.NumHeads, offset);
            var k = F.Rope(Linear(h, p + "self_attn.k_proj.weight"), cfg.Rope, 1, n, cfg.NumKvHeads, offset);
            var v = Linear(h, p + "self_attn.v_proj.weight");
            Backend.Copy(k, cache.K[i].Narrow0(offset, n));
            Backend.Copy(v, cache.V[i].Narrow0(offset, n));
            var a = Backend.Empty(q.Shape, q.DType);
            Backend.AttentionDecode(q, cache.K[i].Narrow0(0, offset + n), cache.V[i].Narrow0(0, offset + n), a, cfg.NumHeads, cfg.NumKvHeads, cfg.HeadDim, offset);
            x = F.Add(x, Linear(a, p + "self_attn.o_proj.weight"));
            var h2 = F.RmsNorm(x, this[p + "post_attention_layernorm.weight"], cfg.RmsNormEps);
            var m = F.SwiGlu(Linear(h2, p + "mlp.gate_proj.weight"), Linear(h2, p + "mlp.up_proj.weight"));
            x = F.Add(x, Linear(m, p + "mlp.down_proj.weight"));
        }
        cache.Length = offset + n;
        return Linear(F.RmsNorm(x, this["model.norm.weight"], cfg.RmsNormEps), "lm_head.weight", HeadWeight());
    }

    Tensor TransformerBlock(Tensor x, int i, int batch, int seqLen, int positionOffset)
    {
        string p = $"model.layers.{i}.";
        var cfg = Config;
        var h = F.RmsNorm(x, this[p + "input_layernorm.weight"], cfg.RmsNormEps);
        var q = Linear(h, p + "self_attn.q_proj.weight");
        var k = Linear(h, p + "self_attn.k_proj.weight");
        var v = Linear(h, p + "self_attn.v_proj.weight");
        q = F.Rope(q, cfg.Rope, batch, seqLen, cfg.NumHeads, positionOffset);
        k = F.Rope(k, cfg.Rope, batch, seqLen, cfg.NumKvHeads, positionOffset);
        var a = F.Attention(q, k, v, new AttentionDims(batch, seqLen, cfg.NumHeads, cfg.NumKvHeads, cfg.HeadDim));
        x = F.Add(x, Linear(a, p + "self_attn.o_proj.weight"));
        var h2 = F.RmsNorm(x, this[p + "post_attention_layernorm.weight"], cfg.RmsNormEps);
        var m = F.SwiGlu(Linear(h2, p + "mlp.gate_proj.weight"), Linear(h2, p + "mlp.up_proj.weight"));
        return F.Add(x, Linear(m, p + "mlp.down_proj.weight"));
    }

    /// <summary>The parameters of transformer block <paramref name="layer"/>.</summary>
    public List<Tensor> LayerParameters(int layer)
    {
        string p = $"model.layers.{layer}.";
        var list = Store.Slots.Where(s => s.Name.StartsWith(p, StringComparison.Ordinal)).Select(s => s.Tensor).ToList();
        if (Adapter != null) list.AddRange(Adapter.LayerParameters(layer));
        return list;
    }

    public void Dispose() => Store.Dispose();
}

/// <summary>
/// One stage of a pipeline-parallel model: transformer blocks [FirstLayer, EndLayer), the embedding on the first
/// stage, the final norm, head and loss on the last. <see cref="Whole"/> is the model in one piece.
/// </summary>
public sealed record PipelineStage(int Index, int Count, int FirstLayer, int EndLayer)
{
    public bool IsFirst => Index == 0;
    public bool IsLast => Index == Count - 1;
    public int Layers => EndLayer - FirstLayer;

    public static PipelineStage Whole(int layers) => new(0, 1, 0, layers);

    /// <summary>
    /// The stages of a layers-deep model over <paramref name="stages"/> stages: an explicit layer count per stage, or a
    /// balanced split (equal counts; the remainder goes to the earliest stages, so the last one — which also runs the
    /// head and the loss — gets the fewest).
    /// </summary>
    public static List<PipelineStage> Split(int layers, int stages, IReadOnlyList<int>? perStage = null)
    {
        if (stages < 1) throw new ArgumentException($"pipeline stages must be >= 1 (got {stages})");
        int[] counts;
        if (perStage is { Count: > 0 })
        {
            if (perStage.Count != stages) throw new ArgumentException($"the layer split names {perStage.Count} stages, the pipeline has {stages}");
            if (perStage.Any(c => c < 1) || perStage.Sum() != layers)
                throw new ArgumentException($"the layer split [{string.Join(", ", perStage)}] must give every stage at least one layer and sum to the model's {layers}");
            counts = perStage.ToArray();
        }
        else
        {
            if (layers < stages) throw new ArgumentException($"{stages} pipeline stages need at least {stages} layers, the model has {layers}");
            counts = Enumerable.Range(0, stages).Select(i => layers / stages + (i < layers % stages ? 1 : 0)).ToArray();
        }
        var result = new List<PipelineStage>();
        int at = 0;
        for (int i = 0; i < stages; i++) { result.Add(new PipelineStage(i, stages, at, at + counts[i])); at += counts[i]; }
        return result;
    }
}
