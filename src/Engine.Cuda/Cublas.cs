using Engine.Cuda.Interop;

namespace Engine.Cuda;

/// <summary>
/// cuBLAS GEMMs with row-major semantics: C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C, A/B bf16, C bf16 or fp32,
/// fp32 accumulation (CUBLAS_COMPUTE_32F). cuBLAS is column-major; a row-major matrix is its transpose in column-major,
/// so we ask for C^T = op(B)^T op(A)^T: the operands are swapped and m/n exchanged, no data moves.
/// Leading dimensions are row-major row lengths: lda = columns of A as stored (k, or m when transA), etc.
/// </summary>
public sealed class CublasContext : IDisposable
{
    private readonly CublasHandle _handle;
    private IntPtr _stream = (IntPtr)(-1);

    public CublasContext()
    {
        Check.Cublas(NativeMethods.cublasCreate_v2(out IntPtr h));
        _handle = new CublasHandle(h);
        Check.Cublas(NativeMethods.cublasSetMathMode(h, CublasMath.Default));
    }

    public IntPtr Handle => _handle.DangerousGetHandle();

    /// <summary>Gives cuBLAS a workspace of its own on <paramref name="s"/> (after binding the stream: setting the
    /// stream resets the workspace) — what a CUDA-graph capture needs so that cuBLAS allocates nothing inside it.</summary>
    public void SetWorkspace(CudaStream s, DevicePtr workspace, long bytes)
    {
        Bind(s);
        Check.Cublas(NativeMethods.cublasSetWorkspace_v2(Handle, workspace.Address, (nuint)bytes));
    }

    private void Bind(CudaStream s)
    {
        if (_stream == s.Handle) return;
        Check.Cublas(NativeMethods.cublasSetStream_v2(Handle, s.Handle));
        _stream = s.Handle;
    }

    /// <summary>C = alpha op(A) op(B) + beta C (row-major). lda/ldb/ldc 0 = packed.</summary>
    public unsafe void Gemm(CudaStream s, bool transA, bool transB, int m, int n, int k, DevicePtr a, DevicePtr b, DevicePtr c,
        float alpha = 1f, float beta = 0f, CudaDataType cType = CudaDataType.R16BF, int lda = 0, int ldb = 0, int ldc = 0)
    {
        (lda, ldb, ldc) = LeadingDims(transA, transB, m, n, k, lda, ldb, ldc);
        if (m == 0 || n == 0) return;
        Bind(s);
        if (Engine.Core.Profiler.Enabled) Engine.Core.Profiler.CountLaunch(Engine.Core.Profiler.LaunchKind.Gemm);
        Check.Cublas(NativeMethods.cublasGemmEx(Handle, transB ? CublasOperation.T : CublasOperation.N, transA ? CublasOperation.T : CublasOperation.N,
            n, m, k, &alpha, b.Address, CudaDataType.R16BF, ldb, a.Address, CudaDataType.R16BF, lda,
            &beta, c.Address, cType, ldc, CublasComputeType.Compute32F, NativeMethods.CUBLAS_GEMM_DEFAULT));
    }

    /// <summary>Batched C_i = alpha op(A_i) op(B_i) + beta C_i with element strides between batch items (row-major).</summary>
    public unsafe void GemmStridedBatched(CudaStream s, bool transA, bool transB, int m, int n, int k, DevicePtr a, long strideA,
        DevicePtr b, long strideB, DevicePtr c, long strideC, int batch, float alpha = 1f, float beta = 0f,
        CudaDataType cType = CudaDataType.R16BF, int lda = 0, int ldb = 0, int ldc = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(batch);
        (lda, ldb, ldc) = LeadingDims(transA, transB, m, n, k, lda, ldb, ldc);
        if (m == 0 || n == 0 || batch == 0) return;
        Bind(s);
        if (Engine.Core.Profiler.Enabled) Engine.Core.Profiler.CountLaunch(Engine.Core.Profiler.LaunchKind.Gemm);
        Check.Cublas(NativeMethods.cublasGemmStridedBatchedEx(Handle, transB ? CublasOperation.T : CublasOperation.N,
            transA ? CublasOperation.T : CublasOperation.N, n, m, k, &alpha, b.Address, CudaDataType.R16BF, ldb, strideB,
            a.Address, CudaDataType.R16BF, lda, strideA, &beta, c.Address, cType, ldc, strideC, batch,
            CublasComputeType.Compute32F, NativeMethods.CUBLAS_GEMM_DEFAULT));
    }

    /// <summary>Row-major leading dimensions (0 = packed), validated.</summary>
    public static (int Lda, int Ldb, int Ldc) LeadingDims(bool transA, bool transB, int m, int n, int k, int lda, int ldb, int ldc)
    {
        if (m < 0 || n < 0 || k < 0) throw new ArgumentException($"GEMM sizes must be >= 0 (m={m}, n={n}, k={k})");
        int aCols = transA ? m : k, bCols = transB ? k : n;
        lda = lda == 0 ? Math.Max(aCols, 1) : lda;
        ldb = ldb == 0 ? Math.Max(bCols, 1) : ldb;
        ldc = ldc == 0 ? Math.Max(n, 1) : ldc;
        if (lda < aCols) throw new ArgumentException($"lda {lda} < {aCols} (columns of A as stored)", nameof(lda));
        if (ldb < bCols) throw new ArgumentException($"ldb {ldb} < {bCols} (columns of B as stored)", nameof(ldb));
        if (ldc < n) throw new ArgumentException($"ldc {ldc} < n {n}", nameof(ldc));
        return (lda, ldb, ldc);
    }

    public void Dispose() => _handle.Dispose();
}
