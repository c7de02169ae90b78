using System.Diagnostics;
using System.Text;
using Engine.Core.Distributed;

namespace Engine.Parallel.Store;

/// <summary>A value and how long ago it was set, by the store's own clock (no clock skew between ranks).</summary>
public readonly record struct StoreEntry(byte[] Value, TimeSpan Age);

/// <summary>
/// The job's key-value rendezvous store (torchrun's TCPStore design): ids and addresses exchanged at start-up, the
/// watchdog's heartbeats and the job-wide fault. Never a data path: collectives go through MPI or NCCL.
/// Implementations are thread-safe. Failures to reach the store are <see cref="CommException"/>s.
/// </summary>
public interface IStore : IDisposable
{
    /// <summary>"the in-process store" or "the rendezvous store at 10.0.0.1:29500".</summary>
    string Describe { get; }
    void Set(string key, byte[] value);
    /// <summary>The entry, or null when the key is not set (never blocks).</summary>
    StoreEntry? TryGet(string key);
    /// <summary>Adds <paramref name="delta"/> to the 64-bit counter under <paramref name="key"/> (0 when unset); returns the new value.</summary>
    long Add(string key, long delta);
    void Delete(string key);
}

public static class StoreExtensions
{
    public static void SetString(this IStore store, string key, string value) => store.Set(key, Encoding.UTF8.GetBytes(value));

    public static string? TryGetString(this IStore store, string key) =>
        store.TryGet(key) is { } e ? Encoding.UTF8.GetString(e.Value) : null;

    /// <summary>Blocks until <paramref name="key"/> is set; CommException naming the key after <paramref name="timeout"/>.</summary>
    public static byte[] Get(this IStore store, string key, TimeSpan timeout, Func<string>? whatIsMissing = null)
    {
        var clock = Stopwatch.StartNew();
        int sleepMs = 1;
        while (true)
        {
            if (store.TryGet(key) is { } e) return e.Value;
            if (clock.Elapsed > timeout)
                throw new CommException($"timed out after {timeout.TotalSeconds:F0} s waiting for '{key}' in {store.Describe}" +
                    (whatIsMissing is null ? "" : ": " + whatIsMissing()));
            Thread.Sleep(sleepMs);
            sleepMs = Math.Min(50, sleepMs * 2);
        }
    }

    public static string GetString(this IStore store, string key, TimeSpan timeout, Func<string>? whatIsMissing = null) =>
        Encoding.UTF8.GetString(store.Get(key, timeout, whatIsMissing));

    /// <summary>Blocks until the counter <paramref name="key"/> reaches <paramref name="target"/>.</summary>
    public static void WaitCount(this IStore store, string key, long target, TimeSpan timeout, Func<string>? whatIsMissing = null)
    {
        var clock = Stopwatch.StartNew();
        int sleepMs = 1;
        while (store.Add(key, 0) < target)
        {
            if (clock.Elapsed > timeout)
                throw new CommException($"timed out after {timeout.TotalSeconds:F0} s waiting for '{key}' to reach {target} in {store.Describe}" +
                    (whatIsMissing is null ? "" : ": " + whatIsMissing()));
            Thread.Sleep(sleepMs);
            sleepMs = Math.Min(50, sleepMs * 2);
        }
    }
}

/// <summary>The store of an in-process (thread) world.</summary>
public sealed class InMemoryStore : IStore
{
    readonly Lock gate = new();
    readonly Dictionary<string, (byte[] Value, long SetAt)> entries = new(StringComparer.Ordinal);

    public string Describe => "the in-process store";

    public void Set(string key, byte[] value)
    {
        lock (gate) entries[key] = ((byte[])value.Clone(), Stopwatch.GetTimestamp());
    }

    public StoreEntry? TryGet(string key)
    {
        lock (gate)
            return entries.TryGetValue(key, out var e) ? new StoreEntry((byte[])e.Value.Clone(), Stopwatch.GetElapsedTime(e.SetAt)) : null;
    }

    public long Add(string key, long delta)
    {
        lock (gate)
        {
            long v = entries.TryGetValue(key, out var e) ? BitConverter.ToInt64(e.Value) : 0;
            v += delta;
            entries[key] = (BitConverter.GetBytes(v), Stopwatch.GetTimestamp());
            return v;
        }
    }

    public void Delete(string key)
    {
        lock (gate) entries.Remove(key);
    }

    public void Dispose() { }
}
