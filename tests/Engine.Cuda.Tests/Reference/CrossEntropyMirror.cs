namespace Engine.Cuda.Tests.Reference;

/// <summary>
/// native/crossentropy.cu's row_lse step for step in fp32: 256 threads each stream W-wide chunks (W = 8 when V and the
/// row stride are multiples of 8 and the logits 16-byte aligned, else 1) through online_add, then a block max and a
/// block sum of s·e^(m − mb) over the threads that saw a value above -inf. CrossEntropyMirrorTests asserts the
/// kernel's online_add verbatim, so this copy cannot drift from it unnoticed.
/// </summary>
public static class CrossEntropyMirror
{
    public const int Threads = 256;

    /// <summary>online_add: x = -inf adds nothing (else e^(-inf - -inf) = NaN when a thread's first values are -inf).</summary>
    public static void OnlineAdd(float x, ref float m, ref float s)
    {
        if (x > m) { s = s * MathF.Exp(m - x) + 1f; m = x; }
        else if (x != float.NegativeInfinity) s += MathF.Exp(x - m);
    }

    public static float RowLse(ReadOnlySpan<float> row, int w)
    {
        var ms = new float[Threads];
        var ss = new float[Threads];
        for (int t = 0; t < Threads; t++)
        {
            float m = float.NegativeInfinity, s = 0f;
            for (long c = (long)t * w; c < row.Length; c += (long)Threads * w)
                for (int i = 0; i < w; i++) OnlineAdd(row[(int)(c + i)], ref m, ref s);
            ms[t] = m;
            ss[t] = s;
        }
        float mb = float.NegativeInfinity;
        foreach (float m in ms) mb = MathF.Max(mb, m);
        float sb = 0f;
        for (int t = 0; t < Threads; t++) sb += ms[t] == float.NegativeInfinity ? 0f : ss[t] * MathF.Exp(ms[t] - mb);
        return mb + MathF.Log(sb);
    }

    /// <summary>The masked-logits case both tests use: bf16-representable logits with <see cref="MaskedCells"/> set to
    /// -inf, and a target per row that is never masked (vocab - 1 - row; row 2 ignored when <paramref name="ignoreRow2"/>).</summary>
    public static (float[] Logits, int[] Targets, Random Rng) MaskedCase(int rows, int vocab, bool ignoreRow2)
    {
        var rng = new Random(vocab + 17);
        float[] logits = Data.Bf16Values(rng, (long)rows * vocab, 8f);
        foreach (var (r, c) in MaskedCells(rows, vocab)) logits[r * vocab + c] = float.NegativeInfinity;
        int[] targets = [.. Enumerable.Range(0, rows).Select(r => ignoreRow2 && r == 2 ? -100 : vocab - 1 - r)];
        return (logits, targets, rng);
    }

    /// <summary>The -inf cells of the masked-logits tests: thread 0's whole first chunk in rows 0, 4 and 5 (in the
    /// scalar path: column 0), the first chunks of threads 0..3 and every 7th column in row 1, all but every third
    /// column in row 3; the row's target column (vocab - 1 - row) is never masked.</summary>
    public static IEnumerable<(int Row, int Col)> MaskedCells(int rows, int vocab)
    {
        int w = vocab % 8 == 0 ? 8 : 1;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < vocab; c++)
            {
                bool masked = r switch
                {
                    1 => c < 4 * w || c % 7 == 3,
                    2 => false,
                    3 => c % 3 != 0,
                    _ => c < w,
                };
                if (masked && c != vocab - 1 - r) yield return (r, c);
            }
    }
}
