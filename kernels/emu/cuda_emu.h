// cuda_emu.h — the CUDA emulation shim: lets kernels/*.cu compile with the host C++20 compiler.
//
// Each CUDA thread of a block runs as a fiber on one runner thread (kernels/emu/emu_runtime.cpp);
// blocks run one after another and launches are serialised, so static `__shared__` can simply be
// `static`. Built-in indices are thread_local (set on every switch). Barriers and warp operations
// meet in the runtime, which checks the CUDA rules (same barrier, same warp op and mask, named lanes
// alive) and reports violations and deadlocks as launch errors with the source line
// (std::source_location default arguments), instead of hanging.
// Only what the kernels of this project need is here; docs/emulator.md lists what is emulated.
#pragma once
#ifndef PEPLER_CUDA_EMU_H
#define PEPLER_CUDA_EMU_H

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------------------------
// keywords

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __constant__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__

// ---------------------------------------------------------------------------------------------
// vector types (same sizes and alignments as CUDA's vector_types.h)

#define PEPLER_VEC2(T, N, A)            \
    struct alignas(A) N##2 { T x, y; }; \
    inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define PEPLER_VEC3(T, N)            \
    struct N##3 { T x, y, z; };      \
    inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define PEPLER_VEC4(T, N, A)                  \
    struct alignas(A) N##4 { T x, y, z, w; }; \
    inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }

PEPLER_VEC2(float, float, 8)
PEPLER_VEC3(float, float)
PEPLER_VEC4(float, float, 16)
PEPLER_VEC2(int, int, 8)
PEPLER_VEC3(int, int)
PEPLER_VEC4(int, int, 16)
PEPLER_VEC2(unsigned int, uint, 8)
PEPLER_VEC3(unsigned int, uint)
PEPLER_VEC4(unsigned int, uint, 16)
PEPLER_VEC2(double, double, 16)
PEPLER_VEC4(double, double, 16)
PEPLER_VEC2(short, short, 4)
PEPLER_VEC4(short, short, 8)
PEPLER_VEC2(unsigned short, ushort, 4)
PEPLER_VEC4(unsigned short, ushort, 8)
PEPLER_VEC2(long long, longlong, 16)
#undef PEPLER_VEC2
#undef PEPLER_VEC3
#undef PEPLER_VEC4

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// bf16 / f16 (storage types with round-to-nearest-even conversions, like cuda_bf16.h/cuda_fp16.h)

namespace pepler_emu {
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline uint16_t f32_to_bf16_rne(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN: CUDA's canonical bf16 NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_f16_rne(float f) {
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fffu;  // NaN: CUDA's canonical f16 NaN
    if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (a < 0x38800000u) {  // result is subnormal (or zero) in f16: |f| < 2^-14
        if (a < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25: rounds to 0 (ties too)
        uint32_t e = a >> 23;                                       // 102..112
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;                                   // 14..24
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return static_cast<uint16_t>(sign | r);
    }
    uint32_t r = a - 0x38000000u;  // rebias exponent 127 -> 15
    r += 0xfffu + ((r >> 13) & 1u);
    return static_cast<uint16_t>(sign | (r >> 13));
}
inline float f16_to_f32(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        float v = std::ldexp(static_cast<float>(m), -24);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}
}  // namespace pepler_emu

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(pepler_emu::f32_to_bf16_rne(f)) {}
    operator float() const { return pepler_emu::bf16_to_f32(__x); }
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(pepler_emu::f32_to_f16_rne(f)) {}
    operator float() const { return pepler_emu::f16_to_f32(__x); }
};
struct alignas(4) __half2 {
    __half x, y;
};
using nv_bfloat16 = __nv_bfloat16;
using nv_bfloat162 = __nv_bfloat162;
using half = __half;
using half2 = __half2;

inline __nv_bfloat16 __float2bfloat16(float f) { __nv_bfloat16 r; r.__x = pepler_emu::f32_to_bf16_rne(f); return r; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return pepler_emu::bf16_to_f32(h.__x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__float2bfloat16(lo), __float2bfloat16(hi)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return __floats2bfloat162_rn(f.x, f.y); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) { return {lo, hi}; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {__bfloat162float(v.x), __bfloat162float(v.y)}; }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 r; r.__x = u; return r; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }

inline __half __float2half(float f) { __half r; r.__x = pepler_emu::f32_to_f16_rne(f); return r; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __half2float(__half h) { return pepler_emu::f16_to_f32(h.__x); }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__float2half(lo), __float2half(hi)}; }
inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
inline __half2 __halves2half2(__half lo, __half hi) { return {lo, hi}; }
inline float2 __half22float2(__half2 v) { return {__half2float(v.x), __half2float(v.y)}; }
inline float __low2float(__half2 v) { return __half2float(v.x); }
inline float __high2float(__half2 v) { return __half2float(v.y); }
inline __half __ushort_as_half(unsigned short u) { __half r; r.__x = u; return r; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }

// ---------------------------------------------------------------------------------------------
// math (host libm; rsqrtf is the correctly rounded 1/sqrt, CUDA's is within 2 ulp)

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
// IEEE round-to-nearest ops nvcc never contracts into an FMA (the host build does not contract).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

#define PEPLER_MINMAX(T)                                    \
    inline T min(T a, T b) { return b < a ? b : a; }        \
    inline T max(T a, T b) { return a < b ? b : a; }
PEPLER_MINMAX(int)
PEPLER_MINMAX(unsigned int)
PEPLER_MINMAX(long)
PEPLER_MINMAX(unsigned long)
PEPLER_MINMAX(long long)
PEPLER_MINMAX(unsigned long long)
#undef PEPLER_MINMAX
// mixed signedness: unsigned, like CUDA's math_functions.hpp
inline unsigned int min(int a, unsigned int b) { return min(static_cast<unsigned int>(a), b); }
inline unsigned int min(unsigned int a, int b) { return min(a, static_cast<unsigned int>(b)); }
inline unsigned int max(int a, unsigned int b) { return max(static_cast<unsigned int>(a), b); }
inline unsigned int max(unsigned int a, int b) { return max(a, static_cast<unsigned int>(b)); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(a, b); }
inline double min(double a, float b) { return std::fmin(a, b); }
inline double max(float a, double b) { return std::fmax(a, b); }
inline double max(double a, float b) { return std::fmax(a, b); }

// cache-hinted loads and stores (llm.c uses __ldcs/__stcs for streaming data): plain accesses here
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------------------------
// the runtime interface (emu_runtime.cpp)

namespace pepler_emu {
using Loc = std::source_location;

// Thrown inside an emulated thread to unwind it after the launch failed; caught at the thread top.
struct Abort {};

void* dyn_smem();
void syncthreads(Loc loc);
void check_abort();  // throws Abort when the launch already failed (used by atomics, fences)
[[noreturn]] void trap(const char* what, Loc loc);

enum class WarpOp : int { ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All, SyncWarp, Mma, Ldmatrix };

// Meets the other lanes of `mask` at a warp operation. `in` (<= 64 bytes) is published as this lane's
// slot; once every lane of the mask arrived, `out_fn(ctx, slots, lane)` runs for this lane with all
// 32 slots (64 bytes each, valid for the lanes of the mask).
void warp_exchange(WarpOp op, unsigned mask, const void* in, size_t in_len,
                   void (*out_fn)(void* ctx, const unsigned char (*slots)[64], int lane), void* ctx,
                   Loc loc);
unsigned active_mask();

int shfl_source_lane(WarpOp op, int lane, int b, int width);

template <class T>
inline T shfl(WarpOp op, unsigned mask, T var, int b, int width, Loc loc) {
    static_assert(sizeof(T) <= 64 && std::is_trivially_copyable_v<T>, "shuffle of an unsupported type");
    struct Ctx { WarpOp op; int b, width; T result; } ctx{op, b, width, var};
    warp_exchange(
        op, mask, &var, sizeof(T),
        [](void* c, const unsigned char (*slots)[64], int lane) {
            Ctx* x = static_cast<Ctx*>(c);
            int src = shfl_source_lane(x->op, lane, x->b, x->width);
            std::memcpy(&x->result, slots[src], sizeof(T));
        },
        &ctx, loc);
    return ctx.result;
}

// The kernel table (generated by build.rs): per kernel, the trampoline that unpacks the
// cuLaunchKernel-style parameter array, and the size of each parameter (checked by the Rust side).
struct KernelSig {
    size_t n;
    unsigned char sizes[64];
};
struct KernelEntry {
    const char* name;
    void (*fn)(void**);
    const KernelSig* sig;
};
template <class... A, size_t... I>
inline void call_kernel_(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
template <class... A>
inline void call_kernel(void (*k)(A...), void** p) {
    call_kernel_(k, p, std::index_sequence_for<A...>{});
}
template <class... A>
constexpr KernelSig kernel_sig(void (*)(A...)) {
    static_assert(sizeof...(A) <= 64, "more than 64 kernel parameters");
    return KernelSig{sizeof...(A), {static_cast<unsigned char>(sizeof(std::remove_cvref_t<A>))...}};
}

enum class MmaType : int { Bf16, F16 };
void mma_m16n8k16(MmaType type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                  const float (&c)[4], Loc loc = Loc::current());
void ldmatrix(int num, bool trans, uint32_t* r, const void* row_addr, Loc loc = Loc::current());
}  // namespace pepler_emu

// ---------------------------------------------------------------------------------------------
// CUDA intrinsics

inline void __syncthreads(pepler_emu::Loc loc = pepler_emu::Loc::current()) { pepler_emu::syncthreads(loc); }
inline void __syncwarp(unsigned mask = 0xffffffffu, pepler_emu::Loc loc = pepler_emu::Loc::current()) {
    pepler_emu::warp_exchange(pepler_emu::WarpOp::SyncWarp, mask, nullptr, 0, nullptr, nullptr, loc);
}
inline void __trap(pepler_emu::Loc loc = pepler_emu::Loc::current()) { pepler_emu::trap("__trap()", loc); }
inline unsigned __activemask() { return pepler_emu::active_mask(); }

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32,
                     pepler_emu::Loc loc = pepler_emu::Loc::current()) {
    return pepler_emu::shfl(pepler_emu::WarpOp::ShflIdx, mask, var, srcLane, width, loc);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = 32,
                        pepler_emu::Loc loc = pepler_emu::Loc::current()) {
    return pepler_emu::shfl(pepler_emu::WarpOp::ShflUp, mask, var, static_cast<int>(delta), width, loc);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = 32,
                          pepler_emu::Loc loc = pepler_emu::Loc::current()) {
    return pepler_emu::shfl(pepler_emu::WarpOp::ShflDown, mask, var, static_cast<int>(delta), width, loc);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32,
                         pepler_emu::Loc loc = pepler_emu::Loc::current()) {
    return pepler_emu::shfl(pepler_emu::WarpOp::ShflXor, mask, var, laneMask, width, loc);
}

namespace pepler_emu {
inline unsigned vote(WarpOp op, unsigned mask, int pred, Loc loc) {
    struct Ctx { unsigned mask; unsigned result; } ctx{mask, 0};
    unsigned char p = pred ? 1 : 0;
    warp_exchange(
        op, mask, &p, 1,
        [](void* c, const unsigned char (*slots)[64], int) {
            Ctx* x = static_cast<Ctx*>(c);
            for (int l = 0; l < 32; ++l)
                if (((x->mask >> l) & 1u) && slots[l][0]) x->result |= 1u << l;
        },
        &ctx, loc);
    return ctx.result;
}
}  // namespace pepler_emu

inline unsigned __ballot_sync(unsigned mask, int pred, pepler_emu::Loc loc = pepler_emu::Loc::current()) {
    return pepler_emu::vote(pepler_emu::WarpOp::Ballot, mask, pred, loc);
}
inline int __any_sync(unsigned mask, int pred, pepler_emu::Loc loc = pepler_emu::Loc::current()) {
    return pepler_emu::vote(pepler_emu::WarpOp::Any, mask, pred, loc) != 0;
}
inline int __all_sync(unsigned mask, int pred, pepler_emu::Loc loc = pepler_emu::Loc::current()) {
    return pepler_emu::vote(pepler_emu::WarpOp::All, mask, pred, loc) == mask;
}

// atomics: real host atomics; they also notice a failed launch so a spin loop on one can end.
template <class T>
inline T atomicAdd(T* addr, T v) {
    pepler_emu::check_abort();
    return std::atomic_ref<T>(*addr).fetch_add(v);
}
template <class T>
inline T atomicSub(T* addr, T v) {
    pepler_emu::check_abort();
    return std::atomic_ref<T>(*addr).fetch_sub(v);
}
template <class T>
inline T atomicExch(T* addr, T v) {
    pepler_emu::check_abort();
    return std::atomic_ref<T>(*addr).exchange(v);
}
template <class T>
inline T atomicCAS(T* addr, T compare, T v) {
    pepler_emu::check_abort();
    std::atomic_ref<T>(*addr).compare_exchange_strong(compare, v);
    return compare;
}
template <class T>
inline T atomicMax(T* addr, T v) {
    pepler_emu::check_abort();
    std::atomic_ref<T> a(*addr);
    T old = a.load();
    while (old < v && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
template <class T>
inline T atomicMin(T* addr, T v) {
    pepler_emu::check_abort();
    std::atomic_ref<T> a(*addr);
    T old = a.load();
    while (v < old && !a.compare_exchange_weak(old, v)) {
    }
    return old;
}
inline void __threadfence() {
    pepler_emu::check_abort();
    std::atomic_thread_fence(std::memory_order_seq_cst);
}
inline void __threadfence_block() { __threadfence(); }
void __nanosleep(unsigned ns);

#endif  // PEPLER_CUDA_EMU_H
