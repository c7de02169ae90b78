using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Data.Cleaning;
using Engine.Data.Dedup;
using Engine.Data.Extraction;

namespace Engine.Data.Prepare;

/// <summary>The phases up to dedup: extract, exact, lines, minhash, the near-duplicate buckets and clusters.</summary>
sealed partial class PrepareRun
{
    /// <summary>A unit, its source, whether it holds pretraining text, whether line dedup applies, and whether by paragraph.</summary>
    (WorkUnit Unit, PrepareSource Source, bool Pretrain, bool LineDedup, bool Paragraphs) UnitSettings(int u)
    {
        var unit = _plan.Units[u];
        var src = _cfg.Sources[unit.Source];
        bool pretrain = src.Kind == "pretrain";
        return (unit, src, pretrain, pretrain && src.LineDedup && _cfg.LineDedup.Enabled, _cfg.LineDedup.Granularity == "paragraph");
    }

    /// <summary>The counts every unit task records: its source, documents and bytes in and out.</summary>
    static JsonObject FlowStats(PrepareSource src, long docsIn, long docsOut, long bytesIn, long bytesOut) => new()
    {
        ["source"] = src.Name,
        ["documents_in"] = docsIn,
        ["documents_out"] = docsOut,
        ["bytes_in"] = bytesIn,
        ["bytes_out"] = bytesOut,
    };

    /// <summary>Per unit: read its parts, extract, clean, filter; write the kept documents and their exact/line hash records.</summary>
    TaskResult Extract(int u)
    {
        var (unit, src, pretrain, lineDedup, paragraphs) = UnitSettings(u);
        var cleaner = pretrain && _cfg.CleaningEnabled ? new TextCleaner(_cfg.Cleaning) : null;
        var quality = pretrain && src.QualityFilter ? _quality.Value : null;
        var input = new InputOptions { InvalidUtf8 = _cfg.InvalidUtf8, Field = src.Field, Html = src.Html, MaxRecordBytes = _cfg.MaxRecordBytes };
        var readOptions = new DocumentReadOptions { InvalidUtf8 = _cfg.InvalidUtf8 };

        string d0 = Unit("docs", u, ".d0"), exactPath = Unit("exact", u, ".rec"), linePath = Unit("lines", u, ".rec");
        var exact = new List<Rec>();
        var lines = new List<Rec>();
        var counts = new Counters();
        var cleaning = new CleaningStats();
        var skipped = new JsonArray();
        long docsIn = 0, docsOut = 0, bytesIn = 0, bytesOut = 0;
        uint index = 0;
        using (var docs = new DocWriter(WorkDir.Begin(d0)))
        {
            foreach (var part in unit.Parts)
            {
                _o.Cancel.ThrowIfCancellationRequested();
                long mark = docs.Mark();
                int exactMark = exact.Count, lineMark = lines.Count;
                uint indexMark = index;
                var fileCounts = new Counters();
                var fileCleaning = new CleaningStats();
                long fIn = 0, fOut = 0, fBytesIn = 0, fBytesOut = 0;
                try
                {
                    IEnumerable<(string Text, string Payload)> records = pretrain
                        ? InputReader.Read(part, src.Format, input, fileCounts).Select(t => (t, t))
                        : Instructions.Read(part.Path, readOptions, null).Select(ex => (Documents.Join(ex), JsonSerializer.Serialize(new { instruction = ex.Instruction, input = ex.Input, output = ex.Output }, PreparePipeline.Compact)));
                    int n = 0;
                    foreach (var (raw, payload) in records)
                    {
                        if (_cfg.MaxDocumentsPerFile > 0 && n >= _cfg.MaxDocumentsPerFile) break;
                        n++;
                        fIn++;
                        fBytesIn += Encoding.UTF8.GetByteCount(raw);
                        string text = raw, keep = payload;
                        if (cleaner != null)
                        {
                            var (c, _) = cleaner.Clean(raw, fileCleaning);
                            if (c == null) continue;
                            text = keep = c;
                        }
                        if (quality != null && quality.Score(text) < _cfg.Quality.Threshold) { fileCounts.Add("quality_dropped"); continue; }
                        docs.Add(index, keep);
                        var key = Deduplicator.ExactKey(text);
                        exact.Add(new Rec((ulong)(key >> 64), (ulong)key, WorkPlan.DocId(u, index)));
                        if (lineDedup)
                            foreach (var h in LineDedup.Hashes(text, paragraphs, _cfg.LineDedup.MinChars)) lines.Add(new Rec(h, (ulong)(key >> 64)));
                        index++;
                        fOut++;
                        fBytesOut += Encoding.UTF8.GetByteCount(keep);
                    }
                    counts.Add(fileCounts);
                    cleaning.Add(fileCleaning);
                    docsIn += fIn; docsOut += fOut; bytesIn += fBytesIn; bytesOut += fBytesOut;
                    counts.Add("files_read");
                }
                catch (Exception e) when (e is InvalidDataException or NotSupportedException or IOException or UnauthorizedAccessException)
                {
                    // an unreadable file (binary, truncated, not what its name says): everything it gave is taken back
                    docs.Rewind(mark);
                    exact.RemoveRange(exactMark, exact.Count - exactMark);
                    lines.RemoveRange(lineMark, lines.Count - lineMark);
                    index = indexMark;
                    counts.Add("files_skipped");
                    skipped.Add(ErrorText.OneLine(e.Message));
                }
            }
        }
        RecordFile.WriteSorted(WorkDir.Begin(exactPath), exact, 3);
        RecordFile.WriteSorted(WorkDir.Begin(linePath), lines, 2, unique: true);
        foreach (var (k, v) in cleaning.Dropped) counts.Add("clean_dropped_" + k, v);
        counts.Add("clean_normalized_documents", cleaning.DocumentsNormalized);
        counts.Add("clean_control_chars_removed", cleaning.ControlCharsRemoved);
        counts.Add("clean_boilerplate_lines_removed", cleaning.BoilerplateLinesRemoved);
        foreach (var (k, v) in cleaning.Languages) counts.Add("language_" + k, v);
        var stats = FlowStats(src, docsIn, docsOut, bytesIn, bytesOut);
        stats["input_bytes"] = unit.Bytes;
        stats["work_bytes"] = unit.Bytes;
        stats["work_documents"] = docsIn;
        stats["counts"] = Counts(counts.Values);
        stats["skipped"] = skipped;
        return new TaskResult([d0, exactPath, linePath], stats);
    }

    /// <summary>Per hash range: groups of identical documents across every unit; all but the earliest are removed.</summary>
    TaskResult Exact(int r)
    {
        string outPath = ExactRemovedPath(r);
        var removed = new List<Rec>();
        var local = new long[_cfg.Sources.Count];
        var global = new long[_cfg.Sources.Count];
        long clusters = 0, records = 0;
        if (_cfg.DedupEnabled && _cfg.Dedup.Exact && (_cfg.Dedup.Local || _cfg.Dedup.Global))
        {
            var (lo, hi) = RecordFile.Slice(r, _cfg.MergeTasks);
            var files = Enumerable.Range(0, Units).Select(u => Unit("exact", u, ".rec")).ToList();
            Rec prev = default;
            bool any = false;
            int size = 0;
            var seen = new HashSet<int>();
            foreach (var rec in RecordFile.Merge(files, 3, lo, hi))
            {
                records++;
                int s = _plan.SourceOf(rec.C);
                if (!any || rec.A != prev.A || rec.B != prev.B)
                {
                    any = true;
                    prev = rec;
                    size = 1;
                    seen.Clear();
                    seen.Add(s);
                    continue;
                }
                if (++size == 2) clusters++;
                bool isLocal = !seen.Add(s);
                if (_cfg.Dedup.Global || (isLocal && _cfg.Dedup.Local))
                {
                    removed.Add(new Rec(rec.C));
                    (isLocal ? local : global)[s]++;
                }
            }
        }
        RecordFile.WriteSorted(WorkDir.Begin(outPath), removed, 1);
        var stats = new JsonObject
        {
            ["clusters"] = clusters,
            ["work_documents"] = records,
            ["exact_local"] = new JsonArray(local.Select(x => (JsonNode)x).ToArray()),
            ["exact_global"] = new JsonArray(global.Select(x => (JsonNode)x).ToArray()),
        };
        return new TaskResult([outPath], stats);
    }

    /// <summary>Per hash range: lines (or paragraphs) found in at least min_documents distinct documents.</summary>
    TaskResult Lines(int r)
    {
        string outPath = FrequentPath(r);
        long frequent = 0, occurrences = 0, records = 0;
        using (var w = new RecordWriter(WorkDir.Begin(outPath), 1))
        {
            if (_cfg.LineDedup.Enabled)
            {
                var (lo, hi) = RecordFile.Slice(r, _cfg.MergeTasks);
                var files = Enumerable.Range(0, Units).Select(u => Unit("lines", u, ".rec")).ToList();
                ulong line = 0, doc = 0;
                long df = 0;
                bool any = false;
                void Close()
                {
                    if (any && df >= _cfg.LineDedup.MinDocuments) { w.Add(new Rec(line)); frequent++; occurrences += df; }
                }
                foreach (var rec in RecordFile.Merge(files, 2, lo, hi))
                {
                    records++;
                    if (!any || rec.A != line)
                    {
                        Close();
                        any = true;
                        line = rec.A;
                        doc = rec.B;
                        df = 1;
                    }
                    else if (rec.B != doc) { doc = rec.B; df++; }
                }
                Close();
            }
        }
        return new TaskResult([outPath], new JsonObject { ["frequent_lines"] = frequent, ["frequent_line_documents"] = occurrences, ["work_documents"] = records });
    }

    /// <summary>
    /// Per unit: drops exact duplicates, removes frequent lines, and writes the surviving documents, their MinHash
    /// signatures (fixed records by index), band records per band, and the tokenizer-training sample.
    /// </summary>
    TaskResult MinHash(int u)
    {
        var (unit, src, pretrain, lineDedup, paragraphs) = UnitSettings(u);
        var exactRemoved = RemovedIn(Enumerable.Range(0, _cfg.MergeTasks).Select(ExactRemovedPath), u);
        var frequent = lineDedup ? _frequentLines.Value : null;
        var hasher = Near ? new MinHasher(_cfg.Dedup.ShingleSize, _cfg.Dedup.Permutations, _cfg.Seed) : null;
        double rate = _sampleRates.Value[unit.Source];
        ulong sampleBelow = rate >= 1 ? ulong.MaxValue : (ulong)(rate * 18446744073709551615.0);

        string d1 = Unit("docs", u, ".d1"), sigPath = Unit(Path.Combine("minhash", "sig"), u, ".sig"), samplePath = Unit(Path.Combine("minhash", "sample"), u, ".d");
        var bands = Enumerable.Range(0, Bands).Select(_ => new List<Rec>()).ToArray();
        long docsIn = 0, docsOut = 0, bytesIn = 0, bytesOut = 0, exactDropped = 0, linesRemoved = 0, touched = 0, emptied = 0, sampled = 0;
        int sigBytes = 4 * _cfg.Dedup.Permutations;
        var zero = new byte[sigBytes];
        var keys = new ulong[Bands];
        using (var docs = new DocWriter(WorkDir.Begin(d1)))
        using (var sample = new DocWriter(WorkDir.Begin(samplePath)))
        using (var sigs = new FileStream(WorkDir.Begin(sigPath), FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
        {
            foreach (var (index, payload) in DocReader.Read(Unit("docs", u, ".d0")))
            {
                docsIn++;
                bytesIn += Encoding.UTF8.GetByteCount(payload);
                if (exactRemoved.Contains(index)) { exactDropped++; if (hasher != null) sigs.Write(zero); continue; }
                string kept = payload;
                if (frequent != null)
                {
                    kept = LineDedup.Remove(payload, paragraphs, _cfg.LineDedup.MinChars, frequent.Contains, out int removed);
                    if (removed > 0)
                    {
                        linesRemoved += removed;
                        touched++;
                        if (kept.Length < Math.Max(1, _cfg.CleaningEnabled ? _cfg.Cleaning.MinChars : 1)) { emptied++; if (hasher != null) sigs.Write(zero); continue; }
                    }
                }
                string text = pretrain ? kept : Documents.Join(ParseExample(kept));
                docs.Add(index, kept);
                docsOut++;
                bytesOut += Encoding.UTF8.GetByteCount(kept);
                ulong id = WorkPlan.DocId(u, index);
                if (hasher != null)
                {
                    uint[] sig = hasher.Signature(text);
                    sigs.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(sig.AsSpan()));
                    NearDuplicates.BandKeys(sig, Bands, _cfg.Dedup.Rows, keys);
                    for (int b = 0; b < Bands; b++) bands[b].Add(new Rec(keys[b], id));
                }
                if (SamplePriority(id) < sampleBelow) { sample.Add(index, text); sampled++; }
            }
        }
        var outputs = new List<string> { d1, sigPath, samplePath };
        for (int b = 0; b < Bands; b++)
        {
            string p = BandPath(b, u);
            RecordFile.WriteSorted(WorkDir.Begin(p), Near ? bands[b] : [], 2);
            outputs.Add(p);
        }
        var stats = FlowStats(src, docsIn, docsOut, bytesIn, bytesOut);
        stats["exact_removed"] = exactDropped;
        stats["lines_removed"] = linesRemoved;
        stats["documents_with_lines_removed"] = touched;
        stats["documents_emptied"] = emptied;
        stats["sampled"] = sampled;
        stats["work_bytes"] = bytesIn;
        stats["work_documents"] = docsIn;
        return new TaskResult(outputs, stats);
    }

    internal static InstructionExample ParseExample(string payload)
    {
        using var doc = JsonDocument.Parse(payload);
        var e = doc.RootElement;
        return new InstructionExample(e.GetProperty("instruction").GetString()!, e.GetProperty("input").GetString()!, e.GetProperty("output").GetString()!);
    }

    /// <summary>A document's place in the tokenizer-training sample: a hash of the seed and its id.</summary>
    ulong SamplePriority(ulong id) => SplitMix64.Derive(_cfg.Seed ^ 0x5A17E5A17E5A17E5UL, (long)id);

    /// <summary>Per source, the fraction of documents sampled: about twice its share of tokenizer.train_max_bytes over its extracted bytes.</summary>
    double[] SampleRates()
    {
        var rates = new double[_cfg.Sources.Count];
        if (_cfg.Tokenizer.Path != null) return rates;
        var bytes = new long[_cfg.Sources.Count];
        for (int u = 0; u < Units; u++)
            bytes[_plan.Units[u].Source] += _work.Manifest("extract", u)["stats"]!["bytes_out"]!.GetValue<long>();
        long budget = _cfg.Tokenizer.TrainMaxBytes / Math.Max(1, _cfg.Sources.Count);
        for (int s = 0; s < rates.Length; s++) rates[s] = bytes[s] == 0 ? 0 : Math.Min(1, 2.0 * budget / bytes[s]);
        return rates;
    }

    /// <summary>Reads signatures of any unit by document id (fixed-size records), keeping one open handle per unit.</summary>
    sealed class SignatureStore(PrepareRun run) : IDisposable
    {
        readonly Dictionary<int, Microsoft.Win32.SafeHandles.SafeFileHandle> _files = [];
        readonly Dictionary<ulong, uint[]> _cache = [];

        public uint[] Get(ulong id)
        {
            if (_cache.TryGetValue(id, out var s)) return s;
            int u = WorkPlan.UnitOf(id);
            if (!_files.TryGetValue(u, out var h))
                _files[u] = h = File.OpenHandle(run.Unit(Path.Combine("minhash", "sig"), u, ".sig"), FileMode.Open, FileAccess.Read, FileShare.Read);
            var sig = new uint[run._cfg.Dedup.Permutations];
            var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(sig.AsSpan());
            if (RandomAccess.Read(h, bytes, (long)(uint)id * bytes.Length) != bytes.Length)
                throw new InvalidDataException($"{run.Unit(Path.Combine("minhash", "sig"), u, ".sig")}: no signature for document {(uint)id} (truncated)");
            if (_cache.Count > 4096) _cache.Clear();
            _cache[id] = sig;
            return sig;
        }

        public void Dispose()
        {
            foreach (var h in _files.Values) h.Dispose();
        }
    }

    /// <summary>Per band × hash range: documents sharing a band key, checked pairwise on full signatures (local: same source; global: across sources, stage-one survivors).</summary>
    TaskResult Buckets(int t, string stage)
    {
        string outPath = EdgesPath(stage, t);
        bool local = stage == "near_local";
        bool enabled = Near && (local ? _cfg.Dedup.Local : _cfg.Dedup.Global);
        var mode = local ? NearDuplicates.Stage.Local : _cfg.Dedup.Local ? NearDuplicates.Stage.Global : NearDuplicates.Stage.All;
        long buckets = 0, checks = 0, pairs = 0, records = 0;
        var edges = new List<Rec>();
        if (enabled)
        {
            int b = t / RangesPerBand;
            var (lo, hi) = RecordFile.Slice(t % RangesPerBand, RangesPerBand);
            var skip = local ? null : _nearLocalRemoved.Value;
            var files = Enumerable.Range(0, Units).Select(u => BandPath(b, u)).ToList();
            using var store = new SignatureStore(this);
            var members = new List<ulong>();
            ulong key = 0;
            bool Similar(ulong x, ulong y)
            {
                checks++;
                return MinHasher.EstimateJaccard(store.Get(x), store.Get(y)) >= _cfg.Dedup.Threshold;
            }
            void Close()
            {
                if (members.Count < 2) return;
                buckets++;
                NearDuplicates.BucketPairs(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(members), _plan.SourceOf, mode, Similar, (x, y) => { edges.Add(new Rec(x, y)); pairs++; });
            }
            foreach (var rec in RecordFile.Merge(files, 2, lo, hi))
            {
                records++;
                if (skip != null && skip.Contains(rec.B)) continue;
                if (members.Count > 0 && rec.A != key) { Close(); members.Clear(); }
                key = rec.A;
                members.Add(rec.B);
            }
            Close();
        }
        RecordFile.WriteSorted(WorkDir.Begin(outPath), edges, 2, unique: true);
        return new TaskResult([outPath], new JsonObject { ["buckets"] = buckets, ["checks"] = checks, ["pairs"] = pairs, ["work_documents"] = records });
    }

    /// <summary>One task: union-find over every bucket task's pairs; all but each cluster's earliest document are removed.</summary>
    TaskResult Clusters(string stage)
    {
        string outPath = RemovedPath(stage);
        var uf = new UnionFind();
        int tasks = Bands * RangesPerBand;
        long edges = 0;
        for (int t = 0; t < tasks; t++)
            foreach (var e in RecordFile.Range(EdgesPath(stage, t), 2, 0, ulong.MaxValue)) { uf.Union(e.A, e.B); edges++; }
        var removed = new List<Rec>();
        var perSource = new long[_cfg.Sources.Count];
        var clusters = new long[_cfg.Sources.Count];
        var sizes = new Dictionary<ulong, long>();
        foreach (var (id, root) in uf.Members())
        {
            sizes[root] = sizes.GetValueOrDefault(root) + 1;
            if (id == root) { clusters[_plan.SourceOf(id)]++; continue; }
            removed.Add(new Rec(id));
            perSource[_plan.SourceOf(id)]++;
        }
        RecordFile.WriteSorted(WorkDir.Begin(outPath), removed, 1);
        var stats = new JsonObject
        {
            ["pairs"] = edges,
            ["largest_cluster"] = sizes.Count == 0 ? 0 : sizes.Values.Max(),
            ["work_documents"] = edges,
            ["removed"] = new JsonArray(perSource.Select(x => (JsonNode)x).ToArray()),
            ["clusters"] = new JsonArray(clusters.Select(x => (JsonNode)x).ToArray()),
        };
        return new TaskResult([outPath], stats);
    }
}
