/*
 * Launch geometry and tile sizes for every kernel, in one place. The C# launchers (src/Engine.Cuda/Kernels/)
 * mirror these numbers in KernelTraits.cs; a mismatch in a block size is caught by the kernels themselves
 * (they read blockDim) and a dynamic shared-memory shortfall traps (require_dynamic_smem).
 *
 * Measured alternatives: none yet — these are first choices from llm.c / flash-attention defaults, not tuned on
 * the target GPU. Record sweeps here when benchmarks/scripts/gpu_run.sh has run.
 */
#pragma once

// Row-wise kernels (rmsnorm, cross-entropy): one block per row.
constexpr int kRowBlock = 256;
// Flat element-wise kernels: threads per block; each thread handles 8 elements per grid-stride step.
constexpr int kElementwiseBlock = 256;
// Deterministic two-pass reductions (grad norm, rmsnorm dw): threads per block of the partial pass.
constexpr int kReduceBlock = 512;

// ---- flash attention (mma.sync m16n8k16, 4 warps, each warp owns 16 rows of its tile) -------------------------------
constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * 32;
constexpr int kAttnPad = 8;                        // bf16 elements of padding per shared-memory row (16 bytes):
                                                   // rows then start 4 banks apart, fragment loads are conflict-free
template <int D> struct AttnTraits {
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    static constexpr int kFwdBlockM = 64;          // query rows per forward block (4 warps x 16)
    static constexpr int kFwdBlockN = 64;          // keys per forward tile
    static constexpr int kBwdBlockKV = 64;         // keys per dk/dv block (4 warps x 16)
    static constexpr int kBwdBlockQ = D == 64 ? 64 : 32;   // queries per dk/dv inner tile: D=128 keeps dk+dv accumulators
                                                           // (128 fp32/thread) plus S/dP under 255 registers
    static constexpr int kBwdBlockM = 64;          // query rows per dq block (4 warps x 16)
    static constexpr int kBwdBlockN = D == 64 ? 64 : 32;   // keys per dq inner tile (same register argument)
    // ptxas 11.8 registers/thread (sm_80 / sm_90): fwd d64 120/-, d128 168/165; dkdv d64 161/168 (4-byte spill),
    // d128 228/222; dq d64 126/135, d128 136/180. kBwdBlockQ = 64 for D = 128 was not tried: 128 accumulators +
    // 2 x 32 S/dP values would exceed 255 registers.
    static constexpr int kRow = D + kAttnPad;      // shared-memory row pitch in bf16 elements
    // Dynamic shared memory in bytes (mirrored in C# AttentionKernels.*SmemBytes):
    static constexpr int kFwdSmem = (kFwdBlockM + 2 * kFwdBlockN) * kRow * 2;
    static constexpr int kBwdKVSmem = (2 * kBwdBlockKV + 2 * kBwdBlockQ) * kRow * 2 + 2 * kBwdBlockQ * 4;
    static constexpr int kBwdQSmem = (2 * kBwdBlockM + 2 * kBwdBlockN) * kRow * 2 + 2 * kBwdBlockM * 4;
};

// ---- flash attention v2 (attention_v2.cu: cp.async double buffers, ldmatrix, 32 query rows per warp) ----------------
// Forward: 4 warps x 32 query rows (two m16 tiles, so every K/V fragment loaded feeds two MMAs) = 128-row tiles;
// K/V tiles in a two-stage cp.async ring. Backward: one CTA per key tile (16 keys per warp), Q/dO/lse/delta tiles
// in a two-stage ring, dS staged in shared memory for dQ = dS K; dQ summed in key-tile order through an fp32 buffer
// (deterministic: each block waits for its predecessor's flag, no atomics on data).
// Register budgets (fwd, D = 128): O accumulators 2 x 16 x 4 = 128 fp32 + S 2 x 8 x 4 = 64; Q fragments are re-read
// with ldmatrix for every key tile (FlashAttention-2's default too).
// ptxas 11.8 registers/thread, sm_80 / sm_90, no spills: fwd d32 255/255, d64 248/243, d96 230/226, d128 255/255;
// bwd d32 172/172, d64 239/237, d96 243/240, d128 250/252 (d32/d64: 8 warps, 1 block per SM by registers; the masking
// of query rows past T, 2026-12-07, moved these by a few; the per-kernel table is in docs/KERNELS.md).
// Tried and rejected (ptxas 11.8, spills are the measure until a GPU has timed them): Q kept in registers for D <= 64
// (d64 255 registers + 16 bytes spilled, d32 + 52 bytes); D = 96 with 64-key tiles (255 + 36..56 bytes spilled);
// the v1-style loader (thread i takes chunk i, i + NT, ...: 16 hoisted 64-bit addresses, d128 spilled 128 bytes);
// exp2f instead of ex2.approx.ftz (d32 spilled 44 bytes).
template <int D> struct AttnV2Traits {
    static_assert(D == 32 || D == 64 || D == 96 || D == 128, "head dim 32, 64, 96 or 128");
    static constexpr int kFwdWarps = 4;
    static constexpr int kFwdThreads = kFwdWarps * 32;
    static constexpr int kFwdBlockM = 128;                  // 32 query rows per warp
    static constexpr int kFwdBlockN = D == 32 ? 128 : D == 96 ? 32 : 64;   // keys per K/V stage (S: BN fp32 per thread)
    static constexpr int kBwdWarps = D <= 64 ? 8 : 4;
    static constexpr int kBwdThreads = kBwdWarps * 32;
    static constexpr int kBwdBlockN = 16 * kBwdWarps;       // keys per CTA, 16 per warp (dK, dV: 2 x D/2 fp32 per thread)
    static constexpr int kBwdBlockM = D <= 64 ? 64 : 32;    // queries per inner tile (S^T, dP^T: 2 x BM/2 fp32 per thread)
    static constexpr int kBwdWarpsM = kBwdBlockM / 16;      // dQ = dS K: warps along the queries ...
    static constexpr int kBwdWarpsD = kBwdWarps / kBwdWarpsM;   // ... and along the head dim
    static constexpr int kBwdDqCols = D / kBwdWarpsD;       // dQ columns per warp (a multiple of 16)
    static constexpr int kRow = D + kAttnPad;               // shared row pitch (bf16): ldmatrix rows 4 banks apart
    static constexpr int kDsRow = kBwdBlockM + kAttnPad;    // dS^T tile pitch
    // Dynamic shared memory in bytes (mirrored in C# KernelTraits.AttnV2*Smem; static_asserts in attention_v2.cu):
    static constexpr int kFwdSmem = (kFwdBlockM + 2 * 2 * kFwdBlockN) * kRow * 2;
    static constexpr int kBwdSmem = (2 * kBwdBlockN + 2 * 2 * kBwdBlockM) * kRow * 2 + kBwdBlockN * kDsRow * 2 + 2 * 2 * kBwdBlockM * 4;
    static_assert(kBwdDqCols % 16 == 0, "dQ columns per warp come in ldmatrix pairs of n-tiles");
};

// ---- flash attention forward for sm_90a (attention_sm90.cu: wgmma + TMA, FlashAttention-3's structure) ------------
// One producer warpgroup (one thread issues the TMA loads) and two consumer warpgroups of 64 query rows each;
// K/V tiles in a two-stage mbarrier ring. Registers by setmaxnreg: producer 24, consumers 240 (128 x 24 + 256 x 240
// = 64512 <= 65536). Shared memory: Q [D/64][128][64], K and V [2][D/64][128][64] (128-byte swizzled, 1024-byte
// aligned), 9 mbarriers, 1 KiB of alignment slack. Not compiled with nvcc 11.8 (needs sm_90a): no measured counts.
template <int D> struct Sm90Traits {
    static_assert(D == 64 || D == 128, "the sm_90a forward takes head dims 64 and 128");
    static constexpr int kThreads = 384;
    static constexpr int kBlockM = 128;
    static constexpr int kBlockN = 128;
    static constexpr int kStages = 2;
    static constexpr int kSmem = (kBlockM + 2 * kStages * kBlockN) * D * 2 + 1024 + 1024;
};
