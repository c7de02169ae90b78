using System.Globalization;

namespace Engine.Core;

/// <summary>
/// A device allocation failed after the allocator had returned its cached blocks and retried. The message is one
/// line the CLI prints as is: the requested bytes, what they were for (a tensor's dtype and shape, or a buffer's
/// role, when the caller knows it), the device's free and total memory at the failure, and what this process holds.
/// </summary>
public sealed class DeviceOutOfMemoryException : Exception
{
    /// <summary>Bytes the caller asked for (before size-class rounding).</summary>
    public long RequestedBytes { get; }
    /// <summary>Free and total device memory when the allocation failed; null when the device could not say.</summary>
    public long? FreeBytes { get; }
    public long? TotalBytes { get; }
    /// <summary>Bytes this process's allocator held in live buffers at the failure.</summary>
    public long InUseBytes { get; }
    /// <summary>What the memory was for ("tensor BF16[8, 2048, 4096]"); null when unknown.</summary>
    public string? What { get; }

    public DeviceOutOfMemoryException(long requestedBytes, long? freeBytes, long? totalBytes, long inUseBytes, string? what = null)
        : base(Format(requestedBytes, freeBytes, totalBytes, inUseBytes, what))
    {
        RequestedBytes = requestedBytes;
        FreeBytes = freeBytes;
        TotalBytes = totalBytes;
        InUseBytes = inUseBytes;
        What = what;
    }

    /// <summary>The same failure, saying what the memory was for (callers that know the tensor rethrow this).</summary>
    public DeviceOutOfMemoryException For(string what) => new(RequestedBytes, FreeBytes, TotalBytes, InUseBytes, what);

    /// <summary>"1.50 GiB (1610612736 bytes)"; below 1 MiB in KiB.</summary>
    public static string Bytes(long bytes)
    {
        var ci = CultureInfo.InvariantCulture;
        string unit = bytes >= 1L << 30 ? (bytes / (double)(1L << 30)).ToString("F2", ci) + " GiB"
            : bytes >= 1L << 20 ? (bytes / (double)(1L << 20)).ToString("F1", ci) + " MiB"
            : (bytes / 1024.0).ToString("F1", ci) + " KiB";
        return $"{unit} ({bytes.ToString(ci)} bytes)";
    }

    private static string Format(long requested, long? free, long? total, long inUse, string? what)
    {
        string device = free is { } f && total is { } t ? $"the device has {Bytes(f)} free of {Bytes(t)}" : "the device's free memory is unknown";
        return $"device out of memory allocating {Bytes(requested)}{(what is null ? "" : " for " + what)}: {device}, this process's " +
            $"tensors hold {Bytes(inUse)} (cached blocks were already released); reduce train.batch_size or train.seq_len, " +
            "or set model.recompute = \"selective\" or \"full\"";
    }
}
