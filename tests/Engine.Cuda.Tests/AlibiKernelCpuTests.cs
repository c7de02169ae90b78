using System.Text.RegularExpressions;
using Engine.Cpu.Ops;
using Engine.Cuda.Kernels;

namespace Engine.Cuda.Tests;

/// <summary>
/// The ALiBi paths of the CUDA attention checked on the CPU (built, not yet run on a GPU): the kernels' slope function
/// (native/common/attention.cuh alibi_slope, mirrored here in fp32) against the CPU slopes BLOOM and Baichuan 2 use,
/// the bias expressions of attention_v2.cu against the fragment layout the warp-level tests establish (lane l holds
/// rows l/4 and l/4 + 8, columns 2(l%4) and 2(l%4) + 1 of each 16 x 8 tile), and every *_alibi entry point the
/// launchers can name present in the sources. The GPU runs are AlibiAttentionGpuTests.
/// </summary>
public class AlibiKernelCpuTests
{
    /// <summary>alibi_slope, as the kernel computes it (fp32; exp2f within 2 ulp of 2^x).</summary>
    static float KernelSlope(int h, int heads, float maxBias)
    {
        int n = 1 << (31 - System.Numerics.BitOperations.LeadingZeroCount((uint)heads));
        float e = h < n ? (float)(h + 1) / n : (float)(2 * (h - n) + 1) / (2 * n);
        return (float)Math.Pow(2.0, -maxBias * e);
    }

    [Fact]
    public void KernelSlopesAreTheCpuSlopes()
    {
        foreach (float b in new[] { 8f, 4f })
            for (int heads = 1; heads <= 128; heads++)
            {
                var cpu = AttentionCpu.AlibiSlopes(heads, b);
                for (int h = 0; h < heads; h++)
                {
                    float k = KernelSlope(h, heads, b);
                    Assert.True(Math.Abs(k - cpu[h]) <= 2.5e-7 * cpu[h], $"H {heads} h {h} b {b}: kernel {k:R} vs cpu {cpu[h]:R}");
                }
            }
        string root = Repo.Root() ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
        string header = File.ReadAllText(Path.Combine(root, "native", "common", "attention.cuh"));
        Assert.Contains("const int n = 1 << (31 - __clz((int)heads));", header);
        Assert.Contains("const float e = h < n ? (float)(h + 1) / (float)n : (float)(2 * (h - n) + 1) / (float)(2 * n);", header);
        Assert.Contains("return exp2f(-max_bias * e);", header);
    }

    [Fact]
    public void ForwardBiasMatchesTheFragmentLayout()
    {
        // attention_v2.cu fwd_tile: bias0[i] = ab2 (n0 + 2 tq - (row_base + 16 mt + g + 8 i)); element bias =
        // bias0[e / 2] + ab2 (8 nt + e % 2) — must be ab2 (key - row) of the element the lane holds
        const float ab2 = 0.37f;
        foreach (var (n0, rowBase) in new[] { (0L, 0L), (64L, 128L), (256L, 96L), (4032L, 4064L) })
            for (int mt = 0; mt < 2; mt++)
                for (int l = 0; l < 32; l++)
                {
                    int g = l >> 2, tq = l & 3;
                    var bias0 = new float[2];
                    for (int i = 0; i < 2; i++) bias0[i] = ab2 * (float)(n0 + tq * 2 - (rowBase + mt * 16 + g + i * 8));
                    for (int nt = 0; nt < 16; nt++)
                        for (int e = 0; e < 4; e++)
                        {
                            long row = rowBase + mt * 16 + l / 4 + (e >> 1) * 8, key = n0 + nt * 8 + 2 * (l % 4) + (e & 1);
                            float bias = MathF.FusedMultiplyAdd(ab2, nt * 8 + (e & 1), bias0[e >> 1]);
                            Assert.Equal(ab2 * (key - row), bias, 1e-3f);
                        }
                }
        string src = Source("attention_v2.cu");
        Assert.Contains("bias0[i] = ab2 * (float)(n0 + tq * 2 - (row_base + mt * 16 + g + i * 8));", src);
        Assert.Contains("x += fmaf(ab2, (float)(nt * 8 + (e & 1)), bias0[e >> 1]);", src);
    }

    [Fact]
    public void BackwardBiasMatchesTheTransposedFragmentLayout()
    {
        // attention_v2.cu bwd_tile computes S^T (keys as rows): lane l holds keys key0 + l/4 (+8), queries m0 + qc,
        // qc = 8 nt + 2(l%4) + e%2; the bias is ab2 (kq0 + 8 (e/2) - qc), kq0 = key0 - m0 + g
        foreach (var (key0, m0) in new[] { (0L, 0L), (64L, 0L), (16L, 64L), (4000L, 3968L) })
            for (int l = 0; l < 32; l++)
            {
                int g = l >> 2, tq = l & 3;
                long kq0 = key0 - m0 + g;
                for (int nt = 0; nt < 8; nt++)
                    for (int e = 0; e < 4; e++)
                    {
                        int qc = nt * 8 + tq * 2 + (e & 1);
                        long key = key0 + l / 4 + (e >> 1) * 8, query = m0 + qc;
                        Assert.Equal(key - query, kq0 + (e >> 1) * 8 - qc);
                    }
            }
        string src = Source("attention_v2.cu");
        Assert.Contains("const float kq0 = ALIBI ? (float)(key0 - m0 + g) : 0.f;", src);
        Assert.Contains("x = fmaf(ab2, kq0 + (float)((e >> 1) * 8 - qc), x);", src);
    }

    [Fact]
    public void EveryAlibiEntryPointTheLaunchersNameExists()
    {
        var names = new List<(string File, string Kernel)>();
        foreach (int d in AttentionShape.V1HeadDims)
            foreach (var k in new[] { "attention_forward", "attention_backward_dkdv", "attention_backward_dq" })
                names.Add(("attention.cu", $"{k}_alibi_d{d}"));
        foreach (int d in KernelTraits.AttnV2HeadDims)
            foreach (var k in new[] { "attention_v2_forward", "attention_v2_backward" })
                names.Add(("attention_v2.cu", $"{k}_alibi_d{d}"));
        foreach (int d in KernelTraits.AttnSm90HeadDims) names.Add(("attention_sm90.cu", $"attention_sm90_forward_alibi_d{d}"));
        foreach (var (file, kernel) in names)
            Assert.Matches(new Regex($@"ENGINE_KERNEL void __launch_bounds__\([^)]*\)\s+{kernel}\([^)]*float alibi_max_bias\)"), Source(file));
        Assert.Equal("_alibi", new AttentionShape(1, 1, 1, 1, 64, 8f).Variant);
        Assert.Equal("", new AttentionShape(1, 1, 1, 1, 64).Variant);
        Assert.Throws<ArgumentException>(() => new AttentionShape(1, 1, 1, 1, 64, float.NaN).Validate());
    }

    static string Source(string file)
    {
        string root = Repo.Root() ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
        return File.ReadAllText(Path.Combine(root, "native", file));
    }
}
