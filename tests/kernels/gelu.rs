//! `gelu_forward` / `gelu_backward` (kernels/gelu.cu) against `ops::gelu`, for f32 and bf16
//! activations (one body, generic over `A: Act`), and the fp32-only `bias_gelu_forward`.

use crate::common::*;
use half::bf16;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::gelu;
use pepler_cuda::ops;
use pepler_cuda::precision::Act;

/// The reference on `A`-rounded inputs with its output rounded to `A` (see `crate::precision`).
fn gelu_matches_reference<A: Act>(dev: &Device) {
    let p = A::PRECISION;
    for &n in &[1usize, 45, 771, 3 * 771] {
        let x = rounded::<A>(rand_vec(n, 3, -6.0, 6.0));
        let g = rounded::<A>(rand_vec(n, 4, -1.0, 1.0));
        let mut want = vec![0.0; n];
        ops::gelu::gelu_forward(&mut want, &x);
        A::round_slice(&mut want);
        let (dx, dg) = (up_as::<A>(dev, &x), up_as::<A>(dev, &g));
        let mut out = dev.alloc::<A>(n).unwrap();
        gelu::gelu_forward(dev, out.view_mut(), dx.view(), n).unwrap();
        let got = down_as(dev, out.view());
        assert_close_at(p, "gelu.out", &format!("n={n}"), &got, &want);

        // the same values through views one element in (misaligned: bf16's element-by-element
        // path), with a poisoned guard before the output that must stay untouched
        let pad = |v: &[f32]| [&[7.0][..], v].concat();
        let (dx1, dg1) = (up_as::<A>(dev, &pad(&x)), up_as::<A>(dev, &pad(&g)));
        let mut out1 = up_as::<A>(dev, &vec![f32::NAN; n + 1]);
        gelu::gelu_forward(dev, out1.slice_mut(1..), dx1.slice(1..), n).unwrap();
        let got1 = down_as(dev, out1.view());
        assert!(
            got1[0].is_nan(),
            "gelu_forward wrote before its output view"
        );
        assert_bits_eq(
            &format!("gelu.out {p} n={n} aligned vs misaligned"),
            &got1[1..],
            &got,
        );

        let mut want = vec![0.0; n];
        ops::gelu::gelu_backward(&mut want, &x, &g);
        A::round_slice(&mut want);
        // `=` semantics: whatever was in dinp is overwritten
        let mut dinp = up_as::<A>(dev, &vec![123.0; n]);
        gelu::gelu_backward(dev, dinp.view_mut(), dx.view(), dg.view(), n).unwrap();
        let got = down_as(dev, dinp.view());
        assert_close_at(p, "gelu.dinp", &format!("n={n}"), &got, &want);
        let mut dinp1 = up_as::<A>(dev, &vec![f32::NAN; n + 1]);
        gelu::gelu_backward(dev, dinp1.slice_mut(1..), dx1.slice(1..), dg1.slice(1..), n).unwrap();
        let got1 = down_as(dev, dinp1.view());
        assert!(
            got1[0].is_nan(),
            "gelu_backward wrote before its output view"
        );
        assert_bits_eq(
            &format!("gelu.dinp {p} n={n} aligned vs misaligned"),
            &got1[1..],
            &got,
        );
    }
}

/// The fused bias + GELU: `pre` gets exactly the bias add of `matmul_forward` (one f32 add) and
/// `out` the GELU of it, at odd shapes; `=`/`+=` as documented, nothing written past the rows.
fn bias_gelu_matches_reference(dev: &Device) {
    for &(rows, c) in &[(1usize, 1usize), (7, 45), (33, 771)] {
        let n = rows * c;
        let pre0 = rand_vec(n, 5, -4.0, 4.0);
        let bias = rand_vec(c, 6, -1.0, 1.0);
        let (mut want_pre, mut want_out) = (pre0.clone(), vec![0.0; n]);
        ops::gelu::bias_gelu_forward(&mut want_pre, &mut want_out, &bias, c);
        let mut pre = dev.upload(&[pre0.clone(), vec![7.0]].concat()).unwrap();
        let mut out = dev.upload(&vec![f32::NAN; n + 1]).unwrap();
        let b = up(dev, &bias);
        gelu::bias_gelu_forward(dev, pre.view_mut(), out.view_mut(), b.view(), rows, c).unwrap();
        let (got_pre, got_out) = (down(dev, pre.view()), down(dev, out.view()));
        let ctx = format!("rows={rows} c={c}");
        assert_close("bias_gelu.pre", &ctx, &got_pre[..n], &want_pre);
        assert_close("gelu.out", &ctx, &got_out[..n], &want_out);
        assert_eq!(got_pre[n], 7.0, "{ctx}: wrote past pre");
        assert!(got_out[n].is_nan(), "{ctx}: wrote past out");
    }
    let (mut p, mut o, b) = (
        dev.alloc(4).unwrap(),
        dev.alloc(4).unwrap(),
        up(dev, &[0.0; 2]),
    );
    assert!(gelu::bias_gelu_forward(dev, p.view_mut(), o.view_mut(), b.view(), 3, 2).is_err());
}

#[test]
fn bias_gelu_forward_matches_cpu_on_emu() {
    bias_gelu_matches_reference(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bias_gelu_forward_matches_cpu_on_cuda() {
    bias_gelu_matches_reference(&gpu());
}

#[test]
fn gelu_forward_and_backward_match_cpu_on_emu() {
    gelu_matches_reference::<f32>(&emu());
}

#[test]
fn gelu_forward_and_backward_bf16_match_cpu_on_emu() {
    gelu_matches_reference::<bf16>(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_forward_and_backward_match_cpu_on_cuda() {
    gelu_matches_reference::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_forward_and_backward_bf16_match_cpu_on_cuda() {
    gelu_matches_reference::<bf16>(&gpu());
}
