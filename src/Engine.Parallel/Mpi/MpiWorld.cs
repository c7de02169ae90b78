using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Engine.Core.Distributed;
using Engine.Parallel.Interop;
using Engine.Parallel.Launch;
using Engine.Parallel.Store;
using static Engine.Parallel.Mpi.MpiLibrary;

namespace Engine.Parallel.Mpi;

/// <summary>
/// Forms the MPI world of a job, with its rendezvous store and watchdog (owned by the returned communicator).
/// <list type="bullet">
/// <item><see cref="Launched"/>: processes started by mpirun or srun --mpi=pmix — MPI_Init knows the world. Rank 0
/// hosts the store on its own address (127.0.0.1 when every rank shares its host) with a random token and
/// broadcasts address and token with MPI_Bcast.</item>
/// <item><see cref="Connected"/>: processes started with torchrun-style variables. Rank 0 hosts the store at
/// MASTER_ADDR:MASTER_PORT (ENGINE_JOB_TOKEN) and starts ompi-server; every rank points Open MPI at it
/// (OMPI_MCA_pmix_server_uri, set natively before MPI_Init) and initializes as a singleton; rank 0 opens a port and
/// publishes it in the store; ranks 1, 2, … connect in turn and MPI_Intercomm_merge grows the world one rank at a
/// time; MPI_Comm_split by RANK fixes the order.</item>
/// </list>
/// </summary>
public static class MpiWorld
{
    public static MpiCommunicator Launched(CommOptions options)
    {
        var mpi = MpiRuntime.Start(options.Timeout);
        var (world, rank, size, sameHost) = mpi.Worker.Invoke(() =>
        {
            Check(NativeMethods.MPI_Comm_dup(mpi.CommWorld, out IntPtr w));
            Check(NativeMethods.MPI_Comm_rank(w, out int r));
            Check(NativeMethods.MPI_Comm_size(w, out int s));
            return (w, r, s, SameHost(mpi, w));
        });
        TcpStoreServer? server = null;
        TcpStoreClient? client = null;
        try
        {
            string payload = "";
            if (rank == 0)
            {
                string host = sameHost ? "127.0.0.1" : HostAddress();
                string token = Convert.ToHexString(RandomNumberGenerator.GetBytes(16));
                server = TcpStoreServer.Start(host, 0, token, options.Write);
                payload = $"{host}\n{server.EndPoint.Port}\n{token}";
            }
            var parts = Encoding.UTF8.GetString(mpi.Worker.Invoke(() => MpiCommunicator.BroadcastBytes(mpi, world, Encoding.UTF8.GetBytes(payload), rank == 0, 0))).Split('\n');
            client = TcpStoreClient.Connect(parts[0], int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture), parts[2], options.Timeout);
            return Assemble(mpi, world, rank, size, options, server, client, null);
        }
        catch
        {
            client?.Dispose();
            server?.Dispose();
            mpi.Abandon();
            throw;
        }
    }

    public static unsafe MpiCommunicator Connected(RankInfo info, CommOptions options)
    {
        string addr = info.MasterAddr ?? throw new ArgumentException("MASTER_ADDR is not set: torchrun-style ranks need MASTER_ADDR and MASTER_PORT (rank 0's address and a free port)");
        int port = info.MasterPort ?? throw new ArgumentException("MASTER_PORT is not set: torchrun-style ranks need MASTER_ADDR and MASTER_PORT");
        string token = info.JobToken ?? throw new ArgumentException($"{LaunchEnvironment.TokenVariable} is not set: every rank must present the job's secret token to the rendezvous store");
        TcpStoreServer? server = null;
        TcpStoreClient? client = null;
        OmpiServer? ompi = null;
        MpiRuntime? mpi = null;
        try
        {
            if (info.Rank == 0) server = TcpStoreServer.Start(addr, port, token, options.Write);
            client = TcpStoreClient.Connect(addr, port, token, options.Timeout);
            string uri;
            if (info.Rank == 0)
            {
                ompi = OmpiServer.Start(options.Timeout);
                uri = ompi.Uri;
                client.SetString("mpi/server_uri", uri);
            }
            else uri = client.GetString("mpi/server_uri", options.Timeout, () => "rank 0 did not start ompi-server");
            NativeMethods.SetNativeEnvironment("OMPI_MCA_pmix_server_uri", uri);
            mpi = MpiRuntime.Start(options.Timeout);

            IntPtr world = IntPtr.Zero;
            Exception? error = null;
            var formed = new ManualResetEventSlim(false);
            var store = client;
            mpi.Worker.Post(() =>
            {
                try { world = Grow(mpi, store, info, options.Timeout); }
                catch (Exception e) { error = e; }
                finally { formed.Set(); }
            });
            if (!formed.Wait(options.Timeout + TimeSpan.FromSeconds(2)))
                throw new CommException($"the MPI world did not form within {options.Timeout.TotalSeconds:F0} s: {JoinState(client, info.WorldSize)}");
            if (error is not null) throw error is CommException c ? new CommException($"forming the MPI world: {c.Message}", c) : error;
            return Assemble(mpi, world, info.Rank, info.WorldSize, options, server, client, ompi);
        }
        catch
        {
            client?.Dispose();
            server?.Dispose();
            ompi?.Dispose();
            mpi?.Abandon();
            throw;
        }
    }

    /// <summary>The connect/accept growth (MPI thread): returns the world ordered by RANK.</summary>
    static unsafe IntPtr Grow(MpiRuntime mpi, IStore store, RankInfo info, TimeSpan timeout)
    {
        var portName = new byte[NativeMethods.MPI_MAX_PORT_NAME + 1];
        IntPtr comm = mpi.CommSelf;
        bool ownsComm = false;
        fixed (byte* port = portName)
        {
            if (info.Rank == 0)
            {
                Check(NativeMethods.MPI_Open_port(mpi.InfoNull, port));
                store.Set("mpi/port", portName.AsSpan(0, Array.IndexOf(portName, (byte)0)).ToArray());
            }
            else
            {
                var published = store.Get("mpi/port", timeout, () => "rank 0 did not open its MPI port");
                published.CopyTo(portName, 0);
                store.Get($"mpi/turn/{info.Rank}", timeout, () => $"rank 0 did not call rank {info.Rank} in: {JoinState(store, info.WorldSize)}");
                Check(NativeMethods.MPI_Comm_connect(port, mpi.InfoNull, 0, mpi.CommSelf, out IntPtr inter));
                Check(NativeMethods.MPI_Intercomm_merge(inter, 1, out IntPtr merged));
                Check(NativeMethods.MPI_Comm_free(ref inter));
                comm = merged;
                ownsComm = true;
            }
            for (int next = info.Rank + 1; next < info.WorldSize; next++)
            {
                if (info.Rank == 0) store.SetString($"mpi/turn/{next}", "go");
                Check(NativeMethods.MPI_Comm_accept(port, mpi.InfoNull, 0, comm, out IntPtr inter));
                Check(NativeMethods.MPI_Intercomm_merge(inter, 0, out IntPtr merged));
                Check(NativeMethods.MPI_Comm_free(ref inter));
                if (ownsComm) Check(NativeMethods.MPI_Comm_free(ref comm));
                comm = merged;
                ownsComm = true;
                if (info.Rank == 0) store.Add("mpi/joined", 1);
            }
            if (info.Rank == 0) Check(NativeMethods.MPI_Close_port(port));
        }
        Check(NativeMethods.MPI_Comm_split(comm, 0, info.Rank, out IntPtr world));
        if (ownsComm) Check(NativeMethods.MPI_Comm_free(ref comm));
        Check(NativeMethods.MPI_Comm_set_errhandler(world, Global("ompi_mpi_errors_return")));
        Check(NativeMethods.MPI_Comm_rank(world, out int rank));
        Check(NativeMethods.MPI_Comm_size(world, out int size));
        if (rank != info.Rank || size != info.WorldSize)
            throw new CommException($"the merged MPI world has rank {rank} of {size}, expected RANK={info.Rank} of WORLD_SIZE={info.WorldSize}");
        return world;
    }

    static string JoinState(IStore store, int worldSize)
    {
        try
        {
            long joined = store.Add("mpi/joined", 0) + 1;
            return joined >= worldSize ? "every rank joined" : $"{joined} of {worldSize} ranks joined; rank {joined} did not connect (it did not start, or cannot reach ompi-server)";
        }
        catch (CommException e) { return e.Message; }
    }

    static MpiCommunicator Assemble(MpiRuntime mpi, IntPtr world, int rank, int size, CommOptions options, TcpStoreServer? server, TcpStoreClient client, OmpiServer? ompi)
    {
        var watchdog = new CommWatchdog(client, rank, options);
        var comm = new MpiCommunicator(mpi, world, rank, size, "world", watchdog, r => r, isWorld: true);
        // Disposed in reverse: the watchdog, the store connection, the store, ompi-server (after MPI_Finalize).
        if (ompi is not null) comm.Own(ompi);
        if (server is not null) comm.Own(server);
        comm.Own(client);
        comm.Own(watchdog);
        return comm;
    }

    /// <summary>Whether every rank runs on this host (all-reduce of a hostname hash's max and min).</summary>
    static unsafe bool SameHost(MpiRuntime mpi, IntPtr comm)
    {
        int h = (int)(BitConverter.ToUInt32(SHA256.HashData(Encoding.UTF8.GetBytes(Dns.GetHostName()))) & 0x7FFFFFFF);
        int max = h, min = h;
        Check(NativeMethods.MPI_Allreduce((void*)NativeMethods.MPI_IN_PLACE, &max, 1, mpi.Int, mpi.OpMax, comm));
        Check(NativeMethods.MPI_Allreduce((void*)NativeMethods.MPI_IN_PLACE, &min, 1, mpi.Int, mpi.OpMin, comm));
        return max == min;
    }

    /// <summary>This host's address for peers on other hosts: the hostname's, unless it is loopback (Debian maps it to
    /// 127.0.1.1), else the first up, non-loopback IPv4 interface address.</summary>
    public static string HostAddress()
    {
        try
        {
            var named = Dns.GetHostAddresses(Dns.GetHostName()).FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
            if (named is not null) return named.ToString();
        }
        catch (SocketException) { }
        var iface = NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == OperationalStatus.Up && n.NetworkInterfaceType != NetworkInterfaceType.Loopback)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses)
            .Select(u => u.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
        return iface?.ToString() ?? throw new CommException("rank 0 found no network address to host the rendezvous store on for ranks on other hosts");
    }
}
