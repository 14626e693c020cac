//! `global_norm` / `scale_by_clip` (kernels/global_norm.cu) against `ops::global_norm`.

use super::emu_shuffled;
use crate::common::*;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::global_norm::{
    global_norm, global_norm_config, global_norm_scratch_len, scale_by_clip,
};
use pepler_cuda::ops::global_norm as cpu;

fn norm_on(dev: &Device, x: &[f32]) -> f32 {
    let n = x.len();
    let dx = up(dev, x);
    let mut norm = up(dev, &[f32::NAN]);
    let mut scratch = up(dev, &vec![f32::NAN; global_norm_scratch_len(n)]);
    global_norm(dev, norm.view_mut(), scratch.view_mut(), dx.view(), n).unwrap();
    down(dev, norm.view())[0]
}

fn global_norm_matches_reference(dev: &Device) {
    for &n in &[0usize, 1, 255, 2049, 70_001] {
        let x = rand_vec(n, 21 + n as u64, -0.5, 0.5);
        let want = cpu::global_norm(&x);
        assert_close(
            "global_norm.norm",
            &format!("n={n}"),
            &[norm_on(dev, &x)],
            &[want],
        );
    }
}

fn scale_by_clip_matches_reference(dev: &Device) {
    let n = 1031;
    let x = rand_vec(n, 5, -1.0, 1.0);
    let norm = cpu::global_norm(&x);
    for max_norm in [0.5f32, norm * 2.0] {
        let mut want = x.clone();
        cpu::scale_by_clip(&mut want, norm, max_norm);
        let mut dx = up(dev, &x);
        let dn = up(dev, &[norm]);
        scale_by_clip(dev, dx.view_mut(), dn.view(), max_norm, n).unwrap();
        let got = down(dev, dx.view());
        assert_close(
            "global_norm.clipped",
            &format!("max_norm={max_norm}"),
            &got,
            &want,
        );
        if max_norm > norm {
            assert_bits_eq("no clipping below the limit", &got, &x);
        }
    }
}

#[test]
fn global_norm_matches_cpu_on_emu() {
    global_norm_matches_reference(&emu());
}

#[test]
fn scale_by_clip_matches_cpu_on_emu() {
    scale_by_clip_matches_reference(&emu());
}

#[test]
fn global_norm_is_bitwise_deterministic_across_schedules() {
    // more than 512 * 2048 elements: the grid is capped, so threads stride several times
    let n = 512 * 2048 + 777;
    assert_eq!(global_norm_config(n).2, 512);
    let x = rand_vec(n, 77, -1.0, 1.0);
    let a = norm_on(&emu(), &x);
    let b = norm_on(&emu_shuffled(9), &x);
    assert_bits_eq("global norm plain vs shuffled", &[a], &[b]);
    assert_close("global_norm.norm", "n=2^20+", &[a], &[cpu::global_norm(&x)]);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn global_norm_and_clip_match_cpu_on_cuda() {
    let dev = gpu();
    global_norm_matches_reference(&dev);
    scale_by_clip_matches_reference(&dev);
    let x = rand_vec(124_000_000 / 64, 3, -1.0, 1.0);
    assert_bits_eq(
        "global norm run vs run (cuda)",
        &[norm_on(&dev, &x)],
        &[norm_on(&dev, &x)],
    );
}
