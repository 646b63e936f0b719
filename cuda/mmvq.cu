// Quantized matrix x vector products for decode (1..8 activation rows): weights stay in their
// GGUF block format, activations are q8_1 (quantize.cu), each 32-value group is one dp4a
// dot. One warp per weight row, lanes take consecutive 32-value groups (coalesced block
// loads); the warp sums with shuffles. out[t, r] = bias[r] + W[r, :] . x[t, off(r) :].
#include "common.cuh"

#define MMVQ_MAX_COLS 8
#define MMVQ_WARPS 4

// Dot of group g (values 32g..32g+31) of a weight row with one q8_1 block.
__device__ __forceinline__ float dot32_q4_0(const u8* row, int g, const q8_1_block* a) {
    const u8* b = row + g * 18;
    float d = f16_to_f32(ld_u16(b));
    const int* aq = (const int*)a->qs;
    int sumi = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int v = (int)ld_u32_a2(b + 2 + 4 * i);
        sumi = dp4a(v & 0x0F0F0F0F, aq[i], sumi);
        sumi = dp4a((v >> 4) & 0x0F0F0F0F, aq[i + 4], sumi);
    }
    // sum((q - 8) * qa) * da = da * sumi - 8 * s
    return d * (a->d * (float)sumi - 8.0f * a->s);
}

__device__ __forceinline__ float dot32_q8_0(const u8* row, int g, const q8_1_block* a) {
    const u8* b = row + g * 34;
    float d = f16_to_f32(ld_u16(b));
    const int* aq = (const int*)a->qs;
    int sumi = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) sumi = dp4a((int)ld_u32_a2(b + 2 + 4 * i), aq[i], sumi);
    return d * a->d * (float)sumi;
}

// Group g of a Q4_K row = sub-block g%8 of super-block g/8.
__device__ __forceinline__ float dot32_q4_k(const u8* row, int g, const q8_1_block* a) {
    const u8* b = row + (g / 8) * 144;
    int sub = g % 8, c = sub / 2, shift = (sub & 1) * 4;
    float d = f16_to_f32(ld_u16(b)), dmin = f16_to_f32(ld_u16(b + 2));
    int sc, m;
    scale_min_k4(sub, b + 4, &sc, &m);
    const u8* qs = b + 16 + 32 * c;
    const int* aq = (const int*)a->qs;
    int sumi = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int v = ((int)ld_u32_a4(qs + 4 * i) >> shift) & 0x0F0F0F0F;
        sumi = dp4a(v, aq[i], sumi);
    }
    // sum((d*sc*q - dmin*m) * da*qa) = d*sc*da*sumi - dmin*m*s
    return d * (float)sc * a->d * (float)sumi - dmin * (float)m * a->s;
}

// Group g of a Q6_K row: half n = (g%8)/4, quarter q4 = g%4 of that half (module doc of
// dequant_elem in common.cuh); two 16-value scales per group.
__device__ __forceinline__ float dot32_q6_k(const u8* row, int g, const q8_1_block* a) {
    const u8* b = row + (g / 8) * 210;
    int gg = g % 8, n = gg / 4, q4 = gg % 4;
    const u8* ql = b + 64 * n + ((q4 & 1) ? 32 : 0);
    const u8* qh = b + 128 + 32 * n;
    const i8* sc = (const i8*)(b + 192 + 8 * n);
    int lshift = (q4 >= 2) ? 4 : 0, hshift = 2 * q4;
    float d = f16_to_f32(ld_u16(b + 208));
    const int* aq = (const int*)a->qs;
    float acc = 0.0f;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        int sumi = 0, suma = 0;
#pragma unroll
        for (int i = 4 * h; i < 4 * h + 4; i++) {
            int lo = ((int)ld_u32_a2(ql + 4 * i) >> lshift) & 0x0F0F0F0F;
            int hi = (((int)ld_u32_a2(qh + 4 * i) >> hshift) & 0x03030303) << 4;
            sumi = dp4a(lo | hi, aq[i], sumi);
            suma = dp4a(0x01010101, aq[i], suma);
        }
        acc += (float)sc[h + 2 * q4] * (float)(sumi - 32 * suma);
    }
    return d * a->d * acc;
}

template <int TY>
__device__ __forceinline__ float dot32(const u8* row, int g, const q8_1_block* a) {
    if (TY == T_Q4_0) return dot32_q4_0(row, g, a);
    if (TY == T_Q8_0) return dot32_q8_0(row, g, a);
    if (TY == T_Q4_K) return dot32_q4_k(row, g, a);
    return dot32_q6_k(row, g, a);
}

// act: [ncols, act_blocks] q8_1 rows; row r reads blocks from (r / group_rows) * (cols/32).
template <int TY, int NCOLS>
__device__ void mmvq_impl(const u8* __restrict__ w, u64 row_bytes, int rows, int cols,
                          const q8_1_block* __restrict__ act, int act_blocks, int group_rows,
                          const float* __restrict__ bias, float* __restrict__ out,
                          int out_stride) {
    int lane = threadIdx.x % WARP;
    int r = blockIdx.x * MMVQ_WARPS + threadIdx.x / WARP;
    if (r >= rows) return;
    const u8* row = w + (u64)r * row_bytes;
    int ng = cols / 32;
    const q8_1_block* a0 = act + (r / group_rows) * ng;
    float acc[NCOLS];
#pragma unroll
    for (int t = 0; t < NCOLS; t++) acc[t] = 0.0f;
    for (int g = lane; g < ng; g += WARP) {
#pragma unroll
        for (int t = 0; t < NCOLS; t++) acc[t] += dot32<TY>(row, g, a0 + (u64)t * act_blocks + g);
    }
#pragma unroll
    for (int t = 0; t < NCOLS; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0) out[(u64)t * out_stride + r] = v + (bias ? bias[r] : 0.0f);
    }
}

#define MMVQ_DISPATCH(TY)                                                                     \
    switch (ncols) {                                                                          \
        case 1: mmvq_impl<TY, 1>(w, row_bytes, rows, cols, act, act_blocks, group_rows, bias, out, out_stride); break; \
        case 2: mmvq_impl<TY, 2>(w, row_bytes, rows, cols, act, act_blocks, group_rows, bias, out, out_stride); break; \
        case 3: mmvq_impl<TY, 3>(w, row_bytes, rows, cols, act, act_blocks, group_rows, bias, out, out_stride); break; \
        case 4: mmvq_impl<TY, 4>(w, row_bytes, rows, cols, act, act_blocks, group_rows, bias, out, out_stride); break; \
        case 5: mmvq_impl<TY, 5>(w, row_bytes, rows, cols, act, act_blocks, group_rows, bias, out, out_stride); break; \
        case 6: mmvq_impl<TY, 6>(w, row_bytes, rows, cols, act, act_blocks, group_rows, bias, out, out_stride); break; \
        case 7: mmvq_impl<TY, 7>(w, row_bytes, rows, cols, act, act_blocks, group_rows, bias, out, out_stride); break; \
        default: mmvq_impl<TY, 8>(w, row_bytes, rows, cols, act, act_blocks, group_rows, bias, out, out_stride); break; \
    }

#define MMVQ_KERNEL(NAME, TY)                                                                 \
    extern "C" __global__ void NAME(const u8* __restrict__ w, u64 row_bytes, int rows,        \
                                    int cols, const q8_1_block* __restrict__ act,             \
                                    int act_blocks, int group_rows,                           \
                                    const float* __restrict__ bias, float* __restrict__ out,  \
                                    int out_stride, int ncols) {                              \
        MMVQ_DISPATCH(TY)                                                                     \
    }

// Grid: ceil(rows / 4) blocks of 128 threads; ncols in 1..=8.
MMVQ_KERNEL(mmvq_q4_0, T_Q4_0)
MMVQ_KERNEL(mmvq_q8_0, T_Q8_0)
MMVQ_KERNEL(mmvq_q4_k, T_Q4_K)
MMVQ_KERNEL(mmvq_q6_k, T_Q6_K)
