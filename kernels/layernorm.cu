// layernorm.cu — LayerNorm over the last dimension, forward and backward (CPU reference:
// src/ops/layernorm.rs; llm.c's gradient convention: parameter grads +=, and dinp += because
// LayerNorm's input is on the residual stream).
//
// Layouts (row-major): inp, out, dout, dinp, resid, a, b: rows x c, activations: float, or
// __nv_bfloat16 in the _bf16 kernels; weight, bias, dweight, dbias: c, mean, rstd: rows, and the
// partials: always fp32 (mean/rstd are saved by the forward for the backward).
// Precision (_bf16): every activation is widened exactly on load, all arithmetic and every sum is
// f32 exactly as in the fp32 kernel, and each activation output is rounded to bf16 once when stored
// (dinp: the old bf16 value widened, the f32 increment added, the sum rounded once). mean, rstd,
// partials, dweight, dbias are f32 sums of the widened values.
// Vector loads (_bf16, rows with c % 8 == 0, e.g. GPT-2's 768 and 1600): lane l of a row's warp
// owns the 8-column chunks l, l+32, l+64, ... (columns 8q..8q+7) instead of the columns l, l+32,
// ...; it reads and writes each chunk of inp/out/resid/a/b/dout/dinp with one 16-byte access (the
// f32 weight/bias chunks with two float4) when the address is 16-byte aligned, else with 8 scalar
// accesses of the same elements. Its partial sums add its chunks in order, element by element,
// then warp_reduce_sum combines the lanes. So which columns a lane sums, and in what order, depends
// on (c, the element type) alone, never on alignment: a view at an odd offset takes the scalar
// accesses and gives the same bits. Other c (and every fp32 kernel) keep the strided columns.
// The f32 order differs from the strided one, which is the reassociation the bf16 tolerances cover.
//
// layernorm_forward[_bf16]:                                                 (out, mean, rstd: =)
//   mean[r] = sum_i x[r,i] / c;  rstd[r] = 1 / sqrtf(sum_i (x[r,i] - mean[r])^2 / c + eps)
//   out[r,i] = (x[r,i] - mean[r]) * rstd[r] * weight[i] + bias[i]
//   mean/rstd may be NULL (inference). Launch: warp per row, block 256 (8 warps), grid
//   CEIL_DIV(rows, 8); lanes stride over c, warp_reduce_sum combines them. Two passes over the row
//   (mean, then the centred variance) for accuracy.
//
// layernorm_backward[_bf16] (pass 1):                             (dinp: +=, partials: =)
//   n = (x - mean) * rstd, g = weight * dout,
//   dinp[r,i] += (g_i - mean_i(g) - n_i * mean_i(g * n)) * rstd[r]
//   and per-block partial sums of dbias (sum_r dout) and dweight (sum_r n * dout).
//   Launch: WPB warps per block (blockDim.x = 32 * WPB), grid G; warp w of block b handles rows
//   b*WPB + w, stepping by G*WPB. Each warp accumulates its rows into its own 2c floats of dynamic
//   shared memory (dyn_smem = 2 * c * WPB * 4 bytes; lane l owns columns l, l+32, ...), then the
//   block adds its WPB warps in order 0..WPB-1 and writes partials[b][0..2c) = [dbias | dweight].
//   (The bf16 chunked rows: lane l owns its chunks' columns of the accumulators, updated with float4
//   shared-memory accesses; each column still adds the warp's rows in row order, so dweight/dbias
//   are the same bits whichever lane owns a column.)
//   partials == NULL (no weight gradient wanted: frozen LayerNorm, stage 1): only dinp, no shared
//   memory, no partial sums (launch: 8 warps per block, grid CEIL_DIV(rows, 8), dyn_smem 0).
// layernorm_backward_reduce (pass 2 of both, fp32 only): (dweight, dbias: +=)
//   dbias[i] += sum_{b=0..G-1} partials[b][i];  dweight[i] += sum_b partials[b][c + i]
//   (a NULL dweight or dbias is skipped). Launch: one thread per output (2c), block 256, grid
//   CEIL_DIV(2c, 256).
//
// residual_layernorm_forward[_bf16]:                           (resid, out, mean, rstd: =)
//   resid = a + b (the residual stream), then exactly layernorm_forward of resid: same launch
//   (warp per row, 8 rows per 256-thread block), same two-pass statistics. Each lane re-reads only
//   the resid elements it wrote itself, so no barrier is needed. mean/rstd may be NULL. In bf16 the
//   statistics and out are those of the STORED (rounded) resid, so the fused kernel equals
//   residual_forward_bf16 then layernorm_forward_bf16 (and the backward, which re-reads the stored
//   resid as its input, sees the values the forward normalised).
//   Determinism: no atomics; every sum runs in an order fixed by (rows, c) alone for each kernel
//   (WPB and G are computed from them by the launcher in src/kernels/layernorm.rs, never from the
//   GPU model; the bf16 lane-to-column map by c, never by a view's alignment), so every output is
//   bit-reproducible run to run, under any block schedule and at any view offset.
#include "common.cuh"

// The rest of a bf16x8 row once lane `lane` holds its partial sum of the row (the mean): the
// centred variance (second pass over x), then y, mean[row], rstd[row]; shared by the plain and the
// residual forward, so both normalise alike.
__device__ __forceinline__ void layernorm_finish_row_bf16x8(__nv_bfloat16* __restrict__ y, float* __restrict__ mean,
                                                            float* __restrict__ rstd,
                                                            const __nv_bfloat16* __restrict__ x,
                                                            const float* __restrict__ weight,
                                                            const float* __restrict__ bias, long long row, int c,
                                                            float eps, int lane, float sum) {
    const int chunks = c / 8;
    const float m = warp_reduce_sum(sum) / c;

    float var = 0.0f;
    for (int q = lane; q < chunks; q += 32) {
        float v[8];
        load_bf16x8_any(v, x + 8 * q);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float d = v[k] - m;
            var += d * d;
        }
    }
    const float s = 1.0f / sqrtf(warp_reduce_sum(var) / c + eps);

    for (int q = lane; q < chunks; q += 32) {
        float v[8], w[8], b[8];
        load_bf16x8_any(v, x + 8 * q);
        load_f32x8_any(w, weight + 8 * q);
        load_f32x8_any(b, bias + 8 * q);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            v[k] = (v[k] - m) * s * w[k] + b[k];
        }
        store_bf16x8_any(y + 8 * q, v);
    }
    if (lane == 0) {
        if (mean != nullptr) mean[row] = m;
        if (rstd != nullptr) rstd[row] = s;
    }
}

// The bf16 rows with c % 8 == 0 (see the header): lane l owns the 8-column chunks l, l+32, ... and
// sums its chunks in order, element by element; 16-byte accesses where the row is aligned.
__device__ __forceinline__ void layernorm_forward_row_bf16x8(__nv_bfloat16* __restrict__ y, float* __restrict__ mean,
                                                             float* __restrict__ rstd,
                                                             const __nv_bfloat16* __restrict__ x,
                                                             const float* __restrict__ weight,
                                                             const float* __restrict__ bias, long long row, int c,
                                                             float eps, int lane) {
    const int chunks = c / 8;
    float sum = 0.0f;
    for (int q = lane; q < chunks; q += 32) {
        float v[8];
        load_bf16x8_any(v, x + 8 * q);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            sum += v[k];
        }
    }
    layernorm_finish_row_bf16x8(y, mean, rstd, x, weight, bias, row, c, eps, lane, sum);
}

template <class T>
__device__ __forceinline__ void layernorm_forward_impl(T* __restrict__ out, float* __restrict__ mean,
                                                       float* __restrict__ rstd, const T* __restrict__ inp,
                                                       const float* __restrict__ weight,
                                                       const float* __restrict__ bias, int rows, int c, float eps) {
    const int warps = blockDim.x / 32;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const long long row = static_cast<long long>(blockIdx.x) * warps + warp;
    if (row >= rows) {
        return;  // whole warp
    }
    const T* x = inp + row * c;
    if constexpr (ACT_PER_THREAD<T> == 8) {
        if (c % 8 == 0) {
            layernorm_forward_row_bf16x8(out + row * c, mean, rstd, x, weight, bias, row, c, eps, lane);
            return;
        }
    }

    float sum = 0.0f;
    for (int i = lane; i < c; i += 32) {
        sum += to_float(x[i]);
    }
    const float m = warp_reduce_sum(sum) / c;

    float var = 0.0f;
    for (int i = lane; i < c; i += 32) {
        const float d = to_float(x[i]) - m;
        var += d * d;
    }
    const float s = 1.0f / sqrtf(warp_reduce_sum(var) / c + eps);

    T* y = out + row * c;
    for (int i = lane; i < c; i += 32) {
        y[i] = from_float<T>((to_float(x[i]) - m) * s * weight[i] + bias[i]);
    }
    if (lane == 0) {
        if (mean != nullptr) mean[row] = m;
        if (rstd != nullptr) rstd[row] = s;
    }
}

extern "C" __global__ void layernorm_forward(float* __restrict__ out, float* __restrict__ mean,
                                             float* __restrict__ rstd, const float* __restrict__ inp,
                                             const float* __restrict__ weight, const float* __restrict__ bias,
                                             int rows, int c, float eps) {
    layernorm_forward_impl(out, mean, rstd, inp, weight, bias, rows, c, eps);
}

extern "C" __global__ void layernorm_forward_bf16(__nv_bfloat16* __restrict__ out, float* __restrict__ mean,
                                                  float* __restrict__ rstd, const __nv_bfloat16* __restrict__ inp,
                                                  const float* __restrict__ weight, const float* __restrict__ bias,
                                                  int rows, int c, float eps) {
    layernorm_forward_impl(out, mean, rstd, inp, weight, bias, rows, c, eps);
}

// Pass 1's last step: the block adds its warps' accumulators in warp order into its partials row
// (nothing without partials). Column ownership inside a warp does not matter here.
__device__ __forceinline__ void layernorm_backward_write_partials(const float* smem, float* __restrict__ partials,
                                                                  int c) {
    if (partials == nullptr) {
        return;  // whole block (partials is a kernel argument)
    }
    __syncthreads();
    const int warps = blockDim.x / 32;
    float* p = partials + static_cast<long long>(blockIdx.x) * 2 * c;
    for (int i = threadIdx.x; i < 2 * c; i += blockDim.x) {
        float total = 0.0f;
        for (int w = 0; w < warps; w++) {
            total += smem[static_cast<long long>(w) * 2 * c + i];
        }
        p[i] = total;
    }
}

// 8 consecutive floats of shared memory (16-byte aligned: c % 8 == 0 keeps every chunk so) += a.
__device__ __forceinline__ void layernorm_smem_add8(float* p, const float (&a)[8]) {
    float4 lo = load_vec<float4>(p);
    float4 hi = load_vec<float4>(p + 4);
    lo.x += a[0], lo.y += a[1], lo.z += a[2], lo.w += a[3];
    hi.x += a[4], hi.y += a[5], hi.z += a[6], hi.w += a[7];
    store_vec<float4>(p, lo);
    store_vec<float4>(p + 4, hi);
}

// The bf16 rows with c % 8 == 0 (see the header): lane l owns the 8-column chunks l, l+32, ... of
// every row and of its warp's accumulators (zeroes and updates only those: no barrier needed).
// Each accumulator column still adds the warp's rows in row order, as in the scalar path.
__device__ __forceinline__ void layernorm_backward_rows_bf16x8(float* acc_db, float* acc_dw,
                                                               __nv_bfloat16* __restrict__ dinp,
                                                               const __nv_bfloat16* __restrict__ dout,
                                                               const __nv_bfloat16* __restrict__ inp,
                                                               const float* __restrict__ weight,
                                                               const float* __restrict__ mean,
                                                               const float* __restrict__ rstd, int rows, int c,
                                                               bool want_weights) {
    const int warps = blockDim.x / 32;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int chunks = c / 8;
    if (want_weights) {
        const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int q = lane; q < chunks; q += 32) {
            store_vec<float4>(acc_db + 8 * q, zero);
            store_vec<float4>(acc_db + 8 * q + 4, zero);
            store_vec<float4>(acc_dw + 8 * q, zero);
            store_vec<float4>(acc_dw + 8 * q + 4, zero);
        }
    }

    for (long long row = static_cast<long long>(blockIdx.x) * warps + warp; row < rows;
         row += static_cast<long long>(gridDim.x) * warps) {
        const __nv_bfloat16* x = inp + row * c;
        const __nv_bfloat16* g = dout + row * c;
        __nv_bfloat16* dx = dinp + row * c;
        const float m = mean[row];
        const float s = rstd[row];

        float dnorm_mean = 0.0f;
        float dnorm_norm_mean = 0.0f;
        for (int q = lane; q < chunks; q += 32) {
            float xv[8], gv[8], w[8];
            load_bf16x8_any(xv, x + 8 * q);
            load_bf16x8_any(gv, g + 8 * q);
            load_f32x8_any(w, weight + 8 * q);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float n = (xv[k] - m) * s;
                const float d = w[k] * gv[k];
                dnorm_mean += d;
                dnorm_norm_mean += d * n;
            }
        }
        dnorm_mean = warp_reduce_sum(dnorm_mean) / c;
        dnorm_norm_mean = warp_reduce_sum(dnorm_norm_mean) / c;

        for (int q = lane; q < chunks; q += 32) {
            float xv[8], gv[8], w[8], dv[8], nv[8];
            load_bf16x8_any(xv, x + 8 * q);
            load_bf16x8_any(gv, g + 8 * q);
            load_f32x8_any(w, weight + 8 * q);
            load_bf16x8_any(dv, dx + 8 * q);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const float n = (xv[k] - m) * s;
                const float d = w[k] * gv[k];
                dv[k] = dv[k] + (d - dnorm_mean - n * dnorm_norm_mean) * s;
                nv[k] = n * gv[k];
            }
            store_bf16x8_any(dx + 8 * q, dv);
            if (want_weights) {
                layernorm_smem_add8(acc_db + 8 * q, gv);
                layernorm_smem_add8(acc_dw + 8 * q, nv);
            }
        }
    }
}

// smem: the kernel's dynamic shared memory (DYN_SMEM sits in each extern "C" kernel: an extern
// __shared__ array declared inside a template clashes with the other kernels' in nvcc's single
// translation unit).
template <class T>
__device__ __forceinline__ void layernorm_backward_impl(float* smem, T* __restrict__ dinp,
                                                        float* __restrict__ partials, const T* __restrict__ dout,
                                                        const T* __restrict__ inp, const float* __restrict__ weight,
                                                        const float* __restrict__ mean,
                                                        const float* __restrict__ rstd, int rows, int c) {
    // smem: [warps][2c], this warp's [dbias | dweight] accumulators
    const int warps = blockDim.x / 32;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const bool want_weights = partials != nullptr;
    float* acc_db = smem + static_cast<long long>(warp) * 2 * c;
    float* acc_dw = acc_db + c;
    if constexpr (ACT_PER_THREAD<T> == 8) {
        if (c % 8 == 0) {
            layernorm_backward_rows_bf16x8(acc_db, acc_dw, dinp, dout, inp, weight, mean, rstd, rows, c,
                                           want_weights);
            layernorm_backward_write_partials(smem, partials, c);
            return;
        }
    }
    // Each lane zeroes and later updates only its own columns, so no barrier is needed until the
    // block-wide sum below.
    if (want_weights) {
        for (int i = lane; i < c; i += 32) {
            acc_db[i] = 0.0f;
            acc_dw[i] = 0.0f;
        }
    }

    for (long long row = static_cast<long long>(blockIdx.x) * warps + warp; row < rows;
         row += static_cast<long long>(gridDim.x) * warps) {
        const T* x = inp + row * c;
        const T* g = dout + row * c;
        T* dx = dinp + row * c;
        const float m = mean[row];
        const float s = rstd[row];

        float dnorm_mean = 0.0f;
        float dnorm_norm_mean = 0.0f;
        for (int i = lane; i < c; i += 32) {
            const float n = (to_float(x[i]) - m) * s;
            const float d = weight[i] * to_float(g[i]);
            dnorm_mean += d;
            dnorm_norm_mean += d * n;
        }
        dnorm_mean = warp_reduce_sum(dnorm_mean) / c;
        dnorm_norm_mean = warp_reduce_sum(dnorm_norm_mean) / c;

        for (int i = lane; i < c; i += 32) {
            const float gi = to_float(g[i]);
            const float n = (to_float(x[i]) - m) * s;
            const float d = weight[i] * gi;
            dx[i] = from_float<T>(to_float(dx[i]) + (d - dnorm_mean - n * dnorm_norm_mean) * s);
            if (want_weights) {
                acc_db[i] += gi;
                acc_dw[i] += n * gi;
            }
        }
    }
    layernorm_backward_write_partials(smem, partials, c);
}

extern "C" __global__ void layernorm_backward(float* __restrict__ dinp, float* __restrict__ partials,
                                              const float* __restrict__ dout, const float* __restrict__ inp,
                                              const float* __restrict__ weight, const float* __restrict__ mean,
                                              const float* __restrict__ rstd, int rows, int c) {
    DYN_SMEM(float, smem);
    layernorm_backward_impl(smem, dinp, partials, dout, inp, weight, mean, rstd, rows, c);
}

extern "C" __global__ void layernorm_backward_bf16(__nv_bfloat16* __restrict__ dinp, float* __restrict__ partials,
                                                   const __nv_bfloat16* __restrict__ dout,
                                                   const __nv_bfloat16* __restrict__ inp,
                                                   const float* __restrict__ weight, const float* __restrict__ mean,
                                                   const float* __restrict__ rstd, int rows, int c) {
    DYN_SMEM(float, smem);
    layernorm_backward_impl(smem, dinp, partials, dout, inp, weight, mean, rstd, rows, c);
}

extern "C" __global__ void layernorm_backward_reduce(float* __restrict__ dweight, float* __restrict__ dbias,
                                                     const float* __restrict__ partials, int num_partials,
                                                     int c) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 2 * c) {
        return;
    }
    float total = 0.0f;
    for (int b = 0; b < num_partials; b++) {
        total += partials[static_cast<long long>(b) * 2 * c + i];
    }
    if (i < c) {
        if (dbias != nullptr) dbias[i] += total;
    } else {
        if (dweight != nullptr) dweight[i - c] += total;
    }
}

// residual_layernorm_forward's bf16 rows with c % 8 == 0: lane l owns the chunks l, l+32, ... as in
// layernorm_forward_row_bf16x8, writes its chunks of resid, then normalises what it stored (it
// re-reads only its own chunks).
__device__ __forceinline__ void residual_layernorm_row_bf16x8(__nv_bfloat16* __restrict__ x,
                                                              __nv_bfloat16* __restrict__ y, float* __restrict__ mean,
                                                              float* __restrict__ rstd,
                                                              const __nv_bfloat16* __restrict__ xa,
                                                              const __nv_bfloat16* __restrict__ xb,
                                                              const float* __restrict__ weight,
                                                              const float* __restrict__ bias, long long row, int c,
                                                              float eps, int lane) {
    const int chunks = c / 8;
    float sum = 0.0f;
    for (int q = lane; q < chunks; q += 32) {
        float va[8], vb[8];
        load_bf16x8_any(va, xa + 8 * q);
        load_bf16x8_any(vb, xb + 8 * q);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            // the stored value: in bf16 the statistics are those of resid as stored
            va[k] = __bfloat162float(__float2bfloat16_rn(va[k] + vb[k]));
            sum += va[k];
        }
        store_bf16x8_any(x + 8 * q, va);  // exact: va holds bf16 values
    }
    layernorm_finish_row_bf16x8(y, mean, rstd, x, weight, bias, row, c, eps, lane, sum);
}

template <class T>
__device__ __forceinline__ void residual_layernorm_forward_impl(T* __restrict__ resid, T* __restrict__ out,
                                                                float* __restrict__ mean, float* __restrict__ rstd,
                                                                const T* __restrict__ a, const T* __restrict__ b,
                                                                const float* __restrict__ weight,
                                                                const float* __restrict__ bias, int rows, int c,
                                                                float eps) {
    const int warps = blockDim.x / 32;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const long long row = static_cast<long long>(blockIdx.x) * warps + warp;
    if (row >= rows) {
        return;  // whole warp
    }
    const T* xa = a + row * c;
    const T* xb = b + row * c;
    T* x = resid + row * c;
    if constexpr (ACT_PER_THREAD<T> == 8) {
        if (c % 8 == 0) {
            residual_layernorm_row_bf16x8(x, out + row * c, mean, rstd, xa, xb, weight, bias, row, c, eps, lane);
            return;
        }
    }

    float sum = 0.0f;
    for (int i = lane; i < c; i += 32) {
        const T v = from_float<T>(to_float(xa[i]) + to_float(xb[i]));
        x[i] = v;
        sum += to_float(v);  // the stored value: in bf16 the statistics are those of resid as stored
    }
    const float m = warp_reduce_sum(sum) / c;

    float var = 0.0f;
    for (int i = lane; i < c; i += 32) {
        const float d = to_float(x[i]) - m;
        var += d * d;
    }
    const float s = 1.0f / sqrtf(warp_reduce_sum(var) / c + eps);

    T* y = out + row * c;
    for (int i = lane; i < c; i += 32) {
        y[i] = from_float<T>((to_float(x[i]) - m) * s * weight[i] + bias[i]);
    }
    if (lane == 0) {
        if (mean != nullptr) mean[row] = m;
        if (rstd != nullptr) rstd[row] = s;
    }
}

extern "C" __global__ void residual_layernorm_forward(float* __restrict__ resid, float* __restrict__ out,
                                                      float* __restrict__ mean, float* __restrict__ rstd,
                                                      const float* __restrict__ a, const float* __restrict__ b,
                                                      const float* __restrict__ weight,
                                                      const float* __restrict__ bias, int rows, int c, float eps) {
    residual_layernorm_forward_impl(resid, out, mean, rstd, a, b, weight, bias, rows, c, eps);
}

extern "C" __global__ void residual_layernorm_forward_bf16(__nv_bfloat16* __restrict__ resid,
                                                           __nv_bfloat16* __restrict__ out, float* __restrict__ mean,
                                                           float* __restrict__ rstd,
                                                           const __nv_bfloat16* __restrict__ a,
                                                           const __nv_bfloat16* __restrict__ b,
                                                           const float* __restrict__ weight,
                                                           const float* __restrict__ bias, int rows, int c,
                                                           float eps) {
    residual_layernorm_forward_impl(resid, out, mean, rstd, a, b, weight, bias, rows, c, eps);
}
