using Engine.Parallel.Launch;

namespace Engine.Parallel.Tests;

public class LaunchEnvironmentTests
{
    static RankInfo Detect(params (string Name, string Value)[] vars)
    {
        var d = vars.ToDictionary(v => v.Name, v => v.Value);
        return LaunchEnvironment.Detect(n => d.GetValueOrDefault(n));
    }

    [Fact]
    public void No_launcher_is_a_single_process()
    {
        var r = Detect(("ENGINE_JOB_TOKEN", "tok"), ("HOME", "/root"));
        Assert.Equal(RankInfo.Single with { JobToken = "tok" }, r);
    }

    [Fact]
    public void Torchrun_variables()
    {
        var r = Detect(("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500"), ("ENGINE_JOB_TOKEN", "s3cret"));
        Assert.Equal(new RankInfo(5, 8, 1, 4, "10.0.0.1", 29500, LauncherKind.Torchrun, false, "s3cret"), r);
        // Without the local variables: one node.
        var bare = Detect(("RANK", "2"), ("WORLD_SIZE", "3"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1"));
        Assert.Equal((2, 3, 2, 3), (bare.Rank, bare.WorldSize, bare.LocalRank, bare.LocalWorldSize));
    }

    [Fact]
    public void Torchrun_variables_win_over_a_surrounding_Slurm_allocation()
    {
        var r = Detect(("RANK", "1"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"));
        Assert.Equal(LauncherKind.Torchrun, r.Launcher);
        Assert.Equal(1, r.Rank);
    }

    [Fact]
    public void Open_MPI_variables()
    {
        var r = Detect(("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"), ("PMIX_RANK", "3"));
        Assert.Equal(new RankInfo(3, 4, 1, 2, null, null, LauncherKind.OpenMpi, true, null), r);
    }

    [Fact]
    public void Slurm_variables_with_and_without_PMIx()
    {
        var r = Detect(("SLURM_PROCID", "5"), ("SLURM_NTASKS", "7"), ("SLURM_LOCALID", "1"), ("SLURM_NODEID", "2"),
            ("SLURM_TASKS_PER_NODE", "2(x3),1"), ("SLURM_NODELIST", "gpu[07-09],cpu1"), ("MASTER_PORT", "29400"));
        Assert.Equal(new RankInfo(5, 7, 1, 2, "gpu07", 29400, LauncherKind.Slurm, false, null), r);
        var last = Detect(("SLURM_PROCID", "6"), ("SLURM_NPROCS", "7"), ("SLURM_LOCALID", "0"), ("SLURM_NODEID", "3"),
            ("SLURM_TASKS_PER_NODE", "2(x3),1"), ("SLURM_STEP_NODELIST", "a,b"), ("SLURM_NODELIST", "x"), ("PMIX_RANK", "6"));
        Assert.Equal(new RankInfo(6, 7, 0, 1, "a", null, LauncherKind.Slurm, true, null), last);
        // An explicit MASTER_ADDR wins over the node list.
        Assert.Equal("10.1.1.1", Detect(("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("SLURM_NODELIST", "n1"), ("MASTER_ADDR", "10.1.1.1")).MasterAddr);
    }

    [Theory]
    [InlineData("node[01-03,07]", "node01 node02 node03 node07")]
    [InlineData("n1", "n1")]
    [InlineData("a[1-2],b,c[9-11]", "a1 a2 b c9 c10 c11")]
    [InlineData("r[1-2]n[08-09]", "r1n08 r1n09 r2n08 r2n09")]
    [InlineData("gpu-[001-002]-ib", "gpu-001-ib gpu-002-ib")]
    public void Slurm_host_lists_expand(string list, string expected) =>
        Assert.Equal(expected.Split(' '), LaunchEnvironment.ExpandHostList(list));

    [Theory]
    [InlineData("node[01-03", "unclosed")]
    [InlineData("node[3-1]", "bad range")]
    [InlineData("node[a-b]", "bad range")]
    public void Bad_host_lists_are_named(string list, string message) =>
        Assert.Contains(message, Assert.Throws<ArgumentException>(() => LaunchEnvironment.ExpandHostList(list)).Message);

    [Theory]
    [InlineData("RANK", "x", "RANK=x is not a non-negative integer")]
    [InlineData("RANK", "4", "RANK=4 is outside 0..3")]
    [InlineData("WORLD_SIZE", "0", "WORLD_SIZE=0 is outside")]
    [InlineData("MASTER_PORT", "70000", "MASTER_PORT=70000 is outside 0..65535")]
    public void Malformed_variables_name_themselves(string name, string value, string message)
    {
        var d = new Dictionary<string, string> { ["RANK"] = "0", ["WORLD_SIZE"] = "4" };
        d[name] = value;
        Assert.Contains(message, Assert.Throws<ArgumentException>(() => LaunchEnvironment.Detect(n => d.GetValueOrDefault(n))).Message);
    }

    [Fact]
    public void A_rank_without_its_world_size_is_an_error() =>
        Assert.Contains("WORLD_SIZE is not set", Assert.Throws<ArgumentException>(() => Detect(("RANK", "0"))).Message);

    [Fact]
    public void Comm_options_from_the_environment()
    {
        var o = CommOptions.FromEnvironment(n => n == "ENGINE_COMM_TIMEOUT" ? "12.5" : n == "ENGINE_COMM_HEARTBEAT" ? "0.5" : null);
        Assert.Equal(TimeSpan.FromSeconds(12.5), o.Timeout);
        Assert.Equal(TimeSpan.FromSeconds(5), o.StaleAfter);
        Assert.Equal(TimeSpan.FromSeconds(300), CommOptions.FromEnvironment(_ => null).Timeout);
        Assert.Contains("ENGINE_COMM_TIMEOUT=-1", Assert.Throws<ArgumentException>(() => CommOptions.FromEnvironment(n => n == "ENGINE_COMM_TIMEOUT" ? "-1" : null)).Message);
    }
}

public class LauncherTests
{
    [Theory]
    [InlineData(null, 0, "0")]
    [InlineData(null, 3, "3")]
    [InlineData("4,5,6,7", 2, "6")]
    [InlineData(" GPU-aa , GPU-bb ", 1, "GPU-bb")]
    public void Each_CUDA_rank_sees_its_local_rank_s_GPU(string? visible, int local, string expected) =>
        Assert.Equal(expected, Launch.Launcher.VisibleDevice(visible, local));

    [Fact]
    public void Too_few_visible_GPUs_is_named() =>
        Assert.Contains("lists 2 GPU(s), fewer than --nproc-per-node needs", Assert.Throws<ArgumentException>(() => Launch.Launcher.VisibleDevice("0,1", 2)).Message);

    [Theory]
    [InlineData(0, "exited with code 0")]
    [InlineData(2, "exited with code 2")]
    [InlineData(137, "was killed by signal 9 (SIGKILL)")]
    [InlineData(143, "was killed by signal 15 (SIGTERM)")]
    public void Exit_codes_read_as_codes_or_signals(int code, string text) => Assert.Equal(text, Launch.Launcher.Describe(code));

    [Fact]
    public void Options_are_validated()
    {
        var ok = new Launch.LaunchOptions { NprocPerNode = 2, Command = ["train"] };
        ok.Validate();
        Assert.Contains("--node-rank 2 outside 0..1", Assert.Throws<ArgumentException>(() => (ok with { Nnodes = 2, NodeRank = 2 }).Validate()).Message);
        Assert.Contains("cpu or cuda", Assert.Throws<ArgumentException>(() => (ok with { Device = "tpu" }).Validate()).Message);
        Assert.Contains("cannot launch itself", Assert.Throws<ArgumentException>(() => (ok with { Command = ["launch"] }).Validate()).Message);
    }
}
