/*
 * Element-wise kernels over flat buffers of n elements (n is 64-bit). Every kernel allows out to alias an input
 * (same index read then written by the same thread).
 *
 *   cast_f32_to_bf16      out = bf16_rn(in)                   round to nearest even
 *   cast_bf16_to_f32      out = float(in)                     exact
 *   add_bf16 / add_f32    out = a + b                          fp32 add, one rounding
 *   mul_bf16              out = a * b
 *   scale_bf16 / _f32     out = s * in
 *   axpy_f32              y = y + alpha * x                    gradient accumulation in fp32
 *   accumulate_bf16_f32   acc = acc + float(g)                 bf16 micro-batch gradient into fp32 accumulator
 *   fill_bf16 / fill_f32  out = value                        stores only (never reads out)
 *
 * Vector path: when all pointers are 16-byte aligned, each thread handles 8 consecutive elements with 128-bit
 * accesses; the tail (n % 8) and misaligned buffers go through the scalar loop. Grid-stride, so any grid works.
 */
#include "common/common.cuh"
#include "common/traits.cuh"

template <class TO, class TA, class TB, class F>
__device__ __forceinline__ void map2(TO* out, const TA* a, const TB* b, int64_t n, F f) {
    const bool vec = aligned16(out) && aligned16(a) && aligned16(b);
    const int64_t packs = vec ? n / 8 : 0;
    const int64_t stride = grid_threads();
    for (int64_t p = global_thread_id(); p < packs; p += stride) {
        float x[8], y[8], r[8];
        load8(a + p * 8, x);
        load8(b + p * 8, y);
#pragma unroll
        for (int i = 0; i < 8; i++) r[i] = f(x[i], y[i]);
        store8(out + p * 8, r);
    }
    for (int64_t i = packs * 8 + global_thread_id(); i < n; i += stride)
        out[i] = from_f32<TO>(f(to_f32(a[i]), to_f32(b[i])));
}

ENGINE_KERNEL void cast_f32_to_bf16(bf16* out, const float* in, int64_t n) {
    map2(out, in, in, n, [](float x, float) { return x; });
}
ENGINE_KERNEL void cast_bf16_to_f32(float* out, const bf16* in, int64_t n) {
    map2(out, in, in, n, [](float x, float) { return x; });
}
ENGINE_KERNEL void add_bf16(bf16* out, const bf16* a, const bf16* b, int64_t n) {
    map2(out, a, b, n, [](float x, float y) { return x + y; });
}
ENGINE_KERNEL void add_f32(float* out, const float* a, const float* b, int64_t n) {
    map2(out, a, b, n, [](float x, float y) { return x + y; });
}
ENGINE_KERNEL void mul_bf16(bf16* out, const bf16* a, const bf16* b, int64_t n) {
    map2(out, a, b, n, [](float x, float y) { return x * y; });
}
ENGINE_KERNEL void scale_bf16(bf16* out, const bf16* in, float s, int64_t n) {
    map2(out, in, in, n, [s](float x, float) { return s * x; });
}
ENGINE_KERNEL void scale_f32(float* out, const float* in, float s, int64_t n) {
    map2(out, in, in, n, [s](float x, float) { return s * x; });
}
ENGINE_KERNEL void axpy_f32(float* y, const float* x, float alpha, int64_t n) {
    map2(y, y, x, n, [alpha](float yy, float xx) { return fmaf(alpha, xx, yy); });
}
ENGINE_KERNEL void accumulate_bf16_f32(float* acc, const bf16* g, int64_t n) {
    map2(acc, acc, g, n, [](float a, float x) { return a + x; });
}
// Stores only: a fill never reads its output (no read traffic, and memcheck/initcheck see no read of memory nothing
// wrote yet — the first use of a fresh allocation is often a fill).
template <class T>
__device__ __forceinline__ void fill(T* out, float value, int64_t n) {
    const int64_t packs = aligned16(out) ? n / 8 : 0;
    const int64_t stride = grid_threads();
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = value;
    for (int64_t p = global_thread_id(); p < packs; p += stride) store8(out + p * 8, v);
    const T scalar = from_f32<T>(value);
    for (int64_t i = packs * 8 + global_thread_id(); i < n; i += stride) out[i] = scalar;
}

ENGINE_KERNEL void fill_bf16(bf16* out, float value, int64_t n) { fill(out, value, n); }
ENGINE_KERNEL void fill_f32(float* out, float value, int64_t n) { fill(out, value, n); }
