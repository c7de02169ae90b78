using System.Reflection;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Parallel.Launch;

namespace Engine.Parallel.Tests;

public class DistributedContextTests
{
    /// <summary>An IBackend that only has a name (the bootstrap looks at nothing else).</summary>
    public class NamedBackend : DispatchProxy
    {
        protected override object? Invoke(MethodInfo? method, object?[]? args) =>
            method!.Name == "get_Name" ? "cuda" : throw new NotSupportedException(method.Name);
    }

    static readonly CommOptions Options = Reference.Fast();

    [Fact]
    public void A_world_of_one_is_the_single_rank_communicator_of_copies()
    {
        using var comm = DistributedContext.Create(CpuBackend.Instance, RankInfo.Single, Options);
        Assert.Equal(("single", 0, 1), (comm.Kind, comm.Rank, comm.WorldSize));
        using var a = Reference.Tensor([1, 2, 3], DType.F32);
        using var b = CpuBackend.Instance.Zeros([3]);
        comm.AllReduce(a, ReduceOp.Avg).Wait();
        comm.ReduceScatter(a, b).Wait();
        Assert.Equal([1f, 2, 3], b.ToArray());
        using var c = CpuBackend.Instance.Zeros([3]);
        comm.AllGather(b, c).Wait();
        Assert.Equal([1f, 2, 3], c.ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => comm.Send(a, 1));
        using var sub = comm.Split(0, 0);
        Assert.Equal(1, sub.WorldSize);
    }

    [Fact]
    public void Missing_rendezvous_variables_are_named()
    {
        var info = new RankInfo(0, 2, 0, 2, null, null, LauncherKind.Torchrun, false, "t");
        Assert.Contains("MASTER_ADDR is not set", Assert.Throws<ArgumentException>(() => DistributedContext.Create(CpuBackend.Instance, info, Options)).Message);
        Assert.Contains("MASTER_PORT is not set", Assert.Throws<ArgumentException>(() => DistributedContext.Create(CpuBackend.Instance, info with { MasterAddr = "127.0.0.1" }, Options)).Message);
        Assert.Contains("ENGINE_JOB_TOKEN is not set", Assert.Throws<ArgumentException>(() =>
            DistributedContext.Create(CpuBackend.Instance, info with { MasterAddr = "127.0.0.1", MasterPort = 1, JobToken = null }, Options)).Message);
        var slurm = new RankInfo(0, 2, 0, 2, "n1", null, LauncherKind.Slurm, false, null);
        Assert.Contains("srun --mpi=pmix", Assert.Throws<NotSupportedException>(() => DistributedContext.Create(CpuBackend.Instance, slurm, Options)).Message);
        var cuda = DispatchProxy.Create<IBackend, NamedBackend>();
        Assert.Contains("no NCCL communicator factory", Assert.Throws<NotSupportedException>(() => DistributedContext.Create(cuda, info, Options)).Message);
    }

    [Fact]
    public async Task GPU_ranks_share_rank_0_s_NCCL_id_through_the_store()
    {
        var cuda = DispatchProxy.Create<IBackend, NamedBackend>();
        int port = StoreTests.FreePort();
        var id = new byte[128];
        new Random(5).NextBytes(id);
        var ranks = Enumerable.Range(0, 3).Select(r => Task.Run(() =>
        {
            var info = new RankInfo(r, 3, r, 3, "127.0.0.1", port, LauncherKind.Torchrun, false, "tok");
            byte[]? got = null;
            using var comm = DistributedContext.Create(cuda, info, Options, b =>
            {
                Assert.Equal(r, b.Info.Rank);
                got = b.ShareId(b.Info.Rank == 0 ? id : null);
                var c = new SingleRankCommunicator(CpuBackend.Instance);   // stands in for NCCL
                foreach (var res in b.Resources) c.Own(res);
                return c;
            });
            return got;
        }, TestContext.Current.CancellationToken)).ToArray();
        foreach (var got in await Task.WhenAll(ranks)) Assert.Equal(id, got);
    }

    [Fact]
    public void A_GPU_rank_whose_peers_never_come_is_told_so()
    {
        var cuda = DispatchProxy.Create<IBackend, NamedBackend>();
        var info = new RankInfo(0, 2, 0, 2, "127.0.0.1", StoreTests.FreePort(), LauncherKind.Torchrun, false, "tok");
        var e = Assert.Throws<CommException>(() => DistributedContext.Create(cuda, info, Options with { Timeout = TimeSpan.FromSeconds(1) }, _ => throw new InvalidOperationException("unreachable")));
        Assert.Contains("nccl/present", e.Message);
        Assert.Contains("one did not start", e.Message);
    }
}
