// dropout.cu — inverted dropout with the counter-based mask of dropout_hash.cuh (CPU reference:
// src/ops/dropout.rs, `dropout_forward`). The backward pass is the same kernel applied to the
// incoming gradient with the same (seed, step, site): the mask is recomputed, never stored.
//
// dropout_forward:  out[i] = inp[i] * (keep(i) ? 1 / (1 - p) : 0)                     (out: =)
//   keep(i) from hash(seed, step, site, i): element i of the call is counter i, exactly as on the
//   CPU. One multiply per element and an integer hash: bit-identical to the CPU on every device.
//   out may alias inp (in-place dropout): each thread reads its element before writing it.
//   Layout: flat fp32 arrays of n elements. Launch: block 256, grid CEIL_DIV(n, 256), a thread
//   per element (64-bit counters). No reductions: deterministic.
#include "dropout_hash.cuh"

extern "C" __global__ void dropout_forward(float* out, const float* inp, int n, unsigned long long seed,
                                           unsigned long long step, unsigned int site, float p) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    const unsigned long long key = dropout_key(seed, step, site);
    out[i] = inp[i] * dropout_scale_at(key, static_cast<unsigned long long>(i), p);
}
