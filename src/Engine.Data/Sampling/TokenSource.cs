namespace Engine.Data;

/// <summary>Tokenized documents addressable by index: an in-memory list or a memory-mapped shard.</summary>
public interface ITokenSource
{
    int DocumentCount { get; }
    long TokenCount { get; }
    int DocumentLength(int index);

    /// <summary>Copies <c>destination.Length</c> tokens of document <paramref name="index"/> starting at <paramref name="offset"/>.</summary>
    void Read(int index, int offset, Span<int> destination);
}

/// <summary>Token documents held in memory.</summary>
public sealed class InMemoryTokenSource : ITokenSource
{
    readonly int[][] _docs;

    public InMemoryTokenSource(IEnumerable<int[]> documents)
    {
        ArgumentNullException.ThrowIfNull(documents);
        _docs = documents.ToArray();
        foreach (var d in _docs) if (d == null) throw new ArgumentException("a document is null", nameof(documents));
        TokenCount = _docs.Sum(d => (long)d.Length);
    }

    /// <summary>Tokenizes texts (no special tokens added; the stream puts EOS between documents).</summary>
    public static InMemoryTokenSource FromTexts(IEnumerable<string> texts, ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(texts);
        ArgumentNullException.ThrowIfNull(tokenizer);
        return new InMemoryTokenSource(texts.Select(tokenizer.Encode));
    }

    public int DocumentCount => _docs.Length;
    public long TokenCount { get; }
    public int DocumentLength(int index) => _docs[index].Length;
    public void Read(int index, int offset, Span<int> destination) => _docs[index].AsSpan(offset, destination.Length).CopyTo(destination);
}
