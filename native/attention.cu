/*
 * Flash attention (FlashAttention-2 algorithm), causal or full, GQA, head dim 64 or 128, any sequence length.
 * Layouts: q, o [B, T, H, D]; k, v [B, T, Hkv, D] (token rows *_row_stride elements apart, so fused QKV buffers
 * work); query head h reads kv head h / (H / Hkv); lse fp32 [B, H, T]. scale = softmax_scale (1/sqrt(D)).
 *
 * Forward, per query row i (never materialising the T x T matrix):
 *   s_ij = scale * q_i . k_j          masked (-inf) for j >= T and, when causal, j > i
 *   lse_i = log sum_j exp(s_ij),   o_i = sum_j exp(s_ij - lse_i) v_j
 * computed tile by tile with the online softmax: running max m, running sum l, o rescaled by exp(m_old - m_new);
 * exponentials in base 2 (s * scale * log2 e), P rounded to bf16 for the P V product, everything else fp32.
 *
 * Backward (P recomputed from the saved lse; D_i = rowsum(dO_i * O_i)):
 *   p_ij = exp(s_ij - lse_i)     dv_j = sum_i p_ij dO_i        dp_ij = dO_i . v_j
 *   ds_ij = p_ij (dp_ij - D_i)    dq_i = scale sum_j ds_ij k_j   dk_j = scale sum_i ds_ij q_i
 * dk/dv of a kv head sum over the H/Hkv query heads of its group. Deterministic, no atomics: one kernel owns a
 * key tile (and loops over the group's heads and the query tiles) for dk/dv; a second owns a query tile for dq and
 * recomputes P and dP (FlashAttention-2 accumulates dq with atomics instead; we pay the recompute for bitwise
 * reproducible gradients).
 *
 * Kernels: attention_forward_d{64,128}, attention_backward_preprocess, attention_backward_dkdv_d{64,128},
 * attention_backward_dq_d{64,128}, and the ALiBi variants attention_forward_alibi_d*, attention_backward_dkdv_alibi_d*,
 * attention_backward_dq_alibi_d* (s_ij += m_h (j - i), see common/attention.cuh). 4 warps per block, each warp owns
 * 16 rows of the block's tile and works with mma.sync m16n8k16 (common/mma.cuh); tile sizes and dynamic shared memory in common/traits.cuh (AttnTraits).
 * Requirements checked by the C# launcher: row strides and pointers 16-byte aligned (multiples of 8 elements).
 */
#include "common/common.cuh"
#include "common/mma.cuh"
#include "common/traits.cuh"
#include "common/attention.cuh"

// Rows [t0, t0 + R) of one head into a shared tile (pitch AttnTraits<D>::kRow); rows >= T are zero-filled.
// `base` points at token 0 of the head; 16-byte chunks, consecutive threads take consecutive chunks of a row.
template <int D, int R>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* base, int64_t row_stride, int64_t t0, int64_t T) {
    constexpr int kChunks = D / 8;
    constexpr int kPitch = AttnTraits<D>::kRow;
    for (int idx = threadIdx.x; idx < R * kChunks; idx += blockDim.x) {
        const int r = idx / kChunks, c = (idx % kChunks) * 8;
        int4 val = make_int4(0, 0, 0, 0);
        if (t0 + r < T) val = *reinterpret_cast<const int4*>(base + (t0 + r) * row_stride + c);
        *reinterpret_cast<int4*>(tile + r * kPitch + c) = val;
    }
}

__device__ __forceinline__ bool masked(int64_t query, int64_t key, int64_t T, int32_t causal) {
    return key >= T || query >= T || (causal && key > query);
}

// Stores a warp's 16 x D fp32 accumulator tile (rows row0 / row0+8 per thread) scaled by s0 / s1, rows >= T skipped.
template <int D>
__device__ __forceinline__ void store_acc(bf16* base, int64_t row_stride, int64_t row0, int64_t T, const float (*acc)[4],
                                          float s0, float s1, int lane) {
    const int64_t row1 = row0 + 8;
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) {
        const int col = dt * 8 + (lane & 3) * 2;
        if (row0 < T)
            *reinterpret_cast<uint32_t*>(base + row0 * row_stride + col) = pack_bf16x2(acc[dt][0] * s0, acc[dt][1] * s0);
        if (row1 < T)
            *reinterpret_cast<uint32_t*>(base + row1 * row_stride + col) = pack_bf16x2(acc[dt][2] * s1, acc[dt][3] * s1);
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Forward: grid (ceil(T / BM), H, B), kAttnThreads threads, AttnTraits<D>::kFwdSmem bytes of dynamic shared memory.
template <int D, bool ALIBI>
__device__ void attention_forward(const AttentionParams& p, float alibi_max_bias) {
    using Tr = AttnTraits<D>;
    constexpr int BM = Tr::kFwdBlockM, BN = Tr::kFwdBlockN, RS = Tr::kRow;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
    bf16* sK = sQ + BM * RS;
    bf16* sV = sK + BN * RS;
    require_dynamic_smem(Tr::kFwdSmem);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tq = lane & 3;
    const int64_t T = p.seq_len, h = blockIdx.y, b = blockIdx.z, hk = h / (p.heads / p.kv_heads);
    const int64_t m0 = (int64_t)blockIdx.x * BM;
    const bf16* qb = p.q + b * T * p.q_row_stride + h * D;
    const bf16* kb = p.k + b * T * p.k_row_stride + hk * D;
    const bf16* vb = p.v + b * T * p.v_row_stride + hk * D;

    load_tile<D, BM>(sQ, qb, p.q_row_stride, m0, T);
    __syncthreads();
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) load_a_frag(qf[kk], sQ, RS, warp * 16, kk * 16, lane);

    float acc[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    const float sl2 = p.softmax_scale * kLog2e;
    const float ab2 = ALIBI ? alibi_slope(h, p.heads, alibi_max_bias) * kLog2e : 0.f;   // ALiBi slope, log2 domain
    const int64_t row0 = m0 + warp * 16 + (lane >> 2);
    const int64_t rows[2] = {row0, row0 + 8};
    const int64_t n_end = p.causal ? min(T, m0 + BM) : T;

    for (int64_t n0 = 0; n0 < n_end; n0 += BN) {
        __syncthreads();   // every warp is done with the previous K/V tile
        load_tile<D, BN>(sK, kb, p.k_row_stride, n0, T);
        load_tile<D, BN>(sV, vb, p.v_row_stride, n0, T);
        __syncthreads();

        float s[BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
                uint32_t b0, b1;
                load_b_frag_nk(b0, b1, sK, RS, nt * 8, kk * 16, lane);
                mma_16816(s[nt], qf[kk], b0, b1);
            }
        }
        // scale into the log2 domain, mask, row max over the quad (the 4 lanes sharing a row)
        float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int64_t key = n0 + nt * 8 + tq * 2 + (e & 1);
                float x = s[nt][e] * sl2;
                if constexpr (ALIBI) x = fmaf(ab2, (float)(key - rows[e >> 1]), x);
                if (masked(rows[e >> 1], key, T, p.causal)) x = -INFINITY;   // rows >= T: all masked, never stored
                s[nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float corr[2], msafe[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            msafe[i] = mx[i] == -INFINITY ? 0.f : mx[i];
            corr[i] = exp2f(m_run[i] - msafe[i]);   // m_run = -inf on the first tile: 0
            m_run[i] = mx[i];
        }
        float rsum[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[nt][e] = exp2f(s[nt][e] - msafe[e >> 1]);
                rsum[e >> 1] += s[nt][e];
            }
        }
        // per-thread partial row sums; the quad reduction happens once at the end (corr is uniform in a quad)
        l_run[0] = l_run[0] * corr[0] + rsum[0];
        l_run[1] = l_run[1] * corr[1] + rsum[1];
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            acc[dt][0] *= corr[0]; acc[dt][1] *= corr[0];
            acc[dt][2] *= corr[1]; acc[dt][3] *= corr[1];
        }
        // O += P V
#pragma unroll
        for (int kt = 0; kt < BN / 16; kt++) {
            const uint32_t a[4] = {pack_bf16x2(s[2 * kt][0], s[2 * kt][1]), pack_bf16x2(s[2 * kt][2], s[2 * kt][3]),
                                   pack_bf16x2(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                                   pack_bf16x2(s[2 * kt + 1][2], s[2 * kt + 1][3])};
#pragma unroll
            for (int dt2 = 0; dt2 < D / 16; dt2++) {
                uint32_t bv[4];
                load_b_frag_kn_x2(bv, sV, RS, kt * 16, dt2 * 16, lane);
                mma_16816(acc[2 * dt2], a, bv[0], bv[1]);
                mma_16816(acc[2 * dt2 + 1], a, bv[2], bv[3]);
            }
        }
    }

    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
        l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
        inv[i] = l_run[i] > 0.f ? 1.f / l_run[i] : 0.f;
    }
    store_acc<D>(p.o + b * T * p.o_row_stride + h * D, p.o_row_stride, row0, T, acc, inv[0], inv[1], lane);
    if (tq == 0) {
        float* lse = p.lse + (b * p.heads + h) * T;
#pragma unroll
        for (int i = 0; i < 2; i++)
            if (rows[i] < T) lse[rows[i]] = l_run[i] > 0.f ? m_run[i] * kLn2 + logf(l_run[i]) : INFINITY;
    }
}

ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_forward_d64(AttentionParams p) {
    attention_forward<64, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_forward_d128(AttentionParams p) {
    attention_forward<128, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_forward_alibi_d64(AttentionParams p,
                                                                               float alibi_max_bias) {
    attention_forward<64, true>(p, alibi_max_bias);
}
ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_forward_alibi_d128(AttentionParams p,
                                                                                float alibi_max_bias) {
    attention_forward<128, true>(p, alibi_max_bias);
}

// ------------------------------------------------------------------------------------------------------------------
// delta[b, h, t] = sum_d dO[b, t, h, d] * O[b, t, h, d]. One warp per (b, t, h) row, grid-stride; any D even.
ENGINE_KERNEL void attention_backward_preprocess(AttentionBackwardParams p, int32_t head_dim) {
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
// dk, dv: grid (ceil(T / BKV), Hkv, B), kAttnThreads threads, AttnTraits<D>::kBwdKVSmem bytes of dynamic smem.
// Each warp owns 16 keys and computes the transposed products S^T = K Q^T and dP^T = V dO^T for them.
template <int D, bool ALIBI>
__device__ void attention_backward_dkdv(const AttentionBackwardParams& bp, float alibi_max_bias) {
    using Tr = AttnTraits<D>;
    constexpr int BKV = Tr::kBwdBlockKV, BQ = Tr::kBwdBlockQ, RS = Tr::kRow;
    const AttentionParams& p = bp.fwd;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* sK = reinterpret_cast<bf16*>(smem_raw);
    bf16* sV = sK + BKV * RS;
    bf16* sQ = sV + BKV * RS;
    bf16* sdO = sQ + BQ * RS;
    float* sLse = reinterpret_cast<float*>(sdO + BQ * RS);
    float* sDelta = sLse + BQ;
    require_dynamic_smem(Tr::kBwdKVSmem);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tq = lane & 3;
    const int64_t T = p.seq_len, hk = blockIdx.y, b = blockIdx.z, group = p.heads / p.kv_heads;
    const int64_t n0 = (int64_t)blockIdx.x * BKV;
    load_tile<D, BKV>(sK, p.k + b * T * p.k_row_stride + hk * D, p.k_row_stride, n0, T);
    load_tile<D, BKV>(sV, p.v + b * T * p.v_row_stride + hk * D, p.v_row_stride, n0, T);

    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[dt][e] = dv[dt][e] = 0.f;
    const float sl2 = p.softmax_scale * kLog2e;
    const int64_t key0 = n0 + warp * 16 + (lane >> 2);
    const int64_t q_begin = p.causal ? (n0 / BQ) * BQ : 0;

    for (int64_t gi = 0; gi < group; gi++) {
        const int64_t h = hk * group + gi;
        const float ab2 = ALIBI ? alibi_slope(h, p.heads, alibi_max_bias) * kLog2e : 0.f;
        const bf16* qb = p.q + b * T * p.q_row_stride + h * D;
        const bf16* dob = bp.dout + b * T * bp.do_row_stride + h * D;
        const float* lse = p.lse + (b * p.heads + h) * T;
        const float* delta = bp.delta + (b * p.heads + h) * T;
        for (int64_t q0 = q_begin; q0 < T; q0 += BQ) {
            __syncthreads();   // previous tile consumed (and, first time round, nothing pending)
            load_tile<D, BQ>(sQ, qb, p.q_row_stride, q0, T);
            load_tile<D, BQ>(sdO, dob, bp.do_row_stride, q0, T);
            for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
                const bool in = q0 + r < T;
                sLse[r] = in ? lse[q0 + r] * kLog2e : INFINITY;
                sDelta[r] = in ? delta[q0 + r] : 0.f;
            }
            __syncthreads();

            // S^T (16 keys x BQ queries) = K Q^T
            float st[BQ / 8][4];
#pragma unroll
            for (int nt = 0; nt < BQ / 8; nt++) st[nt][0] = st[nt][1] = st[nt][2] = st[nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t ka[4];
                load_a_frag(ka, sK, RS, warp * 16, kk * 16, lane);
#pragma unroll
                for (int nt = 0; nt < BQ / 8; nt++) {
                    uint32_t b0, b1;
                    load_b_frag_nk(b0, b1, sQ, RS, nt * 8, kk * 16, lane);
                    mma_16816(st[nt], ka, b0, b1);
                }
            }
            // P^T = exp(S^T scale - lse_query), zero where masked
#pragma unroll
            for (int nt = 0; nt < BQ / 8; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int qc = nt * 8 + tq * 2 + (e & 1);
                    float x = st[nt][e] * sl2;
                    if constexpr (ALIBI) x = fmaf(ab2, (float)(key0 + (e >> 1) * 8 - (q0 + qc)), x);
                    const float pv = exp2f(x - sLse[qc]);
                    st[nt][e] = masked(q0 + qc, key0 + (e >> 1) * 8, T, p.causal) ? 0.f : pv;
                }
            }
            // dV += P^T dO
#pragma unroll
            for (int kt = 0; kt < BQ / 16; kt++) {
                const uint32_t a[4] = {pack_bf16x2(st[2 * kt][0], st[2 * kt][1]), pack_bf16x2(st[2 * kt][2], st[2 * kt][3]),
                                       pack_bf16x2(st[2 * kt + 1][0], st[2 * kt + 1][1]),
                                       pack_bf16x2(st[2 * kt + 1][2], st[2 * kt + 1][3])};
#pragma unroll
                for (int dt2 = 0; dt2 < D / 16; dt2++) {
                    uint32_t bo[4];
                    load_b_frag_kn_x2(bo, sdO, RS, kt * 16, dt2 * 16, lane);
                    mma_16816(dv[2 * dt2], a, bo[0], bo[1]);
                    mma_16816(dv[2 * dt2 + 1], a, bo[2], bo[3]);
                }
            }
            // dP^T = V dO^T, then dS^T = P^T (dP^T - delta_query)
            float dpt[BQ / 8][4];
#pragma unroll
            for (int nt = 0; nt < BQ / 8; nt++) dpt[nt][0] = dpt[nt][1] = dpt[nt][2] = dpt[nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t va[4];
                load_a_frag(va, sV, RS, warp * 16, kk * 16, lane);
#pragma unroll
                for (int nt = 0; nt < BQ / 8; nt++) {
                    uint32_t b0, b1;
                    load_b_frag_nk(b0, b1, sdO, RS, nt * 8, kk * 16, lane);
                    mma_16816(dpt[nt], va, b0, b1);
                }
            }
#pragma unroll
            for (int nt = 0; nt < BQ / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) st[nt][e] *= dpt[nt][e] - sDelta[nt * 8 + tq * 2 + (e & 1)];
            // dK += dS^T Q   (scale applied at the end)
#pragma unroll
            for (int kt = 0; kt < BQ / 16; kt++) {
                const uint32_t a[4] = {pack_bf16x2(st[2 * kt][0], st[2 * kt][1]), pack_bf16x2(st[2 * kt][2], st[2 * kt][3]),
                                       pack_bf16x2(st[2 * kt + 1][0], st[2 * kt + 1][1]),
                                       pack_bf16x2(st[2 * kt + 1][2], st[2 * kt + 1][3])};
#pragma unroll
                for (int dt2 = 0; dt2 < D / 16; dt2++) {
                    uint32_t bq[4];
                    load_b_frag_kn_x2(bq, sQ, RS, kt * 16, dt2 * 16, lane);
                    mma_16816(dk[2 * dt2], a, bq[0], bq[1]);
                    mma_16816(dk[2 * dt2 + 1], a, bq[2], bq[3]);
                }
            }
        }
    }
    store_acc<D>(bp.dk + b * T * bp.dk_row_stride + hk * D, bp.dk_row_stride, key0, T, dk, p.softmax_scale,
                 p.softmax_scale, lane);
    store_acc<D>(bp.dv + b * T * bp.dv_row_stride + hk * D, bp.dv_row_stride, key0, T, dv, 1.f, 1.f, lane);
}

ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_backward_dkdv_d64(AttentionBackwardParams p) {
    attention_backward_dkdv<64, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_backward_dkdv_d128(AttentionBackwardParams p) {
    attention_backward_dkdv<128, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_backward_dkdv_alibi_d64(AttentionBackwardParams p,
                                                                                     float alibi_max_bias) {
    attention_backward_dkdv<64, true>(p, alibi_max_bias);
}
ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_backward_dkdv_alibi_d128(AttentionBackwardParams p,
                                                                                      float alibi_max_bias) {
    attention_backward_dkdv<128, true>(p, alibi_max_bias);
}

// ------------------------------------------------------------------------------------------------------------------
// dq: grid (ceil(T / BM), H, B), kAttnThreads threads, AttnTraits<D>::kBwdQSmem bytes of dynamic shared memory.
template <int D, bool ALIBI>
__device__ void attention_backward_dq(const AttentionBackwardParams& bp, float alibi_max_bias) {
    using Tr = AttnTraits<D>;
    constexpr int BM = Tr::kBwdBlockM, BN = Tr::kBwdBlockN, RS = Tr::kRow;
    const AttentionParams& p = bp.fwd;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
    bf16* sdO = sQ + BM * RS;
    bf16* sK = sdO + BM * RS;
    bf16* sV = sK + BN * RS;
    require_dynamic_smem(Tr::kBwdQSmem);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tq = lane & 3;
    const int64_t T = p.seq_len, h = blockIdx.y, b = blockIdx.z, hk = h / (p.heads / p.kv_heads);
    const int64_t m0 = (int64_t)blockIdx.x * BM;
    load_tile<D, BM>(sQ, p.q + b * T * p.q_row_stride + h * D, p.q_row_stride, m0, T);
    load_tile<D, BM>(sdO, bp.dout + b * T * bp.do_row_stride + h * D, bp.do_row_stride, m0, T);
    const bf16* kb = p.k + b * T * p.k_row_stride + hk * D;
    const bf16* vb = p.v + b * T * p.v_row_stride + hk * D;

    const int64_t row0 = m0 + warp * 16 + (lane >> 2);
    const int64_t rows[2] = {row0, row0 + 8};
    float lse2[2], dlt[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const bool in = rows[i] < T;
        lse2[i] = in ? p.lse[(b * p.heads + h) * T + rows[i]] * kLog2e : INFINITY;
        dlt[i] = in ? bp.delta[(b * p.heads + h) * T + rows[i]] : 0.f;
    }
    float dq[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; dt++) dq[dt][0] = dq[dt][1] = dq[dt][2] = dq[dt][3] = 0.f;
    const float sl2 = p.softmax_scale * kLog2e;
    const float ab2 = ALIBI ? alibi_slope(h, p.heads, alibi_max_bias) * kLog2e : 0.f;
    const int64_t n_end = p.causal ? min(T, m0 + BM) : T;

    for (int64_t n0 = 0; n0 < n_end; n0 += BN) {
        __syncthreads();
        load_tile<D, BN>(sK, kb, p.k_row_stride, n0, T);
        load_tile<D, BN>(sV, vb, p.v_row_stride, n0, T);
        __syncthreads();

        float s[BN / 8][4], dp[BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t qa[4], da[4];
            load_a_frag(qa, sQ, RS, warp * 16, kk * 16, lane);
            load_a_frag(da, sdO, RS, warp * 16, kk * 16, lane);
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
                uint32_t b0, b1;
                load_b_frag_nk(b0, b1, sK, RS, nt * 8, kk * 16, lane);
                mma_16816(s[nt], qa, b0, b1);
                load_b_frag_nk(b0, b1, sV, RS, nt * 8, kk * 16, lane);
                mma_16816(dp[nt], da, b0, b1);
            }
        }
        // dS = P (dP - delta), P = exp(S scale - lse)
#pragma unroll
        for (int nt = 0; nt < BN / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int64_t key = n0 + nt * 8 + tq * 2 + (e & 1);
                float x = s[nt][e] * sl2;
                if constexpr (ALIBI) x = fmaf(ab2, (float)(key - rows[e >> 1]), x);
                const float pv = exp2f(x - lse2[e >> 1]);
                s[nt][e] = masked(rows[e >> 1], key, T, p.causal) ? 0.f : pv * (dp[nt][e] - dlt[e >> 1]);
            }
        }
        // dQ += dS K
#pragma unroll
        for (int kt = 0; kt < BN / 16; kt++) {
            const uint32_t a[4] = {pack_bf16x2(s[2 * kt][0], s[2 * kt][1]), pack_bf16x2(s[2 * kt][2], s[2 * kt][3]),
                                   pack_bf16x2(s[2 * kt + 1][0], s[2 * kt + 1][1]),
                                   pack_bf16x2(s[2 * kt + 1][2], s[2 * kt + 1][3])};
#pragma unroll
            for (int dt2 = 0; dt2 < D / 16; dt2++) {
                uint32_t bk[4];
                load_b_frag_kn_x2(bk, sK, RS, kt * 16, dt2 * 16, lane);
                mma_16816(dq[2 * dt2], a, bk[0], bk[1]);
                mma_16816(dq[2 * dt2 + 1], a, bk[2], bk[3]);
            }
        }
    }
    store_acc<D>(bp.dq + b * T * bp.dq_row_stride + h * D, bp.dq_row_stride, row0, T, dq, p.softmax_scale,
                 p.softmax_scale, lane);
}

ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_backward_dq_d64(AttentionBackwardParams p) {
    attention_backward_dq<64, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_backward_dq_d128(AttentionBackwardParams p) {
    attention_backward_dq<128, false>(p, 0.f);
}
ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_backward_dq_alibi_d64(AttentionBackwardParams p,
                                                                                   float alibi_max_bias) {
    attention_backward_dq<64, true>(p, alibi_max_bias);
}
ENGINE_KERNEL void __launch_bounds__(kAttnThreads) attention_backward_dq_alibi_d128(AttentionBackwardParams p,
                                                                                    float alibi_max_bias) {
    attention_backward_dq<128, true>(p, alibi_max_bias);
}
