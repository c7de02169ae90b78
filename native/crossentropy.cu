/*
 * Softmax cross-entropy with z-loss (PaLM) and max-z loss (Baichuan 2) over logits [N, V] (bf16, rows row_stride
 * elements apart), targets int32 [N].
 *   lse_i   = log sum_j exp(x_ij)                                        saved fp32 [N]
 *   m_i     = max_j x_ij, a_i its first index
 *   loss_i  = lse_i - x_i,t + zc * lse_i^2 + mz * m_i^2   (t = targets[i]);  0 when t == ignore_index (or t < 0)
 *   d_i     = dloss_scale * (dloss ? dloss[i] : 1)
 *   dx_ij   = d_i * (softmax_ij * (1 + 2 zc lse_i) - [j == t] + 2 mz m_i [j == a_i])     0 for ignored rows
 * (d/dx of zc*lse^2 is 2 zc lse softmax.) A target >= V is a caller bug: its loss is NaN so it cannot pass unseen.
 * With mz != 0 the backward first finds (m_i, a_i) in one more pass over the row (block max, then the lowest index
 * holding it); the CPU reference is CrossEntropyCpu.
 *
 * One block per row. The forward streams the row once with an online (max, sum) per thread, combined by a fixed
 * block tree; expf/logf are the accurate versions. The backward streams it once more, recomputing softmax from
 * the saved lse and writing dlogits in place over the logits in bf16 — no fp32 copy of a [N, V] matrix ever exists.
 * crossentropy_forward_backward does both in one launch when the upstream gradient is known in advance (the loss
 * is the graph's output): the target logit is read before the block's first barrier, so overwriting is safe.
 */
#include "common/common.cuh"
#include "common/traits.cuh"

struct CrossEntropyParams {
    bf16* logits;            // [N, row_stride]; backward overwrites columns [0, V) with dlogits
    float* loss;             // [N] per-row loss (forward)
    float* lse;              // [N] log-sum-exp (written by forward, read by backward)
    const int32_t* targets;  // [N]
    const float* dloss;      // [N] upstream gradient per row, or null (= 1)
    int64_t rows;            // N
    int64_t vocab;           // V
    int64_t row_stride;      // elements between rows of logits (>= V)
    float z_loss;            // zc (0 disables z-loss)
    float dloss_scale;       // multiplies dloss (e.g. 1 / number of valid targets)
    int32_t ignore_index;    // usually -100
    float max_z_loss;        // mz (0 disables the max-z loss)
};
static_assert(sizeof(CrossEntropyParams) == 80, "mirrored in C# CrossEntropyParams");

// Running (max m, sum s of e^(x - m)). A -inf logit (a masked vocabulary entry) adds nothing: without the guard a
// thread whose first values are -inf would form expf(-inf - -inf) = NaN (tests: CrossEntropyMirrorTests on the CPU,
// CrossEntropyGpuTests.MaskedLogitsGiveFiniteLossesAndZeroGradients). NaN logits still give NaN.
__device__ __forceinline__ void online_add(float x, float& m, float& s) {
    if (x > m) { s = s * expf(m - x) + 1.f; m = x; }
    else if (x != -INFINITY) s += expf(x - m);
}

template <int W>
__device__ float row_lse(const bf16* row, int64_t vocab, float* scratch, float* row_max = nullptr) {
    float m = -INFINITY, s = 0.f;
    for (int64_t c = (int64_t)threadIdx.x * W; c < vocab; c += (int64_t)blockDim.x * W) {
        float x[W];
        load_w<W>(row + c, x);
#pragma unroll
        for (int i = 0; i < W; i++) online_add(x[i], m, s);
    }
    const float mb = block_max(m, scratch);
    const float sb = block_sum(m == -INFINITY ? 0.f : s * expf(m - mb), scratch);
    if (row_max) *row_max = mb;
    return mb + logf(sb);
}

// The row's largest logit and the lowest index holding it (the max-z loss's gradient goes there); ends with a barrier.
template <int W>
__device__ float row_argmax(const bf16* row, int64_t vocab, float* scratch, int64_t& index) {
    float m = -INFINITY;
    for (int64_t c = (int64_t)threadIdx.x * W; c < vocab; c += (int64_t)blockDim.x * W) {
        float x[W];
        load_w<W>(row + c, x);
#pragma unroll
        for (int i = 0; i < W; i++) m = fmaxf(m, x[i]);
    }
    const float mb = block_max(m, scratch);
    float first = -INFINITY;   // -(lowest index holding mb), as a float: exact for V < 2^24
    for (int64_t c = (int64_t)threadIdx.x * W; c < vocab; c += (int64_t)blockDim.x * W) {
        float x[W];
        load_w<W>(row + c, x);
#pragma unroll
        for (int i = 0; i < W; i++)
            if (x[i] == mb) first = fmaxf(first, -(float)(c + i));
    }
    index = (int64_t)(-block_max(first, scratch));
    return mb;
}

template <int W>
__device__ void row_grad(bf16* row, int64_t vocab, float lse, float d, float zc, int64_t target, int64_t extra_at = -1,
                         float extra = 0.f) {
    const float k = 1.f + 2.f * zc * lse;
    for (int64_t c = (int64_t)threadIdx.x * W; c < vocab; c += (int64_t)blockDim.x * W) {
        float x[W], g[W];
        load_w<W>(row + c, x);
#pragma unroll
        for (int i = 0; i < W; i++) {
            const float sm = expf(x[i] - lse);
            g[i] = d * (sm * k - (c + i == target ? 1.f : 0.f));
            if (c + i == extra_at) g[i] += extra;
        }
        store_w<W>(row + c, g);
    }
}

template <int W>
__device__ void row_zero(bf16* row, int64_t vocab) {
    for (int64_t c = (int64_t)threadIdx.x * W; c < vocab; c += (int64_t)blockDim.x * W) {
        float z[W];
#pragma unroll
        for (int i = 0; i < W; i++) z[i] = 0.f;
        store_w<W>(row + c, z);
    }
}

__device__ __forceinline__ bool is_ignored(const CrossEntropyParams& p, int64_t t) { return t == p.ignore_index || t < 0; }

template <int W, bool Forward, bool Backward>
__device__ void ce_row(const CrossEntropyParams& p, int64_t r, float* scratch) {
    bf16* row = p.logits + r * p.row_stride;
    const int64_t t = p.targets[r];
    const bool ignored = is_ignored(p, t);
    float lse;
    if (Forward) {
        const float xt = (!ignored && t < p.vocab) ? to_f32(row[t]) : 0.f;   // read before any barrier
        float mx;
        lse = row_lse<W>(row, p.vocab, scratch, &mx);                        // (ends with a barrier)
        if (threadIdx.x == 0) {
            p.lse[r] = lse;
            p.loss[r] = ignored ? 0.f : (t >= p.vocab ? NAN : lse - xt + p.z_loss * lse * lse + p.max_z_loss * mx * mx);
        }
    } else {
        lse = p.lse[r];
    }
    if (Backward) {
        const float d = p.dloss_scale * (p.dloss ? p.dloss[r] : 1.f);
        if (ignored) row_zero<W>(row, p.vocab);
        else if (p.max_z_loss != 0.f) {
            int64_t at;
            const float mx = row_argmax<W>(row, p.vocab, scratch, at);   // every read of the row before any write
            row_grad<W>(row, p.vocab, lse, d, p.z_loss, t, at, d * 2.f * p.max_z_loss * mx);
        } else row_grad<W>(row, p.vocab, lse, d, p.z_loss, t);
    }
}

template <bool Forward, bool Backward>
__device__ void ce_rows(const CrossEntropyParams& p) {
    __shared__ float scratch[32];
    const bool vec = p.vocab % 8 == 0 && p.row_stride % 8 == 0 && aligned16(p.logits);
    for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
        if (vec) ce_row<8, Forward, Backward>(p, r, scratch);
        else ce_row<1, Forward, Backward>(p, r, scratch);
    }
}

ENGINE_KERNEL void crossentropy_forward(CrossEntropyParams p) { ce_rows<true, false>(p); }
ENGINE_KERNEL void crossentropy_backward(CrossEntropyParams p) { ce_rows<false, true>(p); }
ENGINE_KERNEL void crossentropy_forward_backward(CrossEntropyParams p) { ce_rows<true, true>(p); }
