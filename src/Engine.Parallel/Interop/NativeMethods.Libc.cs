using System.Runtime.InteropServices;

namespace Engine.Parallel.Interop;

/// <summary>libc: the native environment (Environment.SetEnvironmentVariable changes only .NET's copy, and Open MPI
/// reads the real one in MPI_Init), signals, and dlopen with RTLD_GLOBAL (Open MPI's plugins resolve libmpi's symbols
/// globally).</summary>
public static partial class NativeMethods
{
    const string LibC = "libc";

    public const int SIGKILL = 9, SIGTERM = 15, SIGUSR1 = 10;   // Linux numbers
    public const int RTLD_NOW = 2, RTLD_GLOBAL = 0x100;

    [LibraryImport(LibC, StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    public static partial int setenv(string name, string value, int overwrite);

    [LibraryImport(LibC, SetLastError = true)]
    public static partial int kill(int pid, int sig);

    [LibraryImport(LibC)]
    public static partial uint geteuid();

    [LibraryImport(LibC, StringMarshalling = StringMarshalling.Utf8)]
    public static partial IntPtr dlopen(string file, int mode);

    [LibraryImport(LibC)]
    public static partial IntPtr dlerror();

    /// <summary>Sets a variable in the native environment and in .NET's view of it.</summary>
    public static void SetNativeEnvironment(string name, string value)
    {
        if (setenv(name, value, 1) != 0) throw new InvalidOperationException($"setenv({name}) failed: errno {Marshal.GetLastPInvokeError()}");
        Environment.SetEnvironmentVariable(name, value);
    }

    public static bool IsRoot => OperatingSystem.IsLinux() && geteuid() == 0;
}
