using Engine.Core;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Training.Config;
using Engine.Training.Run;

namespace Engine.Training.Parallel;

/// <summary>The [parallel] section: the job's layout as a mesh (pipeline stages × data-parallel replicas × context-parallel
/// ranks × tensor-parallel ranks, <see cref="DeviceMesh"/>), ZeRO, buckets, schedule. Checked, with the recompute mode,
/// by <see cref="Run.RunLayout.Validate"/> (the one place).</summary>
public sealed record ParallelSection
{
    /// <summary>Data-parallel replicas; 0 = the job's ranks ÷ (pp × cp × tp).</summary>
    public int Dp { get; init; }
    /// <summary>Pipeline stages (1 = no pipeline).</summary>
    public int Pp { get; init; } = 1;
    /// <summary>Tensor-parallel ranks per layer (Megatron-LM): q/k/v and gate/up split by output rows (heads), o and
    /// down by input columns, the embedding and LM head by vocabulary rows with a vocabulary-parallel cross-entropy.
    /// The innermost dimension of the mesh (consecutive ranks: one node).</summary>
    public int Tp { get; init; } = 1;
    /// <summary>Context-parallel ranks per sequence: each holds two of 2·cp chunks of every sequence (causal load
    /// balance), attention gathers the keys and values of the others.</summary>
    public int Cp { get; init; } = 1;
    /// <summary>With tp &gt; 1, the norm and residual regions sharded along the tokens (Korthikanti et al. 2022): an
    /// all-gather before each tensor-parallel block and a reduce-scatter after it instead of an all-reduce.</summary>
    public bool SequenceParallel { get; init; } = true;
    /// <summary>Model chunks per pipeline stage for the interleaved schedule (Megatron's virtual pipeline stages):
    /// stage s holds chunks s, s + pp, …; 1 = one contiguous chunk per stage.</summary>
    public int VirtualStages { get; init; } = 1;
    /// <summary>0: plain data parallel (all-reduce); 1: AdamW moments sharded (ZeRO-1); 2: moments and gradients
    /// sharded, gradients reduce-scattered (ZeRO-2; not with a pipeline); 3: weights too (ZeRO-3 / FSDP: each unit of
    /// the model all-gathered around its forward and its backward; with a pipeline, inside each stage's data-parallel
    /// group).</summary>
    public int Zero { get; init; }
    /// <summary>Gradient bucket size in MB (fp32 elements × 4 bytes); DDP's default is 25. ZeRO-3 buckets by unit (a
    /// transformer block, the embedding, the head) and ignores it.</summary>
    public double BucketMb { get; init; } = 25;
    /// <summary>Micro-batches per replica per step, with or without a pipeline (0 = the run's grad_accum; the two set
    /// to different counts are refused).</summary>
    public int MicroBatches { get; init; }
    /// <summary>"1f1b", "gpipe" or "interleaved" (interleaved 1F1B over <see cref="VirtualStages"/> chunks per stage).</summary>
    public string Schedule { get; init; } = "1f1b";
    /// <summary>Transformer layers per stage (empty = balanced).</summary>
    public int[] Layers { get; init; } = [];
}

/// <summary>
/// This rank's part of the job as the [parallel] section lays it out: its place in the mesh (<see cref="DeviceMesh"/>:
/// pipeline stage, data-parallel replica, context and tensor rank), and the objects a run builds from them (in
/// TorchTitan's order: pipeline split, then tensor/sequence and context parallelism on the stage's model, then data
/// parallelism / ZeRO over the stage's store, then the optimizer).
/// </summary>
public sealed class ParallelLayout : IDisposable
{
    ParallelLayout(ICommunicator world, RunLayout spec, DeviceMesh mesh)
    {
        World = world; Spec = spec; Mesh = mesh;
    }

    public ICommunicator World { get; }
    /// <summary>The validated layout this rank's part was cut from.</summary>
    public RunLayout Spec { get; }
    public ParallelSection Section => Spec.Parallel;
    /// <summary>The mesh: this rank's coordinates and its communicator per dimension.</summary>
    public DeviceMesh Mesh { get; }
    /// <summary>The mesh when the model is split into pipeline stages, else null.</summary>
    public DeviceMesh? Grid => Mesh.Stages > 1 ? Mesh : null;
    /// <summary>The ranks holding this rank's part of the model: its gradients are summed and ZeRO shards over them
    /// (data-parallel replicas × context ranks).</summary>
    public ICommunicator DataGroup => Mesh.Data;
    public bool Pipelined => Mesh.Stages > 1;
    /// <summary>Tensor or context parallelism splits this stage's layers or tokens.</summary>
    public bool SplitsModel => Mesh.TensorSize > 1 || Mesh.ContextSize > 1;
    /// <summary>Whether this rank writes its stage's weights (one writer per stage).</summary>
    public bool WritesWeights => DataGroup.Rank == 0 && Mesh.TensorRank == 0;

    /// <summary>Validates the layout for this job and model (<see cref="RunLayout.Validate"/>) and cuts the world into
    /// its mesh (collective).</summary>
    public static ParallelLayout Create(ICommunicator world, RunLayout spec, LlamaConfig model, int? gradAccum = null, RunNeeds? needs = null)
    {
        spec.Validate(world.WorldSize, model.NumLayers, gradAccum, needs, model);
        var p = spec.Parallel;
        return new ParallelLayout(world, spec, DeviceMesh.Create(world, p.Pp, p.Cp, p.Tp, separateBackward: p.Schedule == "interleaved"));
    }

    /// <summary>Data-parallel replicas (each runs its own micro-batches of the global batch).</summary>
    public int Replicas => Mesh.Replicas;

    /// <summary>This rank's pipeline stage of a model with <paramref name="layers"/> layers (null without a pipeline;
    /// with virtual stages, its chunks).</summary>
    public PipelineStage? Stage(int layers) => Pipelined ? Stages(layers)[Mesh.Stage] : null;

    /// <summary>Every stage of the pipeline.</summary>
    List<PipelineStage> Stages(int layers) => Section.VirtualStages > 1
        ? PipelineStage.Interleaved(layers, Mesh.Stages, Section.VirtualStages)
        : PipelineStage.Split(layers, Mesh.Stages, Section.Layers.Length > 0 ? Section.Layers : null);

    /// <summary>The whole (unsplit) shape of each of the stage model's parameters, by name.</summary>
    public Func<string, int[]> WholeShape(LlamaModel model)
    {
        var shapes = LlamaModel.Specs(model.Config, model.Stage).ToDictionary(p => p.Name, p => p.Shape, StringComparer.Ordinal);
        return name => shapes[name];
    }

    /// <summary>The plan that splits the stage's model over the tensor and context ranks (TorchTitan's parallelize_llama:
    /// the Llama tensor-parallel rules, sequence parallelism, context parallelism); collective over the tensor group.</summary>
    public MeshPlan CreatePlan(LlamaModel model)
    {
        var plan = new MeshPlan(Mesh, Mesh.TensorSize > 1 ? LlamaParallelPlan.Rules(model.Config, Mesh.TensorSize, Section.SequenceParallel) : null, Section.SequenceParallel);
        plan.Prepare(LlamaModel.Specs(model.Config, model.Stage).Select(p => (p.Name, p.Shape)));
        return plan;
    }

    public DataParallel CreateDataParallel(LlamaModel model) => CreateDataParallel(model.Store);

    /// <summary>Over any store (LoRA: the adapters' store; the frozen base is not reduced).</summary>
    public DataParallel CreateDataParallel(Engine.Core.ParameterStore store, int maxZero = 3) =>
        DataParallel.Create(store, DataGroup, Math.Min(Section.Zero, maxZero), Section.BucketMb);

    /// <summary>
    /// Data parallelism / ZeRO over what the run trains: the model's store, or with LoRA the adapters' store (the
    /// frozen base is not reduced). At ZeRO-3 a LoRA run's frozen base is sharded alongside — gathered unit by unit like
    /// a trained model's weights — while the adapters, a fraction of a percent of the weights, keep whole copies with
    /// ZeRO-2's sharded gradients and moments.
    /// </summary>
    public DataParallel CreateDataParallel(LlamaModel model, Engine.Model.Lora.LoraAdapters? adapters)
    {
        if (adapters == null) return CreateDataParallel(model);
        if (Section.Zero < 3) return CreateDataParallel(adapters.Store);
        var frozen = DataParallel.Create(model.Store, DataGroup, 3);
        try
        {
            var dp = DataParallel.Create(adapters.Store, DataGroup, 2, Section.BucketMb);
            dp.Alongside = frozen;
            return dp;
        }
        catch
        {
            frozen.Dispose();
            throw;
        }
    }

    public PipelineRunner? CreateRunner(LlamaModel model, DataParallel dp) => CreateRunner(model, new GradientSync(dp));

    /// <summary>The stage's schedule over the gradient hooks of its trainable stores (null without a pipeline).</summary>
    public PipelineRunner? CreateRunner(LlamaModel model, GradientSync sync) => Grid is { } g ? new PipelineRunner(model, g, sync, Section.Schedule) : null;

    /// <summary>Micro-batches per replica per step (<see cref="RunLayout.MicroBatches"/>).</summary>
    public int MicroBatches(int gradAccum) => Spec.MicroBatches(gradAccum);

    /// <summary>
    /// Saves the whole model in Hugging Face layout from however many stages and tensor ranks hold it: each parameter
    /// split over the tensor ranks is first gathered and joined by its placement; without a pipeline rank 0 writes
    /// config.json + model.safetensors (sharded by size as transformers does); with one, every stage's writer writes its
    /// parameters as shard s+1 of P (the last stage skips its tied-embedding copy) and rank 0 the index and config.
    /// Collective.
    /// </summary>
    public void SaveModel(LlamaModel model, string directory, string dtype = "F32", IReadOnlyDictionary<string, string>? metadata = null)
    {
        var whole = model.Plan is MeshPlan { ShardsParameters: true } plan ? GatherTensorShards(model, plan) : null;
        float[] Values(string name) => whole?[name] ?? model[name].ToArray();
        if (Grid is not { } g)
        {
            if (World.Rank == 0)
                ModelIO.Save(model.Config, LlamaModel.Specs(model.Config, model.Stage)
                    .Select(p => new ModelIO.TensorSource(p.Name, p.Shape.Select(d => (long)d).ToArray(), () => Values(p.Name))).ToList(), directory, dtype, metadata);
            World.Barrier();
            return;
        }
        if (World.Rank == 0) Directory.CreateDirectory(directory);
        World.Barrier();
        var stages = Stages(model.Config.NumLayers);
        // a stage's tensors in the family's file layout (Baichuan: a layer's q, k, v as one W_pack; a stage holds whole layers)
        List<ModelIO.TensorSource> Owned(PipelineStage st) => HfLayout.ToHf(model.Config, LlamaModel.Specs(model.Config, st)
            .Where(p => !(st.IsLast && !st.IsFirst && model.Config.TieWordEmbeddings && p.Name == "model.embed_tokens.weight"))
            .Select(p => new ModelIO.TensorSource(p.Name, p.Shape.Select(d => (long)d).ToArray(), () => Values(p.Name))).ToList());
        string File(int s) => SafeTensorsIndex.ShardFileName(s, g.Stages);
        if (WritesWeights)
        {
            var meta = new Dictionary<string, string> { ["format"] = "pt" };
            if (metadata != null) foreach (var (k, v) in metadata) meta[k] = v;
            var mine = Owned(stages[g.Stage]);
            SafeTensorsWriter.Write(Path.Combine(directory, File(g.Stage)),
                mine.Select(p => new SafeTensorWrite(p.Name, p.Shape, p.Values(), dtype)), meta);
        }
        World.Barrier();
        if (World.Rank == 0)
        {
            int elem = SafeTensorsWriter.ElementSize(dtype);
            var map = stages.SelectMany((st, s) => Owned(st).Select(p => (p.Name, File(s), Bytes: p.Numel * elem))).ToList();
            System.IO.File.WriteAllText(Path.Combine(directory, SafeTensorsIndex.IndexFile), SafeTensorsIndex.IndexJson(map.Sum(m => m.Bytes), map.Select(m => (m.Name, m.Item2))));
            string torchDtype = dtype switch { "BF16" => "bfloat16", "F16" => "float16", _ => "float32" };
            System.IO.File.WriteAllText(Path.Combine(directory, ModelIO.ConfigFile), model.Config.ToHuggingFaceJson(torchDtype));
            ModelIO.WriteSideFiles(model.Config, directory);
            string single = Path.Combine(directory, ModelIO.WeightsFile);
            if (System.IO.File.Exists(single)) System.IO.File.Delete(single);
        }
        World.Barrier();
    }

    /// <summary>
    /// Every parameter of the stage's model whole, on the stage's weight writer (null elsewhere): each tensor rank's
    /// slice all-gathered over the tensor group and joined by its placement (a piece held by several ranks taken from
    /// its first holder). Collective over the tensor group, parameter by parameter in store order.
    /// </summary>
    Dictionary<string, float[]>? GatherTensorShards(LlamaModel model, MeshPlan plan)
    {
        var shape = WholeShape(model);
        int tp = Mesh.TensorSize;
        var be = model.Backend;
        var result = WritesWeights ? new Dictionary<string, float[]>(StringComparer.Ordinal) : null;
        foreach (var slot in model.Store.Slots)
        {
            var local = model[slot.Name];
            using var all = be.Empty([checked((int)(tp * local.Numel))]).Keep();
            using (var f32 = local.DType == DType.F32 ? null : be.Empty(local.Shape).Keep())
            {
                if (f32 != null) be.Copy(local, f32);
                Mesh.Tensor.AllGather(f32 ?? local, all).Wait();
            }
            if (result == null) continue;
            var whole = shape(slot.Name);
            var placement = plan.PlacementOf(slot.Name, whole);
            var values = all.ToArray();
            var joined = new float[Engine.Core.Shape.Numel(whole)];
            for (int piece = 0; piece < placement.Parts; piece++)
                placement.Place(whole, joined, values.AsSpan((int)(piece * placement.Holders(tp) * local.Numel), (int)local.Numel), piece);
            result[slot.Name] = joined;
        }
        return result;
    }

    sealed record ParameterSpecOwned(string Name, int[] Shape);

    /// <summary>
    /// A LoRA adapter in PEFT's layout (adapter_config.json + adapter_model.safetensors). Without a pipeline rank 0
    /// writes it; with one, every stage's writer writes its layers' adapters beside it and rank 0 joins them into one
    /// file in stage (= state-dict) order, as one process writes it. Collective.
    /// </summary>
    public void SaveAdapter(Engine.Model.Lora.LoraAdapters adapter, string directory, string? baseModel)
    {
        if (Grid is not { } g)
        {
            if (World.Rank == 0) adapter.Save(directory, baseModel);
            World.Barrier();
            return;
        }
        string Part(int s) => Path.Combine(directory, $".stage{s:D3}");
        if (WritesWeights) adapter.Save(Part(g.Stage), baseModel);
        World.Barrier();
        if (World.Rank == 0)
        {
            var tensors = new List<SafeTensorWrite>();
            for (int s = 0; s < g.Stages; s++)
            {
                using var f = SafeTensorsFile.Open(Path.Combine(Part(s), Engine.Model.Lora.PeftAdapter.WeightsFile));
                tensors.AddRange(f.Entries.Select(e => new SafeTensorWrite(e.Name, e.Shape, f.ReadFloat32(e.Name))));
            }
            SafeTensorsWriter.Write(Path.Combine(directory, Engine.Model.Lora.PeftAdapter.WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            System.IO.File.Copy(Path.Combine(Part(0), Engine.Model.Lora.PeftAdapter.ConfigFile), Path.Combine(directory, Engine.Model.Lora.PeftAdapter.ConfigFile), overwrite: true);
            for (int s = 0; s < g.Stages; s++) Directory.Delete(Part(s), recursive: true);
        }
        World.Barrier();
    }

    public void Dispose() => Mesh.Dispose();
}
