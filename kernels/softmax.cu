// softmax.cu — row softmax over the last dimension (CPU reference: src/ops/softmax.rs).
//
// softmax_forward: out[r, i] = expf(inp[r, i] - max_r) / sum_j expf(inp[r, j] - max_r)   (out: =)
//   Layout: inp, out row-major rows x c fp32 (any c >= 1, any alignment).
//   Launch: warp per row: block 256 threads (8 warps), grid CEIL_DIV(rows, 8). Lane l visits
//   columns l, l+32, ...: pass 1 finds the row max, pass 2 sums the exponentials, pass 3 writes.
//   Determinism: each lane sums its columns in order, then a fixed xor-butterfly combines the 32
//   lanes (warp_reduce_*): same bits for the same input on a device. Host and CUDA expf differ by
//   an ulp or so, so the emulated device and a GPU agree to a few ulp.
//   A row of all -inf yields NaN (no defined softmax), as the CPU reference and PyTorch do.
#include "common.cuh"

extern "C" __global__ void softmax_forward(float* __restrict__ out, const float* __restrict__ inp, int rows,
                                           int c) {
    const int warps = blockDim.x / 32;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const long long row = static_cast<long long>(blockIdx.x) * warps + warp;
    if (row >= rows) {
        return;  // the whole warp leaves together: no shuffle is left half-attended
    }
    const float* x = inp + row * c;
    float* y = out + row * c;

    float maxval = -INFINITY;
    for (int i = lane; i < c; i += 32) {
        maxval = fmaxf(maxval, x[i]);
    }
    maxval = warp_reduce_max(maxval);

    float sum = 0.0f;
    for (int i = lane; i < c; i += 32) {
        sum += expf(x[i] - maxval);
    }
    sum = warp_reduce_sum(sum);

    for (int i = lane; i < c; i += 32) {
        y[i] = expf(x[i] - maxval) / sum;
    }
}
