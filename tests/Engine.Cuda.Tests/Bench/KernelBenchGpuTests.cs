using Engine.Cuda.Bench;

namespace Engine.Cuda.Tests.Bench;

/// <summary>The whole harness on the tiny preset: every measurement runs and reports a rate (skipped without a GPU).</summary>
[Collection("gpu")]
public class KernelBenchGpuTests
{
    [Fact]
    public void TinyPresetMeasuresEveryKernel()
    {
        var g = GpuTest.Require();
        var lines = new List<string>();
        var report = KernelBenchmarks.Run(g.Device, g.Kernels, KernelBenchOptions.ForPreset("tiny"), lines.Add);
        var rows = report["measurements"]!.AsArray();
        Assert.Equal(rows.Count, lines.Count);
        Assert.True((double)report["copy_gbps"]! > 0);
        var kernels = new HashSet<string>();
        foreach (var node in rows)
        {
            var row = node!.AsObject();
            string name = (string)row["kernel"]!;
            kernels.Add(name);
            Assert.True(row["error"] is null, $"{name} [{row["shape"]}]: {row["error"]}");
            Assert.True((double)row["ms"]! > 0, $"{name}: ms");
            if (row["bytes"] is not null)
            {
                Assert.True((double)row["gbps"]! > 0, $"{name}: gbps");
                Assert.True((double)row["share_of_copy"]! > 0, $"{name}: share_of_copy");
            }
            if (row["flops"] is not null) Assert.True((double)row["tflops"]! > 0, $"{name}: tflops");
        }
        string[] expected = ["copy_dtod", "rmsnorm_fwd", "rmsnorm_bwd", "swiglu_fwd", "swiglu_bwd", "rope_fwd", "rope_bwd",
            "embedding_fwd", "embedding_bwd", "crossentropy_fwd_bwd", "adamw_update_f32", "cast_f32_to_bf16", "cast_bf16_to_f32",
            "add_bf16", "accumulate_bf16_f32", "attention_fwd", "attention_bwd", "attention_v2_fwd", "attention_v2_bwd", "cublas_gemm_bf16"];
        Assert.Empty(expected.Except(kernels));
    }
}
