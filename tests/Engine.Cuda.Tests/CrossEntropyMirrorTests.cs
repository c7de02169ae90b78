using Engine.Cuda.Tests.Reference;

namespace Engine.Cuda.Tests;

/// <summary>
/// The cross-entropy kernel's online log-sum-exp on the CPU (<see cref="CrossEntropyMirror"/>): rows with -inf logits
/// (masked vocabulary) where some threads see only -inf give the fp64 reference's finite lse. The GPU runs the same
/// cases in CrossEntropyGpuTests.MaskedLogitsGiveFiniteLossesAndZeroGradients.
/// </summary>
public class CrossEntropyMirrorTests
{
    [Fact]
    public void TheMirrorIsTheKernelsOnlineAdd()
    {
        string root = Repo.Root() ?? throw new InvalidOperationException("repository root not found");
        string ce = File.ReadAllText(Path.Combine(root, "native", "crossentropy.cu"));
        Assert.Contains("if (x > m) { s = s * expf(m - x) + 1.f; m = x; }", ce);
        Assert.Contains("else if (x != -INFINITY) s += expf(x - m);", ce);
        Assert.Contains("const float sb = block_sum(m == -INFINITY ? 0.f : s * expf(m - mb), scratch);", ce);
    }

    [Theory]
    [InlineData(6, 1024)]
    [InlineData(6, 123)]
    public void MaskedRowsGiveTheReferenceLse(int rows, int vocab)
    {
        var (logits, targets, _) = CrossEntropyMirror.MaskedCase(rows, vocab, ignoreRow2: false);
        var (_, lse, _) = CrossEntropyReference.Compute(logits, targets, rows, vocab, 0f, null, 1f);
        int w = vocab % 8 == 0 ? 8 : 1;
        for (int r = 0; r < rows; r++)
        {
            float got = CrossEntropyMirror.RowLse(logits.AsSpan(r * vocab, vocab), w);
            Assert.True(float.IsFinite(got), $"row {r}: lse {got}");
            Assert.True(Math.Abs(got - lse[r]) <= 1e-5 * Math.Abs(lse[r]) + 1e-5, $"row {r}: lse {got} vs {lse[r]}");
        }
        // thread 0 sees only -inf in row 0: the old rule (no -inf guard) gives NaN there
        float m = float.NegativeInfinity, s = 0f;
        for (int i = 0; i < w; i++)
        {
            float x = logits[i];
            if (x > m) { s = s * MathF.Exp(m - x) + 1f; m = x; } else s += MathF.Exp(x - m);
        }
        Assert.True(float.IsNaN(s), "the case exercises a thread whose first values are all -inf");
    }
}
