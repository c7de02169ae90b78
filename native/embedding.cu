/*
 * Token embedding: table [V, C] bf16, ids int32 [N].
 * Forward:  out[n, :] = table[ids[n], :]            (an id outside [0, V) yields a zero row)
 * Backward: dtable[v, :] += sum_{n : ids[n] = v} dout[n, :]     fp32 accumulation into an fp32 dtable [V, C]
 *
 * Determinism choice: no atomics. The host (which owns the token ids — they come from the CPU data loader) groups
 * the positions by id with a counting sort (C# EmbeddingKernels.BuildBuckets): order[N] lists token positions
 * grouped by id, ascending position within a group; bucket_start[U + 1] delimits the U groups, bucket_id[U] names
 * their ids. One block per group sums its rows in that fixed order and adds the sum to dtable once: the result is
 * bitwise reproducible and each dtable row is touched by exactly one block. Rows of ids absent from the batch are
 * left untouched (dtable is accumulated into: zero it first for a fresh gradient).
 */
#include "common/common.cuh"
#include "common/traits.cuh"

struct EmbeddingForwardParams {
    bf16* out;               // [N, C]
    const bf16* table;       // [V, C]
    const int32_t* ids;      // [N]
    int64_t tokens;          // N
    int64_t vocab;           // V
    int64_t cols;            // C
};
static_assert(sizeof(EmbeddingForwardParams) == 48, "mirrored in C# EmbeddingForwardParams");

struct EmbeddingBackwardParams {
    float* dtable;               // [V, C] fp32, accumulated into
    const bf16* dout;            // [N, C]
    const int32_t* order;        // [N] token positions grouped by id
    const int32_t* bucket_start; // [U + 1] group boundaries in order
    const int32_t* bucket_id;    // [U] id of each group
    int64_t buckets;             // U
    int64_t cols;                // C
};
static_assert(sizeof(EmbeddingBackwardParams) == 56, "mirrored in C# EmbeddingBackwardParams");

ENGINE_KERNEL void embedding_forward(EmbeddingForwardParams p) {
    const bool vec = p.cols % 8 == 0 && aligned16(p.out) && aligned16(p.table);
    for (int64_t n = blockIdx.x; n < p.tokens; n += gridDim.x) {
        const int64_t id = p.ids[n];
        const bool valid = id >= 0 && id < p.vocab;
        const bf16* src = p.table + (valid ? id : 0) * p.cols;
        bf16* dst = p.out + n * p.cols;
        if (vec) {
            for (int64_t c = (int64_t)threadIdx.x * 8; c < p.cols; c += (int64_t)blockDim.x * 8) {
                Packed128<bf16> v = load128(src + c);
                if (!valid) {
#pragma unroll
                    for (int i = 0; i < 8; i++) v[i] = from_f32<bf16>(0.f);
                }
                store128(dst + c, v);
            }
        } else {
            for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) dst[c] = valid ? src[c] : from_f32<bf16>(0.f);
        }
    }
}

ENGINE_KERNEL void embedding_backward(EmbeddingBackwardParams p) {
    for (int64_t u = blockIdx.x; u < p.buckets; u += gridDim.x) {
        const int32_t begin = p.bucket_start[u], end = p.bucket_start[u + 1];
        float* dst = p.dtable + (int64_t)p.bucket_id[u] * p.cols;
        for (int64_t c = threadIdx.x; c < p.cols; c += blockDim.x) {
            float s = 0.f;
            for (int32_t k = begin; k < end; k++) s += to_f32(p.dout[(int64_t)p.order[k] * p.cols + c]);
            dst[c] += s;
        }
    }
}
