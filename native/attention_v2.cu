/*
 * Flash attention, second kernel family (FlashAttention-2's schedule): causal or full, GQA, head dim 32, 64, 96 or
 * 128, any sequence length. Same math, layouts and lse as attention.cu (see its header): q, o [B, T, H, D];
 * k, v [B, T, Hkv, D]; lse fp32 [B, H, T] (natural log); query head h reads kv head h / (H / Hkv).
 *   forward    s_ij = scale q_i.k_j (masked: j >= T, causal j > i), lse_i = log sum_j e^s_ij, o_i = sum_j e^(s_ij - lse_i) v_j
 *   backward   p_ij = e^(s_ij - lse_i), D_i = dO_i.o_i, dv_j = sum_i p_ij dO_i, dp_ij = dO_i.v_j,
 *              ds_ij = p_ij (dp_ij - D_i), dq_i = scale sum_j ds_ij k_j, dk_j = scale sum_i ds_ij q_i
 * Precision: bf16 operands, fp32 accumulation and softmax statistics, P and dS rounded to bf16 for the tensor cores.
 *
 * What differs from attention.cu (v1), each a FlashAttention-2 technique:
 *  - forward: 128-row query tiles, 32 rows per warp (two m16 tiles share every K/V fragment: half v1's shared-memory
 *    traffic per MMA); K/V tiles in a two-stage cp.async ring (tile j+1 lands while tile j is computed); every
 *    fragment through ldmatrix; O staged through shared memory for 16-byte stores.
 *  - masking only where it can apply: a key tile is masked when it reaches past T or (causal) crosses the diagonal.
 *  - tile order: causal query tiles heaviest (last) first, in groups of heads whose K/V fit in L2
 *    (attn_tile; mirrored in C# AttentionSchedule and tested there).
 *  - backward in one pass over the key tiles with five GEMMs per tile pair (S^T = K Q^T, dP^T = V dO^T, dV += P^T dO,
 *    dK += dS^T Q, dQ += dS K) instead of v1's seven (v1 recomputes S and dP for dQ). dQ stays deterministic without
 *    atomics on data: key tile n adds its partial to an fp32 buffer only after tile n-1 has (a per-(b, h, query-tile)
 *    flag, acquire/release), the first writes without reading and the last writes bf16 dq directly. Blocks take
 *    work tickets in launch order (one atomicAdd per block, on the ticket counter only), so a block only ever waits
 *    for a block that already holds an earlier ticket: it is resident or done, and the chain always progresses.
 *    Within a key tile the query tiles run from the last to the first, so under causal masking the blocks of one
 *    head move in lockstep instead of waiting for each other's extra diagonal tiles. Built with ENGINE_DEBUG_KERNELS
 *    (CMake -DENGINE_DEBUG_KERNELS=ON) the wait is bounded and __trap()s, so a broken protocol fails instead of hanging.
 *  - query rows past T are masked in the backward (P and dS set to 0) like keys past T, so nothing depends on what
 *    the zero-filled Q, dO, lse and delta rows of a partial tile hold.
 * ALiBi: attention_v2_forward_alibi_d* and attention_v2_backward_alibi_d* add m_h (j - i) to the scores where they are
 * computed (common/attention.cuh); the plain entry points are the same code with the bias compiled out.
 * Requirements checked by the C# launcher (AttentionV2Kernels): pointers and row strides 16-byte aligned, the fp32
 * dq buffer [B, H, T, D] and the int32 sync array (1 + B * H * ceil(T / BwdBlockM)) zeroed before each backward.
 */
#include "common/common.cuh"
#include "common/mma.cuh"
#include "common/traits.cuh"
#include "common/attention.cuh"

struct AttentionV2Params {
    AttentionParams base;
    AttnSchedule sched;      // blocks = ceil(T / FwdBlockM), heads = B * H
};
static_assert(sizeof(AttentionV2Params) == 128, "mirrored in C# AttentionV2Params");

struct AttentionV2BackwardParams {
    AttentionBackwardParams base;
    float* dq_accum;         // [B, H, T, D] fp32 scratch (no initialisation needed: the first key tile writes)
    int32_t* sync;           // [1 + B * H * ceil(T / BwdBlockM)] zeroed: ticket counter, then one flag per query tile
    AttnSchedule sched;      // blocks = ceil(T / BwdBlockN), heads = B * Hkv, descending = 0
};
static_assert(sizeof(AttentionV2BackwardParams) == 216, "mirrored in C# AttentionV2BackwardParams");

// Shared-memory budgets, mirrored in C# KernelTraits.AttnV2FwdSmem / AttnV2BwdSmem (a CPU test reads these lines).
static_assert(AttnV2Traits<32>::kFwdSmem == 51200, "AttnV2FwdSmem(32)");
static_assert(AttnV2Traits<64>::kFwdSmem == 55296, "AttnV2FwdSmem(64)");
static_assert(AttnV2Traits<96>::kFwdSmem == 53248, "AttnV2FwdSmem(96)");
static_assert(AttnV2Traits<128>::kFwdSmem == 104448, "AttnV2FwdSmem(128)");
static_assert(AttnV2Traits<32>::kBwdSmem == 60416, "AttnV2BwdSmem(32)");
static_assert(AttnV2Traits<64>::kBwdSmem == 93184, "AttnV2BwdSmem(64)");
static_assert(AttnV2Traits<96>::kBwdSmem == 58880, "AttnV2BwdSmem(96)");
static_assert(AttnV2Traits<128>::kBwdSmem == 75264, "AttnV2BwdSmem(128)");

#ifdef ENGINE_DEBUG_KERNELS
constexpr uint32_t kDqSpinLimit = 1u << 25;   // ordered-dQ waits before a debug build traps (see the backward)
#endif

struct AttnTile {
    int64_t block;
    int64_t head;
};

__device__ __forceinline__ AttnTile attn_tile(int64_t t, const AttnSchedule& s) {
    const int64_t per_group = (int64_t)s.group * s.blocks;
    const int64_t first = t / per_group * s.group, r = t % per_group;
    const int64_t size = min((int64_t)s.group, (int64_t)s.heads - first);   // the last group may be smaller
    const int64_t step = r / size;
    return AttnTile{s.descending ? s.blocks - 1 - step : step, first + r % size};
}

// Rows [t0, t0 + R) of one head into a shared tile (pitch D + kAttnPad) with cp.async; rows >= T are zero-filled.
// Each thread owns one 16-byte column chunk (three for D = 96) of every (NT / TPR)-th row, so its addresses are one
// pointer plus multiples of the row stride (few live registers across the prefetch); a row is TPR consecutive threads.
template <int D, int R, int NT>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* base, int64_t row_stride, int64_t t0, int64_t T) {
    constexpr int kChunks = D / 8, kPitch = D + kAttnPad;
    constexpr int TPR = NT % kChunks == 0 ? kChunks : 4;   // threads per row (D = 96: 4 threads x 3 chunks)
    constexpr int CPT = kChunks / TPR, RPP = NT / TPR;     // chunks per thread, rows per pass
    static_assert(kChunks % TPR == 0 && R % RPP == 0, "the tile splits evenly over the threads");
    const int r0 = threadIdx.x / TPR, c0 = (threadIdx.x % TPR) * 8;
    const bf16* src = base + (t0 + r0) * row_stride + c0;
    bf16* dst = tile + r0 * kPitch + c0;
#pragma unroll
    for (int pass = 0; pass < R / RPP; pass++) {
        const bool valid = t0 + r0 + pass * RPP < T;
#pragma unroll
        for (int k = 0; k < CPT; k++) cp_async16(dst + pass * RPP * kPitch + k * TPR * 8, valid ? src + k * TPR * 8 : base, valid);
        src += RPP * row_stride;
    }
}

// R consecutive fp32 values from row t0 of a [.., T] statistics row into shared memory; past T they read as 0.
template <int R, int NT>
__device__ __forceinline__ void load_stats_async(float* dst, const float* row, int64_t t0, int64_t T) {
    for (int r = threadIdx.x; r < R; r += NT) {
        const bool valid = t0 + r < T;
        cp_async4(dst + r, valid ? row + t0 + r : row, valid);
    }
}

template <int N> __device__ __forceinline__ void zero(float (*a)[4]) {
#pragma unroll
    for (int i = 0; i < N; i++) a[i][0] = a[i][1] = a[i][2] = a[i][3] = 0.f;
}

// Two adjacent C tiles (n-tiles 2kt, 2kt+1 of s) rounded to bf16 = the A fragment of k-step kt (mma.cuh header).
__device__ __forceinline__ void c_to_a(uint32_t a[4], const float (*s)[4], int kt) {
    a[0] = pack_bf16x2(s[2 * kt][0], s[2 * kt][1]);
    a[1] = pack_bf16x2(s[2 * kt][2], s[2 * kt][3]);
    a[2] = pack_bf16x2(s[2 * kt + 1][0], s[2 * kt + 1][1]);
    a[3] = pack_bf16x2(s[2 * kt + 1][2], s[2 * kt + 1][3]);
}

// ------------------------------------------------------------------------------------------------------------------
// Forward: grid (ceil(T / 128) * B * H), 128 threads, AttnV2Traits<D>::kFwdSmem bytes of dynamic shared memory.

// One K/V tile for one warp's 32 query rows: S = Q K^T, online softmax, O += P V. MASK: apply key >= T and causal.
// ALIBI: add ab2 (key - row) to the log2-domain scores (ab2 = the head's slope times log2 e).
template <int D, bool MASK, bool ALIBI>
__device__ __forceinline__ void fwd_tile(float (*acc)[D / 8][4], float (*m_run)[2], float (*l_run)[2],
                                         const bf16* sQw, const bf16* cK, const bf16* cV,
                                         int64_t n0, int64_t row_base, int64_t T, bool causal, float sl2, float ab2, int lane) {
    using Tr = AttnV2Traits<D>;
    constexpr int BN = Tr::kFwdBlockN, RS = Tr::kRow, KT = D / 16;
    const int tq = lane & 3, g = lane >> 2;
    float s[2][BN / 8][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++) zero<BN / 8>(s[mt]);
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
        uint32_t qa[2][4];
        ldsm_a(qa[0], sQw, RS, 0, kk * 16, lane);
        ldsm_a(qa[1], sQw, RS, 16, kk * 16, lane);
#pragma unroll
        for (int nt2 = 0; nt2 < BN / 16; nt2++) {
            uint32_t kb[4];
            ldsm_b_nk_x2(kb, cK, RS, nt2 * 16, kk * 16, lane);
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                mma_16816(s[mt][2 * nt2], qa[mt], kb[0], kb[1]);
                mma_16816(s[mt][2 * nt2 + 1], qa[mt], kb[2], kb[3]);
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        // keys n0 + c with c >= lim[i] are masked for row i (c < T - n0 and, causal, c <= row - n0): 32-bit compares
        int lim[2] = {BN, BN};
        if constexpr (MASK) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                int64_t l = min(T - n0, (int64_t)BN);
                if (causal) l = min(l, row_base + mt * 16 + g + i * 8 - n0 + 1);
                lim[i] = (int)max(l, (int64_t)0);
            }
        }
        float mx[2] = {m_run[mt][0], m_run[mt][1]};
        // ALiBi: the bias of this thread's first column (key n0 + 2 tq) in its two rows; each further column adds ab2
        // times its offset (an immediate). Measured with nvcc 11.8, sm_80: this form spills least (d32 none, d128 48
        // bytes); integer distances converted per element spill more (d32 32 bytes).
        float bias0[2] = {0.f, 0.f};
        if constexpr (ALIBI) {
#pragma unroll
            for (int i = 0; i < 2; i++) bias0[i] = ab2 * (float)(n0 + tq * 2 - (row_base + mt * 16 + g + i * 8));
        }
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[mt][nt][e] * sl2;
                if constexpr (ALIBI) x += fmaf(ab2, (float)(nt * 8 + (e & 1)), bias0[e >> 1]);
                if constexpr (MASK) {
                    if (nt * 8 + tq * 2 + (e & 1) >= lim[e >> 1]) x = -INFINITY;
                }
                s[mt][nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float corr[2], msafe[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            msafe[i] = mx[i] == -INFINITY ? 0.f : mx[i];   // a row with every key so far masked stays at 0
            corr[i] = ex2(m_run[mt][i] - msafe[i]);       // m_run = -inf before the first key: 0
            m_run[mt][i] = mx[i];
        }
        float rsum[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[mt][nt][e] = ex2(s[mt][nt][e] - msafe[e >> 1]);
                rsum[e >> 1] += s[mt][nt][e];
            }
        }
        l_run[mt][0] = l_run[mt][0] * corr[0] + rsum[0];   // per-thread partial sums; quad-reduced once at the end
        l_run[mt][1] = l_run[mt][1] * corr[1] + rsum[1];
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            acc[mt][dt][0] *= corr[0]; acc[mt][dt][1] *= corr[0];
            acc[mt][dt][2] *= corr[1]; acc[mt][dt][3] *= corr[1];
        }
    }
    // O += P V: P straight from the S registers (C layout = A layout), V fragments by ldmatrix.trans
#pragma unroll
    for (int kt = 0; kt < BN / 16; kt++) {
        uint32_t pa[2][4];
        c_to_a(pa[0], s[0], kt);
        c_to_a(pa[1], s[1], kt);
#pragma unroll
        for (int dt2 = 0; dt2 < D / 16; dt2++) {
            uint32_t vb[4];
            load_b_frag_kn_x2(vb, cV, RS, kt * 16, dt2 * 16, lane);
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                mma_16816(acc[mt][2 * dt2], pa[mt], vb[0], vb[1]);
                mma_16816(acc[mt][2 * dt2 + 1], pa[mt], vb[2], vb[3]);
            }
        }
    }
}

template <int D, bool ALIBI>
__device__ void attention_v2_forward(const AttentionV2Params& pp, float alibi_max_bias) {
    using Tr = AttnV2Traits<D>;
    constexpr int BM = Tr::kFwdBlockM, BN = Tr::kFwdBlockN, RS = Tr::kRow, NT = Tr::kFwdThreads;
    const AttentionParams& p = pp.base;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);   // [BM][RS], later the O staging tile
    bf16* sK = sQ + BM * RS;                        // [2][BN][RS]
    bf16* sV = sK + 2 * BN * RS;                    // [2][BN][RS]
    require_dynamic_smem(Tr::kFwdSmem);

    const AttnTile tile = attn_tile(blockIdx.x, pp.sched);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tq = lane & 3, g = lane >> 2;
    const int64_t T = p.seq_len, b = tile.head / p.heads, h = tile.head % p.heads, hk = h / (p.heads / p.kv_heads);
    const int64_t m0 = tile.block * BM;
    const bool causal = p.causal != 0;
    const bf16* qb = p.q + b * T * p.q_row_stride + h * D;
    const bf16* kb = p.k + b * T * p.k_row_stride + hk * D;
    const bf16* vb = p.v + b * T * p.v_row_stride + hk * D;
    const int64_t n_blocks = ceil_div(causal ? min(T, m0 + BM) : T, BN);

    load_tile_async<D, BM, NT>(sQ, qb, p.q_row_stride, m0, T);
    load_tile_async<D, BN, NT>(sK, kb, p.k_row_stride, 0, T);
    load_tile_async<D, BN, NT>(sV, vb, p.v_row_stride, 0, T);
    cp_async_commit();

    float acc[2][D / 8][4];
    zero<D / 8>(acc[0]);
    zero<D / 8>(acc[1]);
    float m_run[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}}, l_run[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
    const bf16* sQw = sQ + warp * 32 * RS;
    const int64_t row_base = m0 + warp * 32;
    const float sl2 = p.softmax_scale * kLog2e;
    const float ab2 = ALIBI ? alibi_slope(h, p.heads, alibi_max_bias) * kLog2e : 0.f;

    for (int64_t j = 0; j < n_blocks; j++) {
        const int st = (int)(j & 1);
        if (j + 1 < n_blocks) {   // prefetch tile j+1 into the other stage (freed by the barrier ending iteration j-1)
            load_tile_async<D, BN, NT>(sK + (st ^ 1) * BN * RS, kb, p.k_row_stride, (j + 1) * BN, T);
            load_tile_async<D, BN, NT>(sV + (st ^ 1) * BN * RS, vb, p.v_row_stride, (j + 1) * BN, T);
        }
        cp_async_commit();        // possibly empty: keeps the group count uniform
        cp_async_wait<1>();       // everything but the newest group (tile j+1) has landed
        __syncthreads();
        const int64_t n0 = j * BN;
        const bf16* cK = sK + st * BN * RS;
        const bf16* cV = sV + st * BN * RS;
        if (n0 + BN > T || (causal && n0 + BN - 1 > m0))
            fwd_tile<D, true, ALIBI>(acc, m_run, l_run, sQw, cK, cV, n0, row_base, T, causal, sl2, ab2, lane);
        else
            fwd_tile<D, false, ALIBI>(acc, m_run, l_run, sQw, cK, cV, n0, row_base, T, causal, sl2, ab2, lane);
        __syncthreads();          // every warp is done with stage st before iteration j+1 refills it
    }

    // 1/l, lse; O rounded to bf16 into this warp's own 32 rows of sQ (no other warp reads them), then 16-byte stores
    bf16* sO = sQ + warp * 32 * RS;
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        float inv[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            float l = l_run[mt][i];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            inv[i] = l > 0.f ? 1.f / l : 0.f;
            const int64_t row = row_base + mt * 16 + g + i * 8;
            if (tq == 0 && row < T)
                p.lse[(b * p.heads + h) * T + row] = l > 0.f ? m_run[mt][i] * kLn2 + logf(l) : INFINITY;
        }
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            const int col = dt * 8 + tq * 2;
            *reinterpret_cast<uint32_t*>(sO + (mt * 16 + g) * RS + col) = pack_bf16x2(acc[mt][dt][0] * inv[0], acc[mt][dt][1] * inv[0]);
            *reinterpret_cast<uint32_t*>(sO + (mt * 16 + g + 8) * RS + col) = pack_bf16x2(acc[mt][dt][2] * inv[1], acc[mt][dt][3] * inv[1]);
        }
    }
    __syncwarp();
    bf16* ob = p.o + b * T * p.o_row_stride + h * D;
    constexpr int kChunks = D / 8;
#pragma unroll
    for (int i = 0; i < 32 * kChunks / 32; i++) {
        const int idx = i * 32 + lane, r = idx / kChunks, c = (idx % kChunks) * 8;
        if (row_base + r < T)
            *reinterpret_cast<int4*>(ob + (row_base + r) * p.o_row_stride + c) = *reinterpret_cast<const int4*>(sO + r * RS + c);
    }
}

// Register counts (ptxas 11.8, sm_80 / sm_90, no spills unless noted) are recorded in common/traits.cuh.
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_forward_d32(AttentionV2Params p) {
    attention_v2_forward<32, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_forward_d64(AttentionV2Params p) {
    attention_v2_forward<64, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_forward_d96(AttentionV2Params p) {
    attention_v2_forward<96, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_forward_d128(AttentionV2Params p) {
    attention_v2_forward<128, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_forward_alibi_d32(AttentionV2Params p, float alibi_max_bias) {
    attention_v2_forward<32, true>(p, alibi_max_bias);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_forward_alibi_d64(AttentionV2Params p, float alibi_max_bias) {
    attention_v2_forward<64, true>(p, alibi_max_bias);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_forward_alibi_d96(AttentionV2Params p, float alibi_max_bias) {
    attention_v2_forward<96, true>(p, alibi_max_bias);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_forward_alibi_d128(AttentionV2Params p, float alibi_max_bias) {
    attention_v2_forward<128, true>(p, alibi_max_bias);
}

// ------------------------------------------------------------------------------------------------------------------
// delta[b, h, t] = sum_d dO[b, t, h, d] * O[b, t, h, d], one warp per (b, t, h) row, grid-stride (as in attention.cu).
ENGINE_KERNEL void attention_v2_backward_preprocess(AttentionBackwardParams p, int32_t head_dim) {
    const int lane = threadIdx.x & 31;
    const int64_t warps = grid_threads() >> 5;
    const int64_t T = p.fwd.seq_len, H = p.fwd.heads;
    for (int64_t r = global_thread_id() >> 5; r < p.fwd.batch * T * H; r += warps) {
        const int64_t h = r % H, bt = r / H, b = bt / T, t = bt % T;
        const bf16* o = p.fwd.o + bt * p.fwd.o_row_stride + h * head_dim;
        const bf16* d = p.dout + bt * p.do_row_stride + h * head_dim;
        float s = 0.f;
        for (int c = lane; c < head_dim; c += 32) s += to_f32(o[c]) * to_f32(d[c]);
        s = warp_sum(s);
        if (lane == 0) p.delta[(b * H + h) * T + t] = s;
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Backward: grid (ceil(T / BN) * B * Hkv), kBwdThreads threads, AttnV2Traits<D>::kBwdSmem bytes of dynamic smem.

// One (key tile, query tile) pair for one warp's 16 keys: S^T, P^T, dP^T, dV, dS^T (to shared memory), dK.
// ALIBI: P^T recomputed with ab2 (key - query) added to the log2-domain scores.
template <int D, bool MASK, bool ALIBI>
__device__ __forceinline__ void bwd_tile(float (*dk)[4], float (*dv)[4], const bf16* sK, const bf16* sV, const bf16* cQ,
                                         const bf16* cdO, const float* cLse, const float* cDelta, bf16* sdS, int64_t key0,
                                         int64_t m0, int64_t T, bool causal, float sl2, float ab2, int warp, int lane) {
    using Tr = AttnV2Traits<D>;
    constexpr int BM = Tr::kBwdBlockM, RS = Tr::kRow, DSR = Tr::kDsRow, KT = D / 16;
    const int tq = lane & 3, g = lane >> 2;
    // this warp's keys are key0 + [0, 16): valid below key_lim; key0 - m0 = key_shift (|.| < one tile when masking);
    // the tile's queries m0 + [0, BM) are valid below q_lim
    const int key_lim = (int)min(max(T - key0, (int64_t)0), (int64_t)16);
    const int key_shift = (int)max(min(key0 - m0, (int64_t)(1 << 20)), (int64_t)-(1 << 20));
    const int q_lim = (int)min(T - m0, (int64_t)BM);
    float st[BM / 8][4], dpt[BM / 8][4];
    zero<BM / 8>(st);
    zero<BM / 8>(dpt);
    // S^T (16 keys x BM queries) = K Q^T and dP^T = V dO^T
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
        uint32_t ka[4], va[4];
        ldsm_a(ka, sK, RS, warp * 16, kk * 16, lane);
        ldsm_a(va, sV, RS, warp * 16, kk * 16, lane);
#pragma unroll
        for (int nt2 = 0; nt2 < BM / 16; nt2++) {
            uint32_t qb[4], ob[4];
            ldsm_b_nk_x2(qb, cQ, RS, nt2 * 16, kk * 16, lane);
            ldsm_b_nk_x2(ob, cdO, RS, nt2 * 16, kk * 16, lane);
            mma_16816(st[2 * nt2], ka, qb[0], qb[1]);
            mma_16816(st[2 * nt2 + 1], ka, qb[2], qb[3]);
            mma_16816(dpt[2 * nt2], va, ob[0], ob[1]);
            mma_16816(dpt[2 * nt2 + 1], va, ob[2], ob[3]);
        }
    }
    // P^T = exp(S^T scale - lse_query) (0 where masked); dS^T = P^T (dP^T - delta_query). A query row past T is masked
    // like a key past T: its P (and so its dS) is 0 whatever its Q, lse and delta rows hold (the loader zero-fills them,
    // which alone would give P = 2^0 = 1 there)
    const float kq0 = ALIBI ? (float)(key0 - m0 + g) : 0.f;   // ALiBi: key - query = kq0 + 8 (e / 2) - qc
#pragma unroll
    for (int nt = 0; nt < BM / 8; nt++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int qc = nt * 8 + tq * 2 + (e & 1);
            float x = st[nt][e] * sl2;
            if constexpr (ALIBI) x = fmaf(ab2, kq0 + (float)((e >> 1) * 8 - qc), x);
            float pv = ex2(x - cLse[qc] * kLog2e);
            if constexpr (MASK) {   // key >= T, query >= T, or causal and key > query: key0 + g + 8(e/2) vs m0 + qc, as 32-bit offsets
                const int kr = g + (e >> 1) * 8;
                if (kr >= key_lim || qc >= q_lim || (causal && kr + key_shift > qc)) pv = 0.f;
            }
            st[nt][e] = pv;
            dpt[nt][e] = pv * (dpt[nt][e] - cDelta[qc]);
        }
    }
    // dV += P^T dO, dK += dS^T Q (scale applied at the end); dS^T (bf16, as the MMAs see it) into shared memory
#pragma unroll
    for (int kt = 0; kt < BM / 16; kt++) {
        uint32_t pa[4], da[4];
        c_to_a(pa, st, kt);
        c_to_a(da, dpt, kt);
        bf16* row0 = sdS + (warp * 16 + g) * DSR + kt * 16 + tq * 2;
        *reinterpret_cast<uint32_t*>(row0) = da[0];
        *reinterpret_cast<uint32_t*>(row0 + 8 * DSR) = da[1];
        *reinterpret_cast<uint32_t*>(row0 + 8) = da[2];
        *reinterpret_cast<uint32_t*>(row0 + 8 * DSR + 8) = da[3];
#pragma unroll
        for (int dt2 = 0; dt2 < D / 16; dt2++) {
            uint32_t ob[4], qb[4];
            load_b_frag_kn_x2(ob, cdO, RS, kt * 16, dt2 * 16, lane);
            mma_16816(dv[2 * dt2], pa, ob[0], ob[1]);
            mma_16816(dv[2 * dt2 + 1], pa, ob[2], ob[3]);
            load_b_frag_kn_x2(qb, cQ, RS, kt * 16, dt2 * 16, lane);
            mma_16816(dk[2 * dt2], da, qb[0], qb[1]);
            mma_16816(dk[2 * dt2 + 1], da, qb[2], qb[3]);
        }
    }
}

template <int D, bool ALIBI>
__device__ void attention_v2_backward(const AttentionV2BackwardParams& pp, float alibi_max_bias) {
    using Tr = AttnV2Traits<D>;
    constexpr int NT = Tr::kBwdThreads, BN = Tr::kBwdBlockN, BM = Tr::kBwdBlockM, RS = Tr::kRow, DSR = Tr::kDsRow;
    constexpr int WM = Tr::kBwdWarpsM, DQC = Tr::kBwdDqCols;
    const AttentionBackwardParams& bp = pp.base;
    const AttentionParams& p = bp.fwd;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* sK = reinterpret_cast<bf16*>(smem_raw);   // [BN][RS]
    bf16* sV = sK + BN * RS;                        // [BN][RS]
    bf16* sQ = sV + BN * RS;                        // [2][BM][RS]
    bf16* sdO = sQ + 2 * BM * RS;                   // [2][BM][RS]
    bf16* sdS = sdO + 2 * BM * RS;                  // [BN][DSR]  dS^T of the current pair
    float* sLse = reinterpret_cast<float*>(sdS + BN * DSR);   // [2][BM]
    float* sDelta = sLse + 2 * BM;                  // [2][BM]
    __shared__ int s_ticket;
    require_dynamic_smem(Tr::kBwdSmem);
    if (pp.sched.descending) __trap();              // the dq order needs key tiles ascending (see the header)

    if (threadIdx.x == 0) s_ticket = atomicAdd(pp.sync, 1);   // tickets in the order blocks actually start
    __syncthreads();
    const AttnTile tile = attn_tile(s_ticket, pp.sched);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tq = lane & 3, g = lane >> 2;
    const int64_t T = p.seq_len, H = p.heads, group = p.heads / p.kv_heads;
    const int64_t b = tile.head / p.kv_heads, hk = tile.head % p.kv_heads, n = tile.block, n0 = n * BN;
    const bool causal = p.causal != 0;
    const int64_t n_tiles = ceil_div(T, BN), m_tiles = ceil_div(T, BM);
    const int64_t m_begin = causal ? n0 / BM : 0;   // first query tile with a query >= n0
    const int64_t per_head = m_tiles - m_begin, steps = group * per_head;
    const float sl2 = p.softmax_scale * kLog2e;

    load_tile_async<D, BN, NT>(sK, p.k + b * T * p.k_row_stride + hk * D, p.k_row_stride, n0, T);
    load_tile_async<D, BN, NT>(sV, p.v + b * T * p.v_row_stride + hk * D, p.v_row_stride, n0, T);
    cp_async_commit();

    // step s -> (query head of the group, query tile from the last one down)
    auto issue = [&](int64_t s, int stage) {
        const int64_t h = hk * group + s / per_head, m0 = (m_tiles - 1 - s % per_head) * BM;
        load_tile_async<D, BM, NT>(sQ + stage * BM * RS, p.q + b * T * p.q_row_stride + h * D, p.q_row_stride, m0, T);
        load_tile_async<D, BM, NT>(sdO + stage * BM * RS, bp.dout + b * T * bp.do_row_stride + h * D, bp.do_row_stride, m0, T);
        load_stats_async<BM, NT>(sLse + stage * BM, p.lse + (b * H + h) * T, m0, T);
        load_stats_async<BM, NT>(sDelta + stage * BM, bp.delta + (b * H + h) * T, m0, T);
    };
    issue(0, 0);
    cp_async_commit();

    float dk[D / 8][4], dv[D / 8][4];
    zero<D / 8>(dk);
    zero<D / 8>(dv);
    const int64_t key0 = n0 + warp * 16;
    const int wm = warp % WM, wd = warp / WM;   // this warp's rows / columns of dQ = dS K

    for (int64_t s = 0; s < steps; s++) {
        const int stage = (int)(s & 1);
        if (s + 1 < steps) issue(s + 1, stage ^ 1);   // the other stage was released by the barriers of step s-1
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const int64_t h = hk * group + s / per_head, m = m_tiles - 1 - s % per_head, m0 = m * BM;
        const bf16* cQ = sQ + stage * BM * RS;
        const bf16* cdO = sdO + stage * BM * RS;
        const float* cLse = sLse + stage * BM;
        const float* cDelta = sDelta + stage * BM;
        const float ab2 = ALIBI ? alibi_slope(h, H, alibi_max_bias) * kLog2e : 0.f;
        if (n0 + BN > T || m0 + BM > T || (causal && n0 + BN - 1 > m0))
            bwd_tile<D, true, ALIBI>(dk, dv, sK, sV, cQ, cdO, cLse, cDelta, sdS, key0, m0, T, causal, sl2, ab2, warp, lane);
        else
            bwd_tile<D, false, ALIBI>(dk, dv, sK, sV, cQ, cdO, cLse, cDelta, sdS, key0, m0, T, causal, sl2, ab2, warp, lane);
        __syncthreads();   // dS^T of every warp is in shared memory

        // dQ partial (BM x D) = dS K: this warp's 16 rows x DQC columns, summed over the tile's BN keys
        float dqa[DQC / 8][4];
        zero<DQC / 8>(dqa);
#pragma unroll
        for (int kt = 0; kt < BN / 16; kt++) {
            uint32_t a[4];
            ldsm_a_trans(a, sdS, DSR, wm * 16, kt * 16, lane);
#pragma unroll
            for (int dt2 = 0; dt2 < DQC / 16; dt2++) {
                uint32_t kb2[4];
                load_b_frag_kn_x2(kb2, sK, RS, kt * 16, wd * DQC + dt2 * 16, lane);
                mma_16816(dqa[2 * dt2], a, kb2[0], kb2[1]);
                mma_16816(dqa[2 * dt2 + 1], a, kb2[2], kb2[3]);
            }
        }
        // Ordered accumulation: key tiles 0..n_last contribute to query tile m, in that order.
        const int64_t n_last = causal ? ceil_div(min(T, m0 + BM), BN) - 1 : n_tiles - 1;
        int* flag = pp.sync + 1 + (b * H + h) * m_tiles + m;
        if (n > 0) {
            if (threadIdx.x == 0) {
#ifdef ENGINE_DEBUG_KERNELS
                // a debug build traps instead of hanging when the predecessor never publishes (a broken ticket order,
                // a scratch array not zeroed): 2^25 waits of >= 64 ns each, 2 s at the very least (~10 s typical)
                uint32_t spins = 0;
                while (ld_acquire_gpu(flag) != (int)n) {
                    __nanosleep(64);
                    if (++spins == kDqSpinLimit) __trap();
                }
#else
                while (ld_acquire_gpu(flag) != (int)n) __nanosleep(64);
#endif
            }
            __syncthreads();
        }
        float* accb = pp.dq_accum + (b * H + h) * T * D;
        bf16* dqb = bp.dq + b * T * bp.dq_row_stride + h * D;
#pragma unroll
        for (int dt = 0; dt < DQC / 8; dt++) {
            const int col = wd * DQC + dt * 8 + tq * 2;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int64_t row = m0 + wm * 16 + g + i * 8;
                if (row >= T) continue;
                float2 v = make_float2(dqa[dt][2 * i], dqa[dt][2 * i + 1]);
                float2* cell = reinterpret_cast<float2*>(accb + row * D + col);
                if (n > 0) {   // L2 only (.cg): the previous tile's block may have run on another SM
                    const float2 old = __ldcg(cell);
                    v.x = old.x + v.x;
                    v.y = old.y + v.y;
                }
                if (n == n_last)
                    *reinterpret_cast<uint32_t*>(dqb + row * bp.dq_row_stride + col) =
                        pack_bf16x2(v.x * p.softmax_scale, v.y * p.softmax_scale);
                else
                    __stcg(cell, v);
            }
        }
        __threadfence();
        __syncthreads();   // also: sdS and this stage are free for the next step
        if (threadIdx.x == 0 && n < n_last) st_release_gpu(flag, (int)n + 1);
    }

    // dK (times scale), dV: this warp's 16 keys, rows >= T skipped
    bf16* dkb = bp.dk + b * T * bp.dk_row_stride + hk * D;
    bf16* dvb = bp.dv + b * T * bp.dv_row_stride + hk * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        const int col = dt * 8 + tq * 2;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int64_t key = key0 + g + i * 8;
            if (key >= T) continue;
            *reinterpret_cast<uint32_t*>(dkb + key * bp.dk_row_stride + col) =
                pack_bf16x2(dk[dt][2 * i] * p.softmax_scale, dk[dt][2 * i + 1] * p.softmax_scale);
            *reinterpret_cast<uint32_t*>(dvb + key * bp.dv_row_stride + col) = pack_bf16x2(dv[dt][2 * i], dv[dt][2 * i + 1]);
        }
    }
}

ENGINE_KERNEL void __launch_bounds__(256) attention_v2_backward_d32(AttentionV2BackwardParams p) {
    attention_v2_backward<32, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(256) attention_v2_backward_d64(AttentionV2BackwardParams p) {
    attention_v2_backward<64, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_backward_d96(AttentionV2BackwardParams p) {
    attention_v2_backward<96, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_backward_d128(AttentionV2BackwardParams p) {
    attention_v2_backward<128, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(256) attention_v2_backward_alibi_d32(AttentionV2BackwardParams p,
                                                                          float alibi_max_bias) {
    attention_v2_backward<32, true>(p, alibi_max_bias);
}
ENGINE_KERNEL void __launch_bounds__(256) attention_v2_backward_alibi_d64(AttentionV2BackwardParams p,
                                                                          float alibi_max_bias) {
    attention_v2_backward<64, true>(p, alibi_max_bias);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_backward_alibi_d96(AttentionV2BackwardParams p,
                                                                          float alibi_max_bias) {
    attention_v2_backward<96, true>(p, alibi_max_bias);
}
ENGINE_KERNEL void __launch_bounds__(128) attention_v2_backward_alibi_d128(AttentionV2BackwardParams p,
                                                                           float alibi_max_bias) {
    attention_v2_backward<128, true>(p, alibi_max_bias);
}
