using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Engine.Cuda.Interop;
using Engine.Cuda.Kernels;

namespace Engine.Cuda.Tests;

public class KernelParamsTests
{
    [Fact]
    public void StructSizesMatchConstants()
    {
        Assert.Equal(KernelParamSizes.RmsNormForward, Marshal.SizeOf<RmsNormForwardParams>());
        Assert.Equal(KernelParamSizes.RmsNormBackward, Marshal.SizeOf<RmsNormBackwardParams>());
        Assert.Equal(KernelParamSizes.RmsNormDwReduce, Marshal.SizeOf<RmsNormDwReduceParams>());
        Assert.Equal(KernelParamSizes.Rope, Marshal.SizeOf<RopeParams>());
        Assert.Equal(KernelParamSizes.EmbeddingForward, Marshal.SizeOf<EmbeddingForwardParams>());
        Assert.Equal(KernelParamSizes.EmbeddingBackward, Marshal.SizeOf<EmbeddingBackwardParams>());
        Assert.Equal(KernelParamSizes.AdamW, Marshal.SizeOf<AdamWParams>());
        Assert.Equal(KernelParamSizes.GradNorm, Marshal.SizeOf<GradNormParams>());
        Assert.Equal(KernelParamSizes.CrossEntropy, Marshal.SizeOf<CrossEntropyParams>());
        Assert.Equal(KernelParamSizes.Attention, Marshal.SizeOf<AttentionParams>());
        Assert.Equal(KernelParamSizes.AttentionBackward, Marshal.SizeOf<AttentionBackwardParams>());
        Assert.Equal(KernelParamSizes.ChunkNorm, Marshal.SizeOf<ChunkNormParams>());
        Assert.Equal(KernelParamSizes.AdamWRun, Marshal.SizeOf<AdamWRun>());
        Assert.Equal(KernelParamSizes.AdamWRuns, Marshal.SizeOf<AdamWRunsParams>());
        Assert.Equal(8, Marshal.SizeOf<DevicePtr>());
    }

    /// <summary>Every static_assert(sizeof(X) == N) in native/*.cu and native/common/attention.cuh (the attention params
    /// the three attention files share) names a C# struct X of exactly N bytes.</summary>
    [Fact]
    public void NativeStaticAssertsMatchManagedStructs()
    {
        string root = Repo.Root() ?? throw new InvalidOperationException("repository root (native/ + CMakeLists.txt) not found above " + AppContext.BaseDirectory);
        var types = typeof(KernelParamSizes).Assembly.GetTypes().Where(t => t.Namespace == "Engine.Cuda.Kernels").ToDictionary(t => t.Name);
        int checkedCount = 0;
        foreach (var file in Directory.EnumerateFiles(Path.Combine(root, "native"), "*.cu").Append(Path.Combine(root, "native", "common", "attention.cuh")))
        {
            foreach (Match m in Regex.Matches(File.ReadAllText(file), @"static_assert\(sizeof\((\w+)\) == (\d+)"))
            {
                string name = m.Groups[1].Value;
                Assert.True(types.TryGetValue(name, out var t), $"{Path.GetFileName(file)}: no C# mirror named {name}");
                Assert.True(Marshal.SizeOf(t!) == int.Parse(m.Groups[2].Value), $"{name}: native {m.Groups[2].Value} bytes, C# {Marshal.SizeOf(t!)}");
                checkedCount++;
            }
        }
        Assert.Equal(18, checkedCount);   // every native params struct once (the attention ones in common/attention.cuh)
    }

    [Fact]
    public void AttentionSharedMemoryFitsHopperAndAmpere()
    {
        foreach (int d in new[] { 64, 128 })
        {
            Assert.True(KernelTraits.AttnFwdSmem(d) <= 163 * 1024);
            Assert.True(KernelTraits.AttnBwdKVSmem(d) <= 163 * 1024);
            Assert.True(KernelTraits.AttnBwdQSmem(d) <= 163 * 1024);
        }
        Assert.Equal((64 + 128) * 136 * 2, KernelTraits.AttnFwdSmem(128));
    }
}

public class DriverStructTests
{
    [Fact]
    public void Memcpy2DHasTheDriversLayout() => Assert.Equal(Interop.CudaMemcpy2D.Size, Marshal.SizeOf<Interop.CudaMemcpy2D>());
}

public class LibraryResolverTests
{
    [Fact]
    public void OverrideThatDoesNotExistNamesTheVariableAndPath()
    {
        var probe = NativeLibraryResolver.Probe(CudaLibrary.Driver, v => v == "ENGINE_LIBCUDA" ? "/nonexistent/libcuda.so.1" : null, out var h);
        Assert.False(probe.Found);
        Assert.Equal(IntPtr.Zero, h);
        Assert.Contains("ENGINE_LIBCUDA=/nonexistent/libcuda.so.1", probe.Error);
        Assert.Contains("/nonexistent/libcuda.so.1", probe.Tried);
    }

    [Fact]
    public void OverrideDirectoryWithoutLibraryListsWhereItLooked()
    {
        string dir = Directory.CreateTempSubdirectory("engine-nolib").FullName;
        try
        {
            var probe = NativeLibraryResolver.Probe(CudaLibrary.Nccl, v => v == "ENGINE_LIBNCCL" ? dir : null, out _);
            Assert.False(probe.Found);
            Assert.Contains("ENGINE_LIBNCCL", probe.Error);
            Assert.Contains("Unset ENGINE_LIBNCCL", probe.Error);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void SearchWithoutOverrideEitherFindsOrListsStandardPlaces()
    {
        var probe = NativeLibraryResolver.Probe(CudaLibrary.Nccl, Environment.GetEnvironmentVariable, out _);
        if (probe.Found) { Assert.NotNull(probe.LoadedFrom); return; }
        Assert.StartsWith("NCCL not found", probe.Error);
        Assert.Contains("libnccl.so.2 (dynamic loader search)", probe.Error);
        Assert.Contains("/usr/local/cuda/lib64", probe.Error);
        Assert.Contains("ENGINE_LIBNCCL", probe.Error);
    }

    [Fact]
    public void CandidatesAreNewestVersionFirst()
    {
        string dir = Directory.CreateTempSubdirectory("engine-libs").FullName;
        try
        {
            foreach (var f in new[] { "libcublas.so.11", "libcublas.so.13.1.0.3", "libcublas.so.12", "libcublas.so", "libcublasLt.so.13" })
                File.WriteAllText(Path.Combine(dir, f), "");
            var c = NativeLibraryResolver.CandidatesIn(dir, ["libcublas.so"]).Select(Path.GetFileName).ToList();
            Assert.Equal(["libcublas.so.13.1.0.3", "libcublas.so.12", "libcublas.so.11", "libcublas.so"], c.Where(n => !n!.StartsWith("libcublasLt", StringComparison.Ordinal)).ToList());
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void PipWheelDirectoriesOfAVirtualEnvAreSearched()
    {
        string venv = Directory.CreateTempSubdirectory("engine-venv").FullName;
        try
        {
            string sp = Path.Combine(venv, "lib", "python3.12", "site-packages");
            Directory.CreateDirectory(Path.Combine(sp, "nvidia", "nccl", "lib"));
            Assert.Contains(sp, NativeLibraryResolver.SitePackages(v => v == "VIRTUAL_ENV" ? venv : null));
            var probe = NativeLibraryResolver.Probe(CudaLibrary.Nccl, v => v == "VIRTUAL_ENV" ? venv : null, out _);
            if (!probe.Found) Assert.Contains(Path.Combine(sp, "nvidia", "nccl", "lib"), probe.Error);
        }
        finally { Directory.Delete(venv, true); }
    }
    /// <summary>The GPU machine's PyTorch is a CUDA 13 build in a venv that is on PATH but not activated: its cuBLAS sits
    /// in nvidia/cu13/lib, its NCCL in nvidia/nccl/lib. A fake tree of empty files: the search must reach both files
    /// (they cannot load, so each appears in the probe's list of places tried) before the standard-place error.</summary>
    [Fact]
    public void BothWheelLayoutsOfAPythonOnPathAreSearched()
    {
        string root = Directory.CreateTempSubdirectory("engine-wheels").FullName;
        try
        {
            string bin = Path.Combine(root, "opt", "torch", ".venv", "bin");
            string sp = Path.Combine(root, "opt", "torch", ".venv", "lib", "python3.12", "site-packages");
            string cu13 = Path.Combine(sp, "nvidia", "cu13", "lib"), nccl = Path.Combine(sp, "nvidia", "nccl", "lib");
            string oldCublas = Path.Combine(sp, "nvidia", "cublas", "lib");
            foreach (var d in new[] { bin, cu13, nccl, oldCublas }) Directory.CreateDirectory(d);
            File.WriteAllText(Path.Combine(bin, "python3"), "");
            foreach (var f in new[] { Path.Combine(cu13, "libcublas.so.13"), Path.Combine(cu13, "libcublasLt.so.13"),
                         Path.Combine(nccl, "libnccl.so.2"), Path.Combine(oldCublas, "libcublas.so.12") })
                File.WriteAllText(f, "not an ELF file");
            Func<string, string?> env = v => v == "PATH" ? "/nonexistent/bin:" + bin : null;

            Assert.Contains(sp, NativeLibraryResolver.SitePackages(env));
            var cublasDirs = NativeLibraryResolver.SearchDirectories(CudaLibrary.Cublas, env).ToList();
            Assert.True(cublasDirs.IndexOf(cu13) >= 0 && cublasDirs.IndexOf(cu13) < cublasDirs.IndexOf(oldCublas),
                "nvidia/cu13/lib is searched, before nvidia/cublas/lib: " + string.Join(", ", cublasDirs));
            Assert.Contains(nccl, NativeLibraryResolver.SearchDirectories(CudaLibrary.Nccl, env));
            Assert.DoesNotContain(Path.Combine(sp, "nvidia", "cu13", "lib"), NativeLibraryResolver.SearchDirectories(CudaLibrary.Driver, env));

            var cublas = NativeLibraryResolver.Probe(CudaLibrary.Cublas, env, out _);
            if (!cublas.Found)   // (found only where a real cuBLAS is installed system-wide)
            {
                Assert.Contains(Path.Combine(cu13, "libcublas.so.13"), cublas.Tried);
                Assert.Contains(Path.Combine(oldCublas, "libcublas.so.12"), cublas.Tried);
                Assert.DoesNotContain(cublas.Tried, t => t.Contains("libcublasLt", StringComparison.Ordinal));
            }
            var ncclProbe = NativeLibraryResolver.Probe(CudaLibrary.Nccl, env, out _);
            if (!ncclProbe.Found) Assert.Contains(Path.Combine(nccl, "libnccl.so.2"), ncclProbe.Tried);
        }
        finally { Directory.Delete(root, true); }
    }
}

public class DeviceTests
{
    [Fact]
    public void TryCreateGivesAClearReasonOrADevice()
    {
        bool ok = CudaDevice.TryCreate(out var dev, out var reason);
        if (ok)
        {
            Assert.NotNull(dev);
            Assert.False(string.IsNullOrEmpty(dev.Name));
            Assert.True(dev.ComputeMajor >= 8);
            dev.Dispose();
            return;
        }
        Assert.Null(dev);
        Assert.Matches("^(no CUDA driver|no CUDA device|no usable CUDA driver|CUDA device \\d+ does not exist|.*compute capability)", reason);
    }

    [Fact]
    public void CheckNamesTheCallAndTheError()
    {
        var e = Assert.Throws<CudaException>(() => Check.Cu(CuResult.InvalidValue));
        Assert.Equal("CuResult.InvalidValue", e.Call);
        Assert.Contains("CuResult.InvalidValue failed", e.Message);
        Assert.Contains("(1)", e.Message);
        var b = Assert.Throws<CudaException>(() => Check.Cublas(CublasStatus.NotSupported));
        Assert.Contains("CUBLAS_STATUS_NOTSUPPORTED (15)", b.Message);
    }

    [Fact]
    public void FatbinsExistWhenKernelsWereBuilt()
    {
        string? root = Repo.Root();
        string dir = root is null ? "" : Path.Combine(root, "build", "native", "kernels");
        bool nvcc = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(p => File.Exists(Path.Combine(p, "nvcc")));
        if (!nvcc || !Directory.Exists(dir)) Assert.Skip($"kernels not built here (nvcc on PATH: {nvcc}, {dir} exists: {Directory.Exists(dir)})");
        foreach (var m in KernelLibrary.ModuleNames)
        {
            var f = new FileInfo(Path.Combine(dir, m + ".fatbin"));
            Assert.True(f.Exists, $"{f.FullName} missing: run cmake --build build/native");
            Assert.True(f.Length > 1000, $"{f.FullName} is only {f.Length} bytes");
        }
        Assert.Equal(dir, KernelLibrary.FindKernelsDirectory(_ => null, out _));
    }

    [Fact]
    public void KernelsDirectoryOverrideIsHonouredAndReported()
    {
        string dir = Directory.CreateTempSubdirectory("engine-kernels").FullName;
        try
        {
            Assert.Null(KernelLibrary.FindKernelsDirectory(v => v == "ENGINE_KERNELS_DIR" ? dir : null, out var tried));
            Assert.Contains(dir + " (ENGINE_KERNELS_DIR)", tried);
            File.WriteAllBytes(Path.Combine(dir, "rmsnorm.fatbin"), [1, 2, 3]);
            Assert.Equal(dir, KernelLibrary.FindKernelsDirectory(v => v == "ENGINE_KERNELS_DIR" ? dir : null, out _));
        }
        finally { Directory.Delete(dir, true); }
    }
}

public class AllocatorTests
{
    private sealed class FakeMemory : IRawDeviceMemory
    {
        private ulong _next = 0x10000;
        public long Limit = long.MaxValue, Live;
        public int Allocs, Frees;
        public bool TryAllocate(long bytes, out ulong address)
        {
            address = 0;
            if (Live + bytes > Limit) return false;
            address = _next;
            _next += (ulong)bytes + 256;
            Live += bytes; Allocs++;
            _sizes[address] = bytes;
            return true;
        }
        private readonly Dictionary<ulong, long> _sizes = new();
        public void Free(ulong address) { Live -= _sizes[address]; _sizes.Remove(address); Frees++; }
    }

    [Theory]
    [InlineData(1, 512)]
    [InlineData(512, 512)]
    [InlineData(513, 1024)]
    [InlineData(1 << 20, 1 << 20)]
    [InlineData((1 << 20) + 1, (1 << 20) + (1 << 18))]
    [InlineData(3_000_000, 3_145_728)]
    [InlineData(1L << 30, 1L << 30)]
    public void SizeClassesBoundWaste(long bytes, long expected)
    {
        Assert.Equal(expected, CachingAllocator.SizeClass(bytes));
        Assert.True(CachingAllocator.SizeClass(bytes) <= Math.Max(bytes + 511, bytes * 1.25 + 1));
    }

    /// <summary>A CUDA graph's memory (CudaGraph.Capture): while a private pool is active its blocks are reused
    /// within it; afterwards nothing else gets them (the graph's recorded addresses stay valid), and disposing the
    /// pool hands them to the shared cache.</summary>
    [Fact]
    public void PrivatePoolsKeepACapturesBlocksApart()
    {
        var raw = new FakeMemory();
        using var a = new CachingAllocator(raw);
        var shared = a.Allocate(1000);
        ulong sharedAddr = shared.Ptr.Address;
        shared.Dispose();                                              // in the shared cache now
        var pool = a.BeginPrivatePool();
        var t1 = a.Allocate(1000);
        Assert.NotEqual(sharedAddr, t1.Ptr.Address);                   // the pool does not take shared blocks
        ulong captured = t1.Ptr.Address;
        t1.Dispose();
        var t2 = a.Allocate(1000);
        Assert.Equal(captured, t2.Ptr.Address);                        // reused inside the capture
        var kept = a.Allocate(5000);                                   // outlives the capture (e.g. a kept tensor)
        t2.Dispose();
        Assert.Throws<InvalidOperationException>(() => a.BeginPrivatePool());   // captures do not nest
        a.EndPrivatePool(pool);
        Assert.Equal(1024 + 5120, pool.Bytes);
        var after = a.Allocate(1000);
        Assert.Equal(sharedAddr, after.Ptr.Address);                   // the shared cache again, never the graph's block
        var another = a.Allocate(1000);
        Assert.NotEqual(captured, another.Ptr.Address);
        pool.Dispose();                                                // the graph is gone: its free block goes shared
        var reuse = a.Allocate(1000);
        Assert.Equal(captured, reuse.Ptr.Address);
        kept.Dispose();                                                // a live block of a disposed pool returns to the shared cache
        Assert.Equal(5120, a.Stats.CachedBytes);
        foreach (var b in new[] { after, another, reuse }) b.Dispose();
    }

    [Fact]
    public void FreedBlocksAreReusedAndStatsTracked()
    {
        var raw = new FakeMemory();
        using var a = new CachingAllocator(raw);
        var b1 = a.Allocate(1000);
        var b2 = a.Allocate(5000);
        Assert.Equal(1024 + 5120, a.Stats.InUseBytes);
        var p1 = b1.Ptr;
        b1.Dispose();
        b1.Dispose();   // idempotent
        Assert.Equal(1024, a.Stats.CachedBytes);
        var b3 = a.Allocate(900);   // same class: reused without a driver call
        Assert.Equal(p1, b3.Ptr);
        Assert.Equal(2, raw.Allocs);
        Assert.Equal(1, a.Stats.CacheHits);
        Assert.Equal(1024 + 5120, a.Stats.PeakInUseBytes);
        b2.Dispose(); b3.Dispose();
        Assert.Equal(0, a.Stats.InUseBytes);
        a.EmptyCache();
        Assert.Equal(0, a.Stats.CachedBytes);
        Assert.Equal(2, raw.Frees);
        Assert.Equal(0, raw.Live);
    }

    [Fact]
    public void OutOfMemoryEmptiesTheCacheAndRetries()
    {
        var raw = new FakeMemory { Limit = 4096 };
        using var a = new CachingAllocator(raw);
        a.Allocate(2048).Dispose();          // cached 2048
        using var big = a.Allocate(3072);    // needs the cached block released first
        Assert.Equal(0, a.Stats.CachedBytes);
        Assert.Throws<Engine.Core.DeviceOutOfMemoryException>(() => a.Allocate(2048));
    }
}

public class HostHelperTests
{
    [Fact]
    public void EmbeddingBucketsGroupPositionsById()
    {
        var b = EmbeddingKernels.BuildBuckets([5, 2, 5, 0, 2, 5], 8);
        Assert.Equal([0, 2, 5], b.BucketId);
        Assert.Equal([0, 1, 3, 6], b.BucketStart);
        Assert.Equal([3, 1, 4, 0, 2, 5], b.Order);
        Assert.Throws<ArgumentOutOfRangeException>(() => EmbeddingKernels.BuildBuckets([1, 8], 8));
    }

    [Fact]
    public void RopeInverseFrequenciesFollowTheFormula()
    {
        var inv = RopeKernels.InverseFrequencies(128, 10000.0);
        Assert.Equal(64, inv.Length);
        Assert.Equal(1f, inv[0]);
        Assert.Equal((float)Math.Pow(10000.0, -2.0 * 10 / 128), inv[10]);
        var ntk = RopeKernels.InverseFrequencies(64, 10000.0, RopeScaling.Ntk, 4.0);
        Assert.Equal((float)(1.0 / Math.Pow(10000.0 * Math.Pow(4.0, 64 / 62.0), 2.0 * 5 / 64)), ntk[5]);
        Assert.Equal(4f, RopeKernels.LinearFactor(RopeScaling.Linear, 4.0));
        Assert.Equal(1f, RopeKernels.LinearFactor(RopeScaling.Ntk, 4.0));
    }

    [Fact]
    public void GemmLeadingDimensionsAreRowMajorRowLengths()
    {
        Assert.Equal((32, 16, 16), CublasContext.LeadingDims(false, false, 8, 16, 32, 0, 0, 0));
        Assert.Equal((8, 32, 16), CublasContext.LeadingDims(true, true, 8, 16, 32, 0, 0, 0));
        Assert.Throws<ArgumentException>(() => CublasContext.LeadingDims(false, false, 8, 16, 32, 31, 0, 0));
    }

    [Fact]
    public void AttentionShapeValidation()
    {
        new AttentionShape(2, 5, 8, 2, 64).Validate();
        Assert.Throws<ArgumentException>(() => new AttentionShape(1, 5, 6, 4, 64).Validate());
        Assert.Throws<ArgumentException>(() => new AttentionShape(1, 5, 4, 4, 96).Validate());
        Assert.Equal(2L * 8 * 5 * 4, new AttentionShape(2, 5, 8, 2, 64).LseBytes);
    }

    [Fact]
    public void Bf16RoundsToNearestEven()
    {
        Assert.Equal((ushort)0x3F80, Bf16.FromFloat(1f));
        Assert.Equal((ushort)0x3F80, Bf16.FromFloat(BitConverter.UInt32BitsToSingle(0x3F808000))); // tie -> even
        Assert.Equal((ushort)0x3F82, Bf16.FromFloat(BitConverter.UInt32BitsToSingle(0x3F818000))); // tie -> even (up)
        Assert.Equal((ushort)0x3F81, Bf16.FromFloat(BitConverter.UInt32BitsToSingle(0x3F808001)));
    }
}

/// <summary>The pinned staging pool's policy (PinnedStaging, asynchronous uploads) with fake blocks: a block is reused
/// only after its copy completed, the smallest fitting free block is taken, nothing ever waits (a busy pool grows).</summary>
public class StagingPoolTests
{
    sealed class FakeBlock(long bytes)
    {
        public long Bytes { get; } = bytes;
        public bool Done { get; set; }
    }

    [Fact]
    public void BlocksAreReusedOnlyAfterTheirCopyCompleted()
    {
        var made = new List<FakeBlock>();
        var pool = new StagingPool<FakeBlock>(bytes => { var b = new FakeBlock(bytes); made.Add(b); return b; }, b => b.Done, b => b.Bytes);
        FakeBlock Take(long bytes)   // as PinnedStaging: take a block, then record the new copy's event (pending)
        {
            var b = pool.Take(bytes);
            b.Done = false;
            return b;
        }
        var a = Take(1000);
        Assert.Equal(StagingPool<FakeBlock>.MinBlock, a.Bytes);           // at least 64 KiB
        var b = Take(1000);                                               // a's copy is pending: a second block, no wait
        Assert.NotSame(a, b);
        a.Done = true;
        Assert.Same(a, Take(10));                                         // completed: reused (and pending again)
        var big = Take(200_000);                                          // nothing free that large: next power of two
        Assert.Equal(262_144, big.Bytes);
        b.Done = true; big.Done = true;
        Assert.Same(b, Take(500));                                        // the smallest free block that fits, not the big one
        Assert.Same(big, Take(100_000));
        Assert.NotSame(a, Take(10));                                      // a still pending: another block
        Assert.Equal(4, made.Count);
        Assert.Equal(4, pool.Count);
    }
}
