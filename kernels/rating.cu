// rating.cu — PEPLER's rating heads and their loss (CPU reference: src/ops/rating.rs): the MF dot
// product, the MLP head's sigmoid (its linear layers are matmul), and MSE fused with its gradient.
//
// Layouts: ui (b, 2c) row-major, each row [u | i]; pred, target, dpred, out (b) or (n); flat n for
// the sigmoids.
//
// rating_mf_forward:  out[r] = sum_k u[r,k] * i[r,k]                                    (out: =)
//   Launch: a warp per row, block 256 (8 rows), grid CEIL_DIV(b, 8); lanes stride over c, then
//   the xor butterfly: a fixed order (deterministic), not the CPU's sequential one (tolerance).
// rating_mf_backward: dui[r] = [dpred[r] * i[r] | dpred[r] * u[r]]                     (dui: =)
//   Launch: a thread per element of dui (b * 2c), block 256. One multiply: exact.
// sigmoid_forward:    out = 1 / (1 + exp(-inp))                                          (out: =)
// sigmoid_backward:   dinp = dout * out * (1 - out)                                     (dinp: =)
//   Launch: a thread per element, block 256. The backward is exact (no multiply feeds an add);
//   the forward uses the device's expf (CUDA's within 2 ulp of the host's).
// mse_forward:  loss[0] = sum_r (pred[r] - target[r])^2 / n                        (loss[0]: =)
//               dpred[r] = grad_scale * 2 * (pred[r] - target[r]) / n                (dpred: =)
//   The loss stays on the device (a 1-element buffer; no host read per step). n is the batch
//   (hundreds), so the sum runs in the CPU's order, bit for bit: ONE block of MSE_BLOCK (256)
//   threads squares 256 errors at a time into shared memory and thread 0 adds them in index
//   order (__fmul_rn/__fadd_rn: nvcc may not contract e*e + s into an FMA the CPU does not do).
//   Deterministic and identical to the CPU reference; n = 0 gives NaN (0/0) like the CPU.
#include "common.cuh"

#define MSE_BLOCK 256

extern "C" __global__ void rating_mf_forward(float* __restrict__ out, const float* __restrict__ ui, int b,
                                             int c) {
    const int warps = blockDim.x / 32;
    const long long r = static_cast<long long>(blockIdx.x) * warps + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= b) {
        return;  // whole warp
    }
    const float* u = ui + r * 2 * c;
    const float* it = u + c;
    float s = 0.0f;
    for (int k = lane; k < c; k += 32) {
        s += u[k] * it[k];
    }
    s = warp_reduce_sum(s);
    if (lane == 0) {
        out[r] = s;
    }
}

extern "C" __global__ void rating_mf_backward(float* __restrict__ dui, const float* __restrict__ dpred,
                                              const float* __restrict__ ui, int b, int c) {
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<long long>(b) * 2 * c) {
        return;
    }
    const long long r = idx / (2 * c);
    const int k = static_cast<int>(idx % (2 * c));
    const float* row = ui + r * 2 * c;
    // du[k] = dpred * i[k]; di[k] = dpred * u[k]
    const float other = k < c ? row[c + k] : row[k - c];
    dui[idx] = dpred[r] * other;
}

extern "C" __global__ void sigmoid_forward(float* __restrict__ out, const float* __restrict__ inp, int n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = 1.0f / (1.0f + expf(-inp[i]));
    }
}

extern "C" __global__ void sigmoid_backward(float* __restrict__ dinp, const float* __restrict__ out,
                                            const float* __restrict__ dout, int n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        const float y = out[i];
        dinp[i] = __fmul_rn(dout[i], y) * (1.0f - y);
    }
}

extern "C" __global__ void __launch_bounds__(MSE_BLOCK)
    mse_forward(float* __restrict__ loss, float* __restrict__ dpred, const float* __restrict__ pred,
                const float* __restrict__ target, int n, float grad_scale) {
    __shared__ float sq[MSE_BLOCK];
    const float nf = static_cast<float>(n);
    const float scale2 = grad_scale * 2.0f;
    float s = 0.0f;  // thread 0's running sum, in index order
    for (int base = 0; base < n; base += MSE_BLOCK) {
        const int i = base + threadIdx.x;
        if (i < n) {
            const float e = pred[i] - target[i];
            sq[threadIdx.x] = __fmul_rn(e, e);
            dpred[i] = __fmul_rn(scale2, e) / nf;
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
