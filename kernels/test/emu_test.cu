// emu_test.cu — test-only kernels for tests/emulator.rs: they exercise the emulator's CUDA rules
// (shuffles, votes, mma/ldmatrix fragments, barriers, dynamic shared memory, conversions) and
// contain deliberately broken kernels (divergent barrier, partial-warp shuffle, missing barrier,
// a spin on another block) that the emulator must report as errors. They also compile with nvcc,
// so the same checks can run on a GPU. Not used by the model.
#include "common.cuh"

// One block of 32 threads per case: out[c*32+lane] = shuffle(mode[c], in[c*32+lane], arg[c], width[c])
// mode 0 idx, 1 up, 2 down, 3 xor. out64 gets the same shuffle of a double (64-bit path).
extern "C" __global__ void emu_test_shfl(const int* modes, const int* widths, const int* args, const int* in,
                                         int* out, double* out64) {
    const int c = blockIdx.x, lane = threadIdx.x;
    const int v = in[c * 32 + lane], w = widths[c], a = args[c];
    const double d = v + 0.25;
    int r = 0;
    double r64 = 0.0;
    switch (modes[c]) {
        case 0:
            r = __shfl_sync(0xffffffffu, v, a, w);
            r64 = __shfl_sync(0xffffffffu, d, a, w);
            break;
        case 1:
            r = __shfl_up_sync(0xffffffffu, v, a, w);
            r64 = __shfl_up_sync(0xffffffffu, d, a, w);
            break;
        case 2:
            r = __shfl_down_sync(0xffffffffu, v, a, w);
            r64 = __shfl_down_sync(0xffffffffu, d, a, w);
            break;
        default:
            r = __shfl_xor_sync(0xffffffffu, v, a, w);
            r64 = __shfl_xor_sync(0xffffffffu, d, a, w);
            break;
    }
    out[c * 32 + lane] = r;
    out64[c * 32 + lane] = r64;
}

// Votes per thread t (blocks of any size that is a multiple of 32): out[4t..4t+4] =
// ballot(full), any(full), all(full), ballot over the half-warp group of t (two disjoint masks).
extern "C" __global__ void emu_test_vote(const int* pred, unsigned* out) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % 32;
    const int p = pred[t];
    out[4 * t + 0] = __ballot_sync(0xffffffffu, p);
    out[4 * t + 1] = __any_sync(0xffffffffu, p);
    out[4 * t + 2] = __all_sync(0xffffffffu, p);
    const unsigned half_mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    out[4 * t + 3] = __ballot_sync(half_mask, p);
}

// warp_reduce_sum / warp_reduce_max of common.cuh: out[2*t] = sum, out[2*t+1] = max over t's warp.
extern "C" __global__ void emu_test_warp_reduce(const float* in, float* out) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    out[2 * t] = warp_reduce_sum(in[t]);
    out[2 * t + 1] = warp_reduce_max(in[t]);
}

// One warp: D (16x8) = A (16x16, row-major) * B (16x8, K x N row-major) + C, fragments built from
// global memory by the layout documented in common.cuh. kind 0: bf16, 1: f16 (bits in u16).
extern "C" __global__ void emu_test_mma(int kind, const uint16_t* A, const uint16_t* B, const float* C, float* D) {
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    auto pk = [](uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); };
    uint32_t a[4], b[2];
    a[0] = pk(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
    a[1] = pk(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
    a[2] = pk(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
    a[3] = pk(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
    b[0] = pk(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
    b[1] = pk(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    float d[4];
    if (kind == 0) mma_m16n8k16_bf16(d, a, b, c);
    else mma_m16n8k16_f16(d, a, b, c);
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// One warp: copies `num` 8x8 u16 matrices (row-major, one after another) to shared memory, then
// ldmatrix_x{num}[_trans]; out[lane*4 + i] = register i of the lane (unused registers = 0).
extern "C" __global__ void emu_test_ldmatrix(int num, int trans, const uint16_t* src, uint32_t* out) {
    __shared__ __align__(16) uint16_t tile[4 * 64];
    const int lane = threadIdx.x;
    for (int i = lane; i < 4 * 64; i += 32) tile[i] = i < num * 64 ? src[i] : 0;
    __syncwarp();
    const uint16_t* row = tile + (lane < 8 * num ? (lane / 8) * 64 + (lane % 8) * 8 : 0);
    uint32_t r[4] = {0, 0, 0, 0};
    if (num == 1) {
        if (trans) ldmatrix_x1_trans(r[0], row);
        else ldmatrix_x1(r[0], row);
    } else if (num == 2) {
        uint32_t r2[2];
        if (trans) ldmatrix_x2_trans(r2, row);
        else ldmatrix_x2(r2, row);
        r[0] = r2[0];
        r[1] = r2[1];
    } else {
        if (trans) ldmatrix_x4_trans(r, row);
        else ldmatrix_x4(r, row);
    }
    for (int i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

// The usual tensor-core path: A and B go to shared memory, fragments come from ldmatrix_x4 (A) and
// ldmatrix_x2_trans (B stored K x N row-major), then mma. Same D = A*B + C as emu_test_mma.
extern "C" __global__ void emu_test_mma_ldmatrix(int kind, const uint16_t* A, const uint16_t* B, const float* C,
                                                 float* D) {
    __shared__ __align__(16) uint16_t As[16 * 16];
    __shared__ __align__(16) uint16_t Bs[16 * 8];
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    for (int i = lane; i < 256; i += 32) As[i] = A[i];
    for (int i = lane; i < 128; i += 32) Bs[i] = B[i];
    __syncwarp();
    uint32_t a[4], b[2];
    const int m = lane / 8, r = lane % 8;  // matrix m: rows (m%2)*8.., cols (m/2)*8..
    ldmatrix_x4(a, As + ((m % 2) * 8 + r) * 16 + (m / 2) * 8);
    ldmatrix_x2_trans(b, Bs + (lane % 16) * 8);
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    if (kind == 0) mma_m16n8k16_bf16(c, a, b, c);
    else mma_m16n8k16_f16(c, a, b, c);
    D[g * 8 + 2 * t] = c[0];
    D[g * 8 + 2 * t + 1] = c[1];
    D[(g + 8) * 8 + 2 * t] = c[2];
    D[(g + 8) * 8 + 2 * t + 1] = c[3];
}

// Every thread writes its built-in indices: out[8*i ..] = tid.xyz, bid.xyz, blockDim.x*y*z,
// gridDim.x*y*z, with i = the global linear thread index.
extern "C" __global__ void emu_test_indices(unsigned* out) {
    const unsigned bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned* o = out + 8 * (bid * nthreads + tid);
    o[0] = threadIdx.x;
    o[1] = threadIdx.y;
    o[2] = threadIdx.z;
    o[3] = blockIdx.x;
    o[4] = blockIdx.y;
    o[5] = blockIdx.z;
    o[6] = blockDim.x * blockDim.y * blockDim.z;
    o[7] = gridDim.x * gridDim.y * gridDim.z;
}

// Block-wide sum of in[0..n) (one block, n <= blockDim.x <= 1024) through dynamic shared memory.
// Threads >= n return at once (the barrier drops them); three barrier rounds add `rounds`.
// With with_barrier == 0 the first barrier is missing: thread 0 may read slots not yet written.
extern "C" __global__ void emu_test_reduce(const float* in, float* out, int n, int with_barrier) {
    DYN_SMEM(float, s);
    const int tid = threadIdx.x;
    if (tid >= n) return;
    s[tid] = in[tid];
    if (with_barrier) __syncthreads();
    if (tid == 0) {
        float sum = 0.0f;
        for (int i = 0; i < n; ++i) sum += s[i];
        out[0] = sum;
    }
    for (int round = 0; round < 3; ++round) {
        __syncthreads();
        if (tid == 0) out[1] += 1.0f;
    }
}

// Copies the block's dynamic shared memory (n u32 words) to out[blockIdx.x * n ..] BEFORE writing
// zeros into it, so every block must see the fresh NaN fill.
extern "C" __global__ void emu_test_smem_fill(unsigned* out, int n) {
    DYN_SMEM(unsigned, s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[blockIdx.x * n + i] = s[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = 0;
}

// Deliberately broken: half of the threads wait at one __syncthreads, half at another.
extern "C" __global__ void emu_test_divergent_barrier(int* out) {
    if (threadIdx.x % 2 == 0) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

// Deliberately broken: only lanes 0..15 execute a full-mask shuffle.
extern "C" __global__ void emu_test_partial_shfl(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_sync(0xffffffffu, v, 0);
    out[threadIdx.x] = v;
}

// Deliberately broken when blockDim.x is not a multiple of 32: a full-mask shuffle in a partial warp.
extern "C" __global__ void emu_test_full_mask_shfl(int* out) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

// Deliberately broken: lanes of one warp meet at different warp operations.
extern "C" __global__ void emu_test_mixed_warp_ops(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x % 2 == 0) v = __shfl_sync(0xffffffffu, v, 0);
    else v = __ballot_sync(0xffffffffu, v);
    out[threadIdx.x] = v;
}

// Deliberately broken: block 0 spins until block 1 sets *flag, but blocks do not run concurrently
// (not on the emulator, and not guaranteed on a GPU either).
extern "C" __global__ void emu_test_spin(int* flag) {
    if (blockIdx.x == 1 && threadIdx.x == 0) atomicExch(flag, 1);
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        while (atomicAdd(flag, 0) == 0) {
        }
    }
}

// Deliberately broken: thread 5 traps.
extern "C" __global__ void emu_test_trap(int* out) {
    if (threadIdx.x == 5) __trap();
    out[threadIdx.x] = 1;
}

// Conversions: bf[i], hf[i] = bits of the round-to-nearest-even bf16 / f16 of in[i]; back_* = those
// values converted back to float.
extern "C" __global__ void emu_test_convert(const float* in, uint16_t* bf, uint16_t* hf, float* back_bf,
                                            float* back_hf, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __nv_bfloat16 b = __float2bfloat16(in[i]);
    const __half h = __float2half(in[i]);
    bf[i] = __bfloat16_as_ushort(b);
    hf[i] = __half_as_ushort(h);
    back_bf[i] = __bfloat162float(b);
    back_hf[i] = __half2float(h);
}

// atomicAdd on a float (exact here: the inputs are small integers).
extern "C" __global__ void emu_test_atomic(float* acc, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(acc, in[i]);
}

// Deliberately broken: lanes 0..15 wait in a full-mask shuffle while lanes 16..31 wait at a
// barrier: a deadlock (every live thread waits).
extern "C" __global__ void emu_test_deadlock(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_sync(0xffffffffu, v, 0);
    else __syncthreads();
    out[threadIdx.x] = v;
}

// Deliberately broken: thread 0 of block 0 spins on a plain volatile load, without any atomic,
// fence or barrier the emulator could stop it at; it ends when the host sets *flag.
extern "C" __global__ void emu_test_pure_spin(volatile int* flag) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        while (*flag == 0) {
        }
    }
}
