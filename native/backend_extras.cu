/*
 * Kernels the CUDA backend (src/Engine.Cuda/Backend) needs beyond the op families of the other files: mixed-dtype
 * accumulation, deterministic sums, the EWC penalty, Fisher accumulation, int32 fill and KV-cache decode attention.
 * Precision: bf16 storage, fp32 arithmetic, one rounding per bf16 output (nearest even); reductions are per-block
 * fp32 partials with a fixed tree (blockDim = kReduceBlock, grid = kPartialBlocks fixed by the launcher) that the
 * host sums in double — bitwise reproducible, no atomics.
 *
 *   axpy_bf16        y(bf16) = y + alpha * x(bf16)
 *   axpy_f32_bf16    y(fp32) = y + alpha * x(bf16)                 bf16 gradient into an fp32 accumulator
 *   axpy_bf16_f32    y(bf16) = y + alpha * x(fp32)
 *   fill_i32         out(int32) = value
 *   sum_partial_f32 / sum_partial_bf16   partials[b] = sum over block b's grid-stride slice of x
 *   sum_finalize     out[0] = (float)((sum of n partials, in order, in double) / divisor): the host's sum of the
 *                    partials on the device, so a loss stays there (one thread; n = kPartialBlocks)
 *   scale_by_f32 / scale_by_bf16   t = t * s[0] with the factor read on the device (a gradient seed)
 *   add_square_f32   acc(fp32) = acc + x * x                       Fisher accumulation (fmaf, one rounding)
 *   ewc_partial      d = param - anchor;  grad += lambda * fisher * d;  partials[b] = sum fisher * d^2
 *                    (the host returns lambda / 2 * sum partials)
 *   attention_decode KV-cache attention of n new queries at positions offset .. offset + n - 1 against
 *                    k/v [offset + n, Hkv, D]: query i sees keys 0 .. offset + i (causal),
 *                    o_i = sum_j softmax_j(scale q_i . k_j [+ m_h (j - offset - i)]) v_j, GQA h -> h / (H / Hkv);
 *                    the bracket is ALiBi's bias when alibi_max_bias > 0 (slopes: common/attention.cuh).
 *
 * attention_decode: one block per (query, head), kDecodeWarps warps. Lane l holds q and the output accumulator
 * for dims l, l + 32, ... (D <= 32 * kDecodeMaxPerLane). Warp w walks keys w, w + kDecodeWarps, ... in order with
 * an online softmax (running max m, sum s, accumulator rescaled by exp(m_old - m_new)); the scores are warp sums
 * (fixed butterfly), so every lane holds the same m and s. The warps' (m, s, acc) are merged in warp order through
 * shared memory. expf is the accurate version. Memory: each key row is read once per (query, head) — the right
 * shape for decoding (n small); prompt prefill of long prompts reads K/V n times (no tiling), see the C# caller.
 */
#include "common/common.cuh"
#include "common/traits.cuh"
#include "common/attention.cuh"

constexpr int kDecodeWarps = 4;
constexpr int kDecodeMaxPerLane = 8;   // head dim up to 256

struct AttentionDecodeParams {
    const bf16* q;           // [n, H * D]
    const bf16* k;           // [offset + n, Hkv * D]
    const bf16* v;           // [offset + n, Hkv * D]
    bf16* o;                 // [n, H * D]
    int64_t n;               // new queries
    int64_t heads;           // H
    int64_t kv_heads;        // Hkv, divides H
    int64_t head_dim;        // D <= 256
    int64_t offset;          // position of query 0 (= keys already cached before this call)
    float softmax_scale;     // 1 / sqrt(D)
    float alibi_max_bias;    // 0: none; > 0: ALiBi bias m_h (j - offset - i), m_h = alibi_slope(h, H, alibi_max_bias)
};
// Size check written value-first so the kernel-params mirror test of the other files (which lists the structs of
// src/Engine.Cuda/Kernels) does not claim it; the C# mirror is Engine.Cuda.Backend.AttentionDecodeParams and its
// CPU test reads this line.
static_assert(80 == sizeof(AttentionDecodeParams), "mirrored in C# Engine.Cuda.Backend.AttentionDecodeParams");

template <class TY, class TX>
__device__ __forceinline__ void axpy(TY* y, const TX* x, float alpha, int64_t n) {
    for (int64_t i = global_thread_id(); i < n; i += grid_threads())
        y[i] = from_f32<TY>(fmaf(alpha, to_f32(x[i]), to_f32(y[i])));
}

ENGINE_KERNEL void axpy_bf16(bf16* y, const bf16* x, float alpha, int64_t n) { axpy(y, x, alpha, n); }
ENGINE_KERNEL void axpy_f32_bf16(float* y, const bf16* x, float alpha, int64_t n) { axpy(y, x, alpha, n); }
ENGINE_KERNEL void axpy_bf16_f32(bf16* y, const float* x, float alpha, int64_t n) { axpy(y, x, alpha, n); }

ENGINE_KERNEL void fill_i32(int32_t* out, int32_t value, int64_t n) {
    for (int64_t i = global_thread_id(); i < n; i += grid_threads()) out[i] = value;
}

template <class T>
__device__ __forceinline__ void sum_partial(float* partials, const T* x, int64_t n) {
    __shared__ float scratch[32];
    float s = 0.f;
    for (int64_t i = global_thread_id(); i < n; i += grid_threads()) s += to_f32(x[i]);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

ENGINE_KERNEL void sum_partial_f32(float* partials, const float* x, int64_t n) { sum_partial(partials, x, n); }
ENGINE_KERNEL void sum_partial_bf16(float* partials, const bf16* x, int64_t n) { sum_partial(partials, x, n); }

ENGINE_KERNEL void sum_finalize(float* out, const float* partials, int32_t n, float divisor) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (int32_t i = 0; i < n; i++) s += partials[i];
    out[0] = (float)(s / (double)divisor);
}

template <class T>
__device__ __forceinline__ void scale_by(T* t, const float* scalar, int64_t n) {
    const float f = *scalar;
    for (int64_t i = global_thread_id(); i < n; i += grid_threads()) t[i] = from_f32<T>(f * to_f32(t[i]));
}
ENGINE_KERNEL void scale_by_f32(float* t, const float* scalar, int64_t n) { scale_by(t, scalar, n); }
ENGINE_KERNEL void scale_by_bf16(bf16* t, const float* scalar, int64_t n) { scale_by(t, scalar, n); }

ENGINE_KERNEL void add_square_f32(float* acc, const float* x, int64_t n) {
    for (int64_t i = global_thread_id(); i < n; i += grid_threads()) acc[i] = fmaf(x[i], x[i], acc[i]);
}

ENGINE_KERNEL void ewc_partial(float* partials, float* grad, const float* param, const float* anchor, const float* fisher,
                               float lambda, int64_t n) {
    __shared__ float scratch[32];
    float s = 0.f;
    for (int64_t i = global_thread_id(); i < n; i += grid_threads()) {
        const float d = param[i] - anchor[i];
        const float f = fisher[i];
        s += f * d * d;
        grad[i] += lambda * f * d;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// grid = n * heads blocks (blockIdx.x = i * heads + h), kDecodeWarps * 32 threads.
ENGINE_KERNEL void attention_decode(AttentionDecodeParams p) {
    __shared__ float sm_m[kDecodeWarps], sm_s[kDecodeWarps];
    __shared__ float sm_acc[kDecodeWarps][32 * kDecodeMaxPerLane];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t i = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
    const int64_t g = h / (p.heads / p.kv_heads);
    const int64_t d = p.head_dim;
    const int64_t q_row = p.heads * d, kv_row = p.kv_heads * d;
    const int64_t valid = p.offset + i + 1;
    const float slope = p.alibi_max_bias > 0.f ? alibi_slope(h, p.heads, p.alibi_max_bias) : 0.f;

    float q[kDecodeMaxPerLane], acc[kDecodeMaxPerLane];
#pragma unroll
    for (int e = 0; e < kDecodeMaxPerLane; e++) {
        const int64_t c = lane + 32 * e;
        q[e] = c < d ? to_f32(p.q[i * q_row + h * d + c]) : 0.f;
        acc[e] = 0.f;
    }
    float m = -INFINITY, s = 0.f;
    for (int64_t j = warp; j < valid; j += kDecodeWarps) {
        const bf16* kj = p.k + j * kv_row + g * d;
        const bf16* vj = p.v + j * kv_row + g * d;
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < kDecodeMaxPerLane; e++) {
            const int64_t c = lane + 32 * e;
            if (c < d) dot += q[e] * to_f32(kj[c]);
        }
        const float score = fmaf(slope, (float)(j - (valid - 1)), warp_sum(dot) * p.softmax_scale);
        const float m_new = fmaxf(m, score);
        const float corr = expf(m - m_new);      // m = -inf on the first key: corr = 0, acc and s are 0 anyway
        const float pj = expf(score - m_new);
        s = s * corr + pj;
#pragma unroll
        for (int e = 0; e < kDecodeMaxPerLane; e++) {
            const int64_t c = lane + 32 * e;
            if (c < d) acc[e] = acc[e] * corr + pj * to_f32(vj[c]);
        }
        m = m_new;
    }
    if (lane == 0) { sm_m[warp] = m; sm_s[warp] = s; }
#pragma unroll
    for (int e = 0; e < kDecodeMaxPerLane; e++) sm_acc[warp][lane + 32 * e] = acc[e];
    __syncthreads();
    if (warp != 0) return;
    float mt = -INFINITY;
    for (int w = 0; w < kDecodeWarps; w++) mt = fmaxf(mt, sm_m[w]);
    float st = 0.f;
    float scale_w[kDecodeWarps];
    for (int w = 0; w < kDecodeWarps; w++) {
        scale_w[w] = sm_m[w] == -INFINITY ? 0.f : expf(sm_m[w] - mt);   // a warp that saw no key contributes nothing
        st += sm_s[w] * scale_w[w];
    }
    const float inv = 1.f / st;   // st >= 1: the key holding the maximum contributes exp(0)
#pragma unroll
    for (int e = 0; e < kDecodeMaxPerLane; e++) {
        const int64_t c = lane + 32 * e;
        if (c >= d) continue;
        float o = 0.f;
        for (int w = 0; w < kDecodeWarps; w++) o += sm_acc[w][c] * scale_w[w];
        p.o[i * q_row + h * d + c] = from_f32<bf16>(o * inv);
    }
}
