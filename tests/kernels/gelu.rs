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

#[test]
fn gelu_forward_and_backward_match_cpu_on_emu() {
    gelu_matches_reference(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_forward_and_backward_match_cpu_on_cuda() {
    gelu_matches_reference(&gpu());
}
