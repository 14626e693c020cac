// global_norm.cu — the global L2 norm of a flat gradient buffer as a device scalar, and torch's
// clip_grad_norm_ scaling reading that scalar (CPU reference: src/ops/global_norm.rs).
//
// global_norm_partial (pass 1):                                          (partials[0..G): =)
//   partials[blk] = sum of x[i]^2 over i = blk*GN_BLOCK + t + k*G*GN_BLOCK (grid-stride), each
//   thread in index order, then the block's warps (xor butterfly) and the warps in warp order.
//   Launch: G blocks of GN_BLOCK (256) threads, G = clamp(CEIL_DIV(n, 256*8), 1, 512), computed by
//   the launcher from n alone.
// global_norm_final (pass 2):                                                  (norm[0]: =)
//   norm[0] = sqrtf(sum_blk partials[blk]), one block of GN_BLOCK threads, same block reduction.
//   Determinism: no atomics; the order of every addition is fixed by n, so the norm is
//   bit-reproducible across runs and schedules. f32 accumulation (the CPU reference sums in f64):
//   relative error ~1e-6 for a model's worth of gradients.
//
// scale_by_clip:                                                               (x: = in place)
//   coef = max_norm / (norm[0] + 1e-6); coef = min(coef, 1) (NaN stays NaN, as torch's clamp);
//   x[i] *= coef. torch's clip_grad_norm_ formula, read from device memory (no host round trip).
//   Launch: block 256, grid CEIL_DIV(n, 256), a thread per element. f32 IEEE ops: exact vs CPU.
#include "common.cuh"

#define GN_BLOCK 256
#define GN_WARPS (GN_BLOCK / 32)

__device__ __forceinline__ float global_norm_block_sum(float v) {
    __shared__ float warp_sums[GN_WARPS];
    v = warp_reduce_sum(v);
    if (threadIdx.x % 32 == 0) {
        warp_sums[threadIdx.x / 32] = v;
    }
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < GN_WARPS; w++) {
        total += warp_sums[w];
    }
    return total;
}

extern "C" __global__ void __launch_bounds__(GN_BLOCK)
    global_norm_partial(float* __restrict__ partials, const float* __restrict__ x, long long n) {
    float acc = 0.0f;
    const long long stride = static_cast<long long>(gridDim.x) * GN_BLOCK;
    for (long long i = static_cast<long long>(blockIdx.x) * GN_BLOCK + threadIdx.x; i < n; i += stride) {
        const float v = x[i];
        acc += v * v;
    }
    const float total = global_norm_block_sum(acc);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = total;
    }
}

extern "C" __global__ void __launch_bounds__(GN_BLOCK)
    global_norm_final(float* __restrict__ norm, const float* __restrict__ partials, int num_partials) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < num_partials; i += GN_BLOCK) {
        acc += partials[i];
    }
    const float total = global_norm_block_sum(acc);
    if (threadIdx.x == 0) {
        norm[0] = sqrtf(total);
    }
}

extern "C" __global__ void scale_by_clip(float* __restrict__ x, const float* __restrict__ norm, float max_norm,
                                         long long n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    float coef = max_norm / (norm[0] + 1e-6f);
    coef = coef > 1.0f ? 1.0f : coef;
    x[i] = x[i] * coef;
}
