using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Core.Distributed;

namespace Engine.Parallel;

public sealed record CommBenchOptions
{
    public long MinBytes { get; init; } = 4 << 10;
    public long MaxBytes { get; init; } = 64 << 20;
    public DType DType { get; init; } = DType.F32;
    public int Warmup { get; init; } = 2;
    /// <summary>Timed iterations per size; null: about 256 MiB of payload per size, 3 to 100 iterations.</summary>
    public int? Iters { get; init; }
}

/// <summary>
/// Bus bandwidth of all_reduce, reduce_scatter, all_gather and broadcast over doubling sizes, with nccl-tests'
/// definitions: bytes = the full buffer (reduce-scatter's input, all-gather's output); time = the mean per iteration,
/// averaged over ranks; algbw = bytes / time; busbw = algbw × 2(n−1)/n for all-reduce, × (n−1)/n for reduce-scatter
/// and all-gather, × 1 for broadcast. Timed buffers hold zeros (repeated in-place sums stay finite); after timing,
/// each operation and size runs once more on the self-test's exact integer pattern and must equal the reference.
/// </summary>
public static class CommBenchmark
{
    public static readonly string[] Operations = ["all_reduce", "reduce_scatter", "all_gather", "broadcast"];

    public static JsonObject Run(ICommunicator comm, CommBenchOptions o, Action<string>? log = null)
    {
        if (o.MinBytes < 4 || o.MaxBytes < o.MinBytes) throw new ArgumentException($"byte range {o.MinBytes}..{o.MaxBytes} is empty");
        var be = comm.Backend;
        int n = comm.WorldSize, elem = o.DType.Size();
        var results = new JsonArray();
        bool allOk = true;
        if (comm.Rank == 0)
            log?.Invoke($"{"op",-15}{"bytes",12}{"iters",7}{"time_us",12}{"algbw_GB/s",12}{"busbw_GB/s",12}  check");
        foreach (var op in Operations)
            for (long bytes = o.MinBytes; bytes <= o.MaxBytes; bytes *= 2)
            {
                // Element count: a multiple of the world size (reduce-scatter and all-gather split the buffer evenly).
                long count = Math.Max(n, bytes / elem / n * n);
                long actualBytes = count * elem;
                int iters = o.Iters ?? (int)Math.Clamp((256L << 20) / Math.Max(actualBytes, 1), 3, 100);
                using var full = be.Zeros([(int)count], o.DType);
                using var part = be.Zeros([(int)(count / n)], o.DType);
                ICommWork Issue() => op switch
                {
                    "all_reduce" => comm.AllReduce(full),
                    "reduce_scatter" => comm.ReduceScatter(full, part),
                    "all_gather" => comm.AllGather(part, full),
                    _ => comm.Broadcast(full, 0),
                };
                for (int i = 0; i < o.Warmup; i++) Issue().Wait();
                comm.Barrier();
                var clock = Stopwatch.StartNew();
                for (int i = 0; i < iters; i++) Issue().Wait();
                comm.Barrier();   // a GPU communicator's Wait does not block the host: the barrier does
                double seconds = clock.Elapsed.TotalSeconds / iters;
                Span<double> t = [seconds];
                comm.AllReduce(t, ReduceOp.Avg);
                seconds = t[0];
                double algbw = actualBytes / seconds / 1e9;
                double factor = op switch { "all_reduce" => 2.0 * (n - 1) / n, "broadcast" => 1, _ => (double)(n - 1) / n };
                string check = Check(comm, op, count, o.DType);
                allOk &= check == "ok";
                results.Add(new JsonObject
                {
                    ["op"] = op,
                    ["bytes"] = actualBytes,
                    ["count"] = count,
                    ["iters"] = iters,
                    ["time_us"] = Math.Round(seconds * 1e6, 2),
                    ["algbw_gbps"] = Math.Round(algbw, 4),
                    ["busbw_gbps"] = Math.Round(algbw * factor, 4),
                    ["check"] = check,
                });
                if (comm.Rank == 0)
                    log?.Invoke(string.Create(CultureInfo.InvariantCulture,
                        $"{op,-15}{actualBytes,12}{iters,7}{seconds * 1e6,12:F1}{algbw,12:F3}{algbw * factor,12:F3}  {check}"));
            }
        return new JsonObject
        {
            ["benchmark"] = "comm",
            ["kind"] = comm.Kind,
            ["world_size"] = n,
            ["backend"] = be.Name,
            ["dtype"] = o.DType.ToString(),
            ["definitions"] = "nccl-tests: time = mean per iteration averaged over ranks; algbw = bytes / time; busbw = algbw x 2(n-1)/n (all_reduce), (n-1)/n (reduce_scatter, all_gather; bytes = the full buffer), 1 (broadcast)",
            ["host"] = Environment.MachineName,
            ["cores"] = Environment.ProcessorCount,
            ["all_checks_ok"] = allOk,
            ["results"] = results,
        };
    }

    /// <summary>One run of <paramref name="op"/> on the exact pattern, compared with the reference on every rank; the
    /// verdict is agreed by all ranks (a host all-reduce of the failure count).</summary>
    static string Check(ICommunicator comm, string op, long count, DType dtype)
    {
        var be = comm.Backend;
        int n = comm.WorldSize, me = comm.Rank;
        long per = count / n;
        float[] Pattern(int rank, long len)
        {
            var v = new float[len];
            for (long i = 0; i < len; i++) v[i] = CommSelfTest.Value(rank, i, dtype);
            return v;
        }
        float Sum(long i)
        {
            double s = 0;
            for (int q = 0; q < n; q++) s += CommSelfTest.Value(q, i, dtype);
            return (float)s;
        }
        float[] got;
        Func<long, float> expected;
        switch (op)
        {
            case "all_reduce":
                {
                    using var t = be.Empty([(int)count], dtype);
                    be.Upload(t, Pattern(me, count));
                    comm.AllReduce(t).Wait();
                    got = t.ToArray();
                    expected = Sum;
                    break;
                }
            case "reduce_scatter":
                {
                    using var t = be.Empty([(int)count], dtype);
                    using var o = be.Empty([(int)per], dtype);
                    be.Upload(t, Pattern(me, count));
                    comm.ReduceScatter(t, o).Wait();
                    got = o.ToArray();
                    expected = i => Sum(me * per + i);
                    break;
                }
            case "all_gather":
                {
                    using var t = be.Empty([(int)per], dtype);
                    using var o = be.Empty([(int)count], dtype);
                    be.Upload(t, Pattern(me, per));
                    comm.AllGather(t, o).Wait();
                    got = o.ToArray();
                    expected = i => CommSelfTest.Value((int)(i / per), i % per, dtype);
                    break;
                }
            default:
                {
                    using var t = be.Empty([(int)count], dtype);
                    be.Upload(t, Pattern(me, count));
                    comm.Broadcast(t, 0).Wait();
                    got = t.ToArray();
                    expected = i => CommSelfTest.Value(0, i, dtype);
                    break;
                }
        }
        long bad = -1;
        for (long i = 0; i < got.Length && bad < 0; i++)
            if (got[i] != expected(i)) bad = i;
        Span<double> failures = [bad < 0 ? 0 : 1];
        comm.AllReduce(failures, ReduceOp.Sum);
        if (bad >= 0) return $"FAILED on rank {me}: element {bad} is {got[bad]}, expected {expected(bad)}";
        return failures[0] == 0 ? "ok" : $"FAILED on {failures[0]} rank(s)";
    }
}
