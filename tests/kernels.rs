//! The first CUDA kernels (residual, gelu, layernorm, softmax) against their CPU references in
//! `pepler_cuda::ops`, through the typed launch wrappers in `pepler_cuda::kernels`, on the emulated
//! device (the exact kernel source, compiled for the host). Shapes are small and odd on purpose:
//! rows not a multiple of the 8 rows a block handles, c not a multiple of 4 or 32, c = 1.
//! GPU-only tests (`cargo test -- --ignored` on a machine with a GPU) run the same bodies on the
//! CUDA device and compare it with the emulated device.

mod common;

use common::*;
use pepler_cuda::device::{Device, EmuOptions};
use pepler_cuda::kernels::{gelu, layernorm, residual, softmax};
use pepler_cuda::ops;

/// Odd shapes: rows around the 8-rows-per-block boundary, c below/above a warp, not /4.
const ROWS: &[usize] = &[1, 7, 33];
const COLS: &[usize] = &[1, 3, 45, 771];
const EPS: f32 = 1e-5;

// ------------------------------------------------------------------------------------------
// test bodies, one per kernel, run on any device

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
            Some(dw.view_mut()),
            Some(db.view_mut()),
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

// ------------------------------------------------------------------------------------------
// emulated device

#[test]
fn residual_forward_matches_cpu_on_emu() {
    residual_matches_reference(&emu());
}

#[test]
fn gelu_forward_and_backward_match_cpu_on_emu() {
    gelu_matches_reference(&emu());
}

#[test]
fn softmax_forward_matches_cpu_on_emu() {
    softmax_matches_reference(&emu());
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

#[test]
fn launch_wrappers_reject_bad_sizes() {
    let dev = emu();
    let a = dev.alloc::<f32>(10).unwrap();
    let mut out = dev.alloc::<f32>(10).unwrap();
    let err = residual::residual_forward(&dev, out.view_mut(), a.view(), a.slice(..9), 10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("residual_forward: b has 9 elements, needs at least 10"),
        "{err}"
    );
    let err = softmax::softmax_forward(&dev, out.view_mut(), a.view(), 5, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("c must be > 0"), "{err}");
    let err = layernorm::layernorm_forward(
        &dev,
        out.view_mut(),
        None,
        None,
        a.view(),
        a.view(),
        a.slice(..4),
        2,
        5,
        EPS,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("bias has 4 elements, needs at least 5"),
        "{err}"
    );
    assert!(layernorm::layernorm_backward_scratch_len(1, 100_000).is_err());
    // zero-sized work is a no-op
    gelu::gelu_forward(&dev, out.view_mut(), a.view(), 0).unwrap();
}

// ------------------------------------------------------------------------------------------
// GPU-only: the same bodies on the CUDA device, and cuda vs emu where bits must agree

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

#[test]
#[ignore = "needs a CUDA GPU"]
fn gelu_forward_and_backward_match_cpu_on_cuda() {
    gelu_matches_reference(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn softmax_forward_matches_cpu_on_cuda() {
    softmax_matches_reference(&gpu());
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
