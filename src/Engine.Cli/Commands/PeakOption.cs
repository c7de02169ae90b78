using System.CommandLine;
using Engine.Training.Metrics;

namespace Engine.Cli.Commands;

/// <summary>
/// `--peak` of train, recipe, demo and bench train: pins the MFU peak for this process (and the ranks a launcher
/// starts with it) by setting <see cref="CpuRoof.Variable"/>, which <see cref="Throughput"/> reads first.
/// </summary>
public static class PeakOption
{
    public static Option<string?> Create() => new("--peak")
    {
        Description = "pin the MFU peak: GFLOP/s per device (per machine on the CPU), T suffix for TFLOP/s (e.g. 989T). "
            + "Default: a GPU's dense bf16 datasheet peak; on the CPU this machine's stored SGEMM calibration (engine bench gemm writes it)",
    };

    /// <summary>Validates the value (one-line error naming --peak) and pins it for the process.</summary>
    public static void Apply(ParseResult parse, Option<string?> option)
    {
        if (parse.GetValue(option) is not { } text) return;
        double gflops = CpuRoof.ParseGflops(text, "--peak");
        Environment.SetEnvironmentVariable(CpuRoof.Variable, gflops.ToString("R", System.Globalization.CultureInfo.InvariantCulture));
    }
}
