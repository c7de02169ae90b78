using System.Buffers.Binary;

namespace Engine.Model.Export;

/// <summary>ggml tensor types this code writes and reads (the numbers are ggml's <c>enum ggml_type</c>).</summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q8_0 = 8,
    BF16 = 30,
}

/*
 * ggml's block quantizations, bit for bit as ggml-quants.c's reference quantizers (quantize_row_q8_0_ref,
 * quantize_row_q4_0_ref) write them — what convert_hf_to_gguf.py (q8_0) and llama-quantize (q4_0, no imatrix) produce.
 * A row of n values (n a multiple of 32) is n/32 blocks; d is stored as IEEE fp16 (round to nearest even).
 *
 * Q8_0, 34 bytes: d = max|x| / 127; q[j] = roundf(x[j] / d) (halves away from zero), int8.      x ≈ q·d
 * Q4_0, 18 bytes: m = the x of largest |x| (first one on ties), d = m / −8;
 *                 q[j] = min(15, trunc(x[j]/d + 8.5)), 4 bits; byte j holds q[j] (low nibble), q[j+16] (high).  x ≈ (q − 8)·d
 * Both multiply by id = 1/d (fp32, 0 when d = 0) rather than divide, as the reference does.
 *
 * Error per element (|x − x̂|), from q = round(x/d) and the fp16 rounding of d (|d − d16| ≤ 2⁻¹¹|d|):
 *   Q8_0  ≤ |d|/2 + 127·|d − d16|            (|q| ≤ 127, exact 127 at the block maximum)
 *   Q4_0  ≤ |d|/2 + 8·|d − d16| for x/d ≤ 7.5; the value x = −m sits at q = 16 → clamped to 15 with error |d|.
 */
public static class GgmlQuants
{
    public const int BlockSize = 32;
    public const int Q8_0Bytes = 34;
    public const int Q4_0Bytes = 18;

    /// <summary>Elements per block of a type (1 for unquantized types).</summary>
    public static int BlockElements(GgmlType t) => t is GgmlType.Q8_0 or GgmlType.Q4_0 ? BlockSize : 1;

    /// <summary>Bytes per block of a type.</summary>
    public static int BlockBytes(GgmlType t) => t switch
    {
        GgmlType.F32 => 4,
        GgmlType.F16 or GgmlType.BF16 => 2,
        GgmlType.Q8_0 => Q8_0Bytes,
        GgmlType.Q4_0 => Q4_0Bytes,
        _ => throw new NotSupportedException($"ggml type {(uint)t} is not supported (F32, F16, BF16, Q8_0, Q4_0)"),
    };

    /// <summary>Bytes of a row of n elements (n must be a multiple of the block size).</summary>
    public static long RowBytes(GgmlType t, long n)
    {
        int be = BlockElements(t);
        if (n % be != 0) throw new ArgumentException($"a {t} row needs a multiple of {be} elements, got {n}");
        return n / be * BlockBytes(t);
    }

    public static void QuantizeQ8_0(ReadOnlySpan<float> x, Span<byte> dst)
    {
        Check(x.Length, dst.Length, Q8_0Bytes);
        for (int b = 0; b < x.Length / BlockSize; b++)
        {
            var xb = x.Slice(b * BlockSize, BlockSize);
            var yb = dst.Slice(b * Q8_0Bytes, Q8_0Bytes);
            float amax = 0;
            foreach (float v in xb) amax = MathF.Max(amax, MathF.Abs(v));
            float d = amax / 127;
            float id = d != 0 ? 1f / d : 0f;
            BinaryPrimitives.WriteHalfLittleEndian(yb, (Half)d);
            for (int j = 0; j < BlockSize; j++) yb[2 + j] = (byte)(sbyte)MathF.Round(xb[j] * id, MidpointRounding.AwayFromZero);
        }
    }

    public static void DequantizeQ8_0(ReadOnlySpan<byte> src, Span<float> y)
    {
        Check(y.Length, src.Length, Q8_0Bytes);
        for (int b = 0; b < y.Length / BlockSize; b++)
        {
            var xb = src.Slice(b * Q8_0Bytes, Q8_0Bytes);
            float d = (float)BinaryPrimitives.ReadHalfLittleEndian(xb);
            for (int j = 0; j < BlockSize; j++) y[b * BlockSize + j] = (sbyte)xb[2 + j] * d;
        }
    }

    public static void QuantizeQ4_0(ReadOnlySpan<float> x, Span<byte> dst)
    {
        Check(x.Length, dst.Length, Q4_0Bytes);
        for (int b = 0; b < x.Length / BlockSize; b++)
        {
            var xb = x.Slice(b * BlockSize, BlockSize);
            var yb = dst.Slice(b * Q4_0Bytes, Q4_0Bytes);
            float amax = 0, max = 0;
            foreach (float v in xb)
                if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
            float d = max / -8;
            float id = d != 0 ? 1f / d : 0f;
            BinaryPrimitives.WriteHalfLittleEndian(yb, (Half)d);
            for (int j = 0; j < BlockSize / 2; j++)
            {
                // (int8_t)(x + 8.5f) truncates toward zero; x·id ≥ −8 keeps it non-negative
                int q0 = Math.Min(15, (int)(sbyte)(int)(xb[j] * id + 8.5f));
                int q1 = Math.Min(15, (int)(sbyte)(int)(xb[j + BlockSize / 2] * id + 8.5f));
                yb[2 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    public static void DequantizeQ4_0(ReadOnlySpan<byte> src, Span<float> y)
    {
        Check(y.Length, src.Length, Q4_0Bytes);
        for (int b = 0; b < y.Length / BlockSize; b++)
        {
            var xb = src.Slice(b * Q4_0Bytes, Q4_0Bytes);
            float d = (float)BinaryPrimitives.ReadHalfLittleEndian(xb);
            for (int j = 0; j < BlockSize / 2; j++)
            {
                y[b * BlockSize + j] = ((xb[2 + j] & 0x0F) - 8) * d;
                y[b * BlockSize + j + BlockSize / 2] = ((xb[2 + j] >> 4) - 8) * d;
            }
        }
    }

    /// <summary>Encodes fp32 values as the given type (F32, F16, BF16, Q8_0, Q4_0).</summary>
    public static void Quantize(GgmlType t, ReadOnlySpan<float> x, Span<byte> dst)
    {
        switch (t)
        {
            case GgmlType.F32:
                Check(x.Length, dst.Length, 4, 1);
                for (int i = 0; i < x.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(dst[(i * 4)..], x[i]);
                break;
            case GgmlType.F16:
                Check(x.Length, dst.Length, 2, 1);
                for (int i = 0; i < x.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(dst[(i * 2)..], (Half)x[i]);
                break;
            case GgmlType.BF16:
                Check(x.Length, dst.Length, 2, 1);
                for (int i = 0; i < x.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(dst[(i * 2)..], Engine.Cpu.BFloat16.FromFloat(x[i]));
                break;
            case GgmlType.Q8_0: QuantizeQ8_0(x, dst); break;
            case GgmlType.Q4_0: QuantizeQ4_0(x, dst); break;
            default: throw new NotSupportedException($"cannot encode ggml type {t}");
        }
    }

    /// <summary>Decodes the given type to fp32.</summary>
    public static void Dequantize(GgmlType t, ReadOnlySpan<byte> src, Span<float> y)
    {
        switch (t)
        {
            case GgmlType.F32:
                Check(y.Length, src.Length, 4, 1);
                for (int i = 0; i < y.Length; i++) y[i] = BinaryPrimitives.ReadSingleLittleEndian(src[(i * 4)..]);
                break;
            case GgmlType.F16:
                Check(y.Length, src.Length, 2, 1);
                for (int i = 0; i < y.Length; i++) y[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(src[(i * 2)..]);
                break;
            case GgmlType.BF16:
                Check(y.Length, src.Length, 2, 1);
                for (int i = 0; i < y.Length; i++) y[i] = Engine.Cpu.BFloat16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(src[(i * 2)..]));
                break;
            case GgmlType.Q8_0: DequantizeQ8_0(src, y); break;
            case GgmlType.Q4_0: DequantizeQ4_0(src, y); break;
            default: throw new NotSupportedException($"cannot decode ggml type {t}");
        }
    }

    static void Check(int values, int bytes, int blockBytes, int blockElems = BlockSize)
    {
        if (values % blockElems != 0) throw new ArgumentException($"{values} values are not a whole number of {blockElems}-element blocks");
        if ((long)values / blockElems * blockBytes != bytes)
            throw new ArgumentException($"{values} values need {(long)values / blockElems * blockBytes} bytes, the buffer has {bytes}");
    }
}
