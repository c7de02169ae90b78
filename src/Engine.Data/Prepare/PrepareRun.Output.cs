using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Data.Cleaning;
using Engine.Data.Shards;

namespace Engine.Data.Prepare;

/// <summary>The phases after dedup: tokenizer, tokenize, merge, report.</summary>
sealed partial class PrepareRun
{
    HashSet<uint> NearRemovedIn(int u) => RemovedIn([RemovedPath("near_local"), RemovedPath("near_global")], u);

    /// <summary>One task: trains the tokenizer on the sample (an even byte budget per source, lowest sample hash first) or loads it; then expands it.</summary>
    TaskResult Tokenizer()
    {
        string tmp = WorkDir.Begin(TokenizerPath);
        BpeTokenizer tok;
        long trainBytes = 0, trainDocs = 0;
        if (_cfg.Tokenizer.Path != null) tok = BpeTokenizer.Load(_cfg.Tokenizer.Path);
        else
        {
            var near = LoadSet([RemovedPath("near_local"), RemovedPath("near_global")]);
            var picks = new List<(int Source, ulong Priority, ulong Id, string Text)>();
            for (int u = 0; u < Units; u++)
                foreach (var (index, text) in DocReader.Read(Unit(Path.Combine("minhash", "sample"), u, ".d")))
                {
                    ulong id = WorkPlan.DocId(u, index);
                    if (!near.Contains(id)) picks.Add((_plan.Units[u].Source, SamplePriority(id), id, text));
                }
            picks.Sort((a, b) => a.Source != b.Source ? a.Source.CompareTo(b.Source) : a.Priority != b.Priority ? a.Priority.CompareTo(b.Priority) : a.Id.CompareTo(b.Id));
            long perSource = _cfg.Tokenizer.TrainMaxBytes / Math.Max(1, _cfg.Sources.Count);
            var corpus = new List<string>();
            var used = new long[_cfg.Sources.Count];
            foreach (var p in picks)
            {
                if (used[p.Source] >= perSource) continue;
                corpus.Add(p.Text);
                long b = Encoding.UTF8.GetByteCount(p.Text);
                used[p.Source] += b;
                trainBytes += b;
            }
            trainDocs = corpus.Count;
            tok = BpeTokenizer.Train(corpus, new BpeTrainOptions
            {
                VocabSize = _cfg.Tokenizer.VocabSize,
                MinFrequency = _cfg.Tokenizer.MinFrequency,
                MaxTokenBytes = _cfg.Tokenizer.MaxTokenBytes,
                SpecialTokens = _cfg.Tokenizer.SpecialTokens,
            });
        }
        var added = _cfg.Tokenizer.AddTokens.Count > 0 ? tok.AddTokens(_cfg.Tokenizer.AddTokens) : [];
        tok.Save(tmp);
        var stats = new JsonObject
        {
            ["vocab_size"] = tok.VocabSize,
            ["added_token_ids"] = new JsonArray(added.Select(x => (JsonNode)x).ToArray()),
            ["trained"] = _cfg.Tokenizer.Path == null,
            ["train_bytes"] = trainBytes,
            ["train_documents"] = trainDocs,
            ["work_bytes"] = trainBytes,
            ["work_documents"] = trainDocs,
        };
        return new TaskResult([TokenizerPath], stats);
    }

    /// <summary>Per unit: the surviving documents encoded into the unit's shard (pretrain) or written as JSONL with token counts (instruction).</summary>
    TaskResult Tokenize(int u)
    {
        var unit = _plan.Units[u];
        var src = _cfg.Sources[unit.Source];
        var tok = _tokenizer.Value;
        var removed = NearRemovedIn(u);
        var kept = new List<string>();
        long bytes = 0, nearRemoved = 0;
        foreach (var (index, payload) in DocReader.Read(Unit("docs", u, ".d1")))
        {
            if (removed.Contains(index)) { nearRemoved++; continue; }
            kept.Add(payload);
            bytes += Encoding.UTF8.GetByteCount(payload);
        }
        // units run in parallel; a unit alone on the machine (few units) encodes on every thread
        int degree = Units >= _threads ? 1 : _threads;
        long tokens;
        var result = new TaskResult([], new JsonObject());
        if (src.Kind == "pretrain")
        {
            string basePath = _work.File(Path.Combine("tokenize", $"u{u:D5}"));
            var encoded = BatchEncoder.EncodeAll(tok, kept, degree, _o.Cancel);
            using (var w = new ShardWriter(basePath, tok.VocabSize))
            {
                foreach (var e in encoded) w.Add(e);
                w.Complete();
                tokens = w.Tokens;
            }
            var (bin, idx) = ShardFormat.Paths(basePath);
            result.Outputs.AddRange([bin, idx]);
            result.InPlace.UnionWith([bin, idx]);
        }
        else
        {
            string path = _work.File(Path.Combine("tokenize", $"u{u:D5}.jsonl"));
            var examples = kept.Select(ParseExample).ToList();
            var counts = new long[examples.Count];
            BatchEncoder.Run(examples.Count, degree, _o.Cancel, i =>
                counts[i] = ChatTemplate.Default.EncodePrompt(tok, examples[i].Instruction, examples[i].Input).Length + tok.Encode(examples[i].Output).Length + 1);
            tokens = counts.Sum();
            using (var wr = new StreamWriter(WorkDir.Begin(path), false, new UTF8Encoding(false)))
                foreach (var p in kept) { wr.Write(p); wr.Write('\n'); }
            result.Outputs.Add(path);
        }
        foreach (var (k, v) in new (string, JsonNode)[]
        {
            ("source", src.Name), ("documents_in", kept.Count + nearRemoved), ("documents_out", kept.Count), ("near_removed", nearRemoved),
            ("bytes_in", bytes), ("tokens", tokens), ("work_bytes", bytes), ("work_documents", kept.Count),
        }) result.Stats[k] = v;
        return result;
    }

    /// <summary>Per source: the units' shards (or JSONL) concatenated in unit order into the source's output, then validated.</summary>
    TaskResult Merge(int s)
    {
        var src = _cfg.Sources[s];
        var units = _plan.OfSource(s).Select(u => u.Index).ToList();
        var result = new TaskResult([], new JsonObject());
        long docs = 0, tokens = 0;
        bool valid = true;
        var problems = new JsonArray();
        string rel;
        if (src.Kind == "pretrain")
        {
            string basePath = Path.Combine(_cfg.OutputDir, src.Name);
            int vocab = _tokenizer.Value.VocabSize;
            using (var w = new ShardWriter(basePath, vocab))
            {
                var buf = new List<int>();
                foreach (int u in units)
                {
                    using var r = ShardReader.Open(_work.File(Path.Combine("tokenize", $"u{u:D5}")));
                    for (int d = 0; d < r.DocumentCount; d++) w.Add(r.Document(d));
                }
                w.Complete();
            }
            var v = ShardValidator.Validate(basePath);
            docs = v.Documents;
            tokens = v.Tokens;
            valid = v.Ok;
            foreach (var p in v.Problems) problems.Add(p);
            var (bin, idx) = ShardFormat.Paths(basePath);
            result.Outputs.AddRange([bin, idx]);
            result.InPlace.UnionWith([bin, idx]);
            rel = src.Name + ".bin";
        }
        else
        {
            string path = Path.Combine(_cfg.OutputDir, src.Name + ".jsonl");
            using (var output = new FileStream(WorkDir.Begin(path), FileMode.Create, FileAccess.Write))
                foreach (int u in units)
                {
                    using var input = File.OpenRead(_work.File(Path.Combine("tokenize", $"u{u:D5}.jsonl")));
                    input.CopyTo(output);
                    var st = _work.Manifest("tokenize", u)["stats"]!;
                    docs += st["documents_out"]!.GetValue<long>();
                    tokens += st["tokens"]!.GetValue<long>();
                }
            result.Outputs.Add(path);
            rel = src.Name + ".jsonl";
        }
        foreach (var (k, v) in new (string, JsonNode)[]
        {
            ("source", src.Name), ("path", rel), ("kind", src.Kind == "pretrain" ? "shard" : "instructions"), ("documents", docs), ("tokens", tokens),
            ("valid", valid), ("problems", problems), ("work_documents", docs),
        }) result.Stats[k] = v;
        return result;
    }

    /// <summary>One task: every phase's counts into report.json (deterministic) and the times into timing.json.</summary>
    TaskResult Report()
    {
        var report = BuildReport();
        string reportPath = Path.Combine(_cfg.OutputDir, "report.json"), timingPath = Path.Combine(_cfg.OutputDir, "timing.json");
        Durable.WriteAllText(WorkDir.Begin(reportPath), JsonSerializer.Serialize(report, PreparePipeline.Indented));
        Durable.WriteAllText(WorkDir.Begin(timingPath), BuildTiming().ToJsonString(PreparePipeline.Indented));
        return new TaskResult([reportPath, timingPath], new JsonObject { ["work_documents"] = 0 });
    }

    IEnumerable<JsonNode> Stats(string phase, int tasks) => Enumerable.Range(0, tasks).Select(t => _work.Manifest(phase, t)["stats"]!);

    PrepareReport BuildReport()
    {
        int S = _cfg.Sources.Count;
        var stages = new List<StageCount>();
        var skipped = new List<string>();
        var extraction = new SortedDictionary<string, long>(StringComparer.Ordinal);
        long L(JsonNode n, string k) => n[k]!.GetValue<long>();

        // per-unit phases summed per source, in source order
        foreach (var phase in new[] { "extract", "minhash", "tokenize" })
        {
            var per = Enumerable.Range(0, S).Select(s => new StageCount(phase, _cfg.Sources[s].Name, 0, 0, 0, 0)).ToArray();
            for (int u = 0; u < Units; u++)
            {
                var st = _work.Manifest(phase, u)["stats"]!;
                int s = _plan.Units[u].Source;
                var c = per[s];
                var counts = c.Counts;
                if (st["counts"] is JsonObject co) foreach (var (k, v) in co) counts[k] = counts.GetValueOrDefault(k) + v!.GetValue<long>();
                foreach (var k in new[] { "exact_removed", "lines_removed", "documents_with_lines_removed", "documents_emptied", "near_removed", "tokens" })
                    if (st[k] is JsonNode n) counts[k] = counts.GetValueOrDefault(k) + n.GetValue<long>();
                per[s] = c with
                {
                    DocumentsIn = c.DocumentsIn + L(st, "documents_in"),
                    DocumentsOut = c.DocumentsOut + L(st, "documents_out"),
                    BytesIn = c.BytesIn + L(st, "bytes_in"),
                    BytesOut = c.BytesOut + (st["bytes_out"] is JsonNode bo ? bo.GetValue<long>() : L(st, "bytes_in")),
                };
                if (phase == "extract")
                {
                    foreach (var m in st["skipped"]!.AsArray()) skipped.Add(m!.GetValue<string>());
                    if (st["counts"] is JsonObject ex) foreach (var (k, v) in ex) extraction[k] = extraction.GetValueOrDefault(k) + v!.GetValue<long>();
                }
            }
            stages.AddRange(per);
        }

        var exactLocal = new long[S];
        var exactGlobal = new long[S];
        foreach (var st in Stats("exact", _cfg.MergeTasks))
            for (int s = 0; s < S; s++) { exactLocal[s] += st["exact_local"]![s]!.GetValue<long>(); exactGlobal[s] += st["exact_global"]![s]!.GetValue<long>(); }
        long frequent = Stats("lines", _cfg.MergeTasks).Sum(st => L(st, "frequent_lines"));
        var nearLocal = _work.Manifest("near_local_clusters", 0)["stats"]!;
        var nearGlobal = _work.Manifest("near_global_clusters", 0)["stats"]!;
        var dedup = new List<DedupCounts>();
        for (int s = 0; s < S; s++)
        {
            var ex = stages.First(x => x.Stage == "extract" && x.Source == _cfg.Sources[s].Name);
            var mh = stages.First(x => x.Stage == "minhash" && x.Source == _cfg.Sources[s].Name);
            var tk = stages.First(x => x.Stage == "tokenize" && x.Source == _cfg.Sources[s].Name);
            dedup.Add(new DedupCounts(_cfg.Sources[s].Name, ex.DocumentsOut, exactLocal[s], exactGlobal[s], mh.Counts.GetValueOrDefault("lines_removed"),
                mh.Counts.GetValueOrDefault("documents_emptied"), nearLocal["removed"]![s]!.GetValue<long>(), nearGlobal["removed"]![s]!.GetValue<long>(),
                nearLocal["clusters"]![s]!.GetValue<long>(), nearGlobal["clusters"]![s]!.GetValue<long>(), tk.DocumentsOut));
        }
        var tokStats = _work.Manifest("tokenizer", 0)["stats"]!;
        var outputs = Stats("merge", S).Select(st => new OutputFile(st["source"]!.GetValue<string>(), st["path"]!.GetValue<string>(), st["kind"]!.GetValue<string>(),
            L(st, "documents"), L(st, "tokens"), st["valid"]!.GetValue<bool>(), st["problems"]!.AsArray().Select(p => p!.GetValue<string>()).ToList())).ToList();
        return new PrepareReport(Units, stages, skipped, extraction, dedup, frequent, TextCleaner.NormalizationMethod, "tokenizer.json",
            tokStats["vocab_size"]!.GetValue<int>(), tokStats["added_token_ids"]!.AsArray().Select(x => x!.GetValue<int>()).ToList(), outputs.Sum(o => o.Tokens), outputs);
    }

    /// <summary>Per phase: task seconds summed (one task = one core), throughput per core, wall time and peak memory per rank.</summary>
    JsonObject BuildTiming()
    {
        var phases = new JsonObject();
        foreach (var p in Specs())
        {
            if (p.Name == "report") continue;
            double secs = 0;
            long bytes = 0, docs = 0;
            for (int t = 0; t < p.Tasks; t++)
            {
                var m = _work.Manifest(p.Name, t);
                secs += m["seconds"]!.GetValue<double>();
                if (m["stats"]!["work_bytes"] is JsonNode b) bytes += b.GetValue<long>();
                if (m["stats"]!["work_documents"] is JsonNode d) docs += d.GetValue<long>();
            }
            var ranks = new JsonArray();
            string dir = _work.File(Path.Combine("ranks", p.Name));
            if (Directory.Exists(dir))
                foreach (var f in Directory.GetFiles(dir, "rank*.json").Order(StringComparer.Ordinal)) ranks.Add(JsonNode.Parse(File.ReadAllText(f)));
            phases[p.Name] = new JsonObject
            {
                ["tasks"] = p.Tasks,
                ["task_seconds"] = secs,
                ["bytes"] = bytes,
                ["documents"] = docs,
                ["mb_per_core_second"] = secs > 0 ? bytes / 1e6 / secs : 0,
                ["documents_per_core_second"] = secs > 0 ? docs / secs : 0,
                ["ranks"] = ranks,
            };
        }
        return new JsonObject { ["units"] = Units, ["phases"] = phases };
    }
}
