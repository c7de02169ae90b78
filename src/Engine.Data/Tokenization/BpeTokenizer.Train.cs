using Engine.Data.Tokenization;

namespace Engine.Data;

public sealed partial class BpeTokenizer
{
    /// <summary>
    /// Trains on <paramref name="corpus"/>: pieces are counted once (in parallel), then merges are chosen with an
    /// incremental pair index — pair counts, the words each pair occurs in, and a max-priority queue with lazy
    /// updates — so each merge touches only the words that contain its pair. Ties break on the smaller pair ids.
    /// </summary>
    public static BpeTokenizer Train(IEnumerable<string> corpus, BpeTrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(corpus);
        ArgumentNullException.ThrowIfNull(options);
        var specials = options.SpecialTokens ?? [];
        if (specials.Any(string.IsNullOrEmpty)) throw new ArgumentException("special tokens must be non-empty", nameof(options));
        if (options.VocabSize < 256 + specials.Count)
            throw new ArgumentOutOfRangeException(nameof(options), options.VocabSize, $"VocabSize must be at least 256 + {specials.Count} special tokens");
        if (options.MinFrequency < 1) throw new ArgumentOutOfRangeException(nameof(options), options.MinFrequency, "MinFrequency must be >= 1");
        if (options.MaxTokenBytes < 2) throw new ArgumentOutOfRangeException(nameof(options), options.MaxTokenBytes, "MaxTokenBytes must be >= 2");
        string pattern = options.Pattern ?? DefaultPattern;
        var pre = DefaultPre(pattern);

        var counts = CountPieces(corpus, pre);
        var merges = BpeTrainer.Learn(counts, options.VocabSize - 256 - specials.Count, options.MinFrequency, options.MaxTokenBytes);

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        var tokenBytes = new List<byte[]>();
        for (int b = 0; b < 256; b++) { vocab[ByteLevel.Char((byte)b).ToString()] = b; tokenBytes.Add([(byte)b]); }
        var mergeIds = new List<(int, int)>(merges.Count);
        foreach (var (a, b) in merges)
        {
            byte[] nb = [.. tokenBytes[a], .. tokenBytes[b]];
            vocab[ByteLevel.Encode(nb)] = tokenBytes.Count;
            tokenBytes.Add(nb);
            mergeIds.Add((a, b));
        }
        var added = new List<AddedToken>();
        foreach (var s in specials)
        {
            int id = vocab.Count;
            vocab[s] = id;
            added.Add(new AddedToken(id, s, true));
        }
        var model = new BpeModel(vocab, mergeIds, byteLevel: true, unkToken: null, byteFallback: false, fuseUnk: false, ignoreMerges: false);
        return new BpeTokenizer(model, pre, null, new ByteLevelDecoder(), added, specials.Count > 0 ? specials[0] : null, null, null);
    }

    static PreTokenizer DefaultPre(string pattern) => new(
    [
        new PreTokenizer.SplitStep(PreTokenizer.Compile(pattern), pattern, true, PreTokenizer.Behavior.Isolated, false),
        new PreTokenizer.ByteLevelStep(false, false, null),
    ]);

    static Dictionary<string, long> CountPieces(IEnumerable<string> corpus, PreTokenizer pre)
    {
        var total = new Dictionary<string, long>(StringComparer.Ordinal);
        var gate = new object();
        Parallel.ForEach(corpus, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Environment.ProcessorCount) },
            () => new Dictionary<string, long>(StringComparer.Ordinal),
            (doc, _, local) =>
            {
                if (doc == null) return local;
                var pieces = new List<(int, int)>();
                var text = pre.Split(doc, true, pieces);
                var lookup = local.GetAlternateLookup<ReadOnlySpan<char>>();
                foreach (var (s, l) in pieces)
                {
                    var span = text.Slice(s, l);
                    if (lookup.TryGetValue(span, out long c)) lookup[span] = c + 1;
                    else lookup[span] = 1;
                }
                return local;
            },
            local =>
            {
                lock (gate)
                    foreach (var (k, v) in local) total[k] = total.GetValueOrDefault(k) + v;
            });
        return total;
    }
}
