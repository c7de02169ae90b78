using System.Runtime.InteropServices;
using Engine.Cpu;

namespace Engine.Cuda.Bench;

/// <summary>
/// Random source data for benchmark buffers: one 4 MiB chunk per kind, uploaded once and tiled over a buffer with
/// device-to-device copies, so gigabyte buffers fill in milliseconds and no kernel is ever timed on zeros.
/// </summary>
public sealed class RandomChunks : IDisposable
{
    public enum Kind { Bf16Signed, F32Signed, F32Positive }

    private const int ChunkBytes = 4 << 20;
    private readonly DeviceBuffer[] _chunks;

    public RandomChunks(CachingAllocator allocator, CudaStream stream, int seed)
    {
        var rng = new Random(seed);
        var bf16 = new ushort[ChunkBytes / 2];
        for (int i = 0; i < bf16.Length; i++) bf16[i] = BFloat16.FromFloat((float)(rng.NextDouble() * 2 - 1));
        var signed = new float[ChunkBytes / 4];
        var positive = new float[ChunkBytes / 4];
        for (int i = 0; i < signed.Length; i++)
        {
            signed[i] = (float)(rng.NextDouble() * 2 - 1);
            positive[i] = (float)(rng.NextDouble() * 1e-2 + 1e-6);   // AdamW second moments: v > 0
        }
        _chunks = new DeviceBuffer[3];
        try
        {
            _chunks[0] = Upload(allocator, stream, bf16);
            _chunks[1] = Upload(allocator, stream, signed);
            _chunks[2] = Upload(allocator, stream, positive);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private static DeviceBuffer Upload<T>(CachingAllocator allocator, CudaStream stream, T[] data) where T : unmanaged
    {
        var buf = allocator.Allocate((long)data.Length * Marshal.SizeOf<T>());
        stream.CopyToDevice<T>(buf.Ptr, data);
        return buf;
    }

    /// <summary>Fills <paramref name="bytes"/> bytes at <paramref name="dst"/> with the chunk of <paramref name="kind"/>, repeated.</summary>
    public void Fill(CudaStream stream, DevicePtr dst, long bytes, Kind kind)
    {
        var src = _chunks[(int)kind].Ptr;
        for (long off = 0; off < bytes; off += ChunkBytes)
            stream.CopyDeviceToDevice(dst.Offset(off), src, Math.Min(ChunkBytes, bytes - off));
    }

    public void Dispose()
    {
        foreach (var c in _chunks) c?.Dispose();
    }
}

/// <summary>The buffers of one measurement, returned to the allocator (and its cache emptied) on Dispose.</summary>
public sealed class DeviceScope : IDisposable
{
    private readonly CachingAllocator _allocator;
    private readonly CudaStream _stream;
    private readonly RandomChunks _random;
    private readonly List<DeviceBuffer> _buffers = new();
    private readonly List<IDisposable> _owned = new();

    public DeviceScope(CachingAllocator allocator, CudaStream stream, RandomChunks random)
    {
        _allocator = allocator; _stream = stream; _random = random;
    }

    private DevicePtr Take(long bytes)
    {
        var b = _allocator.Allocate(Math.Max(bytes, 1));
        _buffers.Add(b);
        return b.Ptr;
    }

    /// <summary>n bf16 values, uniform in [-1, 1].</summary>
    public DevicePtr Bf16(long n) { var p = Take(2 * n); _random.Fill(_stream, p, 2 * n, RandomChunks.Kind.Bf16Signed); return p; }
    /// <summary>n fp32 values, uniform in [-1, 1].</summary>
    public DevicePtr F32(long n) { var p = Take(4 * n); _random.Fill(_stream, p, 4 * n, RandomChunks.Kind.F32Signed); return p; }
    /// <summary>n positive fp32 values (AdamW's v).</summary>
    public DevicePtr F32Positive(long n) { var p = Take(4 * n); _random.Fill(_stream, p, 4 * n, RandomChunks.Kind.F32Positive); return p; }
    /// <summary>An output or scratch buffer of <paramref name="bytes"/> bytes, set to 0xFF bytes (bf16/fp32 NaN) so
    /// nothing reads it as meaningful data.</summary>
    public DevicePtr Output(long bytes) { var p = Take(bytes); _stream.Memset(p, 0xFF, Math.Max(bytes, 1)); return p; }
    /// <summary>A copy of host data.</summary>
    public DevicePtr Upload<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        var p = Take((long)data.Length * Marshal.SizeOf<T>());
        if (!data.IsEmpty) _stream.CopyToDevice(p, data);
        return p;
    }

    /// <summary>Disposes <paramref name="item"/> with the scope (after the stream has drained).</summary>
    public T Own<T>(T item) where T : IDisposable { _owned.Add(item); return item; }

    public void Dispose()
    {
        try
        {
            _stream.Synchronize();   // nothing enqueued may still use a buffer that goes back to the cache
        }
        finally
        {
            foreach (var o in _owned) o.Dispose();
            _owned.Clear();
            foreach (var b in _buffers) b.Dispose();
            _buffers.Clear();
            _allocator.EmptyCache();
        }
    }
}
