using System.Globalization;

namespace Engine.Parallel;

/// <summary>
/// Watchdog settings of a communicator (PyTorch's NCCL watchdog defaults, in spirit): every operation must complete
/// within <see cref="Timeout"/>; every rank publishes a heartbeat each <see cref="HeartbeatInterval"/>; a rank whose
/// heartbeat is older than <see cref="StaleAfter"/> is reported as dead or stopped.
/// Environment overrides (seconds): ENGINE_COMM_TIMEOUT, ENGINE_COMM_HEARTBEAT.
/// </summary>
public sealed record CommOptions
{
    public const string TimeoutVariable = "ENGINE_COMM_TIMEOUT";
    public const string HeartbeatVariable = "ENGINE_COMM_HEARTBEAT";

    /// <summary>Longest time one collective or point-to-point operation may run (from when it starts executing).</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(300);

    public TimeSpan HeartbeatInterval { get; init; } = TimeSpan.FromSeconds(1);

    TimeSpan? staleAfter;

    /// <summary>Heartbeat age after which a rank counts as dead or stopped (default 10 heartbeats, at least 3 s).</summary>
    public TimeSpan StaleAfter
    {
        get => staleAfter ?? TimeSpan.FromTicks(Math.Max(10 * HeartbeatInterval.Ticks, TimeSpan.FromSeconds(3).Ticks));
        init => staleAfter = value;
    }

    /// <summary>
    /// After a fault (a timeout here or a fault reported by another rank) the process exits with code
    /// <see cref="FaultExitCode"/> if it has not ended by itself within <see cref="ExitGrace"/>: a rank blocked in
    /// its own compute would otherwise outlive the job. Off for in-process (thread) worlds.
    /// </summary>
    public bool ExitOnFault { get; init; }

    public TimeSpan ExitGrace { get; init; } = TimeSpan.FromSeconds(10);

    public const int FaultExitCode = 3;

    /// <summary>Where diagnostics go (refused store connections, faults); stderr when null.</summary>
    public Action<string>? Log { get; init; }

    internal void Write(string line)
    {
        if (Log is { } log) log(line);
        else Console.Error.WriteLine(line);
    }

    /// <summary>Defaults with the ENGINE_COMM_* overrides of <paramref name="env"/> applied.</summary>
    public static CommOptions FromEnvironment(Func<string, string?> env)
    {
        var o = new CommOptions();
        if (Seconds(env, TimeoutVariable) is { } t) o = o with { Timeout = t };
        if (Seconds(env, HeartbeatVariable) is { } h) o = o with { HeartbeatInterval = h };
        return o;
    }

    static TimeSpan? Seconds(Func<string, string?> env, string name)
    {
        string? s = env(name);
        if (string.IsNullOrWhiteSpace(s)) return null;
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !(v > 0) || v > 1e6)
            throw new ArgumentException($"{name}={s} is not a positive number of seconds");
        return TimeSpan.FromSeconds(v);
    }
}
