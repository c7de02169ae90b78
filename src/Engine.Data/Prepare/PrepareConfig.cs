using Engine.Data.Cleaning;
using Engine.Data.Dedup;

namespace Engine.Data.Prepare;

/// <summary>A problem in a prepare config: names the key.</summary>
public sealed class PrepareConfigException(string message) : ArgumentException(message);

/// <summary>
/// One input source: a name, its files (a path, a folder — every file under it —, or a file-name pattern with * and ?)
/// and whether it holds pretraining text or instruction examples.
/// </summary>
public sealed record PrepareSource(string Name, string Kind, IReadOnlyList<string> Files, bool QualityFilter)
{
    /// <summary>The files' layout (<c>format</c>; auto = by extension).</summary>
    public Extraction.InputFormat Format { get; init; }
    /// <summary>The JSONL field / Parquet column holding the text (<c>field</c>).</summary>
    public string Field { get; init; } = "text";
    /// <summary><c>content = "html"</c>: the field holds HTML pages; their main content is extracted.</summary>
    public bool Html { get; init; }
    /// <summary>Whether line/paragraph dedup applies (<c>line_dedup</c>; pretrain sources by default).</summary>
    public bool LineDedup { get; init; }
}

/// <summary>
/// Line- or paragraph-level dedup (<c>[line_dedup]</c>, Baichuan 2): a line (or blank-line paragraph) of at least
/// <see cref="MinChars"/> characters found in at least <see cref="MinDocuments"/> distinct documents is boilerplate
/// and is removed from every document.
/// </summary>
public sealed record LineDedupOptions(bool Enabled, string Granularity, int MinDocuments, int MinChars);

/// <summary>Quality-classifier settings (<c>[quality]</c>).</summary>
public sealed record QualityOptions(bool Enabled, double Threshold, IReadOnlyList<string> Curated, IReadOnlyList<string> Web, int MaxExamples);

/// <summary>Tokenizer settings (<c>[tokenizer]</c>): train one, or load <see cref="Path"/>; then add tokens.</summary>
public sealed record TokenizerOptions(string? Path, int VocabSize, int MinFrequency, int MaxTokenBytes, long TrainMaxBytes, IReadOnlyList<string> SpecialTokens, IReadOnlyList<string> AddTokens);

/// <summary>
/// The config of <c>engine prepare</c>, TOML or JSON, read into a tree by the one config reader (<see cref="ConfigBinder.Parse"/>)
/// and bound here key by key with prepare's own checks. Paths starting with <c>data:</c> resolve under the shipped data
/// folder (<see cref="DataPaths"/>); other relative paths against the config file's folder. Unknown keys are errors.
/// </summary>
public sealed record PrepareConfig(
    string OutputDir, ulong Seed, InvalidUtf8Policy InvalidUtf8, int MaxDocumentsPerFile, IReadOnlyList<PrepareSource> Sources,
    bool CleaningEnabled, CleaningOptions Cleaning, QualityOptions Quality, bool DedupEnabled, DedupOptions Dedup, TokenizerOptions Tokenizer)
{
    /// <summary>Tasks run at once in this process (<c>threads</c>; 0 = every core ÷ the ranks on this node). The outputs are the same whatever the count.</summary>
    public int Threads { get; init; }

    /// <summary>The shared work folder (<c>work_dir</c>; default <c>output_dir/work</c>): spills, manifests, exchange files.</summary>
    public string WorkDir { get; init; } = "";
    /// <summary>Input bytes per work unit (<c>unit_bytes</c>): files are grouped, large splittable files cut, up to this size.</summary>
    public long UnitBytes { get; init; } = DefaultUnitBytes;
    /// <summary>Hash-range tasks of the merge phases (<c>merge_tasks</c>: exact dedup, line counts, MinHash buckets per band).</summary>
    public int MergeTasks { get; init; } = 8;
    /// <summary>Keep the work folder's spill files after a finished run (<c>keep_work</c>); the manifests are always kept.</summary>
    public bool KeepWork { get; init; }
    /// <summary>Longest record read (<c>max_record_bytes</c>); longer ones are skipped and counted.</summary>
    public long MaxRecordBytes { get; init; } = 64L << 20;
    public LineDedupOptions LineDedup { get; init; } = new(true, "line", 20, 10);

    public const long DefaultUnitBytes = 128L << 20;

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
        try { tree = ConfigBinder.Parse(text, source); }
        catch (ConfigException e) { throw new PrepareConfigException(e.Message); }

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
            var format = s.Str("format", "auto") switch
            {
                "auto" => Extraction.InputFormat.Auto,
                "jsonl" => Extraction.InputFormat.Jsonl,
                "parquet" => Extraction.InputFormat.Parquet,
                "text" => Extraction.InputFormat.Text,
                "json" => Extraction.InputFormat.Json,
                "csv" => Extraction.InputFormat.Csv,
                "html" => Extraction.InputFormat.Html,
                "pdf" => Extraction.InputFormat.Pdf,
                var v => throw new PrepareConfigException($"{source}: sources[{i}].format must be auto, jsonl, parquet, text, json, csv, html or pdf (got '{v}')"),
            };
            string field = s.Str("field", "text");
            if (field.Length == 0) throw new PrepareConfigException($"{source}: sources[{i}].field must not be empty");
            string content = s.Str("content", "text");
            if (content is not ("text" or "html")) throw new PrepareConfigException($"{source}: sources[{i}].content must be text or html (got '{content}')");
            if (kind == "instruction" && (format is not (Extraction.InputFormat.Auto or Extraction.InputFormat.Jsonl or Extraction.InputFormat.Json) || content == "html"))
                throw new PrepareConfigException($"{source}: sources[{i}] is an instruction source: its files are JSON or JSONL examples (format auto, jsonl or json; content text)");
            sources.Add(new PrepareSource(name, kind, files, s.Bool("quality_filter", kind == "pretrain"))
            {
                Format = format,
                Field = field,
                Html = content == "html",
                LineDedup = s.Bool("line_dedup", kind == "pretrain"),
            });
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
        var ld = root.Table("line_dedup");
        var lineDedup = new LineDedupOptions(ld.Bool("enabled", true), ld.Str("granularity", "line"), ld.Int("min_documents", 20), ld.Int("min_chars", 10));
        ld.EnsureConsumed();
        if (lineDedup.Granularity is not ("line" or "paragraph")) throw new PrepareConfigException($"{source}: line_dedup.granularity must be line or paragraph (got '{lineDedup.Granularity}')");
        if (lineDedup.MinDocuments < 2) throw new PrepareConfigException($"{source}: line_dedup.min_documents must be >= 2 (got {lineDedup.MinDocuments})");
        if (lineDedup.MinChars < 1) throw new PrepareConfigException($"{source}: line_dedup.min_chars must be >= 1 (got {lineDedup.MinChars})");
        string work = root.Str("work_dir", "") is { Length: > 0 } wd ? Resolve(wd) : Path.Combine(output, "work");
        long unitBytes = root.Long("unit_bytes", DefaultUnitBytes);
        if (unitBytes < 1) throw new PrepareConfigException($"{source}: unit_bytes must be positive (got {unitBytes})");
        int mergeTasks = root.Int("merge_tasks", 8);
        if (mergeTasks is < 1 or > 4096) throw new PrepareConfigException($"{source}: merge_tasks must be in [1, 4096] (got {mergeTasks})");
        long maxRecord = root.Long("max_record_bytes", 64L << 20);
        if (maxRecord is < 1 or > int.MaxValue) throw new PrepareConfigException($"{source}: max_record_bytes must be in [1, {int.MaxValue}] (got {maxRecord})");
        bool keepWork = root.Bool("keep_work", false);
        int threads = root.Int("threads", 0);
        if (threads < 0) throw new PrepareConfigException($"{source}: threads must be >= 0 (0 = every core; got {threads})");
        root.EnsureConsumed();
        return new PrepareConfig(output, seed, policy, maxDocs, sources, cleaningEnabled, cleaning, quality, dedupEnabled, dedup, tok)
        {
            Threads = threads,
            WorkDir = work,
            UnitBytes = unitBytes,
            MergeTasks = mergeTasks,
            KeepWork = keepWork,
            MaxRecordBytes = maxRecord,
            LineDedup = lineDedup,
        };
    }

    static void Wrap(string source, Action validate)
    {
        try { validate(); }
        catch (ArgumentException e) when (e is not PrepareConfigException) { throw new PrepareConfigException($"{source}: {ErrorText.OneLine(e.Message)}"); }
    }

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
