using Engine.Core;

namespace Engine.Model;

/// <summary>
/// Llama decoder (RMSNorm, RoPE or ALiBi positions, grouped-query causal attention, SwiGLU MLP, optional tied
/// embeddings and NormHead). Parameters carry Hugging Face LlamaForCausalLM names and layouts ([out, in] weights)
/// whatever the family: other families (Baichuan 2's packed W_pack) are mapped at the file boundary
/// (<see cref="IO.HfLayout"/>). Device-agnostic: every op goes through the tensors' backend.
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
        if (Stage.Chunks.Any(c => c.End > Config.NumLayers || c.First < 0 || c.First > c.End))
            throw new ArgumentException($"pipeline stage {Stage} does not fit a model of {Config.NumLayers} layers");
        Store = new ParameterStore(backend, Specs(Config, Stage));
        Store.DefineUnits(Units(Config, Stage));
    }

    /// <summary>
    /// The model's units in store order (<see cref="ParameterUnit"/>): the token embedding ("model.embed_tokens"), each
    /// transformer block ("model.layers.N"), the final norm ("model.norm") and an untied head ("lm_head"). A tied head
    /// uses the embedding's unit again. The forward calls <see cref="ParameterStore.Hooks"/> around each use.
    /// </summary>
    public static List<ParameterUnit> Units(LlamaConfig config, PipelineStage? stage = null)
    {
        var specs = Specs(config, stage);
        return specs.GroupBy(s => UnitOf(s.Name)).Select(g => new ParameterUnit(g.Key, g.Select(s => s.Name).ToList())).ToList();
    }

    static string UnitOf(string parameter) => parameter.StartsWith("model.layers.", StringComparison.Ordinal)
        ? parameter[..parameter.IndexOf('.', "model.layers.".Length)] : parameter[..parameter.LastIndexOf('.')];

    int UnitIndex(string parameter)
    {
        var (name, units) = (UnitOf(parameter), Store.Units);
        for (int u = 0; u < units.Count; u++) if (units[u].Name == name) return u;
        throw new InvalidOperationException($"no unit of pipeline stage {Stage.Index} of {Stage.Count} holds {parameter}");
    }

    /// <summary>Runs <paramref name="body"/> as a use of the unit holding <paramref name="parameter"/>, between the store's
    /// hooks: before/after forward now, before/after backward by marks on the tape (recorded after and before the body's
    /// ops: backward runs the tape in reverse). Without hooks, just the body.</summary>
    T InUnit<T>(string parameter, Func<T> body)
    {
        if (Store.Hooks is not { } hooks) return body();
        int unit = UnitIndex(parameter);
        hooks.BeforeForward(unit);
        T y;
        try
        {
            F.OnBackward(() => hooks.AfterBackward(unit));
            y = body();
        }
        finally { hooks.AfterForward(unit); }
        F.OnBackward(() => hooks.BeforeBackward(unit));
        return y;
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
        foreach (int i in stage.LayerIndices)
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

    /// <summary>Activation recompute per transformer block (<see cref="RecomputeMode"/>): none, full (keep only each
    /// block's input, recompute the block in backward) or selective (recompute the attention core and SwiGLU).</summary>
    public RecomputeMode Recompute { get; set; }

    /// <summary>Full activation recompute on or off (the older switch: true = <see cref="RecomputeMode.Full"/>).</summary>
    public bool CheckpointActivations
    {
        get => Recompute == RecomputeMode.Full;
        set => Recompute = value ? RecomputeMode.Full : RecomputeMode.None;
    }

    /// <summary>Adds to the output of the Linear layers it targets (LoRA, <see cref="Lora.LoraAdapters"/>); null = none.</summary>
    public ILinearAdapter? Adapter { get; set; }

    /// <summary>How the model runs across ranks (<see cref="ParallelPlan"/>: tensor, sequence and context parallelism),
    /// applied by <see cref="Parallelize"/>; <see cref="ParallelPlan.None"/> for one device.</summary>
    public ParallelPlan Plan { get; private set; } = ParallelPlan.None;

    /// <summary>
    /// Applies a parallel plan (TorchTitan's parallelize_module): the store is laid out anew with this rank's slice of
    /// every parameter, cut from the whole values it holds now, and the forward runs the plan's hooks at its module
    /// boundaries. Parameters are new views afterwards: look them up by name.
    /// </summary>
    public void Parallelize(ParallelPlan plan)
    {
        if (!ReferenceEquals(Plan, ParallelPlan.None)) throw new InvalidOperationException("the model already runs a parallel plan");
        if (plan.ShardsParameters)
            Store.Relayout(Store.Specs().Select(p => new ParameterSpec(p.Name, plan.LocalShape(p.Name, p.Shape))).ToList(), fill: (name, before, after) =>
                Backend.Upload(after, plan.LocalValues(name, before!.Shape, before.ToArray())));
        Plan = plan;
    }

    void RequireUnsharded(string what)
    {
        if (Plan.ShardsParameters) throw new InvalidOperationException($"{what} needs whole parameters on this rank; the model's are split across tensor-parallel ranks");
    }

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
            // drawn whole, so a tensor-parallel rank's slice holds what the whole model's does
            var whole = Specs(Config, Stage).First(p => p.Name == name).Shape;
            var host = new float[Shape.Numel(whole)];
            if (name.EndsWith("norm.weight", StringComparison.Ordinal) || name.EndsWith("layernorm.weight", StringComparison.Ordinal)) host.AsSpan().Fill(1f);
            else rng.FillNormal(host, 0, Config.InitializerRange);
            Backend.Upload(t, Plan.LocalValues(name, whole, host));
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
        RequireUnsharded("vocabulary growth");
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

    /// <summary>Attaches the tokenizer files, special ids and run name every later save writes (see <see cref="IO.ModelArtifacts"/>).</summary>
    public void Attach(IO.ModelArtifacts artifacts)
    {
        ArgumentNullException.ThrowIfNull(artifacts);
        Config = artifacts.ApplyTo(Config).Validate();
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
        var layout = SequenceLayout.Contiguous(batch, seqLen, positionOffset);
        return FinalNorm(Blocks(Embed(ids, layout), layout));
    }

    Tensor FinalNorm(Tensor x) => InUnit("model.norm.weight", () => F.RmsNorm(x, this["model.norm.weight"], Config.RmsNormEps));

    Tensor Embed(Tensor ids, SequenceLayout layout)
    {
        if (ids.Numel != layout.Tokens) throw new ArgumentException($"ids hold {ids.Numel} tokens, expected {layout.Tokens} ({layout})");
        int end = layout.End;
        // ALiBi has no position table: inputs past the trained length are evaluated as they are (its length extrapolation)
        if (Config.Position == PositionEmbedding.Rope && end > Config.MaxPositionEmbeddings * Math.Max(1.0, Config.RopeScalingFactor))
            throw new ArgumentException($"sequence of {end} positions exceeds max_position_embeddings {Config.MaxPositionEmbeddings}");
        return InUnit("model.embed_tokens.weight", () => Plan.Leave("model.embed_tokens", Plan.Embedding(ids, this["model.embed_tokens.weight"])));
    }

    /// <summary>This model's (or stage's) transformer blocks over hidden states x [B*T, C].</summary>
    public Tensor Blocks(Tensor x, int batch, int seqLen, int positionOffset = 0) => Blocks(x, SequenceLayout.Contiguous(batch, seqLen, positionOffset));

    /// <summary>The transformer blocks of this stage's model chunk <paramref name="chunk"/> (−1: all of them, in order)
    /// over hidden states of tokens laid out as <paramref name="layout"/>.</summary>
    public Tensor Blocks(Tensor x, SequenceLayout layout, int chunk = -1)
    {
        foreach (int i in chunk < 0 ? Stage.LayerIndices : Stage.ChunkLayers(chunk))
        {
            int layer = i;
            Tensor Block(Tensor h) => TransformerBlock(h, layer, layout);
            var input = x;
            x = InUnit($"model.layers.{layer}.input_layernorm.weight",
                () => Recompute == RecomputeMode.Full ? F.Checkpoint(Block, input, LayerParameters(layer)) : Block(input));
        }
        return x;
    }

    /// <summary>
    /// A pipeline stage's forward: token ids [B*T] on the first stage, the previous stage's hidden states [B*T, C]
    /// otherwise → hidden states [B*T, C] for the next stage. The last stage uses <see cref="StageLoss"/>.
    /// </summary>
    public Tensor StageForward(Tensor input, int batch, int seqLen) => StageForward(input, SequenceLayout.Contiguous(batch, seqLen));

    /// <summary>As <see cref="StageForward(Tensor, int, int)"/> for model chunk <paramref name="chunk"/> of this stage
    /// (the interleaved schedule's virtual stages; 0 otherwise), tokens laid out as <paramref name="layout"/>.</summary>
    public Tensor StageForward(Tensor input, SequenceLayout layout, int chunk = 0)
    {
        if (Stage.IsLast && chunk == Stage.ChunkCount - 1) throw new InvalidOperationException("the last pipeline stage ends in the loss: use StageLoss");
        return Blocks(Stage.IsFirst && chunk == 0 ? Embed(input, layout) : input, layout, chunk);
    }

    /// <summary>The last stage's forward: its blocks, the final norm, the head and the loss (as <see cref="Loss"/>).</summary>
    public (Tensor Loss, Tensor TokenLosses) StageLoss(Tensor input, Tensor targets, int batch, int seqLen, float normalizer, float zLoss = 0f, float maxZLoss = 0f) =>
        StageLoss(input, targets, SequenceLayout.Contiguous(batch, seqLen), normalizer, zLoss, maxZLoss);

    /// <summary>As <see cref="StageLoss(Tensor, Tensor, int, int, float, float, float)"/> for tokens laid out as <paramref name="layout"/>
    /// (the plan's loss: vocabulary-parallel under tensor parallelism).</summary>
    public (Tensor Loss, Tensor TokenLosses) StageLoss(Tensor input, Tensor targets, SequenceLayout layout, float normalizer, float zLoss = 0f, float maxZLoss = 0f) =>
        Plan.CrossEntropy(StageLogits(input, layout), targets, normalizer, zLoss, maxZLoss);

    /// <summary>The max-z loss weight training uses: the config's z_loss_weight (Baichuan 2), as its modeling code adds it
    /// to the training loss. Evaluation passes none (per-token losses stay plain cross-entropy).</summary>
    public float TrainingMaxZLoss => (float)Config.MaxZLossWeight;

    /// <summary>The last stage's final (normed) hidden states [B*T, C] from its input (token ids when it is also the
    /// first stage, else the previous stage's hidden states): what a scalar head or the LM head reads.</summary>
    public Tensor StageHidden(Tensor input, int batch, int seqLen) => StageHidden(input, SequenceLayout.Contiguous(batch, seqLen));

    public Tensor StageHidden(Tensor input, SequenceLayout layout)
    {
        if (!Stage.IsLast) throw new InvalidOperationException($"pipeline stage {Stage.Index} of {Stage.Count} has no head");
        int chunk = Stage.ChunkCount - 1;
        var x = Blocks(Stage.IsFirst && chunk == 0 ? Embed(input, layout) : input, layout, chunk);
        return FinalNorm(x);
    }

    /// <summary>The last stage's logits [B*T, V] (see <see cref="StageHidden(Tensor, int, int)"/>; a tensor-parallel rank's
    /// are its vocabulary rows).</summary>
    public Tensor StageLogits(Tensor input, int batch, int seqLen) => StageLogits(input, SequenceLayout.Contiguous(batch, seqLen));

    public Tensor StageLogits(Tensor input, SequenceLayout layout) => Head(StageHidden(input, layout));

    /// <summary>The LM head weight as used (tied embeddings, NormHead-normalised rows, or lm_head).</summary>
    public Tensor HeadWeight()
    {
        var w = Config.TieWordEmbeddings ? this["model.embed_tokens.weight"] : this["lm_head.weight"];
        return Config.NormHead ? F.RowNormalize(w) : w;
    }

    /// <summary>The LM head over final hidden states (a use of the head's unit: lm_head, or the tied embedding).</summary>
    Tensor Head(Tensor h) => InUnit(Config.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight",
        () => Plan.Leave("lm_head", Linear(Plan.Enter("lm_head", h), "lm_head.weight", HeadWeight())));

    /// <summary>Logits [B*T, V].</summary>
    public Tensor Logits(Tensor ids, int batch, int seqLen, int positionOffset = 0)
    {
        RequireUnsharded("Logits");
        return Head(Hidden(ids, batch, seqLen, positionOffset));
    }

    /// <summary>
    /// Loss over targets [B*T] (int32, -100 = ignored) divided by normalizer (the global count of valid targets
    /// across micro-batches), plus zLoss·lse² and maxZLoss·max(logits)². Returns the scalar loss and the per-token losses.
    /// </summary>
    public (Tensor Loss, Tensor TokenLosses) Loss(Tensor ids, Tensor targets, int batch, int seqLen, float normalizer, float zLoss = 0f, float maxZLoss = 0f)
    {
        RequireWhole("Loss");
        return StageLoss(ids, targets, batch, seqLen, normalizer, zLoss, maxZLoss);
    }

    /// <summary>
    /// Logits [n, V] of n new tokens of one sequence, continuing from the cache (positions cache.Length..), and
    /// appends their keys and values to it. No gradients are recorded.
    /// </summary>
    public Tensor LogitsWithCache(Tensor ids, KvCache cache)
    {
        RequireWhole("generation");
        if (!ReferenceEquals(Plan, ParallelPlan.None)) throw new InvalidOperationException("generation needs the whole model on one rank; this one runs a tensor- or context-parallel plan");
        int n = (int)ids.Numel, offset = cache.Length;
        if (offset + n > cache.MaxLength) throw new ArgumentException($"KV cache full: {offset} + {n} tokens exceed its {cache.MaxLength} positions");
        var cfg = Config;
        using var ng = Engine.Core.Autograd.Grad.NoGrad();
        var x = InUnit("model.embed_tokens.weight", () => F.Embedding(ids, this["model.embed_tokens.weight"]));
        for (int i = 0; i < cfg.NumLayers; i++)
            x = InUnit($"model.layers.{i}.input_layernorm.weight", () => DecodeBlock(x, i, n, offset, cache));
        cache.Length = offset + n;
        return Head(FinalNorm(x));
    }

    /// <summary>One block of <see cref="LogitsWithCache"/> (no gradients).</summary>
    Tensor DecodeBlock(Tensor x, int i, int n, int offset, KvCache cache)
    {
        var cfg = Config;
        string p = $"model.layers.{i}.";
        var h = F.RmsNorm(x, this[p + "input_layernorm.weight"], cfg.RmsNormEps);
        var q = Linear(h, p + "self_attn.q_proj.weight");
        var k = Linear(h, p + "self_attn.k_proj.weight");
        var v = Linear(h, p + "self_attn.v_proj.weight");
        if (cfg.Position == PositionEmbedding.Rope)
        {
            q = F.Rope(q, cfg.Rope, 1, n, cfg.NumHeads, offset);
            k = F.Rope(k, cfg.Rope, 1, n, cfg.NumKvHeads, offset);
        }
        Backend.Copy(k, cache.K[i].Narrow0(offset, n));
        Backend.Copy(v, cache.V[i].Narrow0(offset, n));
        var a = Backend.Empty(q.Shape, q.DType);
        Backend.AttentionDecode(q, cache.K[i].Narrow0(0, offset + n), cache.V[i].Narrow0(0, offset + n), a, cfg.NumHeads, cfg.NumKvHeads, cfg.HeadDim, offset,
            cfg.AlibiMaxBias);
        x = F.Add(x, Linear(a, p + "self_attn.o_proj.weight"));
        var h2 = F.RmsNorm(x, this[p + "post_attention_layernorm.weight"], cfg.RmsNormEps);
        var m = F.SwiGlu(Linear(h2, p + "mlp.gate_proj.weight"), Linear(h2, p + "mlp.up_proj.weight"));
        return F.Add(x, Linear(m, p + "mlp.down_proj.weight"));
    }

    Tensor TransformerBlock(Tensor x, int i, SequenceLayout layout)
    {
        string p = $"model.layers.{i}.";
        var cfg = Config;
        var h = Plan.Enter(p + "self_attn", F.RmsNorm(x, this[p + "input_layernorm.weight"], cfg.RmsNormEps));
        // the attention core (RoPE + attention) and SwiGLU: under selective recompute their outputs and intermediates
        // are dropped once the next GEMM has read them and recomputed when its backward needs them
        bool selective = Recompute == RecomputeMode.Selective;
        Tensor OProj(Tensor a) => Linear(a, p + "self_attn.o_proj.weight");
        Tensor attention;
        bool rope = cfg.Position == PositionEmbedding.Rope;
        // ALiBi's bias depends on relative positions only: a positionOffset changes nothing (the engine's full-sequence
        // attention starts every sequence at 0; decoding continues with the cache's positions). The fused q|k|v path
        // applies RoPE in place, so an ALiBi model runs the separate projections; so does a parallel plan (its
        // attention may join several sequence blocks, and its heads are the rank's share).
        if (rope && layout.Blocks.Count == 1 && Fused(p, "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight") is { } qkvWeights)
        {
            var b = layout.Single;
            var dims = new AttentionDims(b.Batch, b.SeqLen, cfg.NumHeads, cfg.NumKvHeads, cfg.HeadDim);
            var qkv = F.FusedLinear(h, qkvWeights);   // one GEMM for q|k|v
            Tensor Core(Tensor[] t) => F.FusedQkvAttention(t[0], cfg.Rope, dims, b.Offset);
            attention = selective ? F.Recompute(Core, OProj, qkv) : OProj(Core([qkv]));
        }
        else
        {
            var q = Linear(h, p + "self_attn.q_proj.weight");
            var k = Linear(h, p + "self_attn.k_proj.weight");
            var v = Linear(h, p + "self_attn.v_proj.weight");
            // the heads this rank computes are those its projections hold (all of them on one device; a tensor-parallel
            // rank's share): read from the widths, as TorchTitan's view(bs, seqlen, -1, head_dim); ALiBi's slopes are
            // those of the rank's heads among all of them
            int heads = q.Shape[1] / cfg.HeadDim, kvHeads = k.Shape[1] / cfg.HeadDim;
            var b = layout.Blocks[0];
            var dims = new AttentionDims(b.Batch, b.SeqLen, heads, kvHeads, cfg.HeadDim, cfg.AlibiMaxBias)
            { HeadOffset = Plan.HeadOffset(heads), TotalHeads = cfg.NumHeads };
            Tensor Core(Tensor[] t) => Plan.Attention(rope ? F.Rope(t[0], cfg.Rope, layout, heads) : t[0],
                rope ? F.Rope(t[1], cfg.Rope, layout, kvHeads) : t[1], t[2], layout, dims);
            attention = selective ? F.Recompute(Core, OProj, q, k, v) : OProj(Core([q, k, v]));
        }
        // residual add + post-attention norm in one op (one kernel on a GPU; the same values as Add then RmsNorm)
        (x, var h2) = F.AddRmsNorm(x, Plan.Leave(p + "self_attn", attention), this[p + "post_attention_layernorm.weight"], cfg.RmsNormEps);
        h2 = Plan.Enter(p + "mlp", h2);
        Tensor Down(Tensor m) => Linear(m, p + "mlp.down_proj.weight");
        if (Fused(p, "mlp.gate_proj.weight", "mlp.up_proj.weight") is { } guWeights)
        {
            var gateUp = F.FusedLinear(h2, guWeights);   // one GEMM for gate|up
            Tensor Mlp(Tensor[] t) => F.FusedSwiGlu(t[0]);
            return F.Add(x, Plan.Leave(p + "mlp", selective ? F.Recompute(Mlp, Down, gateUp) : Down(Mlp([gateUp]))));
        }
        else
        {
            var gate = Linear(h2, p + "mlp.gate_proj.weight");
            var up = Linear(h2, p + "mlp.up_proj.weight");
            Tensor Mlp(Tensor[] t) => F.SwiGlu(t[0], t[1]);
            return F.Add(x, Plan.Leave(p + "mlp", selective ? F.Recompute(Mlp, Down, gate, up) : Down(Mlp([gate, up]))));
        }
    }

    /// <summary>The weights to run as one GEMM (F.FusedLinear), or null: the backend fuses projections, the model runs on
    /// one device (a parallel plan runs the separate projections: a tensor rank's slices of q, k and v, or of gate and
    /// up, are separate column-parallel GEMMs), no adapter adds a term to any of them, and they are adjacent in the store
    /// (no bucket boundary between them).</summary>
    Tensor[]? Fused(string prefix, params string[] names)
    {
        if (!Backend.FusesProjections || !ReferenceEquals(Plan, ParallelPlan.None) || (Adapter != null && names.Any(n => Adapter.Targets(prefix + n)))) return null;
        var weights = names.Select(n => this[prefix + n]).ToArray();
        return F.Adjacent(weights) ? weights : null;
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
/// Activation recompute per transformer block (Megatron-LM's choices). None keeps every activation the backward reads;
/// Full keeps only each block's input and recomputes the whole block in backward; Selective keeps the GEMM outputs and
/// recomputes the attention core (RoPE, attention) and the SwiGLU product when their consumers' backward needs them.
/// </summary>
public enum RecomputeMode { None, Full, Selective }

/// <summary>
/// One stage of a pipeline-parallel model: transformer blocks [FirstLayer, EndLayer), the embedding on the first
/// stage, the final norm, head and loss on the last. <see cref="Whole"/> is the model in one piece. Under the interleaved
/// schedule a stage holds several model chunks (<see cref="Chunks"/>: Megatron's virtual pipeline stages s, s + P, …),
/// run one at a time; the first stage's first chunk starts with the embedding and the last stage's last chunk ends in
/// the head.
/// </summary>
public sealed record PipelineStage(int Index, int Count, int FirstLayer, int EndLayer)
{
    public bool IsFirst => Index == 0;
    public bool IsLast => Index == Count - 1;

    /// <summary>The layer ranges [First, End) this stage runs, in order (one unless interleaved).</summary>
    public IReadOnlyList<(int First, int End)> Chunks { get; init; } = [(FirstLayer, EndLayer)];

    public int ChunkCount => Chunks.Count;
    public int Layers => Chunks.Sum(c => c.End - c.First);

    /// <summary>Every layer this stage holds, in order.</summary>
    public IEnumerable<int> LayerIndices => Chunks.SelectMany(c => Enumerable.Range(c.First, c.End - c.First));

    /// <summary>The layers of chunk <paramref name="chunk"/>.</summary>
    public IEnumerable<int> ChunkLayers(int chunk) => Enumerable.Range(Chunks[chunk].First, Chunks[chunk].End - Chunks[chunk].First);

    public override string ToString() => $"stage {Index} of {Count}, layers " + string.Join(" + ", Chunks.Select(c => $"[{c.First}, {c.End})"));

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

    /// <summary>
    /// The interleaved schedule's stages: the layers split (balanced) into stages × <paramref name="virtualStages"/>
    /// chunks, stage s holding chunks s, s + stages, s + 2·stages, … (Megatron's virtual pipeline stages).
    /// </summary>
    public static List<PipelineStage> Interleaved(int layers, int stages, int virtualStages)
    {
        if (virtualStages < 1) throw new ArgumentException($"virtual stages must be >= 1 (got {virtualStages})");
        var chunks = Split(layers, stages * virtualStages);
        return Enumerable.Range(0, stages).Select(s =>
        {
            var mine = Enumerable.Range(0, virtualStages).Select(v => chunks[v * stages + s]).Select(c => (c.FirstLayer, c.EndLayer)).ToList();
            return new PipelineStage(s, stages, mine[0].FirstLayer, mine[^1].EndLayer) { Chunks = mine };
        }).ToList();
    }
}
