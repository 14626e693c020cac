//! `residual_forward` (kernels/residual.cu) against `ops::residual`.

use crate::common::*;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::residual;
use pepler_cuda::ops;

fn residual_matches_reference(dev: &Device) {
    for &n in &[1usize, 3, 45, 771, 7 * 771 + 2] {
        let (a, b) = (rand_vec(n, 1, -2.0, 2.0), rand_vec(n, 2, -2.0, 2.0));
        let mut want = vec![0.0; n];
        ops::residual::residual_forward(&mut want, &a, &b);
        // aligned buffers (float4 path + scalar tail)
        let (da, db) = (up(dev, &a), up(dev, &b));
        let mut out = dev.upload(&vec![f32::NAN; n]).unwrap();
        residual::residual_forward(dev, out.view_mut(), da.view(), db.view(), n).unwrap();
        assert_close(
            "residual.out",
            &format!("n={n} aligned"),
            &down(dev, out.view()),
            &want,
        );
        // views starting one element in: misaligned, scalar path
        let pad = |v: &[f32]| [&[7.0][..], v].concat();
        let (da, db) = (up(dev, &pad(&a)), up(dev, &pad(&b)));
        let mut out = dev.upload(&vec![f32::NAN; n + 1]).unwrap();
        residual::residual_forward(dev, out.slice_mut(1..), da.slice(1..), db.slice(1..), n)
            .unwrap();
        let got = down(dev, out.view());
        assert!(got[0].is_nan(), "residual wrote before its output view");
        assert_close(
            "residual.out",
            &format!("n={n} misaligned"),
            &got[1..],
            &want,
        );
    }
}

#[test]
fn residual_forward_matches_cpu_on_emu() {
    residual_matches_reference(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_forward_matches_cpu_on_cuda_and_emu_bitwise() {
    let dev = gpu();
    residual_matches_reference(&dev);
    let emu = emu();
    let n = 5 * 771 + 3;
    let (a, b) = (rand_vec(n, 31, -3.0, 3.0), rand_vec(n, 32, -3.0, 3.0));
    let run = |d: &Device| {
        let (da, db) = (up(d, &a), up(d, &b));
        let mut out = d.alloc::<f32>(n).unwrap();
        residual::residual_forward(d, out.view_mut(), da.view(), db.view(), n).unwrap();
        down(d, out.view())
    };
    assert_bits_eq("residual cuda vs emu", &run(&dev), &run(&emu));
}
