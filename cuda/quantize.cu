// f32 activation rows -> q8_1 blocks (one warp per 32 values), the input of the integer
// dot-product kernels in mmvq.cu.
#include "common.cuh"

// x: [rows, x_stride] f32, the first `cols` values of each row are quantized (cols % 32 == 0).
// out: [rows, cols/32] blocks. Grid: (ceil(cols/32 / 8), rows), block 256 = 8 warps.
extern "C" __global__ void quantize_q8_1(const float* __restrict__ x, int x_stride, int cols,
                                         q8_1_block* __restrict__ out) {
    int lane = threadIdx.x % WARP;
    int blk = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    int row = blockIdx.y;
    int nblk = cols / 32;
    if (blk >= nblk) return;
    float v = x[(size_t)row * x_stride + blk * 32 + lane];
    float amax = warp_max(fabsf(v));
    float d = amax / 127.0f;
    int q = amax == 0.0f ? 0 : __float2int_rn(v / d);
    // Sum of the codes (exact in f32 for |sum| <= 32*127).
    float qsum = warp_sum((float)q);
    q8_1_block* b = out + (size_t)row * nblk + blk;
    b->qs[lane] = (i8)q;
    if (lane == 0) {
        b->d = d;
        b->s = d * qsum;
    }
}
