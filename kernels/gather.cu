// gather.cu — row gather and row scatter-add by index (CPU reference: src/ops/gather.rs).
//
// The LM head runs only on the rows that carry a target, and decoding only on each sequence's last
// position: those rows are gathered from the (rows, c) final-layernorm output, and their gradient
// scattered back.
//
// row_gather:       out[r, j]       = src[idx[r], j]    for r < n, j < c        (out: =)
// row_scatter_add:  dst[idx[r], j] += src[r, j]         for r < n, j < c        (dst: +=)
//   The ids of one scatter must be distinct (each row of dst receives at most one row of src): the
//   model's target rows and last positions are, by construction. Then no two threads touch the
//   same element, and the result does not depend on the schedule.
//   Layouts: row-major; src/out rows of c elements; idx (n) int. An id outside [0, src_rows) /
//   [0, dst_rows) is skipped (the launcher cannot read device ids; callers validate them).
//   Element types: `float` (the names above) and `__nv_bfloat16` (`_bf16`); a bf16 gather is an
//   exact copy; a bf16 scatter adds in f32 and rounds once.
//   Launch: block 256 threads, grid CEIL_DIV(n * c, 256), one element per thread.
//   Determinism: one add (scatter) or copy (gather) per element: bit-identical on every device.
#include "common.cuh"

template <typename T>
__device__ void row_gather_impl(T* __restrict__ out, const T* __restrict__ src,
                                const int* __restrict__ idx, int n, int c, int src_rows) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<long long>(n) * c) {
        return;
    }
    const int r = static_cast<int>(i / c), j = static_cast<int>(i % c);
    const int s = idx[r];
    if (s >= 0 && s < src_rows) {
        out[i] = src[static_cast<long long>(s) * c + j];
    }
}

template <typename T>
__device__ void row_scatter_add_impl(T* __restrict__ dst, const T* __restrict__ src,
                                     const int* __restrict__ idx, int n, int c, int dst_rows) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<long long>(n) * c) {
        return;
    }
    const int r = static_cast<int>(i / c), j = static_cast<int>(i % c);
    const int d = idx[r];
    if (d >= 0 && d < dst_rows) {
        T* p = dst + static_cast<long long>(d) * c + j;
        *p = from_float<T>(to_float(*p) + to_float(src[i]));
    }
}

extern "C" __global__ void row_gather(float* __restrict__ out, const float* __restrict__ src,
                                      const int* __restrict__ idx, int n, int c, int src_rows) {
    row_gather_impl(out, src, idx, n, c, src_rows);
}

extern "C" __global__ void row_gather_bf16(__nv_bfloat16* __restrict__ out,
                                           const __nv_bfloat16* __restrict__ src,
                                           const int* __restrict__ idx, int n, int c, int src_rows) {
    row_gather_impl(out, src, idx, n, c, src_rows);
}

extern "C" __global__ void row_scatter_add(float* __restrict__ dst, const float* __restrict__ src,
                                           const int* __restrict__ idx, int n, int c, int dst_rows) {
    row_scatter_add_impl(dst, src, idx, n, c, dst_rows);
}

extern "C" __global__ void row_scatter_add_bf16(__nv_bfloat16* __restrict__ dst,
                                                const __nv_bfloat16* __restrict__ src,
                                                const int* __restrict__ idx, int n, int c,
                                                int dst_rows) {
    row_scatter_add_impl(dst, src, idx, n, c, dst_rows);
}
