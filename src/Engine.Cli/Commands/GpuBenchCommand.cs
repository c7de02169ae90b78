using System.CommandLine;
using Engine.Cuda;
using Engine.Cuda.Bench;
using Engine.Observability.Results;

namespace Engine.Cli.Commands;

/// <summary>`engine bench kernels`: per-kernel GPU microbenchmarks (Engine.Cuda.Bench) written as JSON.</summary>
public static class GpuBenchCommand
{
    /// <summary>Arguments of one run.</summary>
    public sealed record Args(string? OutDir, string? SdpaPath, string Preset, string Commit);

    public static Command Create()
    {
        var output = new Option<string?>("--out") { Description = "results folder: writes an engine.bench/1 kernels-<date>.json there (- prints the JSON instead)", DefaultValueFactory = _ => "benchmarks/results" };
        var sdpa = new Option<string?>("--sdpa") { Description = "JSON from benchmarks/scripts/sdpa_bench.py, same GPU and run: adds ratio_vs_sdpa to attention" };
        var preset = new Option<string>("--preset") { Description = "full (7B-step + small shapes, attention grid, 1 GiB copy, 8192^3 GEMM) or tiny (seconds)", DefaultValueFactory = _ => "full" };
        var commit = new Option<string>("--commit") { Description = "commit recorded in the JSON", DefaultValueFactory = _ => "unknown" };
        var cmd = new Command("kernels", "per-kernel GPU microbenchmarks: GB/s as a share of device-to-device copy, attention TFLOP/s vs PyTorch SDPA")
        {
            output, sdpa, preset, commit,
        };
        cmd.SetAction(parse => Cli.Guard(() => Execute(
            new Args(parse.GetValue(output), parse.GetValue(sdpa), parse.GetValue(preset)!, parse.GetValue(commit)!), Console.Out, Console.Error)));
        return cmd;
    }

    /// <summary>Runs the benchmarks; without a usable GPU prints "no CUDA device: ..." on <paramref name="stderr"/> and
    /// returns 2. Arguments are checked before the device is opened.</summary>
    public static int Execute(Args args, TextWriter stdout, TextWriter stderr)
    {
        var options = KernelBenchOptions.ForPreset(args.Preset) with
        {
            Commit = args.Commit,
            Sdpa = args.SdpaPath is { } path ? SdpaResults.Load(path) : null,
        };
        options.Validate();
        if (!CudaDevice.TryCreate(out var device, out string reason))
        {
            stderr.WriteLine(KernelBenchmarks.NoDeviceMessage(reason));
            return 2;
        }
        using (device)
        using (var lib = KernelLibrary.Load(device!))
        {
            stdout.WriteLine($"device: {device}; preset {options.Preset}; SDPA results: {(options.Sdpa is { } s ? $"{s.Count} timings" : "none")}");
            var report = KernelBenchmarks.Run(device!, lib, options, stdout.WriteLine);
            foreach (string line in BenchReport.Table(report)) stdout.WriteLine(line);
            // one writer for every suite: the kernel report read as engine.bench/1 (LegacyResults' kernel-bench mapping)
            var (commit, dirty) = MachineProbe.Git();
            var result = LegacyResults.Convert(report, "kernels") with
            {
                Suite = "kernels",
                Commit = args.Commit != "unknown" ? args.Commit : commit,
                Dirty = dirty,
                Command = "engine " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1)),
                ConvertedFrom = null,
                Extra = new System.Text.Json.Nodes.JsonObject { ["kernel_report"] = report.DeepClone() },
            };
            if (args.OutDir is { Length: > 0 } dir && dir != "-") stdout.WriteLine($"wrote {BenchResultIO.Write(result, dir)}");
            else stdout.Write(BenchResultIO.ToJson(result));
            int failed = report["measurements"]!.AsArray().Count(m => m?["error"] is not null);
            if (failed > 0) stderr.WriteLine($"{failed} measurement(s) failed: see their \"error\" fields");
            return failed > 0 ? 1 : 0;
        }
    }
}
