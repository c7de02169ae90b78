using System.Text;
using System.Text.Json;
using Engine.Data.Dedup;

namespace Engine.Data.Prepare;

/// <summary>Settings of a generated corpus (tests and <c>engine bench prepare</c>).</summary>
public sealed record SyntheticCorpusOptions
{
    /// <summary>Original documents (before planted copies).</summary>
    public int Documents { get; init; } = 1000;
    public int Sources { get; init; } = 2;
    public int FilesPerSource { get; init; } = 4;
    public int MinWords { get; init; } = 120;
    public int MaxWords { get; init; } = 360;
    /// <summary>Exact copies planted, as a fraction of the originals (half in the same source, half in another).</summary>
    public double ExactFraction { get; init; } = 0.1;
    /// <summary>Near copies planted, as a fraction of the originals, each with a word-replacement rate drawn from <see cref="EditRates"/>.</summary>
    public double NearFraction { get; init; } = 0.2;
    /// <summary>Word-replacement rates of the near copies (higher rate, lower Jaccard).</summary>
    public double[] EditRates { get; init; } = [0.005, 0.01, 0.02, 0.08, 0.12];
    /// <summary>Boilerplate lines (navigation, disclaimers) added to this fraction of documents.</summary>
    public double BoilerplateFraction { get; init; } = 0.0;
    public ulong Seed { get; init; } = 1;
}

/// <summary>One planted copy: where it is, what it copies and the exact Jaccard of their shingle sets.</summary>
public sealed record PlantedCopy(string Text, string OriginalText, bool Exact, double Jaccard);

/// <summary>What was written: the files per source and the planted copies (the originals come first in file order).</summary>
public sealed record SyntheticCorpus(IReadOnlyList<IReadOnlyList<string>> Files, IReadOnlyList<PlantedCopy> Copies, long Bytes, int Documents);

/// <summary>
/// Generates a JSONL corpus with planted duplicates: documents of random words from a seeded vocabulary (so unrelated
/// documents share almost no 5-grams), exact copies and near copies (a fraction of words replaced) placed after their
/// originals in the same or a later source, each copy's exact Jaccard measured on <see cref="MinHasher"/> shingles.
/// Deterministic from the seed.
/// </summary>
public static class SyntheticCorpusGenerator
{
    public static SyntheticCorpus Generate(string dir, SyntheticCorpusOptions o, MinHasher? shingler = null)
    {
        Directory.CreateDirectory(dir);
        shingler ??= new MinHasher(5, 1, 1);
        var rng = new SplitMix64(o.Seed);
        int Next(int n) => (int)(rng.NextUInt64() % (ulong)n);
        var vocab = Enumerable.Range(0, 20000).Select(_ =>
        {
            int len = 3 + Next(7);
            var c = new char[len];
            for (int i = 0; i < len; i++) c[i] = (char)('a' + Next(26));
            return new string(c);
        }).ToArray();
        string[] boiler = ["Home | News | Markets | Contact us | Subscribe", "Copyright notice: reproduction without permission is prohibited", "Share this article on social media"];
        string Doc()
        {
            int n = o.MinWords + Next(Math.Max(1, o.MaxWords - o.MinWords));
            var sb = new StringBuilder();
            for (int i = 0; i < n; i++)
            {
                if (i > 0) sb.Append(i % 17 == 0 ? ".\n" : " ");
                sb.Append(vocab[Next(vocab.Length)]);
            }
            sb.Append('.');
            if (Next(1000) < o.BoilerplateFraction * 1000) sb.Insert(0, boiler[Next(boiler.Length)] + "\n").Append('\n').Append(boiler[Next(boiler.Length)]);
            return sb.ToString();
        }
        string Edit(string doc, double rate)
        {
            var words = doc.Split(' ');
            for (int i = 0; i < words.Length; i++) if (Next(100000) < rate * 100000) words[i] = vocab[Next(vocab.Length)];
            return string.Join(' ', words);
        }
        // documents per source, in order; copies go after their originals
        var perSource = Enumerable.Range(0, o.Sources).Select(_ => new List<string>()).ToArray();
        var originals = new List<(int Source, string Text)>();
        for (int i = 0; i < o.Documents; i++)
        {
            int s = Next(o.Sources);
            string d = Doc();
            perSource[s].Add(d);
            originals.Add((s, d));
        }
        var copies = new List<PlantedCopy>();
        int exact = (int)(o.Documents * o.ExactFraction), near = (int)(o.Documents * o.NearFraction);
        for (int i = 0; i < exact + near; i++)
        {
            var (s, text) = originals[Next(originals.Count)];
            int target = i % 2 == 0 ? s : Math.Min(o.Sources - 1, s + 1 + Next(Math.Max(1, o.Sources - s - 1)));   // same source, or a later one
            bool isExact = i < exact;
            string copy = isExact ? text : Edit(text, o.EditRates[Next(o.EditRates.Length)]);
            if (!isExact && copy == text) copy = Edit(text, o.EditRates[^1]);
            perSource[target].Add(copy);
            double j = isExact ? 1 : MinHasher.ExactJaccard(shingler.Shingles(text), shingler.Shingles(copy));
            copies.Add(new PlantedCopy(copy, text, isExact, j));
        }
        var files = new List<IReadOnlyList<string>>();
        long bytes = 0;
        var json = new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        for (int s = 0; s < o.Sources; s++)
        {
            var list = new List<string>();
            int per = (perSource[s].Count + o.FilesPerSource - 1) / Math.Max(1, o.FilesPerSource);
            for (int f = 0; f < o.FilesPerSource; f++)
            {
                string path = Path.Combine(dir, $"s{s}_{f:D3}.jsonl");
                using (var w = new StreamWriter(path, false, new UTF8Encoding(false)))
                    foreach (var d in perSource[s].Skip(f * per).Take(per))
                    {
                        string line = JsonSerializer.Serialize(new { text = d }, json);
                        w.Write(line);
                        w.Write('\n');
                        bytes += Encoding.UTF8.GetByteCount(line) + 1;
                    }
                list.Add(path);
            }
            files.Add(list);
        }
        return new SyntheticCorpus(files, copies, bytes, originals.Count + copies.Count);
    }

    /// <summary>
    /// A prepare config over a generated corpus in <paramref name="corpusDir"/>: sources "web" (s0) and "books" (s1, plus
    /// <paramref name="extraBooks"/>), and "sft" (instructions) when <paramref name="instructions"/> is given; small units so
    /// even a small corpus makes several; <paramref name="extra"/> is appended (more tables).
    /// </summary>
    public static string Config(string corpusDir, string outputDir, long unitBytes = 40000, int mergeTasks = 3, int vocab = 400,
        IEnumerable<string>? extraBooks = null, string? instructions = null, string extra = "")
    {
        static string Q(string p) => "\"" + p.Replace("\\", "/") + "\"";
        string c = corpusDir.Replace("\\", "/");
        var books = new[] { Q(c + "/s1_*.jsonl") }.Concat((extraBooks ?? []).Select(Q));
        var sb = new StringBuilder();
        sb.Append($"output_dir = {Q(outputDir)}\nseed = 3\nunit_bytes = {unitBytes}\nmerge_tasks = {mergeTasks}\n");
        sb.Append($"[[sources]]\nname = \"web\"\nfiles = [{Q(c + "/s0_*.jsonl")}]\n");
        sb.Append($"[[sources]]\nname = \"books\"\nfiles = [{string.Join(", ", books)}]\n");
        if (instructions != null) sb.Append($"[[sources]]\nname = \"sft\"\nkind = \"instruction\"\nfiles = [{Q(instructions)}]\n");
        sb.Append("[cleaning]\nlanguages = []\nrepetition = false\n[line_dedup]\nmin_documents = 5\n");
        sb.Append("[dedup]\npermutations = 64\nbands = 8\nrows = 8\nthreshold = 0.8\n");
        sb.Append($"[tokenizer]\nvocab_size = {vocab}\ntrain_max_bytes = 300000\n");
        sb.Append(extra);
        return sb.ToString();
    }
}
