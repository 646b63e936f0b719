// Matrix products for any stored weight type, with f32 activations:
// - matvec_any: 1..8 activation rows, one warp per weight row, elements decoded on the fly
//   (the fallback for types without an mmvq kernel, and the float gate blocks);
// - gemm_tiled: prompts and batches, 64 weight rows x 64 activation rows per block, weights
//   decoded into a shared-memory f32 tile 32 values deep;
// - dequantize_rows: a stored matrix to f32 (tests, debugging).
// out[t, r] = bias[r] + sum_c W[r, c] x[t, off(r) + c], off(r) = (r / group_rows) * cols.
#include "common.cuh"

#define MV_WARPS 4
#define MV_MAX_COLS 8

// Grid: ceil(rows / 4) blocks of 128 threads.
extern "C" __global__ void matvec_any(const u8* __restrict__ w, int ty, u64 row_bytes, int rows,
                                      int cols, const float* __restrict__ x, int x_stride,
                                      int group_rows, const float* __restrict__ bias,
                                      float* __restrict__ out, int out_stride, int ncols) {
    int lane = threadIdx.x % WARP;
    int r = blockIdx.x * MV_WARPS + threadIdx.x / WARP;
    if (r >= rows) return;
    const u8* row = w + (u64)r * row_bytes;
    const float* x0 = x + (u64)(r / group_rows) * cols;
    float acc[MV_MAX_COLS];
#pragma unroll
    for (int t = 0; t < MV_MAX_COLS; t++) acc[t] = 0.0f;
    int bv = type_block_values(ty);
    if (bv == 1) {
        // Float rows: lanes read consecutive elements.
        for (int c = lane; c < cols; c += WARP) {
            float wv = dequant_elem(ty, row, c);
#pragma unroll
            for (int t = 0; t < MV_MAX_COLS; t++)
                if (t < ncols) acc[t] += wv * x0[(u64)t * x_stride + c];
        }
    } else {
        // Block rows: each lane decodes 32 consecutive values (cols % 32 == 0 for these).
        for (int g = lane; g < cols / 32; g += WARP) {
            for (int j = 0; j < 32; j++) {
                int c = g * 32 + j;
                float wv = dequant_elem(ty, row, c);
#pragma unroll
                for (int t = 0; t < MV_MAX_COLS; t++)
                    if (t < ncols) acc[t] += wv * x0[(u64)t * x_stride + c];
            }
        }
    }
#pragma unroll
    for (int t = 0; t < MV_MAX_COLS; t++) {
        if (t < ncols) {
            float v = warp_sum(acc[t]);
            if (lane == 0) out[(u64)t * out_stride + r] = v + (bias ? bias[r] : 0.0f);
        }
    }
}

#define TM 64  // weight rows per block
#define TN 64  // activation rows per block
#define TK 32  // depth of one shared tile

// Grid: (ceil(group_rows / 64), ceil(ntok / 64), rows / group_rows); block 256 threads, each
// computing 4 weight rows x 4 activation rows. blockIdx.z selects the block-diagonal group
// (0 for dense matrices, where group_rows = rows).
extern "C" __global__ void gemm_tiled(const u8* __restrict__ w, int ty, u64 row_bytes, int rows,
                                      int cols, const float* __restrict__ x, int x_stride,
                                      int group_rows, const float* __restrict__ bias,
                                      float* __restrict__ out, int out_stride, int ntok) {
    __shared__ float ws[TK][TM + 1];
    __shared__ float xs[TK][TN + 1];
    int grp = blockIdx.z;
    int r0 = grp * group_rows + blockIdx.x * TM;
    int r_end = min(rows, (grp + 1) * group_rows);
    int t0 = blockIdx.y * TN;
    int tid = threadIdx.x;
    int tr = tid % 16, tt = tid / 16;  // this thread: rows r0 + tr + 16i, tokens t0 + tt + 16j
    const float* xg = x + (u64)grp * cols;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < cols; k0 += TK) {
        // 64 x 32 weight values and 64 x 32 activations: 8 of each per thread.
        for (int e = tid; e < TM * TK; e += blockDim.x) {
            int rr = e / TK, kk = e % TK;
            int r = r0 + rr, k = k0 + kk;
            ws[kk][rr] = (r < r_end && k < cols) ? dequant_elem(ty, w + (u64)r * row_bytes, k) : 0.0f;
        }
        for (int e = tid; e < TN * TK; e += blockDim.x) {
            int nn = e / TK, kk = e % TK;
            int t = t0 + nn, k = k0 + kk;
            xs[kk][nn] = (t < ntok && k < cols) ? xg[(u64)t * x_stride + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < TK; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = ws[kk][tr + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = xs[kk][tt + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int r = r0 + tr + 16 * i;
        if (r >= r_end) continue;
        float bv = bias ? bias[r] : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int t = t0 + tt + 16 * j;
            if (t < ntok) out[(u64)t * out_stride + r] = acc[i][j] + bv;
        }
    }
}

// out[r, c] = W[r, c] as f32. Grid: (ceil(cols / 256), rows); block 256.
extern "C" __global__ void dequantize_rows(const u8* __restrict__ w, int ty, u64 row_bytes,
                                           int cols, float* __restrict__ out) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int r = blockIdx.y;
    if (c < cols) out[(u64)r * cols + c] = dequant_elem(ty, w + (u64)r * row_bytes, c);
}
