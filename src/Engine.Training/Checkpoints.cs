using System.Security.Cryptography;
using System.Text.Json;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Model.IO;
using Engine.Model.Lora;
using Engine.Parallel;
using Engine.Training.Parallel;

namespace Engine.Training;

/// <summary>What a checkpoint records besides weights and optimizer moments: enough for a bit-exact resume.</summary>
public sealed record CheckpointState(int Step, long Tokens, ulong[] Rng, int AdamStep)
{
    /// <summary>Recipes: the stage's index and name (null for `engine train`).</summary>
    public int StageIndex { get; init; }
    public string? Stage { get; init; }
    /// <summary>Recipes: the mixture's sampler state (SamplerState JSON: every stream's position and RNG).</summary>
    public string? Sampler { get; init; }
    /// <summary>Steps the guard or --skip-batches skipped so far.</summary>
    public int SkippedSteps { get; init; }
    /// <summary>The settings a bit-exact resume needs unchanged (<see cref="ResumeCheck"/>), by config key.</summary>
    public Dictionary<string, string>? Exact { get; init; }
    /// <summary>The settings a resume may change (learning rate, betas, clip, steps), as they were.</summary>
    public Dictionary<string, string>? Overridable { get; init; }
    /// <summary>LoRA runs: the adapters' dropout generator (<see cref="LoraAdapters.DropoutRngState"/>).</summary>
    public ulong[]? AdapterRng { get; init; }
}

/// <summary>One parameter of the flat layout a checkpoint was written with: its shape there and, when the layout's
/// tensor ranks split it, the whole tensor's shape and which piece (<see cref="Placement"/>: Parts pieces along
/// SplitDim) this layout holds.</summary>
public sealed record CheckpointParameter(string Name, int[] Shape, long Offset)
{
    /// <summary>The whole tensor's shape (null: <see cref="Shape"/>, not split).</summary>
    public int[]? Whole { get; init; }
    public int SplitDim { get; init; }
    public int Parts { get; init; } = 1;
    public int Piece { get; init; }

    public Placement Placement => new(SplitDim, Parts);
    public int[] WholeShape => Whole ?? Shape;
}

/// <summary>A range of the flat buffers one rank wrote: flat [Start, Start + Length) at element Compact of its file.</summary>
public sealed record CheckpointSlice(long Start, long Length, long Compact);

/// <summary>One rank's moments file: the world rank that wrote it and the flat slices it holds (in file order).</summary>
public sealed record CheckpointShard(int Rank, List<CheckpointSlice> Slices);

/// <summary>One pipeline stage's flat layout (the whole model without a pipeline) on one tensor rank, and the moment
/// files of the ranks that share it (its data-parallel and context ranks).</summary>
public sealed record CheckpointStage
{
    public int Index { get; init; }
    /// <summary>The tensor rank whose slices of the stage's parameters this layout holds (0 without tensor parallelism).</summary>
    public int TensorRank { get; init; }
    public long Capacity { get; init; }
    public List<CheckpointParameter> Parameters { get; init; } = [];
    public List<CheckpointShard> Shards { get; init; } = [];
}

/// <summary>manifest.json: the global layout and every file with its SHA-256; written last, by rank 0.</summary>
public sealed record CheckpointManifest
{
    public int Format { get; init; } = Checkpoints.FormatVersion;
    public int WorldSize { get; init; } = 1;
    public int Pp { get; init; } = 1;
    public int Zero { get; init; }
    public List<CheckpointStage> Stages { get; init; } = [];
    public Dictionary<string, string> Files { get; init; } = [];
    /// <summary>SHA-256 of the exactness settings (<see cref="CheckpointState.Exact"/>), for a quick comparison.</summary>
    public string? ConfigHash { get; init; }
    /// <summary>Tensor-parallel ranks of the layout that wrote it (each stage has one flat layout per tensor rank).</summary>
    public int Tp { get; init; } = 1;
    /// <summary>Context-parallel ranks of the layout that wrote it.</summary>
    public int Cp { get; init; } = 1;
    /// <summary>"dp N × pp P × cp C × tp T, ZeRO-Z": the parallel layout that wrote the checkpoint (it reshards on load).</summary>
    public string? Layout { get; init; }
    /// <summary>Byte size of every file (checked before the hashes).</summary>
    public Dictionary<string, long>? Sizes { get; init; }
    /// <summary>The fp32 master weights are in the rank files ("master": each rank's slices, written by ZeRO-3, whose
    /// ranks hold no whole weights), not in model.safetensors; format 3.</summary>
    public bool ShardedWeights { get; init; }
}

/// <summary>
/// Training checkpoints: one directory per step (`step_00000123/`) holding config.json + model.safetensors (the full
/// fp32 master weights in Hugging Face layout, by rank 0 — every rank holds them; under ZeRO-3, where no rank does,
/// each rank's slices of the master weights in its rank file instead, format 3), optimizer/rankNNNNN.safetensors
/// (each rank's slices of the AdamW moments: under ZeRO the slices it owns, without ZeRO the same partition so the
/// ranks write in parallel), state.json (step, tokens, sampler RNG, AdamW step) and manifest.json (format, world size,
/// ZeRO stage, the flat layout, each rank's slices, SHA-256 of every file), written last. The directory is built under
/// a temporary name and renamed, so a crash never leaves a half-written checkpoint; only the newest `keep` are kept.
/// <para>
/// Loading verifies the manifest, then maps moments — and sharded weights — by parameter name and element, so a
/// checkpoint loads at any data-parallel size, ZeRO stage (0-3) and pipeline split, in both directions (resharding
/// after losing nodes); at the same layout it is bit-exact.
/// All ranks call <see cref="Save"/> and <see cref="Load"/> together; the directory must be on a filesystem every rank
/// sees.
/// </para>
/// </summary>
public static class Checkpoints
{
    public const int FormatVersion = 2;
    /// <summary>The format of a checkpoint whose weights are sharded across the rank files (ZeRO-3).</summary>
    public const int ShardedWeightsFormat = 3;
    const string StateFile = "state.json", ManifestFile = "manifest.json", OptimizerDir = "optimizer";
    /// <summary>A LoRA run's checkpoint holds its adapter here (PEFT layout) and config.json, not the frozen base.</summary>
    public const string AdapterDir = "adapter";
    static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    static string ShardFile(int rank) => Path.Combine(OptimizerDir, $"rank{rank:D5}.safetensors");

    /// <summary>The slices rank <paramref name="rank"/> writes and where its compact moments hold them.</summary>
    static List<(OwnedSlice Source, CheckpointSlice Written)> WriteSlices(DataParallel dp, int rank)
    {
        var layout = rank == dp.Layout.Rank ? dp.Layout : ShardLayout.For(dp.Store, dp.Layout.WorldSize, rank, dp.Layout.Stage);
        var result = new List<(OwnedSlice, CheckpointSlice)>();
        if (layout.Stage > 0 || layout.WorldSize == 1)
        {
            long at = 0;
            foreach (var s in layout.Owned) { result.Add((s, new CheckpointSlice(s.Start, s.Length, at))); at += s.Length; }
            return result;
        }
        // stage 0: every rank holds everything (compact = flat); rank r writes the r-th share of each bucket
        var shares = ShardLayout.For(dp.Store, layout.WorldSize, rank, 1).Owned;
        long pos = 0;
        foreach (var s in shares)
        {
            result.Add((s with { Compact = s.Start }, new CheckpointSlice(s.Start, s.Length, pos)));
            pos += s.Length;
        }
        return result;
    }

    /// <param name="layout">The job's layout when it has pipeline stages (null: data parallelism over the optimizer's
    /// group only).</param>
    /// <param name="adapter">A LoRA run's adapters (the optimizer works on their store): the checkpoint holds them in
    /// <see cref="AdapterDir"/>, their dropout generator, and the base's config.json; the frozen base is not copied (the
    /// run rebuilds it from init_from, or the earlier stage, as it did at its start).</param>
    public static string Save(string root, LlamaModel model, AdamW opt, CheckpointState state, int keep, ParallelLayout? layout = null,
        LoraAdapters? adapter = null)
    {
        // IO (SafeIo): the free space for weights + both moments first, on every rank together; a failed write is one
        // line naming the last good checkpoint, which stays intact (this one is built under a temporary name)
        string? lastGood = List(root).LastOrDefault();
        string what = $"the checkpoint of step {state.Step}";
        long trainable = adapter?.ParameterCount ?? model.Config.ParameterCount();
        SafeIo.EnsureSpace(root, 4L * (adapter != null ? trainable : model.Config.ParameterCount()) + 8L * trainable, what, lastGood, layout?.World ?? opt.Parallel.Comm);
        return SafeIo.Writing(what, root, lastGood, () => Write(root, model, opt, state, keep, layout, adapter));
    }

    static string Write(string root, LlamaModel model, AdamW opt, CheckpointState state, int keep, ParallelLayout? layout, LoraAdapters? adapter)
    {
        if (adapter != null)
        {
            var (r0, r1, r2, r3) = adapter.DropoutRngState;
            state = state with { AdapterRng = [r0, r1, r2, r3] };
        }
        var dp = opt.Parallel;
        var world = layout?.World ?? dp.Comm;
        var group = dp.Comm;   // the ranks holding this rank's stage
        int stage = layout?.Grid?.Stage ?? 0;
        string name = $"step_{state.Step:D8}";
        string final = Path.Combine(root, name), tmp = Path.Combine(root, $".{name}.tmp");
        if (world.Rank == 0)
        {
            Directory.CreateDirectory(root);
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
            Directory.CreateDirectory(Path.Combine(tmp, OptimizerDir));
        }
        world.Barrier();

        // every rank: its slices of the moments (and, ZeRO-3, of the master weights), in a file named by its world rank
        bool shardedWeights = dp.Stage == 3 && adapter == null;
        var (m, v) = opt.ExportState();
        var master = shardedWeights ? dp.Units!.Master.ToArray() : null;
        var slices = WriteSlices(dp, group.Rank);
        long total = slices.Sum(s => s.Written.Length);
        var fm = new float[total];
        var fv = new float[total];
        var fw = shardedWeights ? new float[total] : null;
        foreach (var (src, w) in slices)
        {
            Array.Copy(m, src.Compact, fm, w.Compact, w.Length);
            Array.Copy(v, src.Compact, fv, w.Compact, w.Length);
            if (fw != null) Array.Copy(master!, src.Compact, fw, w.Compact, w.Length);
        }
        var tensors = new List<SafeTensorWrite> { new("exp_avg", [total], fm), new("exp_avg_sq", [total], fv) };
        if (fw != null) tensors.Add(new SafeTensorWrite(MasterTensor, [total], fw));
        SafeTensorsWriter.Write(Path.Combine(tmp, ShardFile(world.Rank)), tensors,
            new Dictionary<string, string> { ["rank"] = world.Rank.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        Durable.SyncFile(Path.Combine(tmp, ShardFile(world.Rank)));
        // every (stage, tensor rank)'s first data rank: the layout and which world rank holds which slices (the data
        // group's world ranks are gathered: with tensor or context ranks inside them they are not consecutive)
        var members = new double[group.WorldSize];
        members[group.Rank] = world.Rank;
        if (group.WorldSize > 1) group.AllReduce(members);
        int tensorRank = layout?.Mesh.TensorRank ?? 0, tp = layout?.Mesh.TensorSize ?? 1;
        if (group.Rank == 0)
        {
            var split = TensorSplit(model, dp.Store);
            var layoutRecord = new CheckpointStage
            {
                Index = stage,
                TensorRank = tensorRank,
                Capacity = dp.Store.Capacity,
                Parameters = dp.Store.Slots.Select(s => split(s.Name, s.Shape) is { } w
                    ? new CheckpointParameter(s.Name, s.Shape, s.Offset) { Whole = w.Whole, SplitDim = w.Placement.Dim, Parts = w.Placement.Parts, Piece = w.Piece }
                    : new CheckpointParameter(s.Name, s.Shape, s.Offset)).ToList(),
                Shards = Enumerable.Range(0, group.WorldSize).Select(r => new CheckpointShard((int)members[r], WriteSlices(dp, r).Select(x => x.Written).ToList())).ToList(),
            };
            File.WriteAllText(Path.Combine(tmp, StageFile(stage, tensorRank)), JsonSerializer.Serialize(layoutRecord, Json));
        }
        world.Barrier();
        if (adapter != null)
        {
            if (layout != null) layout.SaveAdapter(adapter, Path.Combine(tmp, AdapterDir), null);
            else if (world.Rank == 0) adapter.Save(Path.Combine(tmp, AdapterDir));
            if (world.Rank == 0) Durable.WriteAllText(Path.Combine(tmp, "config.json"), model.Config.ToHuggingFaceJson("float32"));
        }
        else if (shardedWeights)
        {
            // the weights are in the rank files: only the model's shape here
            if (world.Rank == 0) Durable.WriteAllText(Path.Combine(tmp, "config.json"), model.Config.ToHuggingFaceJson("float32"));
        }
        else if (layout?.Pipelined == true || layout?.SplitsModel == true) layout.SaveModel(model, tmp);   // gathers tensor shards
        else if (world.Rank == 0) ModelIO.Save(model, tmp);

        if (world.Rank == 0)
        {
            Durable.WriteAllText(Path.Combine(tmp, StateFile), JsonSerializer.Serialize(state));
            // every file durable before the manifest that vouches for them
            foreach (var f in Directory.GetFiles(tmp, "*", SearchOption.AllDirectories)) Durable.SyncFile(f);
            int stages = layout?.Grid?.Stages ?? 1;
            var stageRecords = Enumerable.Range(0, stages * tp).Select(i =>
            {
                string f = Path.Combine(tmp, StageFile(i / tp, i % tp));
                var r = JsonSerializer.Deserialize<CheckpointStage>(File.ReadAllText(f), Json)!;
                File.Delete(f);
                return r;
            }).ToList();
            var names = Directory.GetFiles(tmp, "*", SearchOption.AllDirectories)
                .Select(f => Path.GetRelativePath(tmp, f).Replace('\\', '/')).Order(StringComparer.Ordinal).ToList();
            var manifest = new CheckpointManifest
            {
                Format = shardedWeights ? ShardedWeightsFormat : FormatVersion,
                ShardedWeights = shardedWeights,
                WorldSize = world.WorldSize,
                Pp = stages,
                Tp = tp,
                Cp = layout?.Mesh.ContextSize ?? 1,
                Zero = dp.Stage,
                Stages = stageRecords,
                Files = names.ToDictionary(f => f, f => Sha256(Path.Combine(tmp, f))),
                Sizes = names.ToDictionary(f => f, f => new FileInfo(Path.Combine(tmp, f)).Length),
                ConfigHash = state.Exact is { } exact ? ResumeCheck.Hash(exact) : null,
                Layout = layout?.SplitsModel == true ? $"{layout.Mesh.Describe()}, ZeRO-{dp.Stage}" : $"dp {world.WorldSize / stages} × pp {stages}, ZeRO-{dp.Stage}",
            };
            // the manifest last, then the directory entries, then the rename, then the parent's entry
            Durable.WriteAllText(Path.Combine(tmp, ManifestFile), JsonSerializer.Serialize(manifest, Json));
            Durable.SyncDirectory(Path.Combine(tmp, OptimizerDir));
            Durable.SyncDirectory(tmp);
            if (Directory.Exists(final)) Directory.Delete(final, recursive: true);
            Directory.Move(tmp, final);
            Durable.SyncDirectory(root);
            foreach (var old in List(root).SkipLast(Math.Max(1, keep))) Directory.Delete(old, recursive: true);
        }
        world.Barrier();
        return final;
    }

    static string StageFile(int stage, int tensorRank) => $"stage{stage:D3}.tp{tensorRank:D3}.json";

    /// <summary>How the model's tensor plan splits the parameters of <paramref name="store"/>: the whole shape, the
    /// placement and this rank's piece of a split parameter, null for one held whole (every parameter without tensor
    /// parallelism; an adapter's or a scalar head's).</summary>
    static Func<string, int[], (int[] Whole, Placement Placement, int Piece)?> TensorSplit(LlamaModel? model, ParameterStore store)
    {
        if (model?.Plan is not MeshPlan { ShardsParameters: true } plan || !ReferenceEquals(store, model.Store)) return (_, _) => null;
        var whole = LlamaModel.Specs(model.Config, model.Stage).ToDictionary(p => p.Name, p => p.Shape, StringComparer.Ordinal);
        return (name, local) =>
        {
            if (!whole.TryGetValue(name, out var w)) return null;
            var pl = plan.PlacementOf(name, w);
            return pl.Sharded ? (w, pl, pl.Piece(plan.Mesh.TensorRank, plan.Mesh.TensorSize)) : null;
        };
    }

    /// <summary>The rank files' tensor of fp32 master-weight slices (ZeRO-3 checkpoints).</summary>
    const string MasterTensor = "master";

    /// <summary>Checkpoint directories under root, oldest first.</summary>
    public static List<string> List(string root) => !Directory.Exists(root) ? []
        : Directory.GetDirectories(root, "step_*").Order(StringComparer.Ordinal).ToList();

    /// <summary>A checkpoint directory from "latest" (newest under root) or a path.</summary>
    public static string Resolve(string spec, string root)
    {
        if (spec == "latest")
            return List(root).LastOrDefault() ?? throw new DirectoryNotFoundException($"--resume latest: no checkpoint under {root}");
        if (!Directory.Exists(spec)) throw new DirectoryNotFoundException($"--resume: checkpoint directory not found: {spec}");
        return spec;
    }

    /// <summary>
    /// The checkpoint <paramref name="spec"/> names, verified: "latest" (the newest under root; refused when it is
    /// damaged), "auto" (the newest that validates, each damaged one skipped with a warning; null when there is none,
    /// i.e. a fresh start) or a directory.
    /// </summary>
    public static Loaded? OpenForResume(string spec, string root, Action<string>? warn = null)
    {
        if (spec != "auto") return Open(Resolve(spec, root));
        foreach (var dir in Enumerable.Reverse(List(root)))
        {
            try { return Open(dir); }
            catch (InvalidDataException e) { warn?.Invoke($"warning: skipping damaged checkpoint: {e.Message}"); }
        }
        return null;
    }

    /// <summary>A verified checkpoint: its manifest and state; the weights load into a new model, the moments into an
    /// optimizer of any layout.</summary>
    public sealed class Loaded(string dir, CheckpointManifest manifest, CheckpointState state)
    {
        public string Directory { get; } = dir;
        public CheckpointManifest Manifest { get; } = manifest;
        public CheckpointState State { get; } = state;

        /// <summary>Whether this is a LoRA run's checkpoint (the adapter and config.json, no base weights).</summary>
        public bool HasAdapter => Manifest.Files.ContainsKey($"{AdapterDir}/{PeftAdapter.ConfigFile}");

        /// <summary>Refuses a checkpoint of the other kind: full weights for a [lora] run, or an adapter for a full one.</summary>
        public void RequireKind(bool lora)
        {
            if (lora && !HasAdapter)
                throw new InvalidDataException($"{Directory}: a checkpoint of the full model, but this run trains a [lora] adapter (resume without [lora], or start the LoRA run afresh with model.init_from)");
            if (!lora && HasAdapter)
                throw new InvalidDataException($"{Directory}: a checkpoint of a LoRA adapter (its run had [lora]), but this run trains the full model");
        }

        /// <summary>The adapter's weights and dropout generator into <paramref name="adapter"/> (attached as at the
        /// run's start, so the config must match).</summary>
        public void LoadAdapter(LoraAdapters adapter)
        {
            RequireKind(lora: true);
            adapter.LoadWeights(Path.Combine(Directory, AdapterDir));
            if (State.AdapterRng is { Length: 4 } r) adapter.DropoutRngState = (r[0], r[1], r[2], r[3]);
            else throw new InvalidDataException($"{Directory}: {StateFile} has no adapter dropout RNG state");
        }

        /// <summary>The weights, for the whole model or one pipeline stage (only its parameters are read): from
        /// model.safetensors, or — a ZeRO-3 checkpoint — assembled from every rank's slices by parameter name.</summary>
        public LlamaModel LoadModel(IBackend backend, Func<LlamaConfig, PipelineStage?>? stage = null)
        {
            if (!Manifest.ShardedWeights)
                return ModelIO.Load(Directory, backend, stage == null ? null : c => stage(c) ?? PipelineStage.Whole(c.NumLayers));
            var config = ModelIO.LoadConfig(Directory);
            var model = new LlamaModel(config, backend, stage?.Invoke(config));
            try
            {
                var weights = new Slices(this);
                foreach (var (name, t) in model.Parameters) model.Load(name, weights.Parameter(name, t.Shape, MasterTensor));
                return model;
            }
            catch
            {
                model.Dispose();
                throw;
            }
        }

        /// <summary>
        /// The weights into a model already set up for data parallelism (recipes build the stage's model first): at
        /// ZeRO-3 into this rank's slices of the master weights, otherwise into the model; from model.safetensors or
        /// a ZeRO-3 checkpoint's slices alike.
        /// </summary>
        public void LoadWeights(LlamaModel model, DataParallel dp)
        {
            var split = TensorSplit(model, model.Store);
            if (!Manifest.ShardedWeights && dp.Stage != 3 && !model.Plan.ShardsParameters)
            {
                var files = ModelIO.WeightFiles(Directory);
                ModelIO.LoadWeights(model, files.Index, files.Shards);
                return;
            }
            var slices = Manifest.ShardedWeights ? new Slices(this) : null;
            var whole = slices == null ? WholeTensors() : null;
            // by name: the whole tensor, then this rank's piece of it when its tensor plan splits it
            float[] Read(string name, int[] shape)
            {
                var s = split(name, shape);
                var w = s?.Whole ?? shape;
                var values = slices?.Parameter(name, w, MasterTensor) ?? whole!(name, w);
                return s is { } t ? t.Placement.Cut(t.Whole, values, t.Piece) : values;
            }
            if (dp.Stage != 3)
            {
                foreach (var (name, t) in model.Parameters) model.Load(name, Read(name, t.Shape));
                return;
            }
            if (!ReferenceEquals(dp.Store, model.Store)) throw new ArgumentException("the data-parallel set-up belongs to another store than the model's");
            foreach (var slice in dp.Layout.Owned)
            {
                long end = slice.Start + slice.Length;
                foreach (var p in dp.Store.Slots)
                {
                    long lo = Math.Max(p.Offset, slice.Start), hi = Math.Min(p.Offset + p.Numel, end);
                    if (lo >= hi) continue;
                    var values = Read(p.Name, p.Shape);
                    model.Backend.Upload(dp.OwnedMaster(slice).Range(lo - slice.Start, hi - lo), values.AsSpan((int)(lo - p.Offset), (int)(hi - lo)));
                }
            }
        }

        /// <summary>A reader of whole tensors by name from model.safetensors (or its shards and index).</summary>
        Func<string, int[], float[]> WholeTensors()
        {
            var files = ModelIO.WeightFiles(Directory);
            var where = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var f in files.Shards)
            {
                using var st = SafeTensorsFile.Open(f);
                foreach (var e in st.Entries) where.TryAdd(e.Name, f);
            }
            return (name, shape) =>
            {
                if (!where.TryGetValue(name, out var f)) throw new InvalidDataException($"{Directory}: the checkpoint's weights have no tensor '{name}'");
                using var st = SafeTensorsFile.Open(f);
                var e = st.Entries.First(x => x.Name == name);
                if (!e.Shape.SequenceEqual(shape.Select(d => (long)d)))
                    throw new InvalidDataException($"{f}: tensor '{name}' has shape [{string.Join(", ", e.Shape)}], the model expects {Shape.Format(shape)}");
                return st.ReadFloat32(name);
            };
        }

        /// <summary>Fills <paramref name="opt"/>'s moments for its rank, layout and stage (mapped by parameter name and
        /// element from whichever stage and rank wrote them; parameters the checkpoint lacks start at zero) and its step.</summary>
        /// <param name="model">The model whose tensor plan splits the optimizer's parameters (null: none does).</param>
        public void LoadOptimizer(AdamW opt, LlamaModel? model = null)
        {
            var dp = opt.Parallel;
            var slices = new Slices(this);
            var split = TensorSplit(model, dp.Store);
            var m = new float[dp.Layout.OwnedElements];
            var v = new float[dp.Layout.OwnedElements];
            // a parameter that either layout splits over tensor ranks: whole moments by name, then this rank's piece
            var pieces = new Dictionary<string, (float[] M, float[] V)?>(StringComparer.Ordinal);
            (float[] M, float[] V)? Pieces(ParameterSlot p)
            {
                if (pieces.TryGetValue(p.Name, out var got)) return got;
                var s = split(p.Name, p.Shape);
                if (s == null && !slices.IsSplit(p.Name)) return pieces[p.Name] = null;
                var w = s?.Whole ?? p.Shape;
                float[] Cut(float[] x) => s is { } t ? t.Placement.Cut(t.Whole, x, t.Piece) : x;
                return pieces[p.Name] = slices.Knows(p.Name) ? (Cut(slices.Parameter(p.Name, w, "exp_avg")), Cut(slices.Parameter(p.Name, w, "exp_avg_sq"))) : null;
            }
            foreach (var slice in dp.Layout.Owned)
            {
                long end = slice.Start + slice.Length;
                foreach (var p in dp.Store.Slots)
                {
                    long lo = Math.Max(p.Offset, slice.Start), hi = Math.Min(p.Offset + p.Numel, end);
                    if (lo >= hi) continue;
                    long to = slice.Compact + (lo - slice.Start);
                    if (Pieces(p) is { } mv)
                    {
                        Array.Copy(mv.M, lo - p.Offset, m, to, hi - lo);
                        Array.Copy(mv.V, lo - p.Offset, v, to, hi - lo);
                    }
                    else slices.Copy(p.Name, p.Shape, lo - p.Offset, hi - lo, to, ("exp_avg", m), ("exp_avg_sq", v));
                }
            }
            opt.ImportState(State.AdamStep, m, v);
        }

        /// <summary>
        /// The rank files' compact tensors (moments; ZeRO-3's master weights) read by parameter name and element: a
        /// parameter is looked up in whichever stage's layout holds it (a tied copy on two stages has equal values), its
        /// flat range cut into the pieces the ranks wrote.
        /// </summary>
        sealed class Slices
        {
            readonly Loaded ckpt;
            // every (stage, tensor rank) layout holding a parameter: one for a whole one, a piece each for a split one
            readonly Dictionary<string, List<(CheckpointStage Stage, CheckpointParameter Param)>> byName = new(StringComparer.Ordinal);
            readonly Dictionary<CheckpointStage, List<(int Rank, CheckpointSlice Slice)>> owners;
            readonly Dictionary<(int Rank, string Tensor), float[]> files = new();

            public Slices(Loaded ckpt)
            {
                this.ckpt = ckpt;
                foreach (var st in ckpt.Manifest.Stages)
                    foreach (var p in st.Parameters)
                    {
                        if (!byName.TryGetValue(p.Name, out var list)) byName[p.Name] = list = [];
                        list.Add((st, p));
                    }
                owners = ckpt.Manifest.Stages.ToDictionary(st => st,
                    st => st.Shards.SelectMany(sh => sh.Slices.Select(sl => (sh.Rank, Slice: sl))).OrderBy(x => x.Slice.Start).ToList());
            }

            public bool Knows(string name) => byName.ContainsKey(name);

            /// <summary>Whether the layout that wrote the checkpoint split the parameter over its tensor ranks.</summary>
            public bool IsSplit(string name) => byName.TryGetValue(name, out var l) && l[0].Param.Parts > 1;

            float[] File(int rank, string tensor)
            {
                if (files.TryGetValue((rank, tensor), out var f)) return f;
                using var st = SafeTensorsFile.Open(Path.Combine(ckpt.Directory, ShardFile(rank)));
                if (!st.Entries.Any(e => e.Name == tensor)) throw new InvalidDataException($"{ckpt.Directory}: {ShardFile(rank)} has no '{tensor}'");
                f = st.ReadFloat32(tensor);
                long expect = ckpt.Manifest.Stages.SelectMany(x => x.Shards).Where(x => x.Rank == rank).Sum(x => x.Slices.Sum(y => y.Length));
                if (f.Length != expect)
                    throw new InvalidDataException($"{ckpt.Directory}: {ShardFile(rank)} holds {f.Length} values of {tensor}, the manifest lists {expect}");
                return files[(rank, tensor)] = f;
            }

            /// <summary>Elements [from, from + count) of parameter <paramref name="name"/> into each destination from
            /// element <paramref name="to"/>; false (nothing written) when the checkpoint lacks the parameter.</summary>
            public bool Copy(string name, int[] shape, long from, long count, long to, params (string Tensor, float[] Into)[] dest)
            {
                if (!byName.TryGetValue(name, out var found)) return false;
                var (ost, op) = found[0];
                if (!op.Shape.AsSpan().SequenceEqual(shape))
                    throw new InvalidDataException($"{ckpt.Directory}: parameter {name} has shape {Shape.Format(op.Shape)} in the checkpoint, {Shape.Format(shape)} in this model");
                CopyFrom(ost, op, from, count, to, dest);
                return true;
            }

            /// <summary>Elements of one layout's copy (or piece) of a parameter.</summary>
            void CopyFrom(CheckpointStage ost, CheckpointParameter op, long from, long count, long to, (string Tensor, float[] Into)[] dest)
            {
                long flat = op.Offset + from;
                while (count > 0)
                {
                    var (rank, s) = Owner(owners[ost], flat) ?? throw new InvalidDataException($"{ckpt.Directory}: no rank's file holds element {flat} of stage {ost.Index}'s layout ({op.Name})");
                    long n = Math.Min(count, s.Start + s.Length - flat);
                    long at = s.Compact + (flat - s.Start);
                    foreach (var (tensor, into) in dest) Array.Copy(File(rank, tensor), at, into, to, n);
                    flat += n; to += n; count -= n;
                }
            }

            /// <summary>A whole parameter of the named tensor (the checkpoint must hold it), joined from the pieces its
            /// tensor ranks wrote when the writing layout split it.</summary>
            public float[] Parameter(string name, int[] shape, string tensor)
            {
                if (!byName.TryGetValue(name, out var found))
                    throw new InvalidDataException($"{ckpt.Directory}: the checkpoint's weights have no parameter '{name}'");
                if (!found[0].Param.WholeShape.AsSpan().SequenceEqual(shape))
                    throw new InvalidDataException($"{ckpt.Directory}: parameter {name} has shape {Shape.Format(found[0].Param.WholeShape)} in the checkpoint, {Shape.Format(shape)} in this model");
                var values = new float[Shape.Numel(shape)];
                var placement = found[0].Param.Placement;
                if (!placement.Sharded)
                {
                    CopyFrom(found[0].Stage, found[0].Param, 0, values.Length, 0, [(tensor, values)]);
                    return values;
                }
                var done = new bool[placement.Parts];
                foreach (var (st, p) in found)
                {
                    if (p.Placement != placement || !p.WholeShape.AsSpan().SequenceEqual(shape))
                        throw new InvalidDataException($"{ckpt.Directory}: parameter {name} is split as {placement} of {Shape.Format(shape)} by one tensor rank's layout and as {p.Placement} of {Shape.Format(p.WholeShape)} by another");
                    if (done[p.Piece]) continue;   // a piece several tensor ranks hold (key/value heads fewer than tp)
                    var piece = new float[Shape.Numel(p.Shape)];
                    CopyFrom(st, p, 0, piece.Length, 0, [(tensor, piece)]);
                    placement.Place(shape, values, piece, p.Piece);
                    done[p.Piece] = true;
                }
                int missing = Array.IndexOf(done, false);
                if (missing >= 0) throw new InvalidDataException($"{ckpt.Directory}: no tensor rank's layout holds piece {missing} of {placement.Parts} of parameter '{name}'");
                return values;
            }
        }

        static (int Rank, CheckpointSlice Slice)? Owner(List<(int Rank, CheckpointSlice Slice)> owners, long element)
        {
            int lo = 0, hi = owners.Count - 1;
            while (lo <= hi)
            {
                int mid = (lo + hi) / 2;
                var s = owners[mid].Slice;
                if (element < s.Start) hi = mid - 1;
                else if (element >= s.Start + s.Length) lo = mid + 1;
                else return owners[mid];
            }
            return null;
        }
    }

    /// <summary>Verifies the manifest (every file present with its SHA-256) and reads the state.</summary>
    public static Loaded Open(string dir)
    {
        // names and JSON literals from the files end up in messages: keep each message one line
        try { return OpenCore(dir); }
        catch (InvalidDataException e) { throw new InvalidDataException(ErrorText.OneLine(e.Message), e); }
    }

    static Loaded OpenCore(string dir)
    {
        string manifestPath = Path.Combine(dir, ManifestFile);
        if (!File.Exists(manifestPath)) throw new InvalidDataException($"{dir}: not a checkpoint (no {ManifestFile})");
        CheckpointManifest manifest;
        try
        {
            manifest = JsonSerializer.Deserialize<CheckpointManifest>(File.ReadAllText(manifestPath), Json)
                ?? throw new InvalidDataException($"{manifestPath}: empty manifest");
        }
        catch (JsonException e) { throw new InvalidDataException($"{manifestPath}: not a checkpoint manifest ({e.Message})"); }
        if (manifest.Format != (manifest.ShardedWeights ? ShardedWeightsFormat : FormatVersion))
            throw new InvalidDataException($"{manifestPath}: checkpoint format {manifest.Format}{(manifest.ShardedWeights ? " with sharded weights" : "")}, this engine reads format {FormatVersion} (weights in model.safetensors) and {ShardedWeightsFormat} (weights sharded with the moments)");
        CheckLayout(manifest, manifestPath);
        if (manifest.Files.Count == 0 || manifest.WorldSize < 1 || manifest.Stages.Count != manifest.Pp * manifest.Tp
            || manifest.Stages.Sum(st => st.Shards.Count) != manifest.WorldSize)
            throw new InvalidDataException($"{manifestPath}: the manifest lists no files, or its stages and shards do not match its world size {manifest.WorldSize}");
        string root = Path.GetFullPath(dir);
        foreach (var (file, hash) in manifest.Files)
        {
            if (file.Length == 0 || file.Contains('\0')) throw new InvalidDataException($"{manifestPath}: file name '{file}' is empty or holds a NUL");
            string p = Path.GetFullPath(Path.Combine(dir, file));
            if (!p.StartsWith(root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw new InvalidDataException($"{manifestPath}: file '{file}' lies outside the checkpoint directory");
            if (!File.Exists(p)) throw new InvalidDataException($"{dir}: {file} listed in the manifest is missing");
            if (manifest.Sizes?.GetValueOrDefault(file, -1) is long size and >= 0 && new FileInfo(p).Length != size)
                throw new InvalidDataException($"{dir}: {file} holds {new FileInfo(p).Length} bytes, the manifest lists {size} (truncated or corrupted checkpoint)");
            if (Sha256(p) != hash) throw new InvalidDataException($"{dir}: {file} does not match its SHA-256 in the manifest (corrupted checkpoint)");
        }
        foreach (var required in new[] { StateFile, "config.json" })
            if (!manifest.Files.ContainsKey(required)) throw new InvalidDataException($"{manifestPath}: the manifest lists no {required}");
        // every optimizer file must hold both AdamW moments, as many as the manifest gives its rank
        foreach (var sh in manifest.Stages.SelectMany(st => st.Shards))
        {
            string rel = ShardFile(sh.Rank).Replace('\\', '/');
            if (!manifest.Files.ContainsKey(rel)) continue;   // reported below
            string path = Path.Combine(dir, ShardFile(sh.Rank));
            long expect = sh.Slices.Sum(x => x.Length);
            try
            {
                using var st = SafeTensorsFile.Open(path);
                foreach (var moment in manifest.ShardedWeights ? new[] { "exp_avg", "exp_avg_sq", MasterTensor } : ["exp_avg", "exp_avg_sq"])
                {
                    var e = st.Entries.FirstOrDefault(x => x.Name == moment)
                        ?? throw new InvalidDataException($"{dir}: {rel} has no {moment} ({(moment == MasterTensor ? "sharded master weights" : "AdamW moments")} missing)");
                    if (e.Shape.Aggregate(1L, (a, b) => a * b) != expect)
                        throw new InvalidDataException($"{dir}: {rel}: {moment} holds {e.Shape.Aggregate(1L, (a, b) => a * b)} values, the manifest lists {expect}");
                }
            }
            catch (InvalidDataException e) when (!e.Message.Contains(rel, StringComparison.Ordinal))
            {
                throw new InvalidDataException($"{dir}: {rel} is not a valid optimizer file ({e.Message})");
            }
        }
        foreach (var sh in manifest.Stages.SelectMany(st => st.Shards))
            if (!manifest.Files.ContainsKey(ShardFile(sh.Rank).Replace('\\', '/')))
                throw new InvalidDataException($"{dir}: the manifest lists no optimizer file for rank {sh.Rank}");
        CheckpointState state;
        try
        {
            state = JsonSerializer.Deserialize<CheckpointState>(File.ReadAllText(Path.Combine(dir, StateFile)))
                ?? throw new InvalidDataException($"{dir}: empty {StateFile}");
        }
        catch (JsonException e) { throw new InvalidDataException($"{dir}: {StateFile} is not valid ({e.Message})"); }
        if (state.Rng is not { Length: 4 }) throw new InvalidDataException($"{dir}: {StateFile} has no sampler RNG state");
        if (state.Step < 0 || state.AdamStep < 0 || state.Tokens < 0) throw new InvalidDataException($"{dir}: {StateFile} has a negative step or token count");
        return new Loaded(dir, manifest, state);
    }

    /// <summary>
    /// The manifest's layout as loading relies on it, checked before anything is read (the fuzz target `checkpoint` in
    /// tools/fuzz found each of these as a crash): every list present, parameters with non-negative shapes whose flat
    /// ranges lie inside their stage's capacity, distinct stage indexes below pp, distinct ranks below the world size,
    /// and slices inside the capacity and their rank's file, not overlapping within a stage.
    /// </summary>
    static void CheckLayout(CheckpointManifest manifest, string path)
    {
        InvalidDataException Bad(string what) => new($"{path}: {what}");
        if (manifest.Files == null || manifest.Stages == null) throw Bad("'files' or 'stages' is missing");
        if (manifest.WorldSize < 1 || manifest.Pp < 1) throw Bad($"world_size {manifest.WorldSize} and pp {manifest.Pp} must be >= 1");
        if (manifest.Tp < 1 || manifest.Cp < 1) throw Bad($"tp {manifest.Tp} and cp {manifest.Cp} must be >= 1");
        if ((long)manifest.Pp * manifest.Tp * manifest.Cp > manifest.WorldSize)
            throw Bad($"pp {manifest.Pp} × cp {manifest.Cp} × tp {manifest.Tp} is more ranks than world_size {manifest.WorldSize}");
        var stageIndexes = new HashSet<(int, int)>();
        var ranks = new HashSet<int>();
        var fileLength = new Dictionary<int, long>();
        foreach (var st in manifest.Stages)
        {
            if (st?.Parameters == null || st.Shards == null) throw Bad("a stage without 'parameters' or 'shards'");
            if (st.Index < 0 || st.Index >= manifest.Pp || st.TensorRank < 0 || st.TensorRank >= manifest.Tp || !stageIndexes.Add((st.Index, st.TensorRank)))
                throw Bad($"stage index {st.Index} (tensor rank {st.TensorRank}) is repeated or outside 0..{manifest.Pp - 1} (tensor ranks 0..{manifest.Tp - 1})");
            if (st.Capacity < 0) throw Bad($"stage {st.Index} has capacity {st.Capacity}");
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in st.Parameters)
            {
                if (p?.Name == null || p.Shape == null || !names.Add(p.Name)) throw Bad($"stage {st.Index}: a parameter without a name or shape, or named twice");
                long numel = 1;
                foreach (int d in p.Shape)
                    numel = d >= 0 && (d == 0 || numel <= long.MaxValue / d) ? numel * d : throw Bad($"parameter {p.Name}: shape {Shape.Format(p.Shape)} is negative or overflows");
                if (p.Offset < 0 || p.Offset > st.Capacity - numel) throw Bad($"parameter {p.Name}: elements {p.Offset}+{numel} lie outside stage {st.Index}'s capacity {st.Capacity}");
                // a tensor-parallel piece: Parts (at most tp) equal pieces of Whole along SplitDim, this one Piece
                if (p.Parts < 1 || p.Parts > manifest.Tp || p.Piece < 0 || p.Piece >= p.Parts)
                    throw Bad($"parameter {p.Name}: piece {p.Piece} of {p.Parts} is not a piece of a split over tp {manifest.Tp}");
                if (p.Whole is { } whole)
                {
                    bool pieces = whole.Length == p.Shape.Length && p.SplitDim >= 0 && p.SplitDim < whole.Length;
                    for (int d = 0; pieces && d < whole.Length; d++)
                        pieces = whole[d] == (d == p.SplitDim ? (long)p.Shape[d] * p.Parts : p.Shape[d]);
                    if (!pieces) throw Bad($"parameter {p.Name}: whole shape {Shape.Format(whole)} is not {p.Parts} pieces of {Shape.Format(p.Shape)} along dimension {p.SplitDim}");
                }
                else if (p.Parts > 1) throw Bad($"parameter {p.Name}: split into {p.Parts} pieces without its whole shape");
            }
            var slices = new List<CheckpointSlice>();
            foreach (var sh in st.Shards)
            {
                if (sh?.Slices == null) throw Bad($"stage {st.Index}: a shard without 'slices'");
                if (sh.Rank < 0 || sh.Rank >= manifest.WorldSize || !ranks.Add(sh.Rank)) throw Bad($"rank {sh.Rank} is repeated or outside 0..{manifest.WorldSize - 1}");
                long total = 0;
                foreach (var sl in sh.Slices)
                {
                    if (sl == null || sl.Start < 0 || sl.Length < 0 || sl.Start > st.Capacity - sl.Length || sl.Compact < 0 || total > long.MaxValue - sl.Length)
                        throw Bad($"rank {sh.Rank}: slice {sl} lies outside stage {st.Index}'s capacity {st.Capacity}");
                    total += sl.Length;
                    slices.Add(sl);
                }
                fileLength[sh.Rank] = total;
                foreach (var sl in sh.Slices)
                    if (sl.Compact > total - sl.Length) throw Bad($"rank {sh.Rank}: slice {sl} lies outside its file's {total} moments");
            }
            slices.Sort((a, b) => a.Start.CompareTo(b.Start));
            for (int i = 1; i < slices.Count; i++)
                if (slices[i].Start < slices[i - 1].Start + slices[i - 1].Length) throw Bad($"stage {st.Index}: slices {slices[i - 1]} and {slices[i]} overlap");
        }
    }

    static string Sha256(string path)
    {
        using var s = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(s));
    }
}
