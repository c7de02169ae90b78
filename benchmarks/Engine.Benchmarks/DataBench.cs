using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Engine.Data;
using Engine.Data.Dedup;
using Ml = Microsoft.ML.Tokenizers;

namespace Engine.Benchmarks;

/// <summary>
/// `data` verb: tokenization throughput (MB/s of UTF-8 input) of our BpeTokenizer and of Microsoft.ML.Tokenizers'
/// BpeTokenizer built from the same tokenizer.json (same vocab, merges, split regex; ids checked equal), on the same
/// shipped EN/ZH text in the same run, cold (fresh tokenizer: empty piece caches) and warm (second pass); and
/// dedup throughput (documents/s) of exact + MinHash/LSH over the shipped corpus. Writes benchmarks/results/data-&lt;date&gt;.json.
/// Options: --vocab N (default 8000), --repeats N (default 3), --out DIR.
/// </summary>
public static class DataBench
{
    public static int Run(string[] args)
    {
        int vocab = 8000, repeats = 3;
        string? outDir = null;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--vocab": vocab = int.Parse(args[++i]); break;
                case "--repeats": repeats = int.Parse(args[++i]); break;
                case "--out": outDir = args[++i]; break;
                default: Console.Error.WriteLine($"data: unknown option '{args[i]}' (--vocab N, --repeats N, --out DIR)"); return 2;
            }
        }
        string dataDir = DataPaths.Find();
        var files = new[]
        {
            "general_en/wikitext2_valid.txt", "general_en/c4_demo.jsonl", "general_zh/cnews_general.jsonl", "finance_en/fomc_minutes.jsonl",
            "finance_en/tatqa_reports.jsonl", "finance_zh/finna_news.jsonl", "finance_zh/finnl_news.jsonl", "instruct/alpaca_zh_demo.json",
        };
        var docs = files.SelectMany(f => Documents.Read(Path.Combine(dataDir, f))).ToList();
        long bytes = docs.Sum(d => (long)Encoding.UTF8.GetByteCount(d));
        Console.WriteLine($"corpus: {docs.Count} documents, {bytes / 1e6:F2} MB from {files.Length} files");

        var sw = Stopwatch.StartNew();
        var ours = BpeTokenizer.Train(docs, new BpeTrainOptions { VocabSize = vocab });
        double trainSeconds = sw.Elapsed.TotalSeconds;
        Console.WriteLine($"train: {vocab} ids in {trainSeconds:F1} s");
        string tokPath = Path.Combine(Path.GetTempPath(), $"engine-databench-{Environment.ProcessId}.json");
        ours.Save(tokPath);

        // Cold: fresh instances; warm: a second pass over the same text with the caches filled.
        var results = new List<object>();
        long tokens = 0;
        bool same = true;
        for (int r = 0; r < repeats; r++)
        {
            var o = BpeTokenizer.Load(tokPath);
            var m = LoadMl(tokPath);
            double oc = Time(() => { long n = 0; foreach (var d in docs) n += o.Encode(d).Length; tokens = n; });
            double mc = Time(() => { foreach (var d in docs) m.EncodeToIds(d); });
            double ow = Time(() => { foreach (var d in docs) o.Encode(d); });
            double mw = Time(() => { foreach (var d in docs) m.EncodeToIds(d); });
            if (r == 0) same = docs.Take(500).All(d => o.Encode(d).AsSpan().SequenceEqual(m.EncodeToIds(d).ToArray()));
            results.Add(new { repeat = r, ours_cold_mb_s = bytes / 1e6 / oc, mlnet_cold_mb_s = bytes / 1e6 / mc, ours_warm_mb_s = bytes / 1e6 / ow, mlnet_warm_mb_s = bytes / 1e6 / mw });
            Console.WriteLine($"tokenize #{r}: ours {bytes / 1e6 / oc,6:F2} MB/s cold, {bytes / 1e6 / ow,6:F2} warm | ML.Tokenizers {bytes / 1e6 / mc,6:F2} cold, {bytes / 1e6 / mw,6:F2} warm");
        }
        File.Delete(tokPath);
        Console.WriteLine($"ids identical on 500 documents: {same}; {tokens} tokens, {bytes / (double)tokens:F2} bytes/token");

        var dedupRuns = new List<object>();
        var sources = files.Select(f => new DedupSource(f, Documents.Read(Path.Combine(dataDir, f)).ToList())).ToList();
        DedupReport? last = null;
        for (int r = 0; r < repeats; r++)
        {
            var (_, rep) = Deduplicator.Run(sources, new DedupOptions());
            last = rep;
            dedupRuns.Add(new { repeat = r, documents_per_s = rep.DocumentsPerSecond, seconds = rep.Seconds });
            Console.WriteLine($"dedup #{r}: {rep.Input} documents in {rep.Seconds:F2} s = {rep.DocumentsPerSecond:F0} docs/s ({rep.ExactDuplicates} exact, {rep.NearDuplicates} near)");
        }

        var result = new
        {
            benchmark = "data",
            date = DateTime.UtcNow.ToString("o"),
            commit = Git("rev-parse HEAD"),
            machine = new { cpu = CpuModel(), cores = Environment.ProcessorCount, os = System.Runtime.InteropServices.RuntimeInformation.OSDescription, runtime = Environment.Version.ToString() },
            corpus = new { files, documents = docs.Count, bytes },
            tokenizer = new
            {
                vocab,
                train_seconds = trainSeconds,
                tokens,
                bytes_per_token = bytes / (double)tokens,
                ids_identical_to_reference = same,
                reference = "Microsoft.ML.Tokenizers 2.0.1 BpeTokenizer (ByteLevel = true, RegexPreTokenizer) built from our tokenizer.json",
                runs = results,
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
        outDir ??= Path.Combine(RepoRoot(), "benchmarks", "results");
        Directory.CreateDirectory(outDir);
        string path = Path.Combine(outDir, $"data-{DateTime.UtcNow:yyyy-MM-dd}.json");
        File.WriteAllText(path, JsonSerializer.Serialize(result, new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine($"results: {path}");
        return same ? 0 : 1;
    }

    static double Time(Action a)
    {
        var sw = Stopwatch.StartNew();
        a();
        return sw.Elapsed.TotalSeconds;
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

    static string Git(string args)
    {
        try
        {
            var p = Process.Start(new ProcessStartInfo("git", args) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = RepoRoot() })!;
            string o = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return p.ExitCode == 0 ? o : "unknown";
        }
        catch (System.ComponentModel.Win32Exception) { return "unknown"; }
    }

    static string CpuModel()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        return "unknown";
    }
}
