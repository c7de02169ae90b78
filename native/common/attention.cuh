/*
 * What the three flash-attention kernel files share (attention.cu, attention_v2.cu, attention_sm90.cu): the params
 * structs with one layout, mirrored in C# AttentionParams / AttentionBackwardParams / AttnSchedule
 * (src/Engine.Cuda/Kernels/KernelParams.cs; tests/Engine.Cuda.Tests/CpuTests checks every size), the base-2
 * softmax constants and exponent, and ALiBi's slopes.
 *
 * ALiBi (Press et al. 2022; BLOOM, Baichuan 2-13B): s_ij = scale q_i.k_j + m_h (j - i), computed where the score is,
 * from the head's slope and the two positions (never a T x T bias matrix). The kernels work in the log2 domain, so
 * they add (m_h log2 e)(j - i) to s_ij scale log2 e. The bias does not depend on q or k: the backward recomputes P
 * with it and is otherwise unchanged. Each kernel family has *_alibi entry points (a template flag) that take the max
 * bias b as a second kernel argument after the params struct; the plain entry points compile the bias out and their
 * SASS is unchanged (checked with cuobjdump -sass, nvcc 11.8, sm_80). The structs did not grow a field for it:
 * growing AttentionParams by 8 or 16 bytes changed how attention_v2's forward loads its parameters and made its d32
 * variant spill 32 bytes to the stack (measured: cuobjdump -res-usage, nvcc 11.8 sm_80).
 */
#pragma once
#include "common.cuh"

struct AttentionParams {
    const bf16* q;           // [B, T, H, D]
    const bf16* k;           // [B, T, Hkv, D]
    const bf16* v;           // [B, T, Hkv, D]
    bf16* o;                 // [B, T, H, D] output (forward) / saved output (backward)
    float* lse;              // [B, H, T] log-sum-exp of the scaled scores (natural log)
    int64_t batch;           // B
    int64_t seq_len;         // T
    int64_t heads;           // H
    int64_t kv_heads;        // Hkv, divides H
    int64_t q_row_stride;    // elements between tokens of q
    int64_t k_row_stride;
    int64_t v_row_stride;
    int64_t o_row_stride;
    float softmax_scale;     // usually 1/sqrt(D)
    int32_t causal;          // 1: key j attends only to queries i >= j
};
static_assert(sizeof(AttentionParams) == 112, "mirrored in C# AttentionParams");

struct AttentionBackwardParams {
    AttentionParams fwd;     // the forward's inputs, its output o and its lse
    const bf16* dout;        // [B, T, H, D] upstream gradient
    bf16* dq;                // [B, T, H, D]
    bf16* dk;                // [B, T, Hkv, D]
    bf16* dv;                // [B, T, Hkv, D]
    float* delta;            // [B, H, T] fp32 scratch: D_i = rowsum(dO_i * O_i) (written by the preprocess kernel)
    int64_t do_row_stride;
    int64_t dq_row_stride;
    int64_t dk_row_stride;
    int64_t dv_row_stride;
};
static_assert(sizeof(AttentionBackwardParams) == 184, "mirrored in C# AttentionBackwardParams");

// Linear tile index -> (block, head): heads in groups of `group` (chosen by the host so a group's K/V fit in L2),
// within a group the block index is the slow one, so all heads of the group advance together; `descending` runs the
// blocks from the last one (causal forward: the last query tile has the most keys). Mirrored in C# AttentionSchedule.
struct AttnSchedule {
    int32_t blocks;          // tiles per head (query tiles forward, key tiles backward)
    int32_t heads;           // independent heads: B * H forward, B * Hkv backward
    int32_t group;           // heads per L2 group, >= 1
    int32_t descending;      // 1: block index blocks-1 first (forward, causal); the backward requires 0
};
static_assert(sizeof(AttnSchedule) == 16, "mirrored in C# AttnSchedule");

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// 2^x by the SFU (ex2.approx.ftz: ~2 ulp, results below 2^-126 flushed to 0 — weights that small do not move a
// softmax). exp2f would add the denormal rescaling around the same instruction (measured: 44 spilled bytes in d32).
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// ALiBi slope of query head h of H heads, max bias b (BLOOM's build_alibi_tensor, Baichuan 2's _get_interleave,
// llama.cpp's soft_max max_bias; the CPU reference is AttentionCpu.AlibiSlopes): with n = 2^floor(log2 H), heads
// h < n get 2^(-b (h + 1) / n), the rest every other slope of the next power of two, 2^(-b (2 (h - n) + 1) / (2 n)).
__device__ __forceinline__ float alibi_slope(int64_t h, int64_t heads, float max_bias) {
    const int n = 1 << (31 - __clz((int)heads));
    const float e = h < n ? (float)(h + 1) / (float)n : (float)(2 * (h - n) + 1) / (float)(2 * n);
    return exp2f(-max_bias * e);
}
