using Engine.Core;
using Engine.Cuda.Interop;
using Engine.Cuda.Kernels;

namespace Engine.Cuda;

/// <summary>Grid dimensions of a launch.</summary>
public readonly record struct Dim3(uint X, uint Y = 1, uint Z = 1);

/// <summary>One extern "C" __global__ entry point of a loaded fatbin.</summary>
public sealed class KernelFunction
{
    private int _dynamicSmemLimit = 48 * 1024;
    public string Module { get; }
    public string Name { get; }
    public IntPtr Handle { get; }

    internal KernelFunction(string module, string name, IntPtr handle) { Module = module; Name = name; Handle = handle; }

    /// <summary>Raises the function's dynamic shared-memory limit when a launch needs more than the default 48 KiB.</summary>
    public void EnsureDynamicSharedMemory(int bytes)
    {
        if (bytes <= Volatile.Read(ref _dynamicSmemLimit)) return;
        Check.Cu(NativeMethods.cuFuncSetAttribute(Handle, CuFunctionAttribute.MaxDynamicSharedSizeBytes, bytes),
            $"cuFuncSetAttribute({Name}, MAX_DYNAMIC_SHARED_SIZE_BYTES, {bytes})");
        Volatile.Write(ref _dynamicSmemLimit, bytes);
    }

    /// <summary>Launches with one by-value params struct as the only kernel argument.</summary>
    public unsafe void Launch<T>(CudaStream stream, Dim3 grid, int block, int sharedBytes, in T args) where T : unmanaged
    {
        T copy = args;
        void* p = &copy;
        LaunchRaw(stream, grid, block, sharedBytes, &p);
    }

    /// <summary>Launches with a by-value params struct and one float after it (the *_alibi attention kernels' max bias).</summary>
    public unsafe void Launch<T>(CudaStream stream, Dim3 grid, int block, int sharedBytes, in T args, float second) where T : unmanaged
    {
        T copy = args;
        float f = second;
        void** p = stackalloc void*[2] { &copy, &f };
        LaunchRaw(stream, grid, block, sharedBytes, p);
    }

    /// <summary>Launches with an array of pointers to each argument (cuLaunchKernel's kernelParams).</summary>
    public unsafe void LaunchRaw(CudaStream stream, Dim3 grid, int block, int sharedBytes, void** args)
    {
        if (grid.X == 0 || grid.Y == 0 || grid.Z == 0) return;   // empty problem
        if (sharedBytes > 48 * 1024) EnsureDynamicSharedMemory(sharedBytes);
        var r = NativeMethods.cuLaunchKernel(Handle, grid.X, grid.Y, grid.Z, (uint)block, 1, 1, (uint)sharedBytes, stream.Handle, args, null);
        if (Profiler.Enabled) Profiler.CountLaunch(Profiler.LaunchKind.Kernel);
        // the message is built only on failure: a successful launch formats nothing
        if (r != CuResult.Success) Check.Cu(r, $"cuLaunchKernel({Name}, grid {grid.X}x{grid.Y}x{grid.Z}, block {block}, smem {sharedBytes})");
    }
}

/// <summary>
/// The hand-written kernels: one fatbin per native/*.cu file, loaded lazily from the kernels directory
/// (<see cref="FindKernelsDirectory"/>), with typed launchers named like the .cu files.
/// </summary>
public sealed class KernelLibrary : IDisposable
{
    /// <summary>The fatbins CMakeLists.txt builds (native/&lt;name&gt;.cu → kernels/&lt;name&gt;.fatbin).</summary>
    public static readonly IReadOnlyList<string> ModuleNames =
        ["elementwise", "rmsnorm", "swiglu", "rope", "embedding", "adamw", "crossentropy", "attention", "backend_extras", "attention_v2"];

    private readonly Dictionary<string, CudaModuleHandle> _modules = new(StringComparer.Ordinal);
    private readonly Dictionary<string, KernelFunction> _functions = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();

    public CudaDevice Device { get; }
    public string Directory { get; }

    public ElementwiseKernels Elementwise { get; }
    public RmsNormKernels RmsNorm { get; }
    public SwiGluKernels SwiGlu { get; }
    public RopeKernels Rope { get; }
    public EmbeddingKernels Embedding { get; }
    public AdamWKernels AdamW { get; }
    public CrossEntropyKernels CrossEntropy { get; }
    public AttentionKernels Attention { get; }
    public AttentionV2Kernels AttentionV2 { get; }

    private KernelLibrary(CudaDevice device, string directory)
    {
        Device = device; Directory = directory;
        Elementwise = new(this); RmsNorm = new(this); SwiGlu = new(this); Rope = new(this);
        Embedding = new(this); AdamW = new(this); CrossEntropy = new(this); Attention = new(this); AttentionV2 = new(this);
    }

    /// <summary>Opens the kernels directory (given, or found by <see cref="FindKernelsDirectory"/>); modules load on first use.</summary>
    public static KernelLibrary Load(CudaDevice device, string? directory = null)
    {
        directory ??= FindKernelsDirectory(Environment.GetEnvironmentVariable, out var tried)
            ?? throw new DirectoryNotFoundException(
                $"CUDA kernels (*.fatbin) not found; looked in: {string.Join(", ", tried)}. " +
                "Build them with `cmake -S . -B build/native && cmake --build build/native` or set ENGINE_KERNELS_DIR.");
        return new KernelLibrary(device, directory);
    }

    /// <summary>
    /// ENGINE_KERNELS_DIR, then build/native/kernels under the first ancestor of AppContext.BaseDirectory that has one
    /// (the repository root when running from bin/), then a kernels/ folder next to the assembly, then the fatbins
    /// embedded in a single-file binary (extracted once to a cache folder).
    /// </summary>
    public static string? FindKernelsDirectory(Func<string, string?> env, out IReadOnlyList<string> tried)
    {
        var list = new List<string>();
        tried = list;
        if (env("ENGINE_KERNELS_DIR") is { Length: > 0 } fromEnv)
        {
            list.Add(fromEnv + " (ENGINE_KERNELS_DIR)");
            return HasFatbins(fromEnv) ? Path.GetFullPath(fromEnv) : null;
        }
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "build", "native", "kernels");
            list.Add(candidate);
            if (HasFatbins(candidate)) return candidate;
        }
        string beside = Path.Combine(AppContext.BaseDirectory, "kernels");
        list.Add(beside);
        if (HasFatbins(beside)) return beside;
        list.Add("fatbins embedded in the binary");
        return ExtractEmbedded(env);
    }

    /// <summary>Names of the fatbins embedded in this assembly (a single-file `engine` built by tools/publish.sh).</summary>
    public static IReadOnlyList<string> EmbeddedModules() => typeof(KernelLibrary).Assembly.GetManifestResourceNames()
        .Where(n => n.StartsWith("kernels/", StringComparison.Ordinal) && n.EndsWith(".fatbin", StringComparison.Ordinal))
        .Select(n => n["kernels/".Length..^".fatbin".Length]).Order(StringComparer.Ordinal).ToList();

    /// <summary>
    /// Writes the embedded fatbins once to a folder named by their content hash under $XDG_CACHE_HOME/engine (or
    /// ~/.cache/engine, else the temp folder) and returns it; null when none are embedded. Written to a temporary name
    /// and renamed, so ranks starting together never read half a file.
    /// </summary>
    static string? ExtractEmbedded(Func<string, string?> env)
    {
        var asm = typeof(KernelLibrary).Assembly;
        var names = EmbeddedModules();
        if (names.Count == 0) return null;
        var blobs = names.Select(n =>
        {
            using var s = asm.GetManifestResourceStream("kernels/" + n + ".fatbin")!;
            using var ms = new MemoryStream();
            s.CopyTo(ms);
            return (Name: n, Bytes: ms.ToArray());
        }).ToList();
        using var sha = System.Security.Cryptography.SHA256.Create();
        foreach (var (n, b) in blobs) { var nb = System.Text.Encoding.UTF8.GetBytes(n); sha.TransformBlock(nb, 0, nb.Length, null, 0); sha.TransformBlock(b, 0, b.Length, null, 0); }
        sha.TransformFinalBlock([], 0, 0);
        string hash = Convert.ToHexString(sha.Hash!)[..16].ToLowerInvariant();
        string root = env("XDG_CACHE_HOME") is { Length: > 0 } x ? x
            : env("HOME") is { Length: > 0 } h ? Path.Combine(h, ".cache") : Path.GetTempPath();
        string dir = Path.Combine(root, "engine", "kernels-" + hash);
        System.IO.Directory.CreateDirectory(dir);
        foreach (var (n, b) in blobs)
        {
            string path = Path.Combine(dir, n + ".fatbin");
            if (File.Exists(path) && new FileInfo(path).Length == b.Length) continue;
            string tmp = path + "." + Environment.ProcessId + ".tmp";
            File.WriteAllBytes(tmp, b);
            File.Move(tmp, path, overwrite: true);
        }
        return dir;
    }

    /// <summary>The GPU architectures (sm_XX) of a fatbin's ELF entries and whether it carries PTX, read from the fatbin
    /// container header (magic 0xBA55ED50; per entry: kind 1 = PTX, 2 = ELF, the arch as major·10 + minor at byte 28).</summary>
    public static (IReadOnlyList<int> Sass, IReadOnlyList<int> Ptx) FatbinArchitectures(byte[] image)
    {
        var sass = new SortedSet<int>();
        var ptx = new SortedSet<int>();
        int pos = 0;
        while (pos + 16 <= image.Length && BitConverter.ToUInt32(image, pos) == 0xBA55ED50)
        {
            int header = BitConverter.ToUInt16(image, pos + 6);
            long size = BitConverter.ToInt64(image, pos + 8);
            long e = pos + header, end = Math.Min(image.Length, pos + header + size);
            while (e + 32 <= end)
            {
                int kind = BitConverter.ToUInt16(image, (int)e);
                int eh = BitConverter.ToInt32(image, (int)e + 4);
                long payload = BitConverter.ToInt64(image, (int)e + 8);
                int arch = BitConverter.ToInt32(image, (int)e + 28);
                if (kind == 2) sass.Add(arch); else if (kind == 1) ptx.Add(arch);
                if (eh <= 0) break;
                e += eh + payload;
            }
            pos = (int)Math.Min(int.MaxValue, pos + header + size);
            pos = (pos + 7) & ~7;
        }
        return (sass.ToList(), ptx.ToList());
    }

    private static bool HasFatbins(string dir) =>
        System.IO.Directory.Exists(dir) && System.IO.Directory.EnumerateFiles(dir, "*.fatbin").Any();

    /// <summary>The entry point <paramref name="name"/> of kernels/<paramref name="module"/>.fatbin.</summary>
    public unsafe KernelFunction Function(string module, string name)
    {
        string key = module + "/" + name;
        lock (_gate)
        {
            if (_functions.TryGetValue(key, out var f)) return f;
            if (!_modules.TryGetValue(module, out var mod))
            {
                string path = Path.Combine(Directory, module + ".fatbin");
                if (!File.Exists(path)) throw new FileNotFoundException($"kernel module {path} missing (rebuild build/native)", path);
                byte[] image = File.ReadAllBytes(path);
                IntPtr handle;
                fixed (byte* p = image) Check.Cu(NativeMethods.cuModuleLoadData(out handle, p), $"cuModuleLoadData({path})");
                _modules[module] = mod = new CudaModuleHandle(handle);
            }
            Check.Cu(NativeMethods.cuModuleGetFunction(out IntPtr fn, mod.DangerousGetHandle(), name), $"cuModuleGetFunction({module}.fatbin, {name})");
            f = new KernelFunction(module, name, fn);
            _functions[key] = f;
            return f;
        }
    }

    /// <summary>The entry point, or false when its fatbin is absent or holds no code for this device (optional modules
    /// such as attention_sm90, built only with nvcc &gt;= 12 for sm_90a). The answer is remembered.</summary>
    public bool TryFunction(string module, string name, out KernelFunction? function)
    {
        string key = module + "/" + name;
        lock (_gate)
        {
            if (_missing.Contains(key)) { function = null; return false; }
        }
        try
        {
            function = Function(module, name);
            return true;
        }
        catch (Exception e) when (e is FileNotFoundException or CudaException)
        {
            lock (_gate) _missing.Add(key);
            function = null;
            return false;
        }
    }

    private readonly HashSet<string> _missing = new(StringComparer.Ordinal);

    /// <summary>Blocks for a grid-stride kernel: enough to cover <paramref name="work"/> items at
    /// <paramref name="perBlock"/> each, capped at 32 blocks per SM, at least 1.</summary>
    internal int GridFor(long work, long perBlock)
    {
        long blocks = (work + perBlock - 1) / perBlock;
        return (int)Math.Clamp(blocks, 1, (long)Device.MultiprocessorCount * 32);
    }

    public void Dispose()
    {
        lock (_gate)
        {
            foreach (var m in _modules.Values) m.Dispose();
            _modules.Clear();
            _functions.Clear();
        }
    }
}
