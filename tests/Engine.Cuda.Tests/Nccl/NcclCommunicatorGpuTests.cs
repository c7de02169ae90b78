using Engine.Core;
using Engine.Core.Distributed;
using Engine.Cuda.Backend;
using Engine.Cuda.Interop;
using Engine.Cuda.Tests.Backend;
using Engine.Parallel;

namespace Engine.Cuda.Tests.Nccl;

/// <summary>
/// Every operation of the NCCL communicator on a real device at world size 1 (one GPU: NCCL refuses two ranks on one
/// device). A world of one reduces to copies, so results are exact; what is tested is the binding, the stream and
/// event ordering (compute → communication → compute), the host operations, and the bookkeeping. Skipped without a
/// GPU or without NCCL.
/// </summary>
[Collection("gpu")]
public class NcclCommunicatorGpuTests
{
    static NcclCommunicator Open(out CudaBackend be)
    {
        be = GpuBackend.Require();
        var probe = NativeLibraryResolver.Probe(CudaLibrary.Nccl, Environment.GetEnvironmentVariable, out _);
        if (!probe.Found) Assert.Skip(probe.Error!);
        return NcclCommunicator.CreateSingle(be, new CommOptions { Timeout = TimeSpan.FromSeconds(60) });
    }

    static float[] Values(int n, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(_ => Engine.Cpu.BFloat16.Round((float)(rng.NextDouble() * 4 - 2)))];
    }

    [Fact]
    public void Every_collective_runs_on_the_device()
    {
        using var comm = Open(out var be);
        Assert.Equal(("nccl", 0, 1), (comm.Kind, comm.Rank, comm.WorldSize));
        foreach (var dtype in new[] { DType.F32, DType.BF16 })
            foreach (int n in new[] { 0, 1, 7, 65537 })
            {
                var v = Values(n, n);
                foreach (var op in new[] { ReduceOp.Sum, ReduceOp.Avg, ReduceOp.Max, ReduceOp.Min })
                {
                    using var t = be.Empty([n], dtype);
                    be.Upload(t, v);
                    comm.AllReduce(t, op).Wait();
                    Assert.Equal(v, t.ToArray());
                }
                using var input = be.Empty([n], dtype);
                be.Upload(input, v);
                using var output = be.Zeros([n], dtype);
                comm.ReduceScatter(input, output).Wait();
                Assert.Equal(v, output.ToArray());
                using var gathered = be.Zeros([n], dtype);
                comm.AllGather(input, gathered).Wait();
                Assert.Equal(v, gathered.ToArray());
                comm.Broadcast(input, 0).Wait();
                Assert.Equal(v, input.ToArray());
            }
    }

    [Fact]
    public void Compute_before_and_after_a_collective_is_ordered_by_events()
    {
        using var comm = Open(out var be);
        using var t = be.Empty([1 << 20]);
        be.Fill(t, 1f);                        // compute stream
        var w = comm.AllReduce(t);             // communication stream, after the fill
        w.Wait();                              // the compute stream waits for it (no host sync)
        be.Scale(t, 3f);                       // compute stream, after the all-reduce
        Assert.All(t.ToArray(), x => Assert.Equal(3f, x));
        be.Synchronize();
        for (int i = 0; i < 1000 && !w.IsCompleted; i++) Thread.Sleep(1);
        Assert.True(w.IsCompleted);
    }

    [Fact]
    public void Host_operations_and_stats()
    {
        using var comm = Open(out var be);
        comm.Barrier();
        Span<double> v = [1.5, -2];
        comm.AllReduce(v, ReduceOp.Max);
        Assert.Equal([1.5, -2], v.ToArray());
        Assert.Equal("hello"u8.ToArray(), comm.Broadcast("hello"u8, 0));
        using var t = be.Zeros([256]);
        comm.AllReduce(t).Wait();
        Assert.Equal((1L, 1024L, 0L), comm.Stats.Snapshot()["all_reduce"]);
        Assert.Null(comm.PollHealth());
    }

    [Fact]
    public void Split_needs_NCCL_2_18_and_then_works()
    {
        using var comm = Open(out var be);
        if (NcclComm.Version() < NcclComm.SplitVersion)
        {
            Assert.Contains("needs NCCL ≥ 2.18", Assert.Throws<NotSupportedException>(() => comm.Split(0, 0)).Message);
            return;
        }
        using var sub = comm.Split(0, 0);
        Assert.Equal((0, 1), (sub.Rank, sub.WorldSize));
        using var t = be.Empty([10]);
        be.Fill(t, 2f);
        sub.AllReduce(t, ReduceOp.Avg).Wait();
        Assert.All(t.ToArray(), x => Assert.Equal(2f, x));
    }

    [Fact]
    public void Host_tensors_and_bad_shapes_are_refused_at_the_call()
    {
        using var comm = Open(out var be);
        using var host = CpuBackend.Instance.Zeros([4]);
        Assert.Contains("not a tensor of this communicator's backend", Assert.Throws<ArgumentException>(() => comm.AllReduce(host)).Message);
        using var t = be.Zeros([4]);
        using var wrong = be.Zeros([3]);
        Assert.Throws<ArgumentException>(() => comm.AllGather(t, wrong));
        Assert.Throws<ArgumentOutOfRangeException>(() => comm.Send(t, 1));
    }

    [Fact]
    public void Abort_fails_later_operations()
    {
        using var comm = Open(out var be);
        using var t = be.Zeros([4]);
        comm.Abort("test abort");
        Assert.Equal("rank 0 aborted: test abort", Assert.Throws<CommException>(() => comm.AllReduce(t)).Message);
    }
}
