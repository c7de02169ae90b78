/*
 * Rotary position embedding, Hugging Face Llama "rotate_half" convention, on q or k laid out [B, T, H, D]
 * (row = token b*T + t; the H*D values of a token start row_stride elements apart, so a fused QKV buffer works).
 * For i < D/2 the pair (x_i, x_{i+D/2}) rotates by angle = pos * inv_freq_i:
 *   y_i       = x_i * cos - x_{i+D/2} * sin
 *   y_{i+D/2} = x_{i+D/2} * cos + x_i * sin
 *   pos       = (float)(t + position_offset), divided in fp32 by linear_factor for linear scaling (1 = none)
 * inv_freq_i = base^(-2i/D) is computed by the host in double and stored as fp32 [D/2] (NTK scaling raises the
 * base: base' = base * factor^(D/(D-2))); see C# RopeKernels.InverseFrequencies, identical to the CPU reference.
 * The angle is formed in fp32 exactly like the CPU reference ((float)pos * inv_freq_i, never rounded to bf16) and
 * sinf/cosf are the accurate libdevice functions with full range reduction (no __sinf), so pos = 16384 stays
 * accurate. Backward is the inverse rotation (sin -> -sin): dx_i = dy_i cos + dy_{i+D/2} sin, ... .
 * In place allowed (out == in): each thread reads its pair before writing it.
 * One thread per (token, pair i): its sincos serves every head of the token (the angle does not depend on the head),
 * so sincosf runs B*T*D/2 times instead of B*T*H*D/2; each head's pair is then the same arithmetic as before.
 */
#include "common/common.cuh"
#include "common/traits.cuh"

struct RopeParams {
    bf16* out;               // [B, T, H, D] output rows, out_row_stride apart
    const bf16* in;          // [B, T, H, D] input rows, in_row_stride apart
    const float* inv_freq;   // [D/2] fp32 inverse frequencies (scaling already applied for NTK)
    int64_t batch;           // B
    int64_t seq_len;         // T
    int64_t heads;           // H
    int64_t head_dim;        // D (even)
    int64_t in_row_stride;   // elements between consecutive tokens of in (H*D when packed)
    int64_t out_row_stride;  // elements between consecutive tokens of out
    int64_t position_offset; // position of t = 0 (KV-cache decoding, packed continuation)
    float linear_factor;     // positions are divided by this (linear scaling); 1 = none
    int32_t pad;
};
static_assert(sizeof(RopeParams) == 88, "mirrored in C# RopeParams");

__device__ __forceinline__ void rope_apply(const RopeParams& p, float sign) {
    const int64_t half = p.head_dim / 2;
    const int64_t total = p.batch * p.seq_len * half;
    for (int64_t idx = global_thread_id(); idx < total; idx += grid_threads()) {
        const int64_t i = idx % half;
        const int64_t row = idx / half;
        const int64_t t = row % p.seq_len;
        float pos = (float)(t + p.position_offset);
        if (p.linear_factor != 1.f) pos = pos / p.linear_factor;
        const float angle = pos * p.inv_freq[i];
        float s, c;
        sincosf(angle, &s, &c);
        s *= sign;
        const bf16* x = p.in + row * p.in_row_stride + i;
        bf16* y = p.out + row * p.out_row_stride + i;
        for (int64_t h = 0; h < p.heads; h++, x += p.head_dim, y += p.head_dim) {
            const float x1 = to_f32(x[0]), x2 = to_f32(x[half]);
            y[0] = from_f32<bf16>(x1 * c - x2 * s);
            y[half] = from_f32<bf16>(x2 * c + x1 * s);
        }
    }
}

ENGINE_KERNEL void rope_forward(RopeParams p) { rope_apply(p, 1.f); }
ENGINE_KERNEL void rope_backward(RopeParams p) { rope_apply(p, -1.f); }
