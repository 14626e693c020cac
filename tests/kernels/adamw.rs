//! `adamw_update` / `adamw_update_multi` (kernels/adamw.cu) against `ops::adamw`: bit for bit, in
//! both formulas, over several steps (m and v carry the previous steps' rounding).

use crate::common::*;
use pepler_cuda::backend::{AdamWParams, AdamWVariant};
use pepler_cuda::device::Device;
use pepler_cuda::kernels::adamw::{
    adamw_update, adamw_update_multi, AdamWPlan, AdamWTensor, ADAMW_CHUNK,
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
