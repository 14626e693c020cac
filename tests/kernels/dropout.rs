//! `dropout_forward` (kernels/dropout.cu) against `ops::dropout`: the same mask and values, bit for
//! bit, in place and out of place, for extreme seeds, steps and sites.

use crate::common::*;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::dropout::{dropout_forward, dropout_forward_inplace};
use pepler_cuda::ops::dropout::{self as cpu, DropoutSite};

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

fn dropout_matches_reference(dev: &Device) {
    for &n in &[1usize, 45, 4099] {
        let x = rand_vec(n, 12 + n as u64, -3.0, 3.0);
        for site in sites() {
            let ctx = format!("n={n} {site:?}");
            let mut want = vec![0.0; n];
            cpu::dropout_forward(&mut want, &x, &site);
            let dx = up(dev, &x);
            let mut out = up(dev, &vec![f32::NAN; n]);
            dropout_forward(dev, out.view_mut(), dx.view(), site, n).unwrap();
            assert_close("dropout.out", &ctx, &down(dev, out.view()), &want);
            assert_bits_eq(&ctx, &down(dev, out.view()), &want);
            let mut buf = up(dev, &x);
            dropout_forward_inplace(dev, buf.view_mut(), site, n).unwrap();
            assert_bits_eq(&format!("in place {ctx}"), &down(dev, buf.view()), &want);
        }
    }
    // p = 0.5 drops about half
    let n = 4099;
    let mut ones = up(dev, &vec![1.0; n]);
    dropout_forward_inplace(dev, ones.view_mut(), sites()[1], n).unwrap();
    let kept = down(dev, ones.view()).iter().filter(|&&v| v == 2.0).count();
    assert!((1900..2200).contains(&kept), "kept {kept} of {n}");
}

#[test]
fn dropout_forward_is_bit_identical_to_cpu_on_emu() {
    dropout_matches_reference(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dropout_forward_is_bit_identical_to_cpu_on_cuda() {
    dropout_matches_reference(&gpu());
}
