using System.Runtime.CompilerServices;

namespace Engine.Cpu;

/// <summary>
/// bfloat16 conversions. Storage is the upper 16 bits of an IEEE fp32; float → bf16 rounds to nearest, ties to even;
/// NaN stays NaN (quiet), ±Inf stays ±Inf, overflow past the largest finite bf16 rounds to Inf as IEEE requires.
/// </summary>
public static class BFloat16
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromFloat(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u) return (ushort)((bits >> 16) | 0x0040u); // NaN: keep sign, force quiet
        uint rounding = 0x7FFFu + ((bits >> 16) & 1u);
        return (ushort)((bits + rounding) >> 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(ushort value) => BitConverter.UInt32BitsToSingle((uint)value << 16);

    /// <summary>Rounds an fp32 value through bf16 and back (the value a bf16 store would keep).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Round(float value) => ToFloat(FromFloat(value));

    public static void FromFloat(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException($"destination holds {dst.Length} elements, source {src.Length}", nameof(dst));
        for (int i = 0; i < src.Length; i++) dst[i] = FromFloat(src[i]);
    }

    public static void ToFloat(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException($"destination holds {dst.Length} elements, source {src.Length}", nameof(dst));
        for (int i = 0; i < src.Length; i++) dst[i] = ToFloat(src[i]);
    }

    /// <summary>Rounds every element through bf16 in place.</summary>
    public static void RoundInPlace(Span<float> values)
    {
        for (int i = 0; i < values.Length; i++) values[i] = Round(values[i]);
    }
}
