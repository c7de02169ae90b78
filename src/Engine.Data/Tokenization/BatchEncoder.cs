using System.Collections.Concurrent;

namespace Engine.Data;

/// <summary>
/// Encodes many texts on every core (or a given number of threads). Texts are handed out in chunks of consecutive
/// indices and each result lands at its text's index, so the output is the same whatever the thread count and
/// scheduling; the tokenizer must be safe to call from several threads (<see cref="BpeTokenizer"/> and
/// <see cref="ByteTokenizer"/> are).
/// </summary>
public static class BatchEncoder
{
    /// <summary>Threads that <paramref name="threads"/> asks for: itself when positive, else every core.</summary>
    public static int Degree(int threads) => threads > 0 ? threads : Environment.ProcessorCount;

    /// <summary>result[i] = <paramref name="tokenizer"/>.Encode(texts[i]) for every i.</summary>
    public static int[][] EncodeAll(ITokenizer tokenizer, IReadOnlyList<string> texts, int threads = 0, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(texts);
        ArgumentOutOfRangeException.ThrowIfNegative(threads);
        var result = new int[texts.Count][];
        Run(texts.Count, threads, cancel, i => result[i] = tokenizer.Encode(texts[i]));
        return result;
    }

    /// <summary>Calls <paramref name="body"/> for 0..count-1 on <see cref="Degree"/> threads, in chunks of consecutive indices.</summary>
    public static void Run(int count, int threads, CancellationToken cancel, Action<int> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        int degree = Degree(threads);
        if (degree == 1 || count < 2)
        {
            for (int i = 0; i < count; i++) { cancel.ThrowIfCancellationRequested(); body(i); }
            return;
        }
        // small chunks balance long and short documents; 16 per thread at least, 256 indices at most
        int chunk = Math.Clamp(count / (degree * 16), 1, 256);
        try
        {
            Parallel.ForEach(Partitioner.Create(0, count, chunk), new ParallelOptions { MaxDegreeOfParallelism = degree, CancellationToken = cancel },
                range => { for (int i = range.Item1; i < range.Item2; i++) body(i); });
        }
        catch (AggregateException e) when (e.Flatten().InnerExceptions is [var first, ..])
        {
            // the first failure as itself (e.g. a tokenizer regex past its time limit, naming the file), not wrapped
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
        }
    }
}
