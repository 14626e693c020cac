// common.cuh — helpers shared by every kernel: warp reductions, dynamic shared memory, CEIL_DIV,
// bf16/f16 types, activation loads/stores (to_float/from_float, act_map1/2), and the tensor-core
// mma/ldmatrix wrappers (inline PTX under nvcc, emulated on the host under the CPU emulator in
// kernels/emu).
//
// HOW TO WRITE A KERNEL THAT WORKS UNDER nvcc AND UNDER THE EMULATOR (docs/emulator.md has more):
//  1. `#include "common.cuh"` first; launchable kernels are `extern "C" __global__ void name(...)`
//     (build.rs finds them by that text; names are global: prefix them with the op, e.g. gelu_forward).
//  2. All kernels are compiled by nvcc as ONE translation unit: file-scope helpers must have unique
//     names (prefix with the op) or live in common.cuh. Templates are fine inside a file.
//  3. Dynamic shared memory only through `DYN_SMEM(float, smem);` (never `extern __shared__`); it is
//     filled with NaN bytes (0xFF) before every block under emulation. Static `__shared__` arrays are
//     fine (they keep the previous block's values under emulation, so never read them unwritten).
//  4. Warp ops: `__shfl_*_sync`, `__ballot_sync`, `__syncwarp`, mma/ldmatrix below. Every lane named
//     in the mask must execute the same op; a full mask needs blockDim a multiple of 32.
//  5. Use `__syncthreads()` only where the whole block reaches the same call (early `return` is ok).
//  6. Math: expf/tanhf/rsqrtf/fmaxf...; no fast-math intrinsics (__expf, __fdividef): parity.
//  7. No float atomics in anything that feeds a result (determinism): a float atomicAdd in a production
//     kernel does not compile under emulation; in kernels/test/ it is a strict-mode error unless the
//     launch allows it. Where the rounding order matters, write __fmaf_rn (nvcc contracts a*b+c into
//     an FMA by default; the host build does not: -ffp-contract=off).
//  8. Vector (64/128-bit) global or shared memory accesses through load_vec/store_vec (or
//     load_float4/store_float4) below: a GPU faults on a misaligned one; the emulator reports it.
//  9. Activations in bf16 (src/precision.rs): write the body once as a template on the activation
//     type T, load with to_float, store with from_float<T> (one rounding), and give it two entry
//     points, `name(float* ...)` and `name_bf16(__nv_bfloat16* ...)`; elementwise kernels can use
//     act_map1/act_map2 below (8 bf16 per thread, 16-byte accesses when aligned).
#pragma once

#ifndef __CUDACC__
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#endif

// ----------------------------------------------------------------------------------------------
// small integer helpers

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

template <class T>
__host__ __device__ __forceinline__ constexpr T ceil_div(T a, T b) {
    return (a + b - 1) / b;
}

// ----------------------------------------------------------------------------------------------
// dynamic shared memory: `DYN_SMEM(float, smem);` declares `float* smem` pointing at the block's
// dynamic shared memory (the `dyn_smem` bytes of the launch), 16-byte aligned.

#ifdef __CUDACC__
#define DYN_SMEM(type, name)                                                  \
    extern __shared__ __align__(16) unsigned char pepler_dyn_smem_bytes_[];  \
    type* name = reinterpret_cast<type*>(pepler_dyn_smem_bytes_)
#else
#define DYN_SMEM(type, name) type* name = reinterpret_cast<type*>(::pepler_emu::dyn_smem())
#endif

// ----------------------------------------------------------------------------------------------
// vector loads and stores: one 64/128-bit access on a GPU, which must be naturally aligned (a
// misaligned float4 faults there, but works on x86). Under emulation the alignment is checked
// (strict mode: an error naming the kernel, thread and source line); the access itself is then
// element-wise, so memcheck still sees every element.

template <class V>
__device__ __forceinline__ V load_vec(const void* p
#ifndef __CUDACC__
                                      , ::pepler_emu::Loc loc = ::pepler_emu::Loc::current()
#endif
) {
    static_assert(sizeof(V) == 4 || sizeof(V) == 8 || sizeof(V) == 16, "vector accesses are 4, 8 or 16 bytes");
#ifndef __CUDACC__
    ::pepler_emu::check_vector_align(p, sizeof(V), false, loc);
#endif
    return *reinterpret_cast<const V*>(p);
}

template <class V>
__device__ __forceinline__ void store_vec(void* p, V v
#ifndef __CUDACC__
                                          , ::pepler_emu::Loc loc = ::pepler_emu::Loc::current()
#endif
) {
    static_assert(sizeof(V) == 4 || sizeof(V) == 8 || sizeof(V) == 16, "vector accesses are 4, 8 or 16 bytes");
#ifndef __CUDACC__
    ::pepler_emu::check_vector_align(p, sizeof(V), true, loc);
#endif
    *reinterpret_cast<V*>(p) = v;
}

#ifdef __CUDACC__
__device__ __forceinline__ float4 load_float4(const float* p) { return load_vec<float4>(p); }
__device__ __forceinline__ void store_float4(float* p, float4 v) { store_vec<float4>(p, v); }
#else
inline float4 load_float4(const float* p, ::pepler_emu::Loc loc = ::pepler_emu::Loc::current()) {
    return load_vec<float4>(p, loc);
}
inline void store_float4(float* p, float4 v, ::pepler_emu::Loc loc = ::pepler_emu::Loc::current()) {
    store_vec<float4>(p, v, loc);
}
#endif

// ----------------------------------------------------------------------------------------------
// warp reductions over all 32 lanes (full mask, xor butterfly): every lane gets the same bits,
// because each step adds the same two operands on both partners.

__device__ __forceinline__ float warp_reduce_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ __forceinline__ float warp_reduce_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// ----------------------------------------------------------------------------------------------
// Tensor cores: mma.sync.aligned.m16n8k16.row.col, f32 accumulate, D = A*B + C (d may alias c).
// Fragment layout (g = lane>>2, t = lane&3; the lower-indexed element sits in the low 16 bits):
//   A (16x16, row-major) a[r]: r=0 (row g, cols 2t,2t+1), r=1 (row g+8, cols 2t,2t+1),
//                              r=2 (row g, cols 2t+8,2t+9), r=3 (row g+8, cols 2t+8,2t+9)
//   B (16x8, K x N)     b[r]: r=0 (rows 2t,2t+1, col g),  r=1 (rows 2t+8,2t+9, col g)
//   C/D (16x8)          c[i]: i=0,1 (row g, cols 2t,2t+1), i=2,3 (row g+8, cols 2t,2t+1)
// All 32 lanes of the warp must call it together (the instruction is warp-wide).

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4],
                                                  const uint32_t (&b)[2], const float (&c)[4]) {
#ifdef __CUDACC__
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
#else
    ::pepler_emu::mma_m16n8k16(::pepler_emu::MmaType::Bf16, d, a, b, c);
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2], const float (&c)[4]) {
#ifdef __CUDACC__
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
#else
    ::pepler_emu::mma_m16n8k16(::pepler_emu::MmaType::F16, d, a, b, c);
#endif
}

// ----------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}[.trans].shared.b16: loads 1/2/4 8x8 matrices of 16-bit
// elements from SHARED memory. Lanes 8i..8i+7 pass the addresses of rows 0..7 of matrix i (16
// bytes each, 16-byte aligned); lanes beyond the matrices used pass any address. Result register
// r[i] of lane L holds matrix i's (row L/4, cols 2(L%4), 2(L%4)+1); with _trans it holds
// (rows 2(L%4), 2(L%4)+1 of column L/4), i.e. the transposed matrix's fragment.

#ifdef __CUDACC__
__device__ __forceinline__ uint32_t pepler_smem_addr_(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#define PEPLER_LDMATRIX_ASM_(shape)                                                                \
    "ldmatrix.sync.aligned.m8n8." shape ".shared.b16 "
#endif

__device__ __forceinline__ void ldmatrix_x1(uint32_t& r, const void* row_addr) {
#ifdef __CUDACC__
    asm volatile(PEPLER_LDMATRIX_ASM_("x1") "{%0}, [%1];\n" : "=r"(r) : "r"(pepler_smem_addr_(row_addr)));
#else
    ::pepler_emu::ldmatrix(1, false, &r, row_addr);
#endif
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row_addr) {
#ifdef __CUDACC__
    asm volatile(PEPLER_LDMATRIX_ASM_("x2") "{%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(pepler_smem_addr_(row_addr)));
#else
    ::pepler_emu::ldmatrix(2, false, r, row_addr);
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_addr) {
#ifdef __CUDACC__
    asm volatile(PEPLER_LDMATRIX_ASM_("x4") "{%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(pepler_smem_addr_(row_addr)));
#else
    ::pepler_emu::ldmatrix(4, false, r, row_addr);
#endif
}

__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t& r, const void* row_addr) {
#ifdef __CUDACC__
    asm volatile(PEPLER_LDMATRIX_ASM_("x1.trans") "{%0}, [%1];\n"
                 : "=r"(r)
                 : "r"(pepler_smem_addr_(row_addr)));
#else
    ::pepler_emu::ldmatrix(1, true, &r, row_addr);
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row_addr) {
#ifdef __CUDACC__
    asm volatile(PEPLER_LDMATRIX_ASM_("x2.trans") "{%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(pepler_smem_addr_(row_addr)));
#else
    ::pepler_emu::ldmatrix(2, true, r, row_addr);
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_addr) {
#ifdef __CUDACC__
    asm volatile(PEPLER_LDMATRIX_ASM_("x4.trans") "{%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(pepler_smem_addr_(row_addr)));
#else
    ::pepler_emu::ldmatrix(4, true, r, row_addr);
#endif
}

// ----------------------------------------------------------------------------------------------
// packing helpers for mma fragments: two 16-bit values in one register, `lo` in the low half.

__device__ __forceinline__ uint32_t pack_bf16x2(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) |
           (static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16);
}

__device__ __forceinline__ uint32_t pack_half2(__half lo, __half hi) {
    return static_cast<uint32_t>(__half_as_ushort(lo)) | (static_cast<uint32_t>(__half_as_ushort(hi)) << 16);
}

// ----------------------------------------------------------------------------------------------
// Activation element types (src/precision.rs): activations are stored as float or __nv_bfloat16;
// everything reduced or accumulated, parameters and their gradients stay float. A kernel templated
// on the activation type T loads with to_float (exact widening), computes in f32 and stores with
// from_float<T> (rounds once, to nearest even). For T = float both are the identity, so the float
// instantiation of a template computes exactly what a plain fp32 kernel does.

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// 8 bf16 in one 16-byte access (p 16-byte aligned). Element k is the k-th 16-bit half in memory
// order: the low half of word k/2 for even k (little-endian, on the host as on a GPU).
__device__ __forceinline__ void load_bf16x8(float (&f)[8], const __nv_bfloat16* p) {
    const uint4 u = load_vec<uint4>(p);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        f[2 * k] = __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(w[k] & 0xffffu)));
        f[2 * k + 1] = __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(w[k] >> 16)));
    }
}

__device__ __forceinline__ void store_bf16x8(__nv_bfloat16* p, const float (&f)[8]) {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        w[k] = pack_bf16x2(__float2bfloat16_rn(f[2 * k]), __float2bfloat16_rn(f[2 * k + 1]));
    }
    store_vec<uint4>(p, make_uint4(w[0], w[1], w[2], w[3]));
}

// Elementwise activation kernels (gelu, residual, dropout, sigmoid): thread t of the 1-D grid
// handles elements [ACT_PER_THREAD<T> * t, ... + ACT_PER_THREAD<T>): one float, or 8 bf16 with one
// 16-byte load per input and one 16-byte store when every pointer is 16-byte aligned and all 8 are
// in range; otherwise (a view at an odd offset, the tail) element by element. Both paths do the
// same f32 operations per element, so the result never depends on alignment. `op(i, x...)` gets
// the element index and the widened inputs and returns the f32 result, rounded once on the store.
// out may alias an input: each thread reads its elements before writing them.
template <class T>
inline constexpr int ACT_PER_THREAD = 1;
template <>
inline constexpr int ACT_PER_THREAD<__nv_bfloat16> = 8;

__device__ __forceinline__ bool act_aligned16(const void* p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// Row kernels (layernorm, classifier, embedding) that vectorize a row whose alignment they do not
// control: 8 consecutive elements at p with one 16-byte access (two float4 for f32) when p is
// 16-byte aligned, else element by element. Same elements, same values, same order either way:
// the caller's arithmetic cannot tell the two apart.
__device__ __forceinline__ void load_bf16x8_any(float (&f)[8], const __nv_bfloat16* p) {
    if (act_aligned16(p)) {
        load_bf16x8(f, p);
        return;
    }
#pragma unroll
    for (int k = 0; k < 8; k++) {
        f[k] = __bfloat162float(p[k]);
    }
}

__device__ __forceinline__ void store_bf16x8_any(__nv_bfloat16* p, const float (&f)[8]) {
    if (act_aligned16(p)) {
        store_bf16x8(p, f);
        return;
    }
#pragma unroll
    for (int k = 0; k < 8; k++) {
        p[k] = __float2bfloat16_rn(f[k]);
    }
}

__device__ __forceinline__ void load_f32x8_any(float (&f)[8], const float* p) {
    if (act_aligned16(p)) {
        const float4 lo = load_float4(p);
        const float4 hi = load_float4(p + 4);
        f[0] = lo.x, f[1] = lo.y, f[2] = lo.z, f[3] = lo.w;
        f[4] = hi.x, f[5] = hi.y, f[6] = hi.z, f[7] = hi.w;
        return;
    }
#pragma unroll
    for (int k = 0; k < 8; k++) {
        f[k] = p[k];
    }
}

template <class T, class Op>
__device__ __forceinline__ void act_map1(T* out, const T* a, long long n, Op op) {
    constexpr int N = ACT_PER_THREAD<T>;
    const long long i0 = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
    if (i0 >= n) {
        return;
    }
    if constexpr (N == 8) {
        if (i0 + 8 <= n && act_aligned16(out) && act_aligned16(a)) {
            float x[8];
            load_bf16x8(x, a + i0);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                x[k] = op(i0 + k, x[k]);
            }
            store_bf16x8(out + i0, x);
            return;
        }
    }
    for (long long i = i0; i < i0 + N && i < n; i++) {
        out[i] = from_float<T>(op(i, to_float(a[i])));
    }
}

template <class T, class Op>
__device__ __forceinline__ void act_map2(T* out, const T* a, const T* b, long long n, Op op) {
    constexpr int N = ACT_PER_THREAD<T>;
    const long long i0 = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
    if (i0 >= n) {
        return;
    }
    if constexpr (N == 8) {
        if (i0 + 8 <= n && act_aligned16(out) && act_aligned16(a) && act_aligned16(b)) {
            float x[8], y[8];
            load_bf16x8(x, a + i0);
            load_bf16x8(y, b + i0);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                x[k] = op(i0 + k, x[k], y[k]);
            }
            store_bf16x8(out + i0, x);
            return;
        }
    }
    for (long long i = i0; i < i0 + N && i < n; i++) {
        out[i] = from_float<T>(op(i, to_float(a[i]), to_float(b[i])));
    }
}
