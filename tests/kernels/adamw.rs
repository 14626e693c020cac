//! `adamw_update` / `adamw_update_multi` (kernels/adamw.cu) against `ops::adamw`: bit for bit, in
//! both formulas, over several steps (m and v carry the previous steps' rounding); the bf16 copy
//! the multi-tensor update writes, and `cast_f32_to_bf16`.

use crate::common::*;
use half::bf16;
use pepler_cuda::backend::{AdamWParams, AdamWVariant};
use pepler_cuda::device::Device;
use pepler_cuda::kernels::adamw::{
    adamw_update, adamw_update_multi, cast_f32_to_bf16, AdamWPlan, AdamWTensor, ADAMW_CHUNK,
};
use pepler_cuda::ops::adamw as cpu;

const STEPS: u64 = 3;

fn hp(variant: AdamWVariant, weight_decay: f64) -> AdamWParams {
    AdamWParams {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay,
        variant,
    }
}

/// The CPU update of one tensor with weight decay `wd`.
fn cpu_step(
    h: &AdamWParams,
    wd: f64,
    step: u64,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let f = match h.variant {
        AdamWVariant::Torch => cpu::adamw_update,
        AdamWVariant::Hf => cpu::adamw_update_hf,
    };
    f(p, g, m, v, h.lr, h.beta1, h.beta2, h.eps, wd, step);
}

/// Gradients of step `t`: some large, some tiny (near eps), some exactly zero.
fn grads(n: usize, t: u64) -> Vec<f32> {
    let mut g = rand_vec(n, 1000 + t, -2.0, 2.0);
    for (i, x) in g.iter_mut().enumerate() {
        match i % 7 {
            3 => *x *= 1e-7,
            5 => *x = 0.0,
            _ => {}
        }
    }
    g
}

fn adamw_matches_reference(dev: &Device) {
    let n = 1031;
    for variant in [AdamWVariant::Torch, AdamWVariant::Hf] {
        for wd in [0.0, 0.01] {
            let h = hp(variant, wd);
            let mut want_p = rand_vec(n, 1, -1.0, 1.0);
            let (mut want_m, mut want_v) = (vec![0.0f32; n], vec![0.0f32; n]);
            let mut p = up(dev, &want_p);
            let (mut m, mut v) = (up(dev, &want_m), up(dev, &want_v));
            for t in 1..=STEPS {
                let g = grads(n, t);
                cpu_step(&h, wd, t, &mut want_p, &g, &mut want_m, &mut want_v);
                let dg = up(dev, &g);
                adamw_update(
                    dev,
                    p.view_mut(),
                    dg.view(),
                    m.view_mut(),
                    v.view_mut(),
                    &h,
                    t,
                    n,
                )
                .unwrap();
            }
            let ctx = format!("{variant:?} wd={wd}");
            assert_bits_eq(&format!("adamw p {ctx}"), &down(dev, p.view()), &want_p);
            assert_bits_eq(&format!("adamw m {ctx}"), &down(dev, m.view()), &want_m);
            assert_bits_eq(&format!("adamw v {ctx}"), &down(dev, v.view()), &want_v);
        }
    }
}

/// Four tensors in one flat allocation, with a gap, a frozen tensor, one without decay, and tensors
/// longer than one block's chunk.
fn tensors() -> Vec<AdamWTensor> {
    let t = |offset, len, decay, trainable| AdamWTensor {
        offset,
        len,
        decay,
        trainable,
    };
    vec![
        t(0, ADAMW_CHUNK + 904, true, true),
        t(ADAMW_CHUNK + 907, 17, false, true),
        t(ADAMW_CHUNK + 924, 300, true, false),
        t(ADAMW_CHUNK + 1224, ADAMW_CHUNK + 1, false, true),
    ]
}

/// Bits of bf16 values widened to f32 (for assert_bits_eq).
fn widen(xs: &[bf16]) -> Vec<f32> {
    xs.iter().map(|x| x.to_f32()).collect()
}

/// With a bf16 copy: p, m, v are the bits of the CPU reference (as without a copy), and after
/// every step the copy of each trainable tensor is its updated params rounded to bf16, while the
/// copies of the frozen tensor and the gap keep their sentinel.
fn adamw_multi_writes_the_bf16_copy(dev: &Device) {
    let ts = tensors();
    let plan = AdamWPlan::new(dev, &ts).unwrap();
    let n = plan.extent();
    let sentinel = bf16::from_f32(-7.5);
    for variant in [AdamWVariant::Torch, AdamWVariant::Hf] {
        let h = hp(variant, 0.05);
        let p0 = rand_vec(n, 4, -1.0, 1.0);
        let mut want = (p0.clone(), vec![0.0f32; n], vec![0.0f32; n]);
        let mut p = up(dev, &p0);
        let (mut m, mut v) = (up(dev, &want.1), up(dev, &want.2));
        let mut copy = dev.upload(&vec![sentinel; n]).unwrap();
        for t in 1..=STEPS {
            let g = grads(n, t);
            let mut want_copy = vec![sentinel; n];
            for tn in ts.iter().filter(|tn| tn.trainable) {
                let r = tn.offset..tn.offset + tn.len;
                cpu_step(
                    &h,
                    if tn.decay { 0.05 } else { 0.0 },
                    t,
                    &mut want.0[r.clone()],
                    &g[r.clone()],
                    &mut want.1[r.clone()],
                    &mut want.2[r.clone()],
                );
                for i in r {
                    want_copy[i] = bf16::from_f32(want.0[i]);
                }
            }
            let dg = up(dev, &g);
            adamw_update_multi(
                dev,
                &plan,
                p.view_mut(),
                dg.view(),
                m.view_mut(),
                v.view_mut(),
                Some(copy.view_mut()),
                &h,
                t,
            )
            .unwrap();
            let ctx = format!("{variant:?} step {t}");
            assert_bits_eq(
                &format!("adamw_multi copy {ctx}"),
                &widen(&dev.download(copy.view()).unwrap()),
                &widen(&want_copy),
            );
        }
        let ctx = format!("{variant:?} with copy");
        assert_bits_eq(
            &format!("adamw_multi p {ctx}"),
            &down(dev, p.view()),
            &want.0,
        );
        assert_bits_eq(
            &format!("adamw_multi m {ctx}"),
            &down(dev, m.view()),
            &want.1,
        );
        assert_bits_eq(
            &format!("adamw_multi v {ctx}"),
            &down(dev, v.view()),
            &want.2,
        );
    }
}

/// `cast_f32_to_bf16` at odd sizes (around the 8-element groups) and offsets (vector and scalar
/// paths), with ties, subnormals, infinities and signed zeros: bit for bit `bf16::from_f32`, and
/// nothing past n written.
fn cast_matches_host_rounding(dev: &Device) {
    let mut src = rand_vec(1100, 8, -4.0, 4.0);
    let specials = [
        1.0 + 1.0 / 256.0, // tie: rounds to even (1.0)
        1.0 + 3.0 / 256.0, // tie: rounds to even (1 + 2^-6)
        -(1.0 + 1.0 / 256.0),
        1.0e-39, // f32 subnormal
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3.4e38, // rounds up to inf in bf16
        65504.0,
    ];
    src[..specials.len()].copy_from_slice(&specials);
    let input = up(dev, &src);
    for n in [1usize, 7, 8, 9, 16, 1031] {
        for (oo, io) in [(0usize, 0usize), (1, 0), (0, 3), (8, 8), (5, 1)] {
            let fill = bf16::from_f32(42.0);
            let mut out = dev.upload(&vec![fill; n + oo + 4]).unwrap();
            cast_f32_to_bf16(dev, out.slice_mut(oo..), input.slice(io..io + n), n).unwrap();
            let got = dev.download(out.view()).unwrap();
            let mut want = vec![fill; n + oo + 4];
            for i in 0..n {
                want[oo + i] = bf16::from_f32(src[io + i]);
            }
            assert_bits_eq(
                &format!("cast_f32_to_bf16 n={n} out offset {oo} inp offset {io}"),
                &widen(&got),
                &widen(&want),
            );
        }
    }
}

#[test]
fn adamw_update_multi_writes_the_bf16_copy_on_emu() {
    adamw_multi_writes_the_bf16_copy(&emu());
}

#[test]
fn cast_f32_to_bf16_rounds_like_the_host_at_any_offset_on_emu() {
    cast_matches_host_rounding(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_update_multi_writes_the_bf16_copy_on_cuda() {
    adamw_multi_writes_the_bf16_copy(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cast_f32_to_bf16_rounds_like_the_host_at_any_offset_on_cuda() {
    cast_matches_host_rounding(&gpu());
}

fn adamw_multi_matches_reference(dev: &Device) {
    let ts = tensors();
    let plan = AdamWPlan::new(dev, &ts).unwrap();
    let n = plan.extent();
    assert_eq!(plan.blocks(), 2 + 1 + 2);
    for variant in [AdamWVariant::Torch, AdamWVariant::Hf] {
        for wd in [0.0, 0.05] {
            let h = hp(variant, wd);
            let p0 = rand_vec(n, 2, -1.0, 1.0);
            let mut want = (p0.clone(), vec![0.0f32; n], vec![0.0f32; n]);
            let mut p = up(dev, &p0);
            let (mut m, mut v) = (up(dev, &want.1), up(dev, &want.2));
            for t in 1..=STEPS {
                let g = grads(n, t);
                for tn in ts.iter().filter(|tn| tn.trainable) {
                    let r = tn.offset..tn.offset + tn.len;
                    cpu_step(
                        &h,
                        if tn.decay { wd } else { 0.0 },
                        t,
                        &mut want.0[r.clone()],
                        &g[r.clone()],
                        &mut want.1[r.clone()],
                        &mut want.2[r],
                    );
                }
                let dg = up(dev, &g);
                adamw_update_multi(
                    dev,
                    &plan,
                    p.view_mut(),
                    dg.view(),
                    m.view_mut(),
                    v.view_mut(),
                    None,
                    &h,
                    t,
                )
                .unwrap();
            }
            let ctx = format!("{variant:?} wd={wd}");
            let got_p = down(dev, p.view());
            assert_bits_eq(&format!("adamw_multi p {ctx}"), &got_p, &want.0);
            assert_bits_eq(
                &format!("adamw_multi m {ctx}"),
                &down(dev, m.view()),
                &want.1,
            );
            assert_bits_eq(
                &format!("adamw_multi v {ctx}"),
                &down(dev, v.view()),
                &want.2,
            );
            // the frozen tensor and the gap kept their values (the CPU side never touched them)
            let frozen = ts[2].offset..ts[2].offset + ts[2].len;
            assert_bits_eq("frozen", &got_p[frozen.clone()], &p0[frozen]);
            let gap = ts[0].len..ts[1].offset;
            assert_bits_eq("gap", &got_p[gap.clone()], &p0[gap]);
        }
    }
}

#[test]
fn adamw_update_is_bit_identical_to_cpu_on_emu() {
    adamw_matches_reference(&emu());
}

#[test]
fn adamw_update_multi_is_bit_identical_to_cpu_per_tensor_on_emu() {
    adamw_multi_matches_reference(&emu());
}

#[test]
fn adamw_plan_rejects_overlaps_and_launchers_reject_short_buffers() {
    let dev = emu();
    let t = |offset, len| AdamWTensor {
        offset,
        len,
        decay: true,
        trainable: true,
    };
    let err = AdamWPlan::new(&dev, &[t(0, 10), t(9, 5)])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("[0, 10) and [9, 14) overlap"), "{err}");
    let plan = AdamWPlan::new(&dev, &[t(0, 10), t(10, 5)]).unwrap();
    let mut a = dev.alloc::<f32>(15).unwrap();
    let mut b = dev.alloc::<f32>(15).unwrap();
    let mut c = dev.alloc::<f32>(14).unwrap();
    let g = dev.alloc::<f32>(15).unwrap();
    let h = hp(AdamWVariant::Torch, 0.0);
    let err = adamw_update_multi(
        &dev,
        &plan,
        a.view_mut(),
        g.view(),
        b.view_mut(),
        c.view_mut(),
        None,
        &h,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("v has 14 elements, needs at least 15"),
        "{err}"
    );
    let err = adamw_update(
        &dev,
        a.view_mut(),
        g.view(),
        b.view_mut(),
        c.view_mut(),
        &h,
        0,
        14,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("step counts from 1"), "{err}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_update_is_bit_identical_to_cpu_on_cuda() {
    adamw_matches_reference(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_update_multi_is_bit_identical_to_cpu_per_tensor_on_cuda() {
    adamw_multi_matches_reference(&gpu());
}
