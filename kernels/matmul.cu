// matmul.cu — the bias parts of the dense layer `y = x W + b` (CPU reference: src/ops/matmul.rs),
// and the epilogue of the bf16 GEMM's fallback path. The GEMMs themselves go through the device
// layer (src/device): f32 through Device::sgemm (cuBLAS sgemm, no TF32, on cuda; the CPU GEMM with
// cuBLAS semantics on emu), bf16 through Device::gemm_bf16 (cuBLASLt, f32 compute, the f32 bias in
// its epilogue, D rounded once); launched by src/kernels/matmul.rs.
//
// Layouts (row-major): out, dout (rows, cout); bias, dbias (cout); partials (chunks, cout). In the
// bf16 path dout is bf16 (the activation gradient); bias, dbias and partials are f32 always.
//
// matmul_forward_bias (f32 only):  out[r, o] += bias[o]            (out: += onto the GEMM's =)
//   After the GEMM wrote out, exactly the CPU's `o += b` (one IEEE add: bit-identical given the
//   same GEMM result; cuBLAS's beta=1 epilogue would add in an unspecified order instead).
//   bf16 has no twin: the bias is added in f32 inside the GEMM's epilogue, before the single
//   rounding of out (adding it to an already rounded out would round twice).
//   Launch: a thread per element, block 256, grid CEIL_DIV(rows*cout, 256) (64-bit index).
// matmul_backward_bias[_bf16] (pass 1):                               (partials: =)
//   partials[ch, o] = sum of dout[r, o] for r in [ch*MM_BIAS_ROWS, (ch+1)*MM_BIAS_ROWS) ∩ [0, rows),
//   in row order, in f32 (bf16 dout widened exactly). Launch: grid (CEIL_DIV(cout, 256), chunks),
//   block 256: thread o of a block column reads consecutive columns (coalesced), each walks its
//   chunk's rows.
// matmul_backward_bias_reduce (pass 2, f32 only: it reads the f32 partials):  (dbias: +=)
//   dbias[o] += sum_{ch = 0..chunks-1} partials[ch, o], in chunk order. Launch: a thread per
//   column, block 256, grid CEIL_DIV(cout, 256).
//   Determinism: no atomics; the order of every addition is fixed by (rows, cout) alone
//   (MM_BIAS_ROWS is a constant), so dbias is bit-reproducible across runs and schedules. It
//   differs from the CPU's single row-order sum by reassociation only (tolerance).
// gemm_epilogue_f32 / gemm_epilogue_bf16:                                       (d: =, reads d)
//   The rest of Device::gemm_bf16 when cuBLASLt computed only the product (no epilogue algorithm
//   for an f32 bias on that D, or k == 0 / alpha == 0): for the m x n x batch column-major
//   matrices of d (leading dimension ldd, batch stride stride_d),
//     d[b, j, i] = T(acc[b, j, i] + beta * d[b, j, i] + bias[i])
//   in f32, rounded once to T; acc is compact (m x n per batch, f32), NULL meaning 0; beta == 0
//   never reads d; bias NULL adds 0. The same f32 operations in the same order as
//   gemm_epilogue_value in src/device/gemm.rs (the emulated device's bf16 GEMM). Elements outside
//   the matrices (ld padding, batch gaps) are not touched. Elementwise: deterministic.
//   Launch: a thread per element, block 256, grid CEIL_DIV(m*n*batch, 256) (64-bit index).
#include "common.cuh"

extern "C" __global__ void matmul_forward_bias(float* __restrict__ out, const float* __restrict__ bias,
                                               int rows, int cout) {
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<long long>(rows) * cout) {
        return;
    }
    out[idx] += bias[idx % cout];
}

template <typename T>
__device__ __forceinline__ void matmul_backward_bias_impl(float* __restrict__ partials, const T* __restrict__ dout,
                                                          int rows, int cout, int rows_per_chunk) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= cout) {
        return;
    }
    const int ch = blockIdx.y;
    const int r0 = ch * rows_per_chunk;
    const int r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) {
        acc += to_float(dout[static_cast<long long>(r) * cout + o]);
    }
    partials[static_cast<long long>(ch) * cout + o] = acc;
}

extern "C" __global__ void matmul_backward_bias(float* __restrict__ partials, const float* __restrict__ dout,
                                                int rows, int cout, int rows_per_chunk) {
    matmul_backward_bias_impl(partials, dout, rows, cout, rows_per_chunk);
}

extern "C" __global__ void matmul_backward_bias_bf16(float* __restrict__ partials,
                                                     const __nv_bfloat16* __restrict__ dout, int rows, int cout,
                                                     int rows_per_chunk) {
    matmul_backward_bias_impl(partials, dout, rows, cout, rows_per_chunk);
}

extern "C" __global__ void matmul_backward_bias_reduce(float* __restrict__ dbias,
                                                       const float* __restrict__ partials, int chunks,
                                                       int cout) {
    const int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= cout) {
        return;
    }
    float acc = 0.0f;
    for (int ch = 0; ch < chunks; ch++) {
        acc += partials[static_cast<long long>(ch) * cout + o];
    }
    dbias[o] += acc;
}

template <typename T>
__device__ __forceinline__ void gemm_epilogue_impl(T* __restrict__ d, const float* __restrict__ acc,
                                                   const float* __restrict__ bias, float beta, int m, int n,
                                                   int ldd, long long stride_d, int batch) {
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long mn = static_cast<long long>(m) * n;
    if (idx >= mn * batch) {
        return;
    }
    const long long b = idx / mn;
    const long long r = idx - b * mn;
    const int j = static_cast<int>(r / m);
    const int i = static_cast<int>(r - static_cast<long long>(j) * m);
    T* p = d + b * stride_d + static_cast<long long>(j) * ldd + i;
    float v = acc != nullptr ? acc[idx] : 0.0f;
    if (beta != 0.0f) {
        v += __fmul_rn(beta, to_float(*p));  // no FMA: the host epilogue multiplies, then adds
    }
    const float bv = bias != nullptr ? bias[i] : 0.0f;
    *p = from_float<T>(v + bv);
}

extern "C" __global__ void gemm_epilogue_f32(float* __restrict__ d, const float* __restrict__ acc,
                                             const float* __restrict__ bias, float beta, int m, int n, int ldd,
                                             long long stride_d, int batch) {
    gemm_epilogue_impl(d, acc, bias, beta, m, n, ldd, stride_d, batch);
}

extern "C" __global__ void gemm_epilogue_bf16(__nv_bfloat16* __restrict__ d, const float* __restrict__ acc,
                                              const float* __restrict__ bias, float beta, int m, int n, int ldd,
                                              long long stride_d, int batch) {
    gemm_epilogue_impl(d, acc, bias, beta, m, n, ldd, stride_d, batch);
}
