/*
 * Tensor-core building blocks for sm_80+ (mma.sync m16n8k16, bf16 inputs, fp32 accumulators) and the fragment
 * layouts the attention kernels rely on (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
 * g = lane / 4 and q = lane % 4:
 *   A 16x16 (row-major)  a0 = A[g][2q..2q+1]   a1 = A[g+8][2q..]   a2 = A[g][2q+8..]   a3 = A[g+8][2q+8..]
 *   B 16x8  (k x n)      b0 = B[2q..2q+1][g]   b1 = B[2q+8..2q+9][g]
 *   C 16x8  (fp32)       c0,c1 = C[g][2q..2q+1]   c2,c3 = C[g+8][2q..2q+1]
 * Two adjacent C tiles (columns 0-7 and 8-15) therefore are, after rounding to bf16, exactly one A fragment with
 * k = those 16 columns: P = softmax(S) is fed to the next mma without touching shared memory.
 * The lower 16 bits of each 32-bit register hold the element with the smaller column (k) index.
 */
#pragma once
#include "common.cuh"

__device__ __forceinline__ void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two consecutive bf16 from shared memory as one register (p 4-byte aligned).
__device__ __forceinline__ uint32_t lds32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);   // .x = lo (low half), .y = hi
    return *reinterpret_cast<uint32_t*>(&v);
}

// A fragment of rows [r0, r0+16) x columns [c0, c0+16) of a row-major shared tile with pitch `pitch` elements.
__device__ __forceinline__ void load_a_frag(uint32_t a[4], const bf16* tile, int pitch, int r0, int c0, int lane) {
    const bf16* p0 = tile + (r0 + (lane >> 2)) * pitch + c0 + (lane & 3) * 2;
    const bf16* p1 = p0 + 8 * pitch;
    a[0] = lds32(p0);
    a[1] = lds32(p1);
    a[2] = lds32(p0 + 8);
    a[3] = lds32(p1 + 8);
}

// B fragment (k = 16 columns [c0, c0+16), n = 8 rows [r0, r0+8)) from a row-major tile M[n][k]: B = M^T,
// i.e. the "col" operand when the tile stores one n per row (K rows for S = Q K^T).
__device__ __forceinline__ void load_b_frag_nk(uint32_t& b0, uint32_t& b1, const bf16* tile, int pitch, int r0, int c0,
                                               int lane) {
    const bf16* p = tile + (r0 + (lane >> 2)) * pitch + c0 + (lane & 3) * 2;
    b0 = lds32(p);
    b1 = lds32(p + 8);
}

// B fragments for two adjacent n-tiles from a row-major tile M[k][n] (one k per row, e.g. V rows for O = P V):
// k = rows [k0, k0+16), n = columns [n0, n0+16). ldmatrix .trans hands lane l the pair M[2q..2q+1][g].
// r[0], r[1] = b0, b1 of columns n0..n0+7; r[2], r[3] = b0, b1 of columns n0+8..n0+15.
__device__ __forceinline__ void load_b_frag_kn_x2(uint32_t r[4], const bf16* tile, int pitch, int k0, int n0, int lane) {
    const bf16* p = tile + (k0 + (lane & 15)) * pitch + n0 + (lane >> 4) * 8;   // rows 16 bytes aligned
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// ---- ldmatrix for every fragment, cp.async, ordered flags (attention_v2.cu) -----------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// ldmatrix x4: lanes 8i..8i+7 give the 8 row addresses (16 bytes each) of matrix i; lane l receives, of every matrix,
// row l/4, elements 2(l%4)..+1 (no transpose) or column l/4, rows 2(l%4)..+1 (.trans).
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// A fragment (rows [r0, r0+16) x columns [c0, c0+16)) of a row-major tile: matrices (r0, c0) (r0+8, c0) (r0, c0+8)
// (r0+8, c0+8) are a0..a3 — the same registers load_a_frag reads with four 32-bit loads.
__device__ __forceinline__ void ldsm_a(uint32_t a[4], const bf16* tile, int pitch, int r0, int c0, int lane) {
    ldsm_x4(a, tile + (r0 + (lane & 15)) * pitch + c0 + (lane >> 4) * 8);
}

// B fragments of two n-tiles from a row-major tile M[n][k] (B = M^T: K rows for S = Q K^T, Q rows for S^T = K Q^T):
// n = rows [r0, r0+16), k = columns [c0, c0+16). r[0], r[1] = b0, b1 of rows r0..r0+7; r[2], r[3] = of rows r0+8..15.
// Matrix order (r0, c0) (r0, c0+8) (r0+8, c0) (r0+8, c0+8).
__device__ __forceinline__ void ldsm_b_nk_x2(uint32_t r[4], const bf16* tile, int pitch, int r0, int c0, int lane) {
    ldsm_x4(r, tile + (r0 + (lane & 7) + ((lane >> 4) << 3)) * pitch + c0 + ((lane >> 3) & 1) * 8);
}

// A fragment of A = M^T where M is a row-major [k][m] tile (dS for dQ = dS K, stored as dS^T [keys][queries]):
// A rows (m) [m0, m0+16), columns (k) [k0, k0+16). .trans hands lane l the pair M[k0+2(l%4)..+1][m0+l/4] = a0.
__device__ __forceinline__ void ldsm_a_trans(uint32_t a[4], const bf16* tile, int pitch, int m0, int k0, int lane) {
    ldsm_x4_trans(a, tile + (k0 + (lane & 7) + ((lane >> 4) << 3)) * pitch + m0 + ((lane >> 3) & 1) * 8);
}

// 16-byte global -> shared copy that bypasses registers (and L1: .cg); valid == false zero-fills the 16 bytes
// without reading (src-size 0), so tiles past the sequence end read as zeros.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem), "r"(valid ? 16 : 0)
                 : "memory");
}
// 4-byte variant (fp32 statistics rows, whose start need not be 16-byte aligned); .ca is the only 4-byte form.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem), "r"(valid ? 4 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight (then __syncthreads publishes them).
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// Inter-block flags (gpu scope): the writer's data is visible to a reader that observed the flag with acquire.
__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release_gpu(int* p, int v) {
    asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
