using Engine.Core;
using Engine.Core.Distributed;

namespace Engine.Parallel.Tests;

/// <summary>Every collective of the thread communicator against <see cref="Reference"/>, bitwise, at 1–4 ranks.</summary>
public class ThreadCommunicatorTests
{
    static readonly long[] Sizes = [0, 1, 7, 4099, 100_003];
    static readonly DType[] DTypes = [DType.F32, DType.BF16];
    static readonly ReduceOp[] Ops = [ReduceOp.Sum, ReduceOp.Avg, ReduceOp.Max, ReduceOp.Min];

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void AllReduce_equals_the_rank_order_reference_on_every_rank(int n) => ThreadCommunicator.Run(n, comm =>
    {
        foreach (var dtype in DTypes)
            foreach (var op in Ops)
                foreach (long size in Sizes)
                {
                    var inputs = Enumerable.Range(0, n).Select(r => Reference.Input(r, size, dtype)).ToList();
                    using var buf = Reference.Tensor(inputs[comm.Rank], dtype);
                    comm.AllReduce(buf, op).Wait();
                    Reference.Bitwise(Reference.Reduce(inputs, op, dtype), buf.ToArray(), $"all_reduce {op} {dtype} n={size} rank {comm.Rank}/{n}");
                }
    });

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void ReduceScatter_in_and_out_of_place_equals_the_all_reduce_slice(int n) => ThreadCommunicator.Run(n, comm =>
    {
        foreach (var dtype in DTypes)
            foreach (var op in Ops)
                foreach (long per in new long[] { 0, 1, 7, 2053 })
                {
                    var inputs = Enumerable.Range(0, n).Select(r => Reference.Input(r, per * n, dtype)).ToList();
                    var expected = Reference.Reduce(inputs, op, dtype).AsSpan((int)(comm.Rank * per), (int)per).ToArray();
                    string what = $"reduce_scatter {op} {dtype} per-rank {per} rank {comm.Rank}/{n}";

                    using var input = Reference.Tensor(inputs[comm.Rank], dtype);
                    using var output = CpuBackend.Instance.Empty([(int)per], dtype);
                    comm.ReduceScatter(input, output, op).Wait();
                    Reference.Bitwise(expected, output.ToArray(), what + " (out of place)");
                    Reference.Bitwise(inputs[comm.Rank], input.ToArray(), what + " leaves its input alone");

                    using var whole = Reference.Tensor(inputs[comm.Rank], dtype);
                    var mine = whole.Narrow0(comm.Rank * (int)per, (int)per);
                    comm.ReduceScatter(whole, mine, op).Wait();
                    Reference.Bitwise(expected, mine.ToArray(), what + " (in place)");

                    using var all = Reference.Tensor(inputs[comm.Rank], dtype);
                    comm.AllReduce(all, op).Wait();
                    Reference.Bitwise(all.ToArray().AsSpan((int)(comm.Rank * per), (int)per), output.ToArray(), what + " vs all_reduce slice");
                }
    });

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void AllGather_and_Broadcast_deliver_every_rank_s_data(int n) => ThreadCommunicator.Run(n, comm =>
    {
        foreach (var dtype in DTypes)
            foreach (long per in new long[] { 0, 1, 7, 4099 })
            {
                var inputs = Enumerable.Range(0, n).Select(r => Reference.Input(r, per, dtype)).ToList();
                var expected = inputs.SelectMany(x => x).ToArray();
                using var input = Reference.Tensor(inputs[comm.Rank], dtype);
                using var output = CpuBackend.Instance.Zeros([(int)(per * n)], dtype);
                comm.AllGather(input, output).Wait();
                Reference.Bitwise(expected, output.ToArray(), $"all_gather {dtype} per-rank {per} (out of place)");

                using var whole = CpuBackend.Instance.Zeros([(int)(per * n)], dtype);
                var mine = whole.Narrow0(comm.Rank * (int)per, (int)per);
                CpuBackend.Instance.Upload(mine, inputs[comm.Rank]);
                comm.AllGather(mine, whole).Wait();
                Reference.Bitwise(expected, whole.ToArray(), $"all_gather {dtype} per-rank {per} (in place)");

                for (int root = 0; root < n; root++)
                {
                    using var b = Reference.Tensor(inputs[comm.Rank], dtype);
                    comm.Broadcast(b, root).Wait();
                    Reference.Bitwise(inputs[root], b.ToArray(), $"broadcast {dtype} n={per} from {root}");
                }
            }
    });

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Send_and_Recv_pass_a_ring(int n) => ThreadCommunicator.Run(n, comm =>
    {
        int next = (comm.Rank + 1) % n, prev = (comm.Rank + n - 1) % n;
        foreach (var dtype in DTypes)
        {
            using var mine = Reference.Tensor(Reference.Input(comm.Rank, 1001, dtype), dtype);
            using var got = CpuBackend.Instance.Empty([1001], dtype);
            // Sends are buffered (the data is copied when Send is called), so every rank may send before it receives —
            // the order a pipeline's stages use (activations one way, gradients the other) — without a deadlock;
            // the buffer may change right after Send returned.
            var s = comm.Send(mine, next);
            var r = comm.Recv(got, prev);
            s.Wait();
            CpuBackend.Instance.Fill(mine, 0f);
            r.Wait();
            Reference.Bitwise(Reference.Input(prev, 1001, dtype), got.ToArray(), $"recv {dtype} from {prev}");
        }
    });

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void Host_values_barrier_and_bytes(int n) => ThreadCommunicator.Run(n, comm =>
    {
        Span<double> v = [comm.Rank + 1, -comm.Rank, 0.5];
        comm.AllReduce(v, ReduceOp.Sum);
        Assert.Equal([n * (n + 1) / 2.0, -(n * (n - 1) / 2.0), 0.5 * n], v.ToArray());
        Span<double> m = [comm.Rank];
        comm.AllReduce(m, ReduceOp.Max);
        Assert.Equal(n - 1, m[0]);
        Span<double> a = [comm.Rank];
        comm.AllReduce(a, ReduceOp.Avg);
        Assert.Equal((n - 1) / 2.0, a[0]);
        comm.Barrier();
        byte[] got = comm.Broadcast(comm.Rank == n - 1 ? "hello from the last rank"u8 : [], n - 1);
        Assert.Equal("hello from the last rank"u8.ToArray(), got);
    });

    [Fact]
    public void Split_groups_by_color_ordered_by_key() => ThreadCommunicator.Run(4, comm =>
    {
        // colors: even/odd ranks; keys reverse the order inside each group.
        using var sub = comm.Split(comm.Rank % 2, -comm.Rank);
        Assert.Equal(2, sub.WorldSize);
        int expectedRank = comm.Rank >= 2 ? 0 : 1;
        Assert.Equal(expectedRank, sub.Rank);
        using var t = Reference.Tensor([comm.Rank], DType.F32);
        sub.AllReduce(t).Wait();
        Assert.Equal(comm.Rank % 2 == 0 ? 0 + 2 : 1 + 3, t.ToArray()[0]);
        // The parent still works after the split, interleaved with the child.
        using var w = Reference.Tensor([1], DType.F32);
        comm.AllReduce(w).Wait();
        Assert.Equal(4, w.ToArray()[0]);
        byte[] b = sub.Broadcast([(byte)comm.Rank], 0);
        Assert.Equal(comm.Rank % 2 == 0 ? 2 : 3, b[0]);
    });

    [Fact]
    public void Operations_are_asynchronous_and_complete_in_call_order()
    {
        using var rank1MayStart = new ManualResetEventSlim(false);
        ThreadCommunicator.Run(2, comm =>
        {
            const int N = 1 << 20;
            using var a = Reference.Tensor(Enumerable.Repeat(1f, N).ToArray(), DType.F32);
            using var b = Reference.Tensor(Enumerable.Repeat(2f, N).ToArray(), DType.F32);
            if (comm.Rank == 1) rank1MayStart.Wait();
            var wa = comm.AllReduce(a);
            var wb = comm.AllReduce(b, ReduceOp.Max);
            if (comm.Rank == 0)
            {
                // Rank 1 has not issued anything yet: the calls returned without waiting for it.
                Assert.False(wa.IsCompleted);
                Assert.False(wb.IsCompleted);
                double busy = 0;
                for (int i = 0; i < 1000; i++) busy += Math.Sqrt(i);   // the caller's own compute overlaps
                Assert.True(busy > 0);
                rank1MayStart.Set();
            }
            wb.Wait();
            Assert.True(wa.IsCompleted);   // FIFO: the earlier operation completed first
            wa.Wait();
            Assert.True(a.ToArray().All(x => x == 2f) && b.ToArray().All(x => x == 2f), "sum of ones and max of twos are 2 everywhere");
        });
    }

    [Fact]
    public void Stats_count_payload_and_bus_bytes() => ThreadCommunicator.Run(4, comm =>
    {
        using var t = CpuBackend.Instance.Zeros([1000]);
        using var o = CpuBackend.Instance.Zeros([250]);
        comm.AllReduce(t).Wait();
        comm.ReduceScatter(t, o).Wait();
        comm.AllGather(o, t).Wait();
        var s = comm.Stats.Snapshot();
        Assert.Equal((1L, 4000L, 2 * 3 * 4000L / 4), s["all_reduce"]);
        Assert.Equal((1L, 4000L, 3 * 4000L / 4), s["reduce_scatter"]);
        Assert.Equal((1L, 4000L, 3 * 4000L / 4), s["all_gather"]);
    });

    [Fact]
    public void Bad_arguments_are_refused_at_the_call() => ThreadCommunicator.Run(2, comm =>
    {
        using var t = CpuBackend.Instance.Zeros([10]);
        using var odd = CpuBackend.Instance.Zeros([7]);
        using var ints = CpuBackend.Instance.Zeros([4], DType.I32);
        using var bf = CpuBackend.Instance.Zeros([5], DType.BF16);
        Assert.Contains("F32 or BF16", Assert.Throws<ArgumentException>(() => comm.AllReduce(ints)).Message);
        Assert.Contains("2 slices", Assert.Throws<ArgumentException>(() => comm.ReduceScatter(odd, t.Narrow0(0, 3))).Message);
        Assert.Contains("differ in dtype", Assert.Throws<ArgumentException>(() => comm.ReduceScatter(t, bf)).Message);
        Assert.Contains("2 × input", Assert.Throws<ArgumentException>(() => comm.AllGather(t.Narrow0(0, 4), t)).Message);
        Assert.Contains("not its slice", Assert.Throws<ArgumentException>(() => comm.ReduceScatter(t, t.Narrow0(comm.Rank == 0 ? 5 : 0, 5))).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => comm.Broadcast(t, 2));
        Assert.Contains("is this rank", Assert.Throws<ArgumentException>(() => comm.Send(t, comm.Rank)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => comm.Split(-1, 0));
        var freed = CpuBackend.Instance.Zeros([3]);
        freed.Dispose();
        Assert.Contains("freed", Assert.Throws<ArgumentException>(() => comm.AllReduce(freed)).Message);
        // Nothing was issued: the ranks are still in step.
        comm.AllReduce(t).Wait();
    });

    [Fact]
    public void Mismatched_collectives_fail_on_every_rank_instead_of_corrupting()
    {
        var errors = ThreadCommunicator.Run(2, comm =>
        {
            using var t = CpuBackend.Instance.Zeros([comm.Rank == 0 ? 10 : 11]);
            return Assert.Throws<CommException>(() => comm.AllReduce(t).Wait()).Message;
        }, Reference.Fast());
        Assert.All(errors, m => Assert.Contains("collective mismatch: rank 0 called #1 all_reduce(10 × F32, Sum) but rank 1 called #1 all_reduce(11 × F32, Sum)", m));
    }
}
