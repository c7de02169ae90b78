using Engine.Cpu;

namespace Engine.Tests.Ops;

public class BFloat16Tests
{
    [Theory]
    [InlineData(1.0f, (ushort)0x3F80)]
    [InlineData(-2.0f, (ushort)0xC000)]
    [InlineData(0.0f, (ushort)0x0000)]
    [InlineData(float.PositiveInfinity, (ushort)0x7F80)]
    public void ExactValues(float f, ushort bits) => Assert.Equal(bits, BFloat16.FromFloat(f));

    [Fact]
    public void RoundsToNearestTiesToEven()
    {
        // 1 + 2^-8 is exactly half-way between bf16 1.0 (even mantissa) and 1 + 2^-7: ties go to even (1.0)
        Assert.Equal(0x3F80, BFloat16.FromFloat(1f + MathF.Pow(2, -8)));
        // 1 + 3·2^-8 is half-way between 1 + 2^-7 (odd) and 1 + 2^-6 (even): goes up to even
        Assert.Equal(0x3F82, BFloat16.FromFloat(1f + 3 * MathF.Pow(2, -8)));
        // just above half-way rounds up
        Assert.Equal(0x3F81, BFloat16.FromFloat(BitConverter.UInt32BitsToSingle(0x3F808001)));
    }

    [Fact]
    public void NaNStaysNaNAndOverflowGoesToInfinity()
    {
        Assert.True(float.IsNaN(BFloat16.ToFloat(BFloat16.FromFloat(float.NaN))));
        Assert.True(float.IsNaN(BFloat16.ToFloat(BFloat16.FromFloat(BitConverter.UInt32BitsToSingle(0x7F800001)))));
        Assert.Equal(float.PositiveInfinity, BFloat16.ToFloat(BFloat16.FromFloat(float.MaxValue)));
    }

    [Fact]
    public void RoundTripOfEveryBf16ValueIsExact()
    {
        for (int b = 0; b < 65536; b++)
        {
            float f = BFloat16.ToFloat((ushort)b);
            if (float.IsNaN(f)) continue;
            Assert.Equal((ushort)b, BFloat16.FromFloat(f));
        }
    }
}
