//! `gelu_forward` / `gelu_backward` (kernels/gelu.cu) against `ops::gelu`.

use crate::common::*;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::gelu;
use pepler_cuda::ops;

fn gelu_matches_reference(dev: &Device) {
    for &n in &[1usize, 45, 771, 3 * 771] {
        let x = rand_vec(n, 3, -6.0, 6.0);
        let g = rand_vec(n, 4, -1.0, 1.0);
        let mut want = vec![0.0; n];
        ops::gelu::gelu_forward(&mut want, &x);
        let (dx, dg) = (up(dev, &x), up(dev, &g));
        let mut out = dev.alloc::<f32>(n).unwrap();
        gelu::gelu_forward(dev, out.view_mut(), dx.view(), n).unwrap();
        assert_close("gelu.out", &format!("n={n}"), &down(dev, out.view()), &want);

        let mut want = vec![0.0; n];
        ops::gelu::gelu_backward(&mut want, &x, &g);
        // `=` semantics: whatever was in dinp is overwritten
        let mut dinp = dev.upload(&vec![123.0; n]).unwrap();
        gelu::gelu_backward(dev, dinp.view_mut(), dx.view(), dg.view(), n).unwrap();
        assert_close(
            "gelu.dinp",
            &format!("n={n}"),
            &down(dev, dinp.view()),
            &want,
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
    gelu_matches_reference(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_forward_and_backward_match_cpu_on_cuda() {
    gelu_matches_reference(&gpu());
}
