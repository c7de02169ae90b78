using System.CommandLine;
using System.Runtime.InteropServices;
using Engine.Cuda;
using Engine.Cuda.Interop;
using Engine.Parallel.Mpi;

namespace Engine.Cli.Commands;

/// <summary>
/// `engine doctor`: what this node offers the engine — the binary, GPUs and driver, cuBLAS, NCCL, MPI and the
/// launchers, the kernels (where from, which architectures) and this rank's launch variables — and, for everything
/// missing, the fix. Every probe is read-only; the exit code is 0 unless --require names something absent.
/// </summary>
public static class DoctorCommand
{
    sealed class Report
    {
        public readonly List<(string Fix, string What)> Missing = [];
        public void Line(string what, string value) => Console.WriteLine($"  {what,-14} {value}");
        public void Lack(string what, string value, string fix)
        {
            Line(what, "missing: " + value);
            Missing.Add((fix, what));
        }
    }

    static readonly string[] RankVariables =
    [
        "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_RANK",
        "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODELIST", "CUDA_VISIBLE_DEVICES",
    ];

    public static Command Create()
    {
        var require = new Option<string[]>("--require") { Description = "exit 2 unless these are present: cuda, cublas, nccl, mpi, kernels", AllowMultipleArgumentsPerToken = true };
        var cmd = new Command("doctor", "what this node offers: GPUs, driver, cuBLAS, NCCL, MPI, kernels, launch variables; and the fix for what is missing") { require };
        cmd.SetAction(parse => Cli.Guard(() =>
        {
            var r = new Report();
            var found = new HashSet<string>(StringComparer.Ordinal);

            Console.WriteLine("engine");
            r.Line("binary", $"{Environment.ProcessPath} ({(File.Exists(Path.Combine(AppContext.BaseDirectory, "engine.dll")) ? "framework-dependent build" : "single file")}, .NET {Environment.Version}, {RuntimeInformation.RuntimeIdentifier})");
            r.Line("host", $"{Environment.MachineName}: {Environment.ProcessorCount} cores, {GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (double)(1L << 30):F1} GiB, {RuntimeInformation.OSDescription}");

            Console.WriteLine("GPU");
            var driver = NativeLibraryResolver.Probe(CudaLibrary.Driver, Environment.GetEnvironmentVariable, out _);
            if (!driver.Found) r.Lack("driver", "libcuda.so.1 not found", "install the NVIDIA driver (the only thing a node needs besides this binary), or set ENGINE_LIBCUDA");
            else
            {
                found.Add("driver");
                int n = CudaDevice.Count();
                if (n == 0) r.Lack("devices", $"driver at {driver.LoadedFrom}, but no CUDA device is visible", "check nvidia-smi, the kernel module and CUDA_VISIBLE_DEVICES");
                for (int i = 0; i < n; i++)
                {
                    if (CudaDevice.TryCreate(out var d, out string why, i) && d != null)
                    {
                        using (d)
                            r.Line($"device {i}", $"{d.Name}, sm_{d.ComputeMajor}{d.ComputeMinor}, {d.TotalMemoryBytes / (double)(1L << 30):F0} GiB, {d.MultiprocessorCount} SMs; driver CUDA {d.DriverVersion / 1000}.{d.DriverVersion % 1000 / 10} ({driver.LoadedFrom})");
                        found.Add("cuda");
                    }
                    else r.Lack($"device {i}", why, "the kernels need compute capability 8.0+ (A100, H100, H200)");
                }
            }
            var cublas = NativeLibraryResolver.Probe(CudaLibrary.Cublas, Environment.GetEnvironmentVariable, out _);
            if (cublas.Found) { r.Line("cuBLAS", cublas.LoadedFrom!); found.Add("cublas"); }
            else r.Lack("cuBLAS", "libcublas.so.* not found", "pip install nvidia-cublas-cu12 (found in site-packages/nvidia/cublas/lib), install the CUDA toolkit, put libcublas*.so beside the binary, or set ENGINE_LIBCUBLAS");
            var nccl = NativeLibraryResolver.Probe(CudaLibrary.Nccl, Environment.GetEnvironmentVariable, out _);
            if (nccl.Found) { r.Line("NCCL", nccl.LoadedFrom!); found.Add("nccl"); }
            else r.Lack("NCCL", "libnccl.so.2 not found (multi-GPU training needs it)", "pip install nvidia-nccl-cu12, apt install libnccl2, put libnccl.so.2 beside the binary, or set ENGINE_LIBNCCL");

            Console.WriteLine("kernels");
            string? dir = KernelLibrary.FindKernelsDirectory(Environment.GetEnvironmentVariable, out var tried);
            var embedded = KernelLibrary.EmbeddedModules();
            r.Line("embedded", embedded.Count > 0 ? string.Join(", ", embedded) : "none (a development build: kernels come from build/native)");
            if (dir == null) r.Lack("fatbins", $"none found; looked in {string.Join(", ", tried)}", "cmake -S . -B build/native && cmake --build build/native, or use the single-file engine (tools/publish.sh), or set ENGINE_KERNELS_DIR");
            else
            {
                found.Add("kernels");
                r.Line("from", dir);
                foreach (var f in Directory.EnumerateFiles(dir, "*.fatbin").Order(StringComparer.Ordinal))
                {
                    var (sass, ptx) = KernelLibrary.FatbinArchitectures(File.ReadAllBytes(f));
                    r.Line("  " + Path.GetFileNameWithoutExtension(f), $"SASS {string.Join(" ", sass.Select(a => "sm_" + a))}" + (ptx.Count > 0 ? $"; PTX {string.Join(" ", ptx.Select(a => "compute_" + a))}" : ""));
                }
            }

            Console.WriteLine("processes");
            try { r.Line("MPI", $"{MpiLibrary.Load()}: {MpiLibrary.LibraryVersion().Split('\n')[0].Trim()}"); found.Add("mpi"); }
            catch (NotSupportedException e) { r.Lack("MPI", e.Message.Split(';')[0], "apt-get install openmpi-bin libopenmpi-dev (CPU ranks and mpirun/srun launches), or set ENGINE_LIBMPI"); }
            foreach (var tool in new[] { "mpirun", "srun", "torchrun" })
                r.Line(tool, OnPath(tool) ?? "not on PATH" + (tool == "srun" ? " (not a Slurm node)" : tool == "torchrun" ? " (not needed: `engine launch` starts ranks)" : ""));

            Console.WriteLine("this rank");
            var set = RankVariables.Where(v => Environment.GetEnvironmentVariable(v) != null).ToList();
            foreach (var v in set) r.Line(v, Environment.GetEnvironmentVariable(v)!);
            foreach (var kv in Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>()
                         .Where(kv => kv.Key.ToString()!.StartsWith("ENGINE_", StringComparison.Ordinal)).OrderBy(kv => kv.Key.ToString(), StringComparer.Ordinal))
                r.Line(kv.Key.ToString()!, kv.Value?.ToString() ?? "");
            if (set.Count == 0) r.Line("launch", "none: a single process (engine launch, mpirun, srun or torchrun set these)");

            Console.WriteLine(r.Missing.Count == 0 ? "ready: CPU and CUDA training, multi-GPU over NCCL, CPU ranks over MPI"
                : $"ready: CPU training{(found.Contains("cuda") && found.Contains("cublas") && found.Contains("kernels") ? ", CUDA training" : "")}{(found.Contains("mpi") ? ", CPU ranks over MPI" : "")}; missing {r.Missing.Count}:");
            foreach (var (fix, what) in r.Missing) Console.WriteLine($"  {what}: {fix}");
            var required = parse.GetValue(require) ?? [];
            var absent = required.Where(q => !found.Contains(q.ToLowerInvariant())).ToList();
            if (absent.Count > 0)
            {
                Console.Error.WriteLine($"error: required but missing: {string.Join(", ", absent)}");
                return 2;
            }
            return 0;
        }));
        return cmd;
    }

    static string? OnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, tool)).FirstOrDefault(File.Exists);
}
