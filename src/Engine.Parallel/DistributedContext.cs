using Engine.Core;
using Engine.Core.Distributed;
using Engine.Parallel.Launch;
using Engine.Parallel.Mpi;
using Engine.Parallel.Store;

namespace Engine.Parallel;

/// <summary>
/// What an NCCL communicator needs from the job (Engine.Cuda builds it; this project does not reference CUDA).
/// </summary>
/// <param name="ShareId">Rank 0 passes its ncclUniqueId bytes and gets them back; the other ranks pass null and
/// receive rank 0's (through MPI when an MPI runtime started the job, else through the rendezvous store).</param>
/// <param name="Watchdog">This rank's watchdog (heartbeats, faults, timeouts) over the job's store.</param>
/// <param name="Resources">What the communicator must own and dispose after itself (store, server, MPI bootstrap).</param>
public sealed record NcclBootstrap(
    IBackend Backend, RankInfo Info, Func<byte[]?, byte[]> ShareId, CommWatchdog Watchdog, CommOptions Options,
    IReadOnlyList<IDisposable> Resources);

/// <summary>
/// The communicator of this process, from its launch environment:
/// <list type="bullet">
/// <item>world size 1 → <see cref="SingleRankCommunicator"/>;</item>
/// <item>CPU, started by mpirun or srun --mpi=pmix → MPI (<see cref="MpiWorld.Launched"/>);</item>
/// <item>CPU, torchrun-style variables → MPI grown through ompi-server (<see cref="MpiWorld.Connected"/>);</item>
/// <item>CUDA → NCCL through <paramref name="nccl"/> (Engine.Cuda's NcclCommunicator.Create), its unique id exchanged
/// through MPI under an MPI runtime, else through the store at MASTER_ADDR:MASTER_PORT.</item>
/// </list>
/// </summary>
public static class DistributedContext
{
    public static ICommunicator Create(IBackend backend, RankInfo info, CommOptions options, Func<NcclBootstrap, ICommunicator>? nccl = null)
    {
        if (info.WorldSize == 1) return new SingleRankCommunicator(backend);
        return backend.Name switch
        {
            "cpu" => CreateCpu(info, options),
            "cuda" => CreateNccl(backend, info, options, nccl ?? throw new NotSupportedException("no NCCL communicator factory was given for device 'cuda'")),
            _ => throw new NotSupportedException($"no communicator for backend '{backend.Name}'"),
        };
    }

    /// <summary>The communicator for this process's environment with the CLI's settings: ENGINE_COMM_* overrides,
    /// and a rank that a fault leaves stuck in its own code exits instead of outliving the job.</summary>
    public static ICommunicator FromEnvironment(IBackend backend, Func<NcclBootstrap, ICommunicator>? nccl = null)
    {
        LauncherWatch.StartFromEnvironment();   // a rank of `engine launch` ends when the launcher dies
        return Create(backend, LaunchEnvironment.Detect(), CommOptions.FromEnvironment(Environment.GetEnvironmentVariable) with { ExitOnFault = true }, nccl);
    }

    static ICommunicator CreateCpu(RankInfo info, CommOptions options)
    {
        if (info.MpiRuntime) return MpiWorld.Launched(options);
        if (info.Launcher == LauncherKind.Slurm && info.MasterPort is null)
            throw new NotSupportedException("under srun, CPU ranks need Open MPI's PMIx (srun --mpi=pmix), or MASTER_PORT and ENGINE_JOB_TOKEN set for a torchrun-style start");
        return MpiWorld.Connected(info, options);
    }

    static ICommunicator CreateNccl(IBackend backend, RankInfo info, CommOptions options, Func<NcclBootstrap, ICommunicator> nccl)
    {
        if (info.MpiRuntime)
        {
            // MPI carries the unique id; its store and watchdog serve NCCL too.
            var mpi = MpiWorld.Launched(options);
            try
            {
                return nccl(new NcclBootstrap(backend, info with { Rank = mpi.Rank, WorldSize = mpi.WorldSize },
                    id => mpi.Broadcast(id ?? [], 0), mpi.Watchdog!, options, [mpi]));
            }
            catch
            {
                mpi.Dispose();
                throw;
            }
        }
        string addr = info.MasterAddr ?? throw new ArgumentException("MASTER_ADDR is not set: GPU ranks exchange the NCCL id through the rendezvous store at MASTER_ADDR:MASTER_PORT");
        int port = info.MasterPort ?? throw new ArgumentException("MASTER_PORT is not set: GPU ranks exchange the NCCL id through the rendezvous store at MASTER_ADDR:MASTER_PORT");
        string token = info.JobToken ?? throw new ArgumentException($"{LaunchEnvironment.TokenVariable} is not set: every rank must present the job's secret token to the rendezvous store");
        var resources = new List<IDisposable>();
        try
        {
            if (info.Rank == 0) resources.Add(TcpStoreServer.Start(addr, port, token, options.Write));
            var client = TcpStoreClient.Connect(addr, port, token, options.Timeout);
            resources.Add(client);
            var watchdog = new CommWatchdog(client, info.Rank, options);
            resources.Add(watchdog);
            byte[] Share(byte[]? id)
            {
                if (id is not null)
                {
                    client.Set("nccl/id", id);
                    // Rank 0 hosts the store: it stays until every rank has the id.
                    client.WaitCount("nccl/id_taken", info.WorldSize - 1, options.Timeout, () => "not every rank fetched the NCCL unique id");
                    return id;
                }
                var got = client.Get("nccl/id", options.Timeout, () => "rank 0 did not publish the NCCL unique id");
                client.Add("nccl/id_taken", 1);
                return got;
            }
            // Every rank shows up in the store before NCCL's init, which would otherwise wait forever for a missing rank.
            client.Add("nccl/present", 1);
            client.WaitCount("nccl/present", info.WorldSize, options.Timeout, () => "not every rank reached the store (one did not start)");
            resources.Add(new Departure(client, watchdog, info.Rank == 0 ? info.WorldSize : 0, options.Timeout));
            return nccl(new NcclBootstrap(backend, info, Share, watchdog, options, resources));
        }
        catch
        {
            for (int i = resources.Count - 1; i >= 0; i--) resources[i].Dispose();
            throw;
        }
    }
}

/// <summary>
/// Disposed first among a store-based world's resources: every rank signs off, and rank 0 — which hosts the store —
/// waits (bounded) for all of them before the store goes, so a rank still finishing its last operation never finds
/// the store gone and mistakes rank 0 for dead. Skipped after a fault.
/// </summary>
sealed class Departure(IStore store, CommWatchdog watchdog, int waitFor, TimeSpan timeout) : IDisposable
{
    public void Dispose()
    {
        if (watchdog.Fault is not null) return;
        try
        {
            store.Add("departed", 1);
            if (waitFor > 0) store.WaitCount("departed", waitFor, timeout < TimeSpan.FromMinutes(1) ? timeout : TimeSpan.FromMinutes(1));
        }
        catch (CommException) { }   // a rank that left without signing off: nothing more to wait for
    }
}
