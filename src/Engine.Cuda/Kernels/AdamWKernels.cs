namespace Engine.Cuda.Kernels;

/// <summary>AdamW hyper-parameters of one step (Step counts from 1), as in the CPU reference AdamWCpu.</summary>
public readonly record struct AdamWStep(float Lr, float Beta1, float Beta2, float Eps, float WeightDecay, int Step);

/// <summary>Launchers for native/adamw.cu: fused AdamW and the deterministic global gradient norm.</summary>
public sealed class AdamWKernels
{
    private const string Module = "adamw";
    private readonly KernelLibrary _lib;
    internal AdamWKernels(KernelLibrary lib) => _lib = lib;

    /// <summary>Blocks of one grad-norm partial launch (fixed, so the norm is bitwise identical on every GPU).</summary>
    public const int GradNormBlocks = KernelTraits.PartialBlocks;

    /// <summary>master, m, v updated; paramBf16 (optional) = bf16_rn(master). grad fp32.
    /// Gradients are multiplied by gradScale and, when given, by the device scalar at gradScalePtr (the clip factor).</summary>
    public void UpdateF32(CudaStream s, DevicePtr master, DevicePtr paramBf16, DevicePtr m, DevicePtr v, DevicePtr grad, long n,
        AdamWStep step, float gradScale = 1f, DevicePtr gradScalePtr = default) =>
        Update("adamw_update_f32", s, master, paramBf16, m, v, grad, DevicePtr.Null, n, step, gradScale, gradScalePtr);

    /// <summary>As <see cref="UpdateF32"/> with a bf16 gradient.</summary>
    public void UpdateBf16Grad(CudaStream s, DevicePtr master, DevicePtr paramBf16, DevicePtr m, DevicePtr v, DevicePtr grad, long n,
        AdamWStep step, float gradScale = 1f, DevicePtr gradScalePtr = default) =>
        Update("adamw_update_bf16grad", s, master, paramBf16, m, v, DevicePtr.Null, grad, n, step, gradScale, gradScalePtr);

    private void Update(string name, CudaStream s, DevicePtr master, DevicePtr paramBf16, DevicePtr m, DevicePtr v, DevicePtr gF32, DevicePtr gBf16,
        long n, AdamWStep st, float gradScale, DevicePtr gradScalePtr)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        if (st.Step < 1) throw new ArgumentOutOfRangeException(nameof(st), "AdamW step counts from 1");
        if (n == 0) return;
        var p = new AdamWParams
        {
            Master = master,
            ParamBf16 = paramBf16,
            M = m,
            V = v,
            GradF32 = gF32,
            GradBf16 = gBf16,
            GradScalePtr = gradScalePtr,
            N = n,
            Lr = st.Lr,
            Beta1 = st.Beta1,
            Beta2 = st.Beta2,
            Eps = st.Eps,
            WeightDecay = st.WeightDecay,
            StepSize = st.Lr / (1f - MathF.Pow(st.Beta1, st.Step)),
            Bc2Sqrt = MathF.Sqrt(1f - MathF.Pow(st.Beta2, st.Step)),
            GradScale = gradScale,
        };
        _lib.Function(Module, name).Launch(s, new Dim3((uint)_lib.GridFor(n, KernelTraits.ElementwiseBlock)), KernelTraits.ElementwiseBlock, 0, p);
    }

    /// <summary>partials[slot .. slot + GradNormBlocks) = per-block sums of g^2 (fp32 gradient).</summary>
    public void GradNormPartialF32(CudaStream s, DevicePtr partials, int slot, DevicePtr grad, long n) =>
        Partial("grad_norm_partial_f32", s, new GradNormParams { Partials = partials, GF32 = grad, N = n, Slot = slot });

    /// <summary>As <see cref="GradNormPartialF32"/> for a bf16 gradient.</summary>
    public void GradNormPartialBf16(CudaStream s, DevicePtr partials, int slot, DevicePtr grad, long n) =>
        Partial("grad_norm_partial_bf16", s, new GradNormParams { Partials = partials, GBf16 = grad, N = n, Slot = slot });

    private void Partial(string name, CudaStream s, GradNormParams p)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(p.N);
        ArgumentOutOfRangeException.ThrowIfNegative(p.Slot);
        _lib.Function(Module, name).Launch(s, new Dim3(GradNormBlocks), KernelTraits.ReduceBlock, 0, p);
    }

    /// <summary>output[0] = sum of partials[0..count) (a sum of squares), output[1] = norm, output[2] = clip factor
    /// min(1, maxNorm / (norm + 1e-6)) (1 when maxNorm &lt;= 0; NaN when the sum is not finite). Pass output + 8 bytes
    /// as AdamW's gradScalePtr: a NaN there makes the update write nothing.</summary>
    public unsafe void GradNormFinalize(CudaStream s, DevicePtr output, DevicePtr partials, int count, float maxNorm)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        void** args = stackalloc void*[4] { &output, &partials, &count, &maxNorm };
        _lib.Function(Module, "grad_norm_finalize").LaunchRaw(s, new Dim3(1), 1024, 0, args);
    }

    /// <summary>partials[c] = sum of x^2 over elements [c*chunk, (c+1)*chunk) of x (one block per chunk; fixed order).</summary>
    public void ChunkSumOfSquares(CudaStream s, DevicePtr partials, DevicePtr x, bool bf16, long n, long chunk)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfLessThan(chunk, 1);
        long chunks = (n + chunk - 1) / chunk;
        if (chunks == 0) return;
        if (chunks > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(n), $"{chunks} chunks exceed one launch's grid");
        var p = new ChunkNormParams { Partials = partials, XF32 = bf16 ? DevicePtr.Null : x, XBf16 = bf16 ? x : DevicePtr.Null, N = n, Chunk = chunk };
        _lib.Function(Module, bf16 ? "grad_norm_chunks_bf16" : "grad_norm_chunks_f32").Launch(s, new Dim3((uint)chunks), KernelTraits.ReduceBlock, 0, p);
    }

    /// <summary>
    /// One launch over <paramref name="runCount"/> runs (the table at <paramref name="runs"/> on the device): each run
    /// updates master[run.Master ..) (and the bf16 shadow at the same offsets when given) from grad[run.Grad ..] and
    /// m/v[run.State ..] at its weight decay. <paramref name="maxRunLength"/> sizes the grid.
    /// </summary>
    public void UpdateRuns(CudaStream s, DevicePtr master, DevicePtr shadow, DevicePtr m, DevicePtr v, DevicePtr grad, bool bf16Grad,
        DevicePtr runs, int runCount, long maxRunLength, AdamWStep st, float gradScale, DevicePtr gradScalePtr)
    {
        if (st.Step < 1) throw new ArgumentOutOfRangeException(nameof(st), "AdamW step counts from 1");
        if (runCount == 0 || maxRunLength == 0) return;
        if (runCount > 65535) throw new ArgumentOutOfRangeException(nameof(runCount), $"{runCount} runs exceed one launch's grid (65535)");
        var p = new AdamWRunsParams
        {
            Base = new AdamWParams
            {
                Master = master,
                ParamBf16 = shadow,
                M = m,
                V = v,
                GradF32 = bf16Grad ? DevicePtr.Null : grad,
                GradBf16 = bf16Grad ? grad : DevicePtr.Null,
                GradScalePtr = gradScalePtr,
                Lr = st.Lr,
                Beta1 = st.Beta1,
                Beta2 = st.Beta2,
                Eps = st.Eps,
                StepSize = st.Lr / (1f - MathF.Pow(st.Beta1, st.Step)),
                Bc2Sqrt = MathF.Sqrt(1f - MathF.Pow(st.Beta2, st.Step)),
                GradScale = gradScale,
            },
            Runs = runs,
            NRuns = runCount,
        };
        // the grid's x extent is shared by every run: enough blocks for the longest run to stream (16 elements per
        // thread per pass), capped at 4 per SM so the blocks of short runs (norm gains) that exit at once stay few
        long perRun = (maxRunLength + KernelTraits.ElementwiseBlock * 16L - 1) / (KernelTraits.ElementwiseBlock * 16L);
        uint blocksPerRun = (uint)Math.Clamp(perRun, 1, Math.Max(1, _lib.Device.MultiprocessorCount * 4));
        _lib.Function(Module, bf16Grad ? "adamw_runs_bf16grad" : "adamw_runs_f32").Launch(s, new Dim3(blocksPerRun, (uint)runCount), KernelTraits.ElementwiseBlock, 0, p);
    }
}
