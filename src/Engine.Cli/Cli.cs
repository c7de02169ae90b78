using System.CommandLine;
using Engine.Core;
using Engine.Training.Config;

namespace Engine.Cli;

/// <summary>Shared CLI plumbing: one-line errors for user mistakes, backend selection.</summary>
public static class Cli
{
    public static int Run(RootCommand root, string[] args)
    {
        try
        {
            return root.Parse(args).Invoke();
        }
        catch (Exception e) when (IsUserError(e))
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
    }

    /// <summary>Runs a command body, turning user errors into one line on stderr and exit code 2.</summary>
    public static int Guard(Func<int> body)
    {
        try { return body(); }
        catch (Exception e) when (IsUserError(e))
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("cancelled");
            return 130;
        }
    }

    static bool IsUserError(Exception e) => e is ConfigException or FileNotFoundException or DirectoryNotFoundException
        or InvalidDataException or ArgumentException or NotSupportedException;

    /// <summary>
    /// The backend for --device / train.device. "cuda" is the process-wide CudaBackend (device 0, kernels loaded once);
    /// without a usable GPU it throws NotSupportedException with the reason (no driver, no device, kernels not built).
    /// </summary>
    public static IBackend Backend(string device) => device switch
    {
        "cpu" => CpuBackend.Instance,
        "cuda" => Engine.Cuda.Backend.CudaBackend.TryGetShared(out var cuda, out string reason)
            ? cuda!
            : throw new NotSupportedException($"device 'cuda': {reason}: use device = \"cpu\""),
        _ => throw new ArgumentException($"unknown device '{device}' (cpu or cuda)"),
    };
}
