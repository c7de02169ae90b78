/*
 * Fused AdamW over a flat parameter buffer, exactly PyTorch's torch.optim.AdamW (and the CPU reference AdamWCpu):
 *   g  = grad * grad_scale * (*grad_scale_ptr if given)        (clip factor from grad_norm_finalize)
 *   p  = p * (1 - lr * wd)                                     decoupled weight decay
 *   m  = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
 *   p  = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)        step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t)
 * fp32 master weights, fp32 m and v, gradient fp32 (adamw_update_f32) or bf16 (adamw_update_bf16grad); the bf16
 * working copy is the updated master rounded to nearest even.
 *
 * Global gradient norm, deterministic in two passes:
 *   grad_norm_partial_{f32,bf16}: block b of a fixed grid G sums g^2 over a grid-stride slice (fixed per-thread
 *     order, fixed block tree) into partials[slot + b]; several tensors can use disjoint slots of one buffer.
 *   grad_norm_finalize: one block sums partials[0..count) (fixed order) and writes
 *     out[0] = sum of squares, out[1] = norm, out[2] = clip factor min(1, max_norm / (norm + 1e-6)) (1 when max_norm<=0)
 *   out + 2 can be passed to AdamW as grad_scale_ptr so clipping needs no host round trip. A non-finite sum makes
 *   the clip factor NaN, and every AdamW kernel given a non-finite *grad_scale_ptr returns without writing: a step
 *   whose gradient overflowed leaves weights and moments untouched (the host reads out[] once and decides).
 *
 * Over the flat parameter store (src/Engine.Core/ParameterStore.cs: all parameters in one buffer):
 *   grad_norm_chunks: block c sums g^2 over elements [c*chunk, (c+1)*chunk) into partials[c] (fixed thread order,
 *     fixed block tree): a chunk's partial does not depend on which rank owns it or what else is in the buffer, so
 *     the norm is bitwise the same for every data-parallel layout whose shards are whole chunks.
 *   adamw_runs: one launch over many runs (blockIdx.y = run): run r updates master[run.master .. + count) with
 *     grad[run.grad ..] and m/v[run.state ..] at its own weight decay (decay and no-decay parameters, ZeRO shards).
 */
#include "common/common.cuh"
#include "common/traits.cuh"

struct AdamWParams {
    float* master;               // [n] fp32 master weights (updated)
    bf16* param_bf16;            // [n] bf16 working copy (written), or null
    float* m;                    // [n] first moment
    float* v;                    // [n] second moment
    const float* grad_f32;       // [n] gradient for adamw_update_f32
    const bf16* grad_bf16;       // [n] gradient for adamw_update_bf16grad
    const float* grad_scale_ptr; // device scalar multiplied into grad_scale, or null
    int64_t n;
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float step_size;             // lr / (1 - beta1^t)
    float bc2_sqrt;              // sqrt(1 - beta2^t)
    float grad_scale;            // host-side gradient multiplier (1 = none)
};
static_assert(sizeof(AdamWParams) == 96, "mirrored in C# AdamWParams");

struct GradNormParams {
    float* partials;             // [slot + gridDim.x] fp32 per-block sums of squares
    const float* g_f32;          // [n] for grad_norm_partial_f32
    const bf16* g_bf16;          // [n] for grad_norm_partial_bf16
    int64_t n;
    int32_t slot;                // first partial written by this launch
    int32_t pad;
};
static_assert(sizeof(GradNormParams) == 40, "mirrored in C# GradNormParams");

template <class TG>
__device__ __forceinline__ void adamw_apply(const AdamWParams& p, const TG* grad) {
    float gs = p.grad_scale;
    if (p.grad_scale_ptr) {
        const float s = *p.grad_scale_ptr;
        if (!isfinite(s)) return;              // overflowed step: leave everything untouched
        gs *= s;
    }
    const float decay = 1.f - p.lr * p.weight_decay;
    const float b1 = p.beta1, b2 = p.beta2;
    for (int64_t i = global_thread_id(); i < p.n; i += grid_threads()) {
        const float g = to_f32(grad[i]) * gs;
        const float mi = b1 * p.m[i] + (1.f - b1) * g;
        const float vi = b2 * p.v[i] + (1.f - b2) * g * g;
        p.m[i] = mi;
        p.v[i] = vi;
        const float w = p.master[i] * decay - p.step_size * mi / (sqrtf(vi) / p.bc2_sqrt + p.eps);
        p.master[i] = w;
        if (p.param_bf16) p.param_bf16[i] = from_f32<bf16>(w);
    }
}

ENGINE_KERNEL void adamw_update_f32(AdamWParams p) { adamw_apply(p, p.grad_f32); }
ENGINE_KERNEL void adamw_update_bf16grad(AdamWParams p) { adamw_apply(p, p.grad_bf16); }

template <class TG>
__device__ __forceinline__ void grad_norm_partial(const GradNormParams& p, const TG* g) {
    __shared__ float scratch[32];
    float s = 0.f;
    for (int64_t i = global_thread_id(); i < p.n; i += grid_threads()) {
        const float x = to_f32(g[i]);
        s += x * x;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) p.partials[p.slot + blockIdx.x] = s;
}

ENGINE_KERNEL void grad_norm_partial_f32(GradNormParams p) { grad_norm_partial(p, p.g_f32); }
ENGINE_KERNEL void grad_norm_partial_bf16(GradNormParams p) { grad_norm_partial(p, p.g_bf16); }

// Launch with one block (any multiple of 32 threads up to 1024).
ENGINE_KERNEL void grad_norm_finalize(float* out, const float* partials, int32_t count, float max_norm) {
    __shared__ float scratch[32];
    float s = 0.f;
    for (int32_t i = threadIdx.x; i < count; i += blockDim.x) s += partials[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) {
        const float norm = sqrtf(s);
        out[0] = s;
        out[1] = norm;
        out[2] = !isfinite(s) ? NAN : max_norm > 0.f ? fminf(1.f, max_norm / (norm + 1e-6f)) : 1.f;
    }
}

// ---- over the flat parameter store -----------------------------------------------------------------------------------

struct ChunkNormParams {
    float* partials;             // [ceil(n / chunk)] fp32, one per chunk
    const float* x_f32;          // [n] for grad_norm_chunks_f32
    const bf16* x_bf16;          // [n] for grad_norm_chunks_bf16
    int64_t n;
    int64_t chunk;               // elements per chunk
};
static_assert(sizeof(ChunkNormParams) == 40, "mirrored in C# ChunkNormParams");

template <class T>
__device__ __forceinline__ void grad_norm_chunk(const ChunkNormParams& p, const T* x) {
    __shared__ float scratch[32];
    const int64_t begin = (int64_t)blockIdx.x * p.chunk;
    const int64_t end = min(begin + p.chunk, p.n);
    float s = 0.f;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const float g = to_f32(x[i]);
        s += g * g;
    }
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) p.partials[blockIdx.x] = s;
}

// Launch with one block per chunk (kReduceBlock threads).
ENGINE_KERNEL void grad_norm_chunks_f32(ChunkNormParams p) { grad_norm_chunk(p, p.x_f32); }
ENGINE_KERNEL void grad_norm_chunks_bf16(ChunkNormParams p) { grad_norm_chunk(p, p.x_bf16); }

struct AdamWRun {
    int64_t master;              // first element in master (and in the bf16 shadow)
    int64_t grad;                // first element in grad
    int64_t state;               // first element in m and v
    int64_t count;
    float weight_decay;
    int32_t pad;
};
static_assert(sizeof(AdamWRun) == 40, "mirrored in C# AdamWRunDevice");

struct AdamWRunsParams {
    AdamWParams base;            // pointers are buffer bases; n and weight_decay unused
    const AdamWRun* runs;        // [n_runs] on the device
    int64_t n_runs;
};
static_assert(sizeof(AdamWRunsParams) == 112, "mirrored in C# AdamWRunsParams");

template <class TG>
__device__ __forceinline__ void adamw_runs_apply(const AdamWRunsParams& rp, const TG* grad) {
    const AdamWParams& p = rp.base;
    float gs = p.grad_scale;
    if (p.grad_scale_ptr) {
        const float s = *p.grad_scale_ptr;
        if (!isfinite(s)) return;
        gs *= s;
    }
    const AdamWRun r = rp.runs[blockIdx.y];
    const float decay = 1.f - p.lr * r.weight_decay;
    const float b1 = p.beta1, b2 = p.beta2;
    for (int64_t i = global_thread_id(); i < r.count; i += grid_threads()) {
        const int64_t w_i = r.master + i, s_i = r.state + i;
        const float g = to_f32(grad[r.grad + i]) * gs;
        const float mi = b1 * p.m[s_i] + (1.f - b1) * g;
        const float vi = b2 * p.v[s_i] + (1.f - b2) * g * g;
        p.m[s_i] = mi;
        p.v[s_i] = vi;
        const float w = p.master[w_i] * decay - p.step_size * mi / (sqrtf(vi) / p.bc2_sqrt + p.eps);
        p.master[w_i] = w;
        if (p.param_bf16) p.param_bf16[w_i] = from_f32<bf16>(w);
    }
}

// grid (x: blocks per run, y: run index), kElementwiseBlock threads.
ENGINE_KERNEL void adamw_runs_f32(AdamWRunsParams p) { adamw_runs_apply(p, p.base.grad_f32); }
ENGINE_KERNEL void adamw_runs_bf16grad(AdamWRunsParams p) { adamw_runs_apply(p, p.base.grad_bf16); }
