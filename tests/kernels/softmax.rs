//! `softmax_forward` (kernels/softmax.cu) against `ops::softmax`.

use super::{COLS, ROWS};
use crate::common::*;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::softmax;
use pepler_cuda::ops;

fn softmax_matches_reference(dev: &Device) {
    for &rows in ROWS {
        for &c in COLS {
            // large offsets per row: only a max-subtracted softmax survives them
            let mut x = rand_vec(rows * c, 5, -8.0, 8.0);
            for (r, row) in x.chunks_mut(c).enumerate() {
                row.iter_mut().for_each(|v| *v += 80.0 * r as f32 - 100.0);
            }
            let mut want = vec![0.0; rows * c];
            ops::softmax::softmax_forward(&mut want, &x, rows, c);
            let dx = up(dev, &x);
            let mut out = dev.alloc::<f32>(rows * c).unwrap();
            softmax::softmax_forward(dev, out.view_mut(), dx.view(), rows, c).unwrap();
            let got = down(dev, out.view());
            assert_close("softmax.out", &format!("rows={rows} c={c}"), &got, &want);
            assert!(got.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn softmax_forward_matches_cpu_on_emu() {
    softmax_matches_reference(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn softmax_forward_matches_cpu_on_cuda() {
    softmax_matches_reference(&gpu());
}
