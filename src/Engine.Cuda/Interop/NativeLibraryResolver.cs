using System.Reflection;
using System.Runtime.InteropServices;

namespace Engine.Cuda.Interop;

/// <summary>The native libraries the CUDA backend binds to.</summary>
public enum CudaLibrary { Driver, Cublas, Nccl }

/// <summary>Outcome of a search: the loaded path (or null), every place tried, and a message naming them on failure.</summary>
public sealed record LibraryProbe(CudaLibrary Library, string? LoadedFrom, IReadOnlyList<string> Tried, string? Error)
{
    public bool Found => LoadedFrom is not null;
}

/// <summary>
/// Finds libcuda.so.1, libcublas.so.* (with libcublasLt beside it) and libnccl.so.* for the [LibraryImport] bindings:
/// an explicit override (ENGINE_LIBCUDA / ENGINE_LIBCUBLAS / ENGINE_LIBNCCL: a file, or a directory to search), then
/// the dynamic loader's own search by soname (ld.so.cache, LD_LIBRARY_PATH), then the binary's directory, CUDA_HOME/CUDA_PATH, /usr/local/cuda,
/// the distribution's library directories, and NVIDIA's Python wheels in both layouts — CUDA 13's shared
/// site-packages/nvidia/cu13/lib (libcublas.so.13, as PyTorch's cu130 builds install it) and the per-library
/// site-packages/nvidia/{cublas,nccl}/lib — of every Python found under /usr, /usr/local, ~/.local, VIRTUAL_ENV,
/// CONDA_PREFIX and the prefix of each python3 on PATH (a venv such as /opt/torch/.venv/bin), newest soname first.
/// The driver offers only libcuda.so.1 on most systems (libcuda.so comes with the toolkit's dev package), and the
/// toolkit's stubs/libcuda.so is never used: it loads but every call fails.
/// </summary>
public static class NativeLibraryResolver
{
    private static int _installed;
    private static readonly Dictionary<string, IntPtr> Loaded = new(StringComparer.Ordinal);
    private static readonly Lock Gate = new();

    /// <summary>Installs the resolver for this assembly once (called by NativeMethods' type initializer).</summary>
    public static void Install()
    {
        if (Interlocked.Exchange(ref _installed, 1) != 0) return;
        NativeLibrary.SetDllImportResolver(typeof(NativeLibraryResolver).Assembly, Resolve);
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        CudaLibrary? lib = name switch
        {
            NativeMethods.LibCuda => CudaLibrary.Driver,
            NativeMethods.LibCublas => CudaLibrary.Cublas,
            NativeMethods.LibNccl => CudaLibrary.Nccl,
            _ => null,
        };
        if (lib is null) return IntPtr.Zero;
        lock (Gate)
        {
            if (Loaded.TryGetValue(name, out var h)) return h;
            var probe = Probe(lib.Value, Environment.GetEnvironmentVariable, out h);
            if (!probe.Found) throw new DllNotFoundException(probe.Error);
            Loaded[name] = h;
            return h;
        }
    }

    /// <summary>Searches for and loads the library; <paramref name="handle"/> is the dlopen handle when found.</summary>
    public static LibraryProbe Probe(CudaLibrary library, Func<string, string?> env, out IntPtr handle)
    {
        handle = IntPtr.Zero;
        var tried = new List<string>();
        var (envVar, sonames, wheelDirs) = Describe(library);
        string? overridePath = env(envVar);
        if (!string.IsNullOrWhiteSpace(overridePath))
        {
            var candidates = Directory.Exists(overridePath) ? CandidatesIn(overridePath, sonames) : [overridePath];
            foreach (var c in candidates)
            {
                tried.Add(c);
                if (TryLoad(library, c, out handle)) return new LibraryProbe(library, c, tried, null);
            }
            return new LibraryProbe(library, null, tried,
                $"{sonames[0]}: {envVar}={overridePath} could not be loaded (tried: {string.Join(", ", tried)}). " +
                $"Unset {envVar} to search the standard places.");
        }
        foreach (var soname in sonames)
        {
            tried.Add(soname + " (dynamic loader search)");
            if (TryLoad(library, soname, out handle)) return new LibraryProbe(library, soname, tried, null);
        }
        foreach (var dir in SearchDirectories(env, wheelDirs))
        {
            var candidates = CandidatesIn(dir, sonames).ToList();
            if (candidates.Count == 0) tried.Add(dir + "/");
            foreach (var c in candidates)
            {
                tried.Add(c);
                if (TryLoad(library, c, out handle)) return new LibraryProbe(library, c, tried, null);
            }
        }
        string what = library switch
        {
            CudaLibrary.Driver => "no CUDA driver (libcuda.so.1 not found)",
            CudaLibrary.Cublas => "cuBLAS not found (libcublas.so.*)",
            _ => "NCCL not found (libnccl.so.*)",
        };
        return new LibraryProbe(library, null, tried,
            $"{what}; looked in: {string.Join(", ", tried)}. Set {envVar} to the library file or its directory.");
    }

    private static (string EnvVar, string[] Sonames, string[] WheelDirs) Describe(CudaLibrary library) => library switch
    {
        CudaLibrary.Driver => ("ENGINE_LIBCUDA", ["libcuda.so.1", "libcuda.so"], []),
        CudaLibrary.Cublas => ("ENGINE_LIBCUBLAS", ["libcublas.so", "libcublas.so.13", "libcublas.so.12", "libcublas.so.11"], WheelLibDirs("cublas")),
        _ => ("ENGINE_LIBNCCL", ["libnccl.so.2", "libnccl.so"], WheelLibDirs("nccl")),
    };

    /// <summary>Library folders of NVIDIA's wheels below site-packages, newest CUDA first: the shared CUDA 13 (and
    /// later) folder nvidia/cuNN/lib, then the per-library nvidia/&lt;name&gt;/lib of the CUDA 11/12 wheels.</summary>
    private static string[] WheelLibDirs(string name) =>
        [Path.Combine("nvidia", "cu13", "lib"), Path.Combine("nvidia", name, "lib")];

    /// <summary>Files in <paramref name="dir"/> matching the library's soname stem, newest version first.</summary>
    public static IEnumerable<string> CandidatesIn(string dir, IReadOnlyList<string> sonames)
    {
        if (!Directory.Exists(dir)) return [];
        string stem = sonames[0].Split(".so")[0] + ".so";   // libcublas.so
        var files = Directory.EnumerateFiles(dir, stem + "*")
            .Where(f => !f.Contains("/stubs/", StringComparison.Ordinal))
            .Select(f => (Path: f, Version: VersionOf(Path.GetFileName(f), stem)))
            .OrderByDescending(x => x.Version)
            .Select(x => x.Path)
            .ToList();
        return files;
    }

    private static long VersionOf(string file, string stem)
    {
        // libcublas.so.13.1.0.3 -> 13_001_000; libcublas.so -> 0
        var parts = file.Length > stem.Length ? file[(stem.Length + 1)..].Split('.') : [];
        long v = 0;
        for (int i = 0; i < 3; i++) v = v * 1000 + (i < parts.Length && int.TryParse(parts[i], out int p) ? p : 0);
        return v;
    }

    /// <summary>Every directory searched after the loader's own search, in order.</summary>
    public static IEnumerable<string> SearchDirectories(CudaLibrary library, Func<string, string?> env) =>
        SearchDirectories(env, Describe(library).WheelDirs);

    private static IEnumerable<string> SearchDirectories(Func<string, string?> env, string[] wheelDirs)
    {
        var dirs = new List<string>();
        // beside the binary (a self-contained engine shipped with its libraries), then the usual places
        if (Path.GetDirectoryName(Environment.ProcessPath) is { Length: > 0 } exeDir) dirs.Add(exeDir);
        dirs.Add(AppContext.BaseDirectory.TrimEnd('/'));
        foreach (var v in new[] { "CUDA_HOME", "CUDA_PATH" })
            if (env(v) is { Length: > 0 } root) { dirs.Add(Path.Combine(root, "lib64")); dirs.Add(Path.Combine(root, "lib")); }
        dirs.AddRange(["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
            "/usr/lib", "/usr/lib/wsl/lib"]);
        foreach (var sp in SitePackages(env))
            foreach (var wheelDir in wheelDirs) dirs.Add(Path.Combine(sp, wheelDir));
        return dirs.Distinct(StringComparer.Ordinal);
    }

    /// <summary>site-packages / dist-packages directories of the Pythons we can see (pip wheels carry CUDA libraries).</summary>
    public static IEnumerable<string> SitePackages(Func<string, string?> env)
    {
        var roots = new List<string> { "/usr/lib", "/usr/local/lib" };
        if (env("HOME") is { Length: > 0 } home) roots.Add(Path.Combine(home, ".local", "lib"));
        if (env("VIRTUAL_ENV") is { Length: > 0 } venv) roots.Add(Path.Combine(venv, "lib"));
        if (env("CONDA_PREFIX") is { Length: > 0 } conda) roots.Add(Path.Combine(conda, "lib"));
        // the prefix of every python3 on PATH: a venv that is on PATH but not activated (no VIRTUAL_ENV)
        foreach (var bin in (env("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
            if (File.Exists(Path.Combine(bin, "python3")) && Path.GetDirectoryName(bin.TrimEnd('/')) is { Length: > 0 } prefix)
                roots.Add(Path.Combine(prefix, "lib"));
        foreach (var root in roots.Distinct(StringComparer.Ordinal))
        {
            if (!Directory.Exists(root)) continue;
            IEnumerable<string> pys;
            try { pys = Directory.EnumerateDirectories(root, "python3*").ToList(); }
            catch (UnauthorizedAccessException) { continue; }
            foreach (var py in pys)
                foreach (var leaf in new[] { "site-packages", "dist-packages" })
                    if (Directory.Exists(Path.Combine(py, leaf))) yield return Path.Combine(py, leaf);
        }
    }

    private static bool TryLoad(CudaLibrary library, string path, out IntPtr handle)
    {
        handle = IntPtr.Zero;
        if (library == CudaLibrary.Cublas && Path.IsPathRooted(path))
        {
            // libcublas needs libcublasLt of the same release; a wheel's copy sits beside it.
            string dir = Path.GetDirectoryName(path)!;
            foreach (var lt in CandidatesIn(dir, ["libcublasLt.so"]))
                if (NativeLibrary.TryLoad(lt, out _)) break;
        }
        return NativeLibrary.TryLoad(path, out handle);
    }
}
