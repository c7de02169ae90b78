using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Engine.Core.Distributed;

namespace Engine.Parallel.Store;

/// <summary>
/// Wire format of the rendezvous store: frames of a little-endian u32 length and a payload.
/// <list type="bullet">
/// <item>Handshake (client → server): "ENGINE-STORE/1\n" + the job token; the server answers "OK" or closes.</item>
/// <item>Request: op (u8), key length (u16), key (UTF-8), value. Ops: 1 set, 2 get, 3 add (value: i64), 4 delete,
/// 5 join (value: the job rank this connection belongs to), 6 leave (the rank is ending normally).</item>
/// <item>Response: set/delete/join/leave: one byte 0; get: 0 (unset) or 1, age in ms (i64, the store's clock), value;
/// add: the new value (i64).</item>
/// </list>
/// A joined connection that closes without leaving is a rank that died (kill -9, a crash, its host gone): the server
/// reports it job-wide at once under <see cref="DeathFaultKey"/> (the watchdog's fault key), so every other rank stops
/// at its next heartbeat instead of waiting in a collective until the timeout.
/// </summary>
static class StoreProtocol
{
    public const string Magic = "ENGINE-STORE/1\n";
    public const byte Set = 1, Get = 2, Add = 3, Delete = 4, Join = 5, Leave = 6;

    /// <summary>The job-wide fault key (<see cref="CommWatchdog.FaultKey"/>): the first report wins (its counter).</summary>
    public const string DeathFaultKey = "fault";
    public const int MaxFrame = 16 << 20, MaxHandshake = 4096;

    public static async Task WriteFrameAsync(Stream s, byte[] payload, CancellationToken ct)
    {
        var header = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)payload.Length);
        await s.WriteAsync(header, ct);
        await s.WriteAsync(payload, ct);
        await s.FlushAsync(ct);
    }

    /// <summary>The next frame, or null at end of stream.</summary>
    public static async Task<byte[]?> ReadFrameAsync(Stream s, int max, CancellationToken ct)
    {
        var header = new byte[4];
        int got = 0;
        while (got < 4)
        {
            int n = await s.ReadAsync(header.AsMemory(got), ct);
            if (n == 0) return null;
            got += n;
        }
        uint len = BinaryPrimitives.ReadUInt32LittleEndian(header);
        if (len > max) throw new InvalidDataException($"store frame of {len} bytes exceeds {max}");
        var payload = new byte[len];
        await s.ReadExactlyAsync(payload, ct);
        return payload;
    }

    public static void WriteFrame(Stream s, byte[] payload)
    {
        Span<byte> header = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)payload.Length);
        s.Write(header);
        s.Write(payload);
        s.Flush();
    }

    public static byte[]? ReadFrame(Stream s, int max)
    {
        Span<byte> header = stackalloc byte[4];
        int got = 0;
        while (got < 4)
        {
            int n = s.Read(header[got..]);
            if (n == 0) return null;
            got += n;
        }
        uint len = BinaryPrimitives.ReadUInt32LittleEndian(header);
        if (len > max) throw new InvalidDataException($"store frame of {len} bytes exceeds {max}");
        var payload = new byte[len];
        s.ReadExactly(payload);
        return payload;
    }

    public static byte[] Request(byte op, string key, ReadOnlySpan<byte> value)
    {
        int keyBytes = Encoding.UTF8.GetByteCount(key);
        if (keyBytes > ushort.MaxValue) throw new ArgumentException($"store key of {keyBytes} bytes is too long");
        var frame = new byte[3 + keyBytes + value.Length];
        frame[0] = op;
        BinaryPrimitives.WriteUInt16LittleEndian(frame.AsSpan(1), (ushort)keyBytes);
        Encoding.UTF8.GetBytes(key, frame.AsSpan(3));
        value.CopyTo(frame.AsSpan(3 + keyBytes));
        return frame;
    }

    /// <summary>SHA-256 of the token: equal-length digests compared in constant time.</summary>
    public static byte[] Digest(string token) => SHA256.HashData(Encoding.UTF8.GetBytes(token));

    public static IPAddress[] Resolve(string host)
    {
        if (IPAddress.TryParse(host, out var ip)) return [ip];
        try
        {
            var all = Dns.GetHostAddresses(host);
            return [.. all.OrderBy(a => a.AddressFamily == AddressFamily.InterNetwork ? 0 : 1)];
        }
        catch (SocketException e)
        {
            throw new CommException($"cannot resolve the rendezvous host '{host}': {e.Message}", e);
        }
    }
}

/// <summary>
/// Rank 0's rendezvous store (torchrun's TCPStore, hardened): it listens only on the given address (never 0.0.0.0)
/// and answers only peers that present the job's token (ENGINE_JOB_TOKEN); a wrong token is logged and disconnected.
/// Keys live in memory for the job's lifetime.
/// </summary>
public sealed class TcpStoreServer : IDisposable
{
    readonly TcpListener listener;
    readonly byte[] tokenDigest;
    readonly Action<string> log;
    readonly CancellationTokenSource stop = new();
    readonly Lock gate = new();
    readonly Dictionary<string, (byte[] Value, long SetAt)> entries = new(StringComparer.Ordinal);
    readonly List<TcpClient> clients = [];
    readonly Task acceptLoop;

    TcpStoreServer(TcpListener listener, string token, Action<string> log)
    {
        this.listener = listener; this.log = log;
        tokenDigest = StoreProtocol.Digest(token);
        EndPoint = (IPEndPoint)listener.LocalEndpoint;
        acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>The address and port it listens on (port 0 asks the system for a free one).</summary>
    public IPEndPoint EndPoint { get; }

    /// <summary>Refused connections so far (wrong token, malformed handshake).</summary>
    public int Refused { get; private set; }

    /// <summary>Connections that have closed so far (refused, left normally or not).</summary>
    public int Closed { get; private set; }

    /// <summary>Listens on <paramref name="host"/> (an address of this machine, or a name resolving to one).</summary>
    public static TcpStoreServer Start(string host, int port, string token, Action<string> log)
    {
        if (string.IsNullOrEmpty(token)) throw new ArgumentException("the rendezvous store needs a job token (ENGINE_JOB_TOKEN)");
        if (port is < 0 or > 65535) throw new ArgumentOutOfRangeException(nameof(port), $"port {port} outside 0..65535");
        SocketException? last = null;
        foreach (var address in StoreProtocol.Resolve(host))
        {
            var listener = new TcpListener(address, port);
            // SO_REUSEADDR alone (binding over TIME_WAIT connections of an earlier job). .NET's ReuseAddress option
            // also sets SO_REUSEPORT on Linux, which would let a second store listen on the same port.
            if (OperatingSystem.IsLinux()) listener.Server.SetRawSocketOption(1 /* SOL_SOCKET */, 2 /* SO_REUSEADDR */, BitConverter.GetBytes(1));
            try
            {
                listener.Start(backlog: 1024);
                return new TcpStoreServer(listener, token, log);
            }
            catch (SocketException e)
            {
                listener.Dispose();
                last = e;
            }
        }
        throw new CommException($"rank 0 cannot host the rendezvous store on {host}:{port}: {last?.Message} " +
            "(MASTER_ADDR must be an address of rank 0's machine and MASTER_PORT free)", last);
    }

    async Task AcceptLoopAsync()
    {
        while (!stop.IsCancellationRequested)
        {
            TcpClient client;
            try { client = await listener.AcceptTcpClientAsync(stop.Token); }
            catch (Exception) when (stop.IsCancellationRequested) { return; }
            catch (SocketException) { continue; }
            catch (ObjectDisposedException) { return; }
            client.NoDelay = true;
            lock (gate) clients.Add(client);
            _ = Task.Run(() => ServeAsync(client));
        }
    }

    async Task ServeAsync(TcpClient client)
    {
        string remote = client.Client.RemoteEndPoint?.ToString() ?? "?";
        var session = new Session();
        try
        {
            var stream = client.GetStream();
            using (var handshake = CancellationTokenSource.CreateLinkedTokenSource(stop.Token))
            {
                handshake.CancelAfter(TimeSpan.FromSeconds(10));
                byte[]? hello;
                try { hello = await StoreProtocol.ReadFrameAsync(stream, StoreProtocol.MaxHandshake, handshake.Token); }
                catch (Exception e) when (e is InvalidDataException or OperationCanceledException or IOException) { hello = null; }
                if (!Authentic(hello))
                {
                    lock (gate) Refused++;
                    if (!stop.IsCancellationRequested) log($"rendezvous store: refused a connection from {remote}: wrong job token (ENGINE_JOB_TOKEN)");
                    return;
                }
                await StoreProtocol.WriteFrameAsync(stream, "OK"u8.ToArray(), stop.Token);
            }
            while (await StoreProtocol.ReadFrameAsync(stream, StoreProtocol.MaxFrame, stop.Token) is { } request)
                await StoreProtocol.WriteFrameAsync(stream, Handle(request, session), stop.Token);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or InvalidDataException or ObjectDisposedException)
        {
            // a peer that went away or sent garbage: drop its connection
        }
        finally
        {
            lock (gate) clients.Remove(client);
            client.Dispose();
            if (session.Rank is int rank && !session.Left && !stop.IsCancellationRequested)
                ReportDeath($"rank {rank} died: its connection to the rendezvous store closed without signing off " +
                    "(the process was killed or crashed, or its host went down); stopping the job");
            lock (gate) Closed++;
        }
    }

    /// <summary>What one connection said about itself: the job rank it joined as, and whether it left normally.</summary>
    sealed class Session
    {
        public int? Rank;
        public bool Left;
    }

    void ReportDeath(string message)
    {
        lock (gate)
        {
            long count = entries.TryGetValue(StoreProtocol.DeathFaultKey + "/count", out var c) && c.Value.Length == 8 ? BinaryPrimitives.ReadInt64LittleEndian(c.Value) : 0;
            var bytes = new byte[8];
            BinaryPrimitives.WriteInt64LittleEndian(bytes, count + 1);
            entries[StoreProtocol.DeathFaultKey + "/count"] = (bytes, Stopwatch.GetTimestamp());
            if (count == 0) entries[StoreProtocol.DeathFaultKey] = (Encoding.UTF8.GetBytes(message), Stopwatch.GetTimestamp());
        }
    }

    bool Authentic(byte[]? hello)
    {
        var magic = Encoding.UTF8.GetBytes(StoreProtocol.Magic);
        if (hello is null || hello.Length < magic.Length || !hello.AsSpan(0, magic.Length).SequenceEqual(magic)) return false;
        var digest = SHA256.HashData(hello.AsSpan(magic.Length));
        return CryptographicOperations.FixedTimeEquals(digest, tokenDigest);
    }

    byte[] Handle(byte[] request, Session session)
    {
        if (request.Length < 3) throw new InvalidDataException("short store request");
        int keyLen = BinaryPrimitives.ReadUInt16LittleEndian(request.AsSpan(1));
        if (3 + keyLen > request.Length) throw new InvalidDataException("store key past the frame");
        string key = Encoding.UTF8.GetString(request, 3, keyLen);
        var value = request.AsSpan(3 + keyLen);
        lock (gate)
        {
            switch (request[0])
            {
                case StoreProtocol.Set:
                    entries[key] = (value.ToArray(), Stopwatch.GetTimestamp());
                    return [0];
                case StoreProtocol.Get:
                    if (!entries.TryGetValue(key, out var e)) return [0];
                    var r = new byte[9 + e.Value.Length];
                    r[0] = 1;
                    BinaryPrimitives.WriteInt64LittleEndian(r.AsSpan(1), (long)Stopwatch.GetElapsedTime(e.SetAt).TotalMilliseconds);
                    e.Value.CopyTo(r, 9);
                    return r;
                case StoreProtocol.Add:
                    if (value.Length != 8) throw new InvalidDataException("store add needs an i64");
                    long v = entries.TryGetValue(key, out var old) && old.Value.Length == 8 ? BinaryPrimitives.ReadInt64LittleEndian(old.Value) : 0;
                    v += BinaryPrimitives.ReadInt64LittleEndian(value);
                    var bytes = new byte[8];
                    BinaryPrimitives.WriteInt64LittleEndian(bytes, v);
                    entries[key] = (bytes, Stopwatch.GetTimestamp());
                    return bytes;
                case StoreProtocol.Delete:
                    entries.Remove(key);
                    return [0];
                case StoreProtocol.Join:
                    if (value.Length != 8) throw new InvalidDataException("store join needs an i64 rank");
                    session.Rank = (int)BinaryPrimitives.ReadInt64LittleEndian(value);
                    return [0];
                case StoreProtocol.Leave:
                    session.Left = true;
                    return [0];
                default:
                    throw new InvalidDataException($"unknown store op {request[0]}");
            }
        }
    }

    public void Dispose()
    {
        stop.Cancel();
        listener.Stop();
        TcpClient[] open;
        lock (gate) open = [.. clients];
        foreach (var c in open) c.Dispose();
        try { acceptLoop.Wait(TimeSpan.FromSeconds(5)); }
        catch (AggregateException) { }
    }
}

/// <summary>A connection to the rendezvous store; one request at a time (thread-safe).</summary>
public sealed class TcpStoreClient : IStore
{
    /// <summary>A store that does not answer within this long is taken as gone (a stopped rank 0).</summary>
    public static readonly TimeSpan ReplyTimeout = TimeSpan.FromSeconds(30);

    readonly TcpClient client;
    readonly NetworkStream stream;
    readonly Lock gate = new();

    TcpStoreClient(TcpClient client, string describe)
    {
        this.client = client;
        stream = client.GetStream();
        stream.ReadTimeout = (int)ReplyTimeout.TotalMilliseconds;
        stream.WriteTimeout = (int)ReplyTimeout.TotalMilliseconds;
        Describe = describe;
    }

    public string Describe { get; }

    /// <summary>
    /// Connects to the store at <paramref name="host"/>:<paramref name="port"/>, retrying while it is not listening
    /// yet (rank 0 may start later) until <paramref name="timeout"/>; fails at once when the store refuses the token.
    /// </summary>
    public static TcpStoreClient Connect(string host, int port, string token, TimeSpan timeout)
    {
        string describe = $"the rendezvous store at {host}:{port}";
        var clock = Stopwatch.StartNew();
        int sleepMs = 20;
        Exception? last = null;
        while (true)
        {
            foreach (var address in StoreProtocol.Resolve(host))
            {
                var client = new TcpClient(address.AddressFamily) { NoDelay = true };
                try
                {
                    var remaining = timeout - clock.Elapsed;
                    if (!client.ConnectAsync(address, port).Wait(remaining > TimeSpan.FromSeconds(5) ? TimeSpan.FromSeconds(5) : remaining > TimeSpan.Zero ? remaining : TimeSpan.Zero))
                        throw new SocketException((int)SocketError.TimedOut);
                }
                catch (Exception e) when (e is SocketException or AggregateException)
                {
                    last = e is AggregateException a ? a.InnerException ?? a : e;
                    client.Dispose();
                    continue;
                }
                var store = new TcpStoreClient(client, describe);
                try
                {
                    StoreProtocol.WriteFrame(store.stream, [.. Encoding.UTF8.GetBytes(StoreProtocol.Magic), .. Encoding.UTF8.GetBytes(token)]);
                    var answer = StoreProtocol.ReadFrame(store.stream, 16);
                    if (answer is null || !answer.AsSpan().SequenceEqual("OK"u8))
                        throw new CommException($"{describe} refused this process: its job token (ENGINE_JOB_TOKEN) is not the job's");
                    return store;
                }
                catch (IOException e)
                {
                    store.Dispose();
                    throw new CommException($"{describe} refused this process: its job token (ENGINE_JOB_TOKEN) is not the job's ({e.Message})", e);
                }
            }
            if (clock.Elapsed > timeout)
                throw new CommException($"cannot reach {describe} after {timeout.TotalSeconds:F0} s: {last?.Message} (is rank 0 running, and MASTER_ADDR/MASTER_PORT right?)", last);
            Thread.Sleep(sleepMs);
            sleepMs = Math.Min(1000, sleepMs * 2);
        }
    }

    byte[] Call(byte[] request)
    {
        lock (gate)
        {
            try
            {
                StoreProtocol.WriteFrame(stream, request);
                return StoreProtocol.ReadFrame(stream, StoreProtocol.MaxFrame) ?? throw new IOException("connection closed");
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or InvalidDataException)
            {
                throw new CommException($"lost {Describe}: {e.Message}", e);
            }
        }
    }

    public void Set(string key, byte[] value) => Call(StoreProtocol.Request(StoreProtocol.Set, key, value));

    public StoreEntry? TryGet(string key)
    {
        var r = Call(StoreProtocol.Request(StoreProtocol.Get, key, []));
        if (r.Length == 0 || r[0] == 0) return null;
        return new StoreEntry(r[9..], TimeSpan.FromMilliseconds(BinaryPrimitives.ReadInt64LittleEndian(r.AsSpan(1))));
    }

    public long Add(string key, long delta)
    {
        Span<byte> v = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(v, delta);
        return BinaryPrimitives.ReadInt64LittleEndian(Call(StoreProtocol.Request(StoreProtocol.Add, key, v)));
    }

    public void Delete(string key) => Call(StoreProtocol.Request(StoreProtocol.Delete, key, []));

    /// <summary>Tells the store this connection is job rank <paramref name="rank"/>: if it closes without
    /// <see cref="Leave"/>, the store reports the rank dead job-wide.</summary>
    public void Join(int rank)
    {
        Span<byte> v = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(v, rank);
        Call(StoreProtocol.Request(StoreProtocol.Join, "", v));
    }

    /// <summary>This rank is ending normally: its connection closing is no death.</summary>
    public void Leave() => Call(StoreProtocol.Request(StoreProtocol.Leave, "", []));

    public void Dispose()
    {
        stream.Dispose();
        client.Dispose();
    }
}
