using System.Runtime.InteropServices;

namespace Engine.Cuda.Interop;

/// <summary>cublasStatus_t.</summary>
public enum CublasStatus
{
    Success = 0, NotInitialized = 1, AllocFailed = 3, InvalidValue = 7, ArchMismatch = 8, MappingError = 11,
    ExecutionFailed = 13, InternalError = 14, NotSupported = 15, LicenseError = 16,
}

/// <summary>cublasOperation_t.</summary>
public enum CublasOperation { N = 0, T = 1 }

/// <summary>cudaDataType_t values used with cublasGemmEx.</summary>
public enum CudaDataType { R32F = 0, R16F = 2, R16BF = 14 }

/// <summary>cublasComputeType_t.</summary>
public enum CublasComputeType { Compute32F = 68, Compute32FFastTF32 = 77 }

/// <summary>cublasMath_t.</summary>
public enum CublasMath { Default = 0, Pedantic = 2, TF32TensorOp = 3 }

/// <summary>cuBLAS (libcublas.so.*), column-major as in C. Alpha/beta are host pointers (the default pointer mode).</summary>
public static unsafe partial class NativeMethods
{
    public const int CUBLAS_GEMM_DEFAULT = -1;

    [LibraryImport(LibCublas)] public static partial CublasStatus cublasCreate_v2(out IntPtr handle);
    [LibraryImport(LibCublas)] public static partial CublasStatus cublasDestroy_v2(IntPtr handle);
    [LibraryImport(LibCublas)] public static partial CublasStatus cublasSetStream_v2(IntPtr handle, IntPtr stream);
    [LibraryImport(LibCublas)] public static partial CublasStatus cublasSetMathMode(IntPtr handle, CublasMath mode);
    [LibraryImport(LibCublas)] public static partial CublasStatus cublasGetVersion_v2(IntPtr handle, out int version);
    /// <summary>A caller-owned workspace (CUDA-graph capture: cuBLAS then allocates nothing while capturing).</summary>
    [LibraryImport(LibCublas)] public static partial CublasStatus cublasSetWorkspace_v2(IntPtr handle, ulong workspace, nuint bytes);

    [LibraryImport(LibCublas)]
    public static partial CublasStatus cublasGemmEx(IntPtr handle, CublasOperation transa, CublasOperation transb, int m, int n, int k,
        void* alpha, ulong a, CudaDataType aType, int lda, ulong b, CudaDataType bType, int ldb,
        void* beta, ulong c, CudaDataType cType, int ldc, CublasComputeType computeType, int algo);

    [LibraryImport(LibCublas)]
    public static partial CublasStatus cublasGemmStridedBatchedEx(IntPtr handle, CublasOperation transa, CublasOperation transb,
        int m, int n, int k, void* alpha, ulong a, CudaDataType aType, int lda, long strideA,
        ulong b, CudaDataType bType, int ldb, long strideB, void* beta, ulong c, CudaDataType cType, int ldc, long strideC,
        int batchCount, CublasComputeType computeType, int algo);
}
