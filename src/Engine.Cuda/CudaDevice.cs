using System.Runtime.InteropServices;
using System.Text;
using Engine.Cuda.Interop;

namespace Engine.Cuda;

/// <summary>
/// One GPU with its primary context made current on the creating thread. <see cref="TryCreate"/> is the entry point:
/// it returns false with a one-line reason when there is no driver or no device, so callers fall back to the CPU.
/// Driver calls need the context current on the calling thread: call <see cref="MakeCurrent"/> from other threads.
/// </summary>
public sealed class CudaDevice : IDisposable
{
    private readonly CudaContextHandle _context;

    public int Ordinal { get; }
    public string Name { get; }
    public int ComputeMajor { get; }
    public int ComputeMinor { get; }
    public int MultiprocessorCount { get; }
    public int MaxSharedMemoryPerBlockOptin { get; }
    public long TotalMemoryBytes { get; }
    public int DriverVersion { get; }

    private CudaDevice(int ordinal, CudaContextHandle context, string name, int major, int minor, int sms, int smemOptin, long total, int driver)
    {
        Ordinal = ordinal; _context = context; Name = name; ComputeMajor = major; ComputeMinor = minor;
        MultiprocessorCount = sms; MaxSharedMemoryPerBlockOptin = smemOptin; TotalMemoryBytes = total; DriverVersion = driver;
    }

    /// <summary>Opens device <paramref name="ordinal"/>; on failure <paramref name="reason"/> says why
    /// ("no CUDA driver (libcuda.so.1 not found) ...", "no CUDA device", "compute capability 7.5 < 8.0", ...).</summary>
    public static bool TryCreate(out CudaDevice? device, out string reason, int ordinal = 0)
    {
        device = null;
        CuResult r;
        try { r = NativeMethods.cuInit(0); }
        catch (DllNotFoundException e) { reason = e.Message.StartsWith("no CUDA driver", StringComparison.Ordinal) ? e.Message : "no CUDA driver (libcuda.so.1 not found): " + e.Message; return false; }
        catch (EntryPointNotFoundException e) { reason = "no usable CUDA driver: " + e.Message; return false; }
        // The driver library can be installed without a GPU (or without the kernel module): cuInit then fails with
        // NO_DEVICE, UNKNOWN or OPERATING_SYSTEM — for the caller all of these mean "no CUDA device".
        if (r != CuResult.Success) { reason = $"no CUDA device (cuInit: {Check.Describe(r)})"; return false; }
        if (NativeMethods.cuDeviceGetCount(out int count) != CuResult.Success || count == 0) { reason = "no CUDA device"; return false; }
        if (ordinal < 0 || ordinal >= count) { reason = $"CUDA device {ordinal} does not exist ({count} present)"; return false; }
        try
        {
            device = Open(ordinal);
        }
        catch (CudaException e) { reason = e.Message; return false; }
        if (device.ComputeMajor < 8)
        {
            reason = $"{device.Name}: compute capability {device.ComputeMajor}.{device.ComputeMinor} < 8.0 (kernels need bf16 mma.sync, sm_80+)";
            device.Dispose();
            device = null;
            return false;
        }
        reason = "";
        return true;
    }

    /// <summary>Visible devices (0 without a driver or device).</summary>
    public static int Count()
    {
        try
        {
            if (NativeMethods.cuInit(0) != CuResult.Success) return 0;
            return NativeMethods.cuDeviceGetCount(out int n) == CuResult.Success ? n : 0;
        }
        catch (DllNotFoundException) { return 0; }
        catch (EntryPointNotFoundException) { return 0; }
    }

    private static unsafe CudaDevice Open(int ordinal)
    {
        Check.Cu(NativeMethods.cuDeviceGet(out int dev, ordinal));
        Span<byte> name = stackalloc byte[256];
        fixed (byte* p = name) Check.Cu(NativeMethods.cuDeviceGetName(p, name.Length, dev));
        int len = name.IndexOf((byte)0);
        string text = Encoding.UTF8.GetString(name[..(len < 0 ? name.Length : len)]);
        Check.Cu(NativeMethods.cuDeviceGetAttribute(out int major, CuDeviceAttribute.ComputeCapabilityMajor, dev));
        Check.Cu(NativeMethods.cuDeviceGetAttribute(out int minor, CuDeviceAttribute.ComputeCapabilityMinor, dev));
        Check.Cu(NativeMethods.cuDeviceGetAttribute(out int sms, CuDeviceAttribute.MultiprocessorCount, dev));
        Check.Cu(NativeMethods.cuDeviceGetAttribute(out int smem, CuDeviceAttribute.MaxSharedMemoryPerBlockOptin, dev));
        Check.Cu(NativeMethods.cuDeviceTotalMem_v2(out nuint total, dev));
        Check.Cu(NativeMethods.cuDriverGetVersion(out int driver));
        Check.Cu(NativeMethods.cuDevicePrimaryCtxRetain(out IntPtr ctx, dev));
        var handle = new CudaContextHandle(ctx, dev);
        Check.Cu(NativeMethods.cuCtxSetCurrent(ctx));
        return new CudaDevice(ordinal, handle, text, major, minor, sms, smem, (long)total, driver);
    }

    /// <summary>Makes this device's context current on the calling thread.</summary>
    public void MakeCurrent() => Check.Cu(NativeMethods.cuCtxSetCurrent(_context.DangerousGetHandle()));

    public void Synchronize() => Check.Cu(NativeMethods.cuCtxSynchronize());

    /// <summary>(free, total) device memory in bytes.</summary>
    public (long Free, long Total) MemoryInfo()
    {
        Check.Cu(NativeMethods.cuMemGetInfo_v2(out nuint free, out nuint total));
        return ((long)free, (long)total);
    }

    public override string ToString() => $"{Name} (sm_{ComputeMajor}{ComputeMinor}, {MultiprocessorCount} SMs, {TotalMemoryBytes >> 20} MiB)";

    public void Dispose() => _context.Dispose();
}

/// <summary>A CUDA stream; every launcher and copy takes one.</summary>
public sealed class CudaStream : IDisposable
{
    private readonly CudaStreamHandle _handle;
    public CudaStream() { Check.Cu(NativeMethods.cuStreamCreate(out IntPtr s, 0)); _handle = new CudaStreamHandle(s); }
    public IntPtr Handle => _handle.DangerousGetHandle();

    /// <summary>True while a CUDA graph captures this stream (<see cref="CudaGraph.Capture"/>): host waits and uploads
    /// through pinned staging are refused then, with a message, instead of breaking the capture.</summary>
    public bool Capturing { get; internal set; }

    /// <summary>Host waits on this stream so far (<see cref="Synchronize"/>, and the blocking copies that call it): the
    /// training step's budget is one (TrainingStepGpuTests counts them).</summary>
    public long Synchronizations { get; private set; }

    public void Synchronize()
    {
        if (Capturing) throw new InvalidOperationException("a host wait inside a CUDA-graph capture: the captured work must stay on the device (read results after Replay)");
        Synchronizations++;
        Check.Cu(NativeMethods.cuStreamSynchronize(Handle));
    }
    public void Wait(CudaEvent evt) => Check.Cu(NativeMethods.cuStreamWaitEvent(Handle, evt.Handle, 0));

    public unsafe void CopyToDevice<T>(DevicePtr dst, ReadOnlySpan<T> src) where T : unmanaged
    {
        fixed (T* p = src) Check.Cu(NativeMethods.cuMemcpyHtoDAsync_v2(dst.Address, p, (nuint)(src.Length * sizeof(T)), Handle));
        Synchronize();   // the span may not outlive this call: pageable copies complete before returning
    }

    public unsafe void CopyToHost<T>(Span<T> dst, DevicePtr src) where T : unmanaged
    {
        fixed (T* p = dst) Check.Cu(NativeMethods.cuMemcpyDtoHAsync_v2(p, src.Address, (nuint)(dst.Length * sizeof(T)), Handle));
        Synchronize();
    }

    public void CopyDeviceToDevice(DevicePtr dst, DevicePtr src, long bytes)
    {
        Engine.Core.Profiler.CountLaunch(Engine.Core.Profiler.LaunchKind.Copy);
        Check.Cu(NativeMethods.cuMemcpyDtoDAsync_v2(dst.Address, src.Address, (nuint)bytes, Handle));
    }

    /// <summary>rows × widthBytes from src (rows srcPitch bytes apart) to dst (dstPitch apart), device to device.</summary>
    public void Copy2D(DevicePtr dst, long dstPitch, DevicePtr src, long srcPitch, long widthBytes, long rows)
    {
        Engine.Core.Profiler.CountLaunch(Engine.Core.Profiler.LaunchKind.Copy);
        var c = new CudaMemcpy2D
        {
            SrcMemoryType = CudaMemcpy2D.MemoryTypeDevice,
            SrcDevice = src.Address,
            SrcPitch = (nuint)srcPitch,
            DstMemoryType = CudaMemcpy2D.MemoryTypeDevice,
            DstDevice = dst.Address,
            DstPitch = (nuint)dstPitch,
            WidthInBytes = (nuint)widthBytes,
            Height = (nuint)rows,
        };
        Check.Cu(NativeMethods.cuMemcpy2DAsync_v2(c, Handle));
    }

    public void Memset(DevicePtr dst, byte value, long bytes)
    {
        Engine.Core.Profiler.CountLaunch(Engine.Core.Profiler.LaunchKind.Copy);
        Check.Cu(NativeMethods.cuMemsetD8Async(dst.Address, value, (nuint)bytes, Handle));
    }

    public void Dispose() => _handle.Dispose();
}

/// <summary>A CUDA event for ordering and timing.</summary>
public sealed class CudaEvent : IDisposable
{
    private readonly CudaEventHandle _handle;
    public CudaEvent() { Check.Cu(NativeMethods.cuEventCreate(out IntPtr e, 0)); _handle = new CudaEventHandle(e); }
    public IntPtr Handle => _handle.DangerousGetHandle();
    public void Record(CudaStream stream) => Check.Cu(NativeMethods.cuEventRecord(Handle, stream.Handle));
    public void Synchronize() => Check.Cu(NativeMethods.cuEventSynchronize(Handle));
    /// <summary>Milliseconds between <paramref name="start"/> and this event (both recorded and completed).</summary>
    public float ElapsedSince(CudaEvent start)
    {
        Check.Cu(NativeMethods.cuEventElapsedTime(out float ms, start.Handle, Handle));
        return ms;
    }
    public void Dispose() => _handle.Dispose();
}
