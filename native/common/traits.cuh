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
