//! `crossentropy_forward`, `crossentropy_mean`, `argmax_forward` (kernels/classifier.cu) against
//! `ops::crossentropy`, for f32 and bf16 logits (one body, generic over `A: Act`; the losses and
//! the mean are f32 either way, the dlogits are rounded to `A`).

use super::{emu_shuffled, up_i32};
use crate::common::*;
use half::bf16;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::classifier;
use pepler_cuda::ops::crossentropy as cpu;
use pepler_cuda::precision::Act;

/// Odd vocabulary sizes: a single class, below a block, above a block, GPT-2's, GPT-2's with added
/// tokens. In bf16 a row of odd length starts at every offset mod 8 from a 16-byte boundary, so
/// the rows of one call take every head/chunk/tail split (kernels/classifier.cu).
const VOCABS: &[usize] = &[1, 37, 1031, 50257, 50260];

/// (logits, targets) for `rows` x `v`: row offsets up to 60 (only a max-subtracted softmax survives
/// them), one ignored row, one target on the row's maximum, the rest random. The logits hold
/// values of `A` (in bf16 a long row has many equal logits: ties for argmax).
fn ce_case<A: Act>(rows: usize, v: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
    let mut x = rand_vec(rows * v, seed, -6.0, 6.0);
    for (r, row) in x.chunks_mut(v).enumerate() {
        row.iter_mut().for_each(|e| *e += 30.0 * r as f32 - 40.0);
    }
    A::round_slice(&mut x);
    let t = rand_vec(rows, seed + 1, 0.0, v as f32);
    let mut targets: Vec<i32> = t.iter().map(|&u| (u as usize).min(v - 1) as i32).collect();
    if rows > 1 {
        targets[1] = -100;
    }
    if rows > 2 {
        let row = &x[2 * v..3 * v];
        let best = (0..v).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        targets[2] = best as i32;
    }
    (x, targets)
}

/// Device: (losses, dlogits or untouched logits, mean).
fn ce_run<A: Act>(
    dev: &Device,
    x: &[f32],
    targets: &[i32],
    rows: usize,
    v: usize,
    dscale: Option<f32>,
) -> [Vec<f32>; 3] {
    ce_run_at::<A>(dev, x, targets, rows, v, dscale, 0)
}

/// [`ce_run`] with the logits a view `off` elements into their buffer (behind NaN padding, which
/// must stay untouched): in bf16 `off` mod 8 shifts every row's split into head, 16-byte chunks
/// and tail.
fn ce_run_at<A: Act>(
    dev: &Device,
    x: &[f32],
    targets: &[i32],
    rows: usize,
    v: usize,
    dscale: Option<f32>,
    off: usize,
) -> [Vec<f32>; 3] {
    let mut logits = up_as::<A>(dev, &[&vec![f32::NAN; off][..], x].concat());
    let tg = up_i32(dev, targets);
    let mut losses = up(dev, &vec![f32::NAN; rows]);
    classifier::crossentropy_forward(
        dev,
        losses.view_mut(),
        logits.slice_mut(off..),
        tg.view(),
        rows,
        v,
        dscale,
    )
    .unwrap();
    let mut mean = up(dev, &[f32::NAN]);
    classifier::crossentropy_mean(dev, mean.view_mut(), losses.view(), tg.view(), rows).unwrap();
    let pad = down_as(dev, logits.slice(..off));
    assert!(
        pad.iter().all(|p| p.is_nan()),
        "padding before the view changed"
    );
    [
        down(dev, losses.view()),
        down_as(dev, logits.slice(off..)),
        down(dev, mean.view()),
    ]
}

fn crossentropy_matches_reference<A: Act>(dev: &Device) {
    let p = A::PRECISION;
    for &v in VOCABS {
        let rows = if v > 10_000 { 3 } else { 5 };
        let (x, targets) = ce_case::<A>(rows, v, 40 + v as u64);
        for dscale in [None, Some(0.37f32)] {
            let ctx = format!("{p} rows={rows} v={v} dscale={dscale:?}");
            let (mut want_l, mut want_x) = (vec![0.0; rows], x.clone());
            cpu::crossentropy_forward(&mut want_l, &mut want_x, &targets, rows, v, dscale);
            A::round_slice(&mut want_x);
            let got = ce_run::<A>(dev, &x, &targets, rows, v, dscale);
            assert_close_at(p, "crossentropy.losses", &ctx, &got[0], &want_l);
            if let Some(dscale) = dscale {
                assert_close_at(p, "crossentropy.dlogits", &ctx, &got[1], &want_x);
                // the gradient of each valid row sums to 0 (softmax sums to 1); summed in f64 so that
                // the check measures the kernel, not this loop. Rounding a dlogit to bf16 moves it by
                // at most half an ulp, 2^-8 of itself, and a row's |dlogits| sum to at most 2 dscale.
                let bound = match p {
                    Fp32 => 1e-5,
                    Bf16 => 1e-5 + 2.0 * dscale as f64 / 256.0,
                };
                for (r, row) in got[1].chunks(v).enumerate() {
                    let s: f64 = row.iter().map(|&d| d as f64).sum();
                    assert!(s.abs() < bound, "{ctx}: row {r} dlogits sum {s}");
                }
            } else {
                assert_bits_eq(&format!("logits untouched {ctx}"), &got[1], &x);
            }
            // the mean of the device's own losses: checks the reduction alone
            let want_mean = cpu::crossentropy_mean(&got[0], &targets);
            assert_close("crossentropy.mean", &ctx, &got[2], &[want_mean]);
        }
    }
}

fn argmax_matches_reference<A: Act>(dev: &Device) {
    for &v in VOCABS {
        let rows = 4;
        let (mut x, _) = ce_case::<A>(rows, v, 90 + v as u64);
        // ties: row 1's maximum appears three times; row 3 is constant (answer 0)
        if v > 3 {
            let m = x[v..2 * v].iter().cloned().fold(f32::MIN, f32::max) + 1.0;
            for j in [v - 1, v / 2, v / 3] {
                x[v + j] = m;
            }
        }
        x[3 * v..].fill(-2.0);
        let mut want = vec![0i32; rows];
        cpu::argmax_forward(&mut want, &x, rows, v);
        let dx = up_as::<A>(dev, &x);
        let mut out = up_i32(dev, &vec![-1; rows]);
        classifier::argmax_forward(dev, out.view_mut(), dx.view(), rows, v).unwrap();
        assert_eq!(
            dev.download(out.view()).unwrap(),
            want,
            "argmax {} v={v}",
            A::PRECISION
        );
    }
}

#[test]
fn crossentropy_forward_and_mean_match_cpu_on_emu() {
    crossentropy_matches_reference::<f32>(&emu());
}

#[test]
fn crossentropy_forward_bf16_and_mean_match_cpu_on_emu() {
    crossentropy_matches_reference::<bf16>(&emu());
}

#[test]
fn argmax_matches_cpu_with_ties_on_emu() {
    argmax_matches_reference::<f32>(&emu());
}

#[test]
fn argmax_bf16_matches_cpu_with_ties_on_emu() {
    argmax_matches_reference::<bf16>(&emu());
}

fn crossentropy_is_bitwise_deterministic_across_schedules<A: Act>() {
    let (rows, v) = (6, 1031);
    let (x, targets) = ce_case::<A>(rows, v, 3);
    let a = ce_run::<A>(&emu(), &x, &targets, rows, v, Some(0.5));
    let b = ce_run::<A>(&emu_shuffled(77), &x, &targets, rows, v, Some(0.5));
    for (k, name) in ["losses", "dlogits", "mean"].iter().enumerate() {
        assert_bits_eq(
            &format!("crossentropy {} {name} plain vs shuffled", A::PRECISION),
            &a[k],
            &b[k],
        );
    }
}

#[test]
fn crossentropy_gradient_and_mean_are_bitwise_deterministic_across_schedules() {
    crossentropy_is_bitwise_deterministic_across_schedules::<f32>();
}

#[test]
fn crossentropy_bf16_gradient_and_mean_are_bitwise_deterministic_across_schedules() {
    crossentropy_is_bitwise_deterministic_across_schedules::<bf16>();
}

#[test]
fn crossentropy_out_of_range_target_gives_nan_loss_and_zero_gradient() {
    let dev = emu();
    let (rows, v) = (2, 45);
    let (x, _) = ce_case::<f32>(rows, v, 8);
    // logits sit between guards: nothing outside the view may change
    let guard = [5.0f32; 3];
    let mut buf = up(&dev, &[&guard[..], &x, &guard].concat());
    let tg = up_i32(&dev, &[v as i32, 4]);
    let mut losses = dev.alloc::<f32>(rows).unwrap();
    classifier::crossentropy_forward(
        &dev,
        losses.view_mut(),
        buf.slice_mut(3..3 + rows * v),
        tg.view(),
        rows,
        v,
        Some(1.0),
    )
    .unwrap();
    let l = down(&dev, losses.view());
    assert!(l[0].is_nan() && l[1].is_finite(), "{l:?}");
    let got = down(&dev, buf.view());
    assert_bits_eq(
        "guards",
        &[&got[..3], &got[3 + rows * v..]].concat(),
        &[guard, guard].concat(),
    );
    assert!(got[3..3 + v].iter().all(|&d| d == 0.0));
}

#[test]
fn crossentropy_mean_of_no_valid_rows_is_nan() {
    let dev = emu();
    let losses = up(&dev, &[1.0, 2.0]);
    let tg = up_i32(&dev, &[-100, -1]);
    let mut mean = up(&dev, &[0.0]);
    classifier::crossentropy_mean(&dev, mean.view_mut(), losses.view(), tg.view(), 2).unwrap();
    assert!(down(&dev, mean.view())[0].is_nan());
    assert!(cpu::crossentropy_mean(&[1.0], &[-1]).is_nan());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn crossentropy_forward_and_mean_match_cpu_on_cuda() {
    crossentropy_matches_reference::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn crossentropy_forward_bf16_and_mean_match_cpu_on_cuda() {
    crossentropy_matches_reference::<bf16>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn argmax_matches_cpu_with_ties_on_cuda() {
    argmax_matches_reference::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn argmax_bf16_matches_cpu_with_ties_on_cuda() {
    argmax_matches_reference::<bf16>(&gpu());
}

/// The determinism contract of the bf16 split rows (kernels/classifier.cu): the losses and dlogits
/// of a row are fixed by its values and its address mod 16. At each of the 8 offsets mod 8 they
/// match the reference, are the same bits under a shuffled schedule, and offsets 8 apart (the same
/// address mod 16 for every row) give the same bits; argmax is exact at every offset. v = 9001:
/// threads take 2 or 3 chunks; v = 37: fewer chunks than threads, head and tail only in some rows.
/// f32 has no split: the same checks hold trivially.
fn classifier_bits_depend_only_on_row_alignment<A: Act>(dev: &Device, shuffled: &Device) {
    let p = A::PRECISION;
    for (rows, v) in [(4, 9001), (5, 37)] {
        let (x, targets) = ce_case::<A>(rows, v, 17 + v as u64);
        let (mut want_l, mut want_x) = (vec![0.0; rows], x.clone());
        cpu::crossentropy_forward(&mut want_l, &mut want_x, &targets, rows, v, Some(0.5));
        A::round_slice(&mut want_x);
        let mut want_argmax = vec![0i32; rows];
        cpu::argmax_forward(&mut want_argmax, &x, rows, v);
        let by_off: Vec<[Vec<f32>; 3]> = (0..8)
            .map(|off| ce_run_at::<A>(dev, &x, &targets, rows, v, Some(0.5), off))
            .collect();
        for off in 0..16 {
            let ctx = format!("{p} rows={rows} v={v} offset {off}");
            let got = if off < 8 {
                by_off[off].clone()
            } else {
                ce_run_at::<A>(dev, &x, &targets, rows, v, Some(0.5), off)
            };
            assert_close_at(p, "crossentropy.losses", &ctx, &got[0], &want_l);
            assert_close_at(p, "crossentropy.dlogits", &ctx, &got[1], &want_x);
            let same = &by_off[off % 8];
            for (k, name) in ["losses", "dlogits", "mean"].iter().enumerate() {
                assert_bits_eq(
                    &format!("{name} {ctx} vs offset {}", off % 8),
                    &got[k],
                    &same[k],
                );
            }
            if off < 8 {
                let again = ce_run_at::<A>(shuffled, &x, &targets, rows, v, Some(0.5), off);
                for (k, name) in ["losses", "dlogits", "mean"].iter().enumerate() {
                    assert_bits_eq(&format!("{name} {ctx} shuffled"), &again[k], &got[k]);
                }
            }
            let dx = up_as::<A>(dev, &[&vec![f32::NAN; off][..], &x].concat());
            let mut out = up_i32(dev, &vec![-1; rows]);
            classifier::argmax_forward(dev, out.view_mut(), dx.slice(off..), rows, v).unwrap();
            assert_eq!(
                dev.download(out.view()).unwrap(),
                want_argmax,
                "argmax {ctx}"
            );
        }
    }
}

#[test]
fn classifier_bits_depend_only_on_row_alignment_on_emu() {
    classifier_bits_depend_only_on_row_alignment::<f32>(&emu(), &emu_shuffled(91));
}

#[test]
fn classifier_bf16_bits_depend_only_on_row_alignment_on_emu() {
    classifier_bits_depend_only_on_row_alignment::<bf16>(&emu(), &emu_shuffled(92));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn classifier_bits_depend_only_on_row_alignment_on_cuda() {
    let dev = gpu();
    classifier_bits_depend_only_on_row_alignment::<f32>(&dev, &dev);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn classifier_bf16_bits_depend_only_on_row_alignment_on_cuda() {
    let dev = gpu();
    classifier_bits_depend_only_on_row_alignment::<bf16>(&dev, &dev);
}

fn crossentropy_is_bitwise_deterministic_on_cuda<A: Act>() {
    let dev = gpu();
    let (rows, v) = (64, 50260);
    let (x, targets) = ce_case::<A>(rows, v, 3);
    let a = ce_run::<A>(&dev, &x, &targets, rows, v, Some(0.5));
    let b = ce_run::<A>(&dev, &x, &targets, rows, v, Some(0.5));
    for k in 0..3 {
        assert_bits_eq(
            &format!("crossentropy {} run vs run (cuda)", A::PRECISION),
            &a[k],
            &b[k],
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn crossentropy_gradient_is_bitwise_deterministic_on_cuda() {
    crossentropy_is_bitwise_deterministic_on_cuda::<f32>();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn crossentropy_bf16_gradient_is_bitwise_deterministic_on_cuda() {
    crossentropy_is_bitwise_deterministic_on_cuda::<bf16>();
}
