//! `dropout_forward` (kernels/dropout.cu) against `ops::dropout`: the same mask and values, bit for
//! bit, in place and out of place, for extreme seeds, steps and sites, for f32 and bf16
//! activations (one body, generic over `A: Act`; in bf16 the f32 product is rounded once).

use crate::common::*;
use half::bf16;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::dropout::{dropout_forward, dropout_forward_inplace};
use pepler_cuda::ops::dropout::{self as cpu, DropoutSite};
use pepler_cuda::precision::Act;

fn sites() -> Vec<DropoutSite> {
    let s = |p, seed, step, site| DropoutSite {
        p,
        seed,
        step,
        site,
    };
    vec![
        s(0.1, 42, 1, 0),
        s(0.5, u64::MAX, 1 << 40, u32::MAX),
        s(0.0, 7, 3, 11),
        s(0.9, 0, 0, 5),
    ]
}

fn dropout_matches_reference<A: Act>(dev: &Device) {
    let prec = A::PRECISION;
    for &n in &[1usize, 45, 4099] {
        let x = rounded::<A>(rand_vec(n, 12 + n as u64, -3.0, 3.0));
        for site in sites() {
            let ctx = format!("{prec} n={n} {site:?}");
            let mut want = vec![0.0; n];
            cpu::dropout_forward(&mut want, &x, &site);
            A::round_slice(&mut want);
            let dx = up_as::<A>(dev, &x);
            let mut out = up_as::<A>(dev, &vec![f32::NAN; n]);
            dropout_forward(dev, out.view_mut(), dx.view(), site, n).unwrap();
            let got = down_as(dev, out.view());
            assert_close_at(prec, "dropout.out", &ctx, &got, &want);
            assert_bits_eq(&ctx, &got, &want);
            let mut buf = up_as::<A>(dev, &x);
            dropout_forward_inplace(dev, buf.view_mut(), site, n).unwrap();
            assert_bits_eq(&format!("in place {ctx}"), &down_as(dev, buf.view()), &want);
            // in place on a view one element in (misaligned: bf16's element-by-element path); the
            // mask counts from the view's first element
            let mut buf = up_as::<A>(dev, &[&[5.0][..], &x].concat());
            dropout_forward_inplace(dev, buf.slice_mut(1..), site, n).unwrap();
            let got = down_as(dev, buf.view());
            assert_eq!(got[0], 5.0, "{ctx}: wrote before its view");
            assert_bits_eq(&format!("in place misaligned {ctx}"), &got[1..], &want);
        }
    }
    // p = 0.5 drops about half
    let n = 4099;
    let mut ones = up_as::<A>(dev, &vec![1.0; n]);
    dropout_forward_inplace(dev, ones.view_mut(), sites()[1], n).unwrap();
    let kept = down_as(dev, ones.view())
        .iter()
        .filter(|&&v| v == 2.0)
        .count();
    assert!((1900..2200).contains(&kept), "kept {kept} of {n}");
}

#[test]
fn dropout_forward_is_bit_identical_to_cpu_on_emu() {
    dropout_matches_reference::<f32>(&emu());
}

#[test]
fn dropout_forward_bf16_is_bit_identical_to_cpu_on_emu() {
    dropout_matches_reference::<bf16>(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dropout_forward_is_bit_identical_to_cpu_on_cuda() {
    dropout_matches_reference::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dropout_forward_bf16_is_bit_identical_to_cpu_on_cuda() {
    dropout_matches_reference::<bf16>(&gpu());
}
