using Engine.Core;
using Engine.Parallel;
using Engine.Training.Bench;

namespace Engine.Tests.Parallel;

/// <summary>`engine bench dp` on thread ranks (no timing asserted): the ZeRO-3 bytes it reports are the collectives the
/// step issues — 3 × (N − 1)/N of the padded parameter bytes per micro-batch, less the forward's last unit, which is
/// not gathered again for its backward — and the overlap figures are present and in range.</summary>
public class DataParallelBenchTests
{
    [Fact]
    public void AnalyticZero3BytesAreThreeTimesTheParameterBytesPerMicroBatch()
    {
        Assert.Equal(2 * 3 * 0.5 * 1000, DataParallelBenchmark.AnalyticBytes(3, 2, 2, 1000));
        Assert.Equal(3 * 0.75 * (2 * 500 + 1000), DataParallelBenchmark.AnalyticBytes(3, 4, 3, 1000, weightBytes: 500));   // bf16 weights
        Assert.Equal(0, DataParallelBenchmark.AnalyticBytes(3, 1, 2, 1000));
    }

    [Fact]
    public void BenchDpReportsZero3TrafficAndOverlap()
    {
        var o = new DataParallelBenchOptions { Hidden = 32, Layers = 2, Heads = 4, KvHeads = 2, Ffn = 64, Vocab = 64, Seq = 16, Batch = 2, GradAccum = 2, Steps = 1, Warmup = 1, Stages = [3] };
        var results = ThreadCommunicator.Run(2, c => DataParallelBenchmark.Run(CpuBackend.Instance, c, o, baselinePath: null));
        var entry = Assert.Single(results[0]!.Benchmarks);
        Assert.Equal("dp2_zero3", entry.Name);
        var p = entry.Params!;
        double padded = p["analytic_bytes_padded"]!.GetValue<double>(), bus = p["bus_bytes_per_rank_per_step"]!.GetValue<double>();
        long capacity = p["flat_elements"]!.GetValue<long>();
        // the lm_head unit (64 × 32, padded to 2 × 4096) is gathered once per micro-batch instead of twice; the gradient
        // norm's chunk partials are all-reduced once per step, and so is the step's loss gate (one float: every rank
        // skips a non-finite step alike, LossAccounting.FiniteGate)
        double kept = o.GradAccum * 0.5 * 8192 * 4, norm = 2 * 0.5 * (capacity / 4096) * 4, gate = 2 * 0.5 * 4;
        Assert.Equal(padded - kept + norm + gate, bus, 0);
        Assert.InRange(p["overlap"]!.GetValue<double>(), 0, 1);
        Assert.True(p["comm_alone_ms_per_step"]!.GetValue<double>() > 0);
    }
}
