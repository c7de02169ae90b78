using System.CommandLine;
using System.Text.Json;
using Engine.Training.Bench;

namespace Engine.Cli.Commands;

public static class BenchCommand
{
    public static Command Create()
    {
        var cmd = new Command("bench", "benchmarks measured against a reference in the same run");
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var python = new Option<string?>("--python") { Description = "interpreter with torch for the PyTorch peer ('none' to skip)", DefaultValueFactory = _ => "/usr/bin/python3" };
        var steps = new Option<int>("--steps") { Description = "timed steps (median reported)", DefaultValueFactory = _ => 6 };
        var output = new Option<string?>("--out") { Description = "results folder", DefaultValueFactory = _ => "benchmarks/results" };
        var train = new Command("train", "tokens/s of a full training step (~12M-parameter Llama), engine vs PyTorch") { device, python, steps, output };
        train.SetAction(parse => Cli.Guard(() =>
        {
            string? py = parse.GetValue(python);
            if (py == "none") py = null;
            var o = new TrainBenchOptions { Steps = parse.GetValue(steps) };
            var result = TrainBenchmark.Run(Cli.Backend(parse.GetValue(device)!), o, py, Console.WriteLine);
            string json = result.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
            Console.WriteLine(json);
            if (result["ratio_engine_over_pytorch"] is { } r)
                Console.WriteLine($"engine {result["engine"]!["tokens_per_s"]!.GetValue<double>():F0} tok/s vs PyTorch {result["pytorch"]!["tokens_per_s"]!.GetValue<double>():F0} tok/s: ratio {r.GetValue<double>():F2}x");
            if (parse.GetValue(output) is { } dir)
            {
                Directory.CreateDirectory(dir);
                string path = Path.Combine(dir, $"train-{parse.GetValue(device)}-{DateTime.UtcNow:yyyy-MM-dd}.json");
                File.WriteAllText(path, json);
                Console.WriteLine($"wrote {path}");
            }
            return 0;
        }));
        cmd.Subcommands.Add(train);

        var evalOut = new Option<string?>("--out") { Description = "results folder", DefaultValueFactory = _ => "benchmarks/results" };
        var evalDevice = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var eval = new Command("eval", "evaluation tokens/s (perplexity) and generation tokens/s with and without KV cache") { evalDevice, evalOut };
        eval.SetAction(parse => Cli.Guard(() =>
        {
            var result = EvalBenchmark.Run(Cli.Backend(parse.GetValue(evalDevice)!), Console.WriteLine);
            string json = result.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
            Console.WriteLine(json);
            if (parse.GetValue(evalOut) is { } dir)
            {
                Directory.CreateDirectory(dir);
                string path = Path.Combine(dir, $"eval-{parse.GetValue(evalDevice)}-{DateTime.UtcNow:yyyy-MM-dd}.json");
                File.WriteAllText(path, json);
                Console.WriteLine($"wrote {path}");
            }
            return 0;
        }));
        cmd.Subcommands.Add(eval);
        cmd.Subcommands.Add(GpuBenchCommand.Create());
        cmd.Subcommands.Add(CreateDataParallel());
        cmd.Subcommands.Add(CommBenchCommand.Create());
        return cmd;
    }

    /// <summary>`engine bench dp`: data parallelism and ZeRO in this process's world (start it under engine launch).</summary>
    static Command CreateDataParallel()
    {
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var steps = new Option<int>("--steps") { Description = "timed steps per ZeRO stage", DefaultValueFactory = _ => 6 };
        var stages = new Option<string>("--stages") { Description = "ZeRO stages to run, comma-separated", DefaultValueFactory = _ => "0,1,2" };
        var bucket = new Option<double>("--bucket-mb") { Description = "gradient bucket size", DefaultValueFactory = _ => 25 };
        var baseline = new Option<string?>("--baseline") { Description = "a one-rank dp result file of the same shape: scaling efficiency against it" };
        var output = new Option<string?>("--out") { Description = "results folder", DefaultValueFactory = _ => "benchmarks/results" };
        var cmd = new Command("dp", "data parallelism / ZeRO-1 / ZeRO-2: step time, tokens/s, bytes per rank per step vs analytic, scaling efficiency (run under engine launch)")
            { device, steps, stages, bucket, baseline, output };
        cmd.SetAction(parse => Cli.Guard(() =>
        {
            var (backend, comm) = Cli.Distributed(parse.GetValue(device)!);
            using var _ = comm;
            int[] st;
            try { st = parse.GetValue(stages)!.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(x => int.Parse(x.Trim(), System.Globalization.CultureInfo.InvariantCulture)).ToArray(); }
            catch (FormatException) { throw new ArgumentException($"--stages must be comma-separated integers, got '{parse.GetValue(stages)}'"); }
            var o = new DataParallelBenchOptions { Steps = parse.GetValue(steps), Stages = st, BucketMb = parse.GetValue(bucket) };
            var result = DataParallelBenchmark.Run(backend, comm, o, parse.GetValue(baseline), comm.Rank == 0 ? Console.WriteLine : null);
            if (result != null && parse.GetValue(output) is { } dir)
                Console.WriteLine($"wrote {Engine.Observability.Results.BenchResultIO.Write(result, dir)}");
            return 0;
        }));
        return cmd;
    }
}
