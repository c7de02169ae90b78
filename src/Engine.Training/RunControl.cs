using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Engine.Core.Distributed;

namespace Engine.Training;

/// <summary>
/// When a run stops early and saves: SIGTERM/SIGINT (<see cref="InstallSignalHandlers"/>), a wall-clock budget
/// (<see cref="TimeLimit"/>, leaving a margin of the slowest step plus the last save), or a count of steps this process
/// runs (<see cref="MaxSteps"/>, for tests and `--stop-after`). The training loop asks <see cref="ShouldStop"/> at every
/// step boundary; the flag is combined across ranks (max over one all-reduce), so every rank stops after the same step.
/// The caller then saves a checkpoint and exits 0. Also holds the fault injected for restart tests
/// (ENGINE_FAULT_AT_STEP on rank ENGINE_FAULT_RANK, only while ENGINE_RESTART_ATTEMPT is 0 or unset).
/// </summary>
public sealed class RunControl : IDisposable
{
    public const string FaultStepVariable = "ENGINE_FAULT_AT_STEP", FaultRankVariable = "ENGINE_FAULT_RANK",
        AttemptVariable = Engine.Parallel.Launch.Launcher.RestartAttemptVariable;

    readonly Stopwatch clock = Stopwatch.StartNew();
    readonly List<PosixSignalRegistration> signals = [];
    volatile bool signalled;
    int stepsRun;
    double slowestStep, lastSave;

    /// <summary>Stop before this wall-clock budget (from construction) is spent.</summary>
    public TimeSpan? TimeLimit { get; init; }
    /// <summary>Stop after this many optimizer steps in this process (0 = no limit).</summary>
    public int MaxSteps { get; init; }
    /// <summary>Kill this rank (exit code 42, as a crash) after this step (1-based; 0 = never).</summary>
    public int FaultAtStep { get; init; }
    public int FaultRank { get; init; } = 1;
    /// <summary>The newest checkpoint this run wrote or resumed from (named when a guard stops the run).</summary>
    public string? LastCheckpoint { get; set; }
    /// <summary>Why the run stopped early (null while it has not).</summary>
    public string? StopReason { get; private set; }
    public bool Stopped => StopReason != null;

    /// <summary>The restart-test fault from the environment (see the class remarks).</summary>
    public static RunControl FromEnvironment(TimeSpan? timeLimit = null, int maxSteps = 0)
    {
        static int Int(string name, int fallback) =>
            int.TryParse(Environment.GetEnvironmentVariable(name), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : fallback;
        bool firstAttempt = Int(AttemptVariable, 0) == 0;
        return new RunControl
        {
            TimeLimit = timeLimit,
            MaxSteps = maxSteps,
            FaultAtStep = firstAttempt ? Int(FaultStepVariable, 0) : 0,
            FaultRank = Int(FaultRankVariable, 1),
        };
    }

    /// <summary>The first SIGTERM, SIGINT or (Linux) the launcher's stop signal
    /// (<see cref="Engine.Parallel.Launch.Launcher.StopSignal"/>, forwarded by mpirun) requests a stop at the next step
    /// boundary (a second one is not intercepted).</summary>
    public void InstallSignalHandlers(Action<string>? say = null)
    {
        void Handler(PosixSignalContext ctx)
        {
            if (signalled) return;   // the default action: terminate
            ctx.Cancel = true;
            signalled = true;
            string name = (int)ctx.Signal == Engine.Parallel.Launch.Launcher.StopSignal ? "SIGUSR1 (engine launch)" : ctx.Signal.ToString();
            say?.Invoke($"{name}: saving a checkpoint at the next step boundary, then exiting");
        }
        signals.Add(PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handler));
        signals.Add(PosixSignalRegistration.Create(PosixSignal.SIGINT, Handler));
        if (OperatingSystem.IsLinux()) signals.Add(PosixSignalRegistration.Create((PosixSignal)Engine.Parallel.Launch.Launcher.StopSignal, Handler));
    }

    /// <summary>Requests a stop at the next step boundary (what a signal does).</summary>
    public void RequestStop() => signalled = true;

    /// <summary>Records how long one step took (the time-limit margin).</summary>
    public void StepDone(double seconds)
    {
        stepsRun++;
        slowestStep = Math.Max(slowestStep, seconds);
    }

    /// <summary>Records how long a checkpoint save took (the time-limit margin).</summary>
    public void SaveDone(double seconds) => lastSave = Math.Max(lastSave, seconds);

    /// <summary>Called after step <paramref name="step"/> (1-based) on every rank: injects the test fault, then
    /// decides — together with every rank of <paramref name="comm"/> — whether to stop here.</summary>
    public bool ShouldStop(int step, ICommunicator? comm)
    {
        if (FaultAtStep > 0 && step == FaultAtStep && (comm?.Rank ?? 0) == FaultRank)
        {
            Console.Error.WriteLine($"{FaultStepVariable}={FaultAtStep}: rank {FaultRank} dies after step {step} (injected fault)");
            Console.Error.Flush();
            Environment.Exit(42);
        }
        string? reason = null;
        if (signalled) reason = "stop requested by signal";
        else if (MaxSteps > 0 && stepsRun >= MaxSteps) reason = $"stopped after {stepsRun} step(s) (--stop-after)";
        else if (TimeLimit is { } limit)
        {
            // margin: the slowest step so far, the last save (or, before any, a step's worth), and 5 %
            double margin = slowestStep + (lastSave > 0 ? lastSave : slowestStep) + 0.05 * limit.TotalSeconds;
            if (clock.Elapsed.TotalSeconds + margin >= limit.TotalSeconds)
                reason = $"time limit {limit:hh\\:mm\\:ss} close (margin {margin:F1} s = slowest step + save)";
        }
        if (comm is { WorldSize: > 1 })
        {
            Span<double> flag = [reason != null ? 1 : 0];
            comm.AllReduce(flag, ReduceOp.Max);
            if (flag[0] > 0) reason ??= "another rank stopped";
        }
        if (reason != null) StopReason = reason;
        return reason != null;
    }

    /// <summary>"HH:MM:SS", "MM:SS" or seconds.</summary>
    public static TimeSpan ParseTimeLimit(string text)
    {
        var parts = text.Split(':');
        double seconds = 0;
        bool ok = parts.Length <= 3;
        foreach (var p in parts)
        {
            ok &= double.TryParse(p, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v >= 0;
            seconds = seconds * 60 + v;
        }
        if (!ok || seconds <= 0) throw new ArgumentException($"--time-limit '{text}': expected HH:MM:SS or a number of seconds > 0");
        return TimeSpan.FromSeconds(seconds);
    }

    public void Dispose()
    {
        foreach (var s in signals) s.Dispose();
        signals.Clear();
    }
}
