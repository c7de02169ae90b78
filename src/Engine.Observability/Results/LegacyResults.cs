using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Engine.Observability.Results;

/*
 * The result shapes written before engine.bench/1, each mapped onto the schema (docs/BENCHMARKS.md, "Legacy shapes"):
 *   gemm          benchmarks/Engine.Benchmarks GemmBenchmark: ours_ms vs openblas_ms per shape (medians only)
 *   data          benchmarks/Engine.Benchmarks DataBench: tokenizer MB/s vs Microsoft.ML.Tokenizers per repeat, dedup docs/s
 *   train-step    Engine.Training TrainBenchmark ("cpu-train-step", also for --device cuda): tokens/s vs PyTorch
 *   eval-generate Engine.Training EvalBenchmark ("cpu-eval-generate"): perplexity and generation tokens/s
 *   recipe-report RecipeRunner's report.json (demo-*.json): per stage tokens/s, perplexities, few-shot scores
 *   kernel-bench  Engine.Cuda BenchReport ("engine.kernel-bench/1"): per-kernel ms, GB/s, TFLOP/s, PyTorch SDPA
 * Every converted result keeps the whole original object under extra.legacy, so nothing is lost; figures the old
 * shape did not record (spread, repeats) stay null / 0 rather than being guessed.
 */

/// <summary>Reads any results file: an engine.bench/1 file as is, a legacy shape converted.</summary>
public static class LegacyResults
{
    public static readonly IReadOnlyList<string> Shapes = ["gemm", "data", "train-step", "eval-generate", "recipe-report", "kernel-bench"];

    /// <summary>Reads <paramref name="path"/>: engine.bench files are validated, legacy shapes converted.</summary>
    public static BenchResult ReadAny(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"benchmark result {path} not found", path);
        string json = File.ReadAllText(path);
        var root = ParseObject(json, path);
        return BenchResultIO.IsSchemaFile(root) ? BenchResultIO.Parse(json, path) : Convert(root, path);
    }

    const string KernelSchema = "engine.kernel-bench/1";

    /// <summary>The legacy shape of <paramref name="root"/>, or null when it is none this converter knows.</summary>
    public static string? ShapeOf(JsonObject root)
    {
        if ((string?)root["schema"] is KernelSchema) return "kernel-bench";
        if (root["recipe"] is JsonValue && root["stages"] is JsonArray) return "recipe-report";
        return (root["benchmark"] as JsonValue)?.GetValueKind() == JsonValueKind.String ? (string?)root["benchmark"] switch
        {
            "gemm" => "gemm",
            "data" => "data",
            "cpu-train-step" => "train-step",
            "cpu-eval-generate" => "eval-generate",
            _ => null,
        } : null;
    }

    /// <summary>Converts a legacy object; <paramref name="source"/> names it in errors and in converted_from.</summary>
    public static BenchResult Convert(JsonObject root, string source)
    {
        string shape = ShapeOf(root) ?? throw new InvalidDataException(
            $"{source}: not an engine.bench result and none of the legacy shapes ({string.Join(", ", Shapes)}): " +
            "expected \"schema\": \"engine.bench/1\", a \"benchmark\" of gemm/data/cpu-train-step/cpu-eval-generate, or a recipe report");
        var r = new Reader(root, source);
        var result = shape switch
        {
            "gemm" => Gemm(r),
            "data" => Data(r),
            "train-step" => Train(r),
            "eval-generate" => Eval(r),
            "recipe-report" => Recipe(r),
            _ => Kernels(r),
        };
        result = result with
        {
            // notes added to a legacy file since (e.g. that its peer ran with pinned kernels) travel with it
            Notes = [.. result.Notes, .. root["notes"] is JsonArray added ? added.Select(n => (string?)n).OfType<string>() : []],
            Extra = new JsonObject { ["legacy"] = root.DeepClone() },
            ConvertedFrom = new ConvertedFrom(Path.GetFileName(source), shape),
        };
        BenchResultIO.Validate(result, source);
        return result;
    }

    static BenchResult Gemm(Reader r)
    {
        var timing = r.Object("timing");
        int? repeats = r.OptInt(timing, "rounds") * r.OptInt(timing, "samples_per_round");
        string? blas = r.Root["openblas"]?["mapped"] is JsonArray mapped
            ? mapped.Select(m => Regex.Match((string?)m ?? "", @"openblas\w*-r(\d+(\.\d+)+)").Groups[1].Value).FirstOrDefault(v => v.Length > 0)
            : null;
        string version = $"OpenBLAS {blas ?? "?"} via numpy {(string?)r.Root["openblas"]?["numpy"] ?? "?"}";
        var entries = new List<BenchEntry>();
        foreach (var row in r.Objects(r.Root, "results"))
        {
            double m = r.Num(row, "m"), n = r.Num(row, "n"), k = r.Num(row, "k"), batch = r.OptNum(row, "batch") ?? 1;
            var e = new BenchEntry
            {
                Name = r.Str(row, "name"),
                Group = "gemm",
                Device = "cpu",
                Unit = "ms",
                Better = BenchSchema.Lower,
                Median = r.Num(row, "ours_ms"),
                Repeats = repeats ?? 0,
                Flops = 2 * m * n * k * batch,
                Bytes = 4 * batch * (m * k + k * n + m * n),
                Roof = "compute",
                Params = Pick(row, "role", "transA", "transB", "m", "n", "k", "batch", "ours_spot_check_max_rel_err"),
            };
            entries.Add(e.WithPeer(new PeerFigure { Name = "openblas", Version = version, Median = r.Num(row, "openblas_ms"), Repeats = repeats }));
        }
        return new BenchResult
        {
            Suite = "gemm",
            Date = r.Date("date_utc"),
            Commit = r.Str(r.Root, "git_commit"),
            Command = (string?)r.Root["command"],
            Machine = r.Machine(),
            Config = Pick(timing, "rounds", "samples_per_round", "min_sample_s", "gemm_max_threads"),
            Method = (string?)timing["method"],
            Notes = ["converted: only medians were recorded (no min/max); bytes = 4·batch·(mk + kn + mn), each operand once"],
            Benchmarks = entries,
        };
    }

    static BenchResult Data(Reader r)
    {
        var entries = new List<BenchEntry>();
        var tok = r.Object("tokenizer");
        var tokRuns = r.Objects(tok, "runs").ToList();
        string reference = (string?)tok["reference"] ?? "Microsoft.ML.Tokenizers";
        foreach (string phase in new[] { "cold", "warm" })
        {
            var ours = BenchStats.Of(tokRuns.Select(x => r.Num(x, $"ours_{phase}_mb_s")));
            var peer = BenchStats.Of(tokRuns.Select(x => r.Num(x, $"mlnet_{phase}_mb_s")));
            entries.Add(new BenchEntry
            {
                Name = $"tokenize_{phase}",
                Group = "tokenizer",
                Device = "cpu",
                Unit = "MB/s",
                Better = BenchSchema.Higher,
                Median = ours.Median,
                Min = ours.Min,
                Max = ours.Max,
                Repeats = ours.Repeats,
                Params = Pick(tok, "vocab", "tokens", "bytes_per_token", "ids_identical_to_reference"),
            }.WithPeer(new PeerFigure
            {
                Name = "mlnet-tokenizers",
                Version = reference,
                Median = peer.Median,
                Min = peer.Min,
                Max = peer.Max,
                Repeats = peer.Repeats,
            }));
        }
        if (r.OptNum(tok, "train_seconds") is { } trainS)
            entries.Add(new BenchEntry { Name = "tokenizer_train", Group = "tokenizer", Device = "cpu", Unit = "s", Better = BenchSchema.Lower, Median = trainS, Repeats = 1 });
        if (r.Root["dedup"] is JsonObject dedup)
        {
            var st = BenchStats.Of(r.Objects(dedup, "runs").Select(x => r.Num(x, "documents_per_s")));
            entries.Add(new BenchEntry
            {
                Name = "dedup",
                Group = "dedup",
                Device = "cpu",
                Unit = "docs/s",
                Better = BenchSchema.Higher,
                Median = st.Median,
                Min = st.Min,
                Max = st.Max,
                Repeats = st.Repeats,
                Params = Pick(dedup, "input", "output", "exact", "near", "jaccard_mean_abs_error"),
            });
        }
        return new BenchResult
        {
            Suite = "data",
            Date = r.Date("date"),
            Commit = r.Str(r.Root, "commit"),
            Machine = r.Machine(),
            Config = Pick(r.Root["corpus"] as JsonObject ?? new JsonObject(), "documents", "bytes"),
            Notes = ["converted: median/min/max over the recorded repeats, no warm-up recorded"],
            Benchmarks = entries,
        };
    }

    static BenchResult Train(Reader r)
    {
        var engine = r.Object("engine");
        string device = DeviceOf((string?)engine["backend"]);
        var config = r.Root["config"] as JsonObject ?? new JsonObject();
        double tps = r.Num(engine, "tokens_per_s");
        double? gflops = r.OptNum(engine, "achieved_gflops");
        var e = new BenchEntry
        {
            Name = "train_step",
            Group = "train",
            Device = device,
            Unit = "tokens/s",
            Better = BenchSchema.Higher,
            Median = tps,
            Repeats = r.OptInt(config, "Steps") ?? 0,
            Warmup = r.OptInt(config, "Warmup"),
            // The runner computed achieved_gflops = tokens/s × the PaLM FLOPs per token (LlamaConfig.TrainingFlopsPerToken).
            Flops = gflops is { } g && tps > 0 ? g * 1e9 / tps : null,
            Params = Pick(engine, "step_seconds_median", "final_loss"),
        };
        if (r.Root["pytorch"] is JsonObject pt)
            e = e.WithPeer(new PeerFigure { Name = "pytorch", Version = (string?)pt["framework"], Median = r.Num(pt, "tokens_per_s"), Repeats = e.Repeats });
        var cfg = (JsonObject)config.DeepClone();
        if (r.Root["parameters"] is JsonValue p) cfg["parameters"] = p.DeepClone();
        return new BenchResult
        {
            Suite = "train",
            Date = r.Date("date"),
            Commit = r.Str(r.Root, "commit"),
            Machine = r.Machine(device),
            Config = cfg,
            Method = "median step time over the timed steps after warm-up (random tokens, forward + backward + AdamW)",
            Notes = ["converted: only the median was recorded (no min/max)"],
            Benchmarks = [e],
        };
    }

    static BenchResult Eval(Reader r)
    {
        string device = DeviceOf((string?)r.Root["backend"]);
        BenchEntry Rate(string name, string field, string group) => new()
        {
            Name = name,
            Group = group,
            Device = device,
            Unit = "tokens/s",
            Better = BenchSchema.Higher,
            Median = r.Num(r.Root, field),
            Repeats = 1,
        };
        return new BenchResult
        {
            Suite = "eval",
            Date = r.Date("date"),
            Commit = r.Str(r.Root, "commit"),
            Machine = r.Machine(device),
            Config = Pick(r.Root, "parameters", "perplexity_seq_len", "generate_prompt_tokens", "generate_new_tokens"),
            Notes = ["converted: one timed run per figure (no spread); the no-cache path is our own reference, not a peer"],
            Benchmarks =
            [
                Rate("perplexity_eval", "perplexity_tokens_per_s", "eval"),
                Rate("generate_kv_cache", "generate_tokens_per_s_kv_cache", "generate"),
                Rate("generate_no_cache", "generate_tokens_per_s_no_cache", "generate"),
            ],
        };
    }

    static BenchResult Recipe(Reader r)
    {
        var entries = new List<BenchEntry>();
        foreach (var st in r.Objects(r.Root, "stages"))
        {
            string stage = r.Str(st, "name");
            BenchEntry One(string name, string unit, string better, double v) =>
                new() { Name = $"{stage}/{name}", Group = stage, Device = "cpu", Unit = unit, Better = better, Median = v, Repeats = 1 };
            if (r.OptNum(st, "tokens_per_second") is { } tps) entries.Add(One("train", "tokens/s", BenchSchema.Higher, tps));
            if (st["perplexity"] is JsonObject ppl)
                foreach (var (domain, v) in ppl)
                    if (v is JsonValue jv && jv.GetValueKind() == JsonValueKind.Number) entries.Add(One($"ppl_{domain}", "perplexity", BenchSchema.Lower, AsDouble(jv)));
            foreach (string f in new[] { "few_shot_accuracy", "few_shot_macro_f1", "few_shot_calibrated_accuracy", "few_shot_calibrated_macro_f1" })
                if (r.OptNum(st, f) is { } v) entries.Add(One(f, f.EndsWith("f1", StringComparison.Ordinal) ? "f1" : "accuracy", BenchSchema.Higher, v));
            // zero-shot instruction format per evaluated set (recipes from 2026-11-27 on)
            if (st["instruction"] is JsonObject instr)
                foreach (var (set, e) in instr)
                    foreach (string f in new[] { "accuracy", "macro_f1" })
                        if (e is JsonObject eo && r.OptNum(eo, f) is { } v) entries.Add(One($"instruction_{set}_{f}", f == "accuracy" ? "accuracy" : "f1", BenchSchema.Higher, v));
        }
        return new BenchResult
        {
            Suite = "demo",
            Date = r.Date("date"),
            Commit = r.Str(r.Root, "commit"),
            Machine = r.Machine(),
            Config = new JsonObject { ["recipe"] = (string?)r.Root["recipe"] },
            Notes = ["converted from a recipe report: one run per stage (no spread)"],
            Benchmarks = entries,
        };
    }

    static BenchResult Kernels(Reader r)
    {
        var dev = r.Object("device");
        var gpu = new GpuRecord
        {
            Name = r.Str(dev, "name"),
            CudaDriverApi = (string?)dev["cuda_driver_api"],
            ComputeCapability = (string?)dev["compute_capability"],
            Multiprocessors = r.OptInt(dev, "multiprocessors"),
            MemoryBytes = (long?)r.OptNum(dev, "memory_bytes"),
            L2Bytes = (long?)r.OptNum(dev, "l2_bytes"),
        };
        string? torch = (string?)r.Root["sdpa"]?["torch"];
        var entries = new List<BenchEntry>();
        foreach (var m in r.Objects(r.Root, "measurements"))
        {
            string kernel = r.Str(m, "kernel"), shape = r.Str(m, "shape");
            string name = $"{kernel} [{shape}]";
            if ((string?)m["error"] is { } err)
            {
                entries.Add(BenchEntries.Failed(name, "cuda:0", "ms", BenchSchema.Lower, err) with { Group = (string?)m["group"] });
                continue;
            }
            double? flops = r.OptNum(m, "flops"), bytes = r.OptNum(m, "bytes");
            bool derived = false;
            if (bytes is null && flops is > 0 && KernelMinimumBytes(kernel, shape) is { } b) { bytes = b; derived = true; }
            var p = Pick(m, "kernel", "shape", "iters", "formula", "fits_l2", "share_of_copy", "bytes_issued");
            if (derived) p["bytes_derived"] = "minimum traffic: each bf16 operand read once, each output written once";
            var e = new BenchEntry
            {
                Name = name,
                Group = (string?)m["group"],
                Device = "cuda:0",
                Unit = "ms",
                Better = BenchSchema.Lower,
                Median = r.Num(m, "ms"),
                Min = r.OptNum(m, "ms_min"),
                Max = r.OptNum(m, "ms_max"),
                Repeats = r.OptInt(m, "repeats") ?? 0,
                Flops = flops is > 0 ? flops : null,
                Bytes = bytes is > 0 ? bytes : null,
                Roof = kernel switch { "copy_dtod" => "memory", "cublas_gemm_bf16" => "compute", _ => null },
                Params = p,
            };
            if (r.OptNum(m, "sdpa_ms") is { } sdpa)
                e = e.WithPeer(new PeerFigure { Name = "pytorch-sdpa-flash", Version = torch, Median = sdpa });
            entries.Add(e);
        }
        return new BenchResult
        {
            Suite = "kernels",
            Date = r.Date("date"),
            Commit = r.Str(r.Root, "commit"),
            Machine = new MachineRecord { CpuModel = "not recorded", Gpus = [gpu] },
            Config = new JsonObject { ["preset"] = (string?)r.Root["preset"] },
            Method = (string?)r.Root["methodology"]?["timing"],
            Notes = ["converted from engine.kernel-bench/1; bytes of GEMM and attention derived from the shape (minimum traffic)"],
            Benchmarks = entries,
        };
    }

    /// <summary>Compulsory bf16 traffic of a GEMM ("M= N= K=") or attention call ("B= T= H= Hkv= D=") from its shape key.</summary>
    public static double? KernelMinimumBytes(string kernel, string shape)
    {
        var v = Regex.Matches(shape, @"(\w+)=(\d+)").ToDictionary(x => x.Groups[1].Value, x => double.Parse(x.Groups[2].Value, CultureInfo.InvariantCulture));
        double Get(string k) => v.TryGetValue(k, out double d) ? d : double.NaN;
        double bytes = kernel switch
        {
            "cublas_gemm_bf16" => 2 * (Get("M") * Get("K") + Get("K") * Get("N") + Get("M") * Get("N")),
            // forward: read Q, K, V, write O (bf16) and the fp32 logsumexp
            "attention_fwd" => Get("B") * Get("T") * (2 * Get("D") * (2 * Get("H") + 2 * Get("Hkv")) + 4 * Get("H")),
            // backward: read Q, K, V, O, dO and lse, write dQ, dK, dV
            "attention_bwd" => Get("B") * Get("T") * (2 * Get("D") * (4 * Get("H") + 4 * Get("Hkv")) + 4 * Get("H")),
            _ => double.NaN,
        };
        return double.IsFinite(bytes) && bytes > 0 ? bytes : null;
    }

    /// <summary>A JSON number as double, whether it was parsed or built in memory from an int or a long.</summary>
    internal static double AsDouble(JsonValue v) => double.Parse(v.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture);

    static string DeviceOf(string? backend) => backend is "cuda" ? "cuda:0" : "cpu";

    static JsonObject Pick(JsonNode? from, params string[] keys)
    {
        var o = new JsonObject();
        if (from is JsonObject f)
            foreach (string k in keys)
                if (f[k] is { } v) o[k] = v.DeepClone();
        return o;
    }

    static JsonObject ParseObject(string json, string source)
    {
        try { return JsonNode.Parse(json) as JsonObject ?? throw new InvalidDataException($"{source}: expected a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{source}: not JSON: {e.Message}", e); }
    }

    /// <summary>Field access whose errors name the file and the field.</summary>
    sealed class Reader(JsonObject root, string source)
    {
        public JsonObject Root => root;

        public JsonObject Object(string field) => Object(root, field);

        public JsonObject Object(JsonNode? o, string field) =>
            o?[field] as JsonObject ?? throw new InvalidDataException($"{source}: missing object \"{field}\"");

        public JsonArray Array(string field) => Array(root, field);

        public JsonArray Array(JsonNode? o, string field) =>
            o?[field] as JsonArray ?? throw new InvalidDataException($"{source}: missing array \"{field}\"");

        /// <summary>The elements of an array field, each required to be an object.</summary>
        public IEnumerable<JsonObject> Objects(JsonNode? o, string field)
        {
            var a = Array(o, field);
            for (int i = 0; i < a.Count; i++)
                yield return a[i] as JsonObject ?? throw new InvalidDataException($"{source}: \"{field}\"[{i}] is not an object");
        }

        public string Str(JsonNode? o, string field) =>
            o?[field] is JsonValue v && v.TryGetValue(out string? s) && s.Length > 0 ? s : throw new InvalidDataException($"{source}: missing string \"{field}\"");

        public double Num(JsonNode? o, string field) =>
            OptNum(o, field) ?? throw new InvalidDataException($"{source}: missing number \"{field}\"{Named(o)}");

        public double? OptNum(JsonNode? o, string field) =>
            o?[field] is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? AsDouble(v) : null;

        public int? OptInt(JsonNode? o, string field) => OptNum(o, field) is { } d ? (int)d : null;

        public DateTimeOffset Date(string field)
        {
            string s = Str(root, field);
            return DateTimeOffset.TryParse(s, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out var d)
                ? d : throw new InvalidDataException($"{source}: \"{field}\" is not a date: '{s}'");
        }

        /// <summary>machine {cpu | cpu_model, cores, os, runtime, avx512 | avx512f}; a GPU placeholder when the run used one it did not describe.</summary>
        public MachineRecord Machine(string device = "cpu")
        {
            var m = Object("machine");
            return new MachineRecord
            {
                CpuModel = (string?)m["cpu_model"] ?? (string?)m["cpu"] ?? throw new InvalidDataException($"{source}: machine has no \"cpu\" or \"cpu_model\""),
                Cores = OptInt(m, "cores"),
                Os = (string?)m["os"],
                Runtime = (string?)m["runtime"],
                Avx512 = m["avx512"] is JsonValue a ? (bool)a : m["avx512f"] is JsonValue b ? (bool)b : null,
                Gpus = device == "cpu" ? [] : [new GpuRecord { Name = "GPU (not recorded)" }],
            };
        }

        static string Named(JsonNode? o) => o?["name"] is JsonValue n && n.TryGetValue(out string? s) ? $" in \"{s}\"" : "";
    }
}
