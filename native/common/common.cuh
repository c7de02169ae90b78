/*
 * Shared device helpers for every kernel file: bf16 <-> fp32, 128-bit packed loads/stores (llm.c's Packed128),
 * warp and block reductions with a fixed reduction tree (deterministic for a given blockDim), grid-stride helpers.
 *
 * Precision policy (all files): tensors are stored in bf16, arithmetic is fp32, statistics (rstd, lse) are saved in
 * fp32, bf16 results are rounded to nearest even (__float2bfloat16_rn). No --use_fast_math: fast intrinsics are
 * used by name where their error is acceptable.
 */
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#define ENGINE_KERNEL extern "C" __global__

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(float x) { return x; }
template <class T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- 128-bit packed access -----------------------------------------------------------------------------------------
// Packed128<T> holds 16 bytes of T (8 bf16 or 4 fp32). load128 goes through the normal cache path, load128cs marks
// the line evict-first ("streaming": read once), store128cs likewise for outputs not re-read soon.
template <class T>
struct alignas(16) Packed128 {
    static constexpr int size = 16 / sizeof(T);
    T v[size];
    __device__ __forceinline__ T& operator[](int i) { return v[i]; }
    __device__ __forceinline__ const T& operator[](int i) const { return v[i]; }
};
template <class T> __device__ __forceinline__ Packed128<T> load128(const T* p) {
    int4 raw = *reinterpret_cast<const int4*>(p);
    return *reinterpret_cast<Packed128<T>*>(&raw);
}
template <class T> __device__ __forceinline__ Packed128<T> load128cs(const T* p) {
    int4 raw = __ldcs(reinterpret_cast<const int4*>(p));
    return *reinterpret_cast<Packed128<T>*>(&raw);
}
template <class T> __device__ __forceinline__ void store128(T* p, const Packed128<T>& x) {
    *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(&x);
}
template <class T> __device__ __forceinline__ void store128cs(T* p, const Packed128<T>& x) {
    __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&x));
}
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// 8 consecutive elements as fp32, whatever the storage type (bf16: one 16-byte access, fp32: two). p must be 16-byte
// aligned; callers check aligned16 once per kernel and fall back to scalar code otherwise.
__device__ __forceinline__ void load8(const bf16* p, float out[8]) {
    Packed128<bf16> a = load128(p);
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = to_f32(a[i]);
}
__device__ __forceinline__ void load8(const float* p, float out[8]) {
    Packed128<float> a = load128(p), b = load128(p + 4);
#pragma unroll
    for (int i = 0; i < 4; i++) { out[i] = a[i]; out[i + 4] = b[i]; }
}
__device__ __forceinline__ void store8(bf16* p, const float in[8]) {
    Packed128<bf16> a;
#pragma unroll
    for (int i = 0; i < 8; i++) a[i] = from_f32<bf16>(in[i]);
    store128(p, a);
}
__device__ __forceinline__ void store8(float* p, const float in[8]) {
    Packed128<float> a, b;
#pragma unroll
    for (int i = 0; i < 4; i++) { a[i] = in[i]; b[i] = in[i + 4]; }
    store128(p, a);
    store128(p + 4, b);
}

// ---- reductions (fixed butterfly / tree order: bitwise reproducible run to run) -------------------------------------
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
// Sum over the whole block; every thread gets the result. blockDim.x must be a multiple of 32 and <= 1024.
// `scratch` is 32 floats of shared memory; the function ends with a barrier so scratch can be reused at once.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    x = warp_sum(x);
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float y = lane < nwarps ? scratch[lane] : 0.f;
    y = warp_sum(y);
    __syncthreads();
    return y;
}
__device__ __forceinline__ float block_max(float x, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    x = warp_max(x);
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float y = lane < nwarps ? scratch[lane] : -INFINITY;
    y = warp_max(y);
    __syncthreads();
    return y;
}

__device__ __forceinline__ int64_t global_thread_id() { return (int64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return (int64_t)gridDim.x * blockDim.x; }

// Traps when the launcher passed less dynamic shared memory than the kernel's layout needs (a host/device mismatch
// would otherwise corrupt memory silently).
__device__ __forceinline__ void require_dynamic_smem(uint32_t bytes) {
    uint32_t have;
    asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(have));
    if (have < bytes) __trap();
}

// W consecutive elements as fp32 (W = 8: one packed access, needs 16-byte alignment; W = 1: scalar). Lets a row
// kernel be written once and instantiated for the aligned vector path and the scalar fallback.
template <int W, class T> __device__ __forceinline__ void load_w(const T* p, float out[W]) {
    if constexpr (W == 8) load8(p, out);
    else { static_assert(W == 1, "W is 1 or 8"); out[0] = to_f32(p[0]); }
}
template <int W, class T> __device__ __forceinline__ void store_w(T* p, const float in[W]) {
    if constexpr (W == 8) store8(p, in);
    else { static_assert(W == 1, "W is 1 or 8"); p[0] = from_f32<T>(in[0]); }
}
__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
