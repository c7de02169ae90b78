using Engine.Core;
using Engine.Core.Distributed;
using Engine.Cpu;

namespace Engine.Parallel;

/// <summary>
/// Every operation of a communicator checked against a reference that each rank computes alone. Inputs are small
/// integers (quarters in fp32), so every sum is exact whatever order the library adds in: a result either equals the
/// reference bitwise or is wrong. Used by the hidden `engine comm-selftest` verb (MPI, Slurm and launcher tests) and
/// runnable on any communicator whose backend is the CPU.
/// </summary>
public static class CommSelfTest
{
    static readonly DType[] DTypes = [DType.F32, DType.BF16];
    static readonly ReduceOp[] Ops = [ReduceOp.Sum, ReduceOp.Avg, ReduceOp.Max, ReduceOp.Min];

    /// <summary>Value of element <paramref name="i"/> on rank <paramref name="rank"/> (exact in bf16).</summary>
    public static float Value(int rank, long i, DType dtype, int salt = 0) =>
        ((i * 7 + rank * 13 + salt * 5) % 33 - 16) * (dtype == DType.F32 ? 0.25f : 1f);

    /// <summary>Runs the checks; returns how many passed; InvalidDataException naming the first mismatch.</summary>
    public static int Run(ICommunicator comm, Action<string>? log = null)
    {
        if (comm.Backend is not CpuBackend) throw new NotSupportedException($"the self-test runs on CPU communicators, not {comm.Backend.Name}");
        int n = comm.WorldSize, me = comm.Rank, checks = 0;
        var cpu = CpuBackend.Instance;

        Tensor Input(long count, DType dtype, int rank, int salt = 0)
        {
            var values = new float[count];
            for (long i = 0; i < count; i++) values[i] = Value(rank, i, dtype, salt);
            var t = cpu.Empty([(int)count], dtype);
            cpu.Upload(t, values);
            return t;
        }

        float Reduced(long i, DType dtype, ReduceOp op, int salt = 0)
        {
            double acc = op switch { ReduceOp.Max => double.NegativeInfinity, ReduceOp.Min => double.PositiveInfinity, _ => 0 };
            for (int q = 0; q < n; q++)
            {
                double x = Value(q, i, dtype, salt);
                acc = op switch { ReduceOp.Max => Math.Max(acc, x), ReduceOp.Min => Math.Min(acc, x), _ => acc + x };
            }
            float r = op == ReduceOp.Avg ? (float)acc / n : (float)acc;
            return dtype == DType.BF16 ? BFloat16.Round(r) : r;
        }

        void Expect(Tensor t, Func<long, float> expected, string what)
        {
            var got = t.ToArray();
            for (long i = 0; i < got.Length; i++)
                if (BitConverter.SingleToInt32Bits(got[i]) != BitConverter.SingleToInt32Bits(expected(i)))
                    throw new InvalidDataException($"{comm.Kind} self-test, rank {me} of {n}: {what}: element {i} of {got.Length} is {got[i]}, expected {expected(i)}");
            checks++;
        }

        foreach (var dtype in DTypes)
            foreach (var op in Ops)
                foreach (long size in new long[] { 0, 1, 7, 1000, 65537 })
                {
                    using var t = Input(size, dtype, me);
                    comm.AllReduce(t, op).Wait();
                    Expect(t, i => Reduced(i, dtype, op), $"all_reduce {op} {dtype} n={size}");
                }

        foreach (var dtype in DTypes)
            foreach (var op in Ops)
                foreach (long per in new long[] { 0, 1, 7, 1001 })
                {
                    using var input = Input(per * n, dtype, me);
                    using var output = cpu.Empty([(int)per], dtype);
                    comm.ReduceScatter(input, output, op).Wait();
                    Expect(output, i => Reduced(me * per + i, dtype, op), $"reduce_scatter {op} {dtype} per-rank {per}");
                    var mine = input.Narrow0(me * (int)per, (int)per);
                    comm.ReduceScatter(input, mine, op).Wait();
                    Expect(mine, i => Reduced(me * per + i, dtype, op), $"reduce_scatter in place {op} {dtype} per-rank {per}");
                }

        foreach (var dtype in DTypes)
            foreach (long per in new long[] { 0, 1, 7, 1001 })
            {
                using var input = Input(per, dtype, me);
                using var output = cpu.Zeros([(int)(per * n)], dtype);
                comm.AllGather(input, output).Wait();
                Expect(output, i => Value((int)(i / Math.Max(per, 1)), i % Math.Max(per, 1), dtype), $"all_gather {dtype} per-rank {per}");
                using var whole = cpu.Zeros([(int)(per * n)], dtype);
                var slice = whole.Narrow0(me * (int)per, (int)per);
                cpu.Copy(input, slice);
                comm.AllGather(slice, whole).Wait();
                Expect(whole, i => Value((int)(i / Math.Max(per, 1)), i % Math.Max(per, 1), dtype), $"all_gather in place {dtype} per-rank {per}");
                for (int root = 0; root < n; root++)
                {
                    using var b = Input(per * 3, dtype, me);
                    comm.Broadcast(b, root).Wait();
                    Expect(b, i => Value(root, i, dtype), $"broadcast {dtype} n={per * 3} from rank {root}");
                }
            }

        if (n > 1)
            foreach (var dtype in DTypes)
            {
                int next = (me + 1) % n, prev = (me + n - 1) % n;
                using var mine = Input(4097, dtype, me, salt: 1);
                using var got = cpu.Empty([4097], dtype);
                ICommWork s, r;
                s = comm.Send(mine, next);   // buffered: every rank sends first, then receives (no deadlock)
                r = comm.Recv(got, prev);
                s.Wait();
                r.Wait();
                Expect(got, i => Value(prev, i, dtype, 1), $"recv {dtype} from rank {prev}");
            }

        comm.Barrier();
        Span<double> host = [me + 1, me];
        comm.AllReduce(host, ReduceOp.Sum);
        if (host[0] != n * (n + 1) / 2.0 || host[1] != n * (n - 1) / 2.0) throw new InvalidDataException($"host all_reduce: got {host[0]}, {host[1]}");
        Span<double> max = [me];
        comm.AllReduce(max, ReduceOp.Max);
        if (max[0] != n - 1) throw new InvalidDataException($"host all_reduce max: got {max[0]}");
        byte[] bytes = comm.Broadcast(me == n - 1 ? System.Text.Encoding.UTF8.GetBytes($"from rank {n - 1}") : [], n - 1);
        if (System.Text.Encoding.UTF8.GetString(bytes) != $"from rank {n - 1}") throw new InvalidDataException("byte broadcast differs");
        checks += 3;

        // Split: even and odd ranks, reversed key order inside each.
        using (var sub = comm.Split(me % 2, -me))
        {
            var members = Enumerable.Range(0, n).Where(q => q % 2 == me % 2).OrderByDescending(q => q).ToArray();
            if (sub.WorldSize != members.Length || sub.Rank != Array.IndexOf(members, me))
                throw new InvalidDataException($"split: rank {sub.Rank} of {sub.WorldSize}, expected {Array.IndexOf(members, me)} of {members.Length}");
            using var t = Input(100, DType.F32, me);
            sub.AllReduce(t).Wait();
            Expect(t, i => members.Sum(q => Value(q, i, DType.F32)), "all_reduce in a split");
        }

        // Asynchronous operations complete in call order; waiting on the last first is fine.
        using (var a = Input(50_000, DType.F32, me))
        using (var b = Input(50_000, DType.BF16, me))
        using (var c = Input(3 * n, DType.F32, me))
        using (var co = cpu.Empty([3], DType.F32))
        {
            var wa = comm.AllReduce(a);
            var wb = comm.AllReduce(b, ReduceOp.Max);
            var wc = comm.ReduceScatter(c, co);
            wc.Wait();
            if (!wa.IsCompleted || !wb.IsCompleted) throw new InvalidDataException("operations completed out of call order");
            wb.Wait();
            wa.Wait();
            Expect(a, i => Reduced(i, DType.F32, ReduceOp.Sum), "async all_reduce");
            Expect(b, i => Reduced(i, DType.BF16, ReduceOp.Max), "async all_reduce max bf16");
            Expect(co, i => Reduced(me * 3 + i, DType.F32, ReduceOp.Sum), "async reduce_scatter");
        }
        log?.Invoke($"{comm.Kind} self-test: rank {me} of {n}: {checks} checks passed");
        return checks;
    }
}
