using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Engine.Parallel.Interop;

namespace Engine.Parallel.Launch;

/// <summary>`engine launch` settings (torchrun's flags).</summary>
public sealed record LaunchOptions
{
    public required int NprocPerNode { get; init; }
    public int Nnodes { get; init; } = 1;
    public int NodeRank { get; init; }
    public string MasterAddr { get; init; } = "127.0.0.1";
    public int MasterPort { get; init; } = 29500;
    /// <summary>"cpu": mpirun on one node; "cuda": one child per GPU (CUDA device = local rank).</summary>
    public string Device { get; init; } = "cpu";
    /// <summary>Start CPU ranks as children with torchrun-style variables instead of through mpirun (their MPI world
    /// then forms through ompi-server); always so for several CPU nodes.</summary>
    public bool Spawn { get; init; }
    /// <summary>The engine verb and its arguments, run by every rank.</summary>
    public required IReadOnlyList<string> Command { get; init; }
    /// <summary>When a rank dies, restart every rank up to this many times — train, recipe and demo with
    /// `--resume auto`, so they continue from the last good checkpoint.</summary>
    public int MaxRestarts { get; init; }
    /// <summary>Seconds a rank has between SIGTERM (the launcher signalled, or another rank died) and SIGKILL: long
    /// enough for train/recipe/demo to finish the step and save a checkpoint (torchrun's default is 30 s too). Under
    /// mpirun it is also Open MPI's odls_base_sigkill_timeout, which is 1 s by default.</summary>
    public int TermTimeoutSeconds { get; init; } = 30;

    public void Validate()
    {
        if (NprocPerNode < 1) throw new ArgumentException($"--nproc-per-node must be ≥ 1, got {NprocPerNode}");
        if (Nnodes < 1) throw new ArgumentException($"--nnodes must be ≥ 1, got {Nnodes}");
        if (NodeRank < 0 || NodeRank >= Nnodes) throw new ArgumentException($"--node-rank {NodeRank} outside 0..{Nnodes - 1}");
        if (MasterPort is < 1 or > 65535) throw new ArgumentException($"--master-port {MasterPort} outside 1..65535");
        if (Device is not ("cpu" or "cuda")) throw new ArgumentException($"--device must be cpu or cuda, got '{Device}'");
        if (Command.Count == 0) throw new ArgumentException("nothing to launch: give the engine verb after --, e.g. engine launch --nproc-per-node 2 -- train --config run.toml");
        if (Command[0] == "launch") throw new ArgumentException("engine launch cannot launch itself");
        if (MaxRestarts < 0) throw new ArgumentException($"--max-restarts must be >= 0, got {MaxRestarts}");
        if (TermTimeoutSeconds < 0) throw new ArgumentException($"--term-timeout must be >= 0 seconds, got {TermTimeoutSeconds}");
    }
}

/// <summary>
/// Starts one process per rank and supervises them. CPU ranks on one node go through mpirun (-np N, --bind-to none,
/// --oversubscribe beyond the core count, the run-as-root variables when root); otherwise the launcher spawns the
/// children itself with torchrun-style variables and a random ENGINE_JOB_TOKEN (several nodes: the caller's, the
/// same on every node). Rank 0's output passes through; every line of another rank is prefixed with "[rank N] ".
/// When a rank exits non-zero the others are stopped (SIGTERM, then SIGKILL) and one line names it; the launcher's
/// exit code is that rank's. SIGINT/SIGTERM to the launcher stop every rank.
/// </summary>
public static partial class Launcher
{
    /// <summary>Variables that would make a child believe another launcher started it.</summary>
    static readonly string[] ForeignPrefixes = ["OMPI_", "PMIX_", "PMI_"];
    static readonly string[] TorchrunVariables = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"];

    /// <summary>The restart count the launcher gives every rank (0 on the first attempt).</summary>
    public const string RestartAttemptVariable = "ENGINE_RESTART_ATTEMPT";

    /// <summary>The signal (SIGUSR1, Linux) the launcher sends mpirun to stop the job, which mpirun forwards to every rank;
    /// ranks treat it as SIGTERM (RunControl). SIGTERM to mpirun itself aborts the job: it stops relaying the ranks'
    /// output, so a rank blocks on its next console write and never reaches the step boundary.</summary>
    public const int StopSignal = NativeMethods.SIGUSR1;

    /// <summary>Seconds the other ranks get between SIGTERM and SIGKILL after a rank died (not the launcher's stop, which
    /// grants --term-timeout for a checkpoint).</summary>
    public const int PeerFailureGraceSeconds = 5;

    /// <summary>Verbs that checkpoint and accept `--resume auto`.</summary>
    static readonly string[] Resumable = ["train", "recipe", "demo"];

    static volatile bool signalled;

    /// <param name="engine">The engine executable and its leading arguments (the apphost, or dotnet + engine.dll).</param>
    public static int Run(LaunchOptions o, IReadOnlyList<string> engine, TextWriter stdout, TextWriter stderr)
    {
        o.Validate();
        bool viaMpirun = o.Device == "cpu" && o.Nnodes == 1 && !o.Spawn;
        signalled = false;
        for (int attempt = 0; ; attempt++)
        {
            var run = attempt == 0 ? o : o with { Command = WithResumeAuto(o.Command) };
            int code = viaMpirun ? RunMpirun(run, engine, stdout, stderr, attempt) : RunChildren(run, engine, stdout, stderr, attempt);
            if (code == 0 || attempt >= o.MaxRestarts || signalled) return code;
            stderr.WriteLine($"engine launch: restarting every rank (restart {attempt + 1} of {o.MaxRestarts})" +
                (Resumable.Contains(o.Command[0]) ? " from the last good checkpoint (--resume auto)" : ""));
            stderr.Flush();
        }
    }

    /// <summary>The command with `--resume auto` (replacing any --resume value) for train, recipe and demo.</summary>
    public static IReadOnlyList<string> WithResumeAuto(IReadOnlyList<string> command)
    {
        if (command.Count == 0 || !Resumable.Contains(command[0])) return command;
        var result = new List<string>();
        for (int i = 0; i < command.Count; i++)
        {
            if (command[i] == "--resume") { i++; continue; }
            if (command[i].StartsWith("--resume=", StringComparison.Ordinal)) continue;
            result.Add(command[i]);
        }
        result.AddRange(["--resume", "auto"]);
        return result;
    }

    // ---- mpirun ---------------------------------------------------------------------------------------------------

    [GeneratedRegex(@"^\[\d+,(\d+)\]<(stdout|stderr|stddiag)>:(.*)$")]
    private static partial Regex TaggedLine();

    /// <summary>Terminal escapes (.NET's console switches the keypad mode on the pty mpirun gives each rank).</summary>
    [GeneratedRegex(@"\[\d+,\d+\]<(stdout|stderr|stddiag)>:")]
    private static partial Regex AnyTag();

    [GeneratedRegex(@"\x1B(\[[0-?]*[ -/]*[@-~]|[0-~])")]
    private static partial Regex Escape();

    [GeneratedRegex(@"process rank (\d+) with PID \d+ on node \S+ exited on signal (\d+) \(([^)]*)\)")]
    private static partial Regex MpirunSignal();

    [GeneratedRegex(@"Process name:\s*\[\[\d+,\d+\],(\d+)\][\s\S]*?Exit code:\s*(\d+)")]
    private static partial Regex MpirunExitCode();

    static int RunMpirun(LaunchOptions o, IReadOnlyList<string> engine, TextWriter stdout, TextWriter stderr, int attempt)
    {
        string mpirun = FindOnPath("mpirun") ?? throw new NotSupportedException(
            "mpirun not found on PATH: CPU ranks run under Open MPI (install Debian's openmpi-bin), or use --device cuda");
        // mpirun in a session of its own (setsid execs in place: this child is no group leader, so the pid stays
        // mpirun's): a terminal's Ctrl-C reaches the launcher only, which stops the ranks through mpirun (below)
        string? setsid = FindOnPath("setsid");
        // and killed with the launcher (setpriv's PR_SET_PDEATHSIG, kept across setsid's exec; it fires when the thread
        // that started it ends, so only from the main thread, which outlives the job): the ranks end through LauncherWatch
        string? setpriv = Environment.CurrentManagedThreadId == 1 ? FindOnPath("setpriv") : null;
        var prefix = new List<string>();
        if (setpriv != null) prefix.AddRange([setpriv, "--pdeathsig", "KILL"]);
        if (setsid != null) prefix.Add(setsid);
        var psi = new ProcessStartInfo(prefix.Count > 0 ? prefix[0] : mpirun) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        var args = new List<string> { "-np", o.NprocPerNode.ToString(CultureInfo.InvariantCulture), "--bind-to", "none", "--tag-output",
            // if mpirun aborts the job itself, its ranks still get the grace period before its SIGKILL (default 1 s)
            "--mca", "odls_base_sigkill_timeout", Math.Max(1, o.TermTimeoutSeconds).ToString(CultureInfo.InvariantCulture) };
        if (prefix.Count > 0) args.InsertRange(0, [.. prefix.Skip(1), mpirun]);
        if (o.NprocPerNode > Environment.ProcessorCount)
        {
            // More ranks than cores: Open MPI must yield while it waits instead of spinning against the other ranks.
            args.AddRange(["--oversubscribe", "--mca", "mpi_yield_when_idle", "1"]);
        }
        args.AddRange(engine);
        args.AddRange(o.Command);
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var v in TorchrunVariables) psi.Environment.Remove(v);
        psi.Environment[LaunchEnvironment.LauncherVariable] = "1";   // mpirun passes it to every rank
        psi.Environment[LauncherWatch.PidVariable] = Environment.ProcessId.ToString(CultureInfo.InvariantCulture);   // ranks end when this launcher dies
        psi.Environment[RestartAttemptVariable] = attempt.ToString(CultureInfo.InvariantCulture);
        if (NativeMethods.IsRoot)
        {
            psi.Environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1";
            psi.Environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1";
        }
        var gate = new Lock();
        var mpirunLines = new List<string>();
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start mpirun");
        void OnLine(string? line, TextWriter untaggedTo)
        {
            if (line is null) return;
            string clean = Escape().Replace(line, "");
            var m = TaggedLine().Match(clean);
            lock (gate)
            {
                if (!m.Success) { mpirunLines.Add(clean); return; }
                // A write without a newline (the escape) and the next line share one line, each tagged.
                string text = m.Groups[3].Value;
                while (TaggedLine().Match(text) is { Success: true } again) text = again.Groups[3].Value;
                text = AnyTag().Replace(text, "");   // a tag inside the line: the rest of a partial write
                if (text.Length == 0 && clean.Length != line.Length) return;   // only terminal escapes
                var to = m.Groups[2].Value == "stdout" ? stdout : stderr;
                to.WriteLine(m.Groups[1].Value == "0" ? text : $"[rank {m.Groups[1].Value}] {text}");
                to.Flush();
            }
        }
        p.OutputDataReceived += (_, e) => OnLine(e.Data, stdout);
        p.ErrorDataReceived += (_, e) => OnLine(e.Data, stderr);
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        using var signals = StopViaMpirun(p, o.TermTimeoutSeconds);
        var monitor = MpirunRanks.Watch(p, o.NprocPerNode);
        p.WaitForExit();
        monitor.Join();
        int code = p.ExitCode;
        string text = string.Join("\n", mpirunLines);
        lock (gate)
        {
            if (monitor.StoppedMpirun)
            {
                // mpirun aborts a job after a rank died by SIGTERM and then sleeps its kill timeout (--term-timeout) even
                // when every rank has long exited: the launcher saw them all gone and ended mpirun's wait
                stderr.WriteLine($"engine launch: rank {(monitor.FirstExited is int r ? r.ToString(CultureInfo.InvariantCulture) : "?")} exited first, while the others were running" +
                    $" (their reports above name it); every rank had exited {MpirunRanks.GraceSeconds:0.#} s before and mpirun was still waiting out its kill timeout: stopped it");
                stderr.Flush();
                return code == 0 ? 1 : code;
            }
            if (code == 0)
            {
                if (text.Trim().Length > 0) stderr.WriteLine(text);
                return 0;
            }
            if (MpirunSignal().Match(text) is { Success: true } s)
                stderr.WriteLine($"engine launch: rank {s.Groups[1].Value} was killed by signal {s.Groups[2].Value} ({SignalName(int.Parse(s.Groups[2].Value, CultureInfo.InvariantCulture))}); mpirun stopped the other ranks");
            else if (MpirunExitCode().Match(text) is { Success: true } x)
                stderr.WriteLine($"engine launch: rank {x.Groups[1].Value} exited with code {x.Groups[2].Value}; mpirun stopped the other ranks");
            else
            {
                if (text.Trim().Length > 0) stderr.WriteLine(text);
                stderr.WriteLine($"engine launch: mpirun exited with code {code}");
            }
            stderr.Flush();
        }
        return code;
    }

    /// <summary>
    /// The ranks mpirun started (its child processes, each with OMPI_COMM_WORLD_RANK), watched from the launcher every
    /// 100 ms. After a rank dies, mpirun sends the others SIGTERM and then sleeps out odls_base_sigkill_timeout
    /// (--term-timeout, kept long for a scancel's checkpoint) without reaping them, even when they exited within a
    /// second (they learn of the death through the store). So when no rank runs any more and one has stayed an unreaped
    /// zombie for <see cref="GraceSeconds"/> — a normal end is reaped at once —, mpirun is stopped: a dead rank ends
    /// the job, and a restart begins, within seconds instead of a minute.
    /// </summary>
    sealed class MpirunRanks
    {
        public const double GraceSeconds = 2;

        readonly Process mpirun;
        readonly int ranks;
        readonly Thread thread;

        MpirunRanks(Process mpirun, int ranks)
        {
            this.mpirun = mpirun;
            this.ranks = ranks;
            thread = new Thread(Loop) { IsBackground = true, Name = "mpirun-ranks" };
        }

        /// <summary>The rank that exited while others still ran (null when none did, or the ranks were not seen).</summary>
        public int? FirstExited { get; private set; }
        public bool StoppedMpirun { get; private set; }

        public static MpirunRanks Watch(Process mpirun, int ranks)
        {
            var m = new MpirunRanks(mpirun, ranks);
            if (OperatingSystem.IsLinux()) m.thread.Start();
            return m;
        }

        public void Join()
        {
            if (thread.IsAlive) thread.Join();
        }

        void Loop()
        {
            var seen = new Dictionary<int, int>();   // pid → rank
            Stopwatch? unreaped = null;
            while (!mpirun.WaitForExit(100))
            {
                foreach (int pid in Children(mpirun.Id))
                    if (!seen.ContainsKey(pid) && RankOf(pid) is int rank) seen[pid] = rank;
                var states = seen.ToDictionary(kv => kv.Key, kv => LauncherWatch.State(kv.Key));
                int running = states.Values.Count(s => s == 'R');
                if (FirstExited == null && running > 0 && running < seen.Count)
                    FirstExited = seen.Where(kv => states[kv.Key] != 'R').Select(kv => kv.Value).Min();
                bool stuck = seen.Count >= ranks && running == 0 && states.Values.Any(s => s == 'Z');
                if (!stuck) { unreaped = null; continue; }
                unreaped ??= Stopwatch.StartNew();
                if (unreaped.Elapsed.TotalSeconds < GraceSeconds) continue;
                StoppedMpirun = true;
                try { mpirun.Kill(entireProcessTree: true); }
                catch (InvalidOperationException) { }   // it exited meanwhile
                return;
            }
        }

        static IEnumerable<int> Children(int pid)
        {
            var result = new List<int>();
            try
            {
                foreach (var task in Directory.GetDirectories($"/proc/{pid}/task"))
                    foreach (var c in File.ReadAllText(Path.Combine(task, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                        if (int.TryParse(c, NumberStyles.Integer, CultureInfo.InvariantCulture, out int child)) result.Add(child);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            return result;
        }

        static int? RankOf(int pid)
        {
            try
            {
                foreach (var v in File.ReadAllText($"/proc/{pid}/environ").Split('\0'))
                    if (v.StartsWith("OMPI_COMM_WORLD_RANK=", StringComparison.Ordinal)
                        && int.TryParse(v["OMPI_COMM_WORLD_RANK=".Length..], NumberStyles.Integer, CultureInfo.InvariantCulture, out int r))
                        return r;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
            return null;
        }

    }

    // ---- children -------------------------------------------------------------------------------------------------

    static int RunChildren(LaunchOptions o, IReadOnlyList<string> engine, TextWriter stdout, TextWriter stderr, int attempt)
    {
        string? token = Environment.GetEnvironmentVariable(LaunchEnvironment.TokenVariable);
        if (string.IsNullOrEmpty(token))
        {
            if (o.Nnodes > 1)
                throw new ArgumentException($"{LaunchEnvironment.TokenVariable} is not set: with several nodes every node's launcher must give its ranks the same secret (export {LaunchEnvironment.TokenVariable}=$(openssl rand -hex 16) on all of them)");
            token = Convert.ToHexString(RandomNumberGenerator.GetBytes(16));
        }
        int world = o.Nnodes * o.NprocPerNode;
        if (o.Device == "cuda") VisibleDevice(Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES"), o.NprocPerNode - 1);
        var gate = new Lock();
        var children = new Process[o.NprocPerNode];
        var ranks = new int[o.NprocPerNode];
        try
        {
            for (int local = 0; local < o.NprocPerNode; local++)
            {
                int rank = o.NodeRank * o.NprocPerNode + local;
                ranks[local] = rank;
                var psi = new ProcessStartInfo(engine[0]) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
                foreach (var a in engine.Skip(1).Concat(o.Command)) psi.ArgumentList.Add(a);
                foreach (var key in psi.Environment.Keys.Where(k => ForeignPrefixes.Any(f => k.StartsWith(f, StringComparison.Ordinal))).ToList())
                    psi.Environment.Remove(key);
                psi.Environment["RANK"] = rank.ToString(CultureInfo.InvariantCulture);
                psi.Environment["WORLD_SIZE"] = world.ToString(CultureInfo.InvariantCulture);
                psi.Environment["LOCAL_RANK"] = local.ToString(CultureInfo.InvariantCulture);
                psi.Environment["LOCAL_WORLD_SIZE"] = o.NprocPerNode.ToString(CultureInfo.InvariantCulture);
                psi.Environment["GROUP_RANK"] = o.NodeRank.ToString(CultureInfo.InvariantCulture);
                psi.Environment["MASTER_ADDR"] = o.MasterAddr;
                psi.Environment["MASTER_PORT"] = o.MasterPort.ToString(CultureInfo.InvariantCulture);
                psi.Environment[LaunchEnvironment.TokenVariable] = token;
                psi.Environment[LaunchEnvironment.LauncherVariable] = "1";
                psi.Environment[LauncherWatch.PidVariable] = Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
                psi.Environment[RestartAttemptVariable] = attempt.ToString(CultureInfo.InvariantCulture);
                if (o.Device == "cuda") psi.Environment["CUDA_VISIBLE_DEVICES"] = VisibleDevice(Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES"), local);
                var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start rank {rank}");
                children[local] = p;
                string prefix = rank == 0 ? "" : $"[rank {rank}] ";
                p.OutputDataReceived += (_, e) => { if (e.Data is { } l) lock (gate) { stdout.WriteLine(prefix + l); stdout.Flush(); } };
                p.ErrorDataReceived += (_, e) => { if (e.Data is { } l) lock (gate) { stderr.WriteLine(prefix + l); stderr.Flush(); } };
                p.BeginOutputReadLine();
                p.BeginErrorReadLine();
            }
        }
        catch
        {
            Terminate(children.Where(c => c is not null), o.TermTimeoutSeconds);
            throw;
        }

        using var signals = ForwardSignals(() => children, o.TermTimeoutSeconds);
        var running = Enumerable.Range(0, children.Length).ToHashSet();
        while (running.Count > 0)
        {
            int done = running.FirstOrDefault(i => children[i].WaitForExit(0), -1);
            if (done < 0)
            {
                Thread.Sleep(50);
                continue;
            }
            var child = children[done];
            child.WaitForExit();   // drains its output
            running.Remove(done);
            if (child.ExitCode == 0) continue;
            // a dead rank: the others cannot finish a step without it (they see the fault through the store within a
            // second and exit), so no long grace for a checkpoint they could not write
            Terminate(running.Select(i => children[i]), Math.Min(o.TermTimeoutSeconds, PeerFailureGraceSeconds));
            foreach (var i in running) children[i].WaitForExit();
            lock (gate)
            {
                stderr.WriteLine($"engine launch: rank {ranks[done]} (pid {child.Id}) {Describe(child.ExitCode)}; stopped the other ranks");
                stderr.Flush();
            }
            return child.ExitCode;
        }
        return 0;
    }

    /// <summary>
    /// The one GPU a CUDA rank sees (its device 0): the local rank's entry of the launcher's own CUDA_VISIBLE_DEVICES
    /// when that is set, else the local rank itself.
    /// </summary>
    public static string VisibleDevice(string? visible, int localRank)
    {
        if (string.IsNullOrWhiteSpace(visible)) return localRank.ToString(CultureInfo.InvariantCulture);
        var list = visible.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (localRank >= list.Length)
            throw new ArgumentException($"CUDA_VISIBLE_DEVICES={visible} lists {list.Length} GPU(s), fewer than --nproc-per-node needs (local rank {localRank})");
        return list[localRank];
    }

    /// <summary>"exited with code 2" or "was killed by signal 9 (SIGKILL)" (.NET reports a signal as 128 + its number).</summary>
    public static string Describe(int exitCode) =>
        exitCode is > 128 and < 160 ? $"was killed by signal {exitCode - 128} ({SignalName(exitCode - 128)})" : $"exited with code {exitCode}";

    static string SignalName(int signal) => signal switch
    {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        _ => $"signal {signal}",
    };

    /// <summary>SIGTERM to every live process, SIGKILL to those still alive after <paramref name="graceSeconds"/>.</summary>
    static void Terminate(IEnumerable<Process> processes, int graceSeconds)
    {
        var live = processes.Where(p => !p.HasExited).ToList();
        foreach (var p in live) NativeMethods.kill(p.Id, NativeMethods.SIGTERM);
        var clock = Stopwatch.StartNew();
        long grace = graceSeconds * 1000L;
        foreach (var p in live)
            if (!p.WaitForExit((int)Math.Clamp(grace - clock.ElapsedMilliseconds, 0, int.MaxValue)))
                p.Kill(entireProcessTree: true);
    }

    /// <summary>SIGINT/SIGTERM to the launcher under mpirun: <see cref="StopSignal"/> to mpirun, which forwards it to
    /// every rank (a rank stops at the next step boundary, saves and exits 0, so mpirun ends normally); mpirun still
    /// alive after the grace period: SIGTERM, then SIGKILL 5 s later.</summary>
    static IDisposable StopViaMpirun(Process mpirun, int graceSeconds) => OnStop(() =>
    {
        if (mpirun.HasExited) return;
        NativeMethods.kill(mpirun.Id, StopSignal);
        if (!mpirun.WaitForExit(graceSeconds * 1000)) Terminate([mpirun], 5);
    });

    /// <summary>SIGINT/SIGTERM to the launcher with spawned ranks: SIGTERM to each, SIGKILL after the grace period.</summary>
    static IDisposable ForwardSignals(Func<IEnumerable<Process>> processes, int graceSeconds) =>
        OnStop(() => Terminate(processes().Where(p => p is not null).ToList(), graceSeconds));

    /// <summary>SIGINT/SIGTERM to the launcher: the user stops the job (no restart follows); <paramref name="stop"/> runs
    /// off the signal thread, while the supervising loop awaits the ranks' exits and returns their code.</summary>
    static IDisposable OnStop(Action stop)
    {
        void Handler(PosixSignalContext ctx)
        {
            ctx.Cancel = true;
            signalled = true;
            Task.Run(stop);
        }
        return new Registrations([PosixSignalRegistration.Create(PosixSignal.SIGINT, Handler), PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handler)]);
    }

    sealed class Registrations(PosixSignalRegistration[] all) : IDisposable
    {
        public void Dispose()
        {
            foreach (var r in all) r.Dispose();
        }
    }

    static string? FindOnPath(string name)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
        {
            string p = Path.Combine(dir, name);
            if (File.Exists(p)) return p;
        }
        return null;
    }
}
