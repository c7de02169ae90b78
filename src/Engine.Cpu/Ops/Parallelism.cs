namespace Engine.Cpu.Ops;

/// <summary>
/// Splits row ranges into chunks whose boundaries depend only on the problem size (never on the thread count),
/// so that per-chunk partial sums reduced in chunk order give bit-identical results on any machine.
/// </summary>
public static class Parallelism
{
    /// <summary>Runs body(start, end) over [0, count) in chunks of at least minChunk items, in parallel.</summary>
    public static void For(int count, int minChunk, Action<int, int> body)
    {
        if (count <= 0) return;
        int chunks = ChunkCount(count, minChunk);
        if (chunks == 1) { body(0, count); return; }
        Parallel.For(0, chunks, c =>
        {
            var (s, e) = ChunkRange(count, chunks, c);
            body(s, e);
        });
    }

    /// <summary>Number of chunks used for a deterministic split (at most 64, at least one item per chunk).</summary>
    public static int ChunkCount(int count, int minChunk) =>
        Math.Max(1, Math.Min(64, count / Math.Max(1, minChunk)));

    public static (int Start, int End) ChunkRange(int count, int chunks, int chunk)
    {
        long s = (long)count * chunk / chunks;
        long e = (long)count * (chunk + 1) / chunks;
        return ((int)s, (int)e);
    }
}
