using Engine.Core;

namespace Engine.Model.IO;

/// <summary>
/// Saves and loads a Llama in the Hugging Face layout: config.json + model.safetensors, or shards +
/// model.safetensors.index.json (see <see cref="SafeTensorsIndex"/>), plus the files that make the directory
/// self-contained — tokenizer.json, tokenizer_config.json, generation_config.json, chat_template.jinja — when the
/// model carries them (<see cref="ModelArtifacts"/>: attached by the run, or read with a directory that had them).
/// F32, BF16 and F16 tensors are read (widened exactly to the fp32 masters) and written.
/// </summary>
public static class ModelIO
{
    public const string WeightsFile = "model.safetensors";
    public const string ConfigFile = "config.json";
    public const string GenerationConfigFile = "generation_config.json";
    public const string TokenizerConfigFile = "tokenizer_config.json";
    public const string ChatTemplateFile = "chat_template.jinja";
    public const string TokenizerFile = "tokenizer.json";

    /// <summary>One tensor to save: its name, shape, and a function producing its fp32 values when its shard is written.</summary>
    public sealed record TensorSource(string Name, long[] Shape, Func<float[]> Values)
    {
        public long Numel => Shape.Aggregate(1L, (a, b) => a * b);
    }

    /// <summary>
    /// Writes weights (F32, BF16 or F16) and config.json; weights go to shards of at most maxShardBytes (transformers'
    /// default 5 GB) with an index when they do not fit one file. Each file is replaced atomically; shards and index
    /// files of an earlier save that the new one does not use are removed.
    /// </summary>
    public static void Save(LlamaModel model, string directory, string dtype = "F32", IReadOnlyDictionary<string, string>? metadata = null,
        long maxShardBytes = SafeTensorsIndex.DefaultMaxShardBytes)
    {
        var tensors = model.Parameters.Select(p => new TensorSource(p.Name, p.Tensor.Shape.Select(d => (long)d).ToArray(), () => p.Tensor.ToArray())).ToList();
        Save(model.Config, tensors, directory, dtype, metadata, maxShardBytes);
    }

    /// <summary>Writes the given tensors and config (used by export, which transforms tensors on the way out). The
    /// tensors carry the engine's parameter names; they are written in the config's family layout (<see cref="HfLayout"/>).</summary>
    public static void Save(LlamaConfig config, IReadOnlyList<TensorSource> tensors, string directory, string dtype = "F32",
        IReadOnlyDictionary<string, string>? metadata = null, long maxShardBytes = SafeTensorsIndex.DefaultMaxShardBytes)
    {
        tensors = HfLayout.ToHf(config, tensors);
        int elem = SafeTensorsWriter.ElementSize(dtype);
        Directory.CreateDirectory(directory);
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        if (metadata != null) foreach (var (k, v) in metadata) meta[k] = v;

        var bytes = tensors.Select(t => t.Numel * elem).ToList();
        var shards = SafeTensorsIndex.Plan(bytes, maxShardBytes);
        var written = new HashSet<string>(StringComparer.Ordinal);
        var map = new List<(string, string)>();
        for (int s = 0; s < shards.Count; s++)
        {
            string file = SafeTensorsIndex.ShardFileName(s, shards.Count);
            SafeTensorsWriter.Write(Path.Combine(directory, file),
                shards[s].Select(i => new SafeTensorWrite(tensors[i].Name, tensors[i].Shape, tensors[i].Values(), dtype)), meta);
            written.Add(file);
            foreach (int i in shards[s]) map.Add((tensors[i].Name, file));
        }
        string indexPath = Path.Combine(directory, SafeTensorsIndex.IndexFile);
        if (shards.Count > 1) WriteText(indexPath, SafeTensorsIndex.IndexJson(bytes.Sum(), map));
        else File.Delete(indexPath);
        foreach (var f in Directory.EnumerateFiles(directory))
        {
            string name = Path.GetFileName(f);
            if ((SafeTensorsIndex.IsShardName(name) || name == WeightsFile) && !written.Contains(name)) File.Delete(f);
        }

        string torchDtype = dtype switch { "BF16" => "bfloat16", "F16" => "float16", _ => "float32" };
        WriteText(Path.Combine(directory, ConfigFile), config.ToHuggingFaceJson(torchDtype));
        WriteSideFiles(config, directory);
    }

    /// <summary>The files beside config.json and the weights that a model carries (<see cref="ModelArtifacts"/>):
    /// generation_config.json — from the special ids when a model with a tokenizer carries none — and the tokenizer's.</summary>
    public static void WriteSideFiles(LlamaConfig config, string directory)
    {
        var hf = config.Hf;
        string? gen = hf?.GenerationConfig ?? (hf?.TokenizerJson != null ? ModelArtifacts.GenerationConfigJson(config) : null);
        if (gen != null) WriteText(Path.Combine(directory, GenerationConfigFile), gen);
        WriteTokenizerFiles(config, directory);
    }

    /// <summary>
    /// The tokenizer files a model carries (<see cref="ModelArtifacts"/>: tokenizer.json, tokenizer_config.json,
    /// chat_template.jinja) into a directory — every saved model directory, and a LoRA adapter's, as Hugging Face's
    /// Trainer saves the tokenizer beside an adapter.
    /// </summary>
    public static void WriteTokenizerFiles(LlamaConfig config, string directory)
    {
        var hf = config.Hf;
        if (hf?.TokenizerJson is { } tj) WriteText(Path.Combine(directory, TokenizerFile), tj);
        if (hf?.TokenizerConfig is { } tc) WriteText(Path.Combine(directory, TokenizerConfigFile), tc);
        string jinjaPath = Path.Combine(directory, ChatTemplateFile);
        if (hf?.ChatTemplateJinja is { } jinja) WriteText(jinjaPath, jinja);
        else if (hf?.TokenizerConfig != null) File.Delete(jinjaPath);   // a stale template would override tokenizer_config.json's
    }

    static void WriteText(string path, string text)
    {
        File.WriteAllText(path + ".tmp", text);
        File.Move(path + ".tmp", path, overwrite: true);
    }

    /// <summary>
    /// Loads config.json and the weights (model.safetensors, or the shards named by model.safetensors.index.json);
    /// every model parameter must be present with its shape. tokenizer.json, generation_config.json,
    /// tokenizer_config.json and chat_template.jinja, when present, ride along in <see cref="LlamaConfig.Hf"/> to the next save.
    /// </summary>
    public static LlamaModel Load(string directory, IBackend backend) => Load(directory, backend, null);

    /// <summary>As <see cref="Load(string, IBackend)"/>, for one pipeline stage (only its parameters are read), the
    /// stage given by a function of the config (its layer count).</summary>
    public static LlamaModel Load(string directory, IBackend backend, Func<LlamaConfig, PipelineStage>? stage)
    {
        // names from the files (tensor and shard names) end up in messages: keep each message one line
        try { return LoadCore(directory, backend, stage); }
        catch (InvalidDataException e) { throw new InvalidDataException(ErrorText.OneLine(e.Message), e); }
        catch (FileNotFoundException e) { throw new FileNotFoundException(ErrorText.OneLine(e.Message), e.FileName, e); }
    }

    static LlamaModel LoadCore(string directory, IBackend backend, Func<LlamaConfig, PipelineStage>? stage)
    {
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"model directory not found: {directory}");
        var cfg = LoadConfig(directory);
        var files = WeightFiles(directory);
        CheckConfigAgainstWeights(cfg, Path.Combine(directory, ConfigFile), files.Shards);
        var model = new LlamaModel(cfg, backend, stage?.Invoke(cfg));
        try
        {
            LoadWeights(model, files.Index, files.Shards);
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Refuses, before the model is allocated, a config.json that describes more parameters than the weight files
    /// hold values: the allocation is then bounded by the files' size, whatever the config claims.
    /// </summary>
    static void CheckConfigAgainstWeights(LlamaConfig cfg, string configPath, IReadOnlyList<string> shards)
    {
        long values = 0;
        var shapes = new Dictionary<string, long[]>(StringComparer.Ordinal);
        foreach (var path in shards)
        {
            using var f = SafeTensorsFile.Open(path);
            foreach (var e in f.Entries) { values += e.Numel; shapes.TryAdd(e.Name, e.Shape); }   // each bounded by its file's size
        }
        double need = cfg.ParameterCountEstimate();
        if (need > values)
            throw new InvalidDataException($"{configPath}: describes a model of {need:N0} parameters but the weight files hold only {values:N0} values " +
                $"(vocab_size {cfg.VocabSize}, hidden_size {cfg.HiddenSize}, intermediate_size {cfg.IntermediateSize}, num_hidden_layers {cfg.NumLayers}): " +
                $"config.json and the weights disagree{FirstDisagreement(cfg, shapes)}");
    }

    /// <summary>The first tensor of the first and last layer whose shape in the files differs from the config's, as
    /// "; tensor NAME …" (empty when those agree): the refusal above then names what differs.</summary>
    static string FirstDisagreement(LlamaConfig cfg, Dictionary<string, long[]> shapes)
    {
        // the embedding and the 2-D weights of the first and last layer, in the family's layout (two one-layer "stages":
        // nothing is listed for the layers between, however many the config claims)
        int n = cfg.NumLayers;
        var expect = HfLayout.Tensors(cfg, new PipelineStage(0, 2, 0, 1)).Concat(n > 1 ? HfLayout.Tensors(cfg, new PipelineStage(1, 2, n - 1, n)) : [])
            .Where(t => t.Name == "model.embed_tokens.weight" || (t.Shape.Length == 2 && t.Name.StartsWith("model.layers.", StringComparison.Ordinal))).ToList();
        foreach (var (name, shape) in expect)
        {
            if (!shapes.TryGetValue(name, out var got)) return $"; tensor {name} is missing from the weights";
            if (!got.AsSpan().SequenceEqual(shape))
                return $"; tensor {name} is [{string.Join(", ", got)}] in the weights, the config gives [{string.Join(", ", shape)}]";
        }
        return "";
    }

    /// <summary>config.json of a model directory, with the Hugging Face side files it holds.</summary>
    public static LlamaConfig LoadConfig(string directory)
    {
        string cfgPath = Path.Combine(directory, ConfigFile);
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"model directory {directory} has no {ConfigFile}", cfgPath);
        var cfg = LlamaConfig.FromHuggingFaceJson(File.ReadAllText(cfgPath), cfgPath);
        string? Side(string name)
        {
            string p = Path.Combine(directory, name);
            return File.Exists(p) ? File.ReadAllText(p) : null;
        }
        string? gen = Side(GenerationConfigFile), tc = Side(TokenizerConfigFile), jinja = Side(ChatTemplateFile), tok = Side(TokenizerFile);
        if (gen == null && tc == null && jinja == null && tok == null) return cfg;
        return cfg with { Hf = (cfg.Hf ?? new HfExtras()) with { GenerationConfig = gen, TokenizerConfig = tc, ChatTemplateJinja = jinja, TokenizerJson = tok } };
    }

    /// <summary>
    /// The weight files of a directory: model.safetensors alone, or the index and its shards. Both at once, pickle
    /// checkpoints (.bin) only, or nothing, are refused with the reason.
    /// </summary>
    public static (string? Index, IReadOnlyList<string> Shards) WeightFiles(string directory)
    {
        string single = Path.Combine(directory, WeightsFile);
        string index = Path.Combine(directory, SafeTensorsIndex.IndexFile);
        bool hasSingle = File.Exists(single), hasIndex = File.Exists(index);
        if (hasSingle && hasIndex)
            throw new InvalidDataException($"{directory} holds both {WeightsFile} and {SafeTensorsIndex.IndexFile}: remove the stale one");
        if (hasSingle) return (null, [single]);
        if (hasIndex)
        {
            var map = SafeTensorsIndex.Read(index);
            var shards = map.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).Select(s => Path.Combine(directory, s)).ToList();
            foreach (var s in shards)
                if (!File.Exists(s)) throw new FileNotFoundException($"{index}: shard {Path.GetFileName(s)} listed in the index is missing", s);
            return (index, shards);
        }
        if (File.Exists(Path.Combine(directory, "pytorch_model.bin")) || File.Exists(Path.Combine(directory, "pytorch_model.bin.index.json")))
            throw new InvalidDataException($"{directory}: only PyTorch pickle weights (pytorch_model*.bin), which the engine does not read: convert them to safetensors");
        throw new FileNotFoundException($"model directory {directory} has no {WeightsFile} or {SafeTensorsIndex.IndexFile}", single);
    }

    /// <summary>Loads one safetensors file's weights into the model (every parameter must be there).</summary>
    public static void LoadWeights(LlamaModel model, string path) => LoadWeights(model, null, [path]);

    /// <summary>
    /// Loads weights from shards (and checks them against the index when given): every parameter exactly once with
    /// its shape, F32/BF16/F16; no unknown tensor (rotary inv_freq buffers, and lm_head.weight of a tied model, are
    /// skipped as transformers skips them); with an index, each tensor in the shard it names and none unlisted.
    /// </summary>
    public static void LoadWeights(LlamaModel model, string? indexPath, IReadOnlyList<string> shards)
    {
        var map = indexPath != null ? SafeTensorsIndex.Read(indexPath) : null;
        var cfg = model.Config;
        var otherStages = model.Stage.Count > 1 ? HfLayout.Tensors(cfg).Select(p => p.Name).ToHashSet(StringComparer.Ordinal) : null;
        var seen = new Dictionary<string, string>(StringComparer.Ordinal);
        var loaded = new HashSet<string>(StringComparer.Ordinal);   // engine parameters filled
        var unknown = new List<string>();
        foreach (var path in shards)
        {
            using var f = SafeTensorsFile.Open(path);
            string file = Path.GetFileName(path);
            foreach (var e in f.Entries)
            {
                if (map != null)
                {
                    if (!map.TryGetValue(e.Name, out var listed))
                        throw new InvalidDataException($"{indexPath}: shard {file} holds tensor '{e.Name}', which the index does not list");
                    if (listed != file)
                        throw new InvalidDataException($"{indexPath}: the index puts tensor '{e.Name}' in {listed} but it is in {file}");
                }
                if (!seen.TryAdd(e.Name, file))
                    throw new InvalidDataException($"{path}: tensor '{e.Name}' is also in {seen[e.Name]}");
                if (HfLayout.Parts(cfg, e.Name) is { } parts && model.HasParameter(parts[0].Parameter))
                {
                    // a packed tensor (Baichuan's W_pack): its row blocks are separate parameters
                    long rows = parts.Sum(x => (long)x.Rows), cols = cfg.HiddenSize;
                    if (!e.Shape.SequenceEqual([rows, cols]))
                        throw new InvalidDataException($"{path}: tensor '{e.Name}' has shape [{string.Join(", ", e.Shape)}], the model expects [{rows}, {cols}] (q, k and v rows packed)");
                    var all = f.ReadFloat32(e.Name);
                    foreach (var (param, firstRow, count) in parts)
                    {
                        model.Load(param, all.AsSpan(checked((int)(firstRow * cols)), checked((int)(count * cols))));
                        loaded.Add(param);
                    }
                    continue;
                }
                if (!model.HasParameter(e.Name) || (cfg.Family == ModelFamily.Baichuan && IsPackedPart(e.Name)))
                {
                    bool skipped = e.Name.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal)
                        || (e.Name == "lm_head.weight" && model.Config.TieWordEmbeddings)
                        || (otherStages?.Contains(e.Name) ?? false);   // a pipeline stage reads only its own
                    if (!skipped) unknown.Add(e.Name);
                    continue;
                }
                var t = model[e.Name];
                if (!e.Shape.SequenceEqual(t.Shape.Select(d => (long)d)))
                    throw new InvalidDataException($"{path}: tensor '{e.Name}' has shape [{string.Join(", ", e.Shape)}], the model expects {Shape.Format(t.Shape)}");
                model.Load(e.Name, f.ReadFloat32(e.Name));
                loaded.Add(e.Name);
            }
        }
        string where = indexPath ?? shards[0];
        if (map != null)
            foreach (var (name, shard) in map)
                if (!seen.ContainsKey(name)) throw new InvalidDataException($"{indexPath}: the index puts tensor '{name}' in {shard}, which has no such tensor");
        if (unknown.Count > 0)
        {
            string hint = cfg.Family == ModelFamily.Baichuan && unknown.Any(IsPackedPart)
                ? " (config.json says Baichuan, whose layout packs each layer's q, k and v into one model.layers.N.self_attn.W_pack.weight)" : "";
            throw new InvalidDataException($"{where}: tensors the model does not have: {string.Join(", ", unknown.Take(5))}{(unknown.Count > 5 ? ", …" : "")}{hint}");
        }
        foreach (var (name, _) in model.Parameters)
            if (!loaded.Contains(name))
                throw new InvalidDataException($"{where}: missing tensor '{FileName(cfg, name)}'");
    }

    /// <summary>A layer's q/k/v weight (stored inside W_pack in the Baichuan layout, never as a tensor of its own).</summary>
    static bool IsPackedPart(string name) =>
        name.EndsWith(".self_attn.q_proj.weight", StringComparison.Ordinal) || name.EndsWith(".self_attn.k_proj.weight", StringComparison.Ordinal)
        || name.EndsWith(".self_attn.v_proj.weight", StringComparison.Ordinal);

    /// <summary>The file tensor a parameter is stored in (W_pack for Baichuan's q, k, v).</summary>
    static string FileName(LlamaConfig cfg, string parameter)
    {
        if (cfg.Family != ModelFamily.Baichuan || !IsPackedPart(parameter)) return parameter;
        int layer = int.Parse(parameter.AsSpan("model.layers.".Length, parameter.IndexOf('.', "model.layers.".Length) - "model.layers.".Length), System.Globalization.CultureInfo.InvariantCulture);
        return HfLayout.PackedQkv(layer);
    }
}
