using System.Text.Json;
using Engine.Data.Cleaning;
using Engine.Data.Dedup;
using Tomlyn;
using Tomlyn.Model;

namespace Engine.Data.Prepare;

/// <summary>A problem in a prepare config: names the key.</summary>
public sealed class PrepareConfigException(string message) : ArgumentException(message);

/// <summary>One input source: a name, its files and whether it holds pretraining text or instruction examples.</summary>
public sealed record PrepareSource(string Name, string Kind, IReadOnlyList<string> Files, bool QualityFilter);

/// <summary>Quality-classifier settings (<c>[quality]</c>).</summary>
public sealed record QualityOptions(bool Enabled, double Threshold, IReadOnlyList<string> Curated, IReadOnlyList<string> Web, int MaxExamples);

/// <summary>Tokenizer settings (<c>[tokenizer]</c>): train one, or load <see cref="Path"/>; then add tokens.</summary>
public sealed record TokenizerOptions(string? Path, int VocabSize, int MinFrequency, int MaxTokenBytes, long TrainMaxBytes, IReadOnlyList<string> SpecialTokens, IReadOnlyList<string> AddTokens);

/// <summary>
/// The config of <c>engine prepare</c>, TOML or JSON. Paths starting with <c>data:</c> resolve under the shipped data
/// folder (<see cref="DataPaths"/>); other relative paths against the config file's folder. Unknown keys are errors.
/// </summary>
public sealed record PrepareConfig(
    string OutputDir, ulong Seed, InvalidUtf8Policy InvalidUtf8, int MaxDocumentsPerFile, IReadOnlyList<PrepareSource> Sources,
    bool CleaningEnabled, CleaningOptions Cleaning, QualityOptions Quality, bool DedupEnabled, DedupOptions Dedup, TokenizerOptions Tokenizer)
{
    /// <summary>Threads that tokenize (<c>threads</c>; 0 = every core). The shards are the same whatever the count.</summary>
    public int Threads { get; init; }

    public static PrepareConfig Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string text = File.ReadAllText(FileStat.RequireRegular(path, "config file"));
        return Parse(text, path, Path.GetDirectoryName(Path.GetFullPath(path))!);
    }

    public static PrepareConfig Parse(string text, string source, string baseDir)
    {
        // strings from the file end up in messages: keep each one line
        try { return ParseCore(text, source, baseDir); }
        catch (PrepareConfigException e) { throw new PrepareConfigException(ErrorText.OneLine(e.Message)); }
    }

    static PrepareConfig ParseCore(string text, string source, string baseDir)
    {
        Dictionary<string, object?> tree;
        bool json = source.EndsWith(".json", StringComparison.OrdinalIgnoreCase) || text.TrimStart().StartsWith('{');
        try
        {
            if (json)
            {
                using var doc = JsonDocument.Parse(text, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
                tree = FromJson(doc.RootElement) as Dictionary<string, object?> ?? throw new PrepareConfigException($"{source}: the top level must be an object");
            }
            else tree = (Dictionary<string, object?>)FromToml(StrictToml.Parse(text, source))!;   // duplicate keys and tables refused
        }
        catch (JsonException e) { throw new PrepareConfigException($"{source}: invalid JSON: {ErrorText.OneLine(e.Message)}"); }
        catch (TomlException e) { throw new PrepareConfigException($"{source}: invalid TOML: {ErrorText.Toml(e.Message)}"); }
        catch (InvalidOperationException e) { throw new PrepareConfigException($"{source}: invalid JSON string ({ErrorText.OneLine(e.Message)})"); }

        var root = new Section(tree, "", source);
        string Resolve(string p) => p.Contains('\0') ? throw new PrepareConfigException($"{source}: path '{p}' holds a NUL character, which no path can")
            : DataPaths.Resolve(p, baseDir);

        string output = Resolve(root.Str("output_dir", "prepared"));
        long seedValue = root.Long("seed", 1234);
        if (seedValue < 0) throw new PrepareConfigException($"{source}: seed must be >= 0 (got {seedValue})");
        ulong seed = (ulong)seedValue;
        var policy = root.Str("invalid_utf8", "repair") switch
        {
            "error" => InvalidUtf8Policy.Error,
            "repair" => InvalidUtf8Policy.Repair,
            "drop" => InvalidUtf8Policy.Drop,
            var v => throw new PrepareConfigException($"{source}: invalid_utf8 must be error, repair or drop (got '{v}')"),
        };
        int maxDocs = root.Int("max_documents_per_file", 0);
        if (maxDocs < 0) throw new PrepareConfigException($"{source}: max_documents_per_file must be >= 0");

        var sources = new List<PrepareSource>();
        var names = new HashSet<string>();
        foreach (var (s, i) in root.Tables("sources").Select((s, i) => (s, i)))
        {
            string name = s.Str("name", "");
            if (name.Length == 0 || name.IndexOfAny([.. System.IO.Path.GetInvalidFileNameChars(), ' ']) >= 0) throw new PrepareConfigException($"{source}: sources[{i}].name must be a non-empty file-name-safe string (got '{name}')");
            if (!names.Add(name)) throw new PrepareConfigException($"{source}: sources[{i}].name '{name}' is used twice");
            string kind = s.Str("kind", "pretrain");
            if (kind is not ("pretrain" or "instruction")) throw new PrepareConfigException($"{source}: sources[{i}].kind must be pretrain or instruction (got '{kind}')");
            var files = s.Strs("files", []).Select(Resolve).ToList();
            if (files.Count == 0) throw new PrepareConfigException($"{source}: sources[{i}].files must list at least one file");
            sources.Add(new PrepareSource(name, kind, files, s.Bool("quality_filter", kind == "pretrain")));
            s.EnsureConsumed();
        }
        if (sources.Count == 0) throw new PrepareConfigException($"{source}: at least one [[sources]] table is required");

        var c = root.Table("cleaning");
        var defaults = new CleaningOptions();
        bool cleaningEnabled = c.Bool("enabled", true);
        var cleaning = new CleaningOptions
        {
            Normalization = c.Str("normalization", defaults.Normalization),
            RemoveControl = c.Bool("remove_control", defaults.RemoveControl),
            Boilerplate = c.Bool("boilerplate", defaults.Boilerplate),
            BoilerplatePatterns = [.. c.Strs("boilerplate_patterns", defaults.BoilerplatePatterns)],
            BoilerplateMaxLineChars = c.Int("boilerplate_max_line_chars", defaults.BoilerplateMaxLineChars),
            MinChars = c.Int("min_chars", defaults.MinChars),
            MaxChars = c.Int("max_chars", defaults.MaxChars),
            Repetition = c.Bool("repetition", defaults.Repetition),
            MaxDuplicateLineFraction = c.Double("max_duplicate_line_fraction", defaults.MaxDuplicateLineFraction),
            MaxDuplicateLineCharFraction = c.Double("max_duplicate_line_char_fraction", defaults.MaxDuplicateLineCharFraction),
            MaxTopNgramCharFraction = c.Doubles("max_top_ngram_char_fraction", defaults.MaxTopNgramCharFraction),
            MaxDuplicateNgramCharFraction = c.Doubles("max_duplicate_ngram_char_fraction", defaults.MaxDuplicateNgramCharFraction),
            MaxSymbolRatio = c.Double("max_symbol_ratio", defaults.MaxSymbolRatio),
            Languages = [.. c.Strs("languages", defaults.Languages)],
        };
        c.EnsureConsumed();
        Wrap(source, cleaning.Validate);

        var q = root.Table("quality");
        var quality = new QualityOptions(q.Bool("enabled", false), q.Double("threshold", 0.5),
            q.Strs("curated", []).Select(Resolve).ToList(), q.Strs("web", []).Select(Resolve).ToList(), q.Int("max_examples", 2000));
        q.EnsureConsumed();
        if (quality.Enabled && (quality.Curated.Count == 0 || quality.Web.Count == 0)) throw new PrepareConfigException($"{source}: quality.curated and quality.web must list files when quality.enabled = true");
        if (quality.Threshold is < 0 or > 1) throw new PrepareConfigException($"{source}: quality.threshold must be in [0, 1] (got {quality.Threshold})");
        if (quality.MaxExamples < 1) throw new PrepareConfigException($"{source}: quality.max_examples must be >= 1");

        var d = root.Table("dedup");
        var dd = new DedupOptions();
        bool dedupEnabled = d.Bool("enabled", true);
        var dedup = new DedupOptions
        {
            Exact = d.Bool("exact", dd.Exact),
            Near = d.Bool("near", dd.Near),
            Local = d.Bool("local", dd.Local),
            Global = d.Bool("global", dd.Global),
            ShingleSize = d.Int("shingle_size", dd.ShingleSize),
            Permutations = d.Int("permutations", dd.Permutations),
            Bands = d.Int("bands", dd.Bands),
            Rows = d.Int("rows", dd.Rows),
            Threshold = d.Double("threshold", dd.Threshold),
            SamplePairs = d.Int("sample_pairs", dd.SamplePairs),
            Seed = seed,
        };
        d.EnsureConsumed();
        Wrap(source, dedup.Validate);

        var t = root.Table("tokenizer");
        var bt = new BpeTrainOptions();
        string? tokPath = t.Str("path", "") is { Length: > 0 } tp ? Resolve(tp) : null;
        var tok = new TokenizerOptions(tokPath, t.Int("vocab_size", bt.VocabSize), t.Int("min_frequency", bt.MinFrequency),
            t.Int("max_token_bytes", bt.MaxTokenBytes), t.Long("train_max_bytes", 8_000_000), t.Strs("special_tokens", bt.SpecialTokens), t.Strs("add_tokens", []));
        t.EnsureConsumed();
        if (tok.Path == null && tok.VocabSize < 256 + tok.SpecialTokens.Count) throw new PrepareConfigException($"{source}: tokenizer.vocab_size must be at least 256 + the special tokens (got {tok.VocabSize})");
        if (tok.TrainMaxBytes < 1) throw new PrepareConfigException($"{source}: tokenizer.train_max_bytes must be positive");
        int threads = root.Int("threads", 0);
        if (threads < 0) throw new PrepareConfigException($"{source}: threads must be >= 0 (0 = every core; got {threads})");
        root.EnsureConsumed();
        return new PrepareConfig(output, seed, policy, maxDocs, sources, cleaningEnabled, cleaning, quality, dedupEnabled, dedup, tok) { Threads = threads };
    }

    static void Wrap(string source, Action validate)
    {
        try { validate(); }
        catch (ArgumentException e) when (e is not PrepareConfigException) { throw new PrepareConfigException($"{source}: {ErrorText.OneLine(e.Message)}"); }
    }

    static object? FromJson(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => JsonObject(e),
        JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out long l) ? (object)l   // a long stays a long; a number past double's range is refused
            : e.TryGetDouble(out double d) ? d : throw new JsonException($"number {e.GetRawText()} is out of range"),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };

    static Dictionary<string, object?> JsonObject(JsonElement e)
    {
        var d = new Dictionary<string, object?>();
        foreach (var p in e.EnumerateObject())
            if (!d.TryAdd(p.Name, FromJson(p.Value))) throw new JsonException($"key '{p.Name}' appears twice in one object");
        return d;
    }

    static object? FromToml(object? v) => v switch
    {
        TomlTable t => t.ToDictionary(kv => kv.Key, kv => FromToml(kv.Value)),
        TomlTableArray a => a.Select(x => FromToml(x)).ToList(),
        TomlArray a => a.Select(FromToml).ToList(),
        _ => v,
    };

    /// <summary>A table being bound: typed getters record the keys read; <see cref="EnsureConsumed"/> rejects the rest.</summary>
    sealed class Section(Dictionary<string, object?> values, string prefix, string source)
    {
        readonly HashSet<string> _used = [];

        string Key(string k) => prefix.Length == 0 ? k : $"{prefix}.{k}";
        PrepareConfigException Error(string k, string what) => new($"{source}: key '{ErrorText.OneLine(Key(k))}' {ErrorText.OneLine(what)}");

        object? Get(string k) { _used.Add(k); return values.GetValueOrDefault(k); }

        public string Str(string k, string def) => Get(k) switch
        {
            null => def,
            string s => s,
            var v => throw Error(k, $"must be a string (got {v})"),
        };

        public bool Bool(string k, bool def) => Get(k) switch
        {
            null => def,
            bool b => b,
            var v => throw Error(k, $"must be true or false (got {v})"),
        };

        public long Long(string k, long def) => Get(k) switch
        {
            null => def,
            long l => l,
            int i => i,
            var v => throw Error(k, $"must be an integer (got {v})"),
        };

        public int Int(string k, int def)
        {
            long v = Long(k, def);
            return v is >= int.MinValue and <= int.MaxValue ? (int)v : throw Error(k, $"= {v} is out of range (a 32-bit integer)");
        }

        public double Double(string k, double def) => Get(k) switch
        {
            null => def,
            double d when double.IsFinite(d) => d,
            double d => throw Error(k, $"must be a finite number (got {d})"),
            long l => l,
            int i => i,
            var v => throw Error(k, $"must be a number (got {v})"),
        };

        public IReadOnlyList<string> Strs(string k, IReadOnlyList<string> def) => Get(k) switch
        {
            null => def,
            List<object?> list => list.Select(x => x as string ?? throw Error(k, "must be a list of strings")).ToList(),
            var v => throw Error(k, $"must be a list of strings (got {v})"),
        };

        public double[] Doubles(string k, double[] def) => Get(k) switch
        {
            null => def,
            List<object?> list => list.Select(x => x switch
            {
                double d when double.IsFinite(d) => d,
                long l => (double)l,
                _ => throw Error(k, "must be a list of numbers"),
            }).ToArray(),
            var v => throw Error(k, $"must be a list of numbers (got {v})"),
        };

        public Section Table(string k) => Get(k) switch
        {
            null => new Section([], Key(k), source),
            Dictionary<string, object?> d => new Section(d, Key(k), source),
            var v => throw Error(k, $"must be a table (got {v})"),
        };

        public IEnumerable<Section> Tables(string k) => Get(k) switch
        {
            null => [],
            List<object?> list => list.Select((x, i) => x is Dictionary<string, object?> d ? new Section(d, $"{Key(k)}[{i}]", source) : throw Error(k, "must be an array of tables")).ToList(),
            var v => throw Error(k, $"must be an array of tables (got {v})"),
        };

        public void EnsureConsumed()
        {
            foreach (var k in values.Keys)
                if (!_used.Contains(k)) throw new PrepareConfigException($"{source}: unknown key '{ErrorText.OneLine(Key(k))}'");
        }
    }
}
