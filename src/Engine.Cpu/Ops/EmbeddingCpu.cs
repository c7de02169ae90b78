namespace Engine.Cpu.Ops;

/*
 * Embedding: y[n, :] = table[ids[n], :]. Backward: dtable[ids[n], :] += dy[n, :], split by column blocks so the
 * order of additions per element is the row order on any thread count (deterministic, no atomics).
 */
public static class EmbeddingCpu
{
    public static void Forward(ReadOnlySpan<int> ids, ReadOnlySpan<float> table, Span<float> y, int vocab, int dim)
    {
        for (int n = 0; n < ids.Length; n++)
        {
            int id = ids[n];
            if ((uint)id >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(ids), $"token id {id} at position {n} is outside the vocabulary [0, {vocab})");
            table.Slice(id * dim, dim).CopyTo(y.Slice(n * dim, dim));
        }
    }

    public static void Backward(ReadOnlySpan<int> ids, ReadOnlySpan<float> dy, Span<float> dtable, int dim)
    {
        unsafe
        {
            fixed (int* pid = ids)
            fixed (float* pdy = dy, pdt = dtable)
            {
                int* I = pid; float* DY = pdy, DT = pdt; int n = ids.Length;
                Parallelism.For(dim, 32, (c0, c1) =>
                {
                    int w = c1 - c0;
                    for (int r = 0; r < n; r++)
                    {
                        float* src = DY + (long)r * dim + c0;
                        float* dst = DT + (long)I[r] * dim + c0;
                        for (int c = 0; c < w; c++) dst[c] += src[c];
                    }
                });
            }
        }
    }
}
