using Engine.Model;
using Engine.Observability;

namespace Engine.Tests.Dashboard;

/// <summary>MFU against a hand computation (PaLM appendix B) for the 12M benchmark model.</summary>
public class MfuTests
{
    [Fact]
    public void FlopsPerTokenMatchesTheHandComputation()
    {
        // D=384, L=6, H=6, Q=64, KV heads=2, F=1024, V=8192, T=256, untied head.
        // per layer: q 384·384 + k 384·128 + v 384·128 + o 384·384 + gate/up/down 3·384·1024 + 2 norms·384 = 1,573,632
        // non-embedding = 6·1,573,632 + final norm 384 = 9,442,176; N = that + LM head 8192·384 = 12,587,904
        // 6N = 75,527,424; 12·L·H·Q·T = 12·6·6·64·256 = 7,077,888; total 82,605,312
        Assert.Equal(82_605_312, Mfu.FlopsPerToken(12_587_904, layers: 6, heads: 6, headDim: 64, seqLen: 256));
        var cfg = new LlamaConfig { VocabSize = 8192, HiddenSize = 384, IntermediateSize = 1024, NumLayers = 6, NumHeads = 6, NumKvHeads = 2, MaxPositionEmbeddings = 256 }.Validate();
        Assert.Equal(12_587_904, cfg.NonEmbeddingParameterCount() + (long)cfg.VocabSize * cfg.HiddenSize);
        Assert.Equal(cfg.TrainingFlopsPerToken(256), Mfu.FlopsPerToken(12_587_904, 6, 6, 64, 256));
    }

    [Fact]
    public void MfuIsAchievedOverPeak()
    {
        // 1,000 tokens/s × 82,605,312 FLOPs = 82.605312 GFLOP/s; against a 200 GFLOP/s roof: 0.41302656.
        Assert.Equal(0.41302656, Mfu.Compute(1000, 82_605_312, 200e9), 12);
        // A 7.5 GFLOP/token model at 40,000 tokens/s on a 989 TFLOP/s H100: 3e14 / 9.89e14 = 0.30333...
        Assert.Equal(3e14 / 9.89e14, Mfu.Compute(40_000, 7.5e9, 989e12), 12);
        Assert.Throws<ArgumentException>(() => Mfu.Compute(1000, 1e6, 0));
        Assert.Throws<ArgumentException>(() => Mfu.FlopsPerToken(0, 1, 1, 1, 1));
    }

    [Theory]
    [InlineData("NVIDIA H100 80GB HBM3", 989.0)]
    [InlineData("NVIDIA H100 PCIe", 756.0)]
    [InlineData("NVIDIA H100 NVL", 835.0)]
    [InlineData("NVIDIA H200", 989.0)]
    [InlineData("NVIDIA A100-SXM4-80GB", 312.0)]
    [InlineData("NVIDIA GeForce GTX 1080", null)]
    public void DenseBf16PeaksByName(string name, double? tflops) => Assert.Equal(tflops, Mfu.PeakBf16Tflops(name));
}
