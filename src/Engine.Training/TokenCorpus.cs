using Engine.Core;
using Engine.Data;
using Engine.Data.Shards;

namespace Engine.Training;

/// <summary>
/// Tokens of one or more text files, documents joined with EOS, split into a training part and a held-out tail
/// (valid_fraction of each file). Training windows of T+1 tokens start at seeded random offsets (nanoGPT-style);
/// validation reads the held-out tokens in order, so every evaluation sees the same tokens.
/// </summary>
public sealed class TokenCorpus
{
    readonly int[] train;
    readonly int[] valid;

    TokenCorpus(int[] train, int[] valid) { this.train = train; this.valid = valid; }

    public int TrainTokens => train.Length;

    /// <summary>The held-out tokens, in order.</summary>
    public IReadOnlyList<int> Valid => valid;
    public int ValidTokens => valid.Length;

    public static TokenCorpus FromFiles(IEnumerable<string> paths, ITokenizer tokenizer, double validFraction)
    {
        var tr = new List<int>();
        var va = new List<int>();
        foreach (var path in paths)
        {
            var tokens = new List<int>();
            if (IsShard(path))
            {
                // pretokenized by `engine prepare`: documents are already ids of the same tokenizer
                using var shard = ShardReader.Open(path, verifyChecksums: true);
                if (shard.VocabSize > tokenizer.VocabSize)
                    throw new InvalidDataException($"{path}: shard vocabulary {shard.VocabSize} is larger than the tokenizer's {tokenizer.VocabSize}; use the tokenizer.json written by engine prepare");
                for (int d = 0; d < shard.DocumentCount; d++)
                {
                    tokens.AddRange(shard.Document(d));
                    tokens.Add(tokenizer.EosId);
                }
            }
            else
            {
                foreach (var doc in Documents.Read(path))
                {
                    tokens.AddRange(tokenizer.Encode(doc));
                    tokens.Add(tokenizer.EosId);
                }
            }
            if (tokens.Count < 2) throw new InvalidDataException($"{path}: no text to train on");
            int cut = (int)(tokens.Count * (1 - validFraction));
            tr.AddRange(tokens.Take(cut));
            va.AddRange(tokens.Skip(cut));
        }
        return new TokenCorpus(tr.ToArray(), va.ToArray());
    }

    /// <summary>A .bin/.idx token shard written by `engine prepare` (either file of the pair may be named).</summary>
    public static bool IsShard(string path) => path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".idx", StringComparison.OrdinalIgnoreCase);

    public static TokenCorpus FromTokens(int[] train, int[] valid) => new(train, valid);

    /// <summary>Fills ids and targets ([batch*T] each) with random training windows.</summary>
    public void SampleTrain(Rng rng, int batch, int seqLen, Span<int> ids, Span<int> targets)
    {
        if (train.Length < seqLen + 1) throw new InvalidDataException($"training text has {train.Length} tokens, fewer than seq_len + 1 = {seqLen + 1}");
        for (int b = 0; b < batch; b++)
        {
            int start = rng.NextInt(train.Length - seqLen);
            train.AsSpan(start, seqLen).CopyTo(ids.Slice(b * seqLen, seqLen));
            train.AsSpan(start + 1, seqLen).CopyTo(targets.Slice(b * seqLen, seqLen));
        }
    }

    /// <summary>Advances rng exactly as <see cref="SampleTrain"/> would, without copying (another rank's micro-batch).</summary>
    public void SkipTrain(Rng rng, int batch, int seqLen)
    {
        if (train.Length < seqLen + 1) throw new InvalidDataException($"training text has {train.Length} tokens, fewer than seq_len + 1 = {seqLen + 1}");
        for (int b = 0; b < batch; b++) rng.NextInt(train.Length - seqLen);
    }

    /// <summary>Number of disjoint validation windows available.</summary>
    public int ValidWindows(int seqLen) => Math.Max(0, (valid.Length - 1) / seqLen);
}
