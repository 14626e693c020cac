// gelu.cu — GELU with GPT-2's tanh approximation (CPU reference: src/ops/gelu.rs).
//
//   gelu(x)  = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)
//   gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2),  t = tanh(s (x + 0.044715 x^3))
//   (sech^2 written as 1 - t^2: no coshf overflow for large |x|.)
//
// gelu_forward:  out[i]  = gelu(inp[i])              (out: =)
// gelu_backward: dinp[i] = gelu'(inp[i]) * dout[i]   (dinp: =; GELU's input is not on the residual
//                                                     stream, so nothing accumulates)
// bias_gelu_forward: pre[r,j] += bias[j] (the matmul's bias add, one f32 add), out = gelu(pre)
//                                                     (pre: +=, out: =). Fuses the MLP's bias add
//   into the GELU pass (one read-modify-write of pre instead of two passes); bit-identical to
//   `matmul_forward_bias` then `gelu_forward`. pre, out: (rows, c); bias: (c).
//   Layout: flat fp32 arrays of n elements (elementwise; any shape, any alignment).
//   Launch: block 256 threads, grid CEIL_DIV(n, 256), one element per thread.
//   Determinism: no reductions; same bits for the same input on a given device. The emulated device
//   uses the host's tanhf and the GPU CUDA's (both within a couple of ulp), so the two devices agree
//   to a few ulp, not bit for bit.
#include "common.cuh"

#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2/pi)
#define GELU_CUBIC 0.044715f

extern "C" __global__ void gelu_forward(float* __restrict__ out, const float* __restrict__ inp, int n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        const float x = inp[i];
        const float cube = GELU_CUBIC * x * x * x;
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALING_FACTOR * (x + cube)));
    }
}

extern "C" __global__ void gelu_backward(float* __restrict__ dinp, const float* __restrict__ inp,
                                         const float* __restrict__ dout, int n) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < n) {
        const float x = inp[i];
        const float cube = GELU_CUBIC * x * x * x;
        const float t = tanhf(GELU_SCALING_FACTOR * (x + cube));
        const float sech2 = 1.0f - t * t;
        const float local_grad =
            0.5f * (1.0f + t) + x * 0.5f * sech2 * GELU_SCALING_FACTOR * (1.0f + 3.0f * GELU_CUBIC * x * x);
        dinp[i] = local_grad * dout[i];
    }
}

extern "C" __global__ void bias_gelu_forward(float* __restrict__ pre, float* __restrict__ out,
                                             const float* __restrict__ bias, int rows, int c) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < static_cast<long long>(rows) * c) {
        const float x = pre[i] + bias[i % c];
        pre[i] = x;
        const float cube = GELU_CUBIC * x * x * x;
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALING_FACTOR * (x + cube)));
    }
}
