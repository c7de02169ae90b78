using Engine.Cuda.Interop;

namespace Engine.Cuda;

/// <summary>
/// A CUDA graph captured from a stream and instantiated (issue 23: the steady-state step as one launch). Replaying it
/// re-runs every captured kernel, GEMM and copy with the addresses and arguments recorded at capture: inputs change
/// by writing new values into the same buffers before <see cref="Replay"/>; the buffers the captured work allocated
/// belong to <see cref="Pool"/> (a private pool of the caching allocator) and stay reserved until the graph is
/// disposed. Built with the CUDA driver API (cuStreamBeginCapture_v2 relaxed, cuGraphInstantiateWithFlags,
/// cuGraphLaunch); not yet run on a GPU.
/// </summary>
public sealed class CudaGraph : IDisposable
{
    /// <summary>CU_STREAM_CAPTURE_MODE_RELAXED: the capturing thread may still allocate device memory.</summary>
    public const int CaptureModeRelaxed = 2;

    private readonly CudaGraphHandle _graph;
    private readonly CudaGraphExecHandle _exec;

    private CudaGraph(CudaGraphHandle graph, CudaGraphExecHandle exec, CachingAllocator.PrivatePool pool, int nodes)
    {
        _graph = graph; _exec = exec; Pool = pool; Nodes = nodes;
    }

    /// <summary>The allocator pool holding the buffers the captured work uses.</summary>
    public CachingAllocator.PrivatePool Pool { get; }

    /// <summary>Nodes in the graph (kernels, copies, memsets, library kernels).</summary>
    public int Nodes { get; }

    /// <summary>Times <see cref="Replay"/> ran.</summary>
    public long Replays { get; private set; }

    /// <summary>
    /// Captures what <paramref name="work"/> enqueues on <paramref name="stream"/> (nothing executes while capturing),
    /// its allocations served from a private pool of <paramref name="allocator"/>. A host wait or a synchronous copy
    /// inside <paramref name="work"/> fails the capture (the driver reports CUDA_ERROR_STREAM_CAPTURE_*): the captured
    /// work must be device-only and the same every replay (shapes, host-side branches).
    /// </summary>
    public static CudaGraph Capture(CudaStream stream, CachingAllocator allocator, Action work)
    {
        var pool = allocator.BeginPrivatePool();
        bool capturing = false;
        try
        {
            Check.Cu(NativeMethods.cuStreamBeginCapture_v2(stream.Handle, CaptureModeRelaxed));
            capturing = true;
            stream.Capturing = true;
            work();
            stream.Capturing = false;
            capturing = false;
            Check.Cu(NativeMethods.cuStreamEndCapture(stream.Handle, out IntPtr g));
            var graph = new CudaGraphHandle(g);
            nuint count = 0;
            unsafe { Check.Cu(NativeMethods.cuGraphGetNodes(g, null, ref count)); }
            Check.Cu(NativeMethods.cuGraphInstantiateWithFlags(out IntPtr exec, g, 0));
            allocator.EndPrivatePool(pool);
            return new CudaGraph(graph, new CudaGraphExecHandle(exec), pool, (int)count);
        }
        catch
        {
            stream.Capturing = false;
            if (capturing && NativeMethods.cuStreamEndCapture(stream.Handle, out IntPtr broken) == CuResult.Success && broken != IntPtr.Zero)
                NativeMethods.cuGraphDestroy(broken);
            pool.Dispose();
            throw;
        }
    }

    /// <summary>Enqueues the whole graph on <paramref name="stream"/> (one launch; nothing waits).</summary>
    public void Replay(CudaStream stream)
    {
        Engine.Core.Profiler.CountLaunch(Engine.Core.Profiler.LaunchKind.Kernel);
        Check.Cu(NativeMethods.cuGraphLaunch(_exec.DangerousGetHandle(), stream.Handle));
        Replays++;
    }

    public void Dispose()
    {
        _exec.Dispose();
        _graph.Dispose();
        Pool.Dispose();
    }
}
