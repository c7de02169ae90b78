using System.Globalization;
using System.Text.RegularExpressions;
using Engine.Model.IO;

namespace Engine.Parallel.Tests;

/// <summary>
/// `engine train` and `engine recipe` as separate processes — through `engine launch` over Open MPI, from
/// torchrun-style variables (`launch --spawn`: children with RANK/WORLD_SIZE/MASTER_ADDR, their MPI world formed
/// through ompi-server), and under a real Slurm (`srun -n 2 --mpi=pmix`) — each equal to the single-process run on the
/// same global batch (world size × grad_accum micro-batches). Tolerance: the final weights agree to 5e-5 and the
/// losses to 1e-4 — fp32 sums in another order, as in tests/Engine.Tests/Parallel/DataParallelTests.cs.
/// </summary>
public class TrainProcessTests
{
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(4);
    const double WeightTol = 5e-5;

    static string TrainConfig(string dir, int accum, int zero, int pp = 1)
    {
        string path = Path.Combine(dir, $"run_{accum}_{zero}.toml");
        File.WriteAllText(path, $"""
            [model]
            hidden_size = 64
            intermediate_size = 160
            num_layers = 2
            num_heads = 4
            num_kv_heads = 2
            max_position_embeddings = 64
            [data]
            train = ["{Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")}"]
            valid_fraction = 0.02
            [train]
            seq_len = 64
            batch_size = 2
            grad_accum = {accum}
            steps = 5
            seed = 9
            log_every = 1
            eval_batches = 2
            [optim]
            lr = 3e-3
            [schedule]
            kind = "constant"
            [output]
            dir = "{Path.Combine(dir, $"out_{accum}_{zero}_{Guid.NewGuid():N}")}"
            [parallel]
            zero = {zero}
            pp = {pp}
            bucket_mb = 0.05
            """);
        return path;
    }

    static Dictionary<string, float[]> Weights(string stdout)
    {
        var m = Regex.Match(stdout, @"weights: (\S+)\s");
        Assert.True(m.Success, "no weights line in:\n" + stdout);
        // One model.safetensors, or one shard per pipeline stage named by the index.
        var all = new Dictionary<string, float[]>();
        foreach (var file in Directory.GetFiles(m.Groups[1].Value, "*.safetensors"))
        {
            using var f = SafeTensorsFile.Open(file);
            foreach (var e in f.Entries) all.Add(e.Name, f.ReadFloat32(e.Name));
        }
        Assert.NotEmpty(all);
        return all;
    }

    static double[] Losses(string stdout) => Regex.Matches(stdout, @"step +\d+/\d+ loss (\d+\.\d+)")
        .Select(m => double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).ToArray();

    static void AssertSameRun(EngineProcess.Result single, EngineProcess.Result multi, string what)
    {
        Assert.True(multi.ExitCode == 0, multi.All);
        var a = Losses(single.Stdout);
        var b = Losses(multi.Stdout);
        Assert.Equal(5, a.Length);
        Assert.True(a.Length == b.Length, $"{what}: rank 0 printed {b.Length} step lines (other ranks must not print progress)\n{multi.All}");
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= 1e-4, $"{what}: step {i + 1} loss {b[i]} vs {a[i]}");
        var wa = Weights(single.Stdout);
        var wb = Weights(multi.Stdout);
        double worst = wa.Max(kv => kv.Value.Zip(wb[kv.Key], (x, y) => Math.Abs((double)x - y)).Max());
        Assert.True(worst <= WeightTol, $"{what}: final weights differ by {worst:E2}");
    }

    static Task<EngineProcess.Result> Single(string dir) =>
        EngineProcess.RunEngine(["train", "--config", TrainConfig(dir, 4, 0)], EngineProcess.BaseEnvironment(), Limit);

    [Theory]
    [InlineData(2, 0, false)]
    [InlineData(2, 2, true)]    // torchrun-style children
    [InlineData(4, 1, false)]
    [InlineData(2, 3, false)]   // ZeRO-3: weights sharded too, gathered unit by unit
    public async Task Launched_training_equals_one_process(int ranks, int zero, bool spawn)
    {
        EngineProcess.RequireMpi();
        using var dir = new TempFolder();
        var single = await Single(dir.Path);
        Assert.True(single.ExitCode == 0, single.All);
        string[] launch = ["launch", "--nproc-per-node", ranks.ToString(CultureInfo.InvariantCulture), .. spawn ? new[] { "--spawn", "--master-port", FreePort().ToString(CultureInfo.InvariantCulture) } : [],
            "--", "train", "--config", TrainConfig(dir.Path, 4 / ranks, zero)];
        var multi = await EngineProcess.RunEngine(launch, EngineProcess.BaseEnvironment(), Limit);
        AssertSameRun(single, multi, $"{ranks} ranks ZeRO-{zero}{(spawn ? " (torchrun-style)" : "")}");
        Assert.Contains($"{ranks} data-parallel ranks (mpi), ZeRO-{zero}", multi.Stdout);
    }

    /// <summary>Tensor and context parallelism over Open MPI (the mesh's dimensions split from the MPI world by
    /// MPI_Comm_split): tp 2 with sequence parallel, cp 2, and dp 2 × tp 2 at ZeRO-1, each equal to one process.</summary>
    [Theory]
    [InlineData(2, 4, "parallel.tp=2", "layout tp 2 (mpi)")]
    [InlineData(2, 4, "parallel.cp=2", "layout cp 2 (mpi)")]
    [InlineData(4, 2, "parallel.tp=2", "layout dp 2 × tp 2 (mpi), ZeRO-1")]
    public async Task Launched_tensor_and_context_parallel_equal_one_process(int ranks, int accum, string set, string layout)
    {
        EngineProcess.RequireMpi();
        using var dir = new TempFolder();
        var single = await Single(dir.Path);
        Assert.True(single.ExitCode == 0, single.All);
        var multi = await EngineProcess.RunEngine(["launch", "--nproc-per-node", ranks.ToString(CultureInfo.InvariantCulture), "--", "train", "--config",
            TrainConfig(dir.Path, accum, ranks == 4 ? 1 : 0), "--set", set], EngineProcess.BaseEnvironment(), Limit);
        AssertSameRun(single, multi, $"{set} on {ranks} MPI ranks");
        Assert.Contains(layout, Regex.Replace(multi.Stdout, @"\s+", " "));
    }

    [Fact]
    public async Task Launched_pipeline_times_data_parallel_equals_one_process()
    {
        EngineProcess.RequireMpi();
        using var dir = new TempFolder();
        var single = await Single(dir.Path);
        var multi = await EngineProcess.RunEngine(["launch", "--nproc-per-node", "4", "--", "train", "--config", TrainConfig(dir.Path, 2, 1, pp: 2)],
            EngineProcess.BaseEnvironment(), Limit);
        AssertSameRun(single, multi, "pp 2 × dp 2 over MPI, 1F1B, ZeRO-1");
        Assert.True(Regex.Replace(multi.Stdout, @"\s+", " ").Contains("(stage 0 of 2), layout pp 2 × dp 2 (mpi), ZeRO-1, 1f1b over 2 micro-batches"), multi.Stdout);
    }

    [Fact]
    public async Task Mpirun_without_the_launcher_equals_one_process_and_prefixes_other_ranks()
    {
        EngineProcess.RequireMpi();
        using var dir = new TempFolder();
        var single = await Single(dir.Path);
        // a bad override makes every rank fail the same way: rank 1's error line carries its prefix
        var multi = await EngineProcess.Run("mpirun", ["-np", "2", "--oversubscribe", "--bind-to", "none", .. EngineProcess.Engine, "train", "--config", TrainConfig(dir.Path, 2, 1)],
            EngineProcess.BaseEnvironment(), Limit);
        AssertSameRun(single, multi, "mpirun -np 2, ZeRO-1");
        var bad = await EngineProcess.Run("mpirun", ["-np", "2", "--oversubscribe", "--bind-to", "none", .. EngineProcess.Engine, "train", "--config", TrainConfig(dir.Path, 2, 1), "--set", "parallel.dp=3"],
            EngineProcess.BaseEnvironment(), Limit);
        Assert.NotEqual(0, bad.ExitCode);
        Assert.Contains("[rank 1] error: parallel.dp = 3 but the job has 2 rank(s)", bad.Stderr);
    }

    [Fact]
    public async Task Srun_with_PMIx_training_equals_one_process()
    {
        EngineProcess.RequireMpi();
        if (EngineProcess.OnPath("srun") is null) Assert.Skip("Slurm is not installed: .ci/run installs and starts a single-node one");
        var info = await EngineProcess.Run("timeout", ["10", "sinfo", "-h", "-o", "%T"], new Dictionary<string, string?>(), TimeSpan.FromSeconds(30));
        if (info.ExitCode != 0 || !Regex.IsMatch(info.Stdout, "idle|mix|alloc")) Assert.Skip("no Slurm answers sinfo: .ci/run starts a single-node one");
        using var dir = new TempFolder();
        var single = await Single(dir.Path);
        var multi = await EngineProcess.Run("srun", ["-n", "2", "--mpi=pmix", .. EngineProcess.Engine, "train", "--config", TrainConfig(dir.Path, 2, 2)],
            EngineProcess.BaseEnvironment(), Limit);
        AssertSameRun(single, multi, "srun -n 2 --mpi=pmix, ZeRO-2");
    }

    [Fact]
    public async Task Launched_recipe_equals_one_process()
    {
        EngineProcess.RequireMpi();
        using var dir = new TempFolder();
        string Recipe(int accum)
        {
            string path = Path.Combine(dir.Path, $"recipe_{accum}.toml");
            File.WriteAllText(path, $$"""
                name = "dp-recipe"
                seed = 4
                [tokenizer]
                kind = "byte"
                [model]
                hidden_size = 32
                intermediate_size = 64
                num_layers = 1
                num_heads = 4
                num_kv_heads = 2
                max_position_embeddings = 64
                [sources.gen]
                files = ["{{Engine.Data.DataPaths.File("general_en/wikitext2_test_a.txt")}}"]
                domain = "general"
                language = "en"
                [sources.fin]
                files = ["{{Engine.Data.DataPaths.File("finance_zh/cnews_finance.jsonl")}}"]
                domain = "finance"
                language = "zh"
                max_docs = 40
                [[stages]]
                name = "base"
                init = "random"
                weights = { gen = 0.5, fin = 0.5 }
                steps = 4
                batch_size = 2
                grad_accum = {{accum}}
                seq_len = 32
                optim = { lr = 3e-3 }
                schedule = { kind = "constant" }
                [eval]
                seq_len = 32
                batch = 2
                perplexity_tokens = 256
                few_shot_file = "{{Engine.Data.DataPaths.File("eval/fpb_test.csv")}}"
                few_shot_pool = "{{Engine.Data.DataPaths.File("eval/fpb_train.csv")}}"
                shots = 1
                max_examples = 6
                [output]
                dir = "{{Path.Combine(dir.Path, $"recipe_out_{accum}")}}"
                [parallel]
                zero = 1
                """);
            return path;
        }
        var single = await EngineProcess.RunEngine(["recipe", "--config", Recipe(2)], EngineProcess.BaseEnvironment(), Limit);
        Assert.True(single.ExitCode == 0, single.All);
        var multi = await EngineProcess.RunEngine(["launch", "--nproc-per-node", "2", "--", "recipe", "--config", Recipe(1)], EngineProcess.BaseEnvironment(), Limit);
        Assert.True(multi.ExitCode == 0, multi.All);
        // the report row: perplexities agree to the data-parallel tolerance, the few-shot count is the whole set
        static double[] Row(string stdout)
        {
            var line = stdout.Split('\n').First(l => l.StartsWith("| base |", StringComparison.Ordinal));
            return line.Split('|').Skip(3).Take(4).Select(c => double.Parse(c.Trim().TrimEnd('%').Replace(",", ""), CultureInfo.InvariantCulture)).ToArray();
        }
        var a = Row(single.Stdout);
        var b = Row(multi.Stdout);
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= 1e-3 * Math.Abs(a[i]) + 0.01, $"report column {i}: {b[i]} vs {a[i]}\n{multi.All}");
    }

    /// <summary>
    /// The shipped demo recipe (configs/demo_finance.toml through `engine demo`, shortened as DemoReproducibilityTests
    /// shortens it) launched on 2 ranks as 2 pipeline stages prints the table one process prints, timing columns aside:
    /// every stage trains through the stages (1F1B), and evaluation reads the saved weights whole on both ranks.
    /// </summary>
    [Fact]
    public async Task Launched_demo_on_two_pipeline_stages_prints_the_one_process_table()
    {
        EngineProcess.RequireMpi();
        using var dir = new TempFolder();
        string[] Demo(string outDir) => ["demo", "--scale", "0.02", "--set", $"output.dir={outDir}", "eval.max_examples=20", "eval.perplexity_tokens=2048", "tokenizer.train_chars=300000"];
        var limit = TimeSpan.FromMinutes(8);
        var single = await EngineProcess.RunEngine(Demo(Path.Combine(dir.Path, "one")), EngineProcess.BaseEnvironment(), limit);
        Assert.True(single.ExitCode == 0, single.All);
        var multi = await EngineProcess.RunEngine(["launch", "--nproc-per-node", "2", "--", .. Demo(Path.Combine(dir.Path, "two")), "parallel.pp=2"],
            EngineProcess.BaseEnvironment(), limit);
        Assert.True(multi.ExitCode == 0, multi.All);
        Assert.Contains("(stage 0 of 2), layout pp 2", multi.Stdout);
        // the table's rows without the last three cells (train s, tokens/s, eval s: wall-clock figures)
        static List<string> Table(string output) => output.Split('\n').Select(l => l.TrimEnd('\r'))
            .Where(l => l.StartsWith("| ", StringComparison.Ordinal) || l.StartsWith("|---", StringComparison.Ordinal))
            .Select(l => string.Join("|", l.Split('|')[..^4])).ToList();
        var a = Table(single.Stdout);
        var b = Table(multi.Stdout);
        Assert.Equal(6, a.Count);   // header, rule, base, naive, mixed, hybrid
        Assert.Equal(a.Count, b.Count);
        // text cells equal; figures within the pipeline's reduction-order tolerance (the gradient norm is summed per
        // stage and then across stages, so the weights differ from one process in the last bits: 1647.40 vs 1647.39)
        for (int r = 0; r < a.Count; r++)
        {
            string[] x = a[r].Split('|'), y = b[r].Split('|');
            Assert.Equal(x.Length, y.Length);
            for (int c = 0; c < x.Length; c++)
            {
                static double? Number(string cell) => double.TryParse(cell.Trim().TrimEnd('%').Replace(",", ""), NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : null;
                if (Number(x[c]) is double u && Number(y[c]) is double v)
                    Assert.True(Math.Abs(u - v) <= 1e-4 * Math.Abs(u) + 0.011, $"row {r} cell {c}: {y[c].Trim()} on two stages vs {x[c].Trim()} in one process\n{a[r]}\n{b[r]}");
                else Assert.Equal(x[c], y[c]);
            }
        }
    }

    static int FreePort()
    {
        var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        int port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    sealed class TempFolder : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("engine-dp-").FullName;
        public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
    }
}
