// attention.cu — fused causal multi-head self-attention, forward, backward and KV-cache decoding
// (CPU reference: src/ops/attention.rs; launchers: src/kernels/attention.rs).
//
// Layouts (row-major): qkv (B, L, 3C) = [q | k | v] per position, head h owns channels
// h*hd..(h+1)*hd of each third (hd = C / NH); out, dout (B, L, C); dqkv (B, L, 3C);
// lse, D (B, NH, L); key_mask (B, L) int, 1 = attend (may be NULL = all keys); k_cache, v_cache
// (B, NH, lmax, hd).
//
// Precision (src/precision.rs): the activations qkv, out, dout, dqkv, k_cache, v_cache are T =
// float or __nv_bfloat16 (the `_bf16` entry points); lse and D are always f32. Every kernel is one
// template over T: loads widen T to f32 (into the f32 shared-memory tiles and registers), all the
// arithmetic below is f32 and identical for both types, and out, dq, dk, dv are rounded once (to
// nearest even) when stored; the cache append copies T. For bf16 the backward's D is dout . out of
// the stored, rounded out (as FlashAttention's), where the f32 reference has sum_j P_tj dP_tj.
//
// Math (per sequence b, head h, query t, key j):
//   s_tj  = (q_t . k_j) / sqrtf(hd)            (a division, as the reference and HF eager)
//   key j visible to t  <=>  j <= t and key_mask[b, j] != 0
//   P_tj  = exp(s_tj - lse_t) for visible keys, 0 otherwise;  lse_t = m_t + log(sum_j exp(s_tj - m_t))
//   r_tj  = dropout_scale(site, ((b*NH + h)*L + t)*L + j)  (1 without dropout; the element index of
//           the probability in the reference, so every device draws the same mask). The dropout
//           arguments of every entry point are (drop_on, seed, step, step_at, site, p); step_at is
//           NULL, or inside a captured step graph the device's step scalar holding the step
//           (src/device/step.rs), read when the kernel runs so each replay uses its step's masks.
//   out_t = sum_j P_tj r_tj v_j
//   A query with no visible key has all-zero probabilities: out_t = 0, and lse_t = +INFINITY, so
//   that exp(s - lse) = 0 in the backward with no special case.
// Backward (D_t = dout_t . out_t = sum_j P_tj dP_tj, the softmax-backward row term):
//   dP_tj = (dout_t . v_j) r_tj;  dS_tj = P_tj (dP_tj - D_t) / sqrtf(hd)
//   dq_t  = sum_j dS_tj k_j;  dk_j = sum_t dS_tj q_t;  dv_j = sum_t P_tj r_tj dout_t
//
// Kernels (`_hd32/_hd64/_hd128`: the same template for hd <= 32, 64, 128; the launcher picks the
// smallest that fits, lanes own channels lane, lane+32, ... of a row in registers; each has a
// `..._bf16` twin, e.g. attention_forward_hd64_bf16, attention_cache_append_bf16):
//   attention_forward_hdN        out (=), lse (=, may be NULL)
//   attention_cached_forward_hdN out (=) of n new queries at positions start..start+n-1 against the
//                                caches (after attention_cache_append); same row routine as the
//                                forward, so the same bits as the full computation
//   attention_cache_append       k_cache, v_cache rows start..start+n-1 (=) from qkv (B, n, 3C)
//   attention_backward_rowdot    D (=) into the caller's scratch (B, NH, L)
//   attention_backward_dq_hdN    dq thirds of dqkv (=)
//   attention_backward_dkv_hdN   dk and dv thirds of dqkv (=)
//   (bf16 at hd 64 and 128 also: attention_{,cached_}forward_tc_hdN_bf16 and
//   attention_backward_{dq,dkv}_tc_hdN_bf16, the tensor-core sections below)
//
// Launch (ATTN_WARPS = 4 warps, 128 threads; R = rows per warp: 4, or 2 for hd128 to fit 48 KiB):
//   forward / cached / dq: grid = ceil(Lq / (4R)) * NH * B blocks, block x fastest = query tile, then
//     head, then sequence. Warp w owns the tile's rows w, w+4, ... (interleaved: causal work is
//     balanced). The block walks key tiles of 32 (one key per lane) up to its last row's position:
//     stages K (and V) in shared memory, each lane scores its key with a sequential dot product,
//     a warp max keeps the online softmax (per-lane partial sums, one warp sum at the end), the
//     probabilities go through a per-warp shared row, and each lane adds p_j v_j[c] for its channels.
//   dkv: grid = ceil(L / (4R)) * NH * B blocks over key tiles; the block walks query tiles of 32
//     (one query per lane) from its first key's tile to L, staging Q, dout, lse and D.
//   rowdot, append: one warp per (b, h, t) row / one thread per element, 256-thread blocks.
//   Dynamic shared memory (floats, hs = hd | 1 keeps lane-per-row reads on 32 distinct banks):
//     forward: 32*hs (K) + 32*hd (V) + 4R*hd (Q) + 4*32 (P)          hd128: 36.6 KiB
//     dq:      2*32*hs (K, V) + 2*4R*hd (Q, dout) + 4*32 (dS)          hd128: 40.8 KiB
//     dkv:     2*32*hs (Q, dout) + 2*32 (lse, D) + 2*4R*hd (K, V) + 2*4*32 (P r, dS)  hd128: 41.5 KiB
//   (src/kernels/attention.rs computes the same numbers: `attention_smem_bytes`.)
//
// Tensor-core forward (bf16 only, hd exactly 64 or 128; the launcher's default for bf16 there):
//   attention_forward_tc_hdN_bf16, attention_cached_forward_tc_hdN_bf16: the same outputs, row
//   semantics and dropout indices as the scalar forward, with S = Q K^T and O = P V on
//   mma.m16n8k16 (bf16 inputs, f32 accumulate; common.cuh), FlashAttention-2 style. Grid =
//   ceil(Lq / 64) * NH * B blocks of 4 warps; warp w owns the block's query rows 16w..16w+15 (the
//   mma's A rows; Q fragments loaded once by ldmatrix), the block walks key tiles of 32 up to its
//   last row's position (a warp skips tiles past its own last row). Per tile a warp computes
//   S (16 x 32: 4 n-tiles, HD/16 k-steps; K fragments by ldmatrix), scales and masks it, keeps the
//   online softmax in f32 (row max over the row's 4 lanes by a quad butterfly; per-lane partial
//   sums of the f32 P, joined at the end), rescales O, rounds P r (dropout applied) to bf16 -- the
//   one rounding the scalar kernel does not have -- and reuses S's accumulator fragments as P's A
//   fragments for O += P V (V fragments by ldmatrix.trans). out = O / l rounded once; lse f32.
//   Shared memory (bf16, rows padded to HD + 8 elements: 16-byte aligned for ldmatrix, 8 rows
//   on distinct bank groups): Q 64 + K 32 + V 32 rows: hd64 18 KiB, hd128 34 KiB
//   (`attention_tc_smem_bytes`). Rows past Lq and keys past the tile's end are zero-filled, so no
//   NaN from the shared-memory fill reaches an mma. Deterministic like the rest: fixed
//   tiling, fixed mma and reduction order, no atomics; cached == full bit for bit as above (a
//   fully masked tile leaves a row's m, l and O unchanged: corr = 1, P = 0).
//
// Tensor-core backward (bf16 only, hd exactly 64 or 128; the launcher's default for bf16 there):
//   attention_backward_dq_tc_hdN_bf16, attention_backward_dkv_tc_hdN_bf16: the same math, outputs
//   (dq thirds; dk and dv thirds of dqkv, =), masking, dropout indices and arguments as the scalar
//   dq/dkv kernels, after the same attention_backward_rowdot (D); FlashAttention-2's backward
//   split in two kernels so that no output needs an atomic. Every product is an mma.m16n8k16
//   (bf16 inputs, f32 accumulate), P recomputed as exp(s - lse) in f32. Grid = ceil(L / 64) * NH
//   * B blocks of 4 warps, the block's 64 rows fastest; BN = 32 (hd64) or 16 (hd128) rows of the
//   other side per staged tile.
//   dkv: a block owns keys 64b..64b+63, warp w keys 16w..16w+15 (the A rows, K and V fragments by
//     ldmatrix), and walks query tiles of BN from the tile holding its first key to L (a warp
//     skips tiles whose queries all precede its keys). Per tile: S^T = K Q^T and dP^T = V dO^T
//     (16 x BN; Q, dO as B by ldmatrix), then per element P = exp(S^T / sqrtf(hd) - lse_t) (0 if
//     not visible), r = dropout_scale_at(.., (bh*L + t)*L + j), P r and dS = P (dP r - D_t) /
//     sqrtf(hd); both are rounded to bf16 once, and their C fragments reused as A fragments for
//     dV += (P r)^T dO and dK += dS^T Q (dO, Q as B by ldmatrix.trans). dk, dv rounded once.
//   dq: a block owns queries 64b..64b+63, warp w 16 of them, and walks key tiles of BN up to the
//     block's last query (a warp skips tiles past its last row): S = Q K^T, dP = dO V^T, dS as
//     above (rounded to bf16 once), dQ += dS K (K by ldmatrix.trans). dq rounded once.
//   The two roundings the scalar kernels do not have: P r and dS as mma operands (as
//   FlashAttention); accumulators and the softmax terms stay f32.
//   Shared memory (bf16, rows padded to HD + 8 as the forward's): dq: Q, dO (64 rows each) + K, V
//   (BN each); dkv: K, V (64 each) + Q, dO (BN each) + lse, D of the tile (BN f32 each): hd64
//   27.0 / 27.3 KiB, hd128 42.5 / 42.6 KiB (`attention_tc_backward_smem_bytes`). Rows past L are
//   zero-filled (and their lse, D zeros), so every mma reads finite values; elements that are not
//   visible get P = dS = 0 by selection, never by arithmetic on those fillers.
//   Determinism: every dq, dk, dv element is accumulated by one lane, over tiles in ascending
//   order with a fixed mma order inside, no atomics; the tiling depends on the shape alone, so
//   the bits are the same across runs and block schedules (tests/attention.rs checks it under
//   PEPLER_EMU_SHUFFLE-style shuffled schedules).
//
// Never materialises an L x L matrix in global memory. Determinism: no atomics; every output element
// is written by one thread that sums in a fixed order (keys ascending for out and dq, queries
// ascending for dk and dv, channels ascending in every dot product), and the tiling depends on the
// shape alone, so results are bit-identical across runs and block schedules.
#include "common.cuh"
#include "dropout_hash.cuh"

#define ATTN_WARPS 4
#define ATTN_TILE 32  // keys (forward, dq) or queries (dkv) per staged tile: one per lane

// What attention dropout a launch applies (`on` = 0: none).
struct AttnDropout {
    int on;
    unsigned long long key;  // dropout_key(seed, step, site)
    float p;
};

__device__ __forceinline__ AttnDropout attn_dropout(int on, unsigned long long seed, unsigned long long step,
                                                    const unsigned long long* step_at, unsigned int site, float p) {
    AttnDropout d;
    d.on = on;
    // step_at (not NULL inside a captured step graph): the step is read at run time from the
    // device's step scalars (src/device/step.rs), so a replay uses the current step's masks
    d.key = on ? dropout_key(seed, step_at != nullptr ? *step_at : step, site) : 0ull;
    d.p = p;
    return d;
}

// Sequential dot product in channel order (as the reference's `dot`).
__device__ __forceinline__ float attn_dot(const float* a, const float* b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        s += a[i] * b[i];
    }
    return s;
}

// One block of the forward: query rows row0.. of one (sequence, head). Query row i sits at position
// pos0 + i and sees keys 0..pos0+i. Pointers are at row 0 / key 0 of this (b, h), channel 0 of the
// head; *_rs are row strides. lse may be NULL. `drop_base + pos * drop_l + j` is the dropout index.
template <typename T, int NC, int R>
__device__ void attn_forward_rows(float* smem, T* __restrict__ out, long long out_rs, float* __restrict__ lse,
                                  const T* __restrict__ q, long long q_rs, const T* __restrict__ k,
                                  const T* __restrict__ v, long long kv_rs, const int* __restrict__ mask,
                                  int nq, int pos0, int hd, int row0, AttnDropout drop,
                                  unsigned long long drop_base, long long drop_l) {
    const int hs = hd | 1;
    float* ks = smem;                           // [ATTN_TILE][hs]
    float* vs = ks + ATTN_TILE * hs;            // [ATTN_TILE][hd]
    float* qs = vs + ATTN_TILE * hd;            // [4R][hd]
    float* ps = qs + ATTN_WARPS * R * hd;       // [ATTN_WARPS][ATTN_TILE]
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int nrows = min(ATTN_WARPS * R, nq - row0);
    const float scale = sqrtf(static_cast<float>(hd));
    float* prow = ps + warp * ATTN_TILE;

    for (int i = threadIdx.x; i < nrows * hd; i += blockDim.x) {
        const int r = i / hd;
        qs[i] = to_float(q[static_cast<long long>(row0 + r) * q_rs + (i - r * hd)]);
    }
    const int nkeys = pos0 + row0 + nrows;  // keys 0..last row's position
    const int ntiles = CEIL_DIV(nkeys, ATTN_TILE);

    float o[R][NC];
    float m[R];
    float lpart[R];  // this lane's share of the softmax denominator, at the running max m
#pragma unroll
    for (int r = 0; r < R; r++) {
        m[r] = -INFINITY;
        lpart[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) o[r][c] = 0.0f;
    }

    for (int kt = 0; kt < ntiles; kt++) {
        const int j0 = kt * ATTN_TILE;
        const int nk = min(ATTN_TILE, nkeys - j0);
        __syncthreads();  // the previous tile is consumed (and Q is staged, on the first pass)
        for (int i = threadIdx.x; i < nk * hd; i += blockDim.x) {
            const int j = i / hd;
            const int c = i - j * hd;
            const long long g = static_cast<long long>(j0 + j) * kv_rs + c;
            ks[j * hs + c] = to_float(k[g]);
            vs[j * hd + c] = to_float(v[g]);
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int lr = warp + ATTN_WARPS * r;
            const int pos = pos0 + row0 + lr;
            if (lr >= nrows || j0 > pos) continue;  // warp-uniform
            const int j = j0 + lane;
            const bool vis = lane < nk && j <= pos && (mask == nullptr || mask[j] != 0);
            float s = -INFINITY;
            if (vis) s = attn_dot(qs + lr * hd, ks + lane * hs, hd) / scale;
            const float mnew = fmaxf(m[r], warp_reduce_max(s));
            if (mnew == -INFINITY) continue;  // nothing visible yet (warp-uniform)
            const float corr = expf(m[r] - mnew);  // 0 on the first visible tile
            float p = vis ? expf(s - mnew) : 0.0f;
            lpart[r] = lpart[r] * corr + p;
            m[r] = mnew;
            if (drop.on && vis) {
                p *= dropout_scale_at(drop.key, drop_base + static_cast<unsigned long long>(pos) * drop_l + j, drop.p);
            }
            __syncwarp();  // the previous row's readers of prow are done
            prow[lane] = p;
            __syncwarp();
            const int jn = min(nk, pos - j0 + 1);
#pragma unroll
            for (int cc = 0; cc < NC; cc++) {
                const int c = lane + 32 * cc;
                if (c < hd) {
                    float acc = o[r][cc] * corr;
                    for (int jj = 0; jj < jn; jj++) acc += prow[jj] * vs[jj * hd + c];
                    o[r][cc] = acc;
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++) {
        const int lr = warp + ATTN_WARPS * r;
        if (lr >= nrows) continue;
        const float l = warp_reduce_sum(lpart[r]);
        const int row = row0 + lr;
        const bool empty = m[r] == -INFINITY;
        const float inv = empty ? 0.0f : 1.0f / l;
        T* orow = out + static_cast<long long>(row) * out_rs;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            const int c = lane + 32 * cc;
            if (c < hd) orow[c] = from_float<T>(empty ? 0.0f : o[r][cc] * inv);
        }
        if (lse != nullptr && lane == 0) lse[row] = empty ? INFINITY : m[r] + logf(l);
    }
}

// Block index -> (query/key tile, head, sequence) with the tile fastest.
struct AttnBlock {
    int tile;
    int h;
    long long b;
};

__device__ __forceinline__ AttnBlock attn_block(int rows, int per_block, int nh) {
    const int ntiles = CEIL_DIV(rows, per_block);
    const long long bid = blockIdx.x;
    AttnBlock a;
    a.tile = static_cast<int>(bid % ntiles);
    const long long bh = bid / ntiles;
    a.h = static_cast<int>(bh % nh);
    a.b = bh / nh;
    return a;
}

template <typename T, int NC, int R>
__device__ void attn_forward(float* smem, T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ qkv,
                             const int* __restrict__ key_mask, int L, int C, int NH, AttnDropout drop) {
    const int hd = C / NH;
    const AttnBlock a = attn_block(L, ATTN_WARPS * R, NH);
    const long long bh = a.b * NH + a.h;
    const long long c3 = 3LL * C;
    const T* base = qkv + a.b * L * c3 + static_cast<long long>(a.h) * hd;
    attn_forward_rows<T, NC, R>(smem, out + a.b * L * C + static_cast<long long>(a.h) * hd, C,
                             lse == nullptr ? nullptr : lse + bh * L, base, c3, base + C, base + 2LL * C, c3,
                             key_mask == nullptr ? nullptr : key_mask + a.b * L, L, 0, hd,
                             a.tile * ATTN_WARPS * R, drop, static_cast<unsigned long long>(bh * L) * L, L);
}

extern "C" __global__ void attention_forward_hd32(float* __restrict__ out, float* __restrict__ lse,
                                                  const float* __restrict__ qkv, const int* __restrict__ key_mask,
                                                  int L, int C, int NH, int drop_on, unsigned long long seed,
                                                  unsigned long long step, const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_forward<float, 1, 4>(smem, out, lse, qkv, key_mask, L, C, NH, attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_forward_hd32_bf16(__nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                                      const __nv_bfloat16* __restrict__ qkv,
                                                      const int* __restrict__ key_mask, int L, int C, int NH,
                                                      int drop_on, unsigned long long seed, unsigned long long step,
                                                      const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_forward<__nv_bfloat16, 1, 4>(smem, out, lse, qkv, key_mask, L, C, NH,
                                         attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_forward_hd64(float* __restrict__ out, float* __restrict__ lse,
                                                  const float* __restrict__ qkv, const int* __restrict__ key_mask,
                                                  int L, int C, int NH, int drop_on, unsigned long long seed,
                                                  unsigned long long step, const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_forward<float, 2, 4>(smem, out, lse, qkv, key_mask, L, C, NH, attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_forward_hd64_bf16(__nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                                      const __nv_bfloat16* __restrict__ qkv,
                                                      const int* __restrict__ key_mask, int L, int C, int NH,
                                                      int drop_on, unsigned long long seed, unsigned long long step,
                                                      const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_forward<__nv_bfloat16, 2, 4>(smem, out, lse, qkv, key_mask, L, C, NH,
                                         attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_forward_hd128(float* __restrict__ out, float* __restrict__ lse,
                                                   const float* __restrict__ qkv, const int* __restrict__ key_mask,
                                                   int L, int C, int NH, int drop_on, unsigned long long seed,
                                                   unsigned long long step, const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_forward<float, 4, 2>(smem, out, lse, qkv, key_mask, L, C, NH, attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_forward_hd128_bf16(__nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                                       const __nv_bfloat16* __restrict__ qkv,
                                                       const int* __restrict__ key_mask, int L, int C, int NH,
                                                       int drop_on, unsigned long long seed, unsigned long long step,
                                                       const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_forward<__nv_bfloat16, 4, 2>(smem, out, lse, qkv, key_mask, L, C, NH,
                                         attn_dropout(drop_on, seed, step, step_at, site, p));
}

// ----------------------------------------------------------------------------------------------
// tensor-core forward (bf16 only, hd = 64 or 128; see the header: "Tensor-core forward")

#define ATTN_TC_ROWS 16                            // query rows per warp: the mma's M
#define ATTN_TC_BR (ATTN_WARPS * ATTN_TC_ROWS)     // 64 query rows per block
#define ATTN_TC_BC 32                              // keys per staged tile

__device__ __forceinline__ float attn_tc_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float attn_tc_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The tensor-core twin of attn_forward_rows (same arguments, same row semantics): query rows
// row0.. of one (sequence, head), row i at position pos0 + i seeing keys 0..pos0+i. Warp w owns the
// block's rows 16w..16w+15 (the mma's A rows); lane (g = lane/4, t = lane%4) holds rows g and g+8,
// keys/channels 8n + 2t, 8n + 2t + 1 of every 8-wide n-tile (the C fragment layout, common.cuh).
template <int HD>
__device__ void attn_tc_forward_rows(__nv_bfloat16* smem, __nv_bfloat16* __restrict__ out, long long out_rs,
                                     float* __restrict__ lse, const __nv_bfloat16* __restrict__ q, long long q_rs,
                                     const __nv_bfloat16* __restrict__ k, const __nv_bfloat16* __restrict__ v,
                                     long long kv_rs, const int* __restrict__ mask, int nq, int pos0, int row0,
                                     AttnDropout drop, unsigned long long drop_base, long long drop_l) {
    constexpr int HS = HD + 8;   // row stride: 16 bytes of padding keep rows 16-byte aligned and put
                                 // the 8 rows an ldmatrix matrix reads on distinct bank groups
    constexpr int KSTEPS = HD / 16;  // k-steps of S = Q K^T
    constexpr int NT = HD / 8;       // n-tiles of O = P V
    __nv_bfloat16* qs = smem;                  // [ATTN_TC_BR][HS]
    __nv_bfloat16* ks = qs + ATTN_TC_BR * HS;  // [ATTN_TC_BC][HS]
    __nv_bfloat16* vs = ks + ATTN_TC_BC * HS;  // [ATTN_TC_BC][HS]
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int mi = lane >> 3;  // ldmatrix: this lane passes the address of row lane%8 of matrix mi
    const int mr = lane & 7;
    const int nrows = min(ATTN_TC_BR, nq - row0);
    const int wrow0 = warp * ATTN_TC_ROWS;               // the warp's first row in the block
    const int wrows = min(ATTN_TC_ROWS, nrows - wrow0);  // <= 0: the warp has no row (uniform)
    const int wlast = pos0 + row0 + wrow0 + wrows - 1;   // position of the warp's last row
    const float scale = sqrtf(static_cast<float>(HD));
    const __nv_bfloat16 zero = __ushort_as_bfloat16(0);

    // rows past nq are zeros (finite scores, masked below, never stored)
    for (int i = threadIdx.x; i < ATTN_TC_BR * HD; i += blockDim.x) {
        const int r = i / HD;
        const int c = i - r * HD;
        qs[r * HS + c] = r < nrows ? q[static_cast<long long>(row0 + r) * q_rs + c] : zero;
    }
    const int nkeys = pos0 + row0 + nrows;  // keys 0..last row's position
    const int ntiles = CEIL_DIV(nkeys, ATTN_TC_BC);

    int pos[2];     // positions of rows g and g+8; -1 for a row past nq (sees no key)
    float m[2];     // running max of the row (the same bits on the row's 4 lanes)
    float lp[2];    // this lane's share of the row's denominator at the running max
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        const int lr = wrow0 + g + 8 * ri;
        pos[ri] = lr < nrows ? pos0 + row0 + lr : -1;
        m[ri] = -INFINITY;
        lp[ri] = 0.0f;
    }
    float o[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
        for (int i = 0; i < 4; i++) o[n][i] = 0.0f;
    }
    uint32_t qf[KSTEPS][4];  // A fragments of the warp's 16 query rows, loaded once

    for (int kt = 0; kt < ntiles; kt++) {
        const int j0 = kt * ATTN_TC_BC;
        const int nk = min(ATTN_TC_BC, nkeys - j0);
        __syncthreads();  // the previous tile is consumed (and Q is staged, on the first pass)
        // keys past nk are zeros: their scores are masked and their P is 0, and 0 * 0 adds nothing
        for (int i = threadIdx.x; i < ATTN_TC_BC * HD; i += blockDim.x) {
            const int j = i / HD;
            const int c = i - j * HD;
            const long long gi = static_cast<long long>(j0 + j) * kv_rs + c;
            ks[j * HS + c] = j < nk ? k[gi] : zero;
            vs[j * HS + c] = j < nk ? v[gi] : zero;
        }
        __syncthreads();
        if (wrows <= 0) continue;  // warp-uniform: nothing to compute, only the barriers
        if (kt == 0) {
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
                // matrices: rows 0-7 / 8-15 (mi % 2) x channels 16kk + 0-7 / 8-15 (mi / 2)
                ldmatrix_x4(qf[kk], qs + (wrow0 + (mi & 1) * 8 + mr) * HS + kk * 16 + (mi >> 1) * 8);
            }
        }
        if (j0 > wlast) continue;  // warp-uniform: every key of the tile is after the warp's rows

        // S = Q K^T (16 x 32): n-tile n holds keys 8n..8n+7; f32 accumulation from 0
        float sc[4][4];
#pragma unroll
        for (int n = 0; n < 4; n++) {
#pragma unroll
            for (int i = 0; i < 4; i++) sc[n][i] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
            for (int n = 0; n < 4; n += 2) {
                // B = K^T: an 8x8 block of K rows (keys) is B's column-major fragment as loaded;
                // matrices: keys 8n + 0-7 / 8(n+1) + 0-7 (mi / 2) x channels 16kk + 0-7 / 8-15 (mi % 2)
                uint32_t kb[4];
                ldmatrix_x4(kb, ks + ((n + (mi >> 1)) * 8 + mr) * HS + kk * 16 + (mi & 1) * 8);
                const uint32_t b0[2] = {kb[0], kb[1]};
                const uint32_t b1[2] = {kb[2], kb[3]};
                mma_m16n8k16_bf16(sc[n], qf[kk], b0, sc[n]);
                mma_m16n8k16_bf16(sc[n + 1], qf[kk], b1, sc[n + 1]);
            }
        }

        // online softmax, per row ri (fragment elements i = 2ri, 2ri+1): scale, mask, max, exp
        uint32_t pf[2][4];  // P (dropout applied, rounded to bf16) as the A fragments of P V
#pragma unroll
        for (int ri = 0; ri < 2; ri++) {
            bool vis[4][2];
            float tmax = -INFINITY;
#pragma unroll
            for (int n = 0; n < 4; n++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int jj = 8 * n + 2 * t + e;
                    const int j = j0 + jj;
                    vis[n][e] = jj < nk && j <= pos[ri] && (mask == nullptr || mask[j] != 0);
                    const float sv = vis[n][e] ? sc[n][2 * ri + e] / scale : -INFINITY;
                    sc[n][2 * ri + e] = sv;
                    tmax = fmaxf(tmax, sv);
                }
            }
            const float mnew = fmaxf(m[ri], attn_tc_quad_max(tmax));
            // nothing visible yet: keep everything (corr 1, P 0), as the scalar kernel skips the row
            const float corr = mnew == -INFINITY ? 1.0f : expf(m[ri] - mnew);  // 0 on the first visible tile
            float psum = __fmul_rn(lp[ri], corr);  // not contracted with the adds: the same bits on both devices
            float pd[4][2];
#pragma unroll
            for (int n = 0; n < 4; n++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float p = vis[n][e] ? expf(sc[n][2 * ri + e] - mnew) : 0.0f;
                    psum += p;
                    if (drop.on && vis[n][e]) {
                        const int j = j0 + 8 * n + 2 * t + e;
                        const unsigned long long idx = drop_base + static_cast<unsigned long long>(pos[ri]) * drop_l + j;
                        p *= dropout_scale_at(drop.key, idx, drop.p);
                    }
                    pd[n][e] = p;
                }
            }
            lp[ri] = psum;
            m[ri] = mnew;
#pragma unroll
            for (int n = 0; n < NT; n++) {
                o[n][2 * ri] *= corr;
                o[n][2 * ri + 1] *= corr;
            }
            // the S C-fragment is the P A-fragment: k-step s covers keys 16s..16s+15 = n-tiles 2s, 2s+1
#pragma unroll
            for (int s2 = 0; s2 < 2; s2++) {
                pf[s2][ri] = pack_bf16x2(__float2bfloat16_rn(pd[2 * s2][0]), __float2bfloat16_rn(pd[2 * s2][1]));
                pf[s2][2 + ri] =
                    pack_bf16x2(__float2bfloat16_rn(pd[2 * s2 + 1][0]), __float2bfloat16_rn(pd[2 * s2 + 1][1]));
            }
        }

        // O += P V (16 x HD), accumulating into the rescaled O
#pragma unroll
        for (int s2 = 0; s2 < 2; s2++) {
#pragma unroll
            for (int n = 0; n < NT; n += 2) {
                // B = V (keys x channels, row-major): ldmatrix .trans gives B's fragment;
                // matrices: keys 16s2 + 0-7 / 8-15 (mi % 2) x channels 8n + 0-7 / 8(n+1) + 0-7 (mi / 2)
                uint32_t vb[4];
                ldmatrix_x4_trans(vb, vs + (16 * s2 + (mi & 1) * 8 + mr) * HS + (n + (mi >> 1)) * 8);
                const uint32_t b0[2] = {vb[0], vb[1]};
                const uint32_t b1[2] = {vb[2], vb[3]};
                mma_m16n8k16_bf16(o[n], pf[s2], b0, o[n]);
                mma_m16n8k16_bf16(o[n + 1], pf[s2], b1, o[n + 1]);
            }
        }
    }
    if (wrows <= 0) return;

#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        const float l = attn_tc_quad_sum(lp[ri]);  // lanes 4g..4g+3 in a butterfly: the same bits on all
        if (pos[ri] < 0) continue;
        const int row = row0 + wrow0 + g + 8 * ri;
        const bool empty = m[ri] == -INFINITY;
        const float inv = empty ? 0.0f : 1.0f / l;
        __nv_bfloat16* orow = out + static_cast<long long>(row) * out_rs;
#pragma unroll
        for (int n = 0; n < NT; n++) {
            orow[8 * n + 2 * t] = __float2bfloat16_rn(empty ? 0.0f : o[n][2 * ri] * inv);
            orow[8 * n + 2 * t + 1] = __float2bfloat16_rn(empty ? 0.0f : o[n][2 * ri + 1] * inv);
        }
        if (lse != nullptr && t == 0) lse[row] = empty ? INFINITY : m[ri] + logf(l);
    }
}

template <int HD>
__device__ void attn_tc_forward(__nv_bfloat16* smem, __nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                const __nv_bfloat16* __restrict__ qkv, const int* __restrict__ key_mask, int L, int C,
                                int NH, AttnDropout drop) {
    const AttnBlock a = attn_block(L, ATTN_TC_BR, NH);
    const long long bh = a.b * NH + a.h;
    const long long c3 = 3LL * C;
    const __nv_bfloat16* base = qkv + a.b * L * c3 + static_cast<long long>(a.h) * HD;
    attn_tc_forward_rows<HD>(smem, out + a.b * L * C + static_cast<long long>(a.h) * HD, C,
                             lse == nullptr ? nullptr : lse + bh * L, base, c3, base + C, base + 2LL * C, c3,
                             key_mask == nullptr ? nullptr : key_mask + a.b * L, L, 0, a.tile * ATTN_TC_BR, drop,
                             static_cast<unsigned long long>(bh * L) * L, L);
}

extern "C" __global__ void attention_forward_tc_hd64_bf16(__nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                                          const __nv_bfloat16* __restrict__ qkv,
                                                          const int* __restrict__ key_mask, int L, int C, int NH,
                                                          int drop_on, unsigned long long seed, unsigned long long step,
                                                          const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(__nv_bfloat16, smem);
    attn_tc_forward<64>(smem, out, lse, qkv, key_mask, L, C, NH, attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_forward_tc_hd128_bf16(__nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                                           const __nv_bfloat16* __restrict__ qkv,
                                                           const int* __restrict__ key_mask, int L, int C, int NH,
                                                           int drop_on, unsigned long long seed,
                                                           unsigned long long step, const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(__nv_bfloat16, smem);
    attn_tc_forward<128>(smem, out, lse, qkv, key_mask, L, C, NH, attn_dropout(drop_on, seed, step, step_at, site, p));
}

// ----------------------------------------------------------------------------------------------
// decoding with a KV cache

template <typename T>
__device__ void attn_cache_append(T* __restrict__ k_cache, T* __restrict__ v_cache, const T* __restrict__ qkv, int B,
                                  int n, int C, int NH, int start, int lmax) {
    const int hd = C / NH;
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<long long>(B) * NH * n * hd) return;
    const int c = static_cast<int>(i % hd);
    const int t = static_cast<int>((i / hd) % n);
    const long long bh = i / (static_cast<long long>(hd) * n);
    const int h = static_cast<int>(bh % NH);
    const long long b = bh / NH;
    const long long src = (b * n + t) * 3LL * C + static_cast<long long>(h) * hd + c;
    const long long dst = (bh * lmax + start + t) * hd + c;
    k_cache[dst] = qkv[src + C];
    v_cache[dst] = qkv[src + 2LL * C];
}

extern "C" __global__ void attention_cache_append(float* __restrict__ k_cache, float* __restrict__ v_cache,
                                                  const float* __restrict__ qkv, int B, int n, int C, int NH,
                                                  int start, int lmax) {
    attn_cache_append<float>(k_cache, v_cache, qkv, B, n, C, NH, start, lmax);
}

extern "C" __global__ void attention_cache_append_bf16(__nv_bfloat16* __restrict__ k_cache,
                                                       __nv_bfloat16* __restrict__ v_cache,
                                                       const __nv_bfloat16* __restrict__ qkv, int B, int n, int C,
                                                       int NH, int start, int lmax) {
    attn_cache_append<__nv_bfloat16>(k_cache, v_cache, qkv, B, n, C, NH, start, lmax);
}

template <typename T, int NC, int R>
__device__ void attn_cached_forward(float* smem, T* __restrict__ out, const T* __restrict__ qkv,
                                    const T* __restrict__ k_cache, const T* __restrict__ v_cache, int n,
                                    int C, int NH, int start, int lmax) {
    const int hd = C / NH;
    const AttnBlock a = attn_block(n, ATTN_WARPS * R, NH);
    const long long bh = a.b * NH + a.h;
    const long long c3 = 3LL * C;
    const long long kv = bh * lmax * hd;
    AttnDropout none;
    none.on = 0;
    none.key = 0ull;
    none.p = 0.0f;
    attn_forward_rows<T, NC, R>(smem, out + a.b * n * C + static_cast<long long>(a.h) * hd, C, nullptr,
                             qkv + a.b * n * c3 + static_cast<long long>(a.h) * hd, c3, k_cache + kv,
                             v_cache + kv, hd, nullptr, n, start, hd, a.tile * ATTN_WARPS * R, none, 0ull, 0);
}

extern "C" __global__ void attention_cached_forward_hd32(float* __restrict__ out, const float* __restrict__ qkv,
                                                         const float* __restrict__ k_cache,
                                                         const float* __restrict__ v_cache, int n, int C, int NH,
                                                         int start, int lmax) {
    DYN_SMEM(float, smem);
    attn_cached_forward<float, 1, 4>(smem, out, qkv, k_cache, v_cache, n, C, NH, start, lmax);
}

extern "C" __global__ void attention_cached_forward_hd32_bf16(__nv_bfloat16* __restrict__ out,
                                                             const __nv_bfloat16* __restrict__ qkv,
                                                             const __nv_bfloat16* __restrict__ k_cache,
                                                             const __nv_bfloat16* __restrict__ v_cache, int n,
                                                             int C, int NH, int start, int lmax) {
    DYN_SMEM(float, smem);
    attn_cached_forward<__nv_bfloat16, 1, 4>(smem, out, qkv, k_cache, v_cache, n, C, NH, start, lmax);
}

extern "C" __global__ void attention_cached_forward_hd64(float* __restrict__ out, const float* __restrict__ qkv,
                                                         const float* __restrict__ k_cache,
                                                         const float* __restrict__ v_cache, int n, int C, int NH,
                                                         int start, int lmax) {
    DYN_SMEM(float, smem);
    attn_cached_forward<float, 2, 4>(smem, out, qkv, k_cache, v_cache, n, C, NH, start, lmax);
}

extern "C" __global__ void attention_cached_forward_hd64_bf16(__nv_bfloat16* __restrict__ out,
                                                             const __nv_bfloat16* __restrict__ qkv,
                                                             const __nv_bfloat16* __restrict__ k_cache,
                                                             const __nv_bfloat16* __restrict__ v_cache, int n,
                                                             int C, int NH, int start, int lmax) {
    DYN_SMEM(float, smem);
    attn_cached_forward<__nv_bfloat16, 2, 4>(smem, out, qkv, k_cache, v_cache, n, C, NH, start, lmax);
}

extern "C" __global__ void attention_cached_forward_hd128(float* __restrict__ out, const float* __restrict__ qkv,
                                                          const float* __restrict__ k_cache,
                                                          const float* __restrict__ v_cache, int n, int C, int NH,
                                                          int start, int lmax) {
    DYN_SMEM(float, smem);
    attn_cached_forward<float, 4, 2>(smem, out, qkv, k_cache, v_cache, n, C, NH, start, lmax);
}

extern "C" __global__ void attention_cached_forward_hd128_bf16(__nv_bfloat16* __restrict__ out,
                                                              const __nv_bfloat16* __restrict__ qkv,
                                                              const __nv_bfloat16* __restrict__ k_cache,
                                                              const __nv_bfloat16* __restrict__ v_cache, int n,
                                                              int C, int NH, int start, int lmax) {
    DYN_SMEM(float, smem);
    attn_cached_forward<__nv_bfloat16, 4, 2>(smem, out, qkv, k_cache, v_cache, n, C, NH, start, lmax);
}

template <int HD>
__device__ void attn_tc_cached_forward(__nv_bfloat16* smem, __nv_bfloat16* __restrict__ out,
                                       const __nv_bfloat16* __restrict__ qkv, const __nv_bfloat16* __restrict__ k_cache,
                                       const __nv_bfloat16* __restrict__ v_cache, int n, int C, int NH, int start,
                                       int lmax) {
    const AttnBlock a = attn_block(n, ATTN_TC_BR, NH);
    const long long bh = a.b * NH + a.h;
    const long long c3 = 3LL * C;
    const long long kv = bh * lmax * HD;
    AttnDropout none;
    none.on = 0;
    none.key = 0ull;
    none.p = 0.0f;
    attn_tc_forward_rows<HD>(smem, out + a.b * n * C + static_cast<long long>(a.h) * HD, C, nullptr,
                             qkv + a.b * n * c3 + static_cast<long long>(a.h) * HD, c3, k_cache + kv, v_cache + kv,
                             HD, nullptr, n, start, a.tile * ATTN_TC_BR, none, 0ull, 0);
}

extern "C" __global__ void attention_cached_forward_tc_hd64_bf16(__nv_bfloat16* __restrict__ out,
                                                                 const __nv_bfloat16* __restrict__ qkv,
                                                                 const __nv_bfloat16* __restrict__ k_cache,
                                                                 const __nv_bfloat16* __restrict__ v_cache, int n,
                                                                 int C, int NH, int start, int lmax) {
    DYN_SMEM(__nv_bfloat16, smem);
    attn_tc_cached_forward<64>(smem, out, qkv, k_cache, v_cache, n, C, NH, start, lmax);
}

extern "C" __global__ void attention_cached_forward_tc_hd128_bf16(__nv_bfloat16* __restrict__ out,
                                                                  const __nv_bfloat16* __restrict__ qkv,
                                                                  const __nv_bfloat16* __restrict__ k_cache,
                                                                  const __nv_bfloat16* __restrict__ v_cache, int n,
                                                                  int C, int NH, int start, int lmax) {
    DYN_SMEM(__nv_bfloat16, smem);
    attn_tc_cached_forward<128>(smem, out, qkv, k_cache, v_cache, n, C, NH, start, lmax);
}

// ----------------------------------------------------------------------------------------------
// backward

// D[b, h, t] = sum_c dout[b, t, h*hd + c] * out[b, t, h*hd + c]: a warp per row, 8 rows per block.
template <typename T>
__device__ void attn_backward_rowdot(float* __restrict__ D, const T* __restrict__ dout, const T* __restrict__ out,
                                     int B, int L, int C, int NH) {
    const int hd = C / NH;
    const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= static_cast<long long>(B) * NH * L) return;  // whole warp
    const int t = static_cast<int>(row % L);
    const long long bh = row / L;
    const int h = static_cast<int>(bh % NH);
    const long long b = bh / NH;
    const long long off = (b * L + t) * C + static_cast<long long>(h) * hd;
    float s = 0.0f;
    for (int c = lane; c < hd; c += 32) s += to_float(dout[off + c]) * to_float(out[off + c]);
    s = warp_reduce_sum(s);
    if (lane == 0) D[row] = s;
}

extern "C" __global__ void attention_backward_rowdot(float* __restrict__ D, const float* __restrict__ dout,
                                                     const float* __restrict__ out, int B, int L, int C, int NH) {
    attn_backward_rowdot<float>(D, dout, out, B, L, C, NH);
}

extern "C" __global__ void attention_backward_rowdot_bf16(float* __restrict__ D, const __nv_bfloat16* __restrict__ dout,
                                                          const __nv_bfloat16* __restrict__ out, int B, int L, int C,
                                                          int NH) {
    attn_backward_rowdot<__nv_bfloat16>(D, dout, out, B, L, C, NH);
}

// dq rows of one (b, h) query tile: walks key tiles like the forward, recomputing P from lse.
template <typename T, int NC, int R>
__device__ void attn_backward_dq(float* smem, T* __restrict__ dqkv, const T* __restrict__ dout,
                                 const T* __restrict__ qkv, const float* __restrict__ lse,
                                 const float* __restrict__ D, const int* __restrict__ key_mask, int L, int C,
                                 int NH, AttnDropout drop) {
    const int hd = C / NH;
    const int hs = hd | 1;
    float* ks = smem;                      // [ATTN_TILE][hs]
    float* vs = ks + ATTN_TILE * hs;       // [ATTN_TILE][hs]
    float* qs = vs + ATTN_TILE * hs;       // [4R][hd]
    float* gs = qs + ATTN_WARPS * R * hd;  // [4R][hd] dout rows
    float* ps = gs + ATTN_WARPS * R * hd;  // [ATTN_WARPS][ATTN_TILE] dS
    const AttnBlock a = attn_block(L, ATTN_WARPS * R, NH);
    const long long bh = a.b * NH + a.h;
    const long long c3 = 3LL * C;
    const long long hoff = static_cast<long long>(a.h) * hd;
    const T* qkv_b = qkv + a.b * L * c3 + hoff;
    const T* dout_b = dout + a.b * L * C + hoff;
    const int* mask = key_mask == nullptr ? nullptr : key_mask + a.b * L;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int row0 = a.tile * ATTN_WARPS * R;
    const int nrows = min(ATTN_WARPS * R, L - row0);
    const float scale = sqrtf(static_cast<float>(hd));
    const unsigned long long drop_base = static_cast<unsigned long long>(bh * L) * L;
    float* prow = ps + warp * ATTN_TILE;

    for (int i = threadIdx.x; i < nrows * hd; i += blockDim.x) {
        const int r = i / hd;
        const int c = i - r * hd;
        qs[i] = to_float(qkv_b[static_cast<long long>(row0 + r) * c3 + c]);
        gs[i] = to_float(dout_b[static_cast<long long>(row0 + r) * C + c]);
    }
    float lse_r[R], d_r[R], dq[R][NC];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int lr = warp + ATTN_WARPS * r;
        lse_r[r] = lr < nrows ? lse[bh * L + row0 + lr] : 0.0f;
        d_r[r] = lr < nrows ? D[bh * L + row0 + lr] : 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) dq[r][c] = 0.0f;
    }
    const int nkeys = row0 + nrows;
    const int ntiles = CEIL_DIV(nkeys, ATTN_TILE);
    for (int kt = 0; kt < ntiles; kt++) {
        const int j0 = kt * ATTN_TILE;
        const int nk = min(ATTN_TILE, nkeys - j0);
        __syncthreads();
        for (int i = threadIdx.x; i < nk * hd; i += blockDim.x) {
            const int j = i / hd;
            const int c = i - j * hd;
            const long long g = static_cast<long long>(j0 + j) * c3 + c;
            ks[j * hs + c] = to_float(qkv_b[g + C]);
            vs[j * hs + c] = to_float(qkv_b[g + 2LL * C]);
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int lr = warp + ATTN_WARPS * r;
            const int t = row0 + lr;
            if (lr >= nrows || j0 > t) continue;  // warp-uniform
            const int j = j0 + lane;
            const bool vis = lane < nk && j <= t && (mask == nullptr || mask[j] != 0);
            float ds = 0.0f;
            if (vis) {
                const float s = attn_dot(qs + lr * hd, ks + lane * hs, hd) / scale;
                const float p = expf(s - lse_r[r]);
                float dp = attn_dot(gs + lr * hd, vs + lane * hs, hd);
                if (drop.on) {
                    dp *= dropout_scale_at(drop.key, drop_base + static_cast<unsigned long long>(t) * L + j, drop.p);
                }
                ds = p * (dp - d_r[r]) / scale;
            }
            __syncwarp();
            prow[lane] = ds;
            __syncwarp();
            const int jn = min(nk, t - j0 + 1);
#pragma unroll
            for (int cc = 0; cc < NC; cc++) {
                const int c = lane + 32 * cc;
                if (c < hd) {
                    float acc = dq[r][cc];
                    for (int jj = 0; jj < jn; jj++) acc += prow[jj] * ks[jj * hs + c];
                    dq[r][cc] = acc;
                }
            }
        }
    }
    T* dq_b = dqkv + a.b * L * c3 + hoff;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int lr = warp + ATTN_WARPS * r;
        if (lr >= nrows) continue;
        T* drow = dq_b + static_cast<long long>(row0 + lr) * c3;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            const int c = lane + 32 * cc;
            if (c < hd) drow[c] = from_float<T>(dq[r][cc]);
        }
    }
}

// dk and dv rows of one (b, h) key tile: walks query tiles from the tile's first key to L.
template <typename T, int NC, int R>
__device__ void attn_backward_dkv(float* smem, T* __restrict__ dqkv, const T* __restrict__ dout,
                                  const T* __restrict__ qkv, const float* __restrict__ lse,
                                  const float* __restrict__ D, const int* __restrict__ key_mask, int L, int C,
                                  int NH, AttnDropout drop) {
    const int hd = C / NH;
    const int hs = hd | 1;
    float* qs = smem;                       // [ATTN_TILE][hs]
    float* gs = qs + ATTN_TILE * hs;        // [ATTN_TILE][hs] dout rows
    float* ls = gs + ATTN_TILE * hs;        // [ATTN_TILE] lse
    float* dd = ls + ATTN_TILE;             // [ATTN_TILE] D
    float* kr = dd + ATTN_TILE;             // [4R][hd] this block's keys
    float* vr = kr + ATTN_WARPS * R * hd;   // [4R][hd] and values
    float* pw = vr + ATTN_WARPS * R * hd;   // [ATTN_WARPS][ATTN_TILE] P r
    float* sw = pw + ATTN_WARPS * ATTN_TILE;  // [ATTN_WARPS][ATTN_TILE] dS
    const AttnBlock a = attn_block(L, ATTN_WARPS * R, NH);
    const long long bh = a.b * NH + a.h;
    const long long c3 = 3LL * C;
    const long long hoff = static_cast<long long>(a.h) * hd;
    const T* qkv_b = qkv + a.b * L * c3 + hoff;
    const T* dout_b = dout + a.b * L * C + hoff;
    const int* mask = key_mask == nullptr ? nullptr : key_mask + a.b * L;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int row0 = a.tile * ATTN_WARPS * R;  // first key of the block
    const int nrows = min(ATTN_WARPS * R, L - row0);
    const float scale = sqrtf(static_cast<float>(hd));
    const unsigned long long drop_base = static_cast<unsigned long long>(bh * L) * L;
    float* pr = pw + warp * ATTN_TILE;
    float* sr = sw + warp * ATTN_TILE;

    for (int i = threadIdx.x; i < nrows * hd; i += blockDim.x) {
        const int r = i / hd;
        const long long g = static_cast<long long>(row0 + r) * c3 + (i - r * hd);
        kr[i] = to_float(qkv_b[g + C]);
        vr[i] = to_float(qkv_b[g + 2LL * C]);
    }
    float dk[R][NC], dv[R][NC];
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
        for (int c = 0; c < NC; c++) {
            dk[r][c] = 0.0f;
            dv[r][c] = 0.0f;
        }
    }
    for (int t0 = (row0 / ATTN_TILE) * ATTN_TILE; t0 < L; t0 += ATTN_TILE) {
        const int nt = min(ATTN_TILE, L - t0);
        __syncthreads();
        for (int i = threadIdx.x; i < nt * hd; i += blockDim.x) {
            const int t = i / hd;
            const int c = i - t * hd;
            qs[t * hs + c] = to_float(qkv_b[static_cast<long long>(t0 + t) * c3 + c]);
            gs[t * hs + c] = to_float(dout_b[static_cast<long long>(t0 + t) * C + c]);
        }
        for (int i = threadIdx.x; i < nt; i += blockDim.x) {
            ls[i] = lse[bh * L + t0 + i];
            dd[i] = D[bh * L + t0 + i];
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int lr = warp + ATTN_WARPS * r;
            const int j = row0 + lr;
            // warp-uniform skips: no such key, every query of the tile precedes the key, or a
            // padded key (no query sees it: its dk and dv stay 0)
            if (lr >= nrows || t0 + nt - 1 < j || (mask != nullptr && mask[j] == 0)) continue;
            const int t = t0 + lane;
            const bool vis = lane < nt && t >= j;
            float pd = 0.0f;
            float ds = 0.0f;
            if (vis) {
                const float s = attn_dot(qs + lane * hs, kr + lr * hd, hd) / scale;
                const float p = expf(s - ls[lane]);
                float dp = attn_dot(gs + lane * hs, vr + lr * hd, hd);
                float rr = 1.0f;
                if (drop.on) {
                    rr = dropout_scale_at(drop.key, drop_base + static_cast<unsigned long long>(t) * L + j, drop.p);
                }
                dp *= rr;
                pd = p * rr;
                ds = p * (dp - dd[lane]) / scale;
            }
            __syncwarp();
            pr[lane] = pd;
            sr[lane] = ds;
            __syncwarp();
            const int tstart = max(0, j - t0);
#pragma unroll
            for (int cc = 0; cc < NC; cc++) {
                const int c = lane + 32 * cc;
                if (c < hd) {
                    float av = dv[r][cc];
                    float ak = dk[r][cc];
                    for (int tt = tstart; tt < nt; tt++) {
                        av += pr[tt] * gs[tt * hs + c];
                        ak += sr[tt] * qs[tt * hs + c];
                    }
                    dv[r][cc] = av;
                    dk[r][cc] = ak;
                }
            }
        }
    }
    T* dkv_b = dqkv + a.b * L * c3 + hoff;
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int lr = warp + ATTN_WARPS * r;
        if (lr >= nrows) continue;
        T* drow = dkv_b + static_cast<long long>(row0 + lr) * c3;
#pragma unroll
        for (int cc = 0; cc < NC; cc++) {
            const int c = lane + 32 * cc;
            if (c < hd) {
                drow[C + c] = from_float<T>(dk[r][cc]);
                drow[2LL * C + c] = from_float<T>(dv[r][cc]);
            }
        }
    }
}

extern "C" __global__ void attention_backward_dq_hd32(float* __restrict__ dqkv, const float* __restrict__ dout,
                                                      const float* __restrict__ qkv, const float* __restrict__ lse,
                                                      const float* __restrict__ D, const int* __restrict__ key_mask,
                                                      int L, int C, int NH, int drop_on, unsigned long long seed,
                                                      unsigned long long step, const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dq<float, 1, 4>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                  attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dq_hd32_bf16(__nv_bfloat16* __restrict__ dqkv,
                                                           const __nv_bfloat16* __restrict__ dout,
                                                           const __nv_bfloat16* __restrict__ qkv,
                                                           const float* __restrict__ lse, const float* __restrict__ D,
                                                           const int* __restrict__ key_mask, int L, int C, int NH,
                                                           int drop_on, unsigned long long seed, unsigned long long step,
                                                           const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dq<__nv_bfloat16, 1, 4>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                          attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dq_hd64(float* __restrict__ dqkv, const float* __restrict__ dout,
                                                      const float* __restrict__ qkv, const float* __restrict__ lse,
                                                      const float* __restrict__ D, const int* __restrict__ key_mask,
                                                      int L, int C, int NH, int drop_on, unsigned long long seed,
                                                      unsigned long long step, const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dq<float, 2, 4>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                  attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dq_hd64_bf16(__nv_bfloat16* __restrict__ dqkv,
                                                           const __nv_bfloat16* __restrict__ dout,
                                                           const __nv_bfloat16* __restrict__ qkv,
                                                           const float* __restrict__ lse, const float* __restrict__ D,
                                                           const int* __restrict__ key_mask, int L, int C, int NH,
                                                           int drop_on, unsigned long long seed, unsigned long long step,
                                                           const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dq<__nv_bfloat16, 2, 4>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                          attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dq_hd128(float* __restrict__ dqkv, const float* __restrict__ dout,
                                                       const float* __restrict__ qkv, const float* __restrict__ lse,
                                                       const float* __restrict__ D, const int* __restrict__ key_mask,
                                                       int L, int C, int NH, int drop_on, unsigned long long seed,
                                                       unsigned long long step, const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dq<float, 4, 2>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                  attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dq_hd128_bf16(__nv_bfloat16* __restrict__ dqkv,
                                                            const __nv_bfloat16* __restrict__ dout,
                                                            const __nv_bfloat16* __restrict__ qkv,
                                                            const float* __restrict__ lse, const float* __restrict__ D,
                                                            const int* __restrict__ key_mask, int L, int C, int NH,
                                                            int drop_on, unsigned long long seed, unsigned long long step,
                                                            const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dq<__nv_bfloat16, 4, 2>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                          attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dkv_hd32(float* __restrict__ dqkv, const float* __restrict__ dout,
                                                       const float* __restrict__ qkv, const float* __restrict__ lse,
                                                       const float* __restrict__ D, const int* __restrict__ key_mask,
                                                       int L, int C, int NH, int drop_on, unsigned long long seed,
                                                       unsigned long long step, const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dkv<float, 1, 4>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                   attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dkv_hd32_bf16(__nv_bfloat16* __restrict__ dqkv,
                                                            const __nv_bfloat16* __restrict__ dout,
                                                            const __nv_bfloat16* __restrict__ qkv,
                                                            const float* __restrict__ lse, const float* __restrict__ D,
                                                            const int* __restrict__ key_mask, int L, int C, int NH,
                                                            int drop_on, unsigned long long seed, unsigned long long step,
                                                            const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dkv<__nv_bfloat16, 1, 4>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                           attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dkv_hd64(float* __restrict__ dqkv, const float* __restrict__ dout,
                                                       const float* __restrict__ qkv, const float* __restrict__ lse,
                                                       const float* __restrict__ D, const int* __restrict__ key_mask,
                                                       int L, int C, int NH, int drop_on, unsigned long long seed,
                                                       unsigned long long step, const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dkv<float, 2, 4>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                   attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dkv_hd64_bf16(__nv_bfloat16* __restrict__ dqkv,
                                                            const __nv_bfloat16* __restrict__ dout,
                                                            const __nv_bfloat16* __restrict__ qkv,
                                                            const float* __restrict__ lse, const float* __restrict__ D,
                                                            const int* __restrict__ key_mask, int L, int C, int NH,
                                                            int drop_on, unsigned long long seed, unsigned long long step,
                                                            const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dkv<__nv_bfloat16, 2, 4>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                           attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dkv_hd128(float* __restrict__ dqkv, const float* __restrict__ dout,
                                                        const float* __restrict__ qkv, const float* __restrict__ lse,
                                                        const float* __restrict__ D, const int* __restrict__ key_mask,
                                                        int L, int C, int NH, int drop_on, unsigned long long seed,
                                                        unsigned long long step, const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dkv<float, 4, 2>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                   attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dkv_hd128_bf16(__nv_bfloat16* __restrict__ dqkv,
                                                             const __nv_bfloat16* __restrict__ dout,
                                                             const __nv_bfloat16* __restrict__ qkv,
                                                             const float* __restrict__ lse, const float* __restrict__ D,
                                                             const int* __restrict__ key_mask, int L, int C, int NH,
                                                             int drop_on, unsigned long long seed, unsigned long long step,
                                                             const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(float, smem);
    attn_backward_dkv<__nv_bfloat16, 4, 2>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                                           attn_dropout(drop_on, seed, step, step_at, site, p));
}

// ----------------------------------------------------------------------------------------------
// tensor-core backward (bf16 only, hd = 64 or 128; see the header: "Tensor-core backward")

#define ATTN_TCB_BM 64  // rows per block (keys for dkv, queries for dq): 4 warps x the mma's 16

// Shapes of the tensor-core backward for head size HD. BN: rows of the other side per staged tile
// (queries for dkv, keys for dq): 32 at hd 64, 16 at hd 128, which keeps shared memory under 48 KiB.
template <int HD>
struct AttnTcb {
    static constexpr int HS = HD + 8;  // smem row stride (elements): 16-byte aligned rows, the 8 rows
                                       // of an ldmatrix matrix on distinct bank groups (as the forward)
    static constexpr int BN = HD == 64 ? 32 : 16;
    static constexpr int KSTEPS = HD / 16;  // k-steps of a product over channels
    static constexpr int NT = HD / 8;       // n-tiles of a product into channels
};

// Stages `rows` rows of HD bf16 channels (stride rs in src) into smem rows of stride HD + 8: rows
// past n are zeros, so no NaN of the shared-memory fill reaches an mma.
template <int HD>
__device__ __forceinline__ void attn_tcb_stage(__nv_bfloat16* dst, const __nv_bfloat16* __restrict__ src, long long rs,
                                               int rows, int n) {
    constexpr int HS = AttnTcb<HD>::HS;
    const __nv_bfloat16 zero = __ushort_as_bfloat16(0);
    for (int i = threadIdx.x; i < rows * HD; i += blockDim.x) {
        const int r = i / HD;
        const int c = i - r * HD;
        dst[r * HS + c] = r < n ? src[static_cast<long long>(r) * rs + c] : zero;
    }
}

// acc (16 x BN, C fragments, n-tile n = columns 8n..8n+7) = X Y^T over the HD channels, X = rows
// x0..x0+15 of the smem tile x (the A fragments), Y = rows 0..BN-1 of the smem tile y (an 8x8 block
// of Y rows is B's column-major fragment as ldmatrix loads it). f32 accumulation from 0.
template <int HD, int BN>
__device__ __forceinline__ void attn_tcb_xyt(float (&acc)[BN / 8][4], const __nv_bfloat16* x, int x0,
                                             const __nv_bfloat16* y, int lane) {
    constexpr int HS = AttnTcb<HD>::HS;
    const int mi = lane >> 3;  // ldmatrix: this lane passes the address of row lane%8 of matrix mi
    const int mr = lane & 7;
#pragma unroll
    for (int n = 0; n < BN / 8; n++) {
#pragma unroll
        for (int i = 0; i < 4; i++) acc[n][i] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < AttnTcb<HD>::KSTEPS; kk++) {
        // A matrices: rows 0-7 / 8-15 (mi % 2) x channels 16kk + 0-7 / 8-15 (mi / 2)
        uint32_t af[4];
        ldmatrix_x4(af, x + (x0 + (mi & 1) * 8 + mr) * HS + kk * 16 + (mi >> 1) * 8);
#pragma unroll
        for (int n = 0; n < BN / 8; n += 2) {
            // B matrices: y rows 8n + 0-7 / 8(n+1) + 0-7 (mi / 2) x channels 16kk + 0-7 / 8-15 (mi % 2)
            uint32_t yb[4];
            ldmatrix_x4(yb, y + ((n + (mi >> 1)) * 8 + mr) * HS + kk * 16 + (mi & 1) * 8);
            const uint32_t b0[2] = {yb[0], yb[1]};
            const uint32_t b1[2] = {yb[2], yb[3]};
            mma_m16n8k16_bf16(acc[n], af, b0, acc[n]);
            mma_m16n8k16_bf16(acc[n + 1], af, b1, acc[n + 1]);
        }
    }
}

// The bf16 rounding of a 16 x BN f32 tile held as C fragments, as A fragments: k-step s covers
// columns 16s..16s+15 = n-tiles 2s (a[0], a[1]: rows g, g+8) and 2s+1 (a[2], a[3]) (common.cuh).
template <int BN>
__device__ __forceinline__ void attn_tcb_to_a(uint32_t (&f)[BN / 16][4], const float (&v)[BN / 8][4]) {
#pragma unroll
    for (int s = 0; s < BN / 16; s++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            f[s][2 * h] = pack_bf16x2(__float2bfloat16_rn(v[2 * s + h][0]), __float2bfloat16_rn(v[2 * s + h][1]));
            f[s][2 * h + 1] = pack_bf16x2(__float2bfloat16_rn(v[2 * s + h][2]), __float2bfloat16_rn(v[2 * s + h][3]));
        }
    }
}

// acc (16 x HD, C fragments) += A Y, A the 16 x BN A fragments af, Y = rows 0..BN-1 of the smem tile
// y (row-major, BN x HD: ldmatrix .trans gives B's fragment).
template <int HD, int BN>
__device__ __forceinline__ void attn_tcb_ay(float (&acc)[HD / 8][4], const uint32_t (&af)[BN / 16][4],
                                            const __nv_bfloat16* y, int lane) {
    constexpr int HS = AttnTcb<HD>::HS;
    const int mi = lane >> 3;
    const int mr = lane & 7;
#pragma unroll
    for (int s = 0; s < BN / 16; s++) {
#pragma unroll
        for (int n = 0; n < HD / 8; n += 2) {
            // matrices: y rows 16s + 0-7 / 8-15 (mi % 2) x channels 8n + 0-7 / 8(n+1) + 0-7 (mi / 2)
            uint32_t yb[4];
            ldmatrix_x4_trans(yb, y + (16 * s + (mi & 1) * 8 + mr) * HS + (n + (mi >> 1)) * 8);
            const uint32_t b0[2] = {yb[0], yb[1]};
            const uint32_t b1[2] = {yb[2], yb[3]};
            mma_m16n8k16_bf16(acc[n], af[s], b0, acc[n]);
            mma_m16n8k16_bf16(acc[n + 1], af[s], b1, acc[n + 1]);
        }
    }
}

// dq rows of one (b, h) query block of 64: warp w owns queries 16w..16w+15 (the A rows of S = Q K^T,
// dP = dO V^T and dQ = dS K); lane (g, t) holds rows g, g+8 and keys/channels 8n + 2t, 8n + 2t + 1.
// Walks key tiles of BN up to the block's last query, as the scalar dq kernel walks its tiles.
template <int HD>
__device__ void attn_tc_backward_dq(__nv_bfloat16* smem, __nv_bfloat16* __restrict__ dqkv,
                                    const __nv_bfloat16* __restrict__ dout, const __nv_bfloat16* __restrict__ qkv,
                                    const float* __restrict__ lse, const float* __restrict__ D,
                                    const int* __restrict__ key_mask, int L, int C, int NH, AttnDropout drop) {
    constexpr int HS = AttnTcb<HD>::HS;
    constexpr int BN = AttnTcb<HD>::BN;
    constexpr int NT = AttnTcb<HD>::NT;
    __nv_bfloat16* qs = smem;                  // [64][HS] the block's queries
    __nv_bfloat16* gs = qs + ATTN_TCB_BM * HS;  // [64][HS] and their dout rows
    __nv_bfloat16* ks = gs + ATTN_TCB_BM * HS;  // [BN][HS] the staged keys
    __nv_bfloat16* vs = ks + BN * HS;           // [BN][HS] and values
    const AttnBlock a = attn_block(L, ATTN_TCB_BM, NH);
    const long long bh = a.b * NH + a.h;
    const long long c3 = 3LL * C;
    const long long hoff = static_cast<long long>(a.h) * HD;
    const __nv_bfloat16* qkv_b = qkv + a.b * L * c3 + hoff;
    const __nv_bfloat16* dout_b = dout + a.b * L * C + hoff;
    const int* mask = key_mask == nullptr ? nullptr : key_mask + a.b * L;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int row0 = a.tile * ATTN_TCB_BM;
    const int nrows = min(ATTN_TCB_BM, L - row0);
    const int wr0 = warp * 16;                   // the warp's first row in the block
    const int wrows = min(16, nrows - wr0);      // <= 0: the warp has no row (uniform)
    const int wlast = row0 + wr0 + wrows - 1;    // the warp's last query
    const float scale = sqrtf(static_cast<float>(HD));
    const unsigned long long drop_base = static_cast<unsigned long long>(bh * L) * L;

    attn_tcb_stage<HD>(qs, qkv_b + static_cast<long long>(row0) * c3, c3, ATTN_TCB_BM, nrows);
    attn_tcb_stage<HD>(gs, dout_b + static_cast<long long>(row0) * C, C, ATTN_TCB_BM, nrows);
    int pos[2];  // queries of rows g and g+8; -1 past L (sees no key)
    float lse_r[2], d_r[2];
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        const int lr = wr0 + g + 8 * ri;
        const bool ok = lr < nrows;
        pos[ri] = ok ? row0 + lr : -1;
        lse_r[ri] = ok ? lse[bh * L + row0 + lr] : 0.0f;
        d_r[ri] = ok ? D[bh * L + row0 + lr] : 0.0f;
    }
    float dq[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
        for (int i = 0; i < 4; i++) dq[n][i] = 0.0f;
    }
    const int nkeys = row0 + nrows;  // keys 0..the block's last query
    const int ntiles = CEIL_DIV(nkeys, BN);
    for (int kt = 0; kt < ntiles; kt++) {
        const int j0 = kt * BN;
        const int nk = min(BN, nkeys - j0);
        __syncthreads();  // the previous tile is consumed (and Q, dout are staged, on the first pass)
        const __nv_bfloat16* kv = qkv_b + static_cast<long long>(j0) * c3;
        attn_tcb_stage<HD>(ks, kv + C, c3, BN, nk);
        attn_tcb_stage<HD>(vs, kv + 2LL * C, c3, BN, nk);
        __syncthreads();
        if (wrows <= 0 || j0 > wlast) continue;  // warp-uniform: no row, or every key is after its rows

        float sc[BN / 8][4], dp[BN / 8][4];
        attn_tcb_xyt<HD, BN>(sc, qs, wr0, ks, lane);  // S = Q K^T (unscaled)
        attn_tcb_xyt<HD, BN>(dp, gs, wr0, vs, lane);  // dP = dO V^T (before dropout)
#pragma unroll
        for (int n = 0; n < BN / 8; n++) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int ri = i >> 1;
                const int jj = 8 * n + 2 * t + (i & 1);
                const int j = j0 + jj;
                const bool vis = jj < nk && j <= pos[ri] && (mask == nullptr || mask[j] != 0);
                float ds = 0.0f;
                if (vis) {
                    const float s = sc[n][i] / scale;
                    const float p = expf(s - lse_r[ri]);
                    float dpv = dp[n][i];
                    if (drop.on) {
                        dpv *= dropout_scale_at(drop.key, drop_base + static_cast<unsigned long long>(pos[ri]) * L + j,
                                                drop.p);
                    }
                    ds = p * (dpv - d_r[ri]) / scale;
                }
                dp[n][i] = ds;
            }
        }
        uint32_t sf[BN / 16][4];
        attn_tcb_to_a<BN>(sf, dp);  // dS rounded to bf16 once
        attn_tcb_ay<HD, BN>(dq, sf, ks, lane);  // dQ += dS K
    }
    if (wrows <= 0) return;
    __nv_bfloat16* dq_b = dqkv + a.b * L * c3 + hoff;
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        if (pos[ri] < 0) continue;
        __nv_bfloat16* drow = dq_b + static_cast<long long>(pos[ri]) * c3;
#pragma unroll
        for (int n = 0; n < NT; n++) {
            drow[8 * n + 2 * t] = __float2bfloat16_rn(dq[n][2 * ri]);
            drow[8 * n + 2 * t + 1] = __float2bfloat16_rn(dq[n][2 * ri + 1]);
        }
    }
}

// dk and dv rows of one (b, h) key block of 64: warp w owns keys 16w..16w+15 (the A rows of
// S^T = K Q^T, dP^T = V dO^T, dV = (P r)^T dO and dK = dS^T Q); lane (g, t) holds keys g, g+8 and
// queries/channels 8n + 2t, 8n + 2t + 1. Walks query tiles of BN from the block's first key to L.
template <int HD>
__device__ void attn_tc_backward_dkv(__nv_bfloat16* smem, __nv_bfloat16* __restrict__ dqkv,
                                     const __nv_bfloat16* __restrict__ dout, const __nv_bfloat16* __restrict__ qkv,
                                     const float* __restrict__ lse, const float* __restrict__ D,
                                     const int* __restrict__ key_mask, int L, int C, int NH, AttnDropout drop) {
    constexpr int HS = AttnTcb<HD>::HS;
    constexpr int BN = AttnTcb<HD>::BN;
    constexpr int NT = AttnTcb<HD>::NT;
    __nv_bfloat16* ks = smem;                   // [64][HS] the block's keys
    __nv_bfloat16* vs = ks + ATTN_TCB_BM * HS;  // [64][HS] and values
    __nv_bfloat16* qs = vs + ATTN_TCB_BM * HS;  // [BN][HS] the staged queries
    __nv_bfloat16* gs = qs + BN * HS;           // [BN][HS] and their dout rows
    float* ls = reinterpret_cast<float*>(gs + BN * HS);  // [BN] their lse
    float* dd = ls + BN;                                 // [BN] and D
    const AttnBlock a = attn_block(L, ATTN_TCB_BM, NH);
    const long long bh = a.b * NH + a.h;
    const long long c3 = 3LL * C;
    const long long hoff = static_cast<long long>(a.h) * HD;
    const __nv_bfloat16* qkv_b = qkv + a.b * L * c3 + hoff;
    const __nv_bfloat16* dout_b = dout + a.b * L * C + hoff;
    const int* mask = key_mask == nullptr ? nullptr : key_mask + a.b * L;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int row0 = a.tile * ATTN_TCB_BM;  // the block's first key
    const int nrows = min(ATTN_TCB_BM, L - row0);
    const int wr0 = warp * 16;
    const int wfirst = row0 + wr0;  // the warp's first key (none if wr0 >= nrows: uniform)
    const float scale = sqrtf(static_cast<float>(HD));
    const unsigned long long drop_base = static_cast<unsigned long long>(bh * L) * L;

    const __nv_bfloat16* kv = qkv_b + static_cast<long long>(row0) * c3;
    attn_tcb_stage<HD>(ks, kv + C, c3, ATTN_TCB_BM, nrows);
    attn_tcb_stage<HD>(vs, kv + 2LL * C, c3, ATTN_TCB_BM, nrows);
    int key[2];    // keys of rows g and g+8
    bool kvis[2];  // the key exists and is not padded (a padded key's dk and dv stay 0)
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        const int lr = wr0 + g + 8 * ri;
        key[ri] = row0 + lr;
        kvis[ri] = lr < nrows && (mask == nullptr || mask[row0 + lr] != 0);
    }
    float dk[NT][4], dv[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            dk[n][i] = 0.0f;
            dv[n][i] = 0.0f;
        }
    }
    for (int t0 = (row0 / BN) * BN; t0 < L; t0 += BN) {
        const int nt = min(BN, L - t0);
        __syncthreads();  // the previous tile is consumed (and K, V are staged, on the first pass)
        attn_tcb_stage<HD>(qs, qkv_b + static_cast<long long>(t0) * c3, c3, BN, nt);
        attn_tcb_stage<HD>(gs, dout_b + static_cast<long long>(t0) * C, C, BN, nt);
        for (int i = threadIdx.x; i < BN; i += blockDim.x) {
            ls[i] = i < nt ? lse[bh * L + t0 + i] : 0.0f;
            dd[i] = i < nt ? D[bh * L + t0 + i] : 0.0f;
        }
        __syncthreads();
        // warp-uniform: no key, or every query of the tile precedes the warp's keys
        if (wr0 >= nrows || t0 + nt - 1 < wfirst) continue;

        float sc[BN / 8][4], dp[BN / 8][4];
        attn_tcb_xyt<HD, BN>(sc, ks, wr0, qs, lane);  // S^T = K Q^T (unscaled)
        attn_tcb_xyt<HD, BN>(dp, vs, wr0, gs, lane);  // dP^T = V dO^T (before dropout)
#pragma unroll
        for (int n = 0; n < BN / 8; n++) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int ri = i >> 1;
                const int tt = 8 * n + 2 * t + (i & 1);
                const int tq = t0 + tt;
                const bool vis = kvis[ri] && tt < nt && tq >= key[ri];
                float pr = 0.0f;
                float ds = 0.0f;
                if (vis) {
                    const float s = sc[n][i] / scale;
                    const float p = expf(s - ls[tt]);
                    float rr = 1.0f;
                    if (drop.on) {
                        rr = dropout_scale_at(drop.key, drop_base + static_cast<unsigned long long>(tq) * L + key[ri],
                                              drop.p);
                    }
                    const float dpv = dp[n][i] * rr;
                    pr = p * rr;
                    ds = p * (dpv - dd[tt]) / scale;
                }
                sc[n][i] = pr;
                dp[n][i] = ds;
            }
        }
        uint32_t pf[BN / 16][4], sf[BN / 16][4];
        attn_tcb_to_a<BN>(pf, sc);  // (P r)^T rounded to bf16 once
        attn_tcb_to_a<BN>(sf, dp);  // dS^T rounded to bf16 once
        attn_tcb_ay<HD, BN>(dv, pf, gs, lane);  // dV += (P r)^T dO
        attn_tcb_ay<HD, BN>(dk, sf, qs, lane);  // dK += dS^T Q
    }
    if (wr0 >= nrows) return;
    __nv_bfloat16* dkv_b = dqkv + a.b * L * c3 + hoff;
#pragma unroll
    for (int ri = 0; ri < 2; ri++) {
        if (wr0 + g + 8 * ri >= nrows) continue;
        __nv_bfloat16* drow = dkv_b + static_cast<long long>(key[ri]) * c3;
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const int c = 8 * n + 2 * t;
            drow[C + c] = __float2bfloat16_rn(dk[n][2 * ri]);
            drow[C + c + 1] = __float2bfloat16_rn(dk[n][2 * ri + 1]);
            drow[2LL * C + c] = __float2bfloat16_rn(dv[n][2 * ri]);
            drow[2LL * C + c + 1] = __float2bfloat16_rn(dv[n][2 * ri + 1]);
        }
    }
}

extern "C" __global__ void attention_backward_dq_tc_hd64_bf16(__nv_bfloat16* __restrict__ dqkv,
                                                              const __nv_bfloat16* __restrict__ dout,
                                                              const __nv_bfloat16* __restrict__ qkv,
                                                              const float* __restrict__ lse, const float* __restrict__ D,
                                                              const int* __restrict__ key_mask, int L, int C, int NH,
                                                              int drop_on, unsigned long long seed, unsigned long long step,
                                                              const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(__nv_bfloat16, smem);
    attn_tc_backward_dq<64>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                            attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dq_tc_hd128_bf16(__nv_bfloat16* __restrict__ dqkv,
                                                               const __nv_bfloat16* __restrict__ dout,
                                                               const __nv_bfloat16* __restrict__ qkv,
                                                               const float* __restrict__ lse, const float* __restrict__ D,
                                                               const int* __restrict__ key_mask, int L, int C, int NH,
                                                               int drop_on, unsigned long long seed, unsigned long long step,
                                                               const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(__nv_bfloat16, smem);
    attn_tc_backward_dq<128>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                             attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dkv_tc_hd64_bf16(__nv_bfloat16* __restrict__ dqkv,
                                                               const __nv_bfloat16* __restrict__ dout,
                                                               const __nv_bfloat16* __restrict__ qkv,
                                                               const float* __restrict__ lse, const float* __restrict__ D,
                                                               const int* __restrict__ key_mask, int L, int C, int NH,
                                                               int drop_on, unsigned long long seed, unsigned long long step,
                                                               const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(__nv_bfloat16, smem);
    attn_tc_backward_dkv<64>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                             attn_dropout(drop_on, seed, step, step_at, site, p));
}

extern "C" __global__ void attention_backward_dkv_tc_hd128_bf16(__nv_bfloat16* __restrict__ dqkv,
                                                                const __nv_bfloat16* __restrict__ dout,
                                                                const __nv_bfloat16* __restrict__ qkv,
                                                                const float* __restrict__ lse, const float* __restrict__ D,
                                                                const int* __restrict__ key_mask, int L, int C, int NH,
                                                                int drop_on, unsigned long long seed, unsigned long long step,
                                                                const unsigned long long* step_at, unsigned int site, float p) {
    DYN_SMEM(__nv_bfloat16, smem);
    attn_tc_backward_dkv<128>(smem, dqkv, dout, qkv, lse, D, key_mask, L, C, NH,
                              attn_dropout(drop_on, seed, step, step_at, site, p));
}
