// The recurrent block's sequence operations (src/model/recurrent.rs) over a batch of rows
// made of segments: a segment is a run of consecutive rows of one sequence (a prompt chunk,
// or one decode token per sequence in batched decoding). Segment table: 3 ints per segment
// (first row, row count, sequence slot); row table: 4 ints per row (sequence slot, absolute
// position, first row of its segment, segment length). State arrays have a sequence
// dimension: conv tails [S, K-1, L], RG-LRU states [S, L].
#include "common.cuh"

#define CONV_MAX_HIST 15

// out[t, c] = b[c] + sum_k w[k, c] x[t - (K-1) + k, c], inputs before the segment from the
// tail (zeros when the segment starts at position 0: a new sequence), then the tail becomes
// the last K-1 inputs. One thread per (channel, segment),
// looping over the segment's rows. Grid: (ceil(L / 128), n_segments); block 128.
extern "C" __global__ void conv1d_segments(const float* __restrict__ x, float* __restrict__ tail,
                                           const float* __restrict__ w, const float* __restrict__ b,
                                           float* __restrict__ out, const int* __restrict__ segs,
                                           const int* __restrict__ rows, int L, int K) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= L) return;
    int first = segs[3 * blockIdx.y], len = segs[3 * blockIdx.y + 1], seq = segs[3 * blockIdx.y + 2];
    int hist = K - 1;
    float* tl = tail + (u64)seq * hist * L;
    float h[CONV_MAX_HIST];  // previous inputs, oldest first
    bool fresh = rows[4 * first + 1] == 0;
    for (int i = 0; i < hist; i++) h[i] = fresh ? 0.0f : tl[(u64)i * L + c];
    for (int t = 0; t < len; t++) {
        u64 idx = (u64)(first + t) * L + c;
        float xt = x[idx];
        // Same order as the CPU: current tap first, bias last.
        float acc = xt * w[(u64)hist * L + c];
        for (int shift = 1; shift < K; shift++) acc += h[hist - shift] * w[(u64)(hist - shift) * L + c];
        out[idx] = acc + b[c];
        for (int i = 0; i + 1 < hist; i++) h[i] = h[i + 1];
        if (hist > 0) h[hist - 1] = xt;
    }
    for (int i = 0; i < hist; i++) tl[(u64)i * L + c] = h[i];
}

// RG-LRU: log_a = -8 sigmoid(gate_a) softplus(Lambda), a = exp(log_a),
// m = sqrt(-expm1(2 log_a)), h = a h + x sigmoid(gate_x) m; at position 0 h = x sigmoid(gate_x).
// Writes h_t to out. Grid: (ceil(L / 128), n_segments); block 128.
extern "C" __global__ void rglru_segments(const float* __restrict__ x, const float* __restrict__ gate_x,
                                          const float* __restrict__ gate_a,
                                          const float* __restrict__ softplus_a, float* __restrict__ state,
                                          float* __restrict__ out, const int* __restrict__ segs,
                                          const int* __restrict__ rows, int L) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= L) return;
    int first = segs[3 * blockIdx.y], len = segs[3 * blockIdx.y + 1], seq = segs[3 * blockIdx.y + 2];
    float* hs = state + (u64)seq * L + c;
    float h = *hs;
    float sp = softplus_a[c];
    for (int t = 0; t < len; t++) {
        u64 idx = (u64)(first + t) * L + c;
        int pos = rows[4 * (first + t) + 1];
        float gated = x[idx] * sigmoidf_(gate_x[idx]);
        float log_a = -8.0f * sigmoidf_(gate_a[idx]) * sp;
        if (pos == 0) {
            h = gated;
        } else {
            float a = expf(log_a);
            float m = sqrtf(-expm1f(2.0f * log_a));
            h = a * h + gated * m;
        }
        out[idx] = h;
    }
    *hs = h;
}
