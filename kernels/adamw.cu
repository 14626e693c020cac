// adamw.cu — the AdamW update, bit-identical to the CPU reference (src/ops/adamw.rs), in both
// formulas: `torch.optim.AdamW` (variant 0) and `transformers.AdamW` (variant 1).
//
// Scalars come from the host, derived in f64 exactly as ops::adamw does (AdamWScalars, HfScalars)
// and cast to f32 once; every element op below is the CPU's, in the CPU's order, one IEEE f32
// operation each. FMAs are written as __fmaf_rn where the CPU uses mul_add, and every other
// product feeding an add is __fmul_rn, so nvcc cannot contract it into an FMA the CPU does not do.
// sqrtf and `/` are IEEE (no --use_fast_math). So p, m and v match the CPU bit for bit.
//
//   torch:  p = p * decay                         (decay = 1 - lr*wd; 1 for tensors without decay)
//           m = fma(1-b1, g - m, m);   v = fma((1-b2) * g, g, v * b2)
//           p = p + (neg_step * m) / (sqrt(v) / sqrt(1-b2^t) + eps)
//   hf:     m = fma(g, 1-b1, m * b1);  v = fma((1-b2) * g, g, v * b2)
//           p = p + (neg_step * m) / (sqrt(v) + eps);  if decay: p = fma(p, -lr*wd, p)
// All of p, m, v are updated in place (=). Elementwise: deterministic by construction.
//
// adamw_update: one tensor of n elements (step_at as below). Launch: block 256, grid
//   CEIL_DIV(n, 256).
// adamw_update_multi: every trainable tensor of one flat parameter/grad/m/v allocation in ONE
//   launch. `blocks` (i32, 3 per block, built once on the host by AdamWPlan): block b updates
//   elements [start, start + len) (len <= ADAMW_CHUNK = 4096 of src/kernels/adamw.rs, one tensor's
//   slice) with weight decay iff flag != 0 and has_decay (hf with wd = 0 never decays; torch
//   tensors without decay skip the multiplication by 1 - lr*0 = 1, which is exact). Frozen tensors
//   and gaps between tensors have no block and are never touched.
//   Mixed precision (src/precision.rs): `copy`, when not NULL, is the bf16 copy of the parameters
//   the GEMMs read, laid out like p (same offsets): every updated element also gets
//   copy[i] = bf16(p[i]) (=, round to nearest even) from the new f32 value, in the same launch;
//   copies of frozen tensors and gaps are not touched (cast_f32_to_bf16 initialises them). p, m, v
//   are f32 and bit-identical with or without the copy.
//   step_at: NULL (the eight float arguments beta1 .. decay are used), or, inside a captured step
//   graph, the device's step scalars holding those eight values in that order (src/device/step.rs):
//   read when the kernel runs, so a replay applies that step's bias corrections and learning rate.
//   Launch: grid nblocks, block ADAMW_BLOCK (256); threads stride over the block's chunk.
// cast_f32_to_bf16: out[i] = bf16(inp[i]) (=, round to nearest even) for i < n: the bf16 copy of
//   f32 masters after a load or init (frozen tensors too). Each thread converts 8 elements: one
//   pair of 16-byte float4 loads and one 16-byte store of 8 packed bf16 when both pointers are
//   16-byte aligned (then every 8-element group is), else 8 scalar conversions; the last n % 8
//   elements are scalar. Each element is rounded on its own, so the result does not depend on
//   alignment. Launch: block 256, grid CEIL_DIV(CEIL_DIV(n, 8), 256).
#include "common.cuh"

#define ADAMW_BLOCK 256

struct AdamWArgs {
    int variant;  // 0 torch, 1 hf
    float beta1, one_minus_beta1, beta2, one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size;
    float decay;  // torch: 1 - lr*wd; hf: -lr*wd
};

__device__ __forceinline__ float adamw_element(float* __restrict__ p, const float* __restrict__ g,
                                              float* __restrict__ m, float* __restrict__ v, long long i,
                                              const AdamWArgs& a, bool decay) {
    const float gi = g[i];
    const float mo = m[i];
    const float vo = v[i];
    const float vi = __fmaf_rn(__fmul_rn(a.one_minus_beta2, gi), gi, __fmul_rn(vo, a.beta2));
    float mi, pi;
    if (a.variant == 0) {
        const float p0 = decay ? __fmul_rn(p[i], a.decay) : p[i];
        mi = __fmaf_rn(a.one_minus_beta1, gi - mo, mo);
        const float denom = sqrtf(vi) / a.bias_correction2_sqrt + a.eps;
        pi = p0 + (__fmul_rn(a.neg_step_size, mi)) / denom;
    } else {
        mi = __fmaf_rn(gi, a.one_minus_beta1, __fmul_rn(mo, a.beta1));
        const float denom = sqrtf(vi) + a.eps;
        pi = p[i] + (__fmul_rn(a.neg_step_size, mi)) / denom;
        if (decay) {
            pi = __fmaf_rn(pi, a.decay, pi);
        }
    }
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    return pi;
}

extern "C" __global__ void adamw_update(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                        float* __restrict__ v, int n, int variant, float beta1,
                                        float one_minus_beta1, float beta2, float one_minus_beta2,
                                        float bias_correction2_sqrt, float eps, float neg_step_size, float decay,
                                        int has_decay, const float* __restrict__ step_at) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    const AdamWArgs a = step_at == nullptr
                            ? AdamWArgs{variant, beta1, one_minus_beta1, beta2, one_minus_beta2,
                                        bias_correction2_sqrt, eps, neg_step_size, decay}
                            : AdamWArgs{variant, step_at[0], step_at[1], step_at[2], step_at[3],
                                        step_at[4], step_at[5], step_at[6], step_at[7]};
    adamw_element(p, g, m, v, i, a, has_decay != 0);
}

extern "C" __global__ void __launch_bounds__(ADAMW_BLOCK)
    adamw_update_multi(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                       float* __restrict__ v, __nv_bfloat16* __restrict__ copy,
                       const int* __restrict__ blocks, int nblocks, int variant,
                       float beta1, float one_minus_beta1, float beta2, float one_minus_beta2,
                       float bias_correction2_sqrt, float eps, float neg_step_size, float decay,
                       int has_decay, const float* __restrict__ step_at) {
    if (static_cast<int>(blockIdx.x) >= nblocks) {
        return;
    }
    const int* e = blocks + 3 * static_cast<long long>(blockIdx.x);
    const long long start = e[0];
    const int len = e[1];
    const bool dec = e[2] != 0 && has_decay != 0;
    const AdamWArgs a = step_at == nullptr
                            ? AdamWArgs{variant, beta1, one_minus_beta1, beta2, one_minus_beta2,
                                        bias_correction2_sqrt, eps, neg_step_size, decay}
                            : AdamWArgs{variant, step_at[0], step_at[1], step_at[2], step_at[3],
                                        step_at[4], step_at[5], step_at[6], step_at[7]};
    for (int k = threadIdx.x; k < len; k += blockDim.x) {
        const float pi = adamw_element(p, g, m, v, start + k, a, dec);
        if (copy != nullptr) {
            copy[start + k] = __float2bfloat16_rn(pi);
        }
    }
}

extern "C" __global__ void cast_f32_to_bf16(__nv_bfloat16* __restrict__ out, const float* __restrict__ inp,
                                            long long n) {
    const long long i0 = 8 * (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x);
    if (i0 >= n) {
        return;
    }
    const bool aligned = (reinterpret_cast<uintptr_t>(out) % 16 == 0) && (reinterpret_cast<uintptr_t>(inp) % 16 == 0);
    if (aligned && i0 + 8 <= n) {
        const float4 lo = load_vec<float4>(inp + i0);
        const float4 hi = load_vec<float4>(inp + i0 + 4);
        uint4 packed;
        packed.x = pack_bf16x2(__float2bfloat16_rn(lo.x), __float2bfloat16_rn(lo.y));
        packed.y = pack_bf16x2(__float2bfloat16_rn(lo.z), __float2bfloat16_rn(lo.w));
        packed.z = pack_bf16x2(__float2bfloat16_rn(hi.x), __float2bfloat16_rn(hi.y));
        packed.w = pack_bf16x2(__float2bfloat16_rn(hi.z), __float2bfloat16_rn(hi.w));
        store_vec<uint4>(out + i0, packed);
        return;
    }
    const long long end = i0 + 8 < n ? i0 + 8 : n;
    for (long long i = i0; i < end; i++) {
        out[i] = __float2bfloat16_rn(inp[i]);
    }
}
