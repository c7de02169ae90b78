using Engine.Core.Distributed;
using Engine.Model;
using Engine.Model.IO;
using Engine.Parallel;
using Engine.Training.Config;

namespace Engine.Training.Parallel;

/// <summary>The [parallel] section: the job's layout (pipeline stages × data-parallel replicas), ZeRO, buckets, schedule.</summary>
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
    /// <summary>Micro-batches per replica per step through the pipeline (0 = train.grad_accum).</summary>
    public int MicroBatches { get; init; }
    /// <summary>"1f1b" or "gpipe".</summary>
    public string Schedule { get; init; } = "1f1b";
    /// <summary>Transformer layers per stage (empty = balanced).</summary>
    public int[] Layers { get; init; } = [];

    /// <summary>Refuses a section that does not fit a job of <paramref name="worldSize"/> ranks (one line naming the key).</summary>
    public void Validate(int worldSize, int? modelLayers = null)
    {
        var errors = new List<string>();
        if (Pp < 1) errors.Add($"parallel.pp must be >= 1 (got {Pp})");
        else if (worldSize % Pp != 0) errors.Add($"parallel.pp = {Pp} does not divide the job's {worldSize} rank(s) (ranks = pp × dp)");
        else if (Dp < 0) errors.Add($"parallel.dp must be >= 0 (got {Dp}; 0 = the job's ranks ÷ pp)");
        else if (Dp != 0 && Dp * Pp != worldSize)
            errors.Add($"parallel.dp = {Dp} but the job has {worldSize} rank(s){(Pp > 1 ? $" for {Pp} pipeline stages" : "")}: launch {Dp * Pp} ranks (engine launch --nproc-per-node {Dp * Pp} -- ...) or set parallel.dp = {worldSize / Math.Max(1, Pp)}");
        if (Zero is < 0 or > 2) errors.Add($"parallel.zero must be 0, 1 or 2 (got {Zero})");
        if (Zero == 2 && Pp > 1) errors.Add("parallel.zero = 2 is not supported with pipeline stages (pp > 1): use zero = 1, as Megatron does inside each data-parallel group");
        if (!(BucketMb > 0) || double.IsInfinity(BucketMb)) errors.Add($"parallel.bucket_mb must be positive (got {BucketMb})");
        if (MicroBatches < 0) errors.Add($"parallel.micro_batches must be >= 0 (got {MicroBatches}; 0 = train.grad_accum)");
        if (Schedule is not ("1f1b" or "gpipe")) errors.Add($"parallel.schedule must be \"1f1b\" or \"gpipe\" (got \"{Schedule}\")");
        if (Layers.Length > 0 && Layers.Length != Pp) errors.Add($"parallel.layers names {Layers.Length} stages but parallel.pp = {Pp}");
        if (modelLayers is int n && Pp >= 1 && (Layers.Length == 0 ? n < Pp : Layers.Any(l => l < 1) || Layers.Sum() != n))
            errors.Add(Layers.Length == 0 ? $"parallel.pp = {Pp} needs at least {Pp} layers, the model has {n}"
                : $"parallel.layers [{string.Join(", ", Layers)}] must give every stage at least one layer and sum to the model's {n}");
        if (errors.Count > 0) throw new ConfigException(string.Join("; ", errors));
    }
}

/// <summary>
/// This rank's part of the job as the [parallel] section lays it out: its pipeline stage (if any), the data-parallel
/// group of its stage, and the objects a run builds from them (in TorchTitan's order: pipeline split, then data
/// parallelism / ZeRO over the stage's store, then the optimizer).
/// </summary>
public sealed class ParallelLayout : IDisposable
{
    ParallelLayout(ICommunicator world, ParallelSection section, PipelineGrid? grid)
    {
        World = world; Section = section; Grid = grid;
    }

    public ICommunicator World { get; }
    public ParallelSection Section { get; }
    /// <summary>The pipeline grid, or null without pipeline stages.</summary>
    public PipelineGrid? Grid { get; }
    /// <summary>The ranks holding this rank's stage (the whole world without a pipeline).</summary>
    public ICommunicator DataGroup => Grid?.Data ?? World;
    public bool Pipelined => Grid != null;
    /// <summary>Whether this rank writes its stage's weights (one writer per stage).</summary>
    public bool WritesWeights => DataGroup.Rank == 0;

    public static ParallelLayout Create(ICommunicator world, ParallelSection section, int modelLayers)
    {
        section.Validate(world.WorldSize, modelLayers);
        return new ParallelLayout(world, section, section.Pp > 1 ? PipelineGrid.Create(world, section.Pp) : null);
    }

    /// <summary>This rank's pipeline stage of a model with <paramref name="layers"/> layers (null without a pipeline).</summary>
    public PipelineStage? Stage(int layers) =>
        Grid is { } g ? PipelineStage.Split(layers, g.Stages, Section.Layers.Length > 0 ? Section.Layers : null)[g.Stage] : null;

    public DataParallel CreateDataParallel(LlamaModel model) => CreateDataParallel(model.Store);

    /// <summary>Over any store (LoRA: the adapters' store; the frozen base is not reduced).</summary>
    public DataParallel CreateDataParallel(Engine.Core.ParameterStore store) => DataParallel.Create(store, DataGroup, Section.Zero, Section.BucketMb);

    public PipelineRunner? CreateRunner(LlamaModel model, DataParallel dp) => Grid is { } g ? new PipelineRunner(model, g, dp, Section.Schedule) : null;

    public AdamW CreateOptimizer(LlamaModel model, AdamWOptions options, DataParallel dp, PipelineRunner? runner) =>
        new(model, options, dp) { NormGroup = Grid?.Pipe, NormExclude = runner?.NormDuplicate };

    /// <summary>Micro-batches per replica per step.</summary>
    public int MicroBatches(int gradAccum) => Section.MicroBatches > 0 ? Section.MicroBatches : gradAccum;

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
        // a stage's tensors in the family's file layout (Baichuan: a layer's q, k, v as one W_pack; a stage holds whole layers)
        List<ModelIO.TensorSource> Owned(PipelineStage st) => HfLayout.ToHf(model.Config, LlamaModel.Specs(model.Config, st)
            .Where(p => !(st.IsLast && !st.IsFirst && model.Config.TieWordEmbeddings && p.Name == "model.embed_tokens.weight"))
            .Select(p => new ModelIO.TensorSource(p.Name, p.Shape.Select(d => (long)d).ToArray(), () => model[p.Name].ToArray())).ToList());
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
            string single = Path.Combine(directory, ModelIO.WeightsFile);
            if (System.IO.File.Exists(single)) System.IO.File.Delete(single);
        }
        World.Barrier();
    }

    public void Dispose() => Grid?.Dispose();
}
