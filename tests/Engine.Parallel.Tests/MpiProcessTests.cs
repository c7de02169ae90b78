using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Engine.Parallel.Tests;

/// <summary>
/// The MPI communicator and the launcher in real processes: mpirun, `engine launch` (through mpirun and spawning
/// torchrun-style children), hand-started torchrun-style ranks, a wrong token, and ranks that hang or die. Each
/// rank runs the hidden `engine comm-selftest` (every operation against a reference) or `engine bench comm`.
/// </summary>
public class MpiProcessTests
{
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(3);

    static void AllRanksPassed(EngineProcess.Result r, int n)
    {
        Assert.True(r.ExitCode == 0, r.All);
        for (int rank = 0; rank < n; rank++)
            Assert.True(Regex.IsMatch(r.Stdout, $@"comm self-test: rank {rank} of {n}: \d+ checks passed"), $"rank {rank} did not pass:\n{r.All}");
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public async Task Mpirun_ranks_pass_the_self_test(int n)
    {
        EngineProcess.RequireMpi();
        var r = await EngineProcess.Run("mpirun",
            ["-np", n.ToString(CultureInfo.InvariantCulture), "--oversubscribe", "--bind-to", "none", .. EngineProcess.Engine, "comm-selftest"],
            EngineProcess.BaseEnvironment(), Limit);
        AllRanksPassed(r, n);
        Assert.Contains($"comm self-test: rank 0 of {n} (mpi, Open MPI", r.Stdout);
    }

    [Fact]
    public async Task Launch_through_mpirun_prefixes_the_other_ranks_lines()
    {
        EngineProcess.RequireMpi();
        var r = await EngineProcess.RunEngine(["launch", "--nproc-per-node", "3", "--", "comm-selftest"], EngineProcess.BaseEnvironment(), Limit);
        AllRanksPassed(r, 3);
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.Contains(lines, l => l.StartsWith("comm self-test: rank 0 of 3: ", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("[rank 1] comm self-test: rank 1 of 3: ", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("[rank 2] comm self-test: rank 2 of 3: ", StringComparison.Ordinal));
        Assert.DoesNotContain(lines, l => l.Contains("<stdout>", StringComparison.Ordinal) || l.Contains('\x1b'));
    }

    [Fact]
    public async Task Bench_comm_under_launch_writes_checked_bus_bandwidths()
    {
        EngineProcess.RequireMpi();
        string dir = Directory.CreateTempSubdirectory("engine-bench-comm-").FullName;
        try
        {
            var r = await EngineProcess.RunEngine(
                ["launch", "--nproc-per-node", "2", "--", "bench", "comm", "--max-bytes", "65536", "--iters", "3", "--warmup", "1", "--out", dir],
                EngineProcess.BaseEnvironment(), Limit);
            Assert.True(r.ExitCode == 0, r.All);
            Assert.Contains("bench comm: every result checked OK", r.Stdout);
            // one engine.bench/1 file (the writer every suite uses): an entry per operation and size, median = busbw
            var json = JsonNode.Parse(File.ReadAllText(Assert.Single(Directory.GetFiles(dir, "comm-*.json"))))!;
            Assert.Equal("engine.bench/1", json["schema"]!.GetValue<string>());
            Assert.Equal(2, json["config"]!["world_size"]!.GetValue<int>());
            var results = json["benchmarks"]!.AsArray();
            Assert.Equal(4 * 5, results.Count);   // 4 operations × 4, 8, 16, 32, 64 KiB
            foreach (var m in results)
            {
                Assert.Null(m!["error"]);
                double alg = m["params"]!["algbw_gbps"]!.GetValue<double>(), bus = m["median"]!.GetValue<double>();
                double factor = m["params"]!["op"]!.GetValue<string>() switch { "all_reduce" => 1.0, "broadcast" => 1.0, _ => 0.5 };
                Assert.True(Math.Abs(bus - alg * factor) <= 1e-3 + 1e-3 * alg, $"busbw {bus} vs algbw {alg} for {m["name"]}");
            }
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    static Dictionary<string, string?> Torchrun(int rank, int world, int port, string token) => new(EngineProcess.BaseEnvironment())
    {
        ["RANK"] = rank.ToString(CultureInfo.InvariantCulture),
        ["WORLD_SIZE"] = world.ToString(CultureInfo.InvariantCulture),
        ["LOCAL_RANK"] = rank.ToString(CultureInfo.InvariantCulture),
        ["MASTER_ADDR"] = "127.0.0.1",
        ["MASTER_PORT"] = port.ToString(CultureInfo.InvariantCulture),
        ["ENGINE_JOB_TOKEN"] = token,
        // not run as root: no Open MPI override needed for singletons
        ["OMPI_ALLOW_RUN_AS_ROOT"] = null,
        ["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = null,
    };

    [Fact]
    public async Task Torchrun_style_variables_form_an_MPI_world_through_ompi_server()
    {
        EngineProcess.RequireMpi();
        int port = StoreTests.FreePort();
        var ranks = Enumerable.Range(0, 2).Select(r => EngineProcess.RunEngine(["comm-selftest"], Torchrun(r, 2, port, "job-secret"), Limit)).ToArray();
        var results = await Task.WhenAll(ranks);
        for (int r = 0; r < 2; r++)
        {
            Assert.True(results[r].ExitCode == 0, $"rank {r}: {results[r].All}");
            Assert.Matches($@"comm self-test: rank {r} of 2: \d+ checks passed", results[r].Stdout);
        }
    }

    [Fact]
    public async Task A_rank_with_a_wrong_token_is_refused_and_named()
    {
        EngineProcess.RequireMpi();
        int port = StoreTests.FreePort();
        var rank0Env = Torchrun(0, 2, port, "right-token");
        rank0Env["ENGINE_COMM_TIMEOUT"] = "5";
        var rank0 = EngineProcess.RunEngine(["comm-selftest"], rank0Env, Limit);
        var rank1 = await EngineProcess.RunEngine(["comm-selftest"], Torchrun(1, 2, port, "wrong-token"), Limit);
        Assert.Equal(2, rank1.ExitCode);
        Assert.Matches($@"^error: the rendezvous store at 127\.0\.0\.1:{port} refused this process: its job token \(ENGINE_JOB_TOKEN\) is not the job's", rank1.Stderr.Trim());
        var r0 = await rank0;
        Assert.NotEqual(0, r0.ExitCode);
        Assert.Contains("rendezvous store: refused a connection from 127.0.0.1:", r0.Stderr);
        Assert.Contains("1 of 2 ranks joined", r0.Stderr);
        Assert.Contains("rank 1", r0.Stderr);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_rank_that_hangs_under_launch_is_named_within_the_timeout(bool spawn)
    {
        EngineProcess.RequireMpi();
        var env = EngineProcess.BaseEnvironment(commTimeoutSeconds: 5);
        var r = await EngineProcess.RunEngine(
            ["launch", "--nproc-per-node", "2", .. spawn ? new[] { "--spawn", "--master-port", StoreTests.FreePort().ToString(CultureInfo.InvariantCulture) } : [],
             "--", "comm-selftest", "--hang-rank", "1"], env, Limit);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Matches(@"error: collective #\d+ all_reduce timed out after \d+(\.\d)? s on rank 0: rank 1 is alive but has not reached collective #\d+ all_reduce \(it is at #1 all_reduce\)", r.Stderr);
        // (under mpirun the launcher usually ends mpirun's post-abort kill-timeout sleep before mpirun reports the code)
        Assert.Matches(spawn ? @"engine launch: rank 0 \(pid \d+\) exited with code 2; stopped the other ranks"
            : "engine launch: rank 0 (exited with code 2; mpirun stopped the other ranks|exited first, while the others were running)", r.Stderr);
        Assert.True(r.Elapsed < TimeSpan.FromSeconds(90), r.All);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_rank_that_dies_under_launch_is_named(bool spawn)
    {
        EngineProcess.RequireMpi();
        var r = await EngineProcess.RunEngine(
            ["launch", "--nproc-per-node", "2", .. spawn ? new[] { "--spawn", "--master-port", StoreTests.FreePort().ToString(CultureInfo.InvariantCulture) } : [],
             "--", "comm-selftest", "--die-rank", "1"], EngineProcess.BaseEnvironment(), Limit);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Matches(spawn
            ? @"engine launch: rank 1 \(pid \d+\) was killed by signal 9 \(SIGKILL\); stopped the other ranks"
            : @"engine launch: rank 1 (was killed by signal 9 \(SIGKILL\); mpirun stopped the other ranks|exited first, while the others were running)", r.Stderr);
        Assert.True(r.Elapsed < TimeSpan.FromSeconds(90), r.All);
    }

    [Fact]
    public async Task Launch_refuses_bad_arguments_in_one_line()
    {
        var r = await EngineProcess.RunEngine(["launch", "--nproc-per-node", "0", "--", "comm-selftest"], EngineProcess.BaseEnvironment(), Limit);
        Assert.Equal(2, r.ExitCode);
        Assert.Equal("error: --nproc-per-node must be ≥ 1, got 0", r.Stderr.Trim());
        var none = await EngineProcess.RunEngine(["launch", "--nproc-per-node", "2"], EngineProcess.BaseEnvironment(), Limit);
        Assert.Equal(2, none.ExitCode);
        Assert.StartsWith("error: nothing to launch", none.Stderr.Trim());
    }
}
