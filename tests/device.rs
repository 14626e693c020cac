//! Device layer tests: memory on the emulated device, the cuBLAS-semantics CPU GEMM against a
//! naive triple loop (all transposes, padded leading dimensions, strided batches, cuBLAS's
//! argument rejections), and the CUDA device's behaviour on a machine without a GPU.
//! GPU-only tests (`cargo test -- --ignored`) run the same GEMMs through cuBLAS.

mod common;

use common::assert_close;
use pepler_cuda::device::gemm::{sgemm_reference, sgemm_slices};
use pepler_cuda::device::{Device, DeviceKind, GemmOp, LaunchConfig, SgemmConfig};

/// Deterministic pseudo-random values in [-1, 1).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    common::rand_vec(n, seed, -1.0, 1.0)
}

/// A GEMM case: sizes, transposes, padding of each leading dimension, batch and stride gaps.
#[derive(Clone, Copy, Debug)]
struct Case {
    ta: GemmOp,
    tb: GemmOp,
    m: usize,
    n: usize,
    k: usize,
    pad: [usize; 3],
    batch: usize,
    gap: [usize; 3],
    alpha: f32,
    beta: f32,
}

impl Case {
    fn config(&self) -> SgemmConfig {
        let rows_a = if self.ta == GemmOp::N { self.m } else { self.k };
        let rows_b = if self.tb == GemmOp::N { self.k } else { self.n };
        let (lda, ldb, ldc) = (
            rows_a.max(1) + self.pad[0],
            rows_b.max(1) + self.pad[1],
            self.m.max(1) + self.pad[2],
        );
        let cols_a = if self.ta == GemmOp::N { self.k } else { self.m };
        let cols_b = if self.tb == GemmOp::N { self.n } else { self.k };
        SgemmConfig::new(
            self.ta, self.tb, self.m, self.n, self.k, self.alpha, lda, ldb, self.beta, ldc,
        )
        .batched(
            self.batch,
            lda * cols_a + self.gap[0],
            ldb * cols_b + self.gap[1],
            ldc * self.n + self.gap[2],
        )
    }

    /// (A, B, C) host data of exactly the lengths the call touches.
    fn data(&self, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let [la, lb, lc] = self.config().required_lens().unwrap();
        (
            rand_vec(la, seed),
            rand_vec(lb, seed + 1),
            rand_vec(lc, seed + 2),
        )
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for ta in [GemmOp::N, GemmOp::T] {
        for tb in [GemmOp::N, GemmOp::T] {
            // tight leading dimensions, single problem
            v.push(Case {
                ta,
                tb,
                m: 7,
                n: 5,
                k: 9,
                pad: [0; 3],
                batch: 1,
                gap: [0; 3],
                alpha: 1.0,
                beta: 0.0,
            });
            // padded leading dimensions, alpha/beta
            v.push(Case {
                ta,
                tb,
                m: 13,
                n: 6,
                k: 70,
                pad: [3, 1, 2],
                batch: 1,
                gap: [0; 3],
                alpha: 0.5,
                beta: -1.25,
            });
            // strided batch with gaps between matrices
            v.push(Case {
                ta,
                tb,
                m: 5,
                n: 11,
                k: 4,
                pad: [1, 0, 3],
                batch: 3,
                gap: [2, 5, 1],
                alpha: -2.0,
                beta: 1.0,
            });
        }
    }
    // large enough to take the multithreaded path of the CPU GEMM
    v.push(Case {
        ta: GemmOp::T,
        tb: GemmOp::N,
        m: 96,
        n: 80,
        k: 64,
        pad: [0; 3],
        batch: 1,
        gap: [0; 3],
        alpha: 1.0,
        beta: 1.0,
    });
    // k == 0: C = beta * C
    v.push(Case {
        ta: GemmOp::N,
        tb: GemmOp::N,
        m: 4,
        n: 3,
        k: 0,
        pad: [0; 3],
        batch: 2,
        gap: [0; 3],
        alpha: 1.0,
        beta: 0.5,
    });
    v
}

fn run_device_gemm(dev: &Device, cfg: &SgemmConfig, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
    let (da, db) = (dev.upload(a).unwrap(), dev.upload(b).unwrap());
    let mut dc = dev.upload(c).unwrap();
    dev.sgemm(cfg, da.view(), db.view(), dc.view_mut()).unwrap();
    dev.download(dc.view()).unwrap()
}

fn check_gemm_cases(dev: &Device) {
    for (i, case) in cases().iter().enumerate() {
        let cfg = case.config();
        let (a, b, c) = case.data(100 + i as u64);
        let mut want = c.clone();
        sgemm_reference(&cfg, &a, &b, &mut want).unwrap();
        let got = run_device_gemm(dev, &cfg, &a, &b, &c);
        let ctx = format!("{} gemm case {i} {case:?}", dev.kind());
        assert_close("gemm.c", &ctx, &got, &want);
    }
}

#[test]
fn emu_gemm_matches_naive_for_all_transposes_ld_and_batches() {
    check_gemm_cases(&Device::emu().unwrap());
}

// ------------------------------------------------------------------------------------------
// bf16 GEMM (Device::gemm_bf16): bf16 A/B, f32 compute, C bf16 (rounded once) or f32, f32 bias.

use half::bf16;
use pepler_cuda::device::gemm::gemm_bf16_reference;
use pepler_cuda::precision::Act;

/// The bf16 cases: every op combination at odd m/n/k (tight and padded leading dimensions,
/// batches with gaps, beta 0 and not), the large multithreaded one and k == 0 of `cases()`.
fn bf16_cases() -> Vec<Case> {
    cases()
}

fn to_bf16(xs: &[f32]) -> Vec<bf16> {
    xs.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// Device vs reference for one output type, with and without bias.
fn check_gemm_bf16_cases_for<C: Act>(dev: &Device, name: &str) {
    for (i, case) in bf16_cases().iter().enumerate() {
        let cfg = case.config();
        let (a, b, c) = case.data(300 + i as u64);
        let (a, b) = (to_bf16(&a), to_bf16(&b));
        let c: Vec<C> = c.iter().map(|&x| C::from_f32(x)).collect();
        let bias = common::rand_vec(case.m, 400 + i as u64, -0.5, 0.5);
        for with_bias in [false, true] {
            let bias = with_bias.then_some(&bias[..]);
            let mut want = c.clone();
            gemm_bf16_reference(&cfg, &a, &b, &mut want, bias).unwrap();
            let (da, db) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
            let mut dc = dev.upload(&c).unwrap();
            let dbias = bias.map(|b| dev.upload(b).unwrap());
            dev.gemm_bf16(
                &cfg,
                da.view(),
                db.view(),
                dc.view_mut(),
                dbias.as_ref().map(|b| b.view()),
            )
            .unwrap();
            let got = dev.download(dc.view()).unwrap();
            let ctx = format!(
                "{} gemm_bf16 case {i} C={:?} bias={with_bias} {case:?}",
                dev.kind(),
                C::DTYPE
            );
            let (got, want): (Vec<f32>, Vec<f32>) = (
                got.iter().map(|x| x.to_f32()).collect(),
                want.iter().map(|x| x.to_f32()).collect(),
            );
            common::assert_close_at(common::Bf16, name, &ctx, &got, &want);
            // ld padding and batch gaps keep their values (bit for bit)
            for (k, (g, c0)) in got.iter().zip(&c).enumerate() {
                let (bi, rest) = (k / cfg.stride_c.max(1), k % cfg.stride_c.max(1));
                let (j, r) = (rest / cfg.ldc, rest % cfg.ldc);
                let inside = case.batch > 0 && bi < case.batch && j < case.n && r < case.m;
                if !inside {
                    assert_eq!(
                        g.to_bits(),
                        c0.to_f32().to_bits(),
                        "{ctx}: element {k} touched"
                    );
                }
            }
        }
    }
}

fn check_gemm_bf16_cases(dev: &Device) {
    check_gemm_bf16_cases_for::<bf16>(dev, "gemm.c");
    check_gemm_bf16_cases_for::<f32>(dev, "gemm.c_f32");
}

#[test]
fn emu_gemm_bf16_matches_f64_reference_for_all_transposes_ld_and_batches() {
    check_gemm_bf16_cases(&Device::emu().unwrap());
}

/// A views at odd element offsets (2-byte aligned bf16 pointers) must give the same result as
/// aligned ones: on a GPU cuBLASLt gets the real alignment of every pointer.
fn gemm_bf16_at_odd_offsets(dev: &Device) {
    let cfg = SgemmConfig::new(GemmOp::T, GemmOp::N, 33, 7, 45, 1.0, 45, 45, 0.0, 33);
    let [la, lb, lc] = cfg.required_lens().unwrap();
    let a = to_bf16(&rand_vec(la + 1, 5));
    let b = to_bf16(&rand_vec(lb + 3, 6));
    let bias = rand_vec(cfg.m + 1, 7);
    let (da, db, dbias) = (
        dev.upload(&a).unwrap(),
        dev.upload(&b).unwrap(),
        dev.upload(&bias).unwrap(),
    );
    let mut want = vec![bf16::ZERO; lc];
    gemm_bf16_reference(&cfg, &a[1..], &b[3..], &mut want, Some(&bias[1..])).unwrap();
    let mut dc = dev.alloc::<bf16>(lc + 1).unwrap();
    dev.gemm_bf16(
        &cfg,
        da.slice(1..),
        db.slice(3..),
        dc.slice_mut(1..),
        Some(dbias.slice(1..)),
    )
    .unwrap();
    let got: Vec<f32> = dev
        .download(dc.slice(1..))
        .unwrap()
        .iter()
        .map(|x| x.to_f32())
        .collect();
    let want: Vec<f32> = want.iter().map(|x| x.to_f32()).collect();
    common::assert_close_at(common::Bf16, "gemm.c", "odd offsets", &got, &want);
}

#[test]
fn emu_gemm_bf16_at_odd_offsets() {
    gemm_bf16_at_odd_offsets(&Device::emu().unwrap());
}

#[test]
fn gemm_bf16_output_is_initialised_and_errors_are_errors() {
    // strict mode: an alloc_uninit C written by the GEMM downloads fine (initcheck sees the host
    // GEMM's writes), and bad arguments are errors naming gemm_bf16
    let dev = Device::emu_with(pepler_cuda::device::EmuOptions {
        strict: Some(true),
        ..Default::default()
    })
    .unwrap();
    let cfg = SgemmConfig::new(GemmOp::N, GemmOp::N, 3, 2, 4, 1.0, 3, 4, 0.0, 3);
    let a = dev.upload(&to_bf16(&rand_vec(12, 1))).unwrap();
    let b = dev.upload(&to_bf16(&rand_vec(8, 2))).unwrap();
    let mut c = dev.alloc_uninit::<bf16>(6).unwrap();
    dev.gemm_bf16(&cfg, a.view(), b.view(), c.view_mut(), None)
        .unwrap();
    assert!(dev
        .download(c.view())
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
    let mut c32 = dev.alloc_uninit::<f32>(6).unwrap();
    dev.sgemm(
        &cfg,
        dev.upload(&rand_vec(12, 1)).unwrap().view(),
        dev.upload(&rand_vec(8, 2)).unwrap().view(),
        c32.view_mut(),
    )
    .unwrap();
    assert!(dev
        .download(c32.view())
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
    let short = dev.upload(&[0.5f32; 2]).unwrap();
    let err = dev
        .gemm_bf16(&cfg, a.view(), b.view(), c.view_mut(), Some(short.view()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bias has 2 elements but C has m = 3 rows"),
        "{err}"
    );
    let err = dev
        .gemm_bf16(&cfg, a.slice(..11), b.view(), c.view_mut(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gemm_bf16") && err.contains("buffer A has 11 elements"),
        "{err}"
    );
    let other = Device::emu().unwrap();
    let err = other
        .gemm_bf16(&cfg, a.view(), b.view(), c.view_mut(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("belongs to device"), "{err}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemm_bf16_matches_f64_reference_for_all_transposes_ld_and_batches_on_cuda() {
    check_gemm_bf16_cases(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemm_bf16_at_odd_offsets_on_cuda() {
    gemm_bf16_at_odd_offsets(&gpu());
}

#[test]
fn host_gemm_leaves_padding_and_gaps_untouched() {
    // Elements of C outside the m x n matrices (ld padding, batch gaps) must keep their values.
    let case = Case {
        ta: GemmOp::T,
        tb: GemmOp::T,
        m: 3,
        n: 4,
        k: 5,
        pad: [0, 0, 2],
        batch: 2,
        gap: [0, 0, 3],
        alpha: 1.0,
        beta: 0.0,
    };
    let cfg = case.config();
    let (a, b, _) = case.data(7);
    let mut c = vec![42.0f32; cfg.required_lens().unwrap()[2] + 4];
    sgemm_slices(&cfg, &a, &b, &mut c).unwrap();
    for bi in 0..2 {
        for j in 0..4 {
            for i in 0..cfg.ldc {
                let idx = bi * cfg.stride_c + j * cfg.ldc + i;
                if i >= 3 {
                    assert_eq!(c[idx], 42.0, "padding at {idx} overwritten");
                } else {
                    assert_ne!(c[idx], 42.0, "output at {idx} not written");
                }
            }
        }
    }
    assert!(
        c[cfg.stride_c - 3..cfg.stride_c].iter().all(|&v| v == 42.0),
        "batch gap overwritten"
    );
}

#[test]
fn gemm_beta_zero_ignores_nan_in_c() {
    let dev = Device::emu().unwrap();
    let cfg = SgemmConfig::new(GemmOp::N, GemmOp::T, 2, 3, 2, 1.0, 2, 3, 0.0, 2);
    let (a, b) = (rand_vec(4, 1), rand_vec(6, 2));
    let got = run_device_gemm(&dev, &cfg, &a, &b, &[f32::NAN; 6]);
    assert!(got.iter().all(|v| v.is_finite()), "{got:?}");
}

#[test]
fn gemm_rejects_what_cublas_rejects() {
    let dev = Device::emu().unwrap();
    let buf = dev.alloc::<f32>(1000).unwrap();
    let mut out = dev.alloc::<f32>(1000).unwrap();
    let bad = [
        // lda < m for op(A) = N
        (
            SgemmConfig::new(GemmOp::N, GemmOp::N, 8, 4, 5, 1.0, 7, 5, 0.0, 8),
            "lda=7",
        ),
        // lda < k for op(A) = T
        (
            SgemmConfig::new(GemmOp::T, GemmOp::N, 8, 4, 5, 1.0, 4, 5, 0.0, 8),
            "lda=4",
        ),
        // ldb < k for op(B) = N
        (
            SgemmConfig::new(GemmOp::N, GemmOp::N, 8, 4, 5, 1.0, 8, 4, 0.0, 8),
            "ldb=4",
        ),
        // ldb < n for op(B) = T
        (
            SgemmConfig::new(GemmOp::N, GemmOp::T, 8, 4, 5, 1.0, 8, 3, 0.0, 8),
            "ldb=3",
        ),
        // ldc < m
        (
            SgemmConfig::new(GemmOp::N, GemmOp::N, 8, 4, 5, 1.0, 8, 5, 0.0, 6),
            "ldc=6",
        ),
        // ld of 0 for an empty matrix (cuBLAS requires >= 1)
        (
            SgemmConfig::new(GemmOp::N, GemmOp::N, 0, 4, 5, 1.0, 0, 5, 0.0, 1),
            "lda=0",
        ),
        // batched outputs overlap
        (
            SgemmConfig::new(GemmOp::N, GemmOp::N, 4, 4, 4, 1.0, 4, 4, 0.0, 4)
                .batched(2, 16, 16, 15),
            "stride_c",
        ),
    ];
    for (cfg, needle) in bad {
        let err = dev
            .sgemm(&cfg, buf.view(), buf.view(), out.view_mut())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle),
            "{cfg:?}: error {err:?} should mention {needle}"
        );
    }
    // buffers too short for the extents
    let cfg = SgemmConfig::new(GemmOp::N, GemmOp::N, 10, 10, 10, 1.0, 10, 10, 0.0, 10);
    let err = dev
        .sgemm(&cfg, buf.slice(..99), buf.view(), out.view_mut())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("buffer A has 99 elements but the call touches 100"),
        "{err}"
    );
    // batch 0 is a valid no-op
    let cfg = cfg.batched(0, 100, 100, 100);
    dev.sgemm(&cfg, buf.slice(..0), buf.slice(..0), out.slice_mut(..0))
        .unwrap();
}

#[test]
fn memory_roundtrips_for_every_element_type() {
    let dev = Device::emu().unwrap();
    let f: Vec<f32> = rand_vec(37, 3);
    assert_eq!(dev.download(dev.upload(&f).unwrap().view()).unwrap(), f);
    let i: Vec<i32> = (-20..17).collect();
    assert_eq!(dev.download(dev.upload(&i).unwrap().view()).unwrap(), i);
    let u: Vec<u32> = (0..37).map(|v| v * 1000 + 50257).collect();
    assert_eq!(dev.download(dev.upload(&u).unwrap().view()).unwrap(), u);
    let h: Vec<half::bf16> = f.iter().map(|&v| half::bf16::from_f32(v)).collect();
    assert_eq!(dev.download(dev.upload(&h).unwrap().view()).unwrap(), h);

    // alloc is zero-filled; zero/htod/dtod on sub-ranges touch only those ranges
    let mut buf = dev.alloc::<f32>(10).unwrap();
    assert_eq!(dev.download(buf.view()).unwrap(), vec![0.0; 10]);
    dev.htod(&[1.0, 2.0, 3.0], buf.slice_mut(2..5)).unwrap();
    let src = dev.upload(&[9.0f32, 8.0]).unwrap();
    dev.dtod(src.view(), buf.slice_mut(8..)).unwrap();
    assert_eq!(
        dev.download(buf.view()).unwrap(),
        [0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 9.0, 8.0]
    );
    let (_, mut right) = buf.view_mut().split_at_mut(3);
    dev.zero(right.slice_mut(..1)).unwrap();
    assert_eq!(dev.download(buf.slice(2..5)).unwrap(), [1.0, 0.0, 3.0]);
    dev.synchronize().unwrap();

    // empty buffers are fine
    let empty = dev.alloc::<u32>(0).unwrap();
    assert!(dev.download(empty.view()).unwrap().is_empty());
}

#[test]
fn memory_errors_are_errors() {
    let dev = Device::emu().unwrap();
    let other = Device::emu().unwrap();
    let mut buf = dev.alloc::<f32>(4).unwrap();
    let err = dev
        .htod(&[1.0, 2.0], buf.view_mut())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("htod") && err.contains('2') && err.contains('4'),
        "{err}"
    );
    let err = other.download(buf.view()).unwrap_err().to_string();
    assert!(err.contains("belongs to device"), "{err}");
    let bad = LaunchConfig {
        grid: (1, 1, 1),
        block: (1025, 1, 1),
        dyn_smem: 0,
    };
    assert!(bad.validate("k").unwrap_err().to_string().contains("1024"));
    let bad = LaunchConfig::linear(0, 32, 0);
    assert!(bad.validate("k").is_err());
    let bad = LaunchConfig::linear(1, 32, 64 * 1024);
    assert!(bad
        .validate("k")
        .unwrap_err()
        .to_string()
        .contains("shared memory"));
}

#[test]
fn device_kind_parses() {
    assert_eq!("cuda".parse::<DeviceKind>().unwrap(), DeviceKind::Cuda);
    assert_eq!("EMU".parse::<DeviceKind>().unwrap(), DeviceKind::Emu);
    assert_eq!(" auto ".parse::<DeviceKind>().unwrap(), DeviceKind::Auto);
    let err = "gpu".parse::<DeviceKind>().unwrap_err().to_string();
    assert!(err.contains("cuda, emu, auto"), "{err}");
    assert_eq!(DeviceKind::Emu.to_string(), "emu");
}

#[test]
fn cuda_without_driver_is_a_clear_error_and_auto_falls_back() {
    // SAFETY: only probes whether the driver library can be loaded.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    let kernels = pepler_cuda::device::embedded::KERNELS_FATBIN.is_some();
    let cuda = std::panic::catch_unwind(Device::cuda).expect("Device::cuda must not panic");
    let auto = Device::auto().unwrap();
    if !driver {
        let err = format!("{:#}", cuda.unwrap_err());
        assert!(err.contains("no NVIDIA driver found (libcuda.so"), "{err}");
        assert!(err.contains("--device emu"), "{err}");
        assert_eq!(auto.kind(), DeviceKind::Emu);
        assert!(
            auto.note().unwrap().contains("no NVIDIA driver found"),
            "{:?}",
            auto.note()
        );
    } else if !kernels {
        let err = format!("{:#}", cuda.unwrap_err());
        assert!(err.contains("built without CUDA kernels"), "{err}");
        assert_eq!(auto.kind(), DeviceKind::Emu);
    } else {
        // A GPU machine: cuda may still fail (no visible GPU), but with an error, not a panic.
        if let Ok(d) = cuda {
            assert_eq!(d.kind(), DeviceKind::Cuda);
            assert_eq!(auto.kind(), DeviceKind::Cuda);
        }
    }
    assert_eq!(
        Device::open(DeviceKind::Emu).unwrap().kind(),
        DeviceKind::Emu
    );
}

// ------------------------------------------------------------------------------------------
// GPU-only

fn gpu() -> Device {
    Device::cuda().expect("this test needs a CUDA GPU (run with --ignored only on a GPU machine)")
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemm_matches_naive_for_all_transposes_ld_and_batches_on_cuda() {
    check_gemm_cases(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn memory_roundtrips_and_rejects_bad_ld_on_cuda() {
    let dev = gpu();
    let f = rand_vec(1001, 9);
    let mut buf = dev.upload(&f).unwrap();
    assert_eq!(dev.download(buf.view()).unwrap(), f);
    dev.zero(buf.slice_mut(1..3)).unwrap();
    assert_eq!(
        dev.download(buf.slice(0..4)).unwrap(),
        [f[0], 0.0, 0.0, f[3]]
    );
    let cfg = SgemmConfig::new(GemmOp::N, GemmOp::N, 8, 4, 5, 1.0, 7, 5, 0.0, 8);
    let mut out = dev.alloc::<f32>(100).unwrap();
    assert!(dev
        .sgemm(&cfg, buf.view(), buf.view(), out.view_mut())
        .is_err());
}

// ------------------------------------------------------------------------------------------
// Kernel argument checks (both devices) and the signature table build.rs reads from the sources.

/// Argument mistakes a GPU would turn into garbage parameters: wrong count, a scalar where a
/// pointer goes, a float where an int goes, an 8-byte int where a 4-byte one goes.
fn check_argument_errors(dev: &Device) {
    use pepler_cuda::device::KernelArg;
    let mut out = dev.alloc::<f32>(64).unwrap();
    let cfg = LaunchConfig::linear(1, 32, 0);
    let cases: Vec<(Vec<KernelArg>, &str)> = vec![
        (
            vec![KernelArg::from(&out.view_mut())],
            "takes 2 parameters, 1 arguments",
        ),
        (
            vec![1i32.into(), 1i32.into()],
            "parameter 0 `out` is `float*` (8 bytes) but an i32",
        ),
        (
            vec![KernelArg::from(&out.view_mut()), 1.0f32.into()],
            "parameter 1 `n` is `int` (4 bytes) but an f32",
        ),
        (
            vec![KernelArg::from(&out.view_mut()), 1i64.into()],
            "parameter 1 `n` is `int` (4 bytes) but an i64 (8 bytes)",
        ),
    ];
    for (args, want) in cases {
        // SAFETY: every case is rejected before the kernel runs (that is what is tested).
        let err = unsafe { dev.launch("emu_strict_write_past_end", &cfg, &args) }.unwrap_err();
        assert!(format!("{err:#}").contains(want), "{want:?} not in {err:#}");
    }
    // SAFETY: as above: no such kernel.
    let err = unsafe { dev.launch("no_such_kernel", &cfg, &[]) }.unwrap_err();
    assert!(
        format!("{err:#}").contains("no kernel of that name"),
        "{err:#}"
    );
}

#[test]
fn kernel_arguments_are_checked_against_the_source_signature() {
    check_argument_errors(&Device::emu().unwrap());
}

#[test]
fn signature_table_agrees_with_the_cpp_compiler() {
    use pepler_cuda::device::emu_ffi;
    use pepler_cuda::device::sigs::{self, ParamKind};
    let all = sigs::all();
    assert!(all.iter().any(|k| k.name == "layernorm_forward"));
    for k in all {
        let cpp = emu_ffi::kernel_param_sizes(k.name)
            .unwrap_or_else(|| panic!("{} not in the emulator", k.name));
        assert_eq!(cpp.len(), k.params.len(), "{}: parameter count", k.name);
        for (p, &size) in k.params.iter().zip(&cpp) {
            if p.kind != ParamKind::Other {
                assert_eq!(p.size, size, "{} parameter `{}` ({})", k.name, p.name, p.ty);
            }
        }
    }
    let ln = sigs::lookup("layernorm_forward").unwrap();
    let names: Vec<_> = ln.params.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        ["out", "mean", "rstd", "inp", "weight", "bias", "rows", "c", "eps"]
    );
    assert_eq!(ln.params[3].ty, "const float*");
    assert_eq!(ln.params[3].kind, ParamKind::ConstPtr);
    assert_eq!(ln.params[0].kind, ParamKind::Ptr);
    assert_eq!(ln.params[8].kind, ParamKind::F32);
    assert_eq!(ln.file, "kernels/layernorm.cu");
}

#[test]
fn alloc_uninit_is_poisoned_and_writes_make_it_readable() {
    let dev = Device::emu_with(pepler_cuda::device::EmuOptions {
        strict: Some(true),
        ..Default::default()
    })
    .unwrap();
    let mut buf = dev.alloc_uninit::<f32>(8).unwrap();
    let err = format!("{:#}", dev.download(buf.view()).unwrap_err());
    assert!(
        err.contains("element 0") && err.contains("8 element(s)"),
        "{err}"
    );
    dev.htod(&[1.0, 2.0], buf.slice_mut(0..2)).unwrap();
    dev.zero(buf.slice_mut(2..4)).unwrap();
    assert_eq!(dev.download(buf.slice(0..4)).unwrap(), [1.0, 2.0, 0.0, 0.0]);
    let err = format!("{:#}", dev.download(buf.view()).unwrap_err());
    assert!(
        err.contains("element 4") && err.contains("4 element(s)"),
        "{err}"
    );
    // a device copy carries the state: written elements stay readable, the others do not
    let mut copy = dev.alloc::<f32>(8).unwrap();
    dev.dtod(buf.view(), copy.view_mut()).unwrap();
    assert_eq!(
        dev.download(copy.slice(0..4)).unwrap(),
        [1.0, 2.0, 0.0, 0.0]
    );
    assert!(dev.download(copy.slice(3..5)).is_err());
    // unchecked, the poison is NaN (0xFF bytes)
    let lax = Device::emu_with(pepler_cuda::device::EmuOptions {
        strict: Some(false),
        ..Default::default()
    })
    .unwrap();
    let raw = lax.alloc_uninit::<u32>(4).unwrap();
    assert_eq!(lax.download(raw.view()).unwrap(), [u32::MAX; 4]);
    assert!(
        dev.alloc::<f32>(4)
            .map(|b| dev.download(b.view()).unwrap())
            .unwrap()
            == [0.0; 4]
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn kernel_arguments_are_checked_on_cuda() {
    check_argument_errors(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dynamic_shared_memory_opt_in_on_cuda() {
    use pepler_cuda::device::KernelArg;
    let dev = gpu();
    let mut out = dev.alloc::<f32>(32).unwrap();
    let big = LaunchConfig::linear(1, 32, 64 * 1024);
    let args = [KernelArg::from(&out.view_mut()), 0i32.into()];
    // SAFETY: emu_strict_smem_oob(float*, int) with 32 threads writes out[0..32) and smem[0..32).
    assert!(unsafe { dev.launch("emu_strict_smem_oob", &big, &args) }.is_err());
    dev.opt_in_dyn_smem("emu_strict_smem_oob", 64 * 1024)
        .unwrap();
    // SAFETY: as above.
    unsafe { dev.launch("emu_strict_smem_oob", &big, &args) }.unwrap();
    assert_eq!(dev.download(out.view()).unwrap(), vec![1.0; 32]);
}

// ------------------------------------------------------------------------------------------
// Graphs (Device::capture, Graph::launch)

use pepler_cuda::device::DeviceBuffer;
use pepler_cuda::kernels::{adamw::cast_f32_to_bf16, gelu, matmul as mm};
use pepler_cuda::ops::matmul::WeightLayout;

const G_ROWS: usize = 9;
const G_CIN: usize = 13;
const G_COUT: usize = 7;

/// The buffers of the graph tests' work: an input, the activations it produces, a weight
/// gradient that accumulates (+=) across launches.
struct GraphBufs {
    x: DeviceBuffer<f32>,
    h: DeviceBuffer<f32>,
    h2: DeviceBuffer<f32>,
    z: DeviceBuffer<f32>,
    w: DeviceBuffer<f32>,
    b: DeviceBuffer<f32>,
    y: DeviceBuffer<f32>,
    xb: DeviceBuffer<bf16>,
    wb: DeviceBuffer<bf16>,
    yb: DeviceBuffer<bf16>,
    dw: DeviceBuffer<f32>,
    scratch: DeviceBuffer<f32>,
}

impl GraphBufs {
    fn new(dev: &Device) -> GraphBufs {
        let up = |v: Vec<f32>| dev.upload(&v).unwrap();
        let w = rand_vec(G_CIN * G_COUT, 21);
        GraphBufs {
            x: up(vec![0.25; G_ROWS * G_CIN]),
            h: up(vec![0.5; G_ROWS * G_CIN]),
            h2: up(vec![0.5; G_ROWS * G_CIN]),
            z: up(vec![3.0; 17]),
            wb: dev.upload(&to_bf16(&w)).unwrap(),
            w: up(w),
            b: up(rand_vec(G_COUT, 22)),
            y: up(vec![0.5; G_ROWS * G_COUT]),
            xb: dev.upload(&[bf16::ONE; G_ROWS * G_CIN]).unwrap(),
            yb: dev.upload(&[bf16::ONE; G_ROWS * G_COUT]).unwrap(),
            dw: up(rand_vec(G_CIN * G_COUT, 23)),
            scratch: up(vec![0.0; 1]),
        }
    }

    /// Queues the work: every kind of op a graph records (kernel launches, a device copy, a
    /// memset, an f32 GEMM + bias kernel, a bf16 GEMM with its bias epilogue, an accumulating
    /// weight-gradient GEMM): 8 ops.
    fn queue(&mut self, dev: &Device) -> anyhow::Result<()> {
        let (n, l) = (G_ROWS * G_CIN, WeightLayout::InOut);
        gelu::gelu_forward(dev, self.h.view_mut(), self.x.view(), n)?;
        dev.dtod(self.h.view(), self.h2.view_mut())?;
        dev.zero(self.z.view_mut())?;
        mm::matmul_forward(
            dev,
            self.y.view_mut(),
            self.h2.view(),
            self.w.view(),
            Some(self.b.view()),
            G_ROWS,
            G_CIN,
            G_COUT,
            l,
        )?;
        cast_f32_to_bf16(dev, self.xb.view_mut(), self.x.view(), n)?;
        mm::matmul_forward(
            dev,
            self.yb.view_mut(),
            self.xb.view(),
            self.wb.view(),
            Some(self.b.view()),
            G_ROWS,
            G_CIN,
            G_COUT,
            l,
        )?;
        mm::matmul_backward(
            dev,
            None,
            Some(self.dw.view_mut()),
            None,
            self.scratch.view_mut(),
            self.y.view(),
            self.h2.view(),
            self.w.view(),
            G_ROWS,
            G_CIN,
            G_COUT,
            l,
        )
    }

    /// Every output, widened to f32.
    fn outputs(&self, dev: &Device) -> Vec<Vec<f32>> {
        let f = |b: &DeviceBuffer<f32>| dev.download(b.view()).unwrap();
        let h = |b: &DeviceBuffer<bf16>| {
            dev.download(b.view())
                .unwrap()
                .iter()
                .map(|x| x.to_f32())
                .collect()
        };
        vec![
            f(&self.h),
            f(&self.h2),
            f(&self.z),
            f(&self.y),
            h(&self.xb),
            h(&self.yb),
            f(&self.dw),
        ]
    }
}

const GRAPH_OUTPUTS: [&str; 7] = ["h", "h2", "z", "y", "xb", "yb", "dw"];

/// Capture runs nothing; replaying on new input data gives the bits of running the same work
/// directly, launch after launch (dw accumulates).
fn graph_replay_matches_direct_run(dev: &Device) {
    let mut direct = GraphBufs::new(dev);
    let mut captured = GraphBufs::new(dev);
    let before = captured.outputs(dev);
    let graph = dev.capture(|| captured.queue(dev)).unwrap();
    dev.synchronize().unwrap();
    assert!(!dev.capturing());
    if dev.kind() == DeviceKind::Emu {
        assert_eq!(graph.recorded_ops(), Some(8), "{graph:?}");
    }
    for (k, (a, b)) in captured.outputs(dev).iter().zip(&before).enumerate() {
        common::assert_bits_eq(
            &format!("{} unchanged by the capture", GRAPH_OUTPUTS[k]),
            a,
            b,
        );
    }
    for launch in 0..2 {
        // new input data in the same buffer, then the same work two ways
        let x = rand_vec(G_ROWS * G_CIN, 30 + launch);
        dev.htod(&x, direct.x.view_mut()).unwrap();
        dev.htod(&x, captured.x.view_mut()).unwrap();
        direct.queue(dev).unwrap();
        // SAFETY: every buffer the graph touches lives in `captured`, alive and not borrowed.
        unsafe { graph.launch() }.unwrap();
        let (want, got) = (direct.outputs(dev), captured.outputs(dev));
        for k in 0..want.len() {
            common::assert_bits_eq(
                &format!("{} launch {launch}: graph vs direct", GRAPH_OUTPUTS[k]),
                &got[k],
                &want[k],
            );
        }
    }
    // an empty capture is a graph that does nothing
    let empty = dev.capture(|| Ok(())).unwrap();
    // SAFETY: the graph touches nothing.
    unsafe { empty.launch() }.unwrap();
}

#[test]
fn emu_graph_replay_matches_direct_run() {
    graph_replay_matches_direct_run(&Device::emu().unwrap());
}

/// One body of the capture-failure test: what it does inside the capture.
type CaptureCase<'a> = Box<dyn Fn(&mut DeviceBuffer<f32>) -> anyhow::Result<()> + 'a>;

/// What cannot be captured is an error naming the operation, the capture is discarded and the
/// device works normally afterwards; so after an error or a panic in the closure.
fn graph_capture_failures_are_errors(dev: &Device) {
    let mut buf = dev.upload(&[1.0f32, 2.0, 3.0]).unwrap();
    let cases: Vec<(&str, CaptureCase)> = vec![
        (
            "dtoh inside Device::capture",
            Box::new(|b| dev.download(b.view()).map(drop)),
        ),
        (
            "alloc inside Device::capture",
            Box::new(|_| dev.alloc::<f32>(4).map(drop)),
        ),
        (
            "alloc inside Device::capture",
            Box::new(|_| dev.upload(&[1.0f32]).map(drop)),
        ),
        (
            "htod inside Device::capture",
            Box::new(|b| dev.htod(&[0.0, 0.0, 0.0], b.view_mut())),
        ),
        (
            "synchronize inside Device::capture",
            Box::new(|_| dev.synchronize()),
        ),
        (
            "captures do not nest",
            Box::new(|_| dev.capture(|| Ok(())).map(drop)),
        ),
        (
            "the closure's own error",
            Box::new(|b| {
                dev.zero(b.view_mut())?;
                anyhow::bail!("the closure's own error")
            }),
        ),
    ];
    for (want, f) in cases {
        let err = dev.capture(|| f(&mut buf)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(want), "{want:?} not in {msg:?}");
        assert!(!dev.capturing(), "{want}: still capturing");
        // nothing ran: the zero of the last case was captured, then discarded
        assert_eq!(dev.download(buf.view()).unwrap(), [1.0, 2.0, 3.0], "{want}");
    }
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = dev.capture(|| panic!("inside a capture"));
    }));
    assert!(panicked.is_err());
    assert!(!dev.capturing(), "a panic must end the capture");
    dev.zero(buf.view_mut()).unwrap();
    assert_eq!(dev.download(buf.view()).unwrap(), [0.0; 3]);
}

#[test]
fn emu_graph_capture_failures_are_errors() {
    graph_capture_failures_are_errors(&Device::emu().unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_replay_matches_direct_run_on_cuda() {
    graph_replay_matches_direct_run(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_capture_failures_are_errors_on_cuda() {
    graph_capture_failures_are_errors(&gpu());
}

// ------------------------------------------------------------------------------------------
// Step scalars (Device::set_step_scalars): per-step values a captured graph reads at replay

use pepler_cuda::backend::{AdamWParams, AdamWVariant};
use pepler_cuda::device::StepScalars;
use pepler_cuda::kernels::{adamw, dropout};
use pepler_cuda::ops::dropout::DropoutSite;

const S_N: usize = 300;

fn s_site(step: u64) -> DropoutSite {
    DropoutSite {
        p: 0.3,
        seed: 5,
        step,
        site: 2,
    }
}

fn s_hp(lr: f64) -> AdamWParams {
    AdamWParams {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        variant: AdamWVariant::Torch,
    }
}

/// The step scalars of (dropout step, AdamW lr and step).
fn s_scalars(step: u64, lr: f64) -> StepScalars {
    StepScalars {
        dropout_step: step,
        adamw: adamw::step_factors(&s_hp(lr), step).unwrap(),
        dscale: 0.0,
    }
}

/// Dropout and an AdamW update of `x`-derived data: what a step graph holds.
struct StepBufs {
    x: DeviceBuffer<f32>,
    y: DeviceBuffer<f32>,
    p: DeviceBuffer<f32>,
    m: DeviceBuffer<f32>,
    v: DeviceBuffer<f32>,
}

impl StepBufs {
    fn new(dev: &Device) -> StepBufs {
        let up = |v: Vec<f32>| dev.upload(&v).unwrap();
        StepBufs {
            x: up(rand_vec(S_N, 41)),
            y: up(vec![0.0; S_N]),
            p: up(rand_vec(S_N, 42)),
            m: up(vec![0.0; S_N]),
            v: up(vec![0.0; S_N]),
        }
    }

    fn queue(&mut self, dev: &Device, step: u64, lr: f64) -> anyhow::Result<()> {
        dropout::dropout_forward(dev, self.y.view_mut(), self.x.view(), s_site(step), S_N)?;
        let (p, m, v) = (self.p.view_mut(), self.m.view_mut(), self.v.view_mut());
        adamw::adamw_update(dev, p, self.y.view(), m, v, &s_hp(lr), step, S_N)
    }

    fn outputs(&self, dev: &Device) -> Vec<Vec<f32>> {
        [&self.y, &self.p, &self.m, &self.v]
            .iter()
            .map(|b| dev.download(b.view()).unwrap())
            .collect()
    }
}

/// A graph captured at step 1 and replayed at steps 2..4 with new step scalars (and a new
/// learning rate) draws each step's dropout mask and applies each step's AdamW factors: the bits
/// of launching directly at that step. Capturing without the scalars set, or with other values
/// than the launch's, is an error.
fn step_scalars_reach_a_replayed_graph(dev: &Device) {
    let mut captured = StepBufs::new(dev);
    let mut direct = StepBufs::new(dev);
    let none = dev.capture(|| captured.queue(dev, 1, 1e-2));
    let msg = format!("{:#}", none.unwrap_err());
    assert!(msg.contains("set_step_scalars"), "{msg}");
    dev.set_step_scalars(&s_scalars(1, 1e-2)).unwrap();
    let other = dev.capture(|| captured.queue(dev, 2, 1e-2));
    let msg = format!("{:#}", other.unwrap_err());
    assert!(msg.contains("dropout step"), "{msg}");
    let graph = dev.capture(|| captured.queue(dev, 1, 1e-2)).unwrap();
    for step in 1..5u64 {
        let lr = 1e-2 / step as f64;
        dev.set_step_scalars(&s_scalars(step, lr)).unwrap();
        // SAFETY: the graph's buffers live in `captured`, alive and not borrowed.
        unsafe { graph.launch() }.unwrap();
        direct.queue(dev, step, lr).unwrap();
        let (got, want) = (captured.outputs(dev), direct.outputs(dev));
        for (k, name) in ["y", "p", "m", "v"].iter().enumerate() {
            common::assert_bits_eq(&format!("{name} at step {step}"), &got[k], &want[k]);
        }
    }
    // the masks really change with the step (else the test above would prove nothing)
    let mut a = StepBufs::new(dev);
    a.queue(dev, 1, 1e-2).unwrap();
    let mut b = StepBufs::new(dev);
    b.queue(dev, 2, 1e-2).unwrap();
    assert_ne!(a.outputs(dev)[0], b.outputs(dev)[0]);
}

#[test]
fn step_scalars_reach_a_replayed_graph_on_emu() {
    step_scalars_reach_a_replayed_graph(&Device::emu().unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn step_scalars_reach_a_replayed_graph_on_cuda() {
    step_scalars_reach_a_replayed_graph(&gpu());
}
