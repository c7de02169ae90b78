namespace Engine.Core;

/// <summary>What a GPU backend tells the metrics about its device (the CPU backend has no such device: host memory
/// is the process's). Optional: code checks <c>backend is IDeviceStats</c>.</summary>
public interface IDeviceStats
{
    /// <summary>The device's driver name ("NVIDIA H100 80GB HBM3"): the MFU peak is looked up by it.</summary>
    string DeviceName { get; }

    /// <summary>Bytes of device memory held by live tensors now.</summary>
    long DeviceBytesInUse { get; }

    /// <summary>Highest <see cref="DeviceBytesInUse"/> so far.</summary>
    long DevicePeakBytes { get; }
}
