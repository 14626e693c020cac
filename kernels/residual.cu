// residual.cu — the residual-stream add of GPT-2 (CPU reference: src/ops/residual.rs).
//
// residual_forward[_bf16]: out[i] = inp1[i] + inp2[i] for i in [0, n)                  (out: =)
//   Layout: three flat arrays of n elements (any shape; elementwise): float, or __nv_bfloat16 for
//   _bf16 (both inputs widened exactly, one f32 add, the sum rounded to bf16 once).
//   Launch: block 256 threads.
//   fp32: grid CEIL_DIV(n, 4 * 256); thread t handles elements 4t..4t+3. When all three pointers are
//   16-byte aligned the thread uses one 128-bit load/store per array (float4); otherwise, and for
//   the tail (n not a multiple of 4), it falls back to scalar code, so any n and any element
//   offset is correct.
//   bf16: grid CEIL_DIV(n, 8 * 256); thread t handles elements 8t..8t+7 with one 16-byte access per
//   array when all three are 16-byte aligned, element by element otherwise (act_map2 in common.cuh).
//   Determinism: one IEEE add per element (and one round-to-nearest-even in bf16), no reductions:
//   bit-identical on every device (the emulated device and a GPU agree exactly) and to the CPU
//   reference.
#include "common.cuh"

extern "C" __global__ void residual_forward(float* __restrict__ out, const float* __restrict__ inp1,
                                            const float* __restrict__ inp2, int n) {
    const long long i = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
    if (i >= n) {
        return;
    }
    const bool aligned = ((reinterpret_cast<uintptr_t>(out) | reinterpret_cast<uintptr_t>(inp1) |
                           reinterpret_cast<uintptr_t>(inp2)) & 15) == 0;
    if (aligned && i + 4 <= n) {
        const float4 a = *reinterpret_cast<const float4*>(inp1 + i);
        const float4 b = *reinterpret_cast<const float4*>(inp2 + i);
        *reinterpret_cast<float4*>(out + i) = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
    } else {
        for (long long j = i; j < i + 4 && j < n; j++) {
            out[j] = inp1[j] + inp2[j];
        }
    }
}

extern "C" __global__ void residual_forward_bf16(__nv_bfloat16* __restrict__ out, const __nv_bfloat16* __restrict__ inp1,
                                                 const __nv_bfloat16* __restrict__ inp2, int n) {
    act_map2(out, inp1, inp2, n, [](long long, float a, float b) { return a + b; });
}
