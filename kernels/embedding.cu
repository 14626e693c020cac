// embedding.cu — the GPT-2 encoder's row gather (+ position embedding) and its deterministic
// scatter-add backward (CPU reference: src/ops/embedding.rs, `EmbedShape`).
//
// Geometry of one call (EmbedShape): `batch` sequences of `seq` positions in `out`; this call fills
// positions offset..offset+n of each from `ids` (batch x n, i32); `c` channels; the position index
// of out position 0 is pos0 (KV-cache decoding). `table` is (rows, c), `wpe` (n_positions, c).
// Precision: table, wpe, dtable, dwpe (parameters and their gradients) are always fp32; out and
// dout (activations) are float, or __nv_bfloat16 in the _bf16 kernels. The _bf16 forward does the
// same f32 add and rounds the sum to bf16 once; the _bf16 backwards widen dout exactly and sum in
// f32 in the same order, so in both precisions every kernel is bit-identical to the CPU reference
// (run on the widened dout; the forward's output rounded).
//
// embedding_forward[_bf16]:                                                               (out: =)
//   out[b, offset+j, k] = table[ids[b*n+j], k] (+ wpe[pos0+offset+j, k])
//   Launch: one thread per (b, j, k), block 256, grid CEIL_DIV(batch*n*c, 256) (64-bit index).
//   _bf16: one thread per (b, j, chunk of 8 channels), grid CEIL_DIV(batch*n*CEIL_DIV(c, 8), 256):
//   a chunk is read from table/wpe with two float4 each and written with one 16-byte store where
//   each address is 16-byte aligned (c % 8 == 0 and aligned buffers: every chunk), else element
//   by element (a view at an odd offset, the last chunk of a row when c % 8 != 0). Each element
//   is the same single f32 add rounded once either way: bit-identical on every path.
//
// embedding_backward_chain (pass 1 of the table gradient):                            (scratch: =)
//   For each position p = b*n+j of the call: next[p] = the smallest p' > p with ids[p'] == ids[p]
//   (-1 if none), head[p] = 1 if no p' < p has the same id. O((batch*n)^2) comparisons, which is
//   nothing at PEPLER's batch*n (a few thousand) and needs no sort and no atomics.
//   scratch (i32, 2*batch*n): [next | head]. Launch: thread per position, block 256.
// embedding_backward_table[_bf16] (pass 2):                                           (dtable: +=)
//   For each head p and channel k: acc = dtable[id, k]; for q = p, next[p], ...: acc += dout[q, k];
//   dtable[id, k] = acc. This is exactly the CPU reference's order ((dtable + g0) + g1) + ...,
//   visiting occurrences in (b, j) order, so dtable is bit-identical to the CPU's, and each row of
//   dtable is written by one thread per channel: no atomics even when an id repeats hundreds of
//   times. Launch: grid (batch*n, CEIL_DIV(c, 256)), block min(256, c rounded up to a warp);
//   blocks of non-head positions exit at once.
// embedding_backward_wpe[_bf16]:                                                        (dwpe: +=)
//   dwpe[pos0+offset+j, k] += dout[b, offset+j, k] for b = 0..batch in order (one thread per
//   (j, k) accumulating in a register from dwpe's old value): the CPU's order, bit-identical.
//   Launch: one thread per (j, k), block 256, grid CEIL_DIV(n*c, 256).
//   The _bf16 backwards read dout one element per thread (a warp's 32 channels are 64 contiguous
//   bytes: coalesced); 16-byte reads would need a thread per 8 channels and 8 accumulators, for a
//   kernel that runs once per step over batch*n rows.
//
// Out-of-range ids (id < 0 or id >= rows): the host validates ids before upload (Batch::validate);
// should one reach a kernel anyway, the forward leaves that output row untouched and the backward
// skips that occurrence (it is neither a head nor part of a chain), so no kernel ever reads or
// writes outside `table`/`dtable`.
// Determinism: no atomics; every sum runs in (b, j) order, independent of the launch schedule.
#include "common.cuh"

// embedding_forward_bf16: thread per (b, j, chunk of 8 channels) (see the header).
__device__ __forceinline__ void embedding_forward_bf16x8(__nv_bfloat16* __restrict__ out,
                                                        const float* __restrict__ table,
                                                        const int* __restrict__ ids, const float* __restrict__ wpe,
                                                        int batch, int n, int seq, int offset, int pos0, int c,
                                                        int rows) {
    const int per_row = (c + 7) / 8;
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<long long>(batch) * n * per_row) {
        return;
    }
    const long long p = idx / per_row;  // b * n + j
    const int k0 = static_cast<int>(idx % per_row) * 8;
    const int b = static_cast<int>(p / n);
    const int j = static_cast<int>(p % n);
    const int id = ids[p];
    if (id < 0 || id >= rows) {
        return;  // see the header: out-of-range ids write nothing
    }
    const float* src = table + static_cast<long long>(id) * c + k0;
    const float* pos = wpe != nullptr ? wpe + static_cast<long long>(pos0 + offset + j) * c + k0 : nullptr;
    __nv_bfloat16* dst = out + (static_cast<long long>(b) * seq + offset + j) * c + k0;
    if (k0 + 8 <= c) {
        float v[8];
        load_f32x8_any(v, src);
        if (pos != nullptr) {
            float w[8];
            load_f32x8_any(w, pos);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                v[k] += w[k];
            }
        }
        store_bf16x8_any(dst, v);
        return;
    }
    for (int k = 0; k < c - k0; k++) {  // the row's last, partial chunk (c % 8 != 0)
        float v = src[k];
        if (pos != nullptr) {
            v += pos[k];
        }
        dst[k] = __float2bfloat16_rn(v);
    }
}

template <class T>
__device__ __forceinline__ void embedding_forward_impl(T* __restrict__ out, const float* __restrict__ table,
                                                       const int* __restrict__ ids, const float* __restrict__ wpe,
                                                       int batch, int n, int seq, int offset, int pos0, int c,
                                                       int rows) {
    if constexpr (ACT_PER_THREAD<T> == 8) {
        embedding_forward_bf16x8(out, table, ids, wpe, batch, n, seq, offset, pos0, c, rows);
        return;
    }
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long total = static_cast<long long>(batch) * n * c;
    if (idx >= total) {
        return;
    }
    const long long p = idx / c;  // b * n + j
    const int k = static_cast<int>(idx % c);
    const int b = static_cast<int>(p / n);
    const int j = static_cast<int>(p % n);
    const int id = ids[p];
    if (id < 0 || id >= rows) {
        return;  // see the header: out-of-range ids write nothing
    }
    float v = table[static_cast<long long>(id) * c + k];
    if (wpe != nullptr) {
        v += wpe[static_cast<long long>(pos0 + offset + j) * c + k];
    }
    out[(static_cast<long long>(b) * seq + offset + j) * c + k] = from_float<T>(v);
}

extern "C" __global__ void embedding_forward(float* __restrict__ out, const float* __restrict__ table,
                                             const int* __restrict__ ids, const float* __restrict__ wpe,
                                             int batch, int n, int seq, int offset, int pos0, int c,
                                             int rows) {
    embedding_forward_impl(out, table, ids, wpe, batch, n, seq, offset, pos0, c, rows);
}

extern "C" __global__ void embedding_forward_bf16(__nv_bfloat16* __restrict__ out, const float* __restrict__ table,
                                                  const int* __restrict__ ids, const float* __restrict__ wpe,
                                                  int batch, int n, int seq, int offset, int pos0, int c,
                                                  int rows) {
    embedding_forward_impl(out, table, ids, wpe, batch, n, seq, offset, pos0, c, rows);
}

extern "C" __global__ void embedding_backward_chain(int* __restrict__ scratch, const int* __restrict__ ids,
                                                    int count, int rows) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= count) {
        return;
    }
    int* next = scratch;
    int* head = scratch + count;
    const int id = ids[p];
    if (id < 0 || id >= rows) {
        next[p] = -1;
        head[p] = 0;
        return;
    }
    int nx = -1;
    for (int q = p + 1; q < count; q++) {
        if (ids[q] == id) {
            nx = q;
            break;
        }
    }
    int first = 1;
    for (int q = 0; q < p; q++) {
        if (ids[q] == id) {
            first = 0;
            break;
        }
    }
    next[p] = nx;
    head[p] = first;
}

template <class T>
__device__ __forceinline__ void embedding_backward_table_impl(float* __restrict__ dtable,
                                                              const int* __restrict__ scratch,
                                                              const T* __restrict__ dout,
                                                              const int* __restrict__ ids, int batch, int n,
                                                              int seq, int offset, int c) {
    const int count = batch * n;
    const int p = blockIdx.x;
    const int k = blockIdx.y * blockDim.x + threadIdx.x;
    const int* next = scratch;
    const int* head = scratch + count;
    if (k >= c || head[p] == 0) {
        return;
    }
    float* dst = dtable + static_cast<long long>(ids[p]) * c + k;
    float acc = *dst;
    for (int q = p; q >= 0; q = next[q]) {
        const int b = q / n;
        const int j = q % n;
        acc += to_float(dout[(static_cast<long long>(b) * seq + offset + j) * c + k]);
    }
    *dst = acc;
}

extern "C" __global__ void embedding_backward_table(float* __restrict__ dtable, const int* __restrict__ scratch,
                                                    const float* __restrict__ dout, const int* __restrict__ ids,
                                                    int batch, int n, int seq, int offset, int c) {
    embedding_backward_table_impl(dtable, scratch, dout, ids, batch, n, seq, offset, c);
}

extern "C" __global__ void embedding_backward_table_bf16(float* __restrict__ dtable, const int* __restrict__ scratch,
                                                         const __nv_bfloat16* __restrict__ dout,
                                                         const int* __restrict__ ids, int batch, int n, int seq,
                                                         int offset, int c) {
    embedding_backward_table_impl(dtable, scratch, dout, ids, batch, n, seq, offset, c);
}

template <class T>
__device__ __forceinline__ void embedding_backward_wpe_impl(float* __restrict__ dwpe, const T* __restrict__ dout,
                                                            int batch, int n, int seq, int offset, int pos0,
                                                            int c) {
    const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<long long>(n) * c) {
        return;
    }
    const int j = static_cast<int>(idx / c);
    const int k = static_cast<int>(idx % c);
    float* dst = dwpe + static_cast<long long>(pos0 + offset + j) * c + k;
    float acc = *dst;
    for (int b = 0; b < batch; b++) {
        acc += to_float(dout[(static_cast<long long>(b) * seq + offset + j) * c + k]);
    }
    *dst = acc;
}

extern "C" __global__ void embedding_backward_wpe(float* __restrict__ dwpe, const float* __restrict__ dout,
                                                  int batch, int n, int seq, int offset, int pos0, int c) {
    embedding_backward_wpe_impl(dwpe, dout, batch, n, seq, offset, pos0, c);
}

extern "C" __global__ void embedding_backward_wpe_bf16(float* __restrict__ dwpe, const __nv_bfloat16* __restrict__ dout,
                                                       int batch, int n, int seq, int offset, int pos0, int c) {
    embedding_backward_wpe_impl(dwpe, dout, batch, n, seq, offset, pos0, c);
}
