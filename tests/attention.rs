//! The fused causal attention kernels (`kernels/attention.cu`, launchers in
//! `pepler_cuda::kernels::attention`) against the CPU reference `pepler_cuda::ops::attention`, on
//! the emulated device: forward (out and the per-row log-sum-exp), backward (dqkv against the
//! reference's backward from the reference's probabilities), attention dropout on and off, padded
//! keys (including a query that sees no key at all), the KV-cache path bit for bit against the full
//! computation, bitwise determinism across runs and shuffled schedules, and launcher errors.
//! Shapes: head sizes 8, 16, 24, 40, 64, 128 (every kernel variant, channels not a multiple of 32),
//! odd L (1, 5, 27, 33: partial 16-row blocks and 32-key tiles), one L = 300 case per head size.
//! Every body is generic over the activation type (`f32`, `bf16`): the bf16 kernels get inputs
//! generated as f32 and rounded to bf16, and are checked against the f32 reference on those
//! (widened) inputs with out and dqkv rounded to bf16 (`Bf16` rows of `TOLERANCES`); lse is f32.
//! The tensor-core kernels (bf16, hd 64 and 128; [`Kernels`]: the forward alone, or forward and
//! backward, the launchers' default) are checked the same way with their own `attention_tc*` rows,
//! at odd L around their 64-row blocks and 32/16-row tiles, against the scalar backward, and bit
//! for bit under shuffled schedules.
//! GPU-only twins (`*_on_cuda`, ignored) run the same bodies on the CUDA device.

mod common;

use common::*;
use half::bf16;
use pepler_cuda::device::{Device, DeviceBuffer, EmuOptions, View, MAX_DYN_SMEM};
use pepler_cuda::kernels::attention::{self as ka, AttnBackwardKernel, AttnForwardKernel};
use pepler_cuda::ops::attention::{self as oa, AttnShape};
use pepler_cuda::ops::dropout::DropoutSite;
use pepler_cuda::precision::Act;

/// A value the kernels never write: the tail of every oversized output must keep it.
const SENTINEL: f32 = 123.0;
/// Elements past the end of every output buffer (the launchers slice views to the exact size).
const TAIL: usize = 7;

/// Uploads f32 values as `A` (rounded to nearest even for bf16).
fn up_as<A: Act>(dev: &Device, v: &[f32]) -> DeviceBuffer<A> {
    let mut a = vec![A::default(); v.len()];
    A::narrow_into(&mut a, v);
    dev.upload(&a).unwrap()
}

/// Downloads `A` values widened to f32 (exact).
fn down_as<A: Act>(dev: &Device, v: View<'_, A>) -> Vec<f32> {
    A::widen(&dev.download(v).unwrap()).into_owned()
}

/// The kernel families of one forward + backward run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Kernels {
    fwd: AttnForwardKernel,
    bwd: AttnBackwardKernel,
}

/// Scalar forward and backward (every head size and element type).
const SCALAR: Kernels = Kernels {
    fwd: AttnForwardKernel::Scalar,
    bwd: AttnBackwardKernel::Scalar,
};
/// The tensor-core forward, then the scalar backward.
const TC_FWD: Kernels = Kernels {
    fwd: AttnForwardKernel::TensorCore,
    bwd: AttnBackwardKernel::Scalar,
};
/// Tensor cores both ways: what the launchers run by default for bf16 at hd 64 and 128.
const TC: Kernels = Kernels {
    fwd: AttnForwardKernel::TensorCore,
    bwd: AttnBackwardKernel::TensorCore,
};

impl Kernels {
    /// The `TOLERANCES` rows of lse, out and dqkv for this pair.
    fn names(self) -> [&'static str; 3] {
        let (lse, out) = match self.fwd {
            AttnForwardKernel::Scalar => ("attention.lse", "attention.out"),
            AttnForwardKernel::TensorCore => ("attention_tc.lse", "attention_tc.out"),
        };
        let dqkv = match (self.fwd, self.bwd) {
            (_, AttnBackwardKernel::TensorCore) => "attention_tc_bwd.dqkv",
            (AttnForwardKernel::TensorCore, _) => "attention_tc.dqkv",
            _ => "attention.dqkv",
        };
        [lse, out, dqkv]
    }
}

/// One attention problem with its inputs.
struct Case {
    s: AttnShape,
    mask: Option<Vec<i32>>,
    dropout: Option<DropoutSite>,
    qkv: Vec<f32>,
    dout: Vec<f32>,
}

/// What the kernels (or the reference) produce for a [`Case`].
struct Outputs {
    out: Vec<f32>,
    lse: Vec<f32>,
    dqkv: Vec<f32>,
}

impl Case {
    /// `padded`: sequence 0 pads its first key (so its query 0 sees no key), every other sequence
    /// pads its last third (right padding, as PEPLER batches) and one key in the middle.
    fn new(
        b: usize,
        l: usize,
        nh: usize,
        hd: usize,
        padded: bool,
        dropout: bool,
        seed: u64,
    ) -> Case {
        let s = AttnShape {
            b,
            l,
            c: nh * hd,
            nh,
        };
        let mask = padded.then(|| {
            let mut m = vec![1i32; b * l];
            for bi in 0..b {
                let row = &mut m[bi * l..(bi + 1) * l];
                if bi == 0 {
                    row[0] = 0;
                } else {
                    row[l - l / 3..].fill(0);
                    row[l / 2] = 0;
                }
            }
            m
        });
        let dropout = dropout.then_some(DropoutSite {
            p: 0.25,
            seed: 42 + seed,
            step: 7,
            site: 3,
        });
        Case {
            s,
            mask,
            dropout,
            // [-2, 2): scores q.k/sqrt(hd) with a standard deviation of about 4/3, so the
            // softmax is far from uniform and the online max actually moves.
            qkv: rand_vec(b * l * 3 * s.c, seed, -2.0, 2.0),
            dout: rand_vec(b * l * s.c, seed + 1, -1.0, 1.0),
        }
    }

    /// The same case with `qkv` and `dout` rounded to what `A` holds: the inputs of an `A` run and
    /// of its reference (a no-op for f32).
    fn rounded<A: Act>(mut self) -> Case {
        A::round_slice(&mut self.qkv);
        A::round_slice(&mut self.dout);
        self
    }

    fn ctx(&self) -> String {
        format!(
            "b={} l={} nh={} hd={} mask={} dropout={}",
            self.s.b,
            self.s.l,
            self.s.nh,
            self.s.hd(),
            self.mask.is_some(),
            self.dropout.is_some()
        )
    }

    /// The f32 reference on this case's inputs, with the outputs an `A` kernel stores (out, dqkv)
    /// rounded to `A` (lse stays f32).
    fn reference<A: Act>(&self) -> Outputs {
        let s = self.s;
        let mut out = vec![0.0; s.b * s.l * s.c];
        let mut att = vec![0.0; s.b * s.nh * s.l * s.l];
        let mut lse = vec![0.0; s.b * s.nh * s.l];
        let mut dqkv = vec![0.0; s.b * s.l * 3 * s.c];
        let mask = self.mask.as_deref();
        oa::attention_forward(
            &mut out,
            &mut att,
            &self.qkv,
            mask,
            self.dropout.as_ref(),
            s,
        );
        oa::attention_row_lse(&mut lse, &self.qkv, mask, s);
        oa::attention_backward(
            &mut dqkv,
            &self.dout,
            &self.qkv,
            &att,
            self.dropout.as_ref(),
            s,
        );
        A::round_slice(&mut out);
        A::round_slice(&mut dqkv);
        Outputs { out, lse, dqkv }
    }

    /// Forward then backward (by the kernels `k`) on `dev` with activations stored as `A`, every
    /// output buffer oversized by [`TAIL`] sentinels and pre-filled with NaN (they are `=`: every
    /// element must be written). Returns the outputs widened to f32.
    fn run<A: Act>(&self, dev: &Device, k: Kernels) -> Outputs {
        let s = self.s;
        let (n_out, n_lse, n_qkv) = (s.b * s.l * s.c, s.b * s.nh * s.l, s.b * s.l * 3 * s.c);
        let with_tail = |n: usize| {
            let mut v = vec![f32::NAN; n + TAIL];
            v[n..].fill(SENTINEL);
            v
        };
        let qkv = up_as::<A>(dev, &self.qkv);
        let dout = up_as::<A>(dev, &self.dout);
        let mask = self.mask.as_ref().map(|m| dev.upload(m).unwrap());
        let mut out = up_as::<A>(dev, &with_tail(n_out));
        let mut lse = up(dev, &with_tail(n_lse));
        let mut dqkv = up_as::<A>(dev, &with_tail(n_qkv));
        let mut scratch = dev
            .alloc::<f32>(ka::attention_backward_scratch_len(s).unwrap())
            .unwrap();
        ka::attention_forward_using(
            dev,
            k.fwd,
            out.view_mut(),
            lse.view_mut(),
            qkv.view(),
            mask.as_ref().map(|m| m.view()),
            self.dropout,
            s,
        )
        .unwrap();
        ka::attention_backward_using(
            dev,
            k.bwd,
            dqkv.view_mut(),
            dout.view(),
            qkv.view(),
            out.view(),
            lse.view(),
            mask.as_ref().map(|m| m.view()),
            self.dropout,
            s,
            scratch.view_mut(),
        )
        .unwrap();
        let (out, lse, dqkv) = (
            down_as(dev, out.view()),
            down(dev, lse.view()),
            down_as(dev, dqkv.view()),
        );
        for (what, v, n) in [
            ("out", &out, n_out),
            ("lse", &lse, n_lse),
            ("dqkv", &dqkv, n_qkv),
        ] {
            assert!(
                v[n..].iter().all(|&x| x == SENTINEL),
                "{} {what}: written past its {n} elements",
                self.ctx()
            );
        }
        Outputs {
            out: out[..n_out].to_vec(),
            lse: lse[..n_lse].to_vec(),
            dqkv: dqkv[..n_qkv].to_vec(),
        }
    }

    /// Compare with the reference at precision `prec`, with the tolerances of the kernels `k`
    /// ([`Kernels::names`]). Rows with no visible key: lse exactly +inf, out exactly 0.
    fn check(&self, prec: Precision, k: Kernels, got: &Outputs, want: &Outputs) {
        let ctx = format!("{prec} {:?}/{:?} {}", k.fwd, k.bwd, self.ctx());
        let s = self.s;
        let (mut lse_g, mut lse_w) = (Vec::new(), Vec::new());
        for (i, (&g, &w)) in got.lse.iter().zip(&want.lse).enumerate() {
            if w == f32::INFINITY {
                assert_eq!(
                    g,
                    f32::INFINITY,
                    "{ctx}: lse[{i}] of a row with no visible key"
                );
                let (b, t) = (i / (s.nh * s.l), i % s.l);
                let h = i / s.l % s.nh;
                let o = &got.out[(b * s.l + t) * s.c + h * s.hd()..][..s.hd()];
                assert!(o.iter().all(|&x| x == 0.0), "{ctx}: out of an empty row");
            } else {
                lse_g.push(g);
                lse_w.push(w);
            }
        }
        let names = k.names();
        for (name, g, w) in [
            (names[0], &lse_g, &lse_w),
            (names[1], &got.out, &want.out),
            (names[2], &got.dqkv, &want.dqkv),
        ] {
            eprintln!(
                "{ctx} {name}: {:.3} of the tolerance",
                tolerance_share(prec, name, g, w)
            );
            assert_close_at(prec, name, &ctx, g, w);
        }
    }
}

/// The worst element's |actual - expected| / (atol + rtol |expected|) (printed: the margins).
fn tolerance_share(prec: Precision, name: &str, actual: &[f32], expected: &[f32]) -> f32 {
    let (atol, rtol) = tolerance_at(prec, name);
    actual
        .iter()
        .zip(expected)
        .map(|(&a, &e)| (a - e).abs() / (atol + rtol * e.abs()))
        .fold(0.0, f32::max)
}

/// The head sizes the tests cover: all three kernel variants, channels not a multiple of 32.
const HDS: &[usize] = &[8, 16, 24, 40, 64, 128];

/// The head sizes of [`HDS`] (with their index) that the kernels `k` take for `A`.
fn hds_for<A: Act>(k: Kernels) -> impl Iterator<Item = (usize, usize)> {
    HDS.iter().copied().enumerate().filter(move |&(_, hd)| {
        k == SCALAR || AttnForwardKernel::default_for::<A>(hd) == AttnForwardKernel::TensorCore
    })
}

/// Small cases for every head size the kernels `fwd` take: odd L around the 16-row block and
/// 32-key tile boundaries, with the mask and dropout switched on in turn.
fn small_cases_match_reference<A: Act>(dev: &Device, kern: Kernels) {
    for (k, hd) in hds_for::<A>(kern) {
        for (i, &(l, padded, dropout)) in [
            (1, false, false),
            (5, true, true),
            (27, true, false),
            (33, false, true),
        ]
        .iter()
        .enumerate()
        {
            let case = Case::new(2, l, 2, hd, padded, dropout, (10 * k + i) as u64).rounded::<A>();
            case.check(
                A::PRECISION,
                kern,
                &case.run::<A>(dev, kern),
                &case.reference::<A>(),
            );
        }
    }
}

/// One long sequence per head size (L = 300: ten key tiles, causal skipping, long online softmax).
fn long_cases_match_reference<A: Act>(dev: &Device, kern: Kernels) {
    for (k, hd) in hds_for::<A>(kern) {
        // alternate padding and dropout so that both meet a long sequence
        let case = Case::new(
            1,
            300,
            1 + k % 2,
            hd,
            k % 2 == 0,
            k % 3 != 2,
            100 + k as u64,
        )
        .rounded::<A>();
        case.check(
            A::PRECISION,
            kern,
            &case.run::<A>(dev, kern),
            &case.reference::<A>(),
        );
    }
}

/// Forward and backward twice on `dev` and once on `shuffled` (another block and thread
/// schedule): the same bits every time, and close to the reference. `case` holds `A`'s inputs.
fn backward_is_bitwise_deterministic<A: Act>(
    dev: &Device,
    shuffled: &Device,
    case: &Case,
    k: Kernels,
) {
    let want = case.reference::<A>();
    let first = case.run::<A>(dev, k);
    let second = case.run::<A>(dev, k);
    let third = case.run::<A>(shuffled, k);
    for (name, a, b, c) in [
        ("out", &first.out, &second.out, &third.out),
        ("lse", &first.lse, &second.lse, &third.lse),
        ("dqkv", &first.dqkv, &second.dqkv, &third.dqkv),
    ] {
        let prec = A::PRECISION;
        assert_bits_eq(&format!("{prec} attention {name} run 1 vs run 2"), a, b);
        assert_bits_eq(
            &format!("{prec} attention {name} plain vs shuffled schedule"),
            a,
            c,
        );
    }
    case.check(A::PRECISION, k, &first, &want);
}

/// Decoding: prefill `n0` positions, then one at a time up to `l`; every step's output must be the
/// full forward's rows bit for bit, the caches must hold k and v, and both must match the CPU
/// cached reference (outputs rounded to `A`). Activations and caches are `A`; both forwards use the
/// kernels `fwd`.
fn cached_matches_full<A: Act>(
    dev: &Device,
    fwd: AttnForwardKernel,
    (b, l, nh, hd, n0): (usize, usize, usize, usize, usize),
) {
    let case = Case::new(b, l, nh, hd, false, false, 500 + hd as u64).rounded::<A>();
    let s = case.s;
    let c = s.c;
    let lmax = l + 3;
    let prec = A::PRECISION;
    let full = {
        let qkv = up_as::<A>(dev, &case.qkv);
        let mut out = dev.alloc::<A>(b * l * c).unwrap();
        let mut lse = dev.alloc::<f32>(b * nh * l).unwrap();
        ka::attention_forward_using(
            dev,
            fwd,
            out.view_mut(),
            lse.view_mut(),
            qkv.view(),
            None,
            None,
            s,
        )
        .unwrap();
        down_as(dev, out.view())
    };
    let n_cache = b * nh * lmax * hd;
    let mut kc = up_as::<A>(dev, &vec![f32::NAN; n_cache]);
    let mut vc = up_as::<A>(dev, &vec![f32::NAN; n_cache]);
    let (mut kc_ref, mut vc_ref) = (vec![0.0; n_cache], vec![0.0; n_cache]);
    let mut start = 0;
    while start < l {
        let n = if start == 0 { n0 } else { 1 };
        let mut qkv_step = Vec::new();
        for bi in 0..b {
            qkv_step.extend_from_slice(
                &case.qkv[(bi * l + start) * 3 * c..(bi * l + start + n) * 3 * c],
            );
        }
        let mut out = up_as::<A>(dev, &vec![f32::NAN; b * n * c + TAIL]);
        let qkv_dev = up_as::<A>(dev, &qkv_step);
        ka::attention_cached_forward_using(
            dev,
            fwd,
            out.view_mut(),
            qkv_dev.view(),
            kc.view_mut(),
            vc.view_mut(),
            start,
            n,
            lmax,
            s,
        )
        .unwrap();
        let got = down_as(dev, out.view());
        assert!(
            got[b * n * c..].iter().all(|x| x.is_nan()),
            "cached out: written past its end"
        );
        let mut want = vec![0.0; b * n * c];
        oa::attention_cached_forward(
            &mut want,
            &qkv_step,
            &mut kc_ref,
            &mut vc_ref,
            start,
            n,
            lmax,
            s,
        );
        A::round_slice(&mut want);
        let ctx = format!("{prec} {fwd:?} cached b={b} hd={hd} start={start} n={n}");
        let name = match fwd {
            AttnForwardKernel::Scalar => "attention.out",
            AttnForwardKernel::TensorCore => "attention_tc.out",
        };
        assert_close_at(prec, name, &ctx, &got[..b * n * c], &want);
        for bi in 0..b {
            assert_bits_eq(
                &format!("{ctx}: cached vs full forward, sequence {bi}"),
                &got[bi * n * c..(bi + 1) * n * c],
                &full[(bi * l + start) * c..(bi * l + start + n) * c],
            );
        }
        start += n;
    }
    // the caches hold exactly the k and v rows (copies), and nothing past position l
    let (kc, vc) = (down_as(dev, kc.view()), down_as(dev, vc.view()));
    for bh in 0..b * nh {
        let rows = |cache: &[f32]| cache[bh * lmax * hd..][..l * hd].to_vec();
        assert_bits_eq("k_cache", &rows(&kc), &rows(&kc_ref));
        assert_bits_eq("v_cache", &rows(&vc), &rows(&vc_ref));
        assert!(kc[(bh * lmax + l) * hd..(bh + 1) * lmax * hd]
            .iter()
            .all(|x| x.is_nan()));
    }
}

// ------------------------------------------------------------------------------------------
// emulated device

use AttnForwardKernel::{Scalar, TensorCore};

#[test]
fn attention_matches_reference_for_every_head_size_small_l() {
    small_cases_match_reference::<f32>(&emu(), SCALAR);
}

#[test]
fn attention_bf16_matches_reference_for_every_head_size_small_l() {
    small_cases_match_reference::<bf16>(&emu(), SCALAR);
}

#[test]
fn attention_tc_bf16_matches_reference_small_l() {
    small_cases_match_reference::<bf16>(&emu(), TC);
}

/// The tensor-core forward and backward at odd L around their tiles (64-row blocks; 32-key/query
/// tiles at hd 64, 16 at hd 128): 1, 17, 33, 70 (a partial second block), 130 (three blocks),
/// both head sizes, each with two of the four mask/dropout combinations (all four over the L).
fn tc_odd_l_cases_match_reference(dev: &Device) {
    for (i, l) in [1, 17, 33, 70, 130].into_iter().enumerate() {
        for (k, hd) in [64, 128].into_iter().enumerate() {
            let combos = if i % 2 == 0 {
                [(false, false), (true, true)]
            } else {
                [(true, false), (false, true)]
            };
            for (m, (padded, dropout)) in combos.into_iter().enumerate() {
                let seed = (200 + 10 * i + 2 * k + m) as u64;
                let case = Case::new(2, l, 2, hd, padded, dropout, seed).rounded::<bf16>();
                case.check(
                    Bf16,
                    TC,
                    &case.run::<bf16>(dev, TC),
                    &case.reference::<bf16>(),
                );
            }
        }
    }
}

#[test]
fn attention_tc_bf16_matches_reference_at_odd_l() {
    tc_odd_l_cases_match_reference(&emu());
}

/// The tensor-core and the scalar backward after the same (tensor-core) forward: both close to the
/// reference, within `attention_tc_bwd.dqkv` of each other, and not the same bits (the tensor-core
/// kernels round P r and dS to bf16).
fn tc_backward_agrees_with_scalar_backward(dev: &Device) {
    for (i, (b, l, hd)) in [(2, 33, 64), (2, 70, 128), (1, 130, 64)]
        .into_iter()
        .enumerate()
    {
        let case = Case::new(b, l, 2, hd, true, true, 300 + i as u64).rounded::<bf16>();
        let want = case.reference::<bf16>();
        let (tc, scalar) = (case.run::<bf16>(dev, TC), case.run::<bf16>(dev, TC_FWD));
        let ctx = case.ctx();
        assert_bits_eq(
            &format!("{ctx}: out, the same forward"),
            &tc.out,
            &scalar.out,
        );
        case.check(Bf16, TC, &tc, &want);
        case.check(Bf16, TC_FWD, &scalar, &want);
        eprintln!(
            "{ctx} tensor-core vs scalar dqkv: {:.3} of attention_tc_bwd.dqkv",
            tolerance_share(Bf16, "attention_tc_bwd.dqkv", &tc.dqkv, &scalar.dqkv)
        );
        assert_close_at(
            Bf16,
            "attention_tc_bwd.dqkv",
            &format!("{ctx}: tensor-core vs scalar backward"),
            &tc.dqkv,
            &scalar.dqkv,
        );
        assert!(
            tc.dqkv.iter().zip(&scalar.dqkv).any(|(a, b)| a != b),
            "{ctx}: the tensor-core and scalar backward should round differently somewhere"
        );
    }
}

#[test]
fn attention_tc_backward_agrees_with_the_scalar_backward() {
    tc_backward_agrees_with_scalar_backward(&emu());
}

#[test]
fn attention_matches_reference_at_l300() {
    long_cases_match_reference::<f32>(&emu(), SCALAR);
}

#[test]
fn attention_bf16_matches_reference_at_l300() {
    long_cases_match_reference::<bf16>(&emu(), SCALAR);
}

#[test]
fn attention_tc_bf16_matches_reference_at_l300() {
    long_cases_match_reference::<bf16>(&emu(), TC);
}

/// The emulated device in shuffle mode: random block order, and a random runnable thread picked
/// at every barrier and warp operation.
fn emu_shuffled(seed: u64) -> Device {
    Device::emu_with(EmuOptions {
        shuffle: Some(Some(seed)),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn attention_is_bitwise_deterministic_across_runs_and_schedules() {
    // 70 positions: three query/key tiles; padded keys and dropout on; hd 40 (partial lanes).
    let case = Case::new(2, 70, 2, 40, true, true, 77);
    backward_is_bitwise_deterministic::<f32>(&emu(), &emu_shuffled(4242), &case, SCALAR);
}

#[test]
fn attention_bf16_is_bitwise_deterministic_across_runs_and_schedules() {
    let case = Case::new(2, 70, 2, 40, true, true, 77).rounded::<bf16>();
    backward_is_bitwise_deterministic::<bf16>(&emu(), &emu_shuffled(4243), &case, SCALAR);
}

#[test]
fn attention_tc_bf16_is_bitwise_deterministic_across_runs_and_schedules() {
    // two 64-row query blocks and three key tiles; padded keys and dropout on
    let case = Case::new(2, 70, 2, 64, true, true, 79).rounded::<bf16>();
    backward_is_bitwise_deterministic::<bf16>(&emu(), &emu_shuffled(4244), &case, TC);
    // hd 128 (16-row tiles in the backward): three key blocks, the last partial
    let case = Case::new(1, 130, 2, 128, true, true, 81).rounded::<bf16>();
    backward_is_bitwise_deterministic::<bf16>(&emu(), &emu_shuffled(4245), &case, TC);
}

#[test]
fn attention_defaults_to_tensor_cores_for_bf16_at_hd64_and_hd128_both_ways() {
    for hd in 1..=ka::ATTN_MAX_HD {
        let tc = matches!(hd, 64 | 128);
        assert_eq!(
            AttnForwardKernel::default_for::<f32>(hd),
            Scalar,
            "f32 hd={hd}"
        );
        assert_eq!(
            AttnForwardKernel::default_for::<bf16>(hd) == TensorCore,
            tc,
            "bf16 hd={hd}"
        );
        assert_eq!(
            AttnBackwardKernel::default_for::<f32>(hd),
            AttnBackwardKernel::Scalar,
            "backward f32 hd={hd}"
        );
        assert_eq!(
            AttnBackwardKernel::default_for::<bf16>(hd) == AttnBackwardKernel::TensorCore,
            tc,
            "backward bf16 hd={hd}"
        );
    }
    // the plain launcher runs exactly the tensor-core kernel's bits
    let dev = emu();
    let case = Case::new(1, 40, 2, 64, true, false, 80).rounded::<bf16>();
    let s = case.s;
    let qkv = up_as::<bf16>(&dev, &case.qkv);
    let mask = dev.upload(case.mask.as_deref().unwrap()).unwrap();
    let forward = |which: Option<AttnForwardKernel>| {
        let mut out = dev.alloc::<bf16>(s.b * s.l * s.c).unwrap();
        let mut lse = dev.alloc::<f32>(s.b * s.nh * s.l).unwrap();
        let (o, l, q, m) = (
            out.view_mut(),
            lse.view_mut(),
            qkv.view(),
            Some(mask.view()),
        );
        match which {
            None => ka::attention_forward(&dev, o, l, q, m, None, s),
            Some(w) => ka::attention_forward_using(&dev, w, o, l, q, m, None, s),
        }
        .unwrap();
        (down_as(&dev, out.view()), down(&dev, lse.view()))
    };
    let (default, tc, scalar) = (
        forward(None),
        forward(Some(TensorCore)),
        forward(Some(Scalar)),
    );
    assert_bits_eq("default vs tensor-core out", &default.0, &tc.0);
    assert_bits_eq("default vs tensor-core lse", &default.1, &tc.1);
    assert!(
        default.0.iter().zip(&scalar.0).any(|(a, b)| a != b),
        "the tensor-core and scalar kernels should round P differently somewhere"
    );
    // and the plain backward launcher exactly the tensor-core backward's
    let (out, lse) = (up_as::<bf16>(&dev, &default.0), up(&dev, &default.1));
    let dout = up_as::<bf16>(&dev, &case.dout);
    let backward = |which: Option<AttnBackwardKernel>| {
        let mut dqkv = dev.alloc::<bf16>(s.b * s.l * 3 * s.c).unwrap();
        let mut scratch = dev
            .alloc::<f32>(ka::attention_backward_scratch_len(s).unwrap())
            .unwrap();
        let (d, g, q, o, l, m, sc) = (
            dqkv.view_mut(),
            dout.view(),
            qkv.view(),
            out.view(),
            lse.view(),
            Some(mask.view()),
            scratch.view_mut(),
        );
        match which {
            None => ka::attention_backward(&dev, d, g, q, o, l, m, None, s, sc),
            Some(w) => ka::attention_backward_using(&dev, w, d, g, q, o, l, m, None, s, sc),
        }
        .unwrap();
        down_as(&dev, dqkv.view())
    };
    let (default, tc, scalar) = (
        backward(None),
        backward(Some(AttnBackwardKernel::TensorCore)),
        backward(Some(AttnBackwardKernel::Scalar)),
    );
    assert_bits_eq("default vs tensor-core dqkv", &default, &tc);
    assert!(
        default.iter().zip(&scalar).any(|(a, b)| a != b),
        "the tensor-core and scalar backward should round P r and dS differently somewhere"
    );
}

/// Prefill and decode shapes of the cached tests (b, l, nh, hd, prefill).
const CACHED_CASES: &[(usize, usize, usize, usize, usize)] = &[
    // prefill 20 (more than one 16-row block, R = 4), decode to 37 (past one 32-key tile)
    (2, 37, 2, 8, 20),
    (2, 37, 2, 64, 20),
    // hd 128 uses 8-row blocks: prefill 9
    (1, 35, 2, 128, 9),
];

/// The tensor-core kernels' cached cases: hd 64 and 128 of [`CACHED_CASES`], and a prefill of two
/// 64-row query blocks.
const CACHED_TC_CASES: &[(usize, usize, usize, usize, usize)] =
    &[(2, 37, 2, 64, 20), (1, 35, 2, 128, 9), (1, 70, 1, 64, 66)];

#[test]
fn attention_cached_forward_reproduces_the_full_forward_bits() {
    let dev = emu();
    for &case in CACHED_CASES {
        cached_matches_full::<f32>(&dev, Scalar, case);
    }
}

#[test]
fn attention_bf16_cached_forward_reproduces_the_full_forward_bits() {
    let dev = emu();
    for &case in CACHED_CASES {
        cached_matches_full::<bf16>(&dev, Scalar, case);
    }
}

#[test]
fn attention_tc_bf16_cached_forward_reproduces_the_full_forward_bits() {
    let dev = emu();
    for &case in CACHED_TC_CASES {
        cached_matches_full::<bf16>(&dev, TensorCore, case);
    }
}

#[test]
fn attention_shared_memory_fits_48_kib_for_every_head_size() {
    // the launch would fail on a GPU (and the emulator) otherwise; hd 128 is the tightest
    for hd in 1..=ka::ATTN_MAX_HD {
        for which in [
            ka::AttnKernel::Forward,
            ka::AttnKernel::BackwardDq,
            ka::AttnKernel::BackwardDkv,
        ] {
            let bytes = ka::attention_smem_bytes(which, hd).unwrap();
            assert!(bytes <= MAX_DYN_SMEM, "{which:?} hd={hd}: {bytes} bytes");
        }
    }
    assert!(ka::attention_smem_bytes(ka::AttnKernel::Forward, 129).is_err());
    for hd in [64, 128] {
        let bytes = ka::attention_tc_smem_bytes(hd).unwrap();
        assert!(bytes <= MAX_DYN_SMEM, "tensor-core hd={hd}: {bytes} bytes");
        for which in [ka::AttnKernel::BackwardDq, ka::AttnKernel::BackwardDkv] {
            let bytes = ka::attention_tc_backward_smem_bytes(which, hd).unwrap();
            assert!(
                bytes <= MAX_DYN_SMEM,
                "tensor-core {which:?} hd={hd}: {bytes} bytes"
            );
        }
    }
    assert!(ka::attention_tc_smem_bytes(96).is_err());
    assert!(ka::attention_tc_backward_smem_bytes(ka::AttnKernel::BackwardDkv, 96).is_err());
}

#[test]
fn attention_launchers_reject_bad_sizes() {
    let dev = emu();
    let s = AttnShape {
        b: 2,
        l: 5,
        c: 16,
        nh: 2,
    };
    let qkv = dev.alloc::<f32>(2 * 5 * 48).unwrap();
    let mut out = dev.alloc::<f32>(2 * 5 * 16).unwrap();
    let mut lse = dev.alloc::<f32>(2 * 2 * 5).unwrap();
    let mask = dev.upload(&[1i32; 9]).unwrap();
    let err = |r: anyhow::Result<()>| r.unwrap_err().to_string();

    let e = err(ka::attention_forward(
        &dev,
        out.view_mut(),
        lse.view_mut(),
        qkv.slice(..479),
        None,
        None,
        s,
    ));
    assert!(
        e.contains("attention_forward: qkv has 479 elements, needs at least 480"),
        "{e}"
    );
    let e = err(ka::attention_forward(
        &dev,
        out.view_mut(),
        lse.slice_mut(..19),
        qkv.view(),
        None,
        None,
        s,
    ));
    assert!(e.contains("lse has 19 elements, needs at least 20"), "{e}");
    let e = err(ka::attention_forward(
        &dev,
        out.view_mut(),
        lse.view_mut(),
        qkv.view(),
        Some(mask.view()),
        None,
        s,
    ));
    assert!(
        e.contains("key_mask has 9 elements, needs at least 10"),
        "{e}"
    );
    let bad_p = DropoutSite {
        p: 1.0,
        seed: 1,
        step: 1,
        site: 1,
    };
    let e = err(ka::attention_forward(
        &dev,
        out.view_mut(),
        lse.view_mut(),
        qkv.view(),
        None,
        Some(bad_p),
        s,
    ));
    assert!(e.contains("dropout p=1 must be in [0, 1)"), "{e}");
    let e = err(ka::attention_forward(
        &dev,
        out.view_mut(),
        lse.view_mut(),
        qkv.view(),
        None,
        None,
        AttnShape { c: 15, ..s },
    ));
    assert!(
        e.contains("c=15 must be a positive multiple of nh=2"),
        "{e}"
    );
    let big = AttnShape {
        b: 1,
        l: 1,
        c: 2 * 129,
        nh: 2,
    };
    let e = err(ka::attention_forward(
        &dev,
        out.view_mut(),
        lse.view_mut(),
        qkv.view(),
        None,
        None,
        big,
    ));
    assert!(e.contains("head size 129 is not supported"), "{e}");

    let mut dqkv = dev.alloc::<f32>(2 * 5 * 48).unwrap();
    let mut scratch = dev.alloc::<f32>(19).unwrap();
    assert_eq!(ka::attention_backward_scratch_len(s).unwrap(), 20);
    let e = err(ka::attention_backward(
        &dev,
        dqkv.view_mut(),
        out.view(),
        qkv.view(),
        out.view(),
        lse.view(),
        None,
        None,
        s,
        scratch.view_mut(),
    ));
    assert!(
        e.contains("attention_backward: scratch has 19 elements, needs at least 20"),
        "{e}"
    );

    let mut kc = dev.alloc::<f32>(2 * 2 * 6 * 8).unwrap();
    let mut vc = dev.alloc::<f32>(2 * 2 * 6 * 8).unwrap();
    let e = err(ka::attention_cached_forward(
        &dev,
        out.view_mut(),
        qkv.view(),
        kc.view_mut(),
        vc.view_mut(),
        4,
        3,
        6,
        s,
    ));
    assert!(e.contains("positions 4+3 exceed the cache length 6"), "{e}");
    let e = err(ka::attention_cached_forward(
        &dev,
        out.view_mut(),
        qkv.view(),
        kc.view_mut(),
        vc.slice_mut(..10),
        0,
        1,
        6,
        s,
    ));
    assert!(
        e.contains("v_cache has 10 elements, needs at least 192"),
        "{e}"
    );
    // zero-sized work is a no-op
    ka::attention_forward(
        &dev,
        out.view_mut(),
        lse.view_mut(),
        qkv.view(),
        None,
        None,
        AttnShape { b: 0, ..s },
    )
    .unwrap();
    // the bf16 launchers check the same sizes
    let qkv16 = dev.alloc::<bf16>(479).unwrap();
    let mut out16 = dev.alloc::<bf16>(2 * 5 * 16).unwrap();
    let mut kc16 = dev.alloc::<bf16>(2 * 2 * 6 * 8).unwrap();
    let mut vc16 = dev.alloc::<bf16>(2 * 2 * 6 * 8).unwrap();
    let e = err(ka::attention_forward(
        &dev,
        out16.view_mut(),
        lse.view_mut(),
        qkv16.view(),
        None,
        None,
        s,
    ));
    assert!(
        e.contains("attention_forward: qkv has 479 elements, needs at least 480"),
        "{e}"
    );
    // the tensor-core kernels exist for bf16 with hd 64 or 128 only
    let s64 = AttnShape {
        b: 1,
        l: 2,
        c: 64,
        nh: 1,
    };
    let e = err(ka::attention_forward_using(
        &dev,
        TensorCore,
        out.view_mut(),
        lse.view_mut(),
        qkv.view(),
        None,
        None,
        s64,
    ));
    assert!(
        e.contains("attention_forward: the tensor-core kernels take bf16 activations, not fp32"),
        "{e}"
    );
    let e = err(ka::attention_cached_forward_using(
        &dev,
        TensorCore,
        out16.view_mut(),
        qkv16.view(),
        kc16.view_mut(),
        vc16.view_mut(),
        0,
        1,
        6,
        s,
    ));
    assert!(
        e.contains("attention_cached_forward: attention tensor-core forward: head size 8 is not supported (64 or 128)"),
        "{e}"
    );
    let e = err(ka::attention_backward_using(
        &dev,
        AttnBackwardKernel::TensorCore,
        dqkv.view_mut(),
        out.view(),
        qkv.view(),
        out.view(),
        lse.view(),
        None,
        None,
        s64,
        scratch.view_mut(),
    ));
    assert!(
        e.contains(
            "attention_backward_dq: the tensor-core kernels take bf16 activations, not fp32"
        ),
        "{e}"
    );
    let s1 = AttnShape { b: 1, ..s };
    let mut dqkv16 = dev.alloc::<bf16>(5 * 48).unwrap();
    let e = err(ka::attention_backward_using(
        &dev,
        AttnBackwardKernel::TensorCore,
        dqkv16.view_mut(),
        out16.view(),
        qkv16.view(),
        out16.view(),
        lse.view(),
        None,
        None,
        s1,
        scratch.view_mut(),
    ));
    assert!(
        e.contains("attention_backward_dq: attention tensor-core backward: head size 8 is not supported (64 or 128)"),
        "{e}"
    );
}

// ------------------------------------------------------------------------------------------
// GPU-only: the same bodies on the CUDA device

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_matches_reference_for_every_head_size_on_cuda() {
    let dev = gpu();
    small_cases_match_reference::<f32>(&dev, SCALAR);
    long_cases_match_reference::<f32>(&dev, SCALAR);
    pepler_shape_matches_reference::<f32>(&dev, SCALAR);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_bf16_matches_reference_for_every_head_size_on_cuda() {
    let dev = gpu();
    small_cases_match_reference::<bf16>(&dev, SCALAR);
    long_cases_match_reference::<bf16>(&dev, SCALAR);
    pepler_shape_matches_reference::<bf16>(&dev, SCALAR);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_tc_bf16_matches_reference_on_cuda() {
    let dev = gpu();
    small_cases_match_reference::<bf16>(&dev, TC);
    long_cases_match_reference::<bf16>(&dev, TC);
    pepler_shape_matches_reference::<bf16>(&dev, TC);
    pepler_shape_matches_reference::<bf16>(&dev, TC_FWD);
    tc_odd_l_cases_match_reference(&dev);
    tc_backward_agrees_with_scalar_backward(&dev);
}

/// PEPLER's shape: GPT-2 small heads, a padded batch, dropout on.
fn pepler_shape_matches_reference<A: Act>(dev: &Device, k: Kernels) {
    let case = Case::new(16, 26, 12, 64, true, true, 9).rounded::<A>();
    case.check(
        A::PRECISION,
        k,
        &case.run::<A>(dev, k),
        &case.reference::<A>(),
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_is_bitwise_deterministic_on_cuda() {
    let dev = gpu();
    // on a GPU the second device handle stands in for a different schedule: blocks run
    // concurrently in whatever order the hardware picks
    let case = Case::new(8, 300, 4, 64, true, true, 78);
    backward_is_bitwise_deterministic::<f32>(&dev, &gpu(), &case, SCALAR);
    let case = case.rounded::<bf16>();
    backward_is_bitwise_deterministic::<bf16>(&dev, &gpu(), &case, SCALAR);
    backward_is_bitwise_deterministic::<bf16>(&dev, &gpu(), &case, TC_FWD);
    backward_is_bitwise_deterministic::<bf16>(&dev, &gpu(), &case, TC);
    let case = Case::new(4, 300, 4, 128, true, true, 82).rounded::<bf16>();
    backward_is_bitwise_deterministic::<bf16>(&dev, &gpu(), &case, TC);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn attention_cached_forward_reproduces_the_full_forward_bits_on_cuda() {
    let dev = gpu();
    for case in [(2, 37, 2, 8, 20), (4, 70, 12, 64, 20), (1, 35, 2, 128, 9)] {
        cached_matches_full::<f32>(&dev, Scalar, case);
        cached_matches_full::<bf16>(&dev, Scalar, case);
        if case.3 != 8 {
            cached_matches_full::<bf16>(&dev, TensorCore, case);
        }
    }
}
