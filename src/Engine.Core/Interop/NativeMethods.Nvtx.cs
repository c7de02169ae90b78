using System.Runtime.InteropServices;

namespace Engine.Core;

/// <summary>NVTX v2 (libnvToolsExt.so.1, shipped with the CUDA toolkit): named ranges Nsight Systems shows on its
/// timeline. Optional: without the library every call is a no-op.</summary>
static partial class NativeMethods
{
    public const string NvtxLibrary = "libnvToolsExt.so.1";

    [LibraryImport(NvtxLibrary, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int nvtxRangePushA(string message);

    [LibraryImport(NvtxLibrary)]
    internal static partial int nvtxRangePop();
}

/// <summary>NVTX ranges around profiled regions (steps, autograd ops) when libnvToolsExt is loadable.</summary>
public static class Nvtx
{
    static readonly Lazy<bool> Loaded = new(() => NativeLibrary.TryLoad(NativeMethods.NvtxLibrary, out _));

    /// <summary>Whether libnvToolsExt.so.1 was found (ranges are emitted only then).</summary>
    public static bool Available => Loaded.Value;

    public static void Push(string name)
    {
        if (Available) NativeMethods.nvtxRangePushA(name);
    }

    public static void Pop()
    {
        if (Available) NativeMethods.nvtxRangePop();
    }
}
