using System.Globalization;
using System.Runtime.InteropServices;

namespace Engine.Parallel.Launch;

/// <summary>
/// A rank started by `engine launch` ends at once when the launcher dies (kill -9, an OOM kill): nothing would relay its
/// output, stop it or restart the job, and under mpirun the job used to train on for a minute. The launcher names itself
/// in <see cref="PidVariable"/>; every rank waits on a pidfd of it (pidfd_open + poll, Linux 5.3+: woken the moment it
/// exits, and immune to the pid being reused; elsewhere /proc is polled every 250 ms) and, when it goes, prints one line
/// and exits with <see cref="CommOptions.FaultExitCode"/>. The work since the last checkpoint is lost, as in any crash;
/// a new launch resumes with --resume auto. (PR_SET_PDEATHSIG cannot do this under mpirun, whose ranks are mpirun's
/// children, not the launcher's.)
/// </summary>
public static partial class LauncherWatch
{
    public const string PidVariable = "ENGINE_LAUNCHER_PID";

    static int started;

    /// <summary>Starts the watch when this process was launched by `engine launch` (once per process; Linux only).</summary>
    public static void StartFromEnvironment(Action<string>? log = null, Action<int>? exit = null)
    {
        if (!OperatingSystem.IsLinux()) return;
        if (!int.TryParse(Environment.GetEnvironmentVariable(PidVariable), NumberStyles.Integer, CultureInfo.InvariantCulture, out int pid) || pid <= 1) return;
        if (Interlocked.Exchange(ref started, 1) != 0) return;
        Start(pid, log ?? (m => Console.Error.WriteLine(m)), exit ?? Environment.Exit);
    }

    /// <summary>Watches <paramref name="pid"/> on a background thread; calls <paramref name="log"/> then
    /// <paramref name="exit"/> (<see cref="CommOptions.FaultExitCode"/>) when it ends (tests pass their own).</summary>
    public static void Start(int pid, Action<string> log, Action<int> exit)
    {
        int fd = -1;
        bool goneAlready = false;
        try
        {
            fd = pidfd_open(pid, 0);
            goneAlready = fd < 0 && Marshal.GetLastPInvokeError() == 3 /* ESRCH */;
        }
        catch (EntryPointNotFoundException) { }   // glibc < 2.36: poll /proc instead
        new Thread(() =>
        {
            if (!goneAlready)
            {
                if (fd >= 0)
                {
                    var p = new PollFd { Fd = fd, Events = 1 /* POLLIN: the process has exited */ };
                    while (poll(ref p, 1, -1) < 0 && Marshal.GetLastPInvokeError() == 4 /* EINTR */) { }
                }
                else while (State(pid) == 'R') Thread.Sleep(250);
            }
            log($"error: engine launch (pid {pid}) died: stopping this rank at once (no launcher is left to relay its output, stop or restart the job); the last checkpoint holds the progress, resume with --resume auto");
            exit(CommOptions.FaultExitCode);
        })
        { IsBackground = true, Name = "launcher-watch" }.Start();
    }

    /// <summary>From /proc/PID/stat: 'R' running (any live state), 'Z' exited but not yet reaped by its parent, 'X' gone.</summary>
    internal static char State(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            int close = stat.LastIndexOf(')');
            if (close <= 0 || close + 2 >= stat.Length) return 'X';
            return stat[close + 2] switch { 'Z' => 'Z', 'X' => 'X', _ => 'R' };
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return 'X'; }
    }

    [StructLayout(LayoutKind.Sequential)]
    struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int pidfd_open(int pid, uint flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int poll(ref PollFd fds, nuint count, int timeoutMs);
}
