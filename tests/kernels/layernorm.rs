//! `layernorm_forward` / `layernorm_backward` / `residual_layernorm_forward` (kernels/layernorm.cu)
//! against `ops::layernorm`, for f32 and bf16 activations (one body, generic over `A: Act`): the
//! activations (x, out, dout, dinp, the residual stream) are `A`, the rest f32; the bf16 reference
//! is the f32 one on the rounded inputs with its activation outputs rounded.

use super::{emu_shuffled, COLS, EPS, ROWS};
use crate::common::*;
use half::bf16;
use pepler_cuda::device::{Device, DeviceBuffer, EmuOptions};
use pepler_cuda::kernels::layernorm;
use pepler_cuda::ops;
use pepler_cuda::precision::{Act, Precision};

struct LnCase {
    rows: usize,
    c: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dout: Vec<f32>,
    dinp0: Vec<f32>,
    dw0: Vec<f32>,
    db0: Vec<f32>,
}

impl LnCase {
    /// The activations (x, dout, dinp0) hold values of `A`.
    fn new<A: Act>(rows: usize, c: usize, seed: u64) -> LnCase {
        LnCase {
            rows,
            c,
            x: rounded::<A>(rand_vec(rows * c, seed, -3.0, 5.0)),
            w: rand_vec(c, seed + 1, 0.5, 1.5),
            b: rand_vec(c, seed + 2, -0.5, 0.5),
            dout: rounded::<A>(rand_vec(rows * c, seed + 3, -1.0, 1.0)),
            // non-zero starting gradients: the backward accumulates (+=)
            dinp0: rounded::<A>(rand_vec(rows * c, seed + 4, -0.1, 0.1)),
            dw0: rand_vec(c, seed + 5, -0.1, 0.1),
            db0: rand_vec(c, seed + 6, -0.1, 0.1),
        }
    }

    /// CPU reference: (out, mean, rstd, dinp, dweight, dbias), out and dinp rounded to `A`.
    fn reference<A: Act>(&self) -> [Vec<f32>; 6] {
        let (rows, c) = (self.rows, self.c);
        let (mut out, mut mean, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        ops::layernorm::layernorm_forward(
            &mut out, &mut mean, &mut rstd, &self.x, &self.w, &self.b, rows, c, EPS,
        );
        let (mut dinp, mut dw, mut db) = (self.dinp0.clone(), self.dw0.clone(), self.db0.clone());
        ops::layernorm::layernorm_backward(
            &mut dinp, &mut dw, &mut db, &self.dout, &self.x, &self.w, &mean, &rstd, rows, c,
        );
        A::round_slice(&mut out);
        A::round_slice(&mut dinp);
        [out, mean, rstd, dinp, dw, db]
    }

    /// Forward then backward on `dev`, backward from the CPU's mean/rstd so the two passes are
    /// checked independently: (out, mean, rstd, dinp, dweight, dbias).
    fn run<A: Act>(&self, dev: &Device, cpu_mean: &[f32], cpu_rstd: &[f32]) -> [Vec<f32>; 6] {
        self.run_grads::<A>(dev, cpu_mean, cpu_rstd, (true, true), 0)
    }

    /// [`LnCase::run`] requesting only the weight gradients in `grads` (dweight, dbias); the others
    /// come back as their initial values. The activations (x, out, dout, dinp) are views `off`
    /// elements into their buffers (see [`up_at`]).
    fn run_grads<A: Act>(
        &self,
        dev: &Device,
        cpu_mean: &[f32],
        cpu_rstd: &[f32],
        grads: (bool, bool),
        off: usize,
    ) -> [Vec<f32>; 6] {
        let (rows, c) = (self.rows, self.c);
        let (x, w, b) = (
            up_at::<A>(dev, &self.x, off),
            up(dev, &self.w),
            up(dev, &self.b),
        );
        let mut out = up_at::<A>(dev, &vec![f32::NAN; rows * c], off);
        let mut mean = dev.upload(&vec![f32::NAN; rows]).unwrap();
        let mut rstd = dev.upload(&vec![f32::NAN; rows]).unwrap();
        layernorm::layernorm_forward(
            dev,
            out.slice_mut(off..),
            Some(mean.view_mut()),
            Some(rstd.view_mut()),
            x.slice(off..),
            w.view(),
            b.view(),
            rows,
            c,
            EPS,
        )
        .unwrap();

        let (m, r) = (up(dev, cpu_mean), up(dev, cpu_rstd));
        let mut dinp = up_at::<A>(dev, &self.dinp0, off);
        let mut dw = up(dev, &self.dw0);
        let mut db = up(dev, &self.db0);
        let dout = up_at::<A>(dev, &self.dout, off);
        // garbage scratch: the kernel must not depend on its contents
        let mut scratch = dev
            .upload(&vec![
                f32::NAN;
                layernorm::layernorm_backward_scratch_len(rows, c)
                    .unwrap()
            ])
            .unwrap();
        layernorm::layernorm_backward(
            dev,
            dinp.slice_mut(off..),
            grads.0.then(|| dw.view_mut()),
            grads.1.then(|| db.view_mut()),
            scratch.view_mut(),
            dout.slice(off..),
            x.slice(off..),
            w.view(),
            m.view(),
            r.view(),
            rows,
            c,
        )
        .unwrap();
        [
            down_as(dev, out.slice(off..)),
            down(dev, mean.view()),
            down(dev, rstd.view()),
            down_as(dev, dinp.slice(off..)),
            down(dev, dw.view()),
            down(dev, db.view()),
        ]
    }
}

/// `v` as `A` behind `off` NaN elements: `buf.slice(off..)` holds `v` at an offset of `off`
/// elements from the (256-byte aligned) allocation, so an odd `off` makes every bf16 row of a
/// c % 8 == 0 tensor miss 16-byte alignment (the kernels' scalar accesses) and `off` = 0 or 8 keeps
/// it (16-byte vector accesses). A kernel reading the padding would produce NaN.
fn up_at<A: Act>(dev: &Device, v: &[f32], off: usize) -> DeviceBuffer<A> {
    let mut padded = vec![f32::NAN; off];
    padded.extend_from_slice(v);
    up_as::<A>(dev, &padded)
}

const LN_NAMES: [&str; 6] = [
    "layernorm.out",
    "layernorm.mean",
    "layernorm.rstd",
    "layernorm.dinp",
    "layernorm.dweight",
    "layernorm.dbias",
];

fn layernorm_matches_reference<A: Act>(dev: &Device) {
    for &rows in ROWS {
        for &c in COLS {
            let case = LnCase::new::<A>(rows, c, 10 + rows as u64 * 1000 + c as u64);
            let want = case.reference::<A>();
            let got = case.run::<A>(dev, &want[1], &want[2]);
            for i in 0..6 {
                assert_close_at(
                    A::PRECISION,
                    LN_NAMES[i],
                    &format!("rows={rows} c={c}"),
                    &got[i],
                    &want[i],
                );
            }
        }
    }
}

#[test]
fn layernorm_forward_and_backward_match_cpu_on_emu() {
    layernorm_matches_reference::<f32>(&emu());
}

#[test]
fn layernorm_forward_and_backward_bf16_match_cpu_on_emu() {
    layernorm_matches_reference::<bf16>(&emu());
}

#[test]
fn layernorm_forward_without_mean_rstd_writes_only_out() {
    let dev = emu();
    let case = LnCase::new::<f32>(9, 45, 77);
    let want = case.reference::<f32>();
    let (x, w, b) = (up(&dev, &case.x), up(&dev, &case.w), up(&dev, &case.b));
    let mut out = dev.alloc::<f32>(9 * 45).unwrap();
    layernorm::layernorm_forward(
        &dev,
        out.view_mut(),
        None,
        None,
        x.view(),
        w.view(),
        b.view(),
        9,
        45,
        EPS,
    )
    .unwrap();
    assert_close(
        "layernorm.out",
        "no mean/rstd",
        &down(&dev, out.view()),
        &want[0],
    );
}

fn layernorm_backward_is_bitwise_deterministic<A: Act>() {
    // Pass 1 strides over rows and pass 2 sums 256 partials: any order dependence would show.
    // c = 3073: 2 warps' accumulators (2*2*3073 floats) exceed 48 KiB, so one warp per block;
    // 260 rows > 256 blocks, so blocks 0..3 take a second row.
    let (rows, c) = (260, 3073);
    let (_, _, blocks) = layernorm::layernorm_backward_config(rows, c).unwrap();
    assert_eq!(blocks, 256);
    assert_eq!(
        layernorm::layernorm_backward_config(rows, c)
            .unwrap()
            .0
            .block,
        (32, 1, 1)
    );
    let case = LnCase::new::<A>(rows, c, 99);
    let want = case.reference::<A>();
    let plain = emu();
    let first = case.run::<A>(&plain, &want[1], &want[2]);
    let second = case.run::<A>(&plain, &want[1], &want[2]);
    let shuffled = Device::emu_with(EmuOptions {
        shuffle: Some(Some(12345)),
        ..Default::default()
    })
    .unwrap();
    let third = case.run::<A>(&shuffled, &want[1], &want[2]);
    for i in 3..6 {
        assert_bits_eq(
            &format!("{} run 1 vs run 2", LN_NAMES[i]),
            &first[i],
            &second[i],
        );
        assert_bits_eq(
            &format!("{} plain vs shuffled schedule", LN_NAMES[i]),
            &first[i],
            &third[i],
        );
        assert_close_at(
            A::PRECISION,
            LN_NAMES[i],
            "rows=260 c=3073",
            &first[i],
            &want[i],
        );
    }
}

#[test]
fn layernorm_backward_is_bitwise_deterministic_across_runs_and_schedules() {
    layernorm_backward_is_bitwise_deterministic::<f32>();
}

#[test]
fn layernorm_backward_bf16_is_bitwise_deterministic_across_runs_and_schedules() {
    layernorm_backward_is_bitwise_deterministic::<bf16>();
}

fn layernorm_backward_skips_absent_weight_gradients(dev: &Device) {
    let case = LnCase::new::<f32>(33, 771, 61);
    let want = case.reference::<f32>();
    for grads in [(false, false), (true, false), (false, true)] {
        let got = case.run_grads::<f32>(dev, &want[1], &want[2], grads, 0);
        let ctx = format!("grads={grads:?}");
        assert_close("layernorm.dinp", &ctx, &got[3], &want[3]);
        if grads.0 {
            assert_close("layernorm.dweight", &ctx, &got[4], &want[4]);
        } else {
            assert_bits_eq(&format!("dweight untouched {ctx}"), &got[4], &case.dw0);
        }
        if grads.1 {
            assert_close("layernorm.dbias", &ctx, &got[5], &want[5]);
        } else {
            assert_bits_eq(&format!("dbias untouched {ctx}"), &got[5], &case.db0);
        }
    }
    // without weight gradients the scratch is not needed at all
    let (rows, c) = (case.rows, case.c);
    let (x, w, m, r) = (
        up(dev, &case.x),
        up(dev, &case.w),
        up(dev, &want[1]),
        up(dev, &want[2]),
    );
    let (mut dinp, dout) = (up(dev, &case.dinp0), up(dev, &case.dout));
    let mut empty = dev.alloc::<f32>(0).unwrap();
    layernorm::layernorm_backward(
        dev,
        dinp.view_mut(),
        None,
        None,
        empty.view_mut(),
        dout.view(),
        x.view(),
        w.view(),
        m.view(),
        r.view(),
        rows,
        c,
    )
    .unwrap();
    assert_close(
        "layernorm.dinp",
        "no scratch",
        &down(dev, dinp.view()),
        &want[3],
    );
}

/// In bf16 the fused kernel normalises the residual stream as stored (rounded), so its reference
/// is the unfused bf16 path: the residual reference rounded, then the LayerNorm reference of that,
/// its output rounded. For f32 that is exactly `ops::layernorm::residual_layernorm_forward` (which
/// the f32 case calls, the fast/slow pair of the fused kernel). `a` is `case.x`.
/// Returns (resid, out, mean, rstd).
fn residual_layernorm_reference<A: Act>(case: &LnCase, b: &[f32]) -> [Vec<f32>; 4] {
    let (rows, c) = (case.rows, case.c);
    let n = rows * c;
    let (mut resid, mut out) = (vec![0.0; n], vec![0.0; n]);
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    if A::PRECISION == Precision::Fp32 {
        ops::layernorm::residual_layernorm_forward(
            &mut resid, &mut out, &mut mean, &mut rstd, &case.x, b, &case.w, &case.b, rows, c, EPS,
        );
    } else {
        ops::residual::residual_forward(&mut resid, &case.x, b);
        A::round_slice(&mut resid);
        ops::layernorm::layernorm_forward(
            &mut out, &mut mean, &mut rstd, &resid, &case.w, &case.b, rows, c, EPS,
        );
        A::round_slice(&mut out);
    }
    [resid, out, mean, rstd]
}

/// The fused kernel on `dev` with its activations (a, b, resid, out) `off` elements into their
/// buffers (see [`up_at`]): (resid, out, mean, rstd).
fn residual_layernorm_run<A: Act>(
    dev: &Device,
    case: &LnCase,
    b: &[f32],
    off: usize,
) -> [Vec<f32>; 4] {
    let (rows, c) = (case.rows, case.c);
    let n = rows * c;
    let (da, db) = (up_at::<A>(dev, &case.x, off), up_at::<A>(dev, b, off));
    let (dw, dbias) = (up(dev, &case.w), up(dev, &case.b));
    let mut g_resid = up_at::<A>(dev, &vec![f32::NAN; n], off);
    let mut g_out = up_at::<A>(dev, &vec![f32::NAN; n], off);
    let mut g_mean = up(dev, &vec![f32::NAN; rows]);
    let mut g_rstd = up(dev, &vec![f32::NAN; rows]);
    layernorm::residual_layernorm_forward(
        dev,
        g_resid.slice_mut(off..),
        g_out.slice_mut(off..),
        Some(g_mean.view_mut()),
        Some(g_rstd.view_mut()),
        da.slice(off..),
        db.slice(off..),
        dw.view(),
        dbias.view(),
        rows,
        c,
        EPS,
    )
    .unwrap();
    [
        down_as(dev, g_resid.slice(off..)),
        down_as(dev, g_out.slice(off..)),
        down(dev, g_mean.view()),
        down(dev, g_rstd.view()),
    ]
}

const RES_LN_NAMES: [&str; 4] = [
    "residual.out",
    "layernorm.out",
    "layernorm.mean",
    "layernorm.rstd",
];

fn residual_layernorm_matches_reference<A: Act>(dev: &Device) {
    let p = A::PRECISION;
    for &rows in ROWS {
        for &c in COLS {
            let ctx = format!("rows={rows} c={c}");
            let case = LnCase::new::<A>(rows, c, 500 + rows as u64 * 7 + c as u64);
            let b = rounded::<A>(rand_vec(rows * c, 3 + c as u64, -2.0, 2.0));
            let want = residual_layernorm_reference::<A>(&case, &b);
            let got = residual_layernorm_run::<A>(dev, &case, &b, 0);
            for i in 0..4 {
                assert_close_at(p, RES_LN_NAMES[i], &ctx, &got[i], &want[i]);
            }
        }
    }
}

/// Widths that take the bf16 kernels' 16-byte chunked path (c % 8 == 0): fewer chunks than lanes,
/// 33 chunks (lane 0 takes two; 8 warps per backward block), GPT-2 small's 768 (3 per lane); 6144
/// runs one warp per backward block and, at 260 rows, more rows than the 256 backward blocks (as
/// `layernorm_backward_is_bitwise_deterministic`, whose row count keeps dweight/dbias within the
/// table's bounds).
const VEC_SHAPES: &[(usize, usize)] = &[(7, 8), (33, 40), (9, 264), (33, 768), (260, 6144)];

/// Offsets of the activation views: aligned (0, and 8 = 16 bytes), and odd (every bf16 row
/// misaligned: the scalar accesses).
const OFFSETS: &[usize] = &[0, 1, 8, 5];

/// The chunked rows (c % 8 == 0) match the reference; at every view offset (vector or scalar
/// accesses) every output has the same bits as at offset 0, since which lane sums which columns
/// depends on c alone (kernels/layernorm.cu); and the backward keeps its bits under a shuffled
/// schedule. For f32 (no vector path) the same holds trivially.
fn layernorm_chunked_rows_are_alignment_independent<A: Act>(dev: &Device, shuffled: &Device) {
    let p = A::PRECISION;
    for &(rows, c) in VEC_SHAPES {
        let case = LnCase::new::<A>(rows, c, 7 + rows as u64 * 13 + c as u64);
        let want = case.reference::<A>();
        let at0 = case.run::<A>(dev, &want[1], &want[2]);
        for i in 0..6 {
            let ctx = format!("{p} rows={rows} c={c}");
            assert_close_at(p, LN_NAMES[i], &ctx, &at0[i], &want[i]);
        }
        for &off in &OFFSETS[1..] {
            let got = case.run_grads::<A>(dev, &want[1], &want[2], (true, true), off);
            for i in 0..6 {
                let what = format!("{} {p} rows={rows} c={c}: offset {off} vs 0", LN_NAMES[i]);
                assert_bits_eq(&what, &got[i], &at0[i]);
            }
        }
        let again = case.run_grads::<A>(shuffled, &want[1], &want[2], (true, true), 5);
        for i in 0..6 {
            let what = format!("{} {p} rows={rows} c={c}: shuffled, offset 5", LN_NAMES[i]);
            assert_bits_eq(&what, &again[i], &at0[i]);
        }

        let b = rounded::<A>(rand_vec(rows * c, 11 + c as u64, -2.0, 2.0));
        let want = residual_layernorm_reference::<A>(&case, &b);
        let at0 = residual_layernorm_run::<A>(dev, &case, &b, 0);
        for i in 0..4 {
            let ctx = format!("residual_layernorm {p} rows={rows} c={c}");
            assert_close_at(p, RES_LN_NAMES[i], &ctx, &at0[i], &want[i]);
        }
        for &off in &OFFSETS[1..] {
            let got = residual_layernorm_run::<A>(dev, &case, &b, off);
            for i in 0..4 {
                let what = format!(
                    "residual_layernorm {} {p} rows={rows} c={c}: offset {off} vs 0",
                    RES_LN_NAMES[i]
                );
                assert_bits_eq(&what, &got[i], &at0[i]);
            }
        }
    }
}

#[test]
fn layernorm_chunked_rows_are_alignment_independent_on_emu() {
    layernorm_chunked_rows_are_alignment_independent::<f32>(&emu(), &emu_shuffled(31));
}

#[test]
fn layernorm_bf16_chunked_rows_are_alignment_independent_on_emu() {
    layernorm_chunked_rows_are_alignment_independent::<bf16>(&emu(), &emu_shuffled(32));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_chunked_rows_are_alignment_independent_on_cuda() {
    let dev = gpu();
    layernorm_chunked_rows_are_alignment_independent::<f32>(&dev, &dev);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_bf16_chunked_rows_are_alignment_independent_on_cuda() {
    let dev = gpu();
    layernorm_chunked_rows_are_alignment_independent::<bf16>(&dev, &dev);
}

#[test]
fn layernorm_backward_skips_absent_weight_gradients_on_emu() {
    layernorm_backward_skips_absent_weight_gradients(&emu());
}

#[test]
fn residual_layernorm_forward_matches_cpu_on_emu() {
    residual_layernorm_matches_reference::<f32>(&emu());
}

#[test]
fn residual_layernorm_forward_bf16_matches_cpu_on_emu() {
    residual_layernorm_matches_reference::<bf16>(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_skips_absent_weight_gradients_on_cuda() {
    layernorm_backward_skips_absent_weight_gradients(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_layernorm_forward_matches_cpu_on_cuda() {
    residual_layernorm_matches_reference::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_layernorm_forward_bf16_matches_cpu_on_cuda() {
    residual_layernorm_matches_reference::<bf16>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_forward_and_backward_match_cpu_on_cuda() {
    layernorm_matches_reference::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_forward_and_backward_bf16_match_cpu_on_cuda() {
    layernorm_matches_reference::<bf16>(&gpu());
}

fn layernorm_backward_is_bitwise_deterministic_on<A: Act>(dev: &Device) {
    // GPT-2 small's width, a realistic number of rows
    let p = A::PRECISION;
    let case = LnCase::new::<A>(4096, 768, 5);
    let want = case.reference::<A>();
    let first = case.run::<A>(dev, &want[1], &want[2]);
    let second = case.run::<A>(dev, &want[1], &want[2]);
    for i in 3..6 {
        assert_bits_eq(
            &format!("{} {p} run 1 vs run 2 (cuda)", LN_NAMES[i]),
            &first[i],
            &second[i],
        );
    }
    for i in 0..6 {
        assert_close_at(
            p,
            LN_NAMES[i],
            "rows=4096 c=768 (cuda)",
            &first[i],
            &want[i],
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_is_bitwise_deterministic_on_cuda() {
    layernorm_backward_is_bitwise_deterministic_on::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_bf16_is_bitwise_deterministic_on_cuda() {
    layernorm_backward_is_bitwise_deterministic_on::<bf16>(&gpu());
}
