using System.Globalization;
using System.Text.RegularExpressions;
using Engine.Cli.Commands;
using Engine.Data;
using Engine.Data.Prepare;

namespace Engine.Parallel.Tests;

/// <summary>
/// engine prepare across real ranks: thread-communicator ranks, Open MPI processes, Slurm (srun with and without MPI,
/// the sbatch script, the per-phase job arrays) — each byte-identical to one process — and kill -9 in every phase
/// followed by a resume.
/// </summary>
public class PrepareProcessTests
{
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(4);
    static readonly string[] Outputs = ["web.bin", "web.idx", "books.bin", "books.idx", "sft.jsonl", "tokenizer.json", "report.json"];

    /// <summary>A small generated corpus and a config per output folder.</summary>
    sealed class Setup
    {
        public readonly string Dir = Path.Combine(Path.GetTempPath(), "engine-prepare-proc", Guid.NewGuid().ToString("N"));

        public Setup(int docs = 150) =>
            SyntheticCorpusGenerator.Generate(Path.Combine(Dir, "corpus"), new SyntheticCorpusOptions { Documents = docs, FilesPerSource = 3, BoilerplateFraction = 0.3, Seed = 5 });

        public string Config(string outDir)
        {
            string path = Path.Combine(Dir, outDir + ".toml");
            File.WriteAllText(path, SyntheticCorpusGenerator.Config(Path.Combine(Dir, "corpus"), outDir, instructions: DataPaths.File("instruct/fin_en_formula.jsonl")));
            return path;
        }

        public string Out(string outDir) => Path.Combine(Dir, outDir);

        /// <summary>The one-process reference, run in this process.</summary>
        public string Reference()
        {
            PreparePipeline.Run(PrepareConfig.Load(Config("ref")), null, TestContext.Current.CancellationToken);
            return Out("ref");
        }
    }

    static void AssertSame(string a, string b, string what)
    {
        foreach (var name in Outputs)
        {
            byte[] x = File.ReadAllBytes(Path.Combine(a, name)), y = File.ReadAllBytes(Path.Combine(b, name));
            Assert.True(x.AsSpan().SequenceEqual(y), $"{name} differs ({what}): {x.Length} vs {y.Length} bytes");
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void Thread_communicator_ranks_write_the_one_process_outputs(int n)
    {
        var s = new Setup();
        string reference = s.Reference();
        var cfg = PrepareConfig.Load(s.Config("threads"));
        ThreadCommunicator.Run(n, comm => PreparePipeline.Run(cfg, new PrepareRunOptions { Group = new CommPrepareGroup(comm), Threads = 1, TaskOrderSeed = (ulong)comm.Rank + 1 }),
            limit: TimeSpan.FromMinutes(3));
        AssertSame(reference, s.Out("threads"), $"{n} thread ranks");
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public async Task Mpirun_ranks_write_the_one_process_outputs(int n)
    {
        EngineProcess.RequireMpi();
        var s = new Setup();
        string reference = s.Reference();
        var r = await EngineProcess.Run("mpirun", ["-np", n.ToString(CultureInfo.InvariantCulture), "--oversubscribe", "--bind-to", "none", .. EngineProcess.Engine, "prepare", "--config", s.Config("mpi")],
            EngineProcess.BaseEnvironment(), Limit);
        Assert.True(r.ExitCode == 0, r.All);
        Assert.Contains("report:", r.Stdout);
        AssertSame(reference, s.Out("mpi"), $"{n} MPI ranks");
    }

    public static TheoryData<string> Phases => [.. PreparePipeline.Phases];

    [Theory]
    [MemberData(nameof(Phases))]
    public async Task Kill_9_in_a_phase_then_resume_gives_the_uninterrupted_outputs(string phase)
    {
        var s = new Setup(docs: 80);
        string reference = s.Reference();
        string cfg = s.Config("killed");
        var env = EngineProcess.BaseEnvironment();
        env[PrepareCommand.KillVariable] = $"{phase}:0";
        var killed = await EngineProcess.RunEngine(["prepare", "--config", cfg, "--threads", "1"], env, Limit);
        Assert.True(killed.ExitCode == 137, killed.All);   // 128 + SIGKILL
        Assert.Contains($"{PrepareCommand.KillVariable}={phase}:0: killed after {phase} task 0", killed.Stderr);
        var resumed = await EngineProcess.RunEngine(["prepare", "--config", cfg], EngineProcess.BaseEnvironment(), Limit);
        Assert.True(resumed.ExitCode == 0, resumed.All);
        if (phase != "extract") Assert.Contains("(finished before: skipped)", resumed.Stdout);
        AssertSame(reference, s.Out("killed"), $"killed in {phase}, resumed");
    }

    [Fact]
    public async Task Shard_ranks_meet_through_the_work_folder_and_a_phase_runs_alone()
    {
        var s = new Setup();
        string reference = s.Reference();
        string cfg = s.Config("shards");
        var ranks = Enumerable.Range(0, 3).Select(i => EngineProcess.RunEngine(["prepare", "--config", cfg, "--threads", "1", "--shard", $"{i}/3"], EngineProcess.BaseEnvironment(), Limit)).ToList();
        foreach (var r in await Task.WhenAll(ranks)) Assert.True(r.ExitCode == 0, r.All);
        AssertSame(reference, s.Out("shards"), "3 --shard ranks");

        string phased = s.Config("phased");
        var early = await EngineProcess.RunEngine(["prepare", "--config", phased, "--phase", "exact"], EngineProcess.BaseEnvironment(), Limit);
        Assert.Equal(2, early.ExitCode);
        Assert.Contains("error: phase 'exact' needs phase 'extract' finished", early.Stderr);
        foreach (var p in PreparePipeline.Phases)
            for (int i = 0; i < 2; i++)
            {
                var r = await EngineProcess.RunEngine(["prepare", "--config", phased, "--phase", p, "--shard", $"{i}/2"], EngineProcess.BaseEnvironment(), Limit);
                Assert.True(r.ExitCode == 0, r.All);
            }
        AssertSame(reference, s.Out("phased"), "one phase at a time, 2 shards each");
    }

    static async Task RequireSlurm()
    {
        await SlurmTests.RequireSlurm();
        if (EngineProcess.OnPath("sbatch") is null) Assert.Skip("Slurm's sbatch is not installed: .ci/run installs slurm-wlm");
    }

    static string RepoFile(string relative)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, relative))) return Path.Combine(d.FullName, relative);
        throw new FileNotFoundException(relative);
    }

    [Theory]
    [InlineData("mpi")]
    [InlineData("files")]
    public async Task The_sbatch_script_runs_under_Slurm(string mode)
    {
        await RequireSlurm();
        var s = new Setup();
        string reference = s.Reference();
        var env = EngineProcess.BaseEnvironment();
        env["ENGINE"] = string.Join(' ', EngineProcess.Engine);
        var r = await EngineProcess.Run("sbatch", ["--wait", "--chdir", s.Dir, "--output", Path.Combine(s.Dir, "slurm-%j.out"), RepoFile("tools/slurm/prepare.sbatch"), s.Config("sbatch"), mode],
            env, Limit);
        string log = string.Join("\n", Directory.GetFiles(s.Dir, "slurm-*.out").Select(File.ReadAllText));
        Assert.True(r.ExitCode == 0, r.All + "\n--- job output\n" + log);
        Assert.Contains($"engine prepare: 2 ranks on 1 node(s), mode {mode}", log);
        AssertSame(reference, s.Out("sbatch"), $"sbatch, {mode}");
    }

    [Fact]
    public async Task The_per_phase_job_arrays_run_under_Slurm()
    {
        await RequireSlurm();
        var s = new Setup(docs: 80);
        string reference = s.Reference();
        var env = EngineProcess.BaseEnvironment();
        env["ENGINE"] = string.Join(' ', EngineProcess.Engine);
        var submit = await EngineProcess.Run("bash", [RepoFile("tools/slurm/prepare-array.sh"), s.Config("array"), "2", "--chdir", s.Dir, "--output", Path.Combine(s.Dir, "array-%A_%a.out")], env, Limit);
        Assert.True(submit.ExitCode == 0, submit.All);
        string last = Regex.Match(submit.Stdout, @"last job: (\d+)").Groups[1].Value;
        var wait = await EngineProcess.Run("srun", ["--dependency=afterany:" + last, "--chdir", s.Dir, "true"], env, Limit);
        Assert.True(wait.ExitCode == 0, wait.All);
        string log = string.Join("\n", Directory.GetFiles(s.Dir, "array-*.out").Order().Select(File.ReadAllText));
        Assert.True(File.Exists(Path.Combine(s.Out("array"), "report.json")), submit.All + "\n--- job output\n" + log);
        Assert.DoesNotContain("error", log);   // every array task of every phase ended cleanly
        AssertSame(reference, s.Out("array"), "a job array per phase");
    }
}
