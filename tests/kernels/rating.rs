//! `rating_mf_forward/backward`, `sigmoid_forward/backward`, `mse_forward` (kernels/rating.cu)
//! against `ops::rating`.

use super::emu_shuffled;
use crate::common::*;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::rating;
use pepler_cuda::ops::rating as cpu;

fn rating_mf_matches_reference(dev: &Device) {
    for &(b, c) in &[(1usize, 1usize), (7, 45), (9, 771)] {
        let ctx = format!("b={b} c={c}");
        let ui = rand_vec(b * 2 * c, 3 + c as u64, -1.0, 1.0);
        let dpred = rand_vec(b, 4, -2.0, 2.0);
        let mut want = vec![0.0; b];
        cpu::rating_mf_forward(&mut want, &ui, b, c);
        let mut want_d = vec![0.0; b * 2 * c];
        cpu::rating_mf_backward(&mut want_d, &dpred, &ui, b, c);
        let (dui_in, dp) = (up(dev, &ui), up(dev, &dpred));
        let mut out = up(dev, &vec![f32::NAN; b]);
        rating::rating_mf_forward(dev, out.view_mut(), dui_in.view(), b, c).unwrap();
        assert_close("rating_mf.out", &ctx, &down(dev, out.view()), &want);
        let mut dui = up(dev, &vec![f32::NAN; b * 2 * c]);
        rating::rating_mf_backward(dev, dui.view_mut(), dp.view(), dui_in.view(), b, c).unwrap();
        assert_close("rating_mf.dui", &ctx, &down(dev, dui.view()), &want_d);
    }
}

fn sigmoid_matches_reference(dev: &Device) {
    for &n in &[1usize, 45, 1031] {
        let x = rand_vec(n, 6, -30.0, 30.0);
        let g = rand_vec(n, 7, -1.0, 1.0);
        let mut want = vec![0.0; n];
        cpu::sigmoid_forward(&mut want, &x);
        let mut want_d = vec![0.0; n];
        cpu::sigmoid_backward(&mut want_d, &want, &g);
        let (dx, dg, y) = (up(dev, &x), up(dev, &g), up(dev, &want));
        let mut out = dev.alloc::<f32>(n).unwrap();
        rating::sigmoid_forward(dev, out.view_mut(), dx.view(), n).unwrap();
        assert_close(
            "sigmoid.out",
            &format!("n={n}"),
            &down(dev, out.view()),
            &want,
        );
        // the backward from the CPU's forward output: checked on its own
        let mut dinp = dev.alloc::<f32>(n).unwrap();
        rating::sigmoid_backward(dev, dinp.view_mut(), y.view(), dg.view(), n).unwrap();
        assert_close(
            "sigmoid.dinp",
            &format!("n={n}"),
            &down(dev, dinp.view()),
            &want_d,
        );
    }
}

/// (loss, dpred) on `dev`.
fn mse_run(dev: &Device, pred: &[f32], target: &[f32], scale: f32) -> (f32, Vec<f32>) {
    let n = pred.len();
    let (p, t) = (up(dev, pred), up(dev, target));
    let mut loss = up(dev, &[f32::NAN]);
    let mut dpred = up(dev, &vec![f32::NAN; n]);
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
    (down(dev, loss.view())[0], down(dev, dpred.view()))
}

fn mse_matches_reference(dev: &Device, other: &Device) {
    // n around the 256-element chunks of the kernel's sum
    for &n in &[1usize, 128, 255, 256, 257, 700] {
        let pred = rand_vec(n, 8 + n as u64, 0.0, 6.0);
        let target = rand_vec(n, 9, 1.0, 5.0);
        let mut want_d = vec![0.0; n];
        let want = cpu::mse_forward(&mut want_d, &pred, &target, 0.1);
        let (loss, dpred) = mse_run(dev, &pred, &target, 0.1);
        assert_close("mse.loss", &format!("n={n}"), &[loss], &[want]);
        assert_close("mse.dpred", &format!("n={n}"), &dpred, &want_d);
        let (loss2, dpred2) = mse_run(other, &pred, &target, 0.1);
        assert_bits_eq("mse loss run vs run", &[loss], &[loss2]);
        assert_bits_eq("mse dpred run vs run", &dpred, &dpred2);
    }
}

#[test]
fn rating_mf_forward_and_backward_match_cpu_on_emu() {
    rating_mf_matches_reference(&emu());
}

#[test]
fn sigmoid_forward_and_backward_match_cpu_on_emu() {
    sigmoid_matches_reference(&emu());
}

#[test]
fn mse_forward_is_bit_identical_to_cpu_across_schedules_on_emu() {
    mse_matches_reference(&emu(), &emu_shuffled(31));
}

#[test]
fn mse_of_nothing_is_nan_like_the_cpu() {
    let dev = emu();
    let (loss, dpred) = mse_run(&dev, &[], &[], 1.0);
    assert!(loss.is_nan() && dpred.is_empty());
    assert!(cpu::mse_forward(&mut [], &[], &[], 1.0).is_nan());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rating_mf_forward_and_backward_match_cpu_on_cuda() {
    rating_mf_matches_reference(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sigmoid_forward_and_backward_match_cpu_on_cuda() {
    sigmoid_matches_reference(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mse_forward_is_bit_identical_to_cpu_on_cuda() {
    let dev = gpu();
    mse_matches_reference(&dev, &dev);
}
