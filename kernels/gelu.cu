// gelu.cu — GELU with GPT-2's tanh approximation (CPU reference: src/ops/gelu.rs).
//
//   gelu(x)  = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)
//   gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2),  t = tanh(s (x + 0.044715 x^3))
//   (sech^2 written as 1 - t^2: no coshf overflow for large |x|.)
//
// gelu_forward[_bf16]:  out[i]  = gelu(inp[i])              (out: =)
// gelu_backward[_bf16]: dinp[i] = gelu'(inp[i]) * dout[i]   (dinp: =; GELU's input is not on the
//                                                            residual stream, so nothing accumulates)
// bias_gelu_forward (fp32 only): pre[r,j] += bias[j] (the matmul's bias add, one f32 add),
//   out = gelu(pre) (pre: +=, out: =). Fuses the MLP's bias add into the GELU pass (one
//   read-modify-write of pre instead of two passes); bit-identical to `matmul_forward_bias` then
//   `gelu_forward`. pre, out: (rows, c); bias: (c). In bf16 the GEMM's bias epilogue adds the bias
//   before its single rounding, then gelu_forward_bf16 runs: no bf16 twin here.
//   Layout: flat arrays of n elements (elementwise; any shape, any alignment). fp32 kernels: float.
//   _bf16 kernels: inp, dout, out, dinp are __nv_bfloat16; each value is widened exactly, the
//   formula runs in f32 exactly as in fp32, and the result is rounded to bf16 once (nearest even).
//   Launch: block 256 threads; fp32: grid CEIL_DIV(n, 256), one element per thread; bf16: grid
//   CEIL_DIV(n, 8 * 256), 8 elements per thread through one 16-byte load/store per array when the
//   views are 16-byte aligned, element by element otherwise (same values either way; act_map1/2 in
//   common.cuh).
//   Determinism: no reductions; same bits for the same input on a given device. The emulated device
//   uses the host's tanhf and the GPU CUDA's (both within a couple of ulp), so the two devices agree
//   to a few ulp, not bit for bit (in bf16 that can move a result to the neighbouring bf16 value).
#include "common.cuh"

#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2/pi)
#define GELU_CUBIC 0.044715f

__device__ __forceinline__ float gelu_of(float x) {
    const float cube = GELU_CUBIC * x * x * x;
    return 0.5f * x * (1.0f + tanhf(GELU_SCALING_FACTOR * (x + cube)));
}

__device__ __forceinline__ float gelu_grad_of(float x) {
    const float cube = GELU_CUBIC * x * x * x;
    const float t = tanhf(GELU_SCALING_FACTOR * (x + cube));
    const float sech2 = 1.0f - t * t;
    return 0.5f * (1.0f + t) + x * 0.5f * sech2 * GELU_SCALING_FACTOR * (1.0f + 3.0f * GELU_CUBIC * x * x);
}

template <class T>
__device__ __forceinline__ void gelu_forward_impl(T* out, const T* inp, int n) {
    act_map1(out, inp, n, [](long long, float x) { return gelu_of(x); });
}

template <class T>
__device__ __forceinline__ void gelu_backward_impl(T* dinp, const T* inp, const T* dout, int n) {
    act_map2(dinp, inp, dout, n, [](long long, float x, float g) { return gelu_grad_of(x) * g; });
}

extern "C" __global__ void gelu_forward(float* __restrict__ out, const float* __restrict__ inp, int n) {
    gelu_forward_impl(out, inp, n);
}

extern "C" __global__ void gelu_forward_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ inp,
                                             int n) {
    gelu_forward_impl(out, inp, n);
}

extern "C" __global__ void gelu_backward(float* __restrict__ dinp, const float* __restrict__ inp,
                                         const float* __restrict__ dout, int n) {
    gelu_backward_impl(dinp, inp, dout, n);
}

extern "C" __global__ void gelu_backward_bf16(__nv_bfloat16* __restrict__ dinp, const __nv_bfloat16* __restrict__ inp,
                                              const __nv_bfloat16* __restrict__ dout, int n) {
    gelu_backward_impl(dinp, inp, dout, n);
}

extern "C" __global__ void bias_gelu_forward(float* __restrict__ pre, float* __restrict__ out,
                                             const float* __restrict__ bias, int rows, int c) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < static_cast<long long>(rows) * c) {
        const float x = pre[i] + bias[i % c];
        pre[i] = x;
        out[i] = gelu_of(x);
    }
}
