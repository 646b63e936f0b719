// Shared device helpers for every rgemma kernel file (included by name; the host passes this
// file to NVRTC as a header). No CUDA headers are used, so NVRTC needs no include path:
// half/bfloat16 conversion, dp4a and warp shuffles are written with PTX or builtins.
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// ggml type ids (quant/src/types.rs).
#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_BF16 30

#define WARP 32

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float bf16_to_f32(u16 h) {
    return __uint_as_float(((u32)h) << 16);
}

// Little-endian loads from block data whose alignment is only 2 bytes (legacy blocks of 18,
// 20, 22, 34 bytes and Q6_K's 210): two 16-bit loads instead of one 32-bit load.
__device__ __forceinline__ u16 ld_u16(const u8* p) { return *(const u16*)p; }
__device__ __forceinline__ u32 ld_u32_a2(const u8* p) {
    const u16* q = (const u16*)p;
    return (u32)q[0] | ((u32)q[1] << 16);
}
__device__ __forceinline__ u32 ld_u32_a4(const u8* p) { return *(const u32*)p; }
__device__ __forceinline__ u32 ld_u32_any(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024). `red` holds 32
// floats of shared memory. Every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* red) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    int nw = blockDim.x / WARP;
    float t = lane < nw ? red[lane] : 0.0f;
    return warp_sum(t);
}

__device__ __forceinline__ float block_max(float v, float* red) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    int nw = blockDim.x / WARP;
    float t = lane < nw ? red[lane] : -3.402823466e38f;
    return warp_max(t);
}

// Activations quantized for the integer dot kernels: 32 values, f32 scale d, s = d * sum(q),
// int8 codes (codes as ggml's q8_1: d = amax/127, q = round(x/d)). 40 bytes, 4-aligned.
struct q8_1_block {
    float d;
    float s;
    i8 qs[32];
};

// K-quant 6-bit scale/min unpack of sub-block j (ggml get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Bytes per block and values per block of a type.
__device__ __forceinline__ int type_block_values(int ty) {
    switch (ty) {
        case T_F32: case T_F16: case T_BF16: return 1;
        case T_Q4_K: case T_Q5_K: case T_Q6_K: return 256;
        default: return 32;
    }
}
__device__ __forceinline__ int type_block_bytes(int ty) {
    switch (ty) {
        case T_F32: return 4;
        case T_F16: case T_BF16: return 2;
        case T_Q4_0: return 18;
        case T_Q4_1: return 20;
        case T_Q5_0: return 22;
        case T_Q5_1: return 24;
        case T_Q8_0: return 34;
        case T_Q4_K: return 144;
        case T_Q5_K: return 176;
        case T_Q6_K: return 210;
        default: return 0;
    }
}

// Element k of a stored row, with ggml's dequantization arithmetic (quant/src/legacy.rs,
// kquants.rs). Used by the generic (any type) kernels; the fast paths decode whole ints.
__device__ __forceinline__ float dequant_elem(int ty, const u8* row, int k) {
    switch (ty) {
        case T_F32: return ((const float*)row)[k];
        case T_F16: return f16_to_f32(ld_u16(row + 2 * k));
        case T_BF16: return bf16_to_f32(ld_u16(row + 2 * k));
        case T_Q4_0: {
            const u8* b = row + (k / 32) * 18;
            int j = k % 32;
            float d = f16_to_f32(ld_u16(b));
            int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
            return d * (float)(q - 8);
        }
        case T_Q4_1: {
            const u8* b = row + (k / 32) * 20;
            int j = k % 32;
            float d = f16_to_f32(ld_u16(b)), m = f16_to_f32(ld_u16(b + 2));
            int q = j < 16 ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4);
            return d * (float)q + m;
        }
        case T_Q5_0: {
            const u8* b = row + (k / 32) * 22;
            int j = k % 32;
            float d = f16_to_f32(ld_u16(b));
            u32 qh = ld_u32_a2(b + 2);
            int q = j < 16 ? (b[6 + j] & 15) : (b[6 + j - 16] >> 4);
            q |= ((qh >> j) & 1) << 4;
            return d * (float)(q - 16);
        }
        case T_Q5_1: {
            const u8* b = row + (k / 32) * 24;
            int j = k % 32;
            float d = f16_to_f32(ld_u16(b)), m = f16_to_f32(ld_u16(b + 2));
            u32 qh = ld_u32_a4(b + 4);
            int q = j < 16 ? (b[8 + j] & 15) : (b[8 + j - 16] >> 4);
            q |= ((qh >> j) & 1) << 4;
            return d * (float)q + m;
        }
        case T_Q8_0: {
            const u8* b = row + (k / 32) * 34;
            float d = f16_to_f32(ld_u16(b));
            return d * (float)(i8)b[2 + k % 32];
        }
        case T_Q4_K: {
            const u8* b = row + (k / 256) * 144;
            int e = k % 256, sub = e / 32, c = e / 64, l = e % 32;
            float d = f16_to_f32(ld_u16(b)), dmin = f16_to_f32(ld_u16(b + 2));
            int sc, m;
            scale_min_k4(sub, b + 4, &sc, &m);
            u8 byte = b[16 + 32 * c + l];
            int q = (sub & 1) ? (byte >> 4) : (byte & 15);
            return d * (float)sc * (float)q - dmin * (float)m;
        }
        case T_Q5_K: {
            const u8* b = row + (k / 256) * 176;
            int e = k % 256, sub = e / 32, c = e / 64, l = e % 32;
            float d = f16_to_f32(ld_u16(b)), dmin = f16_to_f32(ld_u16(b + 2));
            int sc, m;
            scale_min_k4(sub, b + 4, &sc, &m);
            u8 byte = b[48 + 32 * c + l];
            int q = (sub & 1) ? (byte >> 4) : (byte & 15);
            q |= ((b[16 + l] >> sub) & 1) << 4;
            return d * (float)sc * (float)q - dmin * (float)m;
        }
        case T_Q6_K: {
            const u8* b = row + (k / 256) * 210;
            int e = k % 256, n = e / 128, r = e % 128, g = r / 32, l = r % 32;
            const u8* ql = b + 64 * n;
            const u8* qh = b + 128 + 32 * n;
            const i8* sc = (const i8*)(b + 192 + 8 * n);
            float d = f16_to_f32(ld_u16(b + 208));
            int lo = (g & 1) ? ql[l + 32] : ql[l];
            lo = (g >= 2) ? (lo >> 4) : (lo & 15);
            int hi = (qh[l] >> (2 * g)) & 3;
            int q = (lo | (hi << 4)) - 32;
            return d * (float)sc[l / 16 + 2 * g] * (float)q;
        }
        default: return 0.0f;
    }
}

__device__ __forceinline__ float gelu_tanh(float x) {
    const float c = 0.7978846f;  // sqrt(2/pi), as ops.rs
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
