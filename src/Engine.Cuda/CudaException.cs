using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Engine.Cuda.Interop;

namespace Engine.Cuda;

/// <summary>A failed CUDA driver, cuBLAS or NCCL call: names the call expression and the library's error name/text.</summary>
public sealed class CudaException : Exception
{
    public string Call { get; }
    public int Code { get; }
    public CudaException(string call, int code, string message) : base(message) { Call = call; Code = code; }
}

/// <summary>The one status check: <c>Check.Cu(NativeMethods.cuInit(0));</c> throws naming "NativeMethods.cuInit(0)".</summary>
public static class Check
{
    public static void Cu(CuResult result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result != CuResult.Success) throw new CudaException(call, (int)result, $"{call} failed: {Describe(result)}");
    }

    public static void Cublas(CublasStatus status, [CallerArgumentExpression(nameof(status))] string call = "")
    {
        if (status != CublasStatus.Success)
            throw new CudaException(call, (int)status, $"{call} failed: CUBLAS_STATUS_{status.ToString().ToUpperInvariant()} ({(int)status})");
    }

    public static void Nccl(NcclResult result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result == NcclResult.Success) return;
        string text;
        try { text = Marshal.PtrToStringUTF8(NativeMethods.ncclGetErrorString(result)) ?? ""; }
        catch (DllNotFoundException) { text = ""; }
        throw new CudaException(call, (int)result, $"{call} failed: nccl {result} ({(int)result}) {text}".TrimEnd());
    }

    /// <summary>"CUDA_ERROR_OUT_OF_MEMORY (2): out of memory" from the driver's own tables.</summary>
    public static string Describe(CuResult result)
    {
        string name = $"CUresult {(int)result}", text = "";
        try
        {
            if (NativeMethods.cuGetErrorName(result, out var n) == CuResult.Success) name = Marshal.PtrToStringUTF8(n) ?? name;
            if (NativeMethods.cuGetErrorString(result, out var s) == CuResult.Success) text = Marshal.PtrToStringUTF8(s) ?? "";
        }
        catch (DllNotFoundException) { }
        return text.Length > 0 ? $"{name} ({(int)result}): {text}" : $"{name} ({(int)result})";
    }
}
