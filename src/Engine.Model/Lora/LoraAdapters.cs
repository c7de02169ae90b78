using Engine.Core;
using Engine.Core.Autograd;
using Engine.Cpu;

namespace Engine.Model.Lora;

/// <summary>
/// LoRA adapters (Hu et al. 2021) on a <see cref="LlamaModel"/>, in PEFT's layout: for every targeted Linear layer W
/// [out, in] a pair lora_A [r, in] and lora_B [out, r] named as PEFT saves them
/// ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), and the layer computes
/// x Wᵀ + scaling · (dropout(x) Aᵀ) Bᵀ (<see cref="F.Lora"/>).
/// <para>
/// The adapters are their own flat <see cref="ParameterStore"/>: the optimizer and data parallelism are built over
/// <see cref="Store"/>, so AdamW moments and gradients exist for the adapters only. Attaching freezes every base
/// parameter and frees the base store's gradient buffer (a base gradient request is an error); detaching or disposing
/// restores both. Initialisation is PEFT's default: A ~ U(±1/√in) (kaiming_uniform with a = √5), B = 0, so a fresh
/// adapter leaves the model's outputs unchanged. <see cref="Merge"/> folds scaling · B A into the base weights for export.
/// </para>
/// Dropout masks are drawn on the host from a seeded generator while a tape records (training); evaluation under
/// NoGrad runs without dropout. Dropout with activation checkpointing is refused: the recomputed block would draw
/// another mask.
/// </summary>
public sealed class LoraAdapters : ILinearAdapter, IDisposable
{
    /// <summary>PEFT's prefix for a causal LM's tensors (PeftModelForCausalLM.base_model.model).</summary>
    public const string Prefix = "base_model.model.";

    readonly LlamaModel model;
    readonly List<Pair> pairs = [];
    /// <summary>Engine weight → its adapter pair and the rows of the pair's B it uses (a packed module's part).</summary>
    readonly Dictionary<string, (Pair Pair, LinearPart Part)> byWeight = new(StringComparer.Ordinal);
    readonly Rng dropoutRng;
    readonly (bool RequiresGrad, bool Frozen)[] savedFlags;
    readonly int savedVersion;
    readonly bool hadGradients;
    bool attached;

    sealed record Pair(LinearModule Module, string A, string B)
    {
        /// <summary>A packed module's dropout mask, drawn once for the input its parts share (PEFT drops W_pack's input once).</summary>
        public (Tensor X, float[] Mask)? SharedMask;
    }

    LoraAdapters(LlamaModel model, LoraConfig config, ulong seed)
    {
        Config = config.Validate();
        if (model.Adapter != null) throw new InvalidOperationException("the model already has an adapter attached: detach it (or merge it) first");
        AllModules = config.Resolve(model.Config);
        // a pipeline stage adapts the layers it holds
        Modules = AllModules.Where(m => m.Parts.All(p => model.HasParameter(p.Weight))).ToList();   // a packed module (W_pack) by its engine weights
        this.model = model;
        var specs = new List<ParameterSpec>();
        foreach (var m in Modules)
        {
            var pair = new Pair(m, AName(m.Module), BName(m.Module));
            pairs.Add(pair);
            foreach (var part in m.Parts) byWeight[part.Weight] = (pair, part);
            specs.Add(new ParameterSpec(pair.A, [config.R, m.In]));
            specs.Add(new ParameterSpec(pair.B, [m.Out, config.R]));
        }
        Store = new ParameterStore(model.Backend, specs);
        dropoutRng = new Rng(seed ^ 0x4C6F5241UL);
        // freeze the base and free its gradient buffer; remember what to restore
        savedFlags = model.Store.Slots.Select(s => (s.Tensor.RequiresGrad, s.Tensor.Frozen)).ToArray();
        savedVersion = model.Store.Version;
        hadGradients = model.Store.Grads != null;
        foreach (var s in model.Store.Slots) { s.Tensor.RequiresGrad = false; s.Tensor.Frozen = true; }
        model.Store.DetachGradients(FrozenBase.Instance);
        model.Adapter = this;
        attached = true;
    }

    /// <summary>Fresh adapters (PEFT's initialisation, seeded) on every Linear layer the config targets (of a pipeline
    /// stage: those it holds, initialised as the whole model's are — the draws of the others are skipped).</summary>
    public static LoraAdapters Attach(LlamaModel model, LoraConfig config, ulong seed)
    {
        var a = new LoraAdapters(model, config, seed);
        var rng = new Rng(seed);
        foreach (var m in a.AllModules)
        {
            var host = new float[(long)config.R * m.In];
            double bound = 1.0 / Math.Sqrt(m.In);
            for (int i = 0; i < host.Length; i++) host[i] = (float)((2 * rng.NextDouble() - 1) * bound);
            // drawn for every module of the whole model, in order: a pipeline stage initialises its own as one process does
            if (a.pairs.FirstOrDefault(p => p.Module.Module == m.Module) is { } pair) model.Backend.Upload(a.Store[pair.A], host);
        }
        return a;
    }

    /// <summary>A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) on the model; see <see cref="PeftAdapter"/>.</summary>
    public static LoraAdapters Load(LlamaModel model, string directory, ulong seed = 0)
    {
        var config = PeftAdapter.ReadConfig(directory);
        var a = new LoraAdapters(model, config, seed);
        try
        {
            PeftAdapter.ReadWeights(directory, a);
            return a;
        }
        catch
        {
            a.Dispose();
            throw;
        }
    }

    public LoraConfig Config { get; }
    /// <summary>The targeted layers this model holds, in state-dict order (on a pipeline stage, the stage's).</summary>
    public IReadOnlyList<LinearModule> Modules { get; }
    /// <summary>Every layer the config targets in the whole model (what adapter_config.json describes).</summary>
    public IReadOnlyList<LinearModule> AllModules { get; }
    /// <summary>The adapters' flat store (A and B of every module): what the optimizer and data parallelism work on.</summary>
    public ParameterStore Store { get; }
    /// <summary>Trainable parameters (elements of every A and B).</summary>
    public long ParameterCount => Store.Slots.Sum(s => s.Numel);
    public bool IsAttached => attached;

    public static string AName(string module) => $"{Prefix}{module}.lora_A.weight";
    public static string BName(string module) => $"{Prefix}{module}.lora_B.weight";

    public bool Targets(string weight) => byWeight.ContainsKey(weight);

    public Tensor Apply(string weight, Tensor x, Tensor y)
    {
        if (!byWeight.TryGetValue(weight, out var hit)) return y;
        var (p, part) = hit;
        float[]? mask = null;
        if (Config.Dropout > 0 && Grad.IsRecording)
        {
            if (Modules.Count != AllModules.Count)
                throw new NotSupportedException("lora dropout > 0 on a pipeline stage: its masks would not be the whole model's (one generator draws them in layer order)");
            if (model.CheckpointActivations)
                throw new NotSupportedException("lora dropout > 0 cannot be combined with activation checkpointing (the recomputed block would draw a different mask): set dropout = 0 or checkpoint_activations = false");
            if (p.Module.Packed != null && p.SharedMask is { } shared && ReferenceEquals(shared.X, x)) mask = shared.Mask;
            else
            {
                mask = new float[x.Numel];
                double p0 = Config.Dropout;
                float keep = (float)(1.0 / (1.0 - p0));
                for (int i = 0; i < mask.Length; i++) mask[i] = dropoutRng.NextDouble() < p0 ? 0f : keep;
                if (p.Module.Packed != null) p.SharedMask = (x, mask);
            }
        }
        return F.Lora(y, x, Store[p.A], Store[p.B], Config.Scaling, mask, part.FirstRow);
    }

    public IEnumerable<Tensor> LayerParameters(int layer)
    {
        foreach (var p in pairs)
            if (p.Module.Layer == layer) { yield return Store[p.A]; yield return Store[p.B]; }
    }

    /// <summary>(A, B) of a targeted module, by PEFT module name.</summary>
    public (Tensor A, Tensor B) Of(string module) => (Store[AName(module)], Store[BName(module)]);

    /// <summary>
    /// Folds the adapters into the base: W += scaling · B A for every targeted layer (fp32, on the host), then detaches
    /// them — the model alone now computes what model + adapters computed (PEFT's merge_and_unload).
    /// </summary>
    public void Merge()
    {
        if (!attached) throw new InvalidOperationException("the adapters are no longer attached to the model");
        int r = Config.R;
        foreach (var p in pairs)
        {
            var a = Store[p.A].ToArray();
            var b = Store[p.B].ToArray();
            foreach (var part in p.Module.Parts)   // a packed module: each weight takes its rows of B
            {
                var w = model[part.Weight];
                var wv = w.ToArray();
                Gemm.Sgemm(false, false, part.Rows, p.Module.In, r, Config.Scaling, b.AsSpan(part.FirstRow * r, part.Rows * r), r, a, p.Module.In, 1f, wv, p.Module.In);
                model.Backend.Upload(w, wv);
            }
        }
        Detach();
    }

    /// <summary>Removes the adapters from the model and restores the base's trainable flags and gradient buffer.</summary>
    public void Detach()
    {
        if (!attached) return;
        attached = false;
        if (ReferenceEquals(model.Adapter, this)) model.Adapter = null;
        if (model.Store.Version != savedVersion || model.Store.Count == 0) return;
        for (int i = 0; i < savedFlags.Length; i++)
        {
            var t = model.Store.Slots[i].Tensor;
            (t.RequiresGrad, t.Frozen) = savedFlags[i];
        }
        if (hadGradients) model.Store.AttachGradients();
    }

    /// <summary>Writes adapter_config.json and adapter_model.safetensors as PEFT's save_pretrained does, and the base
    /// model's tokenizer files beside them (as Hugging Face's Trainer saves an adapter).</summary>
    public void Save(string directory, string? baseModel = null)
    {
        PeftAdapter.Write(directory, this, baseModel);
        IO.ModelIO.WriteTokenizerFiles(model.Config, directory);
    }

    /// <summary>Replaces the adapters' weights with those of a saved adapter directory of the same config (a checkpoint
    /// of this run): a different rank, alpha, dropout or target set is refused naming the directory.</summary>
    public void LoadWeights(string directory)
    {
        var saved = PeftAdapter.ReadConfig(directory);
        if (saved.R != Config.R || saved.Alpha != Config.Alpha || saved.Dropout != Config.Dropout || saved.UseRslora != Config.UseRslora
            || !saved.Resolve(model.Config).Select(m => m.Module).SequenceEqual(AllModules.Select(m => m.Module)))
            throw new InvalidDataException($"{directory}: the saved adapter (r = {saved.R}, alpha = {saved.Alpha}, dropout = {saved.Dropout}, target_modules {saved.Describe()}) " +
                $"is not the one configured (r = {Config.R}, alpha = {Config.Alpha}, dropout = {Config.Dropout}, target_modules {Config.Describe()})");
        PeftAdapter.ReadWeights(directory, this);
    }

    /// <summary>The dropout masks' generator state (saved in checkpoints so that a resumed run draws the same masks).</summary>
    public (ulong, ulong, ulong, ulong) DropoutRngState
    {
        get => dropoutRng.State;
        set => dropoutRng.State = value;
    }

    public void Dispose()
    {
        Detach();
        Store.Dispose();
    }

    /// <summary>The base store's gradient source while adapters are attached: nothing may ask for a base gradient.</summary>
    sealed class FrozenBase : IGradientSource
    {
        public static readonly FrozenBase Instance = new();
        public Tensor Acquire(Tensor parameter) =>
            throw new InvalidOperationException($"{parameter.Name} belongs to the frozen base model (LoRA): no gradient is kept for it");
    }
}
