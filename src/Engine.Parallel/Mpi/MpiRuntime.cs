using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Cpu;
using Engine.Parallel.Interop;
using static Engine.Parallel.Mpi.MpiLibrary;

namespace Engine.Parallel.Mpi;

/// <summary>
/// MPI in this process: initialized once (MPI_Init_thread, MPI_THREAD_FUNNELED) on the dedicated MPI thread that then
/// makes every MPI call (its FIFO queue is the communicators' queue, so asynchronous operations overlap the caller's
/// compute), MPI_ERRORS_RETURN on the predefined communicators, the bf16 reduction operators, and MPI_Finalize at
/// the end. Open MPI cannot be initialized twice in a process: a second start is an error.
/// </summary>
public sealed unsafe class MpiRuntime : IDisposable
{
    static int started;

    MpiRuntime(CommWorker worker) => Worker = worker;

    /// <summary>The MPI thread.</summary>
    public CommWorker Worker { get; }

    public IntPtr CommWorld { get; private set; }
    public IntPtr CommSelf { get; private set; }
    public IntPtr InfoNull { get; private set; }
    public IntPtr Float { get; private set; }
    public IntPtr Double { get; private set; }
    public IntPtr Byte { get; private set; }
    public IntPtr Int { get; private set; }
    public IntPtr UInt16 { get; private set; }
    public IntPtr OpSum { get; private set; }
    public IntPtr OpMax { get; private set; }
    public IntPtr OpMin { get; private set; }
    IntPtr bf16Sum, bf16Max, bf16Min;
    public string Version { get; private set; } = "";
    public bool Finalized { get; private set; }

    /// <summary>Loads libmpi, starts the MPI thread and runs MPI_Init_thread on it (CommException after
    /// <paramref name="timeout"/>: a singleton that cannot reach ompi-server may wait forever).</summary>
    public static MpiRuntime Start(TimeSpan timeout)
    {
        MpiLibrary.Load();
        if (Interlocked.Exchange(ref started, 1) != 0)
            throw new InvalidOperationException("MPI was already started in this process (Open MPI cannot be initialized twice)");
        var rt = new MpiRuntime(new CommWorker("mpi"));
        try
        {
            rt.Worker.Invoke(rt.Init, timeout, () => $"MPI_Init_thread did not return within {timeout.TotalSeconds:F0} s" +
                (Environment.GetEnvironmentVariable("OMPI_MCA_pmix_server_uri") is { } uri ? $" (ompi-server at {uri} unreachable?)" : ""));
        }
        catch
        {
            rt.Worker.Stop(TimeSpan.FromSeconds(1));
            throw;
        }
        return rt;
    }

    int Init()
    {
        Check(NativeMethods.MPI_Initialized(out int already));
        if (already != 0) throw new InvalidOperationException("MPI was initialized by someone else in this process");
        Check(NativeMethods.MPI_Init_thread(IntPtr.Zero, IntPtr.Zero, NativeMethods.MPI_THREAD_FUNNELED, out int provided));
        if (provided < NativeMethods.MPI_THREAD_FUNNELED)
            throw new CommException($"MPI_Init_thread provided thread level {provided} < MPI_THREAD_FUNNELED");
        CommWorld = Global("ompi_mpi_comm_world");
        CommSelf = Global("ompi_mpi_comm_self");
        InfoNull = Global("ompi_mpi_info_null");
        Float = Global("ompi_mpi_float");
        Double = Global("ompi_mpi_double");
        Byte = Global("ompi_mpi_byte");
        Int = Global("ompi_mpi_int");
        UInt16 = Global("ompi_mpi_uint16_t");
        OpSum = Global("ompi_mpi_op_sum");
        OpMax = Global("ompi_mpi_op_max");
        OpMin = Global("ompi_mpi_op_min");
        IntPtr errorsReturn = Global("ompi_mpi_errors_return");
        Check(NativeMethods.MPI_Comm_set_errhandler(CommWorld, errorsReturn));
        Check(NativeMethods.MPI_Comm_set_errhandler(CommSelf, errorsReturn));
        IntPtr op;
        Check(NativeMethods.MPI_Op_create(&Bf16Sum, 1, out op)); bf16Sum = op;
        Check(NativeMethods.MPI_Op_create(&Bf16Max, 1, out op)); bf16Max = op;
        Check(NativeMethods.MPI_Op_create(&Bf16Min, 1, out op)); bf16Min = op;
        Version = LibraryVersion();
        return 0;
    }

    public IntPtr Type(DType t) => t == DType.F32 ? Float : UInt16;

    /// <summary>The MPI operator for <paramref name="op"/> on <paramref name="t"/> (Avg is a sum divided afterwards).</summary>
    public IntPtr Op(DType t, ReduceOp op) => (t, op) switch
    {
        (DType.F32, ReduceOp.Max) => OpMax,
        (DType.F32, ReduceOp.Min) => OpMin,
        (DType.F32, _) => OpSum,
        (_, ReduceOp.Max) => bf16Max,
        (_, ReduceOp.Min) => bf16Min,
        _ => bf16Sum,
    };

    // bf16 operators: widened to fp32, combined, rounded to nearest even (each pairwise step of MPI's algorithm rounds).
    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    static void Bf16Sum(void* invec, void* inoutvec, int* len, IntPtr* datatype)
    {
        var a = new ReadOnlySpan<ushort>(invec, *len);
        var b = new Span<ushort>(inoutvec, *len);
        for (int i = 0; i < b.Length; i++) b[i] = BFloat16.FromFloat(BFloat16.ToFloat(a[i]) + BFloat16.ToFloat(b[i]));
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    static void Bf16Max(void* invec, void* inoutvec, int* len, IntPtr* datatype)
    {
        var a = new ReadOnlySpan<ushort>(invec, *len);
        var b = new Span<ushort>(inoutvec, *len);
        for (int i = 0; i < b.Length; i++) b[i] = BFloat16.FromFloat(MathF.Max(BFloat16.ToFloat(a[i]), BFloat16.ToFloat(b[i])));
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    static void Bf16Min(void* invec, void* inoutvec, int* len, IntPtr* datatype)
    {
        var a = new ReadOnlySpan<ushort>(invec, *len);
        var b = new Span<ushort>(inoutvec, *len);
        for (int i = 0; i < b.Length; i++) b[i] = BFloat16.FromFloat(MathF.Min(BFloat16.ToFloat(a[i]), BFloat16.ToFloat(b[i])));
    }

    /// <summary>Pins a host tensor's array for one MPI call: the address of its first element.</summary>
    public static Pin PinTensor(Tensor t) => t.Storage switch
    {
        CpuStorage { F: { } f } => new Pin(GCHandle.Alloc(f, GCHandleType.Pinned), t.Offset * 4),
        CpuStorage { H: { } h } => new Pin(GCHandle.Alloc(h, GCHandleType.Pinned), t.Offset * 2),
        _ => throw new ArgumentException($"{t.Describe()} is not a host F32/BF16 tensor"),
    };

    public readonly struct Pin(GCHandle handle, long byteOffset) : IDisposable
    {
        public void* Ptr => (byte*)handle.AddrOfPinnedObject() + byteOffset;
        public void Dispose() => handle.Free();
    }

    /// <summary>MPI_Finalize on the MPI thread, waiting at most <paramref name="timeout"/> (it synchronizes with every
    /// rank; a dead rank would hold it forever). Skipped after a fault.</summary>
    public void Finalize(TimeSpan timeout)
    {
        if (Finalized) return;
        Finalized = true;
        var done = new ManualResetEventSlim(false);
        Worker.Post(() =>
        {
            try
            {
                NativeMethods.MPI_Op_free(ref bf16Sum);
                NativeMethods.MPI_Op_free(ref bf16Max);
                NativeMethods.MPI_Op_free(ref bf16Min);
                NativeMethods.MPI_Finalize();
            }
            finally { done.Set(); }
        });
        done.Wait(timeout);
    }

    public void Dispose() => Worker.Stop(TimeSpan.FromSeconds(5));

    /// <summary>Stops taking work without waiting long for the MPI thread (stuck in a call to a rank that is gone).</summary>
    public void Abandon() => Worker.Stop(TimeSpan.FromSeconds(1));
}
