//! `rating_mf_forward/backward`, `sigmoid_forward/backward`, `mse_forward` (kernels/rating.cu)
//! against `ops::rating`, for f32 and bf16 activations (one body, generic over `A: Act`; MSE's
//! target and loss are f32 either way).

use super::emu_shuffled;
use crate::common::*;
use half::bf16;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::rating;
use pepler_cuda::ops::rating as cpu;
use pepler_cuda::precision::Act;

fn rating_mf_matches_reference<A: Act>(dev: &Device) {
    let p = A::PRECISION;
    for &(b, c) in &[(1usize, 1usize), (7, 45), (9, 771)] {
        let ctx = format!("{p} b={b} c={c}");
        let ui = rounded::<A>(rand_vec(b * 2 * c, 3 + c as u64, -1.0, 1.0));
        let dpred = rounded::<A>(rand_vec(b, 4, -2.0, 2.0));
        let mut want = vec![0.0; b];
        cpu::rating_mf_forward(&mut want, &ui, b, c);
        A::round_slice(&mut want);
        let mut want_d = vec![0.0; b * 2 * c];
        cpu::rating_mf_backward(&mut want_d, &dpred, &ui, b, c);
        A::round_slice(&mut want_d);
        let (dui_in, dp) = (up_as::<A>(dev, &ui), up_as::<A>(dev, &dpred));
        let mut out = up_as::<A>(dev, &vec![f32::NAN; b]);
        rating::rating_mf_forward(dev, out.view_mut(), dui_in.view(), b, c).unwrap();
        assert_close_at(p, "rating_mf.out", &ctx, &down_as(dev, out.view()), &want);
        let mut dui = up_as::<A>(dev, &vec![f32::NAN; b * 2 * c]);
        rating::rating_mf_backward(dev, dui.view_mut(), dp.view(), dui_in.view(), b, c).unwrap();
        assert_close_at(p, "rating_mf.dui", &ctx, &down_as(dev, dui.view()), &want_d);
    }
}

fn sigmoid_matches_reference<A: Act>(dev: &Device) {
    let p = A::PRECISION;
    for &n in &[1usize, 45, 1031] {
        let ctx = format!("{p} n={n}");
        let x = rounded::<A>(rand_vec(n, 6, -30.0, 30.0));
        let g = rounded::<A>(rand_vec(n, 7, -1.0, 1.0));
        let mut want = vec![0.0; n];
        cpu::sigmoid_forward(&mut want, &x);
        A::round_slice(&mut want);
        let mut want_d = vec![0.0; n];
        cpu::sigmoid_backward(&mut want_d, &want, &g);
        A::round_slice(&mut want_d);
        let (dx, dg, y) = (
            up_as::<A>(dev, &x),
            up_as::<A>(dev, &g),
            up_as::<A>(dev, &want),
        );
        let mut out = dev.alloc::<A>(n).unwrap();
        rating::sigmoid_forward(dev, out.view_mut(), dx.view(), n).unwrap();
        let got = down_as(dev, out.view());
        assert_close_at(p, "sigmoid.out", &ctx, &got, &want);
        // the backward from the CPU's forward output: checked on its own
        let mut dinp = dev.alloc::<A>(n).unwrap();
        rating::sigmoid_backward(dev, dinp.view_mut(), y.view(), dg.view(), n).unwrap();
        let got_d = down_as(dev, dinp.view());
        assert_close_at(p, "sigmoid.dinp", &ctx, &got_d, &want_d);

        // views one element in (misaligned: bf16's element-by-element path): the same bits
        let pad = |v: &[f32]| [&[0.5][..], v].concat();
        let (dx1, dg1, y1) = (
            up_as::<A>(dev, &pad(&x)),
            up_as::<A>(dev, &pad(&g)),
            up_as::<A>(dev, &pad(&want)),
        );
        let mut out1 = up_as::<A>(dev, &vec![f32::NAN; n + 1]);
        rating::sigmoid_forward(dev, out1.slice_mut(1..), dx1.slice(1..), n).unwrap();
        let got1 = down_as(dev, out1.view());
        assert!(
            got1[0].is_nan(),
            "{ctx}: sigmoid_forward wrote before its view"
        );
        assert_bits_eq(&format!("sigmoid.out {ctx} misaligned"), &got1[1..], &got);
        let mut dinp1 = up_as::<A>(dev, &vec![f32::NAN; n + 1]);
        rating::sigmoid_backward(dev, dinp1.slice_mut(1..), y1.slice(1..), dg1.slice(1..), n)
            .unwrap();
        let got1 = down_as(dev, dinp1.view());
        assert!(
            got1[0].is_nan(),
            "{ctx}: sigmoid_backward wrote before its view"
        );
        assert_bits_eq(
            &format!("sigmoid.dinp {ctx} misaligned"),
            &got1[1..],
            &got_d,
        );
    }
}

/// (loss, dpred) on `dev`; `pred` is uploaded as `A`.
fn mse_run<A: Act>(dev: &Device, pred: &[f32], target: &[f32], scale: f32) -> (f32, Vec<f32>) {
    let n = pred.len();
    let (p, t) = (up_as::<A>(dev, pred), up(dev, target));
    let mut loss = up(dev, &[f32::NAN]);
    let mut dpred = up_as::<A>(dev, &vec![f32::NAN; n]);
    rating::mse_forward(
        dev,
        loss.view_mut(),
        dpred.view_mut(),
        p.view(),
        t.view(),
        n,
        scale,
    )
    .unwrap();
    (down(dev, loss.view())[0], down_as(dev, dpred.view()))
}

fn mse_matches_reference<A: Act>(dev: &Device, other: &Device) {
    let p = A::PRECISION;
    // n around the 256-element chunks of the kernel's sum
    for &n in &[1usize, 128, 255, 256, 257, 700] {
        let ctx = format!("{p} n={n}");
        let pred = rounded::<A>(rand_vec(n, 8 + n as u64, 0.0, 6.0));
        let target = rand_vec(n, 9, 1.0, 5.0);
        let mut want_d = vec![0.0; n];
        let want = cpu::mse_forward(&mut want_d, &pred, &target, 0.1);
        A::round_slice(&mut want_d);
        let (loss, dpred) = mse_run::<A>(dev, &pred, &target, 0.1);
        assert_close_at(p, "mse.loss", &ctx, &[loss], &[want]);
        assert_close_at(p, "mse.dpred", &ctx, &dpred, &want_d);
        let (loss2, dpred2) = mse_run::<A>(other, &pred, &target, 0.1);
        assert_bits_eq(&format!("mse loss {ctx} run vs run"), &[loss], &[loss2]);
        assert_bits_eq(&format!("mse dpred {ctx} run vs run"), &dpred, &dpred2);
    }
}

#[test]
fn rating_mf_forward_and_backward_match_cpu_on_emu() {
    rating_mf_matches_reference::<f32>(&emu());
}

#[test]
fn rating_mf_forward_and_backward_bf16_match_cpu_on_emu() {
    rating_mf_matches_reference::<bf16>(&emu());
}

#[test]
fn sigmoid_forward_and_backward_match_cpu_on_emu() {
    sigmoid_matches_reference::<f32>(&emu());
}

#[test]
fn sigmoid_forward_and_backward_bf16_match_cpu_on_emu() {
    sigmoid_matches_reference::<bf16>(&emu());
}

#[test]
fn mse_forward_is_bit_identical_to_cpu_across_schedules_on_emu() {
    mse_matches_reference::<f32>(&emu(), &emu_shuffled(31));
}

#[test]
fn mse_forward_bf16_is_bit_identical_to_cpu_across_schedules_on_emu() {
    mse_matches_reference::<bf16>(&emu(), &emu_shuffled(32));
}

#[test]
fn mse_of_nothing_is_nan_like_the_cpu() {
    let dev = emu();
    let (loss, dpred) = mse_run::<f32>(&dev, &[], &[], 1.0);
    assert!(loss.is_nan() && dpred.is_empty());
    let (loss, dpred) = mse_run::<bf16>(&dev, &[], &[], 1.0);
    assert!(loss.is_nan() && dpred.is_empty());
    assert!(cpu::mse_forward(&mut [], &[], &[], 1.0).is_nan());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rating_mf_forward_and_backward_match_cpu_on_cuda() {
    rating_mf_matches_reference::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rating_mf_forward_and_backward_bf16_match_cpu_on_cuda() {
    rating_mf_matches_reference::<bf16>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sigmoid_forward_and_backward_match_cpu_on_cuda() {
    sigmoid_matches_reference::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sigmoid_forward_and_backward_bf16_match_cpu_on_cuda() {
    sigmoid_matches_reference::<bf16>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mse_forward_is_bit_identical_to_cpu_on_cuda() {
    let dev = gpu();
    mse_matches_reference::<f32>(&dev, &dev);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mse_forward_bf16_is_bit_identical_to_cpu_on_cuda() {
    let dev = gpu();
    mse_matches_reference::<bf16>(&dev, &dev);
}
