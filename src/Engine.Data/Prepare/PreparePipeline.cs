using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Engine.Data.Cleaning;
using Engine.Data.Dedup;
using Engine.Data.Shards;

namespace Engine.Data.Prepare;

/// <summary>Documents (or examples) and bytes entering and leaving one stage for one source.</summary>
public sealed record StageCount(string Stage, string Source, long DocumentsIn, long DocumentsOut, long BytesIn, long BytesOut);

/// <summary>One written output file.</summary>
public sealed record OutputFile(string Source, string Path, string Kind, long Documents, long Tokens, bool Valid, IReadOnlyList<string> Problems);

/// <summary>The summary of <c>engine prepare</c> (also written as report.json).</summary>
public sealed record PrepareReport(
    string OutputDir, double Seconds, IReadOnlyList<StageCount> Stages, IReadOnlyList<string> SkippedFiles,
    DocumentReadStats Reading, CleaningStats? Cleaning, string NormalizationMethod, IReadOnlyDictionary<string, long> QualityDropped,
    double? QualityTrainAccuracy, DedupReport? Dedup, string TokenizerPath, int VocabSize, IReadOnlyList<int> AddedTokenIds,
    double TokenizerTrainSeconds, long Tokens, IReadOnlyList<OutputFile> Outputs);

/// <summary>
/// <c>engine prepare</c>: read → clean (pretrain sources) → quality filter → dedup (local, then global) → tokenizer
/// (train or load, then vocabulary expansion) → shards (.bin/.idx per pretrain source, validated) and cleaned
/// instruction JSONL per instruction source → report.json. Tokenization runs on every core (config <c>threads</c>)
/// with results placed by document index, so the shards do not depend on the thread count.
/// A file that cannot be read is skipped and listed; a config error stops before any work.
/// </summary>
public static class PreparePipeline
{
    static readonly JsonSerializerOptions Json = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    static readonly JsonSerializerOptions JsonLine = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    sealed class SourceData(PrepareSource s)
    {
        public PrepareSource Source = s;
        public List<string> Docs = [];
        public List<InstructionExample> Examples = [];
    }

    static long Bytes(IEnumerable<string> docs) => docs.Sum(d => (long)Encoding.UTF8.GetByteCount(d));

    public static PrepareReport Run(PrepareConfig cfg, IProgress<string>? progress = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(cfg);
        var total = Stopwatch.StartNew();
        Directory.CreateDirectory(cfg.OutputDir);
        var stages = new List<StageCount>();
        var skipped = new List<string>();
        var readStats = new DocumentReadStats();
        var readOptions = new DocumentReadOptions { InvalidUtf8 = cfg.InvalidUtf8 };
        var data = cfg.Sources.Select(s => new SourceData(s)).ToList();

        // 1. Read.
        foreach (var sd in data)
        {
            long bytesBefore = readStats.Bytes;
            foreach (var file in sd.Source.Files)
            {
                cancel.ThrowIfCancellationRequested();
                try
                {
                    if (sd.Source.Kind == "instruction")
                    {
                        var ex = Instructions.Read(file, readOptions, readStats);
                        sd.Examples.AddRange(cfg.MaxDocumentsPerFile > 0 ? ex.Take(cfg.MaxDocumentsPerFile) : ex);
                    }
                    else
                    {
                        var docs = Documents.Read(file, readOptions, readStats);
                        sd.Docs.AddRange(cfg.MaxDocumentsPerFile > 0 ? docs.Take(cfg.MaxDocumentsPerFile) : docs);
                    }
                }
                catch (Exception e) when (e is InvalidDataException or FileNotFoundException or NotSupportedException or IOException)
                {
                    skipped.Add(e.Message);
                    progress?.Report($"skipped: {e.Message}");
                }
            }
            if (sd.Source.Kind == "instruction") sd.Docs = sd.Examples.Select(Documents.Join).ToList();
            long b = Bytes(sd.Docs);
            stages.Add(new StageCount("read", sd.Source.Name, sd.Docs.Count, sd.Docs.Count, readStats.Bytes - bytesBefore, b));
            progress?.Report($"read {sd.Source.Name}: {sd.Docs.Count} documents, {b / 1e6:F1} MB");
        }

        // 2. Clean (pretrain text only; instruction examples keep their exact wording).
        CleaningStats? cleanTotal = null;
        if (cfg.CleaningEnabled)
        {
            cleanTotal = new CleaningStats();
            var cleaner = new TextCleaner(cfg.Cleaning);
            foreach (var sd in data.Where(d => d.Source.Kind == "pretrain"))
            {
                cancel.ThrowIfCancellationRequested();
                var results = new string?[sd.Docs.Count];
                var perThread = new List<CleaningStats>();
                Parallel.For(0, sd.Docs.Count, () => new CleaningStats(), (i, _, st) => { results[i] = cleaner.Clean(sd.Docs[i], st).Text; return st; },
                    st => { lock (perThread) perThread.Add(st); });
                var st = new CleaningStats();
                foreach (var p in perThread) st.Add(p);
                cleanTotal.Add(st);
                long bIn = Bytes(sd.Docs);
                sd.Docs = results.Where(r => r != null).Select(r => r!).ToList();
                stages.Add(new StageCount("clean", sd.Source.Name, st.Input, st.Output, bIn, Bytes(sd.Docs)));
                progress?.Report($"clean {sd.Source.Name}: {st.Input} → {st.Output} ({string.Join(", ", st.Dropped.Select(kv => $"{kv.Key} {kv.Value}"))})");
            }
        }

        // 3. Quality classifier.
        var qualityDropped = new Dictionary<string, long>();
        double? qualityAcc = null;
        if (cfg.Quality.Enabled)
        {
            List<string> Load(IEnumerable<string> files)
            {
                var list = new List<string>();
                foreach (var f in files) list.AddRange(Documents.Read(f, readOptions, null));
                var order = SplitMix64.Permutation(list.Count, cfg.Seed);
                return order.Take(cfg.Quality.MaxExamples).Select(i => list[i]).ToList();
            }
            var curated = Load(cfg.Quality.Curated);
            var web = Load(cfg.Quality.Web);
            var model = QualityClassifier.Train(curated, web, seed: cfg.Seed);
            qualityAcc = (curated.Count(t => model.Score(t) >= 0.5) + web.Count(t => model.Score(t) < 0.5)) / (double)(curated.Count + web.Count);
            progress?.Report($"quality model: {curated.Count} curated vs {web.Count} web examples, training accuracy {qualityAcc:P1}");
            foreach (var sd in data.Where(d => d.Source.QualityFilter && d.Source.Kind == "pretrain"))
            {
                long bIn = Bytes(sd.Docs);
                int before = sd.Docs.Count;
                var scores = new double[sd.Docs.Count];
                Parallel.For(0, sd.Docs.Count, i => scores[i] = model.Score(sd.Docs[i]));
                sd.Docs = sd.Docs.Where((_, i) => scores[i] >= cfg.Quality.Threshold).ToList();
                qualityDropped[sd.Source.Name] = before - sd.Docs.Count;
                stages.Add(new StageCount("quality", sd.Source.Name, before, sd.Docs.Count, bIn, Bytes(sd.Docs)));
                progress?.Report($"quality {sd.Source.Name}: {before} → {sd.Docs.Count}");
            }
        }

        // 4. Dedup.
        DedupReport? dedupReport = null;
        if (cfg.DedupEnabled)
        {
            cancel.ThrowIfCancellationRequested();
            var (keep, rep) = Deduplicator.Run(data.Select(d => new DedupSource(d.Source.Name, d.Docs)).ToList(), cfg.Dedup, progress);
            dedupReport = rep;
            for (int i = 0; i < data.Count; i++)
            {
                var sd = data[i];
                long bIn = Bytes(sd.Docs);
                int before = sd.Docs.Count;
                sd.Docs = sd.Docs.Where((_, j) => keep[i][j]).ToList();
                if (sd.Source.Kind == "instruction") sd.Examples = sd.Examples.Where((_, j) => keep[i][j]).ToList();
                stages.Add(new StageCount("dedup", sd.Source.Name, before, sd.Docs.Count, bIn, Bytes(sd.Docs)));
            }
            progress?.Report($"dedup: {rep.Input} → {rep.Output} ({rep.ExactDuplicates} exact, {rep.NearDuplicates} near), {rep.DocumentsPerSecond:F0} docs/s, " +
                $"Jaccard |est − exact| mean {rep.MeanAbsError:F3} max {rep.MaxAbsError:F3} over {rep.Samples.Count} pairs");
        }

        // 5. Tokenizer.
        var tokWatch = Stopwatch.StartNew();
        BpeTokenizer tok;
        if (cfg.Tokenizer.Path != null)
        {
            tok = BpeTokenizer.Load(cfg.Tokenizer.Path);
            progress?.Report($"tokenizer: loaded {cfg.Tokenizer.Path} ({tok.VocabSize} ids)");
        }
        else
        {
            // An even byte budget per source, so the small domain sources shape the vocabulary too.
            long perSource = cfg.Tokenizer.TrainMaxBytes / Math.Max(1, data.Count);
            var corpus = new List<string>();
            foreach (var sd in data)
            {
                long b = 0;
                foreach (var i in SplitMix64.Permutation(sd.Docs.Count, cfg.Seed))
                {
                    if (b >= perSource) break;
                    corpus.Add(sd.Docs[i]);
                    b += Encoding.UTF8.GetByteCount(sd.Docs[i]);
                }
            }
            tok = BpeTokenizer.Train(corpus, new BpeTrainOptions
            {
                VocabSize = cfg.Tokenizer.VocabSize,
                MinFrequency = cfg.Tokenizer.MinFrequency,
                MaxTokenBytes = cfg.Tokenizer.MaxTokenBytes,
                SpecialTokens = cfg.Tokenizer.SpecialTokens,
            });
            progress?.Report($"tokenizer: trained {tok.VocabSize} ids on {Bytes(corpus) / 1e6:F1} MB in {tokWatch.Elapsed.TotalSeconds:F1} s");
        }
        double tokSeconds = tokWatch.Elapsed.TotalSeconds;
        var addedIds = cfg.Tokenizer.AddTokens.Count > 0 ? tok.AddTokens(cfg.Tokenizer.AddTokens) : [];
        if (addedIds.Length > 0) progress?.Report($"tokenizer: vocabulary expanded to {tok.VocabSize} ids ({cfg.Tokenizer.AddTokens.Count} tokens)");
        string tokPath = Path.Combine(cfg.OutputDir, "tokenizer.json");
        tok.Save(tokPath);

        // 6. Shards and instruction files.
        var outputs = new List<OutputFile>();
        long totalTokens = 0;
        foreach (var sd in data)
        {
            cancel.ThrowIfCancellationRequested();
            var encodeWatch = Stopwatch.StartNew();
            if (sd.Source.Kind == "pretrain")
            {
                var encoded = BatchEncoder.EncodeAll(tok, sd.Docs, cfg.Threads, cancel);
                double encodeSeconds = encodeWatch.Elapsed.TotalSeconds;
                string basePath = Path.Combine(cfg.OutputDir, sd.Source.Name);
                using (var w = new ShardWriter(basePath, tok.VocabSize))
                {
                    foreach (var e in encoded) w.Add(e);
                    w.Complete();
                }
                var v = ShardValidator.Validate(basePath);
                outputs.Add(new OutputFile(sd.Source.Name, basePath + ".bin", "shard", v.Documents, v.Tokens, v.Ok, v.Problems));
                totalTokens += v.Tokens;
                stages.Add(new StageCount("tokenize", sd.Source.Name, sd.Docs.Count, v.Documents, Bytes(sd.Docs), new FileInfo(basePath + ".bin").Length));
                progress?.Report($"shard {sd.Source.Name}: {v.Documents} documents, {v.Tokens} tokens (encoded in {encodeSeconds:F1} s on {BatchEncoder.Degree(cfg.Threads)} threads), " +
                    $"{(v.Ok ? "valid" : "INVALID: " + string.Join("; ", v.Problems))}");
            }
            else
            {
                string path = Path.Combine(cfg.OutputDir, sd.Source.Name + ".jsonl");
                var counts = new long[sd.Examples.Count];
                var examples = sd.Examples;
                BatchEncoder.Run(examples.Count, cfg.Threads, cancel, i =>
                    counts[i] = ChatTemplate.Default.EncodePrompt(tok, examples[i].Instruction, examples[i].Input).Length + tok.Encode(examples[i].Output).Length + 1);
                long tokens = counts.Sum();
                using (var wr = new StreamWriter(path, false, new UTF8Encoding(false)))
                {
                    foreach (var ex in sd.Examples)
                        wr.WriteLine(JsonSerializer.Serialize(new { instruction = ex.Instruction, input = ex.Input, output = ex.Output }, JsonLine));
                }
                outputs.Add(new OutputFile(sd.Source.Name, path, "instructions", sd.Examples.Count, tokens, true, []));
                totalTokens += tokens;
                stages.Add(new StageCount("tokenize", sd.Source.Name, sd.Examples.Count, sd.Examples.Count, Bytes(sd.Docs), new FileInfo(path).Length));
                progress?.Report($"instructions {sd.Source.Name}: {sd.Examples.Count} examples, {tokens} tokens with the chat template");
            }
        }

        var report = new PrepareReport(cfg.OutputDir, total.Elapsed.TotalSeconds, stages, skipped, readStats, cleanTotal, TextCleaner.NormalizationMethod,
            qualityDropped, qualityAcc, dedupReport, tokPath, tok.VocabSize, addedIds, tokSeconds, totalTokens, outputs);
        File.WriteAllText(Path.Combine(cfg.OutputDir, "report.json"), JsonSerializer.Serialize(report, Json));
        return report;
    }
}
