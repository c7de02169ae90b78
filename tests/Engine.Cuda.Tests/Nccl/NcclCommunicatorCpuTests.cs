using Engine.Core;
using Engine.Core.Distributed;
using Engine.Cuda.Interop;
using Engine.Parallel;
using Engine.Parallel.Launch;
using Engine.Parallel.Store;

namespace Engine.Cuda.Tests.Nccl;

/// <summary>What of the NCCL communicator can be checked without a GPU: the library's absence, the type and
/// operator mapping onto NCCL's enums, the unique id's byte form, the bootstrap's argument checks.</summary>
public class NcclCommunicatorCpuTests
{
    [Fact]
    public void A_missing_library_is_one_clear_message_naming_where_it_looked()
    {
        var probe = NativeLibraryResolver.Probe(CudaLibrary.Nccl, Environment.GetEnvironmentVariable, out _);
        var boot = new NcclBootstrap(CpuBackend.Instance, RankInfo.Single, id => id ?? [], null!, new CommOptions(), []);
        if (!probe.Found)
        {
            var e = Assert.Throws<NotSupportedException>(() => NcclCommunicator.Create(boot));
            Assert.StartsWith("NCCL not found (libnccl.so.*)", e.Message);
            Assert.Contains("ENGINE_LIBNCCL", e.Message);
            Assert.Throws<NotSupportedException>(NcclCommunicator.RequireLibrary);
        }
        else
        {
            // With NCCL present the next check speaks: NCCL runs on the CUDA backend only.
            Assert.Contains("needs the CUDA backend", Assert.Throws<ArgumentException>(() => NcclCommunicator.Create(boot)).Message);
        }
    }

    [Fact]
    public void An_override_to_a_missing_file_is_named()
    {
        string? saved = Environment.GetEnvironmentVariable("ENGINE_LIBNCCL");
        var probe = NativeLibraryResolver.Probe(CudaLibrary.Nccl, v => v == "ENGINE_LIBNCCL" ? "/nonexistent/libnccl.so.2" : null, out _);
        Assert.False(probe.Found);
        Assert.Contains("ENGINE_LIBNCCL=/nonexistent/libnccl.so.2 could not be loaded", probe.Error);
        Assert.Equal(saved, Environment.GetEnvironmentVariable("ENGINE_LIBNCCL"));
    }

    [Fact]
    public void Types_and_operators_map_onto_NCCL_s_enums()
    {
        // ncclDataType_t: ncclFloat32 = 7, ncclBfloat16 = 9; ncclRedOp_t: sum 0, max 2, min 3, avg 4.
        Assert.Equal(7, (int)NcclCommunicator.DataType(DType.F32));
        Assert.Equal(9, (int)NcclCommunicator.DataType(DType.BF16));
        Assert.Throws<ArgumentException>(() => NcclCommunicator.DataType(DType.I32));
        Assert.Equal([0, 4, 2, 3], new[] { ReduceOp.Sum, ReduceOp.Avg, ReduceOp.Max, ReduceOp.Min }.Select(o => (int)NcclCommunicator.RedOp(o)));
    }

    [Fact]
    public void The_unique_id_travels_as_its_128_bytes()
    {
        var bytes = new byte[128];
        new Random(3).NextBytes(bytes);
        Assert.Equal(bytes, NcclCommunicator.IdBytes(NcclCommunicator.IdFromBytes(bytes)));
        Assert.Contains("127 bytes", Assert.Throws<CommException>(() => NcclCommunicator.IdFromBytes(new byte[127])).Message);
    }

    [Fact]
    public void The_version_code_reads_as_major_minor_patch() =>
        Assert.Equal("2.18.3", NcclComm.VersionText(21803));
}
