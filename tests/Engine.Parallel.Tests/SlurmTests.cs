using System.Text.RegularExpressions;

namespace Engine.Parallel.Tests;

/// <summary>Ranks started by a real Slurm (single node; .ci/run starts one, ../shared/CLUSTER.md has the recipe).</summary>
public class SlurmTests
{
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(3);

    /// <summary>Skips the test unless Open MPI and a Slurm answering sinfo are there (also the prepare tests').</summary>
    internal static async Task RequireSlurm()
    {
        EngineProcess.RequireMpi();
        if (EngineProcess.OnPath("srun") is null || EngineProcess.OnPath("sinfo") is null)
            Assert.Skip("Slurm is not installed (srun, sinfo): .ci/run installs and starts a single-node one");
        var info = await EngineProcess.Run("timeout", ["10", "sinfo", "-h", "-o", "%T"], new Dictionary<string, string?>(), TimeSpan.FromSeconds(30));
        if (info.ExitCode != 0 || !Regex.IsMatch(info.Stdout, "idle|mix|alloc"))
            Assert.Skip($"no Slurm answers sinfo (exit {info.ExitCode}: {info.Stderr.Trim()}): .ci/run starts a single-node one");
    }

    [Fact]
    public async Task Srun_with_PMIx_forms_the_MPI_world_and_passes_the_self_test()
    {
        await RequireSlurm();
        var r = await EngineProcess.Run("srun", ["-n", "2", "--mpi=pmix", .. EngineProcess.Engine, "comm-selftest"], EngineProcess.BaseEnvironment(), Limit);
        Assert.True(r.ExitCode == 0, r.All);
        for (int rank = 0; rank < 2; rank++)
            Assert.Matches($@"comm self-test: rank {rank} of 2: \d+ checks passed", r.Stdout);
    }

    [Fact]
    public async Task Srun_without_PMIx_is_one_clear_error()
    {
        await RequireSlurm();
        var r = await EngineProcess.Run("srun", ["-n", "2", .. EngineProcess.Engine, "comm-selftest"], EngineProcess.BaseEnvironment(), Limit);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("error: under srun, CPU ranks need Open MPI's PMIx (srun --mpi=pmix)", r.Stderr);
    }
}
