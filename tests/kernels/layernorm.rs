//! `layernorm_forward` / `layernorm_backward` (kernels/layernorm.cu) against `ops::layernorm`.

use super::{COLS, EPS, ROWS};
use crate::common::*;
use pepler_cuda::device::{Device, EmuOptions};
use pepler_cuda::kernels::layernorm;
use pepler_cuda::ops;

struct LnCase {
    rows: usize,
    c: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dout: Vec<f32>,
    dinp0: Vec<f32>,
    dw0: Vec<f32>,
    db0: Vec<f32>,
}

impl LnCase {
    fn new(rows: usize, c: usize, seed: u64) -> LnCase {
        LnCase {
            rows,
            c,
            x: rand_vec(rows * c, seed, -3.0, 5.0),
            w: rand_vec(c, seed + 1, 0.5, 1.5),
            b: rand_vec(c, seed + 2, -0.5, 0.5),
            dout: rand_vec(rows * c, seed + 3, -1.0, 1.0),
            // non-zero starting gradients: the backward accumulates (+=)
            dinp0: rand_vec(rows * c, seed + 4, -0.1, 0.1),
            dw0: rand_vec(c, seed + 5, -0.1, 0.1),
            db0: rand_vec(c, seed + 6, -0.1, 0.1),
        }
    }

    /// CPU reference: (out, mean, rstd, dinp, dweight, dbias).
    fn reference(&self) -> [Vec<f32>; 6] {
        let (rows, c) = (self.rows, self.c);
        let (mut out, mut mean, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        ops::layernorm::layernorm_forward(
            &mut out, &mut mean, &mut rstd, &self.x, &self.w, &self.b, rows, c, EPS,
        );
        let (mut dinp, mut dw, mut db) = (self.dinp0.clone(), self.dw0.clone(), self.db0.clone());
        ops::layernorm::layernorm_backward(
            &mut dinp, &mut dw, &mut db, &self.dout, &self.x, &self.w, &mean, &rstd, rows, c,
        );
        [out, mean, rstd, dinp, dw, db]
    }

    /// Forward then backward on `dev`, backward from the CPU's mean/rstd so the two passes are
    /// checked independently: (out, mean, rstd, dinp, dweight, dbias).
    fn run(&self, dev: &Device, cpu_mean: &[f32], cpu_rstd: &[f32]) -> [Vec<f32>; 6] {
        self.run_grads(dev, cpu_mean, cpu_rstd, (true, true))
    }

    /// [`LnCase::run`] requesting only the weight gradients in `grads` (dweight, dbias); the others
    /// come back as their initial values.
    fn run_grads(
        &self,
        dev: &Device,
        cpu_mean: &[f32],
        cpu_rstd: &[f32],
        grads: (bool, bool),
    ) -> [Vec<f32>; 6] {
        let (rows, c) = (self.rows, self.c);
        let (x, w, b) = (up(dev, &self.x), up(dev, &self.w), up(dev, &self.b));
        let mut out = dev.upload(&vec![f32::NAN; rows * c]).unwrap();
        let mut mean = dev.upload(&vec![f32::NAN; rows]).unwrap();
        let mut rstd = dev.upload(&vec![f32::NAN; rows]).unwrap();
        layernorm::layernorm_forward(
            dev,
            out.view_mut(),
            Some(mean.view_mut()),
            Some(rstd.view_mut()),
            x.view(),
            w.view(),
            b.view(),
            rows,
            c,
            EPS,
        )
        .unwrap();

        let (m, r) = (up(dev, cpu_mean), up(dev, cpu_rstd));
        let mut dinp = up(dev, &self.dinp0);
        let mut dw = up(dev, &self.dw0);
        let mut db = up(dev, &self.db0);
        let dout = up(dev, &self.dout);
        // garbage scratch: the kernel must not depend on its contents
        let mut scratch = dev
            .upload(&vec![
                f32::NAN;
                layernorm::layernorm_backward_scratch_len(rows, c)
                    .unwrap()
            ])
            .unwrap();
        layernorm::layernorm_backward(
            dev,
            dinp.view_mut(),
            grads.0.then(|| dw.view_mut()),
            grads.1.then(|| db.view_mut()),
            scratch.view_mut(),
            dout.view(),
            x.view(),
            w.view(),
            m.view(),
            r.view(),
            rows,
            c,
        )
        .unwrap();
        [
            out.view(),
            mean.view(),
            rstd.view(),
            dinp.view(),
            dw.view(),
            db.view(),
        ]
        .map(|v| down(dev, v))
    }
}

const LN_NAMES: [&str; 6] = [
    "layernorm.out",
    "layernorm.mean",
    "layernorm.rstd",
    "layernorm.dinp",
    "layernorm.dweight",
    "layernorm.dbias",
];

fn layernorm_matches_reference(dev: &Device) {
    for &rows in ROWS {
        for &c in COLS {
            let case = LnCase::new(rows, c, 10 + rows as u64 * 1000 + c as u64);
            let want = case.reference();
            let got = case.run(dev, &want[1], &want[2]);
            for i in 0..6 {
                assert_close(
                    LN_NAMES[i],
                    &format!("rows={rows} c={c}"),
                    &got[i],
                    &want[i],
                );
            }
        }
    }
}

#[test]
fn layernorm_forward_and_backward_match_cpu_on_emu() {
    layernorm_matches_reference(&emu());
}

#[test]
fn layernorm_forward_without_mean_rstd_writes_only_out() {
    let dev = emu();
    let case = LnCase::new(9, 45, 77);
    let want = case.reference();
    let (x, w, b) = (up(&dev, &case.x), up(&dev, &case.w), up(&dev, &case.b));
    let mut out = dev.alloc::<f32>(9 * 45).unwrap();
    layernorm::layernorm_forward(
        &dev,
        out.view_mut(),
        None,
        None,
        x.view(),
        w.view(),
        b.view(),
        9,
        45,
        EPS,
    )
    .unwrap();
    assert_close(
        "layernorm.out",
        "no mean/rstd",
        &down(&dev, out.view()),
        &want[0],
    );
}

#[test]
fn layernorm_backward_is_bitwise_deterministic_across_runs_and_schedules() {
    // Pass 1 strides over rows and pass 2 sums 256 partials: any order dependence would show.
    // c = 3073: 2 warps' accumulators (2*2*3073 floats) exceed 48 KiB, so one warp per block;
    // 260 rows > 256 blocks, so blocks 0..3 take a second row.
    let (rows, c) = (260, 3073);
    let (_, _, blocks) = layernorm::layernorm_backward_config(rows, c).unwrap();
    assert_eq!(blocks, 256);
    assert_eq!(
        layernorm::layernorm_backward_config(rows, c)
            .unwrap()
            .0
            .block,
        (32, 1, 1)
    );
    let case = LnCase::new(rows, c, 99);
    let want = case.reference();
    let plain = emu();
    let first = case.run(&plain, &want[1], &want[2]);
    let second = case.run(&plain, &want[1], &want[2]);
    let shuffled = Device::emu_with(EmuOptions {
        shuffle: Some(Some(12345)),
        ..Default::default()
    })
    .unwrap();
    let third = case.run(&shuffled, &want[1], &want[2]);
    for i in 3..6 {
        assert_bits_eq(
            &format!("{} run 1 vs run 2", LN_NAMES[i]),
            &first[i],
            &second[i],
        );
        assert_bits_eq(
            &format!("{} plain vs shuffled schedule", LN_NAMES[i]),
            &first[i],
            &third[i],
        );
        assert_close(LN_NAMES[i], "rows=260 c=3073", &first[i], &want[i]);
    }
}

fn layernorm_backward_skips_absent_weight_gradients(dev: &Device) {
    let case = LnCase::new(33, 771, 61);
    let want = case.reference();
    for grads in [(false, false), (true, false), (false, true)] {
        let got = case.run_grads(dev, &want[1], &want[2], grads);
        let ctx = format!("grads={grads:?}");
        assert_close("layernorm.dinp", &ctx, &got[3], &want[3]);
        if grads.0 {
            assert_close("layernorm.dweight", &ctx, &got[4], &want[4]);
        } else {
            assert_bits_eq(&format!("dweight untouched {ctx}"), &got[4], &case.dw0);
        }
        if grads.1 {
            assert_close("layernorm.dbias", &ctx, &got[5], &want[5]);
        } else {
            assert_bits_eq(&format!("dbias untouched {ctx}"), &got[5], &case.db0);
        }
    }
    // without weight gradients the scratch is not needed at all
    let (rows, c) = (case.rows, case.c);
    let (x, w, m, r) = (
        up(dev, &case.x),
        up(dev, &case.w),
        up(dev, &want[1]),
        up(dev, &want[2]),
    );
    let (mut dinp, dout) = (up(dev, &case.dinp0), up(dev, &case.dout));
    let mut empty = dev.alloc::<f32>(0).unwrap();
    layernorm::layernorm_backward(
        dev,
        dinp.view_mut(),
        None,
        None,
        empty.view_mut(),
        dout.view(),
        x.view(),
        w.view(),
        m.view(),
        r.view(),
        rows,
        c,
    )
    .unwrap();
    assert_close(
        "layernorm.dinp",
        "no scratch",
        &down(dev, dinp.view()),
        &want[3],
    );
}

fn residual_layernorm_matches_reference(dev: &Device) {
    for &rows in ROWS {
        for &c in COLS {
            let ctx = format!("rows={rows} c={c}");
            let case = LnCase::new(rows, c, 500 + rows as u64 * 7 + c as u64);
            let b = rand_vec(rows * c, 3 + c as u64, -2.0, 2.0);
            let n = rows * c;
            let (mut resid, mut out) = (vec![0.0; n], vec![0.0; n]);
            let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
            ops::layernorm::residual_layernorm_forward(
                &mut resid, &mut out, &mut mean, &mut rstd, &case.x, &b, &case.w, &case.b, rows, c,
                EPS,
            );
            let (da, db) = (up(dev, &case.x), up(dev, &b));
            let (dw, dbias) = (up(dev, &case.w), up(dev, &case.b));
            let mut g_resid = up(dev, &vec![f32::NAN; n]);
            let mut g_out = up(dev, &vec![f32::NAN; n]);
            let mut g_mean = up(dev, &vec![f32::NAN; rows]);
            let mut g_rstd = up(dev, &vec![f32::NAN; rows]);
            layernorm::residual_layernorm_forward(
                dev,
                g_resid.view_mut(),
                g_out.view_mut(),
                Some(g_mean.view_mut()),
                Some(g_rstd.view_mut()),
                da.view(),
                db.view(),
                dw.view(),
                dbias.view(),
                rows,
                c,
                EPS,
            )
            .unwrap();
            assert_close("residual.out", &ctx, &down(dev, g_resid.view()), &resid);
            assert_close("layernorm.out", &ctx, &down(dev, g_out.view()), &out);
            assert_close("layernorm.mean", &ctx, &down(dev, g_mean.view()), &mean);
            assert_close("layernorm.rstd", &ctx, &down(dev, g_rstd.view()), &rstd);
        }
    }
}

#[test]
fn layernorm_backward_skips_absent_weight_gradients_on_emu() {
    layernorm_backward_skips_absent_weight_gradients(&emu());
}

#[test]
fn residual_layernorm_forward_matches_cpu_on_emu() {
    residual_layernorm_matches_reference(&emu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_skips_absent_weight_gradients_on_cuda() {
    layernorm_backward_skips_absent_weight_gradients(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn residual_layernorm_forward_matches_cpu_on_cuda() {
    residual_layernorm_matches_reference(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_forward_and_backward_match_cpu_on_cuda() {
    layernorm_matches_reference(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layernorm_backward_is_bitwise_deterministic_on_cuda() {
    let dev = gpu();
    // GPT-2 small's width, a realistic number of rows
    let case = LnCase::new(4096, 768, 5);
    let want = case.reference();
    let first = case.run(&dev, &want[1], &want[2]);
    let second = case.run(&dev, &want[1], &want[2]);
    for i in 3..6 {
        assert_bits_eq(
            &format!("{} run 1 vs run 2 (cuda)", LN_NAMES[i]),
            &first[i],
            &second[i],
        );
    }
    for i in 0..6 {
        assert_close(LN_NAMES[i], "rows=4096 c=768 (cuda)", &first[i], &want[i]);
    }
}
