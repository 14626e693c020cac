// dropout.cu — inverted dropout with the counter-based mask of dropout_hash.cuh (CPU reference:
// src/ops/dropout.rs, `dropout_forward`). The backward pass is the same kernel applied to the
// incoming gradient with the same (seed, step, site): the mask is recomputed, never stored.
//
// dropout_forward[_bf16]:  out[i] = inp[i] * (keep(i) ? 1 / (1 - p) : 0)              (out: =)
//   keep(i) from hash(seed, step, site, i): element i of the call is counter i, exactly as on the
//   CPU (the same mask in fp32 and bf16). One multiply per element (bf16: of the exactly widened
//   input, rounded to bf16 once) and an integer hash: bit-identical to the CPU on every device.
//   out may alias inp (in-place dropout): each thread reads its elements before writing them.
//   step_at: NULL (the step is the by-value `step`), or, inside a captured step graph, the
//   device's step scalar holding it (src/device/step.rs): read when the kernel runs, so each
//   replay draws that step's mask.
//   Layout: flat arrays of n elements, float or (_bf16) __nv_bfloat16.
//   Launch: block 256, 64-bit counters; fp32: grid CEIL_DIV(n, 256), a thread per element; bf16:
//   grid CEIL_DIV(n, 8 * 256), 8 elements per thread (one 16-byte access per array when both
//   views are 16-byte aligned, element by element otherwise: act_map1 in common.cuh). No
//   reductions: deterministic.
#include "dropout_hash.cuh"

template <class T>
__device__ __forceinline__ void dropout_forward_impl(T* out, const T* inp, int n, unsigned long long seed,
                                                     unsigned long long step, const unsigned long long* step_at,
                                                     unsigned int site, float p) {
    const unsigned long long key = dropout_key(seed, step_at != nullptr ? *step_at : step, site);
    act_map1(out, inp, n, [key, p](long long i, float x) {
        return x * dropout_scale_at(key, static_cast<unsigned long long>(i), p);
    });
}

extern "C" __global__ void dropout_forward(float* out, const float* inp, int n, unsigned long long seed,
                                           unsigned long long step, const unsigned long long* step_at,
                                           unsigned int site, float p) {
    dropout_forward_impl(out, inp, n, seed, step, step_at, site, p);
}

extern "C" __global__ void dropout_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* inp, int n,
                                                unsigned long long seed, unsigned long long step,
                                                const unsigned long long* step_at, unsigned int site, float p) {
    dropout_forward_impl(out, inp, n, seed, step, step_at, site, p);
}
