namespace Engine.Core;

/// <summary>Element types a tensor can hold. Compute on the CPU is fp32; bf16 is a storage type.</summary>
public enum DType { F32, BF16, I32 }

public static class DTypeExtensions
{
    public static int Size(this DType t) => t switch { DType.F32 => 4, DType.BF16 => 2, DType.I32 => 4, _ => throw new ArgumentOutOfRangeException(nameof(t)) };
}
