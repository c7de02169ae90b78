using System.Diagnostics;
using Engine.Core;
using Engine.Core.Distributed;

namespace Engine.Parallel.Tests;

/// <summary>A rank that hangs, dies or fails makes the others stop with one error naming it, never a hang.</summary>
public class WatchdogTests
{
    [Fact]
    public void A_rank_that_hangs_is_named_and_every_rank_stops()
    {
        var clock = Stopwatch.StartNew();
        var messages = ThreadCommunicator.Run(3, comm =>
        {
            using var t = CpuBackend.Instance.Zeros([10]);
            comm.AllReduce(t).Wait();                     // collective #1: everyone
            if (comm.Rank == 1) Thread.Sleep(8000);       // rank 1 is stuck in its own code before #2
            return Assert.Throws<CommException>(() => comm.AllReduce(t).Wait()).Message;
        }, Reference.Fast(timeoutSeconds: 3));
        // Ranks 0 and 2 time out in #2 and name rank 1; rank 1 learned the fault from the store while it slept, so
        // its own next call fails at once with the same message.
        Assert.All(messages, m => Assert.Matches(
            @"^collective #2 all_reduce timed out after \d+(\.\d)? s on rank [02]: rank 1 is alive but has not reached collective #2 all_reduce \(it is at #1 all_reduce\)$", m));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"took {clock.Elapsed}");
    }

    [Fact]
    public void A_rank_that_stops_sending_heartbeats_is_named_dead()
    {
        var messages = ThreadCommunicator.Run(3, comm =>
        {
            using var t = CpuBackend.Instance.Zeros([10]);
            comm.AllReduce(t).Wait();
            if (comm.Rank == 2)
            {
                Thread.Sleep(1000);   // a few heartbeats, then
                comm.Dispose();       // like a process that died: no heartbeats, never reaches #2
                return "";
            }
            return Assert.Throws<CommException>(() => comm.AllReduce(t).Wait()).Message;
        }, Reference.Fast(timeoutSeconds: 6));
        foreach (var m in messages.Where(m => m.Length > 0))
            Assert.True(System.Text.RegularExpressions.Regex.IsMatch(m, @"^collective #2 all_reduce (timed out after|waited) \d+(\.\d)? s on rank [01]: rank 2 stopped sending heartbeats \d+(\.\d)? s ago \(dead or stopped\)$"), m);
    }

    /// <summary>A heartbeat timeout: a peer of a pending collective whose heartbeat is older than StaleAfter (3 s here)
    /// stops it long before the operation's own timeout (120 s here), naming the silent rank.</summary>
    [Fact]
    public void Stale_heartbeats_stop_a_pending_collective_before_its_timeout()
    {
        var clock = Stopwatch.StartNew();
        var messages = ThreadCommunicator.Run(2, comm =>
        {
            using var t = CpuBackend.Instance.Zeros([10]);
            comm.AllReduce(t).Wait();
            if (comm.Rank == 1)
            {
                Thread.Sleep(1000);   // a few heartbeats, then
                comm.Dispose();       // silent from here on, as a stopped (SIGSTOP) or vanished process
                return "";
            }
            return Assert.Throws<CommException>(() => comm.AllReduce(t).Wait()).Message;
        }, Reference.Fast(timeoutSeconds: 120));
        Assert.Matches(@"^collective #2 all_reduce waited \d+(\.\d)? s on rank 0: rank 1 stopped sending heartbeats \d+(\.\d)? s ago \(dead or stopped\)$", messages[0]);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"took {clock.Elapsed}");
    }

    [Fact]
    public void A_rank_that_throws_aborts_the_others_and_its_exception_is_rethrown()
    {
        string? seenByRank0 = null;
        var e = Assert.Throws<InvalidOperationException>(() => ThreadCommunicator.Run(2, comm =>
        {
            using var t = CpuBackend.Instance.Zeros([10]);
            if (comm.Rank == 1) throw new InvalidOperationException("boom");
            seenByRank0 = Assert.Throws<CommException>(() => comm.AllReduce(t).Wait()).Message;
        }, Reference.Fast()));
        Assert.Equal("boom", e.Message);
        Assert.Equal("rank 1 aborted: rank 1 failed: boom", seenByRank0);
    }

    [Fact]
    public void Abort_fails_pending_work_and_later_calls()
    {
        ThreadCommunicator.Run(2, comm =>
        {
            using var t = CpuBackend.Instance.Zeros([10]);
            if (comm.Rank == 0)
            {
                var w = comm.AllReduce(t);   // rank 1 never joins it
                comm.Abort("giving up");
                Assert.Equal("rank 0 aborted: giving up", Assert.Throws<CommException>(w.Wait).Message);
            }
            else
            {
                // The fault reaches rank 1 through the store within a few heartbeats.
                var deadline = Stopwatch.StartNew();
                while (((Communicator)comm).Fault is null && deadline.Elapsed < TimeSpan.FromSeconds(20)) Thread.Sleep(20);
            }
            Assert.Equal("rank 0 aborted: giving up", Assert.Throws<CommException>(() => comm.AllReduce(t)).Message);
        }, Reference.Fast());
    }
}
