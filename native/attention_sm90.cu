/*
 * Flash attention forward for Hopper (sm_90a), FlashAttention-3's structure: TMA loads completing on mbarriers, a
 * producer warpgroup and two consumer warpgroups (warp specialisation, setmaxnreg), S = Q K^T and O += P V on wgmma
 * (Q and K from shared memory, P from registers, V from shared memory transposed by the descriptor). Same math,
 * layouts and results as attention_v2.cu's forward (causal or full, GQA, lse fp32 [B, H, T], any T: TMA zero-fills
 * rows past T), head dims 64 and 128. The backward of attention_v2.cu consumes its o and lse unchanged.
 *
 * Not yet in it (FlashAttention-3 has them): the ping-pong schedule between the two consumers and the overlap of the
 * softmax with the next S = Q K^T inside a warpgroup; fp8.
 *
 * Built only when nvcc >= 12 targets sm_90a (CMake target engine_kernels_sm90, outside ALL, so a failure here cannot
 * stop the other kernels building); chosen at run time on compute capability 9.0 when the fatbin is present
 * (AttentionV2Kernels.Forward), attention_v2.cu's mma.sync kernel otherwise. Host side: three CUtensorMaps
 * (cuTensorMapEncodeTiled) over q, k, v viewed as 4-D (D, heads, T, B), box (64, 1, 128, 1), 128-byte swizzle.
 * Never compiled by ptxas yet (nvcc 11.8 cannot) and never run. P is packed into the A fragments before wgmma.fence (the
 * PTX ISA requires the fence between writing register operands and the wgmma that reads them; StaticKernelChecksTests
 * reads the PTX nvcc 11.8 emits with ENGINE_SM90_SYNTAX_CHECK for it).
 * ALiBi: attention_sm90_forward_alibi_d{64,128} add m_h (j - i) to the scores in the softmax step (common/attention.cuh),
 * the plain entry points compile it out.
 */
#include "common/common.cuh"
#include "common/mma.cuh"
#include "common/traits.cuh"
#include "common/wgmma.cuh"
#include "common/attention.cuh"

struct AttentionSm90Params {
    TmaDesc q, k, v;         // tensor maps over q, k, v: dims (D, heads, T, B), box (64, 1, 128, 1), SWIZZLE_128B
    AttentionParams base;
    AttnSchedule sched;      // same as attention_v2_forward's (128-row query tiles over B * H heads)
};
static_assert(sizeof(AttentionSm90Params) == 512, "mirrored in C# AttentionSm90Params");

static_assert(Sm90Traits<64>::kSmem == 83968, "AttnSm90Smem(64)");
static_assert(Sm90Traits<128>::kSmem == 165888, "AttnSm90Smem(128)");

#if defined(__CUDA_ARCH__) && (defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(ENGINE_SM90_SYNTAX_CHECK))
#define ENGINE_SM90A_DEVICE 1
#endif

#ifdef ENGINE_SM90A_DEVICE

__device__ __forceinline__ void attn_tile(int64_t t, const AttnSchedule& s, int64_t& block, int64_t& head) {
    const int64_t per_group = (int64_t)s.group * s.blocks;
    const int64_t first = t / per_group * s.group, r = t % per_group;
    const int64_t size = min((int64_t)s.group, (int64_t)s.heads - first);
    const int64_t step = r / size;
    block = s.descending ? s.blocks - 1 - step : step;
    head = first + r % size;
}

template <int N> __device__ __forceinline__ void wgmma_rs_tb(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc);
template <> __device__ __forceinline__ void wgmma_rs_tb<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t desc) {
    wgmma_rs_m64n64k16_tb(d, a, desc);
}
template <> __device__ __forceinline__ void wgmma_rs_tb<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t desc) {
    wgmma_rs_m64n128k16_tb(d, a, desc);
}

template <int D, bool ALIBI>
__device__ __forceinline__ void attention_sm90_forward(const AttentionSm90Params& pp, float alibi_max_bias) {
    using Tr = Sm90Traits<D>;
    constexpr int BM = Tr::kBlockM, BN = Tr::kBlockN, NB = D / 64;   // NB 64-column blocks per row
    const AttentionParams& p = pp.base;
    extern __shared__ unsigned char smem_raw[];
    require_dynamic_smem(Tr::kSmem);
    unsigned char* base = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
    bf16* sQ = reinterpret_cast<bf16*>(base);   // [NB][BM][64]
    bf16* sK = sQ + BM * D;                     // [2][NB][BN][64]
    bf16* sV = sK + 2 * BN * D;                 // [2][NB][BN][64]
    uint64_t* bars = reinterpret_cast<uint64_t*>(sV + 2 * BN * D);
    uint64_t* full_q = bars;
    uint64_t* full_k = bars + 1;                // [2]
    uint64_t* full_v = bars + 3;                // [2]
    uint64_t* empty_k = bars + 5;               // [2]
    uint64_t* empty_v = bars + 7;               // [2]

    int64_t block, head;
    attn_tile(blockIdx.x, pp.sched, block, head);
    const int64_t T = p.seq_len, b = head / p.heads, h = head % p.heads, hk = h / (p.heads / p.kv_heads);
    const int64_t m0 = block * BM;
    const bool causal = p.causal != 0;
    const int n_blocks = (int)ceil_div(causal ? min(T, m0 + BM) : T, BN);
    const int wg = threadIdx.x / 128;

    if (threadIdx.x == 0) {
        mbar_init(full_q, 1);
        for (int s = 0; s < 2; s++) {
            mbar_init(full_k + s, 1);
            mbar_init(full_v + s, 1);
            mbar_init(empty_k + s, 256);   // every consumer thread arrives once per use
            mbar_init(empty_v + s, 256);
        }
        mbar_fence_init();
    }
    __syncthreads();

    if (wg == 0) {   // producer: one thread issues every TMA load
        setmaxnreg_dec<24>();
        if (threadIdx.x == 0) {
            mbar_arrive_expect_tx(full_q, BM * D * 2);
            for (int c = 0; c < NB; c++) tma_load_4d(sQ + c * BM * 64, &pp.q, full_q, c * 64, (int)h, (int)m0, (int)b);
            for (int j = 0; j < n_blocks; j++) {
                const int s = j & 1;
                const uint32_t ph = (j >> 1) & 1;
                mbar_wait(empty_k + s, ph ^ 1);   // stage free (its first use passes at once)
                mbar_arrive_expect_tx(full_k + s, BN * D * 2);
                for (int c = 0; c < NB; c++)
                    tma_load_4d(sK + (s * NB + c) * BN * 64, &pp.k, full_k + s, c * 64, (int)hk, j * BN, (int)b);
                mbar_wait(empty_v + s, ph ^ 1);
                mbar_arrive_expect_tx(full_v + s, BN * D * 2);
                for (int c = 0; c < NB; c++)
                    tma_load_4d(sV + (s * NB + c) * BN * 64, &pp.v, full_v + s, c * 64, (int)hk, j * BN, (int)b);
            }
        }
        return;
    }

    setmaxnreg_inc<240>();
    const int cw = wg - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int64_t first_row = m0 + cw * 64, row_base = first_row + warp * 16;   // this thread: row_base + g (+8)
    const float sl2 = p.softmax_scale * kLog2e;
    const float ab2 = ALIBI ? alibi_slope(h, p.heads, alibi_max_bias) * kLog2e : 0.f;
    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) o[i] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    const uint32_t q_base = smem_u32(sQ) + cw * 64 * 128;   // this consumer's 64 rows of every 64-column block

    mbar_wait(full_q, 0);
    for (int j = 0; j < n_blocks; j++) {
        const int s = j & 1;
        const uint32_t ph = (j >> 1) & 1;
        const int64_t n0 = (int64_t)j * BN;
        // S = Q K^T (64 x BN per consumer), both operands K-major from shared memory
        float sc[BN / 2];
#pragma unroll
        for (int i = 0; i < BN / 2; i++) sc[i] = 0.f;
        mbar_wait(full_k + s, ph);
        fence_regs(sc);
        wgmma_fence();
        const uint32_t k_base = smem_u32(sK + s * NB * BN * 64);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            const int c = kk / 4, kin = (kk % 4) * 32;   // 64-column block, byte offset of the 16 columns in its row
            wgmma_ss_m64n128k16(sc, gmma_desc(q_base + c * BM * 128 + kin, 16, 1024), gmma_desc(k_base + c * BN * 128 + kin, 16, 1024));
        }
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(sc);
        mbar_arrive(empty_k + s);

        // online softmax (log2 domain); sc[4jj + e]: row g + 8(e/2), column 8jj + 2tq + (e%2)
        const bool mask = n0 + BN > T || (causal && n0 + BN - 1 > first_row);
        int lim[2] = {BN, BN};
        if (mask) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                int64_t l = min(T - n0, (int64_t)BN);
                if (causal) l = min(l, row_base + g + i * 8 - n0 + 1);
                lim[i] = (int)max(l, (int64_t)0);
            }
        }
        float mx[2] = {m_run[0], m_run[1]};
        float dist0[2] = {0.f, 0.f};   // ALiBi: key n0 - row of this thread's two rows (the column adds to it)
        if constexpr (ALIBI) {
#pragma unroll
            for (int i = 0; i < 2; i++) dist0[i] = (float)(n0 - (row_base + g + i * 8));
        }
#pragma unroll
        for (int jj = 0; jj < BN / 8; jj++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = sc[4 * jj + e] * sl2;
                if constexpr (ALIBI) x = fmaf(ab2, dist0[e >> 1] + (float)(jj * 8 + tq * 2 + (e & 1)), x);
                if (jj * 8 + tq * 2 + (e & 1) >= lim[e >> 1]) x = -INFINITY;
                sc[4 * jj + e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float corr[2], msafe[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            msafe[i] = mx[i] == -INFINITY ? 0.f : mx[i];
            corr[i] = ex2(m_run[i] - msafe[i]);
            m_run[i] = mx[i];
        }
        float rsum[2] = {0.f, 0.f};
#pragma unroll
        for (int i = 0; i < BN / 2; i++) {
            sc[i] = ex2(sc[i] - msafe[(i >> 1) & 1]);
            rsum[(i >> 1) & 1] += sc[i];
        }
        l_run[0] = l_run[0] * corr[0] + rsum[0];
        l_run[1] = l_run[1] * corr[1] + rsum[1];
#pragma unroll
        for (int i = 0; i < D / 2; i++) o[i] *= corr[(i >> 1) & 1];

        // O += P V: P from registers (two C blocks = one A fragment), V [keys][D] MN-major (transposed by wgmma).
        // All of P is packed into the A fragments, and fenced, before wgmma.fence: the PTX ISA requires the fence
        // between writing a wgmma's register operands (accumulators and A) and the wgmma that reads them, so no
        // pack may sit between the fence and the MMAs (StaticKernelChecks reads the PTX for this).
        uint32_t pa[BN / 16][4];
#pragma unroll
        for (int kt = 0; kt < BN / 16; kt++) {
#pragma unroll
            for (int i = 0; i < 4; i++) pa[kt][i] = pack_bf16x2(sc[8 * kt + 2 * i], sc[8 * kt + 2 * i + 1]);
        }
        fence_regs(pa);
        mbar_wait(full_v + s, ph);
        fence_regs(o);
        wgmma_fence();
        const uint32_t v_base = smem_u32(sV + s * NB * BN * 64);
#pragma unroll
        for (int kt = 0; kt < BN / 16; kt++) wgmma_rs_tb<D>(o, pa[kt], gmma_desc(v_base + kt * 16 * 128, BN * 128, 1024));
        wgmma_commit();
        wgmma_wait<0>();
        fence_regs(o);
        mbar_arrive(empty_v + s);
    }

    // epilogue: 1/l, bf16 O straight from the accumulators (rows >= T skipped), lse
    bf16* ob = p.o + b * T * p.o_row_stride + h * D;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        float l = l_run[i];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const float inv = l > 0.f ? 1.f / l : 0.f;
        const int64_t row = row_base + g + i * 8;
        if (row >= T) continue;
        if (tq == 0) p.lse[(b * p.heads + h) * T + row] = l > 0.f ? m_run[i] * kLn2 + logf(l) : INFINITY;
#pragma unroll
        for (int jj = 0; jj < D / 8; jj++)
            *reinterpret_cast<uint32_t*>(ob + row * p.o_row_stride + jj * 8 + tq * 2) =
                pack_bf16x2(o[4 * jj + 2 * i] * inv, o[4 * jj + 2 * i + 1] * inv);
    }
}
#endif

// 384 threads, Sm90Traits<D>::kSmem bytes of dynamic shared memory, grid = the schedule's tiles.
#ifdef ENGINE_SM90A_DEVICE
#define ENGINE_SM90_BODY(D, ALIBI, B) attention_sm90_forward<D, ALIBI>(p, B);
#else
#define ENGINE_SM90_BODY(D, ALIBI, B) __trap();   // host pass / other targets: never launched (the fatbin holds sm_90a only)
#endif
ENGINE_KERNEL void __launch_bounds__(384, 1) attention_sm90_forward_d64(const __grid_constant__ AttentionSm90Params p) {
    ENGINE_SM90_BODY(64, false, 0.f)
}
ENGINE_KERNEL void __launch_bounds__(384, 1) attention_sm90_forward_d128(const __grid_constant__ AttentionSm90Params p) {
    ENGINE_SM90_BODY(128, false, 0.f)
}
ENGINE_KERNEL void __launch_bounds__(384, 1)
attention_sm90_forward_alibi_d64(const __grid_constant__ AttentionSm90Params p, float alibi_max_bias) {
    ENGINE_SM90_BODY(64, true, alibi_max_bias)
}
ENGINE_KERNEL void __launch_bounds__(384, 1)
attention_sm90_forward_alibi_d128(const __grid_constant__ AttentionSm90Params p, float alibi_max_bias) {
    ENGINE_SM90_BODY(128, true, alibi_max_bias)
}
