using System.Runtime.InteropServices;
using System.Text;
using Engine.Cuda.Kernels;

namespace Engine.Cuda.Tests;

/// <summary>bf16 bit patterns on the host: round-to-nearest-even like __float2bfloat16_rn.</summary>
public static class Bf16
{
    public static ushort FromFloat(float f)
    {
        if (float.IsNaN(f)) return 0x7FC0;
        uint u = BitConverter.SingleToUInt32Bits(f);
        u += 0x7FFFu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }
    public static float ToFloat(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);
    public static float Round(float f) => ToFloat(FromFloat(f));
    public static ushort[] FromFloats(ReadOnlySpan<float> x) { var r = new ushort[x.Length]; for (int i = 0; i < x.Length; i++) r[i] = FromFloat(x[i]); return r; }
    public static float[] ToFloats(ReadOnlySpan<ushort> x) { var r = new float[x.Length]; for (int i = 0; i < x.Length; i++) r[i] = ToFloat(x[i]); return r; }
}

/// <summary>Seeded random inputs, already representable in bf16 so both implementations see identical values.</summary>
public static class Data
{
    public static float[] Bf16Values(Random rng, long n, float scale = 1f)
    {
        var r = new float[n];
        for (long i = 0; i < n; i++) r[i] = Bf16.Round((float)(rng.NextDouble() * 2 - 1) * scale);
        return r;
    }
    public static float[] Floats(Random rng, long n, float scale = 1f)
    {
        var r = new float[n];
        for (long i = 0; i < n; i++) r[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return r;
    }
}

/// <summary>
/// Tolerances, derived once: a value passes when |got - ref| &lt;= atol + rtol |ref|, and NaN/Inf must match.
/// bf16 has an 8-bit significand: one rounding is a relative error of at most 2^-9 (0.2%); outputs that are one
/// fp32 computation rounded to bf16 get rtol 2^-7 (room for the last-place differences of fp32 vs fp64 math).
/// Results that go through bf16 intermediates (attention's P and dS fed to tensor cores) are judged like
/// flash-attention: the error is measured relative to the largest reference magnitude of the tensor.
/// </summary>
public static class Tol
{
    public const float Bf16Rtol = 1f / 128, Bf16Atol = 1e-3f;
    public const float F32Rtol = 1e-5f, F32Atol = 1e-6f;
    public const float ReductionRtol = 1e-3f, ReductionAtol = 1e-4f;
    /// <summary>Attention outputs and gradients: max error &lt;= this fraction of max |ref| (bf16 P/dS, 2^-8 each, summed over keys).</summary>
    public const float AttentionRelMax = 2e-2f;

    public static void Close(ReadOnlySpan<float> got, ReadOnlySpan<float> expected, float atol, float rtol, string what)
    {
        Assert.Equal(expected.Length, got.Length);
        var bad = new StringBuilder();
        int count = 0;
        for (int i = 0; i < got.Length; i++)
        {
            float g = got[i], e = expected[i];
            bool ok = float.IsNaN(e) ? float.IsNaN(g)
                : float.IsInfinity(e) ? g == e
                : float.IsFinite(g) && Math.Abs(g - e) <= atol + rtol * Math.Abs(e);
            if (!ok && count++ < 8) bad.Append($"\n  [{i}] got {g:R} expected {e:R} (|diff| {Math.Abs(g - e):G3})");
        }
        if (count > 0) Assert.Fail($"{what}: {count} of {got.Length} values outside atol {atol} + rtol {rtol}:{bad}");
    }

    /// <summary>max |got - ref| &lt;= rel * max |ref| + atol, the flash-attention style criterion for whole tensors.</summary>
    public static void RelMax(ReadOnlySpan<float> got, ReadOnlySpan<double> expected, float rel, float atol, string what)
    {
        Assert.Equal(expected.Length, got.Length);
        double maxRef = 0, maxErr = 0;
        int worst = -1;
        for (int i = 0; i < got.Length; i++)
        {
            maxRef = Math.Max(maxRef, Math.Abs(expected[i]));
            if (!float.IsFinite(got[i])) Assert.Fail($"{what}: non-finite value {got[i]} at {i}");
            double err = Math.Abs(got[i] - expected[i]);
            if (err > maxErr) { maxErr = err; worst = i; }
        }
        if (maxErr > rel * maxRef + atol)
            Assert.Fail($"{what}: max error {maxErr:G4} at [{worst}] (got {got[worst]}, expected {expected[worst]:G6}) exceeds {rel} x max|ref| {maxRef:G4} + {atol}");
    }
}

/// <summary>Device, stream, kernels and allocator shared by the GPU tests (which run serially in one collection).</summary>
public sealed class GpuContext
{
    public required CudaDevice Device { get; init; }
    public required CudaStream Stream { get; init; }
    public required KernelLibrary Kernels { get; init; }
    public required CachingAllocator Allocator { get; init; }

    public DeviceBuffer Upload<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        var buf = Allocator.Allocate(Math.Max(1, (long)data.Length * Marshal.SizeOf<T>()));
        if (data.Length > 0) Stream.CopyToDevice(buf.Ptr, data);
        return buf;
    }
    public DeviceBuffer UploadBf16(ReadOnlySpan<float> values) => Upload<ushort>(Bf16.FromFloats(values));
    public DeviceBuffer Zeros(long bytes)
    {
        var buf = Allocator.Allocate(Math.Max(1, bytes));
        Stream.Memset(buf.Ptr, 0, Math.Max(1, bytes));
        return buf;
    }
    public T[] Download<T>(DevicePtr src, long count) where T : unmanaged
    {
        var r = new T[count];
        if (count > 0) Stream.CopyToHost<T>(r, src);
        return r;
    }
    public float[] DownloadBf16(DevicePtr src, long count) => Bf16.ToFloats(Download<ushort>(src, count));
}

public static class GpuTest
{
    private static readonly Lazy<(GpuContext? Ctx, string Reason)> Shared = new(Open);

    private static (GpuContext?, string) Open()
    {
        if (!CudaDevice.TryCreate(out var dev, out var reason)) return (null, reason);
        // A GPU is present: missing kernels are a failure, not a skip.
        var lib = KernelLibrary.Load(dev!);
        return (new GpuContext { Device = dev!, Stream = new CudaStream(), Kernels = lib, Allocator = new CachingAllocator() }, "");
    }

    /// <summary>The shared GPU context, or the test is reported SKIPPED ("no CUDA device: ...").</summary>
    public static GpuContext Require()
    {
        var (ctx, reason) = Shared.Value;
        if (ctx is null) Assert.Skip(reason.StartsWith("no CUDA", StringComparison.Ordinal) ? reason : "no CUDA device: " + reason);
        ctx.Device.MakeCurrent();
        return ctx;
    }
}

[CollectionDefinition("gpu", DisableParallelization = true)]
public sealed class GpuCollection;

/// <summary>Repository paths for CPU tests that read native/ and build/.</summary>
public static class Repo
{
    public static string? Root()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (Directory.Exists(Path.Combine(d.FullName, "native")) && File.Exists(Path.Combine(d.FullName, "CMakeLists.txt")))
                return d.FullName;
        return null;
    }
}
