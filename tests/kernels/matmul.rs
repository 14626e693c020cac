//! `matmul_forward` / `matmul_backward` (sgemm + kernels/matmul.cu) against `ops::matmul`, both
//! weight layouts, with and without bias, each gradient alone.

use super::emu_shuffled;
use crate::common::*;
use pepler_cuda::device::Device;
use pepler_cuda::kernels::matmul;
use pepler_cuda::ops::matmul::{self as cpu, WeightLayout};

/// (rows, cin, cout): odd sizes, a single row/column, rows over one 64-row bias chunk.
const SHAPES: &[(usize, usize, usize)] = &[(1, 1, 1), (7, 45, 33), (130, 19, 300), (65, 64, 1)];

struct MmCase {
    rows: usize,
    cin: usize,
    cout: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dout: Vec<f32>,
    dw0: Vec<f32>,
    db0: Vec<f32>,
}

impl MmCase {
    fn new(rows: usize, cin: usize, cout: usize, seed: u64) -> MmCase {
        MmCase {
            rows,
            cin,
            cout,
            x: rand_vec(rows * cin, seed, -1.0, 1.0),
            w: rand_vec(cin * cout, seed + 1, -0.5, 0.5),
            b: rand_vec(cout, seed + 2, -0.5, 0.5),
            dout: rand_vec(rows * cout, seed + 3, -1.0, 1.0),
            dw0: rand_vec(cin * cout, seed + 4, -0.1, 0.1),
            db0: rand_vec(cout, seed + 5, -0.1, 0.1),
        }
    }

    /// CPU: (out, dinp, dweight, dbias).
    fn reference(&self, layout: WeightLayout, bias: bool) -> [Vec<f32>; 4] {
        let (rows, cin, cout) = (self.rows, self.cin, self.cout);
        let mut out = vec![0.0; rows * cout];
        let b = bias.then_some(&self.b[..]);
        cpu::matmul_forward(&mut out, &self.x, &self.w, b, rows, cin, cout, layout);
        let mut dinp = vec![0.0; rows * cin];
        let (mut dw, mut db) = (self.dw0.clone(), self.db0.clone());
        cpu::matmul_backward(
            Some(&mut dinp),
            Some(&mut dw),
            Some(&mut db),
            &self.dout,
            &self.x,
            &self.w,
            rows,
            cin,
            cout,
            layout,
        );
        [out, dinp, dw, db]
    }

    /// Device, requesting the gradients in `grads` (dinp, dweight, dbias); absent ones come back as
    /// their initial values (NaN for dinp).
    fn run(
        &self,
        dev: &Device,
        layout: WeightLayout,
        bias: bool,
        grads: (bool, bool, bool),
    ) -> [Vec<f32>; 4] {
        let (rows, cin, cout) = (self.rows, self.cin, self.cout);
        let (x, w, b, dout) = (
            up(dev, &self.x),
            up(dev, &self.w),
            up(dev, &self.b),
            up(dev, &self.dout),
        );
        let mut out = up(dev, &vec![f32::NAN; rows * cout]);
        let bv = bias.then(|| b.view());
        matmul::matmul_forward(
            dev,
            out.view_mut(),
            x.view(),
            w.view(),
            bv,
            rows,
            cin,
            cout,
            layout,
        )
        .unwrap();
        let mut dinp = up(dev, &vec![f32::NAN; rows * cin]);
        let (mut dw, mut db) = (up(dev, &self.dw0), up(dev, &self.db0));
        let mut scratch = up(
            dev,
            &vec![f32::NAN; matmul::matmul_backward_scratch_len(rows, cout)],
        );
        matmul::matmul_backward(
            dev,
            grads.0.then(|| dinp.view_mut()),
            grads.1.then(|| dw.view_mut()),
            grads.2.then(|| db.view_mut()),
            scratch.view_mut(),
            dout.view(),
            x.view(),
            w.view(),
            rows,
            cin,
            cout,
            layout,
        )
        .unwrap();
        [out.view(), dinp.view(), dw.view(), db.view()].map(|v| down(dev, v))
    }
}

const NAMES: [&str; 4] = [
    "matmul.out",
    "matmul.dinp",
    "matmul.dweight",
    "matmul.dbias",
];
const LAYOUTS: [WeightLayout; 2] = [WeightLayout::InOut, WeightLayout::OutIn];

fn matmul_matches_reference(dev: &Device) {
    for (i, &(rows, cin, cout)) in SHAPES.iter().enumerate() {
        let case = MmCase::new(rows, cin, cout, 60 + i as u64);
        for layout in LAYOUTS {
            for bias in [true, false] {
                let want = case.reference(layout, bias);
                let got = case.run(dev, layout, bias, (true, true, true));
                let ctx = format!("rows={rows} cin={cin} cout={cout} {layout:?} bias={bias}");
                for k in 0..4 {
                    assert_close(NAMES[k], &ctx, &got[k], &want[k]);
                }
            }
        }
    }
}

fn matmul_backward_skips_absent_gradients(dev: &Device) {
    let case = MmCase::new(9, 13, 21, 3);
    for layout in LAYOUTS {
        let want = case.reference(layout, true);
        for k in 0..3 {
            let grads = (k == 0, k == 1, k == 2);
            let got = case.run(dev, layout, true, grads);
            let ctx = format!("{layout:?} only gradient {k}");
            assert_close(NAMES[k + 1], &ctx, &got[k + 1], &want[k + 1]);
            if k != 0 {
                assert!(got[1].iter().all(|v| v.is_nan()), "{ctx}: dinp written");
            }
            if k != 1 {
                assert_bits_eq(&format!("{ctx}: dweight untouched"), &got[2], &case.dw0);
            }
            if k != 2 {
                assert_bits_eq(&format!("{ctx}: dbias untouched"), &got[3], &case.db0);
            }
        }
    }
}

#[test]
fn matmul_forward_and_backward_match_cpu_on_emu() {
    matmul_matches_reference(&emu());
}

#[test]
fn matmul_backward_skips_absent_gradients_on_emu() {
    matmul_backward_skips_absent_gradients(&emu());
}

#[test]
fn matmul_backward_bias_is_bitwise_deterministic_across_schedules() {
    // 1000 rows: 16 row chunks of 64; cout 300: two column blocks
    let case = MmCase::new(1000, 3, 300, 11);
    let a = case.run(&emu(), WeightLayout::OutIn, true, (false, false, true));
    let b = case.run(
        &emu_shuffled(5),
        WeightLayout::OutIn,
        true,
        (false, false, true),
    );
    assert_bits_eq("dbias plain vs shuffled", &a[3], &b[3]);
    assert_close(
        "matmul.dbias",
        "rows=1000",
        &a[3],
        &case.reference(WeightLayout::OutIn, true)[3],
    );
}

#[test]
fn matmul_launchers_reject_bad_sizes() {
    let dev = emu();
    let a = dev.alloc::<f32>(12).unwrap();
    let mut out = dev.alloc::<f32>(12).unwrap();
    let err = matmul::matmul_forward(
        &dev,
        out.view_mut(),
        a.view(),
        a.slice(..11),
        None,
        3,
        4,
        3,
        WeightLayout::InOut,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("weight has 11 elements, needs at least 12"),
        "{err}"
    );
    let mut db = dev.alloc::<f32>(3).unwrap();
    let mut scratch = dev.alloc::<f32>(2).unwrap();
    let err = matmul::matmul_backward(
        &dev,
        None,
        None,
        Some(db.view_mut()),
        scratch.view_mut(),
        a.view(),
        a.view(),
        a.view(),
        3,
        4,
        3,
        WeightLayout::InOut,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("scratch has 2 elements, needs at least 3"),
        "{err}"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_forward_and_backward_match_cpu_on_cuda() {
    matmul_matches_reference(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_skips_absent_gradients_on_cuda() {
    matmul_backward_skips_absent_gradients(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_bias_is_bitwise_deterministic_on_cuda() {
    let dev = gpu();
    let case = MmCase::new(3328, 8, 768, 11);
    let a = case.run(&dev, WeightLayout::OutIn, true, (false, false, true));
    let b = case.run(&dev, WeightLayout::OutIn, true, (false, false, true));
    assert_bits_eq("dbias run vs run (cuda)", &a[3], &b[3]);
}
