// emu_strict.cu — test-only kernels for the emulator's strict mode (tests/emulator.rs, "strict
// mode"): each planted bug below is one that a GPU's compute-sanitizer would report (memcheck,
// initcheck, synccheck) or that breaks determinism, and that the emulated device must report as an
// error naming the kernel. Not used by the model; they also compile with nvcc.
#include "common.cuh"

// out[i] = i for i in [0, n) — planted: the guard is `i > n`, so thread n writes out[n], one past
// the end (the layernorm_backward_reduce bug of GPU-BACKEND.md).
extern "C" __global__ void emu_strict_write_past_end(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i > n) return;
    out[i] = static_cast<float>(i);
}

// out[i] = in[i] - in[i-1] for i in [0, n) — planted: no special case for i = 0, which reads in[-1].
extern "C" __global__ void emu_strict_read_before_start(float* out, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = in[i] - in[i - 1];
}

// Row sums of a (rows x c) batch held in a buffer allocated for rows_cap rows: one block per row —
// planted: the guard tests the buffer's capacity instead of the launch's rows, so blocks past the
// batch read rows that belong to no sample of this batch.
extern "C" __global__ void emu_strict_row_sum(float* out, const float* inp, int rows, int c, int rows_cap) {
    const int r = blockIdx.x;
    if (r >= rows_cap) return;
    if (threadIdx.x != 0) return;
    float s = 0.0f;
    for (int i = 0; i < c; i++) s += inp[static_cast<long long>(r) * c + i];
    out[r] = s;
}

// out[i] = 2 * in[i] for i in [0, n) — planted: element n/2 is skipped, so the output keeps
// whatever the allocation held.
extern "C" __global__ void emu_strict_missed_write(float* out, const float* in, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || i == n / 2) return;
    out[i] = 2.0f * in[i];
}

// Block sum through static shared memory: every thread stores its value, thread 0 adds them —
// planted: no __syncthreads() between the stores and thread 0's reads. with_barrier = 1 is the
// correct kernel.
extern "C" __global__ void emu_strict_static_smem_sum(float* out, const float* in, int with_barrier) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = in[blockIdx.x * blockDim.x + t];
    if (with_barrier) __syncthreads();
    if (t == 0) {
        float acc = 0.0f;
        for (int i = 0; i < static_cast<int>(blockDim.x); i++) acc += s[i];
        out[blockIdx.x] = acc;
    }
}

// Reads static shared memory it never wrote in this block (block 0 writes it, later blocks only
// read): on a GPU the later blocks see garbage; under strict emulation it is poisoned and reported.
extern "C" __global__ void emu_strict_stale_static_smem(float* out) {
    __shared__ float keep[32];
    if (blockIdx.x == 0) keep[threadIdx.x] = 1.0f;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = keep[threadIdx.x];
}

// Dynamic shared memory of `n` floats; thread t writes slot t + offset (planted out of bounds when
// offset > 0 reaches past n).
extern "C" __global__ void emu_strict_smem_oob(float* out, int offset) {
    DYN_SMEM(float, s);
    s[threadIdx.x + offset] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

// __activemask() inside divergent branches of one warp: out[lane] = the mask the lane got.
// Lanes 0-9 and 10-19 call it at two different sites, lanes 20-31 never do (they write 0).
extern "C" __global__ void emu_strict_activemask(unsigned* out) {
    const int lane = threadIdx.x % 32;
    unsigned m = 0;
    if (lane < 10) {
        m = __activemask();
    } else if (lane < 20) {
        m = __activemask();
    }
    out[threadIdx.x] = m;
}

// A 128-bit vector load through common.cuh's helper at in + offset floats (misaligned unless
// offset % 4 == 0): out[t] = the four values summed.
extern "C" __global__ void emu_strict_vector_load(float* out, const float* in, int offset) {
    const float4 v = load_float4(in + offset + 4 * threadIdx.x);
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// Writes through a pointer the launch passed as const (the device layer checks the kinds; this
// is the emulator's own check of a cast-away const).
extern "C" __global__ void emu_strict_write_const(const float* in) {
    const_cast<float*>(in)[threadIdx.x] = 0.0f;
}
