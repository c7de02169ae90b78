using Engine.Cuda.Kernels;

namespace Engine.Cuda.Tests.Gpu;

/// <summary>
/// Every kernel family once at a small shape, for compute-sanitizer memcheck and racecheck (gpu_run.sh phase 2; the
/// sanitizers slow kernels down 10-100x). The shapes still cross tile edges: T = 70 is one forward tile with a
/// partial end and two or more backward key tiles (the ordered dQ chain), 37 rows / 123 columns take the scalar
/// tails. Each case is the regular GPU test's body, so the checks against the references run under the sanitizer too.
/// </summary>
[Collection("gpu")]
public class SanitizerShapesGpuTests
{
    [Theory]
    [InlineData(32, true)]
    [InlineData(64, false)]
    [InlineData(96, true)]
    [InlineData(128, true)]
    public void AttentionV2(int d, bool causal) => new AttentionV2GpuTests().ForwardAndBackwardMatchFp64Reference(1, 70, 2, 1, d, causal);

    [Theory]
    [InlineData(64, true)]
    [InlineData(128, false)]
    public void AttentionV1(int d, bool causal) => new AttentionGpuTests().ForwardAndBackwardMatchFp64Reference(1, 70, 2, 1, d, causal);

    [Fact]
    public void RowOps()
    {
        new RmsNormGpuTests().ForwardBackwardMatchReference(37, 123, true);
        new RopeGpuTests().ForwardBackwardMatchReference(1, 37, 2, 64, 0L, RopeScaling.None, 1.0);
        new EmbeddingGpuTests().GatherAndDeterministicScatter(37, 50, 123);
        new CrossEntropyGpuTests().LossLseAndGradientMatchReference(7, 123, 1e-4f);
        new AdamWGpuTests().UpdateMatchesCpuReferenceAndNormIsDeterministic(1000, true);
    }

    [Fact]
    public void Elementwise()
    {
        new ElementwiseGpuTests().CastsAddScaleAxpyFillAtEveryTail(37);
        new ElementwiseGpuTests().MisalignedBuffersTakeTheScalarPath();
        new SwiGluGpuTests().ForwardAndBackwardMatchReference(37);
    }
}
