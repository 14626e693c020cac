//! `residual_forward` (kernels/residual.cu) against `ops::residual`, for f32 and bf16 activations
//! (one body, generic over `A: Act`).

use crate::common::*;
use half::bf16;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::residual;
use pepler_cuda::ops;
use pepler_cuda::precision::Act;

fn residual_matches_reference<A: Act>(dev: &Device) {
    let p = A::PRECISION;
    for &n in &[1usize, 3, 45, 771, 7 * 771 + 2] {
        let (a, b) = (
            rounded::<A>(rand_vec(n, 1, -2.0, 2.0)),
            rounded::<A>(rand_vec(n, 2, -2.0, 2.0)),
        );
        let mut want = vec![0.0; n];
        ops::residual::residual_forward(&mut want, &a, &b);
        A::round_slice(&mut want);
        // aligned buffers (vector path + scalar tail)
        let (da, db) = (up_as::<A>(dev, &a), up_as::<A>(dev, &b));
        let mut out = up_as::<A>(dev, &vec![f32::NAN; n]);
        residual::residual_forward(dev, out.view_mut(), da.view(), db.view(), n).unwrap();
        assert_close_at(
            p,
            "residual.out",
            &format!("n={n} aligned"),
            &down_as(dev, out.view()),
            &want,
        );
        // views starting one element in: misaligned, scalar path
        let pad = |v: &[f32]| [&[7.0][..], v].concat();
        let (da, db) = (up_as::<A>(dev, &pad(&a)), up_as::<A>(dev, &pad(&b)));
        let mut out = up_as::<A>(dev, &vec![f32::NAN; n + 1]);
        residual::residual_forward(dev, out.slice_mut(1..), da.slice(1..), db.slice(1..), n)
            .unwrap();
        let got = down_as(dev, out.view());
        assert!(got[0].is_nan(), "residual wrote before its output view");
        assert_close_at(
            p,
            "residual.out",
            &format!("n={n} misaligned"),
            &got[1..],
            &want,
        );
    }
}

#[test]
fn residual_forward_matches_cpu_on_emu() {
    residual_matches_reference::<f32>(&emu());
}

#[test]
fn residual_forward_bf16_matches_cpu_on_emu() {
    residual_matches_reference::<bf16>(&emu());
}

/// The GPU and the emulated device agree bit for bit (one IEEE add, and in bf16 one rounding).
fn residual_cuda_and_emu_agree_bitwise<A: Act>(dev: &Device) {
    residual_matches_reference::<A>(dev);
    let emu = emu();
    let n = 5 * 771 + 3;
    let (a, b) = (rand_vec(n, 31, -3.0, 3.0), rand_vec(n, 32, -3.0, 3.0));
    let run = |d: &Device| {
        let (da, db) = (up_as::<A>(d, &a), up_as::<A>(d, &b));
        let mut out = d.alloc::<A>(n).unwrap();
        residual::residual_forward(d, out.view_mut(), da.view(), db.view(), n).unwrap();
        down_as(d, out.view())
    };
    assert_bits_eq(
        &format!("residual {} cuda vs emu", A::PRECISION),
        &run(dev),
        &run(&emu),
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_forward_matches_cpu_on_cuda_and_emu_bitwise() {
    residual_cuda_and_emu_agree_bitwise::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_forward_bf16_matches_cpu_on_cuda_and_emu_bitwise() {
    residual_cuda_and_emu_agree_bitwise::<bf16>(&gpu());
}
