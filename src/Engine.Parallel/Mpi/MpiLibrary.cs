using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Engine.Core.Distributed;
using Engine.Parallel.Interop;

namespace Engine.Parallel.Mpi;

/// <summary>
/// Loads libmpi once (ENGINE_LIBMPI, then the loader's libmpi.so.40 / libmpi.so) with RTLD_GLOBAL, serves it to the
/// [LibraryImport] bindings, and resolves Open MPI's predefined handles (the addresses of its exported globals).
/// </summary>
public static class MpiLibrary
{
    public const string OverrideVariable = "ENGINE_LIBMPI";
    static readonly Lock Gate = new();
    static IntPtr handle;
    static string? loadedFrom, failure;

    /// <summary>The path or soname it was loaded from; NotSupportedException naming what was tried when absent.</summary>
    public static string Load()
    {
        lock (Gate)
        {
            if (loadedFrom is not null) return loadedFrom;
            if (failure is not null) throw new NotSupportedException(failure);
            var tried = new List<string>();
            string? overridePath = Environment.GetEnvironmentVariable(OverrideVariable);
            string[] candidates = string.IsNullOrWhiteSpace(overridePath) ? ["libmpi.so.40", "libmpi.so"] : [overridePath];
            foreach (var c in candidates)
            {
                IntPtr h = NativeMethods.dlopen(c, NativeMethods.RTLD_NOW | NativeMethods.RTLD_GLOBAL);
                if (h != IntPtr.Zero)
                {
                    handle = h;
                    loadedFrom = c;
                    NativeLibrary.SetDllImportResolver(typeof(MpiLibrary).Assembly, Resolve);
                    return c;
                }
                tried.Add($"{c} ({Marshal.PtrToStringUTF8(NativeMethods.dlerror()) ?? "not found"})");
            }
            failure = $"Open MPI not found (libmpi.so.40); tried: {string.Join("; ", tried)}. Install Debian's openmpi-bin and " +
                $"libopenmpi-dev (apt-get install openmpi-bin libopenmpi-dev), or set {OverrideVariable} to the library file";
            throw new NotSupportedException(failure);
        }
    }

    static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path) =>
        name == NativeMethods.LibMpi ? handle : IntPtr.Zero;

    /// <summary>The address of Open MPI's exported global <paramref name="symbol"/> (MPI_COMM_WORLD is &amp;ompi_mpi_comm_world).</summary>
    public static IntPtr Global(string symbol)
    {
        Load();
        return NativeLibrary.TryGetExport(handle, symbol, out var p) ? p
            : throw new NotSupportedException($"{loadedFrom} does not export {symbol}: not Open MPI's ABI (this engine binds Open MPI 4/5)");
    }

    /// <summary>The one status check: throws a CommException naming the call and MPI's own error text.</summary>
    public static void Check(int rc, [CallerArgumentExpression(nameof(rc))] string call = "")
    {
        if (rc != NativeMethods.MPI_SUCCESS) throw new CommException($"{Short(call)} failed: {ErrorString(rc)} (MPI error {rc})");
    }

    static string Short(string call) => call.StartsWith("NativeMethods.", StringComparison.Ordinal) ? call["NativeMethods.".Length..] : call;

    public static unsafe string ErrorString(int rc)
    {
        var buf = new byte[NativeMethods.MPI_MAX_ERROR_STRING + 1];
        fixed (byte* p = buf)
            if (NativeMethods.MPI_Error_string(rc, p, out int len) == NativeMethods.MPI_SUCCESS)
                return Encoding.UTF8.GetString(buf, 0, Math.Clamp(len, 0, buf.Length));
        return $"error {rc}";
    }

    public static unsafe string LibraryVersion()
    {
        var buf = new byte[NativeMethods.MPI_MAX_LIBRARY_VERSION_STRING + 1];
        fixed (byte* p = buf)
            Check(NativeMethods.MPI_Get_library_version(p, out int len));
        return Encoding.UTF8.GetString(buf).TrimEnd('\0').Split('\n')[0].Trim();
    }
}
