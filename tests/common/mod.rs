//! Helpers shared by the integration tests: deterministic random data, device handles, upload and
//! download shorthands, and THE comparison helper with the kernel tolerance table (one row per
//! checked tensor, each value explained). Model-level parity tolerances live in
//! `pepler_cuda::parity::tolerances`.
#![allow(dead_code)] // each test binary uses a different subset

use pepler_cuda::device::{Device, DeviceBuffer, View};
use pepler_cuda::model::config::{ModelConfig, PromptKind, RecKind};
use pepler_cuda::precision::Act;
#[allow(unused_imports)] // Bf16 rows are looked up by the bf16 tests only
pub use pepler_cuda::precision::Precision::{self, Bf16, Fp32};

/// (tensor, precision, atol, rtol): pass when |actual - expected| <= atol + rtol * |expected|.
/// The precision axis: `Fp32` rows compare f32 kernels with the f32 reference; `Bf16` rows compare
/// a kernel that stores bf16 with its CPU reference (the f32 op on the widened inputs, outputs
/// rounded to bf16: `Act::round_slice`). Two roundings to bf16 of values that differ by f32 noise
/// land on neighbouring bf16 values at worst: one bf16 ulp, at most 2^-7 relative (bf16 keeps 8
/// significant bits), is the floor of every bf16 row; each row says what it adds.
/// Why these values: the residual add is one IEEE add per element on every device, so it must be
/// exact. GELU is elementwise but uses the device's tanhf (CUDA's is within 2 ulp; nvcc may fuse
/// multiply-adds): a few ulp, i.e. 1e-6 absolute near 0 and 1e-5 relative. Softmax and LayerNorm
/// sum rows of up to 771 values in a different order than the sequential CPU loop (strided lanes
/// plus a butterfly): fp32 reassociation error grows like sqrt(c) ulp of the row sum, ~1e-5
/// relative for these sizes. dweight/dbias sum over rows and partial blocks: same bound.
pub const TOLERANCES: &[(&str, Precision, f32, f32)] = &[
    // cuBLAS sgemm / the emulated device's GEMM vs the f64-accumulating reference: fp32 rounding
    // of a k-term dot product (k <= 70 in tests/device.rs) stays well below 1e-5 relative.
    ("gemm.c", Fp32, 1e-5, 1e-5),
    // bf16 GEMM (Device::gemm_bf16) vs the f64 reference on the same bf16 inputs: every product
    // of two bf16 values is exact in f32, so the device differs from f64 only by the f32
    // summation of k <= 70 terms (as the Fp32 row: < 1e-5 for inputs ~1) and, for a bf16 C, by
    // where the two single roundings to bf16 land: one bf16 ulp, 2^-7 relative.
    ("gemm.c", Bf16, 1e-5, 0.0078125),
    // the same GEMM with an f32 C (weight gradients, beta = 1): no bf16 rounding at all, so the
    // Fp32 row's f32 summation bound
    ("gemm.c_f32", Bf16, 1e-5, 1e-5),
    ("residual.out", Fp32, 0.0, 0.0),
    // bf16: the same single f32 add of the widened inputs, rounded to nearest even once on both
    // sides: the same bits.
    ("residual.out", Bf16, 0.0, 0.0),
    ("gelu.out", Fp32, 1e-6, 1e-5),
    ("gelu.dinp", Fp32, 1e-6, 1e-5),
    // bf16: the f32 rows' few-ulp tanhf difference can put the one rounding on the neighbouring
    // bf16 value: the f32 bound plus one bf16 ulp (2^-7 relative).
    ("gelu.out", Bf16, 1e-6, 1.0 / 128.0 + 1e-5),
    ("gelu.dinp", Bf16, 1e-6, 1.0 / 128.0 + 1e-5),
    // the fused bias add is the same single f32 add as the matmul's bias kernel: exact
    ("bias_gelu.pre", Fp32, 0.0, 0.0),
    ("softmax.out", Fp32, 1e-7, 1e-5),
    ("layernorm.out", Fp32, 1e-5, 1e-5),
    ("layernorm.mean", Fp32, 1e-6, 1e-5),
    ("layernorm.rstd", Fp32, 1e-6, 1e-5),
    ("layernorm.dinp", Fp32, 1e-5, 1e-5),
    ("layernorm.dweight", Fp32, 1e-5, 1e-5),
    ("layernorm.dbias", Fp32, 1e-5, 1e-5),
    // bf16: the statistics and the weight gradients are f32 sums of the exactly widened inputs,
    // the same computation as in fp32: the fp32 bounds. out and dinp (+=: old bf16 value + f32
    // increment) are rounded once: the fp32 bound plus one bf16 ulp.
    ("layernorm.out", Bf16, 1e-5, 1.0 / 128.0 + 1e-5),
    ("layernorm.mean", Bf16, 1e-6, 1e-5),
    ("layernorm.rstd", Bf16, 1e-6, 1e-5),
    ("layernorm.dinp", Bf16, 1e-5, 1.0 / 128.0 + 1e-5),
    ("layernorm.dweight", Bf16, 1e-5, 1e-5),
    ("layernorm.dbias", Bf16, 1e-5, 1e-5),
    // encoder, matmul bias, dropout, classifier, argmax, rating heads, adamw, grad norm
    // (kernels/encoder.cu, matmul.cu, dropout.cu, classifier.cu, rating.cu, adamw.cu, global_norm.cu)
    // embedding: the forward is a copy plus one IEEE add, the backward sums each table row's and
    // position's occurrences in the CPU's (b, j) order starting from the old value: exact.
    ("embedding.out", Fp32, 0.0, 0.0),
    ("embedding.dtable", Fp32, 0.0, 0.0),
    ("embedding.dwpe", Fp32, 0.0, 0.0),
    // bf16: the forward's f32 add is rounded once on both sides; the backward widens dout exactly
    // and sums in the CPU's order in f32: all exact.
    ("embedding.out", Bf16, 0.0, 0.0),
    ("embedding.dtable", Bf16, 0.0, 0.0),
    ("embedding.dwpe", Bf16, 0.0, 0.0),
    // cross-entropy: the row max is exact, the sum of exp over v (up to 50260) is reassociated
    // (strided threads + block tree) and exp/log are the device's: ~sqrt(v) ulp of the sum, i.e.
    // ~1e-5 relative on the loss (~ln v). dlogits are softmax * dscale: relative 1e-5 from 1/sum,
    // absolute 1e-8 for the tiny probabilities of far-below-max logits.
    ("crossentropy.losses", Fp32, 1e-5, 1e-5),
    ("crossentropy.dlogits", Fp32, 1e-8, 1e-5),
    // bf16 logits (v up to 50260): they are widened exactly, and the max, the sum of exp, the log
    // and the loss are the fp32 kernel's f32 computation on those values, so the losses keep the
    // fp32 bound. Each dlogit is that f32 value rounded to bf16 once: the fp32 bound plus one bf16
    // ulp (2^-7 relative; bf16 has f32's exponent range, so the tiny probabilities stay relative).
    ("crossentropy.losses", Bf16, 1e-5, 1e-5),
    ("crossentropy.dlogits", Bf16, 1e-8, 1.0 / 128.0 + 1e-5),
    // the mean sums in f64 on both sides (different order), then rounds to f32 once: 1 ulp.
    ("crossentropy.mean", Fp32, 0.0, 1.2e-7),
    // rating heads: the MF dot product sums c products in lane order + butterfly (reassociated:
    // ~sqrt(c) ulp of the sum's magnitude, which for |u.i| near 0 is absolute); its backward and
    // sigmoid's are single multiplies (exact); sigmoid uses the device's expf (2 ulp); MSE sums
    // in the CPU's order with no contraction: exact.
    ("rating_mf.out", Fp32, 1e-5, 1e-5),
    ("rating_mf.dui", Fp32, 0.0, 0.0),
    ("sigmoid.out", Fp32, 1e-7, 1e-6),
    ("sigmoid.dinp", Fp32, 0.0, 0.0),
    ("mse.loss", Fp32, 0.0, 0.0),
    ("mse.dpred", Fp32, 0.0, 0.0),
    // bf16: every value is the fp32 kernel's f32 computation on the widened inputs, rounded once
    // when stored. The MF dot product keeps its reassociation error plus one bf16 ulp; its
    // backward (a product of two bf16 values is exact in f32), sigmoid's backward and MSE are the
    // CPU's exact f32 operations, so one rounding of the same value on both sides: exact. sigmoid:
    // the device's expf (2 ulp) plus one bf16 ulp.
    ("rating_mf.out", Bf16, 1e-5, 1.0 / 128.0 + 1e-5),
    ("rating_mf.dui", Bf16, 0.0, 0.0),
    ("sigmoid.out", Bf16, 1e-7, 1.0 / 128.0 + 1e-6),
    ("sigmoid.dinp", Bf16, 0.0, 0.0),
    ("mse.loss", Bf16, 0.0, 0.0),
    ("mse.dpred", Bf16, 0.0, 0.0),
    // dropout: an integer hash and one multiply: exact.
    ("dropout.out", Fp32, 0.0, 0.0),
    // bf16: the same mask and the same f32 multiply, rounded once on both sides: exact.
    ("dropout.out", Bf16, 0.0, 0.0),
    // global norm: f32 partial sums in a fixed tree vs the CPU's f64 sum: ~sqrt(n/G) ulp relative
    // error in the sum of squares, halved by the sqrt; 1e-5 relative covers n up to ~1e8. The clip
    // scaling is the same f32 ops as the CPU: exact.
    ("global_norm.norm", Fp32, 0.0, 1e-5),
    ("global_norm.clipped", Fp32, 0.0, 0.0),
    // matmul: the device GEMM (cuBLAS, or the emulator's CPU GEMM) and the reference's gemm crate
    // sum k products in different blockings: ~sqrt(k) ulp of the dot product's magnitude (inputs
    // ~1, k <= 300 here: 1e-5 absolute). The bias add after the GEMM is the CPU's single add. dbias
    // sums 64-row chunks, then the chunks, vs the CPU's one row-order sum: for up to 1000 rows of
    // values ~1 the running sums reach ~sqrt(rows) ~ 30, and reassociation costs ~sqrt(rows) ulp
    // of those (measured 5.7e-5 at 1000 rows): 1e-4 absolute.
    ("matmul.out", Fp32, 1e-5, 1e-5),
    ("matmul.dinp", Fp32, 1e-5, 1e-5),
    ("matmul.dweight", Fp32, 1e-5, 1e-5),
    ("matmul.dbias", Fp32, 1e-4, 1e-5),
    // bf16 matmul vs the f32 reference on the same (bf16) inputs, out and dinp rounded to bf16:
    // the f32 rows' summation error plus one bf16 ulp (2^-7 relative) where the two roundings of
    // nearly equal f32 values land on neighbouring bf16 values. dweight and dbias are f32 sums of
    // exact products / of widened values on both sides: the f32 rows unchanged.
    ("matmul.out", Bf16, 1e-5, 0.0078125),
    ("matmul.dinp", Bf16, 1e-5, 0.0078125),
    ("matmul.dweight", Bf16, 1e-5, 1e-5),
    ("matmul.dbias", Bf16, 1e-4, 1e-5),
    // -- end of the misc kernels' rows
    // attention (kernels/attention.cu)
    // The kernels keep the softmax online (running max, per-lane
    // partial sums joined by a butterfly, exp(s - running max) rescaled when the max moves) where
    // the reference takes the row max first and sums sequentially, and the backward rebuilds P as
    // exp(s - lse) and the row term as dout.out instead of sum_j p_j dp_j: each is a few ulp per
    // term over up to 300 keys. Worst seen on the emulated device (tests/attention.rs prints the
    // share): out 7%, lse 7%, dqkv 10% of these bounds, at L = 300; the values leave room for the
    // GPU's expf/logf (2 ulp) and its contracted multiply-adds.
    // out: |out| <= max |v| = 2; 1e-5 absolute is ~40 ulp of that scale.
    ("attention.out", Fp32, 1e-5, 1e-5),
    // lse = max s + log(sum): |lse| < 10 here, a few ulp of that is < 1e-5.
    ("attention.lse", Fp32, 1e-5, 1e-6),
    // dqkv: dS = P (dP - D) cancels (dP and D are both ~|dout||v|), so its error is relative to
    // the terms, not the result: rtol 1e-4 with a 1e-5 floor.
    ("attention.dqkv", Fp32, 1e-5, 1e-4),
    // bf16 (the same kernels with T = __nv_bfloat16; tests/attention.rs rounds the inputs, the
    // reference is the f32 op on them with out and dqkv rounded once, as the kernel rounds once;
    // P stays f32 on both sides).
    // out: the f32 results differ by the Fp32 row's noise, so the two roundings land at most one
    // bf16 ulp apart (<= 2^-7 |out|), plus that noise. Worst seen: 94% (a one-ulp step at L = 300).
    ("attention.out", Bf16, 1e-5, 1.0 / 128.0 + 1e-5),
    // lse is stored f32 and computed from the same widened inputs as the reference: the Fp32 row.
    ("attention.lse", Bf16, 1e-5, 1e-6),
    // dqkv: one ulp as for out, plus the row term D = dout . out, which reads the stored bf16 out
    // (as FlashAttention's backward does) where the reference sums P dP in f32. Each out_c
    // carries a rounding error of random sign up to u |out_c| (u = 2^-8), so D_t moves by about
    // sqrt(hd) u |dout| |out|, and dq_t = sum_j P_tj (dP_tj - D_t) k_j / sqrt(hd) by about
    // u |dout| |out| |k|, independent of hd: 2^-8 * 1 * 8/3 * 2 = 0.021 at the inputs' extremes
    // (|qkv| <= 2, |dout| <= 1, dropout's 1/(1-p) = 4/3 in out); dk and dv sum such terms over
    // queries with random signs. Worst seen: 44% of this row (0.0085 beyond the one-ulp part, in
    // the dq of a query with one visible key, where the reference's dq is exactly 0).
    ("attention.dqkv", Bf16, 0.021, 1.0 / 128.0 + 1e-4),
    // The tensor-core forward (attention_{,cached_}forward_tc_hdN_bf16, hd 64 and 128), then the
    // same backward: scores are mma sums of exact bf16 products in f32 (a different order than
    // the reference's sequential dot: f32 noise), the softmax is f32 as above, but the P that
    // multiplies V is rounded to bf16 (as FlashAttention does; the denominator l sums the f32 P).
    // out: one ulp as for attention.out, plus the rounding of P r: each term moves by at most
    // u P_j r_j |v_j| (u = 2^-8), so out moves by at most u max(r) max|v| sum_j P_j / l =
    // 2^-8 * 4/3 * 2 = 0.0104 (+ f32 noise). Worst seen: 60% of this row (0.0044 beyond one ulp).
    ("attention_tc.out", Bf16, 0.0105, 1.0 / 128.0 + 1e-5),
    // lse is f32 from f32 scores and exps, like the scalar kernel's: the Fp32 row. Worst seen 6%.
    ("attention_tc.lse", Bf16, 1e-5, 1e-6),
    // dqkv: attention.dqkv's 0.021 for the rounding of out in D = dout . out, plus the same
    // estimate for the rounding of P inside out: D_t moves by sum_j d(P_j r_j) (dout . v_j) / l,
    // about u max(r) sqrt(hd) |dout| |v|, so dq_t by about u max(r) |dout| |v| |k| =
    // 2^-8 * 4/3 * 1 * 2 * 2 = 0.021 more. Worst seen: 33% of this row (0.0128 beyond one ulp).
    ("attention_tc.dqkv", Bf16, 0.042, 1.0 / 128.0 + 1e-4),
    // The tensor-core backward (attention_backward_{dq,dkv}_tc_hdN_bf16) after the tensor-core
    // forward, the launchers' default for bf16 at hd 64/128 (also the bound between it and the
    // scalar backward on the same forward: their difference is the part below without the
    // forward's). S and dP are mma sums (f32 noise); P r and dS are rounded to bf16 (u = 2^-8
    // relative) as the A operands of dV = (P r)^T dO, dK = dS^T Q and dQ = dS K.
    // dqkv: attention_tc.dqkv's 0.042, plus the rounding of dS: dq_t = sum_j dS_tj k_j moves by
    // at most u |k| sum_j |dS_tj| = u |k| sum_j P_tj |dP_tj - D_t| / sqrt(hd); dP_tj is a sum of
    // hd products, r sqrt(hd) * 0.67 in standard deviation (|dout| <= 1, |v| <= 2 uniform), so
    // |dP - D| / sqrt(hd) stays below ~3 sigma * 4/3 = 2.7 and dq_t moves by u * 2 * 2.7 = 0.021
    // (sum_j P_tj = 1); dk_j = sum_t dS_tj q_t likewise, its terms of random sign. The rounding of
    // P r moves dv_j by u max(r) |dout| sum_t P_tj, 0.005 per unit of column mass, inside the
    // budget of the D term that dv does not have. Worst seen: 0.0137 beyond the one-ulp part
    // (24% of this row; the scalar backward on the same forward: 0.0116), and 19% of the row
    // between the tensor-core and the scalar backward.
    ("attention_tc_bwd.dqkv", Bf16, 0.063, 1.0 / 128.0 + 1e-4),
    // -- end of the attention rows
    // row gather / scatter (kernels/gather.cu): a copy, or one add per element onto a distinct
    // row, as the reference: exact in f32; in bf16 the sum is formed in f32 and rounded once on
    // both sides, the gather an exact copy: exact too.
    ("gather.out", Fp32, 0.0, 0.0),
    ("gather.out", Bf16, 0.0, 0.0),
    ("scatter.dst", Fp32, 0.0, 0.0),
    ("scatter.dst", Bf16, 0.0, 0.0),
];

pub fn tolerance_at(prec: Precision, name: &str) -> (f32, f32) {
    TOLERANCES
        .iter()
        .find(|t| t.0 == name && t.1 == prec)
        .map(|t| (t.2, t.3))
        .unwrap_or_else(|| panic!("no {prec} tolerance for {name:?} in TOLERANCES"))
}

pub fn tolerance(name: &str) -> (f32, f32) {
    tolerance_at(Fp32, name)
}

/// Compare with the f32 tolerance of `name`; report the worst error and the first failures.
pub fn assert_close(name: &str, ctx: &str, actual: &[f32], expected: &[f32]) {
    assert_close_at(Fp32, name, ctx, actual, expected)
}

/// Compare with the tolerance of `name` at precision `prec` (see `TOLERANCES`).
pub fn assert_close_at(prec: Precision, name: &str, ctx: &str, actual: &[f32], expected: &[f32]) {
    let (atol, rtol) = tolerance_at(prec, name);
    assert_eq!(actual.len(), expected.len(), "{name} {ctx}: length");
    let mut bad = Vec::new();
    let mut max_abs = 0.0f32;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        max_abs = max_abs.max(err);
        // written so that a NaN error (NaN output) fails, unless the reference is NaN there too
        let within = err <= atol + rtol * e.abs() || (a.is_nan() && e.is_nan());
        if !within {
            bad.push((i, a, e));
        }
    }
    assert!(
        bad.is_empty(),
        "{name} {ctx}: {} of {} elements outside atol {atol} + rtol {rtol}; max abs err {max_abs}; \
         first (index, actual, expected): {:?}",
        bad.len(),
        actual.len(),
        &bad[..bad.len().min(10)]
    );
}

pub fn assert_bits_eq(name: &str, a: &[f32], b: &[f32]) {
    let (ab, bb): (Vec<u32>, Vec<u32>) = (
        a.iter().map(|v| v.to_bits()).collect(),
        b.iter().map(|v| v.to_bits()).collect(),
    );
    if let Some(i) = ab.iter().zip(&bb).position(|(x, y)| x != y) {
        panic!(
            "{name}: not bit-identical, first difference at {i}: {} vs {}",
            a[i], b[i]
        );
    }
    assert_eq!(ab.len(), bb.len(), "{name}: lengths");
}

/// Deterministic pseudo-random values in [lo, hi).
pub fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

pub fn emu() -> Device {
    Device::emu().expect("emulated device")
}

pub fn up(dev: &Device, v: &[f32]) -> DeviceBuffer<f32> {
    dev.upload(v).unwrap()
}

pub fn down(dev: &Device, v: View<'_, f32>) -> Vec<f32> {
    dev.download(v).unwrap()
}

/// The CUDA device, or a panic saying so: only `#[ignore]`d `*_on_cuda` tests call this, and they
/// must fail (never skip) on a machine without a GPU.
pub fn gpu() -> Device {
    Device::cuda().expect("this test needs a CUDA GPU (run with --ignored only on a GPU machine)")
}

/// `v` rounded to what `A` holds (a no-op for f32): the inputs of a test that runs for both
/// activation types are generated in f32, then rounded, so the CPU reference sees exactly the
/// values the kernel loads.
pub fn rounded<A: Act>(mut v: Vec<f32>) -> Vec<f32> {
    A::round_slice(&mut v);
    v
}

/// Upload f32 values as `A` (rounded to nearest even; exact for values from [`rounded`]).
pub fn up_as<A: Act>(dev: &Device, v: &[f32]) -> DeviceBuffer<A> {
    let mut a = vec![A::default(); v.len()];
    A::narrow_into(&mut a, v);
    dev.upload(&a).unwrap()
}

/// Download `A` values widened to f32 (exact).
pub fn down_as<A: Act>(dev: &Device, v: View<'_, A>) -> Vec<f32> {
    A::widen(&dev.download(v).unwrap()).into_owned()
}

/// A tiny config: vocab 37, 12 wide, 2 layers, 3 heads.
pub fn tiny(prompt: PromptKind, rec: RecKind) -> ModelConfig {
    ModelConfig {
        vocab_size: 37,
        n_positions: 16,
        n_embd: 12,
        n_layer: 2,
        n_head: 3,
        layer_norm_epsilon: 1e-5,
        n_users: 4,
        n_items: 5,
        bos_id: 34,
        eos_id: 35,
        pad_id: 36,
        prompt,
        rec,
        rec_lambda: 0.5,
        mlp_hidden: 6,
        mlp_layers: 1,
        dropout: 0.0,
    }
}
