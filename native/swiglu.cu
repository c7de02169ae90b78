/*
 * SwiGLU gate of the Llama MLP, element-wise over gate, up [N, F] (flat, n = N*F elements):
 *   s = sigmoid(g) = 1 / (1 + exp(-g)),   silu(g) = g * s
 *   h = silu(g) * u
 * Backward, given dh:
 *   du = dh * silu(g)
 *   dg = dh * u * s * (1 + g * (1 - s))          (d silu / dg = s + g s (1 - s))
 * fp32 math, bf16 storage. dgate/dup may alias gate/up (each thread reads both inputs before writing).
 * swiglu_fused_*: gate and up as the two column halves of one GEMM's output gu [N, 2F] (row r: gate_r | up_r);
 * h [N, F]; the backward writes dgate | dup into dgu [N, 2F] in the same layout (may alias gu).
 * expf is the accurate libdevice version (no fast-math); |g| large saturates s to 0/1 without NaN.
 */
#include "common/common.cuh"
#include "common/traits.cuh"

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

ENGINE_KERNEL void swiglu_forward(bf16* h, const bf16* gate, const bf16* up, int64_t n) {
    const bool vec = aligned16(h) && aligned16(gate) && aligned16(up);
    const int64_t packs = vec ? n / 8 : 0, stride = grid_threads();
    for (int64_t p = global_thread_id(); p < packs; p += stride) {
        float g[8], u[8], r[8];
        load8(gate + p * 8, g);
        load8(up + p * 8, u);
#pragma unroll
        for (int i = 0; i < 8; i++) r[i] = g[i] * sigmoidf_(g[i]) * u[i];
        store8(h + p * 8, r);
    }
    for (int64_t i = packs * 8 + global_thread_id(); i < n; i += stride) {
        float g = to_f32(gate[i]), u = to_f32(up[i]);
        h[i] = from_f32<bf16>(g * sigmoidf_(g) * u);
    }
}

__device__ __forceinline__ void swiglu_grad(float g, float u, float dh, float& dg, float& du) {
    float s = sigmoidf_(g);
    du = dh * g * s;
    dg = dh * u * s * (1.f + g * (1.f - s));
}

ENGINE_KERNEL void swiglu_backward(bf16* dgate, bf16* dup, const bf16* dh, const bf16* gate, const bf16* up, int64_t n) {
    const bool vec = aligned16(dgate) && aligned16(dup) && aligned16(dh) && aligned16(gate) && aligned16(up);
    const int64_t packs = vec ? n / 8 : 0, stride = grid_threads();
    for (int64_t p = global_thread_id(); p < packs; p += stride) {
        float g[8], u[8], d[8], rg[8], ru[8];
        load8(gate + p * 8, g);
        load8(up + p * 8, u);
        load8(dh + p * 8, d);
#pragma unroll
        for (int i = 0; i < 8; i++) swiglu_grad(g[i], u[i], d[i], rg[i], ru[i]);
        store8(dgate + p * 8, rg);
        store8(dup + p * 8, ru);
    }
    for (int64_t i = packs * 8 + global_thread_id(); i < n; i += stride) {
        float rg, ru;
        swiglu_grad(to_f32(gate[i]), to_f32(up[i]), to_f32(dh[i]), rg, ru);
        dgate[i] = from_f32<bf16>(rg);
        dup[i] = from_f32<bf16>(ru);
    }
}

// ---- gate | up fused in one [N, 2F] buffer (one GEMM for both projections) -----------------------------------------
// Element (r, j) of gate is gu[r * 2F + j], of up gu[r * 2F + F + j]; 8 columns per thread on the 16-byte path.
ENGINE_KERNEL void swiglu_fused_forward(bf16* h, const bf16* gu, int64_t rows, int64_t f) {
    const bool vec = f % 8 == 0 && aligned16(h) && aligned16(gu);
    const int64_t stride = grid_threads();
    if (vec) {
        const int64_t per_row = f / 8, packs = rows * per_row;
        for (int64_t p = global_thread_id(); p < packs; p += stride) {
            const int64_t r = p / per_row, c = (p % per_row) * 8;
            float g[8], u[8], o[8];
            load8(gu + r * 2 * f + c, g);
            load8(gu + r * 2 * f + f + c, u);
#pragma unroll
            for (int i = 0; i < 8; i++) o[i] = g[i] * sigmoidf_(g[i]) * u[i];
            store8(h + r * f + c, o);
        }
        return;
    }
    for (int64_t i = global_thread_id(); i < rows * f; i += stride) {
        const int64_t r = i / f, c = i % f;
        const float g = to_f32(gu[r * 2 * f + c]), u = to_f32(gu[r * 2 * f + f + c]);
        h[i] = from_f32<bf16>(g * sigmoidf_(g) * u);
    }
}

ENGINE_KERNEL void swiglu_fused_backward(bf16* dgu, const bf16* dh, const bf16* gu, int64_t rows, int64_t f) {
    const bool vec = f % 8 == 0 && aligned16(dgu) && aligned16(dh) && aligned16(gu);
    const int64_t stride = grid_threads();
    if (vec) {
        const int64_t per_row = f / 8, packs = rows * per_row;
        for (int64_t p = global_thread_id(); p < packs; p += stride) {
            const int64_t r = p / per_row, c = (p % per_row) * 8;
            float g[8], u[8], d[8], rg[8], ru[8];
            load8(gu + r * 2 * f + c, g);
            load8(gu + r * 2 * f + f + c, u);
            load8(dh + r * f + c, d);
#pragma unroll
            for (int i = 0; i < 8; i++) swiglu_grad(g[i], u[i], d[i], rg[i], ru[i]);
            store8(dgu + r * 2 * f + c, rg);
            store8(dgu + r * 2 * f + f + c, ru);
        }
        return;
    }
    for (int64_t i = global_thread_id(); i < rows * f; i += stride) {
        const int64_t r = i / f, c = i % f;
        float rg, ru;
        swiglu_grad(to_f32(gu[r * 2 * f + c]), to_f32(gu[r * 2 * f + f + c]), to_f32(dh[i]), rg, ru);
        dgu[r * 2 * f + c] = from_f32<bf16>(rg);
        dgu[r * 2 * f + f + c] = from_f32<bf16>(ru);
    }
}
