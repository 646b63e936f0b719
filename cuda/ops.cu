// Row-wise and elementwise operations of the forward pass (mirroring src/model/ops.rs), the
// embedding lookup, the soft-capped head's cap, and argmax.
#include "common.cuh"

// out[t, :] = W[ids[t], :] * scale. Grid: (ceil(hidden / 256), ntok); block 256.
extern "C" __global__ void embed_rows(const u8* __restrict__ w, int ty, u64 row_bytes,
                                      const int* __restrict__ ids, int hidden, float scale,
                                      float* __restrict__ out) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    int t = blockIdx.y;
    if (c < hidden) out[(u64)t * hidden + c] = dequant_elem(ty, w + (u64)ids[t] * row_bytes, c) * scale;
}

// out[t, :] = x[t, :] / sqrt(mean(x^2) + eps) * weight. Grid: rows; block 256.
extern "C" __global__ void rmsnorm_rows(const float* __restrict__ x, int x_stride,
                                        const float* __restrict__ weight, int width, float eps,
                                        float* __restrict__ out) {
    __shared__ float red[32];
    const float* xr = x + (u64)blockIdx.x * x_stride;
    float* o = out + (u64)blockIdx.x * width;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) ss += xr[c] * xr[c];
    ss = block_sum(ss, red);
    float inv = 1.0f / sqrtf(ss / (float)width + eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) o[c] = xr[c] * inv * weight[c];
}

// acc += x (n values). Grid-stride.
extern "C" __global__ void add_in_place(float* __restrict__ acc, const float* __restrict__ x, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        acc[i] += x[i];
}

// x = gelu_tanh(x).
extern "C" __global__ void gelu_in_place(float* __restrict__ x, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = gelu_tanh(x[i]);
}

// gate = gelu_tanh(gate) * up (the GeGLU MLP's merge).
extern "C" __global__ void geglu_in_place(float* __restrict__ gate, const float* __restrict__ up, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        gate[i] = gelu_tanh(gate[i]) * up[i];
}

// a *= b.
extern "C" __global__ void mul_in_place(float* __restrict__ a, const float* __restrict__ b, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        a[i] *= b[i];
}

// x = cap * tanh(x / cap) (cap > 0).
extern "C" __global__ void softcap_in_place(float* __restrict__ x, u64 n, float cap) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] = cap * tanhf(x[i] / cap);
}

// NeoX rotation of the first 2*half dims of every head of row t, at the row's position
// (second int of its row-table entry, see recurrent.cu):
// angle = f32(pos) * inv_freq[j] in f32 (inv_freq computed on the host exactly as
// ops.rs::rope_tables), cos/sin in f64 as the CPU does. Grid: (n_heads, ntok); block >= half.
extern "C" __global__ void rope_rows(float* __restrict__ x, int row_stride, int head_dim, int half,
                                     const float* __restrict__ inv_freq, const int* __restrict__ rows) {
    int t = blockIdx.y, h = blockIdx.x;
    float* hd = x + (u64)t * row_stride + (u64)h * head_dim;
    float p = (float)rows[4 * t + 1];
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        double ang = (double)(p * inv_freq[j]);
        float c = (float)cos(ang), s = (float)sin(ang);
        float a = hd[j], b = hd[j + half];
        hd[j] = a * c - b * s;
        hd[j + half] = b * c + a * s;
    }
}

// Index of the largest value of each row (ties: lowest index, as torch.argmax). NaN is never
// chosen over a number. Grid: rows; block 1024.
extern "C" __global__ void argmax_rows(const float* __restrict__ x, int n, int* __restrict__ out) {
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    const float* xr = x + (u64)blockIdx.x * n;
    float bv = -3.402823466e38f;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i];
        if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    if (lane == 0) { best_v[warp] = bv; best_i[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x / WARP;
        bv = lane < nw ? best_v[lane] : -3.402823466e38f;
        bi = lane < nw ? best_i[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if (lane == 0) out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
    }
}
