//! `matmul_forward` / `matmul_backward` (sgemm or the bf16 GEMM + kernels/matmul.cu) against
//! `ops::matmul`, both weight layouts, with and without bias, each gradient alone, in f32 and in
//! bf16 (the reference: the f32 op on the bf16 inputs widened, `out`/`dinp` rounded to bf16;
//! `dweight`/`dbias` are f32 on both sides); and the bf16 GEMM's epilogue kernel.

use super::emu_shuffled;
use crate::common::*;
use half::bf16;
use pepler_cuda::device::{Device, DeviceBuffer, KernelArg, LaunchConfig, View};
use pepler_cuda::kernels::matmul;
use pepler_cuda::ops::matmul::{self as cpu, WeightLayout};
use pepler_cuda::precision::Act;

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

/// Upload f32 values as `A` (rounded once for bf16).
fn up_act<A: Act>(dev: &Device, xs: &[f32]) -> DeviceBuffer<A> {
    let v: Vec<A> = xs.iter().map(|&x| A::from_f32(x)).collect();
    dev.upload(&v).unwrap()
}

/// Download `A` values widened to f32.
fn down_act<A: Act>(dev: &Device, v: View<'_, A>) -> Vec<f32> {
    dev.download(v)
        .unwrap()
        .iter()
        .map(|x| x.to_f32())
        .collect()
}

impl MmCase {
    /// Activations (x, w as the GEMM's weight copy, dout) representable in `A`: generated as f32,
    /// rounded; the bias and the gradients' initial values stay f32.
    fn new<A: Act>(rows: usize, cin: usize, cout: usize, seed: u64) -> MmCase {
        let act = |n, seed, lo, hi| {
            let mut v = rand_vec(n, seed, lo, hi);
            A::round_slice(&mut v);
            v
        };
        MmCase {
            rows,
            cin,
            cout,
            x: act(rows * cin, seed, -1.0, 1.0),
            w: act(cin * cout, seed + 1, -0.5, 0.5),
            b: rand_vec(cout, seed + 2, -0.5, 0.5),
            dout: act(rows * cout, seed + 3, -1.0, 1.0),
            dw0: rand_vec(cin * cout, seed + 4, -0.1, 0.1),
            db0: rand_vec(cout, seed + 5, -0.1, 0.1),
        }
    }

    /// CPU: (out, dinp, dweight, dbias), the activation outputs rounded to `A`.
    fn reference<A: Act>(&self, layout: WeightLayout, bias: bool) -> [Vec<f32>; 4] {
        let [mut out, mut dinp, dw, db] = self.reference_f32(layout, bias);
        A::round_slice(&mut out);
        A::round_slice(&mut dinp);
        [out, dinp, dw, db]
    }

    fn reference_f32(&self, layout: WeightLayout, bias: bool) -> [Vec<f32>; 4] {
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
    fn run<A: Act>(
        &self,
        dev: &Device,
        layout: WeightLayout,
        bias: bool,
        grads: (bool, bool, bool),
    ) -> [Vec<f32>; 4] {
        let (rows, cin, cout) = (self.rows, self.cin, self.cout);
        let (x, w, b, dout) = (
            up_act::<A>(dev, &self.x),
            up_act::<A>(dev, &self.w),
            up(dev, &self.b),
            up_act::<A>(dev, &self.dout),
        );
        let mut out = up_act::<A>(dev, &vec![f32::NAN; rows * cout]);
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
        let mut dinp = up_act::<A>(dev, &vec![f32::NAN; rows * cin]);
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
        [
            down_act(dev, out.view()),
            down_act(dev, dinp.view()),
            down(dev, dw.view()),
            down(dev, db.view()),
        ]
    }
}

const NAMES: [&str; 4] = [
    "matmul.out",
    "matmul.dinp",
    "matmul.dweight",
    "matmul.dbias",
];
const LAYOUTS: [WeightLayout; 2] = [WeightLayout::InOut, WeightLayout::OutIn];

fn matmul_matches_reference<A: Act>(dev: &Device) {
    for (i, &(rows, cin, cout)) in SHAPES.iter().enumerate() {
        let case = MmCase::new::<A>(rows, cin, cout, 60 + i as u64);
        for layout in LAYOUTS {
            for bias in [true, false] {
                let want = case.reference::<A>(layout, bias);
                let got = case.run::<A>(dev, layout, bias, (true, true, true));
                let ctx = format!(
                    "{:?} rows={rows} cin={cin} cout={cout} {layout:?} bias={bias}",
                    A::PRECISION
                );
                for k in 0..4 {
                    assert_close_at(A::PRECISION, NAMES[k], &ctx, &got[k], &want[k]);
                }
            }
        }
    }
}

fn matmul_backward_skips_absent_gradients<A: Act>(dev: &Device) {
    let case = MmCase::new::<A>(9, 13, 21, 3);
    for layout in LAYOUTS {
        let want = case.reference::<A>(layout, true);
        for k in 0..3 {
            let grads = (k == 0, k == 1, k == 2);
            let got = case.run::<A>(dev, layout, true, grads);
            let ctx = format!("{:?} {layout:?} only gradient {k}", A::PRECISION);
            assert_close_at(A::PRECISION, NAMES[k + 1], &ctx, &got[k + 1], &want[k + 1]);
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

fn matmul_backward_bias_is_deterministic<A: Act>() {
    // 1000 rows: 16 row chunks of 64; cout 300: two column blocks
    let case = MmCase::new::<A>(1000, 3, 300, 11);
    let a = case.run::<A>(&emu(), WeightLayout::OutIn, true, (false, false, true));
    let b = case.run::<A>(
        &emu_shuffled(5),
        WeightLayout::OutIn,
        true,
        (false, false, true),
    );
    assert_bits_eq("dbias plain vs shuffled", &a[3], &b[3]);
    assert_close_at(
        A::PRECISION,
        "matmul.dbias",
        "rows=1000",
        &a[3],
        &case.reference::<A>(WeightLayout::OutIn, true)[3],
    );
}

#[test]
fn matmul_forward_and_backward_match_cpu_on_emu() {
    matmul_matches_reference::<f32>(&emu());
}

#[test]
fn matmul_bf16_forward_and_backward_match_cpu_on_emu() {
    matmul_matches_reference::<bf16>(&emu());
}

#[test]
fn matmul_backward_skips_absent_gradients_on_emu() {
    matmul_backward_skips_absent_gradients::<f32>(&emu());
    matmul_backward_skips_absent_gradients::<bf16>(&emu());
}

#[test]
fn matmul_backward_bias_is_bitwise_deterministic_across_schedules() {
    matmul_backward_bias_is_deterministic::<f32>();
    matmul_backward_bias_is_deterministic::<bf16>();
}

#[test]
fn matmul_bf16_at_odd_offsets_matches_aligned() {
    // every activation view starts one element into its buffer (2-byte aligned bf16 pointers)
    let dev = emu();
    let (rows, cin, cout) = (7, 45, 33);
    let case = MmCase::new::<bf16>(rows, cin, cout, 70);
    let want = case.run::<bf16>(&dev, WeightLayout::OutIn, true, (true, true, true));
    let pad = |v: &[f32]| [&[0.25f32][..], v].concat();
    let (x, w, dout) = (
        up_act::<bf16>(&dev, &pad(&case.x)),
        up_act::<bf16>(&dev, &pad(&case.w)),
        up_act::<bf16>(&dev, &pad(&case.dout)),
    );
    let b = up(&dev, &pad(&case.b));
    let mut out = up_act::<bf16>(&dev, &vec![f32::NAN; rows * cout + 1]);
    matmul::matmul_forward(
        &dev,
        out.slice_mut(1..),
        x.slice(1..),
        w.slice(1..),
        Some(b.slice(1..)),
        rows,
        cin,
        cout,
        WeightLayout::OutIn,
    )
    .unwrap();
    let mut dinp = up_act::<bf16>(&dev, &vec![f32::NAN; rows * cin + 1]);
    let (mut dw, mut db) = (up(&dev, &pad(&case.dw0)), up(&dev, &pad(&case.db0)));
    let mut scratch = up(
        &dev,
        &vec![f32::NAN; matmul::matmul_backward_scratch_len(rows, cout)],
    );
    matmul::matmul_backward(
        &dev,
        Some(dinp.slice_mut(1..)),
        Some(dw.slice_mut(1..)),
        Some(db.slice_mut(1..)),
        scratch.view_mut(),
        dout.slice(1..),
        x.slice(1..),
        w.slice(1..),
        rows,
        cin,
        cout,
        WeightLayout::OutIn,
    )
    .unwrap();
    let got = [
        down_act(&dev, out.slice(1..)),
        down_act(&dev, dinp.slice(1..)),
        down(&dev, dw.slice(1..)),
        down(&dev, db.slice(1..)),
    ];
    for k in 0..4 {
        assert_bits_eq(&format!("{} at an odd offset", NAMES[k]), &got[k], &want[k]);
    }
}

/// `gemm_epilogue_{f32,bf16}` (the CUDA bf16 GEMM's fallback epilogue) against the host epilogue
/// of the emulated GEMM (`gemm_epilogue_value`: the same f32 operations): bit for bit, on a padded
/// batched C, with and without acc / bias / beta; padding and gaps untouched.
fn gemm_epilogue_matches_host<T: Act>(dev: &Device) {
    use pepler_cuda::device::gemm::gemm_epilogue_value;
    let (m, n, ldd, batch) = (37usize, 5usize, 40usize, 2usize);
    let stride = ldd * n + 3;
    let len = stride * batch;
    let c0 = rand_vec(len, 90, -2.0, 2.0);
    let acc = rand_vec(m * n * batch, 91, -3.0, 3.0);
    let bias = rand_vec(m, 92, -1.0, 1.0);
    let name = match T::PRECISION {
        Precision::Fp32 => "gemm_epilogue_f32",
        Precision::Bf16 => "gemm_epilogue_bf16",
    };
    for (with_acc, with_bias, beta) in [
        (true, true, 0.0f32),
        (true, false, 1.0),
        (false, true, -0.5),
    ] {
        let mut d = up_act::<T>(dev, &c0);
        let dacc = up(dev, &acc);
        let dbias = up(dev, &bias);
        let null = pepler_cuda::device::DevPtr::NULL;
        let args = [
            KernelArg::from(&d.view_mut()),
            if with_acc {
                dacc.view().into()
            } else {
                KernelArg::Ptr(null)
            },
            if with_bias {
                dbias.view().into()
            } else {
                KernelArg::Ptr(null)
            },
            beta.into(),
            (m as i32).into(),
            (n as i32).into(),
            (ldd as i32).into(),
            (stride as i64).into(),
            (batch as i32).into(),
        ];
        let grid = (m * n * batch).div_ceil(256) as u32;
        // SAFETY: args match `gemm_epilogue_*(T*, const float*, const float*, float, int, int,
        // int, long long, int)`; d holds batch*stride elements, acc m*n*batch, bias m.
        unsafe { dev.launch(name, &LaunchConfig::linear(grid, 256, 0), &args) }.unwrap();
        let got = down_act(dev, d.view());
        let old: Vec<T> = c0.iter().map(|&x| T::from_f32(x)).collect();
        let mut want: Vec<f32> = old.iter().map(|x| x.to_f32()).collect();
        for b in 0..batch {
            for j in 0..n {
                for i in 0..m {
                    let k = b * stride + j * ldd + i;
                    let a = if with_acc {
                        acc[b * m * n + j * m + i]
                    } else {
                        0.0
                    };
                    let bi = if with_bias { bias[i] } else { 0.0 };
                    want[k] = gemm_epilogue_value(a, beta, old[k], bi).to_f32();
                }
            }
        }
        assert_bits_eq(
            &format!("{name} acc={with_acc} bias={with_bias} beta={beta}"),
            &got,
            &want,
        );
    }
}

#[test]
fn gemm_epilogue_kernels_match_the_host_epilogue_on_emu() {
    gemm_epilogue_matches_host::<f32>(&emu());
    gemm_epilogue_matches_host::<bf16>(&emu());
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
    matmul_matches_reference::<f32>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_bf16_forward_and_backward_match_cpu_on_cuda() {
    matmul_matches_reference::<bf16>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_skips_absent_gradients_on_cuda() {
    matmul_backward_skips_absent_gradients::<f32>(&gpu());
    matmul_backward_skips_absent_gradients::<bf16>(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemm_epilogue_kernels_match_the_host_epilogue_on_cuda() {
    gemm_epilogue_matches_host::<f32>(&gpu());
    gemm_epilogue_matches_host::<bf16>(&gpu());
}

fn matmul_backward_bias_is_deterministic_on<A: Act>(dev: &Device) {
    let case = MmCase::new::<A>(3328, 8, 768, 11);
    let a = case.run::<A>(dev, WeightLayout::OutIn, true, (false, false, true));
    let b = case.run::<A>(dev, WeightLayout::OutIn, true, (false, false, true));
    assert_bits_eq("dbias run vs run (cuda)", &a[3], &b[3]);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn matmul_backward_bias_is_bitwise_deterministic_on_cuda() {
    let dev = gpu();
    matmul_backward_bias_is_deterministic_on::<f32>(&dev);
    matmul_backward_bias_is_deterministic_on::<bf16>(&dev);
}
