// matmul.cu — the bias parts of the dense layer `y = x W + b` (CPU reference: src/ops/matmul.rs).
// The GEMMs themselves go through Device::sgemm (cuBLAS sgemm, no TF32, on cuda; the CPU GEMM with
// cuBLAS semantics on emu), launched by src/kernels/matmul.rs.
//
// Layouts (row-major fp32): out, dout (rows, cout); bias, dbias (cout); partials (chunks, cout).
//
// matmul_forward_bias:  out[r, o] += bias[o]                       (out: += onto the GEMM's =)
//   After the GEMM wrote out, exactly the CPU's `o += b` (one IEEE add: bit-identical given the
//   same GEMM result; cuBLAS's beta=1 epilogue would add in an unspecified order instead).
//   Launch: a thread per element, block 256, grid CEIL_DIV(rows*cout, 256) (64-bit index).
// matmul_backward_bias (pass 1):                                      (partials: =)
//   partials[ch, o] = sum of dout[r, o] for r in [ch*MM_BIAS_ROWS, (ch+1)*MM_BIAS_ROWS) ∩ [0, rows),
//   in row order. Launch: grid (CEIL_DIV(cout, 256), chunks), block 256: thread o of a block
//   column reads consecutive columns (coalesced), each walks its chunk's rows.
// matmul_backward_bias_reduce (pass 2):                                   (dbias: +=)
//   dbias[o] += sum_{ch = 0..chunks-1} partials[ch, o], in chunk order. Launch: a thread per
//   column, block 256, grid CEIL_DIV(cout, 256).
//   Determinism: no atomics; the order of every addition is fixed by (rows, cout) alone
//   (MM_BIAS_ROWS is a constant), so dbias is bit-reproducible across runs and schedules. It
//   differs from the CPU's single row-order sum by reassociation only (tolerance).
#include "common.cuh"

extern "C" __global__ void matmul_forward_bias(float* __restrict__ out, const float* __restrict__ bias,
                                               int rows, int cout) {
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<long long>(rows) * cout) {
        return;
    }
    out[idx] += bias[idx % cout];
}

extern "C" __global__ void matmul_backward_bias(float* __restrict__ partials, const float* __restrict__ dout,
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
        acc += dout[static_cast<long long>(r) * cout + o];
    }
    partials[static_cast<long long>(ch) * cout + o] = acc;
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
