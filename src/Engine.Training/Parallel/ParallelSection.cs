using Engine.Core.Distributed;
using Engine.Model;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Training.Config;
using Engine.Training.Run;

namespace Engine.Training.Parallel;

/// <summary>The [parallel] section: the job's layout (pipeline stages × data-parallel replicas), ZeRO, buckets, schedule.
/// Checked, with the recompute mode, by <see cref="Run.RunLayout.Validate"/> (the one place).</summary>
public sealed record ParallelSection
{
    /// <summary>Data-parallel replicas; 0 = the job's ranks ÷ pp.</summary>
    public int Dp { get; init; }
    /// <summary>Pipeline stages (1 = no pipeline).</summary>
    public int Pp { get; init; } = 1;
    /// <summary>0: plain data parallel (all-reduce); 1: AdamW moments sharded (ZeRO-1); 2: moments and gradients
    /// sharded, gradients reduce-scattered (ZeRO-2; not with a pipeline).</summary>
    public int Zero { get; init; }
    /// <summary>Gradient bucket size in MB (fp32 elements × 4 bytes); DDP's default is 25.</summary>
    public double BucketMb { get; init; } = 25;
    /// <summary>Micro-batches per replica per step, with or without a pipeline (0 = the run's grad_accum; the two set
    /// to different counts are refused).</summary>
    public int MicroBatches { get; init; }
    /// <summary>"1f1b" or "gpipe".</summary>
    public string Schedule { get; init; } = "1f1b";
    /// <summary>Transformer layers per stage (empty = balanced).</summary>
    public int[] Layers { get; init; } = [];
}

/// <summary>
/// This rank's part of the job as the [parallel] section lays it out: its pipeline stage (if any), the data-parallel
/// group of its stage, and the objects a run builds from them (in TorchTitan's order: pipeline split, then data
/// parallelism / ZeRO over the stage's store, then the optimizer).
/// </summary>
public sealed class ParallelLayout : IDisposable
{
    ParallelLayout(ICommunicator world, RunLayout spec, PipelineGrid? grid)
    {
        World = world; Spec = spec; Grid = grid;
    }

    public ICommunicator World { get; }
    /// <summary>The validated layout this rank's part was cut from.</summary>
    public RunLayout Spec { get; }
    public ParallelSection Section => Spec.Parallel;
    /// <summary>The pipeline grid, or null without pipeline stages.</summary>
    public PipelineGrid? Grid { get; }
    /// <summary>The ranks holding this rank's stage (the whole world without a pipeline).</summary>
    public ICommunicator DataGroup => Grid?.Data ?? World;
    public bool Pipelined => Grid != null;
    /// <summary>Whether this rank writes its stage's weights (one writer per stage).</summary>
    public bool WritesWeights => DataGroup.Rank == 0;

    /// <summary>Validates the layout for this job and model (<see cref="RunLayout.Validate"/>) and cuts the world into
    /// its pipeline grid (collective).</summary>
    public static ParallelLayout Create(ICommunicator world, RunLayout spec, int modelLayers, int? gradAccum = null, RunNeeds? needs = null)
    {
        spec.Validate(world.WorldSize, modelLayers, gradAccum, needs);
        return new ParallelLayout(world, spec, spec.Parallel.Pp > 1 ? PipelineGrid.Create(world, spec.Parallel.Pp) : null);
    }

    /// <summary>Data-parallel replicas (pipelines when the model is split, ranks otherwise).</summary>
    public int Replicas => Grid?.Replicas ?? World.WorldSize;

    /// <summary>This rank's pipeline stage of a model with <paramref name="layers"/> layers (null without a pipeline).</summary>
    public PipelineStage? Stage(int layers) =>
        Grid is { } g ? PipelineStage.Split(layers, g.Stages, Section.Layers.Length > 0 ? Section.Layers : null)[g.Stage] : null;

    public DataParallel CreateDataParallel(LlamaModel model) => CreateDataParallel(model.Store);

    /// <summary>Over any store (LoRA: the adapters' store; the frozen base is not reduced).</summary>
    public DataParallel CreateDataParallel(Engine.Core.ParameterStore store) => DataParallel.Create(store, DataGroup, Section.Zero, Section.BucketMb);

    public PipelineRunner? CreateRunner(LlamaModel model, DataParallel dp) => CreateRunner(model, new GradientSync(dp));

    /// <summary>The stage's schedule over the gradient hooks of its trainable stores (null without a pipeline).</summary>
    public PipelineRunner? CreateRunner(LlamaModel model, GradientSync sync) => Grid is { } g ? new PipelineRunner(model, g, sync, Section.Schedule) : null;

    public AdamW CreateOptimizer(LlamaModel model, AdamWOptions options, DataParallel dp, PipelineRunner? runner) =>
        new(model, options, dp) { NormGroup = Grid?.Pipe, NormExclude = runner?.NormDuplicate };

    /// <summary>Micro-batches per replica per step (<see cref="RunLayout.MicroBatches"/>).</summary>
    public int MicroBatches(int gradAccum) => Spec.MicroBatches(gradAccum);

    /// <summary>
    /// Saves the whole model in Hugging Face layout from however many stages hold it: without a pipeline rank 0 writes
    /// config.json + model.safetensors (sharded by size as transformers does); with one, every stage's writer writes its
    /// parameters as shard s+1 of P (the last stage skips its tied-embedding copy) and rank 0 the index and config.
    /// Collective.
    /// </summary>
    public void SaveModel(LlamaModel model, string directory, string dtype = "F32", IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (Grid is not { } g)
        {
            if (World.Rank == 0) ModelIO.Save(model, directory, dtype, metadata);
            World.Barrier();
            return;
        }
        if (World.Rank == 0) Directory.CreateDirectory(directory);
        World.Barrier();
        var stages = PipelineStage.Split(model.Config.NumLayers, g.Stages, Section.Layers.Length > 0 ? Section.Layers : null);
        List<ParameterSpecOwned> Owned(PipelineStage st) => LlamaModel.Specs(model.Config, st)
            .Where(p => !(st.IsLast && !st.IsFirst && model.Config.TieWordEmbeddings && p.Name == "model.embed_tokens.weight"))
            .Select(p => new ParameterSpecOwned(p.Name, p.Shape)).ToList();
        string File(int s) => SafeTensorsIndex.ShardFileName(s, g.Stages);
        if (WritesWeights)
        {
            var meta = new Dictionary<string, string> { ["format"] = "pt" };
            if (metadata != null) foreach (var (k, v) in metadata) meta[k] = v;
            var mine = Owned(stages[g.Stage]);
            SafeTensorsWriter.Write(Path.Combine(directory, File(g.Stage)),
                mine.Select(p => new SafeTensorWrite(p.Name, p.Shape.Select(d => (long)d).ToArray(), model[p.Name].ToArray(), dtype)), meta);
        }
        World.Barrier();
        if (World.Rank == 0)
        {
            int elem = SafeTensorsWriter.ElementSize(dtype);
            var map = stages.SelectMany((st, s) => Owned(st).Select(p => (p.Name, File(s), Bytes: p.Shape.Aggregate(1L, (a, b) => a * b) * elem))).ToList();
            System.IO.File.WriteAllText(Path.Combine(directory, SafeTensorsIndex.IndexFile), SafeTensorsIndex.IndexJson(map.Sum(m => m.Bytes), map.Select(m => (m.Name, m.Item2))));
            string torchDtype = dtype switch { "BF16" => "bfloat16", "F16" => "float16", _ => "float32" };
            System.IO.File.WriteAllText(Path.Combine(directory, ModelIO.ConfigFile), model.Config.ToHuggingFaceJson(torchDtype));
            string single = Path.Combine(directory, ModelIO.WeightsFile);
            if (System.IO.File.Exists(single)) System.IO.File.Delete(single);
        }
        World.Barrier();
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

    public void Dispose() => Grid?.Dispose();
}
