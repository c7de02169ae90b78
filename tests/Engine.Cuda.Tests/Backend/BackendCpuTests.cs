using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Engine.Core;
using Engine.Cuda.Backend;
using Engine.Cuda.Kernels;
using RopeParams = Engine.Core.RopeParams;

namespace Engine.Cuda.Tests.Backend;

/// <summary>Raw device memory that hands out fake addresses (no GPU): the allocator and storages run on it unchanged.
/// With <see cref="Total"/> set it behaves like a device of that size: allocations beyond it fail (out of memory)
/// and it reports free/total memory like cuMemGetInfo.</summary>
internal sealed class FakeDeviceMemory : IRawDeviceMemory
{
    private ulong _next = 0x100000;
    private readonly Dictionary<ulong, long> _sizes = new();
    public long Live;
    public long? Total;
    public bool TryAllocate(long bytes, out ulong address)
    {
        address = 0;
        if (Total is { } t && Live + bytes > t) return false;
        address = _next;
        _next += (ulong)((bytes + 255) / 256 * 256) + 256;
        Live += bytes;
        _sizes[address] = bytes;
        return true;
    }
    public void Free(ulong address)
    {
        Live -= _sizes[address];
        _sizes.Remove(address);
    }
    public bool TryGetMemoryInfo(out long free, out long total)
    {
        (free, total) = Total is { } t ? (t - Live, t) : (0L, 0L);
        return Total is not null;
    }
}

public class DeviceMemoryTests
{
    [Fact]
    public void OutOfMemoryNamesTheRequestAndTheDevicesFreeAndTotalMemory()
    {
        var raw = new FakeDeviceMemory { Total = 8L << 20 };
        using var alloc = new CachingAllocator(raw);
        using var held = alloc.Allocate(6L << 20);
        alloc.Allocate(1L << 20).Dispose();               // cached: released and retried before giving up
        var e = Assert.Throws<DeviceOutOfMemoryException>(() => alloc.Allocate(3_000_000));
        Assert.Equal(0, alloc.Stats.CachedBytes);
        Assert.Equal(3_000_000, e.RequestedBytes);
        Assert.Equal(2L << 20, e.FreeBytes);              // 8 MiB device, 6 MiB held
        Assert.Equal(8L << 20, e.TotalBytes);
        Assert.Equal(6L << 20, e.InUseBytes);
        Assert.Null(e.What);
        Assert.Contains("allocating 2.9 MiB (3000000 bytes)", e.Message);
        Assert.Contains("2.0 MiB (2097152 bytes) free of 8.0 MiB (8388608 bytes)", e.Message);
        Assert.DoesNotContain("\n", e.Message);

        var named = e.For("tensor BF16[4, 375000]");
        Assert.Equal(e.RequestedBytes, named.RequestedBytes);
        Assert.Contains("allocating 2.9 MiB (3000000 bytes) for tensor BF16[4, 375000]: the device has", named.Message);

        var blind = new CachingAllocator(new OomWithoutInfo());
        var u = Assert.Throws<DeviceOutOfMemoryException>(() => blind.Allocate(100));
        Assert.Null(u.FreeBytes);
        Assert.Contains("free memory is unknown", u.Message);
    }

    private sealed class OomWithoutInfo : IRawDeviceMemory
    {
        public bool TryAllocate(long bytes, out ulong address) { address = 0; return false; }
        public void Free(ulong address) { }
    }

    [Fact]
    public void ShadowAllocationFailureNamesTheTensorItCopies()
    {
        var raw = new FakeDeviceMemory { Total = 5000 };
        using var alloc = new CachingAllocator(raw);
        using var s = new CudaStorage(CpuBackend.Instance, alloc, DType.F32, 1000);   // 4000 bytes, the shadow needs 2048 more
        var e = Assert.Throws<DeviceOutOfMemoryException>(() => s.Bf16Shadow(new RecordingCaster()));
        Assert.Equal(2000, e.RequestedBytes);
        Assert.Contains("for the bf16 copy of an F32 tensor of 1000 elements", e.Message);
        Assert.Throws<DeviceOutOfMemoryException>(() => s.BeginFusedUpdate(0, 1000, wantShadow: true));
    }

    [Fact]
    public void AvailableBytesCountsFreeMemoryAndTheCache()
    {
        var raw = new FakeDeviceMemory { Total = 1L << 20 };
        using var alloc = new CachingAllocator(raw);
        var a = alloc.Allocate(100_000);
        Assert.Equal((1L << 20) - CachingAllocator.SizeClass(100_000), alloc.AvailableBytes());
        a.Dispose();                                       // cached, not freed: still available to us
        Assert.Equal(1L << 20, alloc.AvailableBytes());
        Assert.Null(new CachingAllocator(new FakeDeviceMemory()).AvailableBytes());   // a device that cannot say
    }

    [Fact]
    public void TheCliPrintsADeviceOutOfMemoryAsOneLine()
    {
        var err = new StringWriter();
        var saved = Console.Error;
        Console.SetError(err);
        int rc;
        try { rc = Engine.Cli.Cli.Guard(() => throw new DeviceOutOfMemoryException(1L << 30, 1L << 28, 80L << 30, 70L << 30, "tensor BF16[8, 65536]")); }
        finally { Console.SetError(saved); }
        Assert.Equal(2, rc);
        string text = err.ToString().TrimEnd('\n', '\r');
        Assert.DoesNotContain('\n', text);
        Assert.StartsWith("error: device out of memory allocating 1.00 GiB (1073741824 bytes) for tensor BF16[8, 65536]: the device has 256.0 MiB", text);
    }

    [Fact]
    public void TheCpuBackendsBudgetIsHostMemory() =>
        Assert.Equal(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, ((IBackend)CpuBackend.Instance).AvailableMemoryBytes());
}

/// <summary>Records the casts a storage asks for instead of launching a kernel.</summary>
internal sealed class RecordingCaster : IShadowCaster
{
    public readonly List<(DevicePtr Dst, DevicePtr Src, long Count)> Casts = new();
    public void CastF32ToBf16(DevicePtr dstBf16, DevicePtr srcF32, long count) => Casts.Add((dstBf16, srcF32, count));
}

public class ShadowBookkeepingTests
{
    private static CudaStorage NewStorage(CachingAllocator alloc, DType dtype = DType.F32, long length = 1000) =>
        new(CpuBackend.Instance, alloc, dtype, length);

    [Fact]
    public void ShadowIsCreatedLazilyAndCastOnlyWhenStale()
    {
        using var alloc = new CachingAllocator(new FakeDeviceMemory());
        var caster = new RecordingCaster();
        using var s = NewStorage(alloc);
        Assert.False(s.HasShadow);                        // nothing until a bf16 reader needs it (IsParameter comes later)
        var p1 = s.Bf16Shadow(caster);
        Assert.Single(caster.Casts);
        Assert.Equal((p1, s.Ptr, 1000L), caster.Casts[0]); // the whole buffer, from the fp32 base
        Assert.True(s.ShadowIsCurrent);
        Assert.Equal(p1, s.Bf16Shadow(caster));
        Assert.Single(caster.Casts);                      // current: no second cast
        s.MarkWritten();                                  // Upload / Copy / Fill / Scale / AddInPlace ...
        Assert.False(s.ShadowIsCurrent);
        Assert.Equal(p1, s.Bf16Shadow(caster));           // same buffer, re-cast
        Assert.Equal(2, caster.Casts.Count);
    }

    [Fact]
    public void FusedUpdateOfAWholeParameterKeepsTheShadowCurrent()
    {
        using var alloc = new CachingAllocator(new FakeDeviceMemory());
        var caster = new RecordingCaster();
        using var s = NewStorage(alloc);
        var w = s.BeginFusedUpdate(0, 1000, wantShadow: true);   // first AdamW step of a parameter never read as bf16 yet
        Assert.False(w.IsNull);
        s.EndFusedUpdate(w);
        Assert.True(s.ShadowIsCurrent);
        Assert.Equal(w, s.Bf16Shadow(caster));
        Assert.Empty(caster.Casts);                               // steady state: AdamW wrote it, no cast

        var again = s.BeginFusedUpdate(0, 1000, wantShadow: true);
        s.EndFusedUpdate(again);
        Assert.Equal(w, again);
        Assert.True(s.ShadowIsCurrent);
        Assert.Empty(caster.Casts);
    }

    [Fact]
    public void FusedUpdateWithoutShadowOrOfAPartOfAStaleShadowLeavesItToTheNextReader()
    {
        using var alloc = new CachingAllocator(new FakeDeviceMemory());
        var caster = new RecordingCaster();
        using var plain = NewStorage(alloc);
        var none = plain.BeginFusedUpdate(0, 1000, wantShadow: false);   // not a parameter, never read as bf16
        Assert.True(none.IsNull);
        plain.EndFusedUpdate(none);
        Assert.False(plain.HasShadow);

        using var s = NewStorage(alloc);
        var sh = s.Bf16Shadow(caster);
        var part = s.BeginFusedUpdate(100, 200, wantShadow: true);        // current shadow: its region is updated too
        Assert.Equal(sh.Offset(100, 2), part);
        s.EndFusedUpdate(part);
        Assert.True(s.ShadowIsCurrent);

        s.MarkWritten();                                                 // stale now
        var stalePart = s.BeginFusedUpdate(100, 200, wantShadow: true);  // the rest of the shadow would stay wrong
        Assert.True(stalePart.IsNull);
        s.EndFusedUpdate(stalePart);
        Assert.False(s.ShadowIsCurrent);
        s.Bf16Shadow(caster);
        Assert.Equal(2, caster.Casts.Count);                              // re-cast on next use
    }

    [Fact]
    public void OnlyFp32StoragesHaveShadows()
    {
        using var alloc = new CachingAllocator(new FakeDeviceMemory());
        using var s = NewStorage(alloc, DType.BF16);
        Assert.Throws<InvalidOperationException>(() => s.Bf16Shadow(new RecordingCaster()));
        Assert.True(s.BeginFusedUpdate(0, 1000, true).IsNull);
    }

    [Fact]
    public void DisposeReturnsDataAndShadowToTheAllocator()
    {
        using var alloc = new CachingAllocator(new FakeDeviceMemory());
        var s = NewStorage(alloc, DType.F32, 300_000);
        s.Bf16Shadow(new RecordingCaster());
        Assert.Equal(CachingAllocator.SizeClass(1_200_000) + CachingAllocator.SizeClass(600_000), alloc.Stats.InUseBytes);
        s.Dispose();
        Assert.Equal(0, alloc.Stats.InUseBytes);
        Assert.Throws<ObjectDisposedException>(() => s.Ptr);
        s.Dispose();                                      // idempotent
        using var empty = NewStorage(alloc, DType.BF16, 0); // zero elements still get a (minimum) block
        Assert.False(empty.Ptr.IsNull);
    }

    [Fact]
    public void HostIdsFollowTheVersionRule()
    {
        using var alloc = new CachingAllocator(new FakeDeviceMemory());
        using var s = NewStorage(alloc, DType.I32, 6);
        Assert.False(s.TryHostInts(0, 6, out _));
        s.UploadInts(2, [7, 8]);                          // partial upload with no current copy: unknown elsewhere
        Assert.False(s.TryHostInts(0, 6, out _));
        s.UploadInts(0, [1, 2, 3, 4, 5, 6]);
        Assert.True(s.TryHostInts(1, 3, out var mid));
        Assert.Equal([2, 3, 4], mid.ToArray());
        s.UploadInts(4, [50, 60]);                        // partial upload onto a current copy: merged
        Assert.True(s.TryHostInts(0, 6, out var all));
        Assert.Equal([1, 2, 3, 4, 50, 60], all.ToArray());
        s.MarkWritten();                                  // a device-side write (Fill, Copy): host copy no longer trusted
        Assert.False(s.TryHostInts(0, 6, out _));
    }

    [Fact]
    public void TensorsOverCudaStorageAreScopedAndViewedLikeHostTensors()
    {
        using var alloc = new CachingAllocator(new FakeDeviceMemory());
        Tensor t;
        using (new TensorScope())
        {
            t = TensorFactory.Owning(new CudaStorage(CpuBackend.Instance, alloc, DType.BF16, 24), [4, 6]);
            Assert.Equal([4, 6], t.Shape);
            Assert.Equal(24, t.Numel);
            Assert.Equal(DType.BF16, t.DType);
            Assert.Equal(0, t.Offset);
            var rows = t.Narrow0(1, 2);
            Assert.Equal(6, rows.Offset);                   // element offset: the backend adds Offset * 2 bytes
            Assert.Same(t.Storage, rows.Storage);
            Assert.True(alloc.Stats.InUseBytes > 0);
        }
        Assert.True(t.Storage.IsDisposed);                  // the scope freed it
        Assert.Equal(0, alloc.Stats.InUseBytes);
    }
}

public class RopeFrequencyCacheTests
{
    [Fact]
    public void KeysShareTablesExactlyWhenInvFreqIsTheSame()
    {
        var none = new RopeParams(64, 10000);
        var lin2 = new RopeParams(64, 10000, RopeScalingKind.Linear, 2);
        var lin4 = new RopeParams(64, 10000, RopeScalingKind.Linear, 4);
        var ntk2 = new RopeParams(64, 10000, RopeScalingKind.Ntk, 2);
        var ntk4 = new RopeParams(64, 10000, RopeScalingKind.Ntk, 4);
        Assert.Equal(RopeFrequencyCache.KeyOf(none), RopeFrequencyCache.KeyOf(lin2));   // linear divides positions in the kernel
        Assert.Equal(RopeFrequencyCache.KeyOf(lin2), RopeFrequencyCache.KeyOf(lin4));
        Assert.NotEqual(RopeFrequencyCache.KeyOf(none), RopeFrequencyCache.KeyOf(ntk2)); // NTK raises the base
        Assert.NotEqual(RopeFrequencyCache.KeyOf(ntk2), RopeFrequencyCache.KeyOf(ntk4));
        Assert.NotEqual(RopeFrequencyCache.KeyOf(none), RopeFrequencyCache.KeyOf(new RopeParams(128, 10000)));
        Assert.NotEqual(RopeFrequencyCache.KeyOf(none), RopeFrequencyCache.KeyOf(new RopeParams(64, 500000)));

        using var alloc = new CachingAllocator(new FakeDeviceMemory());
        var uploads = new List<float[]>();
        using var cache = new RopeFrequencyCache(v => { uploads.Add(v); return alloc.Allocate(v.Length * 4); });
        var a = cache.Get(none);
        Assert.Equal(a, cache.Get(lin4));
        var b = cache.Get(ntk2);
        Assert.NotEqual(a, b);
        Assert.Equal(b, cache.Get(ntk2));
        Assert.Equal(2, cache.Count);
        Assert.Equal(2, uploads.Count);
        Assert.Equal(none.InverseFrequencies(), uploads[0]);   // bitwise the CPU reference's table
        Assert.Equal(ntk2.InverseFrequencies(), uploads[1]);
        Assert.Equal(RopeKernels.InverseFrequencies(64, 10000, RopeScaling.Ntk, 2), uploads[1]);
    }

    [Fact]
    public void LinearFactorMatchesTheCpuDivisor()
    {
        Assert.Equal(1f, RopeFrequencyCache.LinearFactor(new RopeParams(64, 10000)));
        Assert.Equal(1f, RopeFrequencyCache.LinearFactor(new RopeParams(64, 10000, RopeScalingKind.Ntk, 4)));
        Assert.Equal((float)2.5, RopeFrequencyCache.LinearFactor(new RopeParams(64, 10000, RopeScalingKind.Linear, 2.5)));
        Assert.Equal(RopeKernels.LinearFactor(RopeScaling.Linear, 2.5), RopeFrequencyCache.LinearFactor(new RopeParams(64, 10000, RopeScalingKind.Linear, 2.5)));
    }
}

public class BoundaryCheckTests
{
    private static Tensor T(DType dt, params int[] shape) => CpuBackend.Instance.Empty(shape, dt);

    [Fact]
    public void MatMulNamesTheTensorsThatDisagree()
    {
        var a = T(DType.BF16, 4, 8); a.Name = "x";
        var w = T(DType.F32, 16, 9); w.Name = "model.layers.0.mlp.up_proj.weight";
        var c = T(DType.BF16, 4, 16);
        var e = Assert.Throws<ArgumentException>(() => CudaOpChecks.MatMul(a, false, w, true, c));
        Assert.Contains("x[4, 8] BF16", e.Message);
        Assert.Contains("model.layers.0.mlp.up_proj.weight[16, 9] F32", e.Message);
        Assert.Contains("(transposed)", e.Message);
        Assert.Equal((4, 16, 9), CudaOpChecks.MatMul(T(DType.BF16, 4, 9), false, w, true, c));
        var ints = T(DType.I32, 4, 9); ints.Name = "ids";
        Assert.Contains("ids[4, 9] I32", Assert.Throws<ArgumentException>(() => CudaOpChecks.MatMul(ints, false, w, true, c)).Message);
    }

    [Fact]
    public void AttentionRejectsUnsupportedHeadDimsAndWrongDtypes()
    {
        var d48 = new AttentionDims(1, 8, 4, 2, 48);
        var e = Assert.Throws<ArgumentException>(() => CudaOpChecks.Attention("AttentionForward", d48,
            T(DType.BF16, 8, 192), T(DType.BF16, 8, 96), T(DType.BF16, 8, 96), T(DType.BF16, 8, 192), T(DType.F32, 1, 4, 8)));
        Assert.Contains("AttentionForward: head dim 48", e.Message);
        Assert.Contains("32, 64, 96 or 128", e.Message);
        // head dim 32 (every shipped config) is accepted: attention_v2.cu runs it
        var d32 = new AttentionDims(1, 8, 4, 2, 32);
        CudaOpChecks.Attention("AttentionForward", d32, T(DType.BF16, 8, 128), T(DType.BF16, 8, 64), T(DType.BF16, 8, 64), T(DType.BF16, 8, 128), T(DType.F32, 1, 4, 8));
        var d = new AttentionDims(1, 8, 4, 2, 64);
        var q = T(DType.F32, 8, 256); q.Name = "q";
        var e2 = Assert.Throws<ArgumentException>(() => CudaOpChecks.Attention("AttentionForward", d,
            q, T(DType.BF16, 8, 128), T(DType.BF16, 8, 128), T(DType.BF16, 8, 256), T(DType.F32, 1, 4, 8)));
        Assert.Contains("q q[8, 256] F32", e2.Message);
        Assert.Contains("must be BF16", e2.Message);
        var e3 = Assert.Throws<ArgumentException>(() => CudaOpChecks.Attention("AttentionForward", d,
            T(DType.BF16, 8, 256), T(DType.BF16, 8, 128), T(DType.BF16, 8, 128), T(DType.BF16, 8, 256), T(DType.F32, 1, 2, 8)));
        Assert.Contains("lse", e3.Message);
        Assert.Contains("32 elements", e3.Message);
    }

    [Fact]
    public void RowOpsCheckDtypesAndSizes()
    {
        var x = T(DType.F32, 6, 16); x.Name = "h";
        var e = Assert.Throws<ArgumentException>(() => CudaOpChecks.RmsNormRows(x, T(DType.F32, 16), T(DType.BF16, 6, 16), T(DType.F32, 6), "RmsNormForward"));
        Assert.Contains("RmsNormForward: x h[6, 16] F32 on cpu must be BF16", e.Message);
        Assert.Equal(6, CudaOpChecks.RmsNormRows(T(DType.BF16, 6, 16), T(DType.F32, 16), T(DType.BF16, 6, 16), T(DType.F32, 6), "RmsNormForward"));
        Assert.Throws<ArgumentException>(() => CudaOpChecks.RmsNormRows(T(DType.BF16, 6, 16), T(DType.F32, 16), T(DType.BF16, 6, 16), T(DType.F32, 5), "RmsNormForward"));

        var tg = T(DType.F32, 4); tg.Name = "targets";
        var ce = Assert.Throws<ArgumentException>(() => CudaOpChecks.CrossEntropy(T(DType.BF16, 4, 10), tg, T(DType.F32, 4), T(DType.F32, 4)));
        Assert.Contains("targets[4] F32", ce.Message);
        Assert.Equal((4, 10), CudaOpChecks.CrossEntropy(T(DType.BF16, 4, 10), T(DType.I32, 4), T(DType.F32, 4), T(DType.F32, 4)));

        Assert.Equal((3, 50, 8), CudaOpChecks.Embedding(T(DType.I32, 3), T(DType.F32, 50, 8), T(DType.BF16, 3, 8), "EmbeddingForward", DType.BF16));
        Assert.Contains("must hold 24 elements", Assert.Throws<ArgumentException>(() =>
            CudaOpChecks.Embedding(T(DType.I32, 3), T(DType.F32, 50, 8), T(DType.BF16, 3, 7), "EmbeddingForward", DType.BF16)).Message);

        Assert.Throws<ArgumentException>(() => CudaOpChecks.Rope(T(DType.BF16, 4, 64), T(DType.BF16, 4, 64), new RopeParams(64, 1e4), 1, 4, 2));
        CudaOpChecks.Rope(T(DType.BF16, 4, 128), T(DType.BF16, 4, 128), new RopeParams(64, 1e4), 1, 4, 2);
    }

    [Fact]
    public void DecodeChecksTheCacheLength()
    {
        var q = T(DType.BF16, 2, 256);
        Assert.Equal(2, CudaOpChecks.Decode(q, T(DType.BF16, 10, 128), T(DType.BF16, 10, 128), T(DType.BF16, 2, 256), 4, 2, 64, 8));
        var e = Assert.Throws<ArgumentException>(() => CudaOpChecks.Decode(q, T(DType.BF16, 9, 128), T(DType.BF16, 9, 128), T(DType.BF16, 2, 256), 4, 2, 64, 8));
        Assert.Contains("offset + n = 10", e.Message);
        Assert.Throws<ArgumentException>(() => CudaOpChecks.Decode(T(DType.BF16, 1, 1024), T(DType.BF16, 4, 512), T(DType.BF16, 4, 512), T(DType.BF16, 1, 1024), 2, 1, 512, 0));
    }
}

public class BackendWiringTests
{
    [Fact]
    public void DecodeParamsMirrorTheNativeStruct()
    {
        Assert.Equal(AttentionDecodeParams.Size, Marshal.SizeOf<AttentionDecodeParams>());
        string root = Repo.Root() ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
        string src = File.ReadAllText(Path.Combine(root, "native", "backend_extras.cu"));
        var m = Regex.Match(src, @"static_assert\((\d+) == sizeof\(AttentionDecodeParams\)");
        Assert.True(m.Success, "backend_extras.cu asserts the size of AttentionDecodeParams");
        Assert.Equal(AttentionDecodeParams.Size, int.Parse(m.Groups[1].Value));
        // every entry point the launchers name exists in the source
        foreach (var name in new[] { "axpy_bf16", "axpy_f32_bf16", "axpy_bf16_f32", "fill_i32", "sum_partial_f32", "sum_partial_bf16",
                     "add_square_f32", "ewc_partial", "attention_decode" })
            Assert.Matches($@"ENGINE_KERNEL void {name}\(", src);
        Assert.Contains("kDecodeWarps = " + ExtrasKernels.DecodeWarps + ";", src);
        Assert.Contains("kDecodeMaxPerLane = " + ExtrasKernels.DecodeMaxHeadDim / 32 + ";", src);
    }

    [Fact]
    public void CliCudaDeviceIsTheSharedBackendOrNotSupportedWithTheReason()
    {
        bool gpu = CudaBackend.TryGetShared(out var shared, out string reason);
        if (gpu)
        {
            Assert.Same(shared, Engine.Cli.Cli.Backend("cuda"));
            Assert.Same(shared, Engine.Cli.Cli.Backend("cuda"));     // one per process: kernels load once
            Assert.Equal(DType.BF16, shared!.ActivationDType);
            return;
        }
        var e = Assert.Throws<NotSupportedException>(() => Engine.Cli.Cli.Backend("cuda"));
        Assert.StartsWith("device 'cuda': ", e.Message);
        Assert.Contains(reason, e.Message);
        Assert.False(string.IsNullOrWhiteSpace(reason));
        Assert.EndsWith("use device = \"cpu\"", e.Message);
        // no driver here: the reason says so (CudaDevice's wording)
        if (!File.Exists("/usr/lib/x86_64-linux-gnu/libcuda.so.1") && Environment.GetEnvironmentVariable("ENGINE_LIBCUDA") is null)
            Assert.Contains("no CUDA", e.Message);
        Assert.Same(CpuBackend.Instance, Engine.Cli.Cli.Backend("cpu"));
        Assert.Throws<ArgumentException>(() => Engine.Cli.Cli.Backend("tpu"));
    }
}
