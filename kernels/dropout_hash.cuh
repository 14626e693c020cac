// dropout_hash.cuh — the counter-based dropout mask, on the device (CPU reference and the
// definition: src/ops/dropout.rs, `dropout_hash` / `dropout_scale`). Every backend draws the same
// mask from (seed, step, site, index) with no RNG state, so a backward pass recomputes the mask of
// its forward instead of storing it, and cpu, emu and cuda agree bit for bit.
//
//   key   = mix64(seed ^ mix64(step + 0x9e3779b97f4a7c15) ^ (site << 32))
//   hash  = mix64(key ^ index * 0xd1b54a32d192ed03) >> 32          (32 random bits)
//   keep  = (hash >> 8) * 2^-24 >= p;  scale = keep ? 1 / (1 - p) : 0
//
// `dropout_key` is per call (hoist it out of loops); `dropout_scale_at` is per element. All integer
// arithmetic is exact; `1.0f / (1.0f - p)` is one IEEE division on every device.
#pragma once
#include "common.cuh"

__device__ __forceinline__ unsigned long long dropout_mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// The per-call key of (seed, step, site).
__device__ __forceinline__ unsigned long long dropout_key(unsigned long long seed, unsigned long long step,
                                                          unsigned int site) {
    return dropout_mix64(seed ^ dropout_mix64(step + 0x9e3779b97f4a7c15ull) ^
                         (static_cast<unsigned long long>(site) << 32));
}

// Multiplier for element `index`: 0 (dropped) or 1 / (1 - p) (kept).
__device__ __forceinline__ float dropout_scale_at(unsigned long long key, unsigned long long index, float p) {
    const unsigned int h = static_cast<unsigned int>(dropout_mix64(key ^ (index * 0xd1b54a32d192ed03ull)) >> 32);
    const float u = static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
    return u >= p ? 1.0f / (1.0f - p) : 0.0f;
}
