using Engine.Core;
using Engine.Core.Distributed;
using Engine.Cpu;

namespace Engine.Parallel.Tests;

/// <summary>
/// Inputs and the reference each collective must equal, written out plainly (not through HostReduce): rank-order
/// fp32 accumulation, Avg = sum / N, bf16 widened, summed in fp32 and rounded once. Comparisons are bitwise.
/// </summary>
static class Reference
{
    /// <summary>Rank r's input: random values (seeded by rank and length), bf16-representable when the dtype is BF16.</summary>
    public static float[] Input(int rank, long n, DType dtype, int salt = 0)
    {
        var rng = new Random(1000 * rank + (int)(n % 997) + 7919 * salt);
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() * 4 - 2);
        if (dtype == DType.BF16) BFloat16.RoundInPlace(a);
        return a;
    }

    public static Tensor Tensor(float[] values, DType dtype)
    {
        var t = CpuBackend.Instance.Empty([values.Length], dtype);
        CpuBackend.Instance.Upload(t, values);
        return t;
    }

    /// <summary>The reduction of element i over ranks, exactly as specified.</summary>
    public static float[] Reduce(IReadOnlyList<float[]> inputs, ReduceOp op, DType dtype)
    {
        int n = inputs[0].Length, ranks = inputs.Count;
        var r = new float[n];
        for (int i = 0; i < n; i++)
        {
            float acc = inputs[0][i];
            for (int q = 1; q < ranks; q++)
            {
                float x = inputs[q][i];
                acc = op switch
                {
                    ReduceOp.Max => Math.Max(acc, x),
                    ReduceOp.Min => Math.Min(acc, x),
                    _ => acc + x,
                };
            }
            if (op == ReduceOp.Avg) acc /= ranks;
            r[i] = dtype == DType.BF16 ? BFloat16.Round(acc) : acc;
        }
        return r;
    }

    public static void Bitwise(ReadOnlySpan<float> expected, ReadOnlySpan<float> got, string what)
    {
        Assert.Equal(expected.Length, got.Length);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(got[i]))
                Assert.Fail($"{what}: element {i} of {expected.Length}: got {got[i]:R}, expected {expected[i]:R}");
    }

    /// <summary>Short timeouts for watchdog tests, generous enough for a loaded 2-core machine.</summary>
    public static CommOptions Fast(double timeoutSeconds = 30) => new()
    {
        Timeout = TimeSpan.FromSeconds(timeoutSeconds),
        HeartbeatInterval = TimeSpan.FromMilliseconds(250),
        StaleAfter = TimeSpan.FromSeconds(3),
    };
}
