using System.Text.RegularExpressions;
using Engine.Data;

namespace Engine.Training.Recipes;

/// <summary>The recipe's tokenizer: byte-level, a loaded tokenizer.json, or a BPE trained on the pretraining sources; and its expansion.</summary>
public static partial class RecipeTokenizers
{
    public static ITokenizer Build(RecipeConfig cfg, IReadOnlyDictionary<string, LoadedSource> sources, string outDir, Action<string>? log)
    {
        var t = cfg.Tokenizer;
        // model / auto: the tokenizer of the model directory the first stage that starts from one starts from
        var fromDir = cfg.Stages.FirstOrDefault(s => IsDirectory(s.Init));
        if (t.Kind == "model" || (t.Kind == "auto" && fromDir != null && File.Exists(Path.Combine(cfg.Resolve(fromDir.Init), TokenizerFiles.JsonFile))))
        {
            string dir = cfg.Resolve(fromDir!.Init);
            var own = TokenizerFiles.FromDirectory(dir) ?? throw new Config.ConfigException($"tokenizer.kind = \"model\": stages[{fromDir.Name}].init {dir} has no {TokenizerFiles.JsonFile}");
            log?.Invoke($"tokenizer: the one of {dir} ({own.VocabSize} ids)");
            return own;
        }
        if (t.Kind is "byte" or "auto") return new ByteTokenizer();
        if (t.Path != null)
        {
            var loaded = TokenizerFiles.Load(cfg.Resolve(t.Path));
            log?.Invoke($"tokenizer: loaded {t.Path} ({loaded.VocabSize} ids)");
            return loaded;
        }
        var names = t.TrainSources.Length > 0 ? t.TrainSources : sources.Values.Where(s => s.IsPretrain).Select(s => s.Name).ToArray();
        foreach (var n in names)
            if (!sources.ContainsKey(n)) throw new Config.ConfigException($"tokenizer.train_sources: unknown source '{n}'");
        // equal share of characters from every training source, documents interleaved
        long perSource = t.TrainChars / Math.Max(1, names.Length);
        var corpus = new List<string>();
        foreach (var n in names)
        {
            long chars = 0;
            foreach (var d in sources[n].TrainDocs)
            {
                if (chars >= perSource) break;
                corpus.Add(d);
                chars += d.Length;
            }
        }
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var bpe = BpeTokenizer.Train(corpus, new BpeTrainOptions { VocabSize = t.VocabSize });
        bpe.Save(Path.Combine(outDir, "tokenizer.json"));
        log?.Invoke($"tokenizer: BPE with {bpe.VocabSize} ids trained on {corpus.Sum(c => (long)c.Length):N0} characters of {string.Join(", ", names)} in {sw.Elapsed.TotalSeconds:F1} s");
        return bpe;
    }

    /// <summary>
    /// Vocabulary expansion as XuanYuan-70B did it (~7k Chinese characters added to Llama's 32k): the Chinese
    /// characters of expand_sources that the base tokenizer splits most wastefully (occurrences × extra tokens) become
    /// new tokens, expand_by of them.
    /// </summary>
    public static ITokenizer Expand(RecipeConfig cfg, ITokenizer baseTok, IReadOnlyDictionary<string, LoadedSource> sources, string outDir, Action<string>? log)
    {
        if (baseTok is not BpeTokenizer bpe) throw new Config.ConfigException("vocabulary expansion needs tokenizer.kind = \"bpe\"");
        if (cfg.Tokenizer.ExpandBy <= 0) throw new Config.ConfigException("tokenizer.expand_by must be positive when a stage sets expanded_vocab");
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var name in cfg.Tokenizer.ExpandSources)
        {
            if (!sources.TryGetValue(name, out var src)) throw new Config.ConfigException($"tokenizer.expand_sources: unknown source '{name}'");
            foreach (var doc in src.TrainDocs.Concat(src.Examples.Select(e => e.Output)))
                foreach (Match m in Candidates().Matches(doc))
                    counts[m.Value] = counts.GetValueOrDefault(m.Value) + 1;
        }
        // a character the vocabulary already has is no candidate (a SentencePiece tokenizer encodes it alone as "▁" + it)
        var chosen = counts.Where(kv => kv.Value >= 2 && bpe.TokenToId(kv.Key) == null)
            .Select(kv => (Piece: kv.Key, Gain: kv.Value * (baseTok.Encode(kv.Key).Length - 1)))
            .Where(x => x.Gain > 0).OrderByDescending(x => x.Gain).ThenBy(x => x.Piece, StringComparer.Ordinal)
            .Take(cfg.Tokenizer.ExpandBy).Select(x => x.Piece).ToList();
        // a fresh copy of the base tokenizer: the file it was loaded from, or the one Build trained and saved
        var expanded = baseTok is BpeTokenizer { SourcePath: { } from } && File.Exists(from) ? BpeTokenizer.Load(from)
            : BpeTokenizer.Load(cfg.Tokenizer.Path != null ? cfg.Resolve(cfg.Tokenizer.Path) : Path.Combine(outDir, "tokenizer.json"));
        int before = expanded.VocabSize;
        expanded.AddTokens(chosen);
        expanded.Save(Path.Combine(outDir, "tokenizer_expanded.json"));
        log?.Invoke($"tokenizer: expanded {before} → {expanded.VocabSize} ids with {chosen.Count} domain pieces (e.g. {string.Join(" ", chosen.Take(8))})");
        return expanded;
    }

    /// <summary>Whether a stage's init names a model directory (not random, not an earlier stage's name).</summary>
    public static bool IsDirectory(string init) => init != "random" && init.Contains('/');

    // one Chinese character
    [GeneratedRegex(@"\p{IsCJKUnifiedIdeographs}")]
    private static partial Regex Candidates();
}
