// classifier.cu — the fused classifier: softmax cross-entropy over the vocabulary with ignored
// targets, its gradient written in place of the logits, the mean loss as one device scalar, and
// the greedy argmax (CPU reference: src/ops/crossentropy.rs).
//
// Layouts: logits (rows, v) row-major, float or (the _bf16 kernels) __nv_bfloat16; targets (rows)
// i32, negative = ignored (HF's -100); losses (rows) and the mean: always fp32; argmax out (rows)
// i32.
// Precision (_bf16): the logits are widened exactly; max, sum of exp, log and the loss are f32
// exactly as in the fp32 kernel (the loss of the bf16 logits); the dlogits written in place are
// the f32 values (softmax - onehot) * dscale, each rounded to bf16 once.
//
// crossentropy_forward[_bf16]:                          (losses: =; logits -> dlogits: = in place)
//   m = max_i x[i];  s = sum_i exp(x[i] - m);  losses[r] = log(s) - (x[t] - m)
//   with has_dscale: x[i] <- exp(x[i] - m) / s * dscale, and x[t] -= dscale (the probabilities are
//   never stored anywhere else). dscale_at: NULL (dscale is the by-value argument), or, inside a
//   captured step graph, the device's step scalar holding it (src/device/step.rs: 1 / the batch's
//   target count, read when the kernel runs). Ignored row (t < 0): loss 0, dlogits 0. A target >= v (the host
//   validates targets, so only a bug gets here): loss NaN, so the mean shows it, dlogits 0; nothing
//   is read or written outside the row.
//   Launch: one block of CE_BLOCK (512) threads per row, grid rows; each thread strides over the
//   row (bf16: over its 16-byte chunks, see "Vector loads" below), then a block reduction (xor-butterfly per warp, then the warps' results added in warp
//   order by every thread). Three passes over the row (max, sum, gradient): at V = 50260 a row is
//   200 KB (bf16: 100 KB) and stays in L2 between passes.
//
// crossentropy_mean (fp32 only: it reads the losses):                          (out[0]: =)
//   out[0] = (sum over rows with target >= 0 of losses[r], in f64) / (number of such rows), cast
//   to f32 (the model's text loss, formed on the device so training needs no host read per op).
//   NaN when no row has a target (0/0, as torch's mean reduction).
//   Launch: ONE block of 256 threads; thread i sums rows i, i+256, ... in f64, then a fixed
//   tree (shared memory, halving strides) adds the 256 partials.
//
// argmax_forward[_bf16]:                                                         (out: =)
//   out[r] = the lowest index of the largest logit of row r (ties go to the lower index, as the CPU
//   reference). NaN logits never win (the CPU's sequential `>` scan differs only for rows with a
//   NaN, which greedy decoding never sees). Launch: one block of CE_BLOCK threads per row.
//
// Vector loads (the _bf16 kernels): a row of odd length v (GPT-2's 50257) starts at any 2-byte
// offset from a 16-byte boundary, so each row is split by ITS address: the head (the h < 8
// elements before the row's first 16-byte boundary), the aligned middle as chunks of 8 (one 16-byte
// load, and for the gradient one 16-byte store, each), and the tail (< 8 elements). Thread t takes
// head element t, chunks t, t + CE_BLOCK, t + 2 CE_BLOCK, ..., tail element t, in that order; its
// partial max/sum runs over those elements in that order, then the block reduction as in fp32.
// The max and argmax do not depend on the order (fmaxf; lowest index of the maximum); the sum of
// exp does, so it is fixed by (v, the row's address mod 16) — not by the row index alone. The
// fp32 kernels keep the strided split (thread t: elements t, t + CE_BLOCK, ...).
//
// Determinism: no atomics; every reduction's order is fixed by (rows, v) and the constant block
// sizes, and in the _bf16 crossentropy also by each row's address mod 16: the same logits at the
// same address mod 16 (e.g. at the same element offset into any allocation: both devices align
// allocations to at least 16 bytes) give the same bits run to run and under any block schedule; the same
// row at another address mod 16 may differ in the last bits of its loss and dlogits (f32
// reassociation, within the tolerances). argmax is exact and independent of alignment. exp/log
// are the device's libm (CUDA's within 2 ulp, the emulated device uses the host's): emu and cuda
// agree to a few ulp, not bit for bit.
#include "common.cuh"

#define CE_BLOCK 512
#define CE_WARPS (CE_BLOCK / 32)
#define CE_MEAN_BLOCK 256

// Sum over the block: every thread gets the same bits (warp butterflies, then warps in order).
__device__ __forceinline__ float classifier_block_sum(float v, float* scratch) {
    v = warp_reduce_sum(v);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    __syncthreads();  // scratch may still be read by the previous reduction
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < CE_WARPS; w++) {
        total += scratch[w];
    }
    return total;
}

__device__ __forceinline__ float classifier_block_max(float v, float* scratch) {
    v = warp_reduce_max(v);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    float m = scratch[0];
    for (int w = 1; w < CE_WARPS; w++) {
        m = fmaxf(m, scratch[w]);
    }
    return m;
}

// The bf16 row split (see the header): `head` elements before the row's first 16-byte boundary,
// `chunks` aligned 8-element chunks from there, then the tail (fewer than 8) up to v.
struct ClassifierSplit {
    int head;
    int chunks;
    int tail;  // index of the first tail element
};

__device__ __forceinline__ ClassifierSplit classifier_split(const __nv_bfloat16* x, int v) {
    const int past = static_cast<int>((reinterpret_cast<uintptr_t>(x) & 15) >> 1);  // bf16s past a boundary
    const int head = min((8 - past) & 7, v);
    const int chunks = (v - head) >> 3;
    return {head, chunks, head + 8 * chunks};
}

// Calls f(i, x[i]) for this thread's elements of a bf16 row, in its fixed order: head element
// threadIdx.x, chunks threadIdx.x, threadIdx.x + CE_BLOCK, ... (one 16-byte load each), tail
// element threadIdx.x.
template <class F>
__device__ __forceinline__ void classifier_bf16_visit(const __nv_bfloat16* x, int v, F f) {
    const ClassifierSplit sp = classifier_split(x, v);
    const int t = threadIdx.x;
    if (t < sp.head) {
        f(t, __bfloat162float(x[t]));
    }
    for (int q = t; q < sp.chunks; q += CE_BLOCK) {
        const int i0 = sp.head + 8 * q;
        float e[8];
        load_bf16x8(e, x + i0);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            f(i0 + k, e[k]);
        }
    }
    if (t < v - sp.tail) {
        f(sp.tail + t, __bfloat162float(x[sp.tail + t]));
    }
}

// x[i] <- f(i, x[i]) (computed in f32, rounded once) over this thread's elements of a bf16 row, in
// the split of classifier_bf16_visit (one 16-byte load and store per chunk).
template <class F>
__device__ __forceinline__ void classifier_bf16_map(__nv_bfloat16* x, int v, F f) {
    const ClassifierSplit sp = classifier_split(x, v);
    const int t = threadIdx.x;
    if (t < sp.head) {
        x[t] = __float2bfloat16_rn(f(t, __bfloat162float(x[t])));
    }
    for (int q = t; q < sp.chunks; q += CE_BLOCK) {
        const int i0 = sp.head + 8 * q;
        float e[8];
        load_bf16x8(e, x + i0);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            e[k] = f(i0 + k, e[k]);
        }
        store_bf16x8(x + i0, e);
    }
    if (t < v - sp.tail) {
        const int i = sp.tail + t;
        x[i] = __float2bfloat16_rn(f(i, __bfloat162float(x[i])));
    }
}

template <class T>
__device__ __forceinline__ void crossentropy_forward_impl(float* __restrict__ losses, T* __restrict__ logits,
                                                          const int* __restrict__ targets, int rows, int v,
                                                          float dscale, int has_dscale) {
    __shared__ float scratch[CE_WARPS];
    const int r = blockIdx.x;
    if (r >= rows) {
        return;  // whole block
    }
    T* x = logits + static_cast<long long>(r) * v;
    const int t = targets[r];
    constexpr bool vec = ACT_PER_THREAD<T> == 8;  // bf16: the split rows of the header
    if (t < 0 || t >= v) {
        if (has_dscale) {
            if constexpr (vec) {
                classifier_bf16_map(x, v, [](int, float) { return 0.0f; });
            } else {
                for (int i = threadIdx.x; i < v; i += CE_BLOCK) {
                    x[i] = from_float<T>(0.0f);
                }
            }
        }
        if (threadIdx.x == 0) {
            losses[r] = t < 0 ? 0.0f : __int_as_float(0x7fc00000);  // NaN flags a bad target
        }
        return;
    }

    float m = -INFINITY;
    if constexpr (vec) {
        classifier_bf16_visit(x, v, [&](int, float xi) { m = fmaxf(m, xi); });
    } else {
        for (int i = threadIdx.x; i < v; i += CE_BLOCK) {
            m = fmaxf(m, to_float(x[i]));
        }
    }
    m = classifier_block_max(m, scratch);

    float s = 0.0f;
    if constexpr (vec) {
        classifier_bf16_visit(x, v, [&](int, float xi) { s += expf(xi - m); });
    } else {
        for (int i = threadIdx.x; i < v; i += CE_BLOCK) {
            s += expf(to_float(x[i]) - m);
        }
    }
    s = classifier_block_sum(s, scratch);

    if (threadIdx.x == 0) {
        // read x[t] before the gradient pass below overwrites it (the barrier orders the two)
        losses[r] = logf(s) - (to_float(x[t]) - m);
    }
    if (has_dscale) {
        __syncthreads();
        const float inv = 1.0f / s;
        if constexpr (vec) {
            classifier_bf16_map(x, v, [&](int i, float xi) {
                float d = expf(xi - m) * inv * dscale;
                if (i == t) {
                    d -= dscale;
                }
                return d;
            });
        } else {
            for (int i = threadIdx.x; i < v; i += CE_BLOCK) {
                float d = expf(to_float(x[i]) - m) * inv * dscale;
                if (i == t) {
                    d -= dscale;
                }
                x[i] = from_float<T>(d);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(CE_BLOCK)
    crossentropy_forward(float* __restrict__ losses, float* __restrict__ logits, const int* __restrict__ targets,
                         int rows, int v, float dscale, int has_dscale, const float* __restrict__ dscale_at) {
    crossentropy_forward_impl(losses, logits, targets, rows, v, dscale_at != nullptr ? *dscale_at : dscale,
                              has_dscale);
}

extern "C" __global__ void __launch_bounds__(CE_BLOCK)
    crossentropy_forward_bf16(float* __restrict__ losses, __nv_bfloat16* __restrict__ logits,
                              const int* __restrict__ targets, int rows, int v, float dscale, int has_dscale,
                              const float* __restrict__ dscale_at) {
    crossentropy_forward_impl(losses, logits, targets, rows, v, dscale_at != nullptr ? *dscale_at : dscale,
                              has_dscale);
}

extern "C" __global__ void __launch_bounds__(CE_MEAN_BLOCK)
    crossentropy_mean(float* __restrict__ out, const float* __restrict__ losses, const int* __restrict__ targets,
                      int rows) {
    __shared__ double sums[CE_MEAN_BLOCK];
    __shared__ int counts[CE_MEAN_BLOCK];
    double s = 0.0;
    int n = 0;
    for (int r = threadIdx.x; r < rows; r += CE_MEAN_BLOCK) {
        if (targets[r] >= 0) {
            s += static_cast<double>(losses[r]);
            n += 1;
        }
    }
    sums[threadIdx.x] = s;
    counts[threadIdx.x] = n;
    __syncthreads();
    for (int stride = CE_MEAN_BLOCK / 2; stride > 0; stride >>= 1) {
        if (static_cast<int>(threadIdx.x) < stride) {
            sums[threadIdx.x] += sums[threadIdx.x + stride];
            counts[threadIdx.x] += counts[threadIdx.x + stride];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[0] = static_cast<float>(sums[0] / static_cast<double>(counts[0]));
    }
}

template <class T>
__device__ __forceinline__ void argmax_forward_impl(int* __restrict__ out, const T* __restrict__ logits, int rows,
                                                    int v) {
    __shared__ float best_v[CE_WARPS];
    __shared__ int best_i[CE_WARPS];
    const int r = blockIdx.x;
    if (r >= rows) {
        return;
    }
    const T* x = logits + static_cast<long long>(r) * v;
    // (value, index) with index v meaning "none yet"; a candidate wins when larger, or equal with a
    // lower index, so the result is the lowest index of the maximum whatever the order.
    float bv = -INFINITY;
    int bi = v;
    if constexpr (ACT_PER_THREAD<T> == 8) {
        classifier_bf16_visit(x, v, [&](int i, float xi) {
            if (xi > bv || (xi == bv && i < bi)) {
                bv = xi;
                bi = i;
            }
        });
    } else {
        for (int i = threadIdx.x; i < v; i += CE_BLOCK) {
            const float xi = to_float(x[i]);
            if (xi > bv || (xi == bv && i < bi)) {
                bv = xi;
                bi = i;
            }
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, offset);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, offset);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) {
        best_v[warp] = bv;
        best_i[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 0; w < CE_WARPS; w++) {
            if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) {
                bv = best_v[w];
                bi = best_i[w];
            }
        }
        out[r] = bi < v ? bi : 0;  // an all-NaN row: index 0, as the CPU's scan
    }
}

extern "C" __global__ void __launch_bounds__(CE_BLOCK)
    argmax_forward(int* __restrict__ out, const float* __restrict__ logits, int rows, int v) {
    argmax_forward_impl(out, logits, rows, v);
}

extern "C" __global__ void __launch_bounds__(CE_BLOCK)
    argmax_forward_bf16(int* __restrict__ out, const __nv_bfloat16* __restrict__ logits, int rows, int v) {
    argmax_forward_impl(out, logits, rows, v);
}
