// rating.cu — PEPLER's rating heads and their loss (CPU reference: src/ops/rating.rs): the MF dot
// product, the MLP head's sigmoid (its linear layers are matmul), and MSE fused with its gradient.
//
// Layouts: ui (b, 2c) row-major, each row [u | i]; pred, target, dpred, out (b) or (n); flat n for
// the sigmoids.
// Precision: ui, out, dui, dpred of the MF head, the sigmoids' tensors and mse's pred and dpred are
// activations: float, or __nv_bfloat16 in the _bf16 kernels, widened exactly on load, all
// arithmetic and sums in f32 exactly as in the fp32 kernels, each stored activation rounded to bf16
// once. mse's target (data) and loss (a loss scalar) are always fp32.
//
// rating_mf_forward[_bf16]:  out[r] = sum_k u[r,k] * i[r,k]                             (out: =)
//   Launch: a warp per row, block 256 (8 rows), grid CEIL_DIV(b, 8); lanes stride over c, then
//   the xor butterfly: a fixed order (deterministic), not the CPU's sequential one (tolerance).
// rating_mf_backward[_bf16]: dui[r] = [dpred[r] * i[r] | dpred[r] * u[r]]              (dui: =)
//   Launch: a thread per element of dui (b * 2c), block 256. One multiply: exact (in bf16 the
//   product of two bf16 values is exact in f32 and then rounded once, like the CPU reference's).
// sigmoid_forward[_bf16]:    out = 1 / (1 + exp(-inp))                                   (out: =)
// sigmoid_backward[_bf16]:   dinp = dout * out * (1 - out)                              (dinp: =)
//   Launch: block 256; fp32: a thread per element; bf16: 8 elements per thread (one 16-byte access
//   per array when the views are 16-byte aligned, element by element otherwise: act_map1/2 in
//   common.cuh). The backward is exact (no multiply feeds an add); the forward uses the device's
//   expf (CUDA's within 2 ulp of the host's).
// mse_forward[_bf16]:  loss[0] = sum_r (pred[r] - target[r])^2 / n                 (loss[0]: =)
//                      dpred[r] = grad_scale * 2 * (pred[r] - target[r]) / n          (dpred: =)
//   The loss stays on the device (a 1-element buffer; no host read per step). n is the batch
//   (hundreds), so the sum runs in the CPU's order, bit for bit: ONE block of MSE_BLOCK (256)
//   threads squares 256 errors at a time into shared memory and thread 0 adds them in index
//   order (__fmul_rn/__fadd_rn: nvcc may not contract e*e + s into an FMA the CPU does not do).
//   Deterministic and identical to the CPU reference (in bf16: on the widened pred, with dpred
//   rounded); n = 0 gives NaN (0/0) like the CPU.
#include "common.cuh"

#define MSE_BLOCK 256

template <class T>
__device__ __forceinline__ void rating_mf_forward_impl(T* __restrict__ out, const T* __restrict__ ui, int b, int c) {
    const int warps = blockDim.x / 32;
    const long long r = static_cast<long long>(blockIdx.x) * warps + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= b) {
        return;  // whole warp
    }
    const T* u = ui + r * 2 * c;
    const T* it = u + c;
    float s = 0.0f;
    for (int k = lane; k < c; k += 32) {
        s += to_float(u[k]) * to_float(it[k]);
    }
    s = warp_reduce_sum(s);
    if (lane == 0) {
        out[r] = from_float<T>(s);
    }
}

extern "C" __global__ void rating_mf_forward(float* __restrict__ out, const float* __restrict__ ui, int b,
                                             int c) {
    rating_mf_forward_impl(out, ui, b, c);
}

extern "C" __global__ void rating_mf_forward_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ ui,
                                                  int b, int c) {
    rating_mf_forward_impl(out, ui, b, c);
}

template <class T>
__device__ __forceinline__ void rating_mf_backward_impl(T* __restrict__ dui, const T* __restrict__ dpred,
                                                        const T* __restrict__ ui, int b, int c) {
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<long long>(b) * 2 * c) {
        return;
    }
    const long long r = idx / (2 * c);
    const int k = static_cast<int>(idx % (2 * c));
    const T* row = ui + r * 2 * c;
    // du[k] = dpred * i[k]; di[k] = dpred * u[k]
    const T other = k < c ? row[c + k] : row[k - c];
    dui[idx] = from_float<T>(to_float(dpred[r]) * to_float(other));
}

extern "C" __global__ void rating_mf_backward(float* __restrict__ dui, const float* __restrict__ dpred,
                                              const float* __restrict__ ui, int b, int c) {
    rating_mf_backward_impl(dui, dpred, ui, b, c);
}

extern "C" __global__ void rating_mf_backward_bf16(__nv_bfloat16* __restrict__ dui,
                                                   const __nv_bfloat16* __restrict__ dpred,
                                                   const __nv_bfloat16* __restrict__ ui, int b, int c) {
    rating_mf_backward_impl(dui, dpred, ui, b, c);
}

template <class T>
__device__ __forceinline__ void sigmoid_forward_impl(T* out, const T* inp, int n) {
    act_map1(out, inp, n, [](long long, float x) { return 1.0f / (1.0f + expf(-x)); });
}

extern "C" __global__ void sigmoid_forward(float* __restrict__ out, const float* __restrict__ inp, int n) {
    sigmoid_forward_impl(out, inp, n);
}

extern "C" __global__ void sigmoid_forward_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ inp,
                                                int n) {
    sigmoid_forward_impl(out, inp, n);
}

template <class T>
__device__ __forceinline__ void sigmoid_backward_impl(T* dinp, const T* out, const T* dout, int n) {
    act_map2(dinp, out, dout, n, [](long long, float y, float g) { return __fmul_rn(g, y) * (1.0f - y); });
}

extern "C" __global__ void sigmoid_backward(float* __restrict__ dinp, const float* __restrict__ out,
                                            const float* __restrict__ dout, int n) {
    sigmoid_backward_impl(dinp, out, dout, n);
}

extern "C" __global__ void sigmoid_backward_bf16(__nv_bfloat16* __restrict__ dinp, const __nv_bfloat16* __restrict__ out,
                                                 const __nv_bfloat16* __restrict__ dout, int n) {
    sigmoid_backward_impl(dinp, out, dout, n);
}

template <class T>
__device__ __forceinline__ void mse_forward_impl(float* __restrict__ loss, T* __restrict__ dpred,
                                                 const T* __restrict__ pred, const float* __restrict__ target,
                                                 int n, float grad_scale) {
    __shared__ float sq[MSE_BLOCK];
    const float nf = static_cast<float>(n);
    const float scale2 = grad_scale * 2.0f;
    float s = 0.0f;  // thread 0's running sum, in index order
    for (int base = 0; base < n; base += MSE_BLOCK) {
        const int i = base + threadIdx.x;
        if (i < n) {
            const float e = to_float(pred[i]) - target[i];
            sq[threadIdx.x] = __fmul_rn(e, e);
            dpred[i] = from_float<T>(__fmul_rn(scale2, e) / nf);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            const int m = min(MSE_BLOCK, n - base);
            for (int k = 0; k < m; k++) {
                s = __fadd_rn(s, sq[k]);
            }
        }
        __syncthreads();  // sq is rewritten by the next chunk
    }
    if (threadIdx.x == 0) {
        loss[0] = s / nf;
    }
}

extern "C" __global__ void __launch_bounds__(MSE_BLOCK)
    mse_forward(float* __restrict__ loss, float* __restrict__ dpred, const float* __restrict__ pred,
                const float* __restrict__ target, int n, float grad_scale) {
    mse_forward_impl(loss, dpred, pred, target, n, grad_scale);
}

extern "C" __global__ void __launch_bounds__(MSE_BLOCK)
    mse_forward_bf16(float* __restrict__ loss, __nv_bfloat16* __restrict__ dpred,
                     const __nv_bfloat16* __restrict__ pred, const float* __restrict__ target, int n,
                     float grad_scale) {
    mse_forward_impl(loss, dpred, pred, target, n, grad_scale);
}
