/*
 * RMSNorm over rows of [rows, cols] (row = token), optional fused residual add.
 *
 * Forward:
 *   h      = x + residual            (only when residual != null; rounded to bf16 and written to h)
 *   rstd   = 1 / sqrt(mean_j(h_j^2) + eps)         saved fp32 [rows]
 *   y_j    = h_j * rstd * w_j
 * Backward (x below is the normalized input: h when the forward fused a residual), n = x * rstd, g = dy * w:
 *   dx_j   = rstd * (g_j - n_j * mean_k(g_k * n_k)) + dresidual_j      (dresidual optional: the gradient that
 *                                                                        reaches h through the residual stream)
 *   dw_j   = sum_rows dy_j * n_j
 * dw is deterministic without atomics: block b handles rows b, b + G, b + 2G, ... (G = gridDim.x) and keeps its
 * column sums in shared memory (each column owned by one thread), writes them as fp32 partials [G, cols];
 * rmsnorm_backward_dw_reduce then sums the G partials per column in index order.
 *
 * One block per row (grid-stride over rows), kRowBlock threads. Vector path (8 bf16 per access) when cols % 8 == 0
 * and the pointers are 16-byte aligned, scalar otherwise. sqrt and division are IEEE (no fast-math).
 */
#include "common/common.cuh"
#include "common/traits.cuh"

struct RmsNormForwardParams {
    bf16* y;                 // [rows, cols] output
    float* rstd;             // [rows] saved reciprocal RMS
    bf16* h;                 // [rows, cols] x + residual, written only when residual != null (may alias x)
    const bf16* x;           // [rows, cols] input
    const bf16* residual;    // [rows, cols] or null
    const bf16* w;           // [cols] gain
    int64_t rows;
    int64_t cols;
    float eps;
    int32_t pad;             // explicit tail padding: sizeof == 72 on both sides
};
static_assert(sizeof(RmsNormForwardParams) == 72, "mirrored in C# RmsNormForwardParams");

struct RmsNormBackwardParams {
    bf16* dx;                // [rows, cols] output (may alias dy or dresidual)
    float* dw_partial;       // [gridDim.x, cols] fp32 per-block column sums of dy * n
    const bf16* dy;          // [rows, cols]
    const bf16* x;           // [rows, cols] normalized input of the forward (h when a residual was fused)
    const bf16* w;           // [cols]
    const float* rstd;       // [rows] from the forward
    const bf16* dresidual;   // [rows, cols] or null: added to dx
    int64_t rows;
    int64_t cols;
};
static_assert(sizeof(RmsNormBackwardParams) == 72, "mirrored in C# RmsNormBackwardParams");

struct RmsNormDwReduceParams {
    float* dw;               // [cols] fp32 output, or null
    bf16* dw_bf16;           // [cols] bf16 output, or null
    const float* partial;    // [num_partials, cols]
    int64_t cols;
    int32_t num_partials;
    int32_t accumulate;      // 1: dw += sum (needs dw; dw_bf16 then receives the accumulated value), 0: dw = sum
};
static_assert(sizeof(RmsNormDwReduceParams) == 40, "mirrored in C# RmsNormDwReduceParams");

template <int W>
__device__ void rmsnorm_forward_row(const RmsNormForwardParams& p, int64_t row, float* scratch) {
    const int64_t off = row * p.cols;
    const bf16* xr = p.x + off;
    float ss = 0.f;
    for (int64_t c = (int64_t)threadIdx.x * W; c < p.cols; c += (int64_t)blockDim.x * W) {
        float v[W];
        load_w<W>(xr + c, v);
        if (p.residual) {
            float r[W];
            load_w<W>(p.residual + off + c, r);
#pragma unroll
            for (int i = 0; i < W; i++) v[i] = round_bf16(v[i] + r[i]);
            store_w<W>(p.h + off + c, v);
        }
#pragma unroll
        for (int i = 0; i < W; i++) ss += v[i] * v[i];
    }
    ss = block_sum(ss, scratch);
    const float rs = 1.f / sqrtf(ss / (float)p.cols + p.eps);
    if (threadIdx.x == 0) p.rstd[row] = rs;
    const bf16* src = p.residual ? p.h + off : xr;   // h was written above by this same thread
    for (int64_t c = (int64_t)threadIdx.x * W; c < p.cols; c += (int64_t)blockDim.x * W) {
        float v[W], w[W], o[W];
        load_w<W>(src + c, v);
        load_w<W>(p.w + c, w);
#pragma unroll
        for (int i = 0; i < W; i++) o[i] = v[i] * rs * w[i];
        store_w<W>(p.y + off + c, o);
    }
}

ENGINE_KERNEL void rmsnorm_forward(RmsNormForwardParams p) {
    __shared__ float scratch[32];
    const bool vec = p.cols % 8 == 0 && aligned16(p.y) && aligned16(p.x) && aligned16(p.w) &&
                     aligned16(p.residual) && aligned16(p.h);
    for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
        if (vec) rmsnorm_forward_row<8>(p, row, scratch);
        else rmsnorm_forward_row<1>(p, row, scratch);
    }
}

template <int W>
__device__ void rmsnorm_backward_rows(const RmsNormBackwardParams& p, float* acc, float* scratch) {
    for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const int64_t off = row * p.cols;
        const float rs = p.rstd[row];
        float dot = 0.f;
        for (int64_t c = (int64_t)threadIdx.x * W; c < p.cols; c += (int64_t)blockDim.x * W) {
            float dy[W], x[W], w[W];
            load_w<W>(p.dy + off + c, dy);
            load_w<W>(p.x + off + c, x);
            load_w<W>(p.w + c, w);
#pragma unroll
            for (int i = 0; i < W; i++) {
                float n = x[i] * rs;
                dot += dy[i] * w[i] * n;
                acc[c + i] += dy[i] * n;     // column c+i is owned by this thread: no race
            }
        }
        const float mean_gn = block_sum(dot, scratch) / (float)p.cols;
        for (int64_t c = (int64_t)threadIdx.x * W; c < p.cols; c += (int64_t)blockDim.x * W) {
            float dy[W], x[W], w[W], dx[W], dr[W];
            load_w<W>(p.dy + off + c, dy);
            load_w<W>(p.x + off + c, x);
            load_w<W>(p.w + c, w);
            if (p.dresidual) load_w<W>(p.dresidual + off + c, dr);
            else {
#pragma unroll
                for (int i = 0; i < W; i++) dr[i] = 0.f;
            }
#pragma unroll
            for (int i = 0; i < W; i++) dx[i] = rs * (dy[i] * w[i] - x[i] * rs * mean_gn) + dr[i];
            store_w<W>(p.dx + off + c, dx);
        }
    }
}

// Dynamic shared memory: cols * 4 bytes (column accumulators).
ENGINE_KERNEL void rmsnorm_backward(RmsNormBackwardParams p) {
    extern __shared__ float acc[];
    __shared__ float scratch[32];
    require_dynamic_smem((uint32_t)(p.cols * 4));
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) acc[c] = 0.f;
    __syncthreads();
    const bool vec = p.cols % 8 == 0 && aligned16(p.dx) && aligned16(p.dy) && aligned16(p.x) && aligned16(p.w) &&
                     aligned16(p.dresidual);
    if (vec) rmsnorm_backward_rows<8>(p, acc, scratch);
    else rmsnorm_backward_rows<1>(p, acc, scratch);
    __syncthreads();
    for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) p.dw_partial[(int64_t)blockIdx.x * p.cols + c] = acc[c];
}

// One thread per column; partials summed in index order (deterministic).
ENGINE_KERNEL void rmsnorm_backward_dw_reduce(RmsNormDwReduceParams p) {
    for (int64_t c = global_thread_id(); c < p.cols; c += grid_threads()) {
        float s = 0.f;
        for (int b = 0; b < p.num_partials; b++) s += p.partial[(int64_t)b * p.cols + c];
        const float r = (p.dw && p.accumulate) ? p.dw[c] + s : s;
        if (p.dw) p.dw[c] = r;
        if (p.dw_bf16) p.dw_bf16[c] = from_f32<bf16>(r);
    }
}
