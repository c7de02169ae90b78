using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace Engine.Cuda.Bench;

/// <summary>The GPU a report was measured on.</summary>
public sealed record BenchDeviceInfo(string Name, int ComputeMajor, int ComputeMinor, int Multiprocessors, long MemoryBytes, long L2Bytes,
    int CudaDriverVersion)
{
    /// <summary>The driver API version as "major.minor" (cuDriverGetVersion's 12080 → "12.8").</summary>
    public string CudaDriver => $"{CudaDriverVersion / 1000}.{CudaDriverVersion % 1000 / 10}";
}

/// <summary>One benchmarked call: its cost, its timing, or the error that stopped it.</summary>
public sealed record Measurement(string Group, KernelCost Cost, TimingResult? Timing, string? Error = null);

/// <summary>Turns measurements into the JSON report (pure: no GPU needed, tested on the CPU).</summary>
public static class BenchReport
{
    public const string Schema = "engine.kernel-bench/1";
    public const string CopyKernel = "copy_dtod";

    public static JsonObject Build(BenchDeviceInfo device, KernelBenchOptions options, IReadOnlyList<Measurement> measurements, DateTime utc)
    {
        double? copyGbps = null;
        foreach (var m in measurements)
            if (m.Cost.Kernel == CopyKernel && m.Timing is { } t) copyGbps = KernelCosts.GBps(m.Cost.Bytes, t.MedianMs);
        var list = new JsonArray();
        foreach (var m in measurements) list.Add(ToJson(m, copyGbps, options.Sdpa, device.L2Bytes));
        return new JsonObject
        {
            ["schema"] = Schema,
            ["preset"] = options.Preset,
            ["date"] = utc.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
            ["commit"] = options.Commit,
            ["device"] = new JsonObject
            {
                ["name"] = device.Name,
                ["compute_capability"] = $"{device.ComputeMajor}.{device.ComputeMinor}",
                ["multiprocessors"] = device.Multiprocessors,
                ["memory_bytes"] = device.MemoryBytes,
                ["l2_bytes"] = device.L2Bytes,
                ["cuda_driver_api"] = device.CudaDriver,
            },
            ["methodology"] = new JsonObject
            {
                ["timing"] = $"CUDA events around groups of back-to-back calls on one stream; {options.Timing.Warmup} warm-up calls, " +
                    $"{options.Timing.Repeats} groups sized to ~{options.Timing.TargetMsPerRepeat} ms; ms = median per-call time, ms_min/ms_max = spread",
                ["bytes"] = "each tensor a call reads counted once, each it writes once (scratch written then read counts twice); " +
                    "bytes_issued adds re-reads the kernel knowingly does; GB/s decimal",
                ["share_of_copy"] = "achieved GB/s / GB/s of cuMemcpyDtoD (2 x bytes: read + write) measured in the same run",
                ["attention_flops"] = "FlashAttention-2 convention: forward 4*B*H*T^2*D (x0.5 causal), backward 2.5 x forward",
                ["inputs"] = "random values (bf16 in [-1, 1], fp32 moments positive), never zeros; in-place kernels (crossentropy, adamw) rerun on their own output",
                ["fits_l2"] = "true when the bytes of one call fit in L2: the number may measure the cache, not HBM",
            },
            ["copy_gbps"] = copyGbps is { } g ? Round(g, 1) : null,
            ["sdpa"] = options.Sdpa is { } s ? s.Header.DeepClone() : null,
            ["measurements"] = list,
        };
    }

    public static JsonObject ToJson(Measurement m, double? copyGbps, SdpaResults? sdpa, long l2Bytes)
    {
        var c = m.Cost;
        var o = new JsonObject { ["kernel"] = c.Kernel, ["shape"] = c.Shape, ["group"] = m.Group };
        if (m.Timing is not { } t)
        {
            o["error"] = m.Error ?? "not measured";
            return o;
        }
        o["ms"] = Round(t.MedianMs, 5);
        o["ms_min"] = Round(t.MinMs, 5);
        o["ms_max"] = Round(t.MaxMs, 5);
        o["iters"] = t.Iters;
        o["repeats"] = t.Repeats;
        o["formula"] = c.Formula;
        if (c.IsMemoryBound)
        {
            double gbps = KernelCosts.GBps(c.Bytes, t.MedianMs);
            o["bytes"] = c.Bytes;
            o["gbps"] = Round(gbps, 1);
            o["share_of_copy"] = copyGbps is > 0 ? Round(gbps / copyGbps.Value, 3) : null;
            if (c.IssuedBytes > 0)
            {
                o["bytes_issued"] = c.IssuedBytes;
                o["gbps_issued"] = Round(KernelCosts.GBps(c.IssuedBytes, t.MedianMs), 1);
            }
            o["fits_l2"] = l2Bytes > 0 && c.Bytes <= l2Bytes;
        }
        if (c.Flops > 0)
        {
            double tflops = KernelCosts.Tflops(c.Flops, t.MedianMs);
            o["flops"] = c.Flops;
            o["tflops"] = Round(tflops, 2);
            bool? backward = c.Kernel switch
            {
                "attention_fwd" or "attention_v2_fwd" or "attention_sm90_fwd" => false,
                "attention_bwd" or "attention_v2_bwd" => true,
                _ => null,
            };
            if (backward is { } b)
            {
                if (sdpa is not null && sdpa.TryGet(b, c.Shape, out var s))
                {
                    o["sdpa_ms"] = Round(s.Ms, 5);
                    o["sdpa_tflops"] = Round(s.Tflops, 2);
                    o["sdpa_gqa"] = s.Gqa;
                    o["ratio_vs_sdpa"] = s.Tflops > 0 ? Round(tflops / s.Tflops, 3) : null;
                }
                else
                {
                    o["ratio_vs_sdpa"] = null;
                }
            }
        }
        return o;
    }

    /// <summary>kernels-&lt;device slug&gt;-&lt;yyyy-MM-dd&gt;.json ("NVIDIA H100 80GB HBM3" → "nvidia-h100-80gb-hbm3").</summary>
    public static string FileName(string deviceName, DateTime utc)
    {
        var slug = new StringBuilder();
        foreach (char ch in deviceName.ToLowerInvariant())
        {
            if (char.IsAsciiLetterOrDigit(ch)) slug.Append(ch);
            else if (slug.Length > 0 && slug[^1] != '-') slug.Append('-');
        }
        string s = slug.ToString().Trim('-');
        return $"kernels-{(s.Length == 0 ? "gpu" : s)}-{utc:yyyy-MM-dd}.json";
    }

    /// <summary>One line per measurement for the console: kernel, shape, ms, then GB/s and share, or TFLOP/s and ratio.</summary>
    public static IEnumerable<string> Table(JsonObject report)
    {
        yield return $"{"kernel",-22} {"shape",-44} {"ms",10} {"GB/s",8} {"of copy",7} {"TFLOP/s",8} {"SDPA",8} {"ratio",6}";
        if (report["measurements"] is not JsonArray list) yield break;
        foreach (var node in list)
        {
            if (node is not JsonObject m) continue;
            string head = $"{(string?)m["kernel"],-22} {(string?)m["shape"],-44}";
            if (m["error"] is { } e) { yield return $"{head} error: {(string?)e}"; continue; }
            yield return $"{head} {Num(m["ms"], "F4"),10} {Num(m["gbps"], "F0"),8} {Num(m["share_of_copy"], "F2"),7} " +
                $"{Num(m["tflops"], "F1"),8} {Num(m["sdpa_tflops"], "F1"),8} {Num(m["ratio_vs_sdpa"], "F2"),6}";
        }
    }

    private static string Num(JsonNode? n, string format) => n is null ? "" : ((double)n).ToString(format, CultureInfo.InvariantCulture);

    private static double Round(double v, int digits) => double.IsFinite(v) ? Math.Round(v, digits) : v;
}
