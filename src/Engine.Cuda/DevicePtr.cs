namespace Engine.Cuda;

/// <summary>A device address (CUdeviceptr). Plain data: it is what the kernel params structs hold.</summary>
public readonly record struct DevicePtr(ulong Address)
{
    public static readonly DevicePtr Null = default;
    public bool IsNull => Address == 0;
    /// <summary>This address plus <paramref name="bytes"/>.</summary>
    public DevicePtr Offset(long bytes) => new((ulong)((long)Address + bytes));
    /// <summary>This address plus <paramref name="count"/> elements of <paramref name="elementSize"/> bytes.</summary>
    public DevicePtr Offset(long count, int elementSize) => Offset(count * elementSize);
    public bool IsAligned(int bytes) => Address % (ulong)bytes == 0;
    public override string ToString() => $"0x{Address:x}";
}
