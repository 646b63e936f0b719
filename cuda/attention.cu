// Local multi-query attention (src/model/attention.rs) for a batch of rows (row table as in
// recurrent.cu). The query at position p attends positions max(0, p - W) ..= p: keys of the
// same segment come from this batch's k/v rows, older ones from the sequence's ring buffer
// [S, W, kv_width] (position q in slot q mod W). The ring is written after attending
// (ring_write), which gives W + 1 keys with W slots.
#include "common.cuh"

// Grid: (n_heads, ntok); block 256 (a multiple of 32); dynamic shared memory
// (W + 1 + head_dim) floats.
extern "C" __global__ void attend_rows(const float* __restrict__ q, const float* __restrict__ k,
                                       const float* __restrict__ v, const float* __restrict__ k_ring,
                                       const float* __restrict__ v_ring, float* __restrict__ out,
                                       const int* __restrict__ rows, int n_heads, int n_kv_heads,
                                       int head_dim, int window, float scale) {
    extern __shared__ float smem[];
    __shared__ float red[32];
    int h = blockIdx.x, t = blockIdx.y;
    int seq = rows[4 * t], pos = rows[4 * t + 1], first = rows[4 * t + 2];
    int first_pos = rows[4 * first + 1];
    int qw = n_heads * head_dim, kvw = n_kv_heads * head_dim;
    int kvh = h / (n_heads / n_kv_heads);
    int lo = pos > window ? pos - window : 0;
    int n_keys = pos - lo + 1;
    float* scores = smem;
    float* qs = smem + window + 1;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[(u64)t * qw + (u64)h * head_dim + d];
    __syncthreads();
    const float* kr_base = k_ring + (u64)seq * window * kvw + (u64)kvh * head_dim;
    const float* vr_base = v_ring + (u64)seq * window * kvw + (u64)kvh * head_dim;
    // Scores: one warp per key, lanes across the head dims.
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, nw = blockDim.x / WARP;
    for (int i = warp; i < n_keys; i += nw) {
        int p = lo + i;
        const float* kp = p >= first_pos ? k + (u64)(first + (p - first_pos)) * kvw + (u64)kvh * head_dim
                                         : kr_base + (u64)(p % window) * kvw;
        float dot = 0.0f;
        for (int d = lane; d < head_dim; d += WARP) dot += qs[d] * kp[d];
        dot = warp_sum(dot);
        if (lane == 0) scores[i] = dot * scale;
    }
    __syncthreads();
    float m = -3.402823466e38f;
    for (int i = threadIdx.x; i < n_keys; i += blockDim.x) m = fmaxf(m, scores[i]);
    m = block_max(m, red);
    float s = 0.0f;
    for (int i = threadIdx.x; i < n_keys; i += blockDim.x) {
        float e = expf(scores[i] - m);
        scores[i] = e;
        s += e;
    }
    s = block_sum(s, red);
    float inv = 1.0f / s;
    // Output: threads across the head dims, keys in order.
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < n_keys; i++) {
            int p = lo + i;
            const float* vp = p >= first_pos ? v + (u64)(first + (p - first_pos)) * kvw + (u64)kvh * head_dim
                                             : vr_base + (u64)(p % window) * kvw;
            acc += (scores[i] * inv) * vp[d];
        }
        out[(u64)t * qw + (u64)h * head_dim + d] = acc;
    }
}

// Stores the keys/values of the last min(W, len) rows of each segment in slot pos mod W of
// their sequence's ring. Grid: ntok; block 256.
extern "C" __global__ void ring_write(const float* __restrict__ k, const float* __restrict__ v,
                                      float* __restrict__ k_ring, float* __restrict__ v_ring,
                                      const int* __restrict__ rows, int kvw, int window) {
    int t = blockIdx.x;
    int seq = rows[4 * t], pos = rows[4 * t + 1], first = rows[4 * t + 2], len = rows[4 * t + 3];
    if (len - (t - first) > window) return;  // overwritten later in the same segment
    u64 slot = (u64)seq * window + (u64)(pos % window);
    for (int d = threadIdx.x; d < kvw; d += blockDim.x) {
        k_ring[slot * kvw + d] = k[(u64)t * kvw + d];
        v_ring[slot * kvw + d] = v[(u64)t * kvw + d];
    }
}
