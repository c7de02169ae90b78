using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Engine.Core.Distributed;
using Engine.Parallel.Store;

namespace Engine.Parallel.Tests;

public class StoreTests
{
    static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    [Fact]
    public void Set_get_add_delete_round_trip_with_the_store_s_age()
    {
        var log = new List<string>();
        using var server = TcpStoreServer.Start("127.0.0.1", 0, "secret", log.Add);
        using var a = TcpStoreClient.Connect("127.0.0.1", server.EndPoint.Port, "secret", Patience);
        using var b = TcpStoreClient.Connect("localhost", server.EndPoint.Port, "secret", Patience);
        Assert.Null(a.TryGet("k"));
        a.SetString("k", "v1");
        Assert.Equal("v1", b.TryGetString("k"));
        Thread.Sleep(300);
        Assert.True(b.TryGet("k")!.Value.Age >= TimeSpan.FromMilliseconds(250));
        Assert.Equal(5, a.Add("n", 5));
        Assert.Equal(3, b.Add("n", -2));
        Assert.Equal(3, a.Add("n", 0));
        b.Delete("k");
        Assert.Null(a.TryGet("k"));
        Assert.Empty(log);
    }

    [Fact]
    public async Task Blocking_get_waits_for_the_value_or_names_the_key_on_timeout()
    {
        using var server = TcpStoreServer.Start("127.0.0.1", 0, "t", _ => { });
        using var a = TcpStoreClient.Connect("127.0.0.1", server.EndPoint.Port, "t", Patience);
        using var b = TcpStoreClient.Connect("127.0.0.1", server.EndPoint.Port, "t", Patience);
        var setter = Task.Run(() => { Thread.Sleep(200); b.SetString("late", "here"); }, TestContext.Current.CancellationToken);
        Assert.Equal("here", a.GetString("late", Patience));
        await setter;
        var e = Assert.Throws<CommException>(() => a.Get("never", TimeSpan.FromMilliseconds(200), () => "rank 3 did not publish it"));
        Assert.Contains("'never'", e.Message);
        Assert.Contains("rank 3 did not publish it", e.Message);
    }

    [Fact]
    public void A_wrong_token_is_refused_logged_and_does_not_disturb_others()
    {
        var log = new List<string>();
        using var server = TcpStoreServer.Start("127.0.0.1", 0, "the-job-token", m => { lock (log) log.Add(m); });
        using var good = TcpStoreClient.Connect("127.0.0.1", server.EndPoint.Port, "the-job-token", Patience);
        good.SetString("x", "1");
        var e = Assert.Throws<CommException>(() => TcpStoreClient.Connect("127.0.0.1", server.EndPoint.Port, "the-job-tokeN", Patience));
        Assert.Contains("refused this process", e.Message);
        Assert.Contains("ENGINE_JOB_TOKEN", e.Message);
        // A peer speaking another protocol is refused too.
        using (var raw = new TcpClient())
        {
            raw.Connect(IPAddress.Loopback, server.EndPoint.Port);
            raw.GetStream().Write("GET / HTTP/1.0\r\n\r\n"u8);
            Assert.Equal(0, raw.GetStream().Read(new byte[16]));   // closed without an answer
        }
        Assert.Equal("1", good.TryGetString("x"));
        for (int i = 0; i < 100 && server.Refused < 2; i++) Thread.Sleep(20);
        Assert.Equal(2, server.Refused);
        lock (log)
        {
            Assert.Equal(2, log.Count);
            Assert.All(log, m => Assert.Matches(@"^rendezvous store: refused a connection from 127\.0\.0\.1:\d+: wrong job token", m));
        }
    }

    [Fact]
    public void It_listens_only_on_the_given_address()
    {
        using var server = TcpStoreServer.Start("127.0.0.1", 0, "t", _ => { });
        Assert.Equal(IPAddress.Loopback, server.EndPoint.Address);
        var other = Dns.GetHostAddresses(Dns.GetHostName())
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
        if (other is null) Assert.Skip("this machine has no non-loopback IPv4 address to try");
        using var probe = new TcpClient();
        var e = Assert.ThrowsAny<SocketException>(() => probe.Connect(other, server.EndPoint.Port));
        Assert.Equal(SocketError.ConnectionRefused, e.SocketErrorCode);
    }

    [Fact]
    public async Task A_client_waits_for_a_store_that_starts_later_and_fails_clearly_without_one()
    {
        int port = FreePort();
        var late = Task.Run(() => { Thread.Sleep(500); return TcpStoreServer.Start("127.0.0.1", port, "t", _ => { }); }, TestContext.Current.CancellationToken);
        using (var c = TcpStoreClient.Connect("127.0.0.1", port, "t", Patience)) c.SetString("a", "b");
        (await late).Dispose();
        var e = Assert.Throws<CommException>(() => TcpStoreClient.Connect("127.0.0.1", FreePort(), "t", TimeSpan.FromMilliseconds(300)));
        Assert.Contains("cannot reach the rendezvous store at 127.0.0.1:", e.Message);
    }

    [Fact]
    public void A_store_that_goes_away_is_a_CommException_naming_it()
    {
        var server = TcpStoreServer.Start("127.0.0.1", 0, "t", _ => { });
        using var c = TcpStoreClient.Connect("127.0.0.1", server.EndPoint.Port, "t", Patience);
        c.SetString("a", "b");
        server.Dispose();
        var e = Assert.Throws<CommException>(() => { c.SetString("a", "c"); c.TryGet("a"); });
        Assert.Contains("lost the rendezvous store at 127.0.0.1:", e.Message);
    }

    /// <summary>A rank joins the store as itself: closing after leaving is a normal end; closing without leaving (the
    /// process killed) is reported at once under the watchdog's fault key, naming the rank.</summary>
    [Fact]
    public void A_joined_rank_that_closes_without_leaving_is_reported_dead()
    {
        using var server = TcpStoreServer.Start("127.0.0.1", 0, "t", _ => { });
        using var observer = TcpStoreClient.Connect("127.0.0.1", server.EndPoint.Port, "t", Patience);
        using (var done = TcpStoreClient.Connect("127.0.0.1", server.EndPoint.Port, "t", Patience))
        {
            done.Join(2);
            done.Leave();
        }
        var clock = Stopwatch.StartNew();
        while (server.Closed < 1) { Assert.True(clock.Elapsed < Patience, "the server never saw the connection close"); Thread.Sleep(10); }
        Assert.Null(observer.TryGetString(CommWatchdog.FaultKey));   // a normal end is no death

        var dead = TcpStoreClient.Connect("127.0.0.1", server.EndPoint.Port, "t", Patience);
        dead.Join(1);
        dead.Dispose();   // the socket closes as the kernel closes a killed process's sockets
        Assert.Equal("rank 1 died: its connection to the rendezvous store closed without signing off (the process was killed or crashed, or its host went down); stopping the job",
            observer.GetString(CommWatchdog.FaultKey, Patience));
        Assert.Equal(1, observer.Add(CommWatchdog.FaultKey + "/count", 0));
    }

    [Fact]
    public void A_busy_address_is_one_clear_error()
    {
        using var first = TcpStoreServer.Start("127.0.0.1", 0, "t", _ => { });
        var e = Assert.Throws<CommException>(() => TcpStoreServer.Start("127.0.0.1", first.EndPoint.Port, "t", _ => { }));
        Assert.Contains("cannot host the rendezvous store on 127.0.0.1:", e.Message);
        Assert.Contains("MASTER_PORT", e.Message);
    }
}
