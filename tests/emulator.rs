//! Tests of the CUDA emulator (kernels/emu) through the test kernels of `kernels/test/emu_test.cu`:
//! warp shuffles at every width and mode against the CUDA rules computed here, votes, the
//! mma/ldmatrix fragment layouts against a naive matrix product, built-in indices at odd sizes,
//! barriers with early exits, dynamic shared memory fill, conversions against the `half` crate,
//! and the broken kernels the emulator must turn into errors (not hangs) quickly; and strict mode
//! (`kernels/test/emu_strict.cu`): memcheck, initcheck, synccheck (`__activemask`) and the
//! determinism rules, each with a planted bug that must be reported naming the kernel.

use std::ffi::c_void;
use std::time::{Duration, Instant};

use half::{bf16, f16};
use pepler_cuda::device::emu_ffi::{self, EmuOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Kernel arguments the cuLaunchKernel way: each value in its own 8-byte slot (the slots do not
/// move once the launch takes their addresses).
#[derive(Default)]
struct Args(Vec<u64>);

impl Args {
    fn ptr<T>(mut self, p: *mut T) -> Self {
        self.0.push(p as usize as u64);
        self
    }
    fn cptr<T>(self, p: *const T) -> Self {
        self.ptr(p as *mut T)
    }
    fn int(mut self, v: i32) -> Self {
        // little-endian: the kernel reads the i32 from the first 4 bytes
        self.0.push(v as u32 as u64);
        self
    }
}

fn run_opts(
    opts: EmuOptions,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    smem: usize,
    mut args: Args,
) -> anyhow::Result<()> {
    let mut params: Vec<*mut c_void> = args
        .0
        .iter_mut()
        .map(|slot| slot as *mut u64 as *mut c_void)
        .collect();
    // SAFETY: each test passes exactly the kernel's parameters (pointers to live Vecs large enough
    // for what the kernel touches, i32 for `int`).
    unsafe { emu_ffi::launch_with(&opts, name, grid, block, smem, &mut params) }
}

fn run(name: &str, grid: [u32; 3], block: [u32; 3], smem: usize, args: Args) -> anyhow::Result<()> {
    // explicit settings so the environment of the test run cannot change them
    let opts = EmuOptions {
        watchdog_ms: Some(10_000),
        shuffle: Some(None),
        strict: Some(true),
        ..Default::default()
    };
    run_opts(opts, name, grid, block, smem, args)
}

fn quick_watchdog() -> EmuOptions {
    EmuOptions {
        watchdog_ms: Some(300),
        shuffle: Some(None),
        strict: Some(true),
        ..Default::default()
    }
}

fn shuffled(seed: u64) -> EmuOptions {
    EmuOptions {
        watchdog_ms: Some(10_000),
        shuffle: Some(Some(seed)),
        strict: Some(true),
        ..Default::default()
    }
}

/// `opts` without strict mode: for the tests that show what a bug does to the output when nothing
/// reports it (NaN from the shared-memory fill).
fn lenient(opts: EmuOptions) -> EmuOptions {
    EmuOptions {
        strict: Some(false),
        ..opts
    }
}

/// Expected source lane of a shuffle, from the CUDA programming guide's description (segments of
/// `width` lanes): idx reads lane `src % width` of the segment; up/down read `lane -/+ delta` when
/// that stays inside the segment; xor reads `lane ^ mask` unless that lies in a LATER segment.
fn shfl_ref(mode: i32, lane: usize, arg: usize, width: usize) -> usize {
    let seg = lane / width * width;
    match mode {
        0 => seg + arg % width,
        1 => {
            if lane - seg >= arg {
                lane - arg
            } else {
                lane
            }
        }
        2 => {
            if lane - seg + arg < width {
                lane + arg
            } else {
                lane
            }
        }
        _ => {
            let j = lane ^ arg;
            if j >= seg + width {
                lane
            } else {
                j
            }
        }
    }
}

#[test]
fn shuffles_follow_cuda_rules_for_every_width_and_mode() {
    let (mut modes, mut widths, mut argv) = (vec![], vec![], vec![]);
    for width in [1, 2, 4, 8, 16, 32] {
        for mode in 0..4 {
            for arg in 0..=(if mode == 0 { 40 } else { 32 }) {
                modes.push(mode);
                widths.push(width);
                argv.push(arg);
            }
        }
    }
    let cases = modes.len();
    let input: Vec<i32> = (0..cases * 32).map(|i| (i as i32) * 7 + 3).collect();
    let mut out = vec![0i32; cases * 32];
    let mut out64 = vec![0f64; cases * 32];
    run(
        "emu_test_shfl",
        [cases as u32, 1, 1],
        [32, 1, 1],
        0,
        Args::default()
            .cptr(modes.as_ptr())
            .cptr(widths.as_ptr())
            .cptr(argv.as_ptr())
            .cptr(input.as_ptr())
            .ptr(out.as_mut_ptr())
            .ptr(out64.as_mut_ptr()),
    )
    .unwrap();
    for c in 0..cases {
        for lane in 0..32 {
            let src = shfl_ref(modes[c], lane, argv[c] as usize, widths[c] as usize);
            let want = input[c * 32 + src];
            assert_eq!(
                out[c * 32 + lane],
                want,
                "mode {} width {} arg {} lane {lane}: expected lane {src}",
                modes[c],
                widths[c],
                argv[c]
            );
            assert_eq!(
                out64[c * 32 + lane],
                want as f64 + 0.25,
                "64-bit shuffle, case {c} lane {lane}"
            );
        }
    }
}

#[test]
fn votes_and_half_warp_groups() {
    let n = 128;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut pred: Vec<i32> = (0..n)
        .map(|_| rng.gen_range(0..2) * rng.gen_range(1..5))
        .collect();
    pred[0..32].iter_mut().for_each(|p| *p = 1); // warp 0: all true
    pred[32..64].iter_mut().for_each(|p| *p = 0); // warp 1: all false
    let mut out = vec![0u32; 4 * n];
    run(
        "emu_test_vote",
        [2, 1, 1],
        [64, 1, 1],
        0,
        Args::default().cptr(pred.as_ptr()).ptr(out.as_mut_ptr()),
    )
    .unwrap();
    for w in 0..n / 32 {
        let ballot: u32 = (0..32)
            .filter(|&l| pred[w * 32 + l] != 0)
            .map(|l| 1u32 << l)
            .sum();
        for l in 0..32 {
            let t = w * 32 + l;
            let group = if l < 16 { 0x0000ffff } else { 0xffff0000 };
            assert_eq!(out[4 * t], ballot, "ballot, thread {t}");
            assert_eq!(out[4 * t + 1], (ballot != 0) as u32, "any, thread {t}");
            assert_eq!(
                out[4 * t + 2],
                (ballot == u32::MAX) as u32,
                "all, thread {t}"
            );
            assert_eq!(
                out[4 * t + 3],
                ballot & group,
                "half-warp ballot, thread {t}"
            );
        }
    }
}

#[test]
fn warp_reductions_agree_on_every_lane() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let input: Vec<f32> = (0..96).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    let mut out = vec![0f32; 2 * 96];
    run(
        "emu_test_warp_reduce",
        [1, 1, 1],
        [96, 1, 1],
        0,
        Args::default().cptr(input.as_ptr()).ptr(out.as_mut_ptr()),
    )
    .unwrap();
    for w in 0..3 {
        let xs = &input[w * 32..w * 32 + 32];
        let sum: f64 = xs.iter().map(|&x| x as f64).sum();
        let max = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        for l in 0..32 {
            let t = w * 32 + l;
            assert_eq!(
                out[2 * t].to_bits(),
                out[2 * w * 32].to_bits(),
                "sum differs between lanes"
            );
            assert!(
                (out[2 * t] as f64 - sum).abs() < 1e-4,
                "warp {w} sum {} vs {sum}",
                out[2 * t]
            );
            assert_eq!(out[2 * t + 1], max);
        }
    }
}

/// Random 16-bit matrices as (bits, values) for bf16 (kind 0) or f16 (kind 1).
fn random_tile(rng: &mut ChaCha8Rng, kind: i32, n: usize) -> (Vec<u16>, Vec<f64>) {
    (0..n)
        .map(|_| {
            let x: f32 = rng.gen_range(-2.0..2.0);
            if kind == 0 {
                let h = bf16::from_f32(x);
                (h.to_bits(), h.to_f64())
            } else {
                let h = f16::from_f32(x);
                (h.to_bits(), h.to_f64())
            }
        })
        .unzip()
}

fn check_mma(kernel: &str) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for kind in [0, 1] {
        for _trial in 0..3 {
            let (a_bits, a) = random_tile(&mut rng, kind, 16 * 16);
            let (b_bits, b) = random_tile(&mut rng, kind, 16 * 8);
            let c: Vec<f32> = (0..16 * 8).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let mut d = vec![f32::NAN; 16 * 8];
            run(
                kernel,
                [1, 1, 1],
                [32, 1, 1],
                0,
                Args::default()
                    .int(kind)
                    .cptr(a_bits.as_ptr())
                    .cptr(b_bits.as_ptr())
                    .cptr(c.as_ptr())
                    .ptr(d.as_mut_ptr()),
            )
            .unwrap();
            for i in 0..16 {
                for j in 0..8 {
                    let want: f64 = c[i * 8 + j] as f64
                        + (0..16).map(|k| a[i * 16 + k] * b[k * 8 + j]).sum::<f64>();
                    let got = d[i * 8 + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{kernel} kind {kind}: D[{i}][{j}] = {got}, naive product gives {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn mma_bf16_and_f16_match_naive_product() {
    check_mma("emu_test_mma");
}

#[test]
fn mma_fed_by_ldmatrix_matches_naive_product() {
    check_mma("emu_test_mma_ldmatrix");
}

/// Small integers: every partial sum is an integer below 2^11, exact in f32 in any order, so the
/// tensor-core product must equal the scalar f32 matmul bit for bit (on a GPU too, whatever its
/// accumulation order).
#[test]
fn mma_of_small_integers_is_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for kernel in ["emu_test_mma", "emu_test_mma_ldmatrix"] {
        for kind in [0, 1] {
            let mut ints = |n: usize| -> (Vec<u16>, Vec<f32>) {
                (0..n)
                    .map(|_| {
                        let x = rng.gen_range(-8i32..=8) as f32;
                        let bits = if kind == 0 {
                            bf16::from_f32(x).to_bits()
                        } else {
                            f16::from_f32(x).to_bits()
                        };
                        (bits, x)
                    })
                    .unzip()
            };
            let (a_bits, a) = ints(16 * 16);
            let (b_bits, b) = ints(16 * 8);
            let c: Vec<f32> = (0..16 * 8)
                .map(|_| rng.gen_range(-64i32..=64) as f32)
                .collect();
            let mut d = vec![f32::NAN; 16 * 8];
            run(
                kernel,
                [1, 1, 1],
                [32, 1, 1],
                0,
                Args::default()
                    .int(kind)
                    .cptr(a_bits.as_ptr())
                    .cptr(b_bits.as_ptr())
                    .cptr(c.as_ptr())
                    .ptr(d.as_mut_ptr()),
            )
            .unwrap();
            for i in 0..16 {
                for j in 0..8 {
                    let mut want = c[i * 8 + j];
                    for k in 0..16 {
                        want += a[i * 16 + k] * b[k * 8 + j];
                    }
                    assert_eq!(
                        d[i * 8 + j].to_bits(),
                        want.to_bits(),
                        "{kernel} kind {kind}: D[{i}][{j}] = {}, scalar matmul {want}",
                        d[i * 8 + j]
                    );
                }
            }
        }
    }
}

#[test]
fn ldmatrix_layouts_with_and_without_trans() {
    for num in [1, 2, 4] {
        for trans in [0, 1] {
            let src: Vec<u16> = (0..num * 64).map(|i| 1000 + i as u16).collect();
            let mut out = vec![0u32; 32 * 4];
            run(
                "emu_test_ldmatrix",
                [1, 1, 1],
                [32, 1, 1],
                0,
                Args::default()
                    .int(num as i32)
                    .int(trans)
                    .cptr(src.as_ptr())
                    .ptr(out.as_mut_ptr()),
            )
            .unwrap();
            let m = |mat: usize, r: usize, c: usize| src[mat * 64 + r * 8 + c] as u32;
            for lane in 0..32 {
                for reg in 0..4 {
                    let want = if reg >= num {
                        0
                    } else if trans == 0 {
                        m(reg, lane / 4, 2 * (lane % 4))
                            | m(reg, lane / 4, 2 * (lane % 4) + 1) << 16
                    } else {
                        m(reg, 2 * (lane % 4), lane / 4)
                            | m(reg, 2 * (lane % 4) + 1, lane / 4) << 16
                    };
                    assert_eq!(
                        out[lane * 4 + reg],
                        want,
                        "x{num} trans={trans} lane {lane} reg {reg}"
                    );
                }
            }
        }
    }
}

#[test]
fn builtin_indices_at_odd_sizes() {
    for (grid, block) in [
        ([3u32, 2, 2], [7u32, 3, 2]),
        ([1, 1, 1], [1, 1, 1]),
        ([5, 1, 1], [33, 1, 1]),
        ([1, 3, 1], [1, 1, 5]),
    ] {
        let nb = (grid[0] * grid[1] * grid[2]) as usize;
        let nt = (block[0] * block[1] * block[2]) as usize;
        let mut out = vec![u32::MAX; 8 * nb * nt];
        run(
            "emu_test_indices",
            grid,
            block,
            0,
            Args::default().ptr(out.as_mut_ptr()),
        )
        .unwrap();
        for bz in 0..grid[2] {
            for by in 0..grid[1] {
                for bx in 0..grid[0] {
                    for tz in 0..block[2] {
                        for ty in 0..block[1] {
                            for tx in 0..block[0] {
                                let bid = (bx + grid[0] * (by + grid[1] * bz)) as usize;
                                let tid = (tx + block[0] * (ty + block[1] * tz)) as usize;
                                let o = &out[8 * (bid * nt + tid)..8 * (bid * nt + tid) + 8];
                                assert_eq!(
                                    o,
                                    &[tx, ty, tz, bx, by, bz, nt as u32, nb as u32],
                                    "grid {grid:?} block {block:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

fn reduce(opts: EmuOptions, n: usize, block: u32, with_barrier: bool) -> (Vec<f32>, [f32; 2]) {
    let input: Vec<f32> = (0..n).map(|i| (i % 13) as f32).collect();
    let mut out = [0f32; 2];
    run_opts(
        opts,
        "emu_test_reduce",
        [1, 1, 1],
        [block, 1, 1],
        n * 4,
        Args::default()
            .cptr(input.as_ptr())
            .ptr(out.as_mut_ptr())
            .int(n as i32)
            .int(with_barrier as i32),
    )
    .unwrap();
    (input, out)
}

#[test]
fn barrier_with_early_exits_and_1024_threads() {
    let opts = EmuOptions {
        watchdog_ms: Some(10_000),
        shuffle: Some(None),
        ..Default::default()
    };
    for (n, block) in [(1000, 1024), (1, 64), (37, 37), (64, 96)] {
        let (input, out) = reduce(opts, n, block, true);
        assert_eq!(out[0], input.iter().sum::<f32>(), "n {n} block {block}");
        assert_eq!(out[1], 3.0, "three barrier rounds");
    }
}

#[test]
fn missing_syncthreads_is_exposed_by_shuffle_mode() {
    // Correct kernel: right under every schedule.
    for seed in 1..=3 {
        let (input, out) = reduce(shuffled(seed), 64, 96, true);
        assert_eq!(out[0], input.iter().sum::<f32>(), "seed {seed}");
    }
    // Planted bug (no barrier between the writes and thread 0's reads). The default schedule runs
    // each thread until it waits, in thread order: thread 0 reads before the others write. Strict
    // mode reports that read directly (initcheck of shared memory); without it the sum is NaN.
    if emu_ffi::memcheck_instrumented() {
        let err = run_opts(
            quick_watchdog(),
            "emu_test_reduce",
            [1, 1, 1],
            [96, 1, 1],
            64 * 4,
            Args::default()
                .cptr([1f32; 64].as_ptr())
                .ptr([0f32; 2].as_mut_ptr())
                .int(64)
                .int(0),
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        for needle in [
            "emu_test_reduce",
            "thread (0,0,0)",
            "dynamic shared memory",
            "missing __syncthreads()",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in: {msg}");
        }
    }
    let (_, out) = reduce(lenient(quick_watchdog()), 64, 96, false);
    assert!(
        out[0].is_nan(),
        "default schedule: missing __syncthreads not exposed (sum {})",
        out[0]
    );
    // Shuffle mode picks the next thread at random at every primitive, but the schedule is a pure
    // function of the seed: for these seeds thread 0 reads slots that still hold the NaN fill,
    // every time, not by luck.
    for seed in 1..=4 {
        let (_, out) = reduce(lenient(shuffled(seed)), 64, 96, false);
        assert!(
            out[0].is_nan(),
            "seed {seed}: missing __syncthreads not exposed (sum {})",
            out[0]
        );
    }
}

#[test]
fn dynamic_shared_memory_is_nan_filled_for_every_block() {
    let n = 100;
    let mut out = vec![0u32; 3 * n];
    // the kernel reads dynamic shared memory it never wrote: an initcheck error in strict mode
    if emu_ffi::memcheck_instrumented() {
        let err = run(
            "emu_test_smem_fill",
            [3, 1, 1],
            [64, 1, 1],
            n * 4,
            Args::default().ptr(out.as_mut_ptr()).int(n as i32),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("initcheck")
                && format!("{err:#}").contains("emu_test_smem_fill"),
            "{err:#}"
        );
    }
    run_opts(
        lenient(quick_watchdog()),
        "emu_test_smem_fill",
        [3, 1, 1],
        [64, 1, 1],
        n * 4,
        Args::default().ptr(out.as_mut_ptr()).int(n as i32),
    )
    .unwrap();
    assert!(
        out.iter().all(|&w| w == u32::MAX),
        "dynamic smem not 0xFF-filled"
    );
    assert!(
        f32::from_bits(out[0]).is_nan()
            && bf16::from_bits(out[0] as u16).is_nan()
            && f16::from_bits(out[0] as u16).is_nan()
    );
}

fn expect_error(opts: EmuOptions, kernel: &str, block: u32, needles: &[&str]) {
    let mut out = vec![0i32; 1024];
    let t0 = Instant::now();
    let err = run_opts(
        opts,
        kernel,
        [1, 1, 1],
        [block, 1, 1],
        0,
        Args::default().ptr(out.as_mut_ptr()),
    )
    .expect_err("the emulator accepted a broken kernel");
    let msg = format!("{err:#}");
    eprintln!("{kernel}: {msg}");
    for n in needles {
        assert!(msg.contains(n), "error for {kernel} lacks {n:?}: {msg}");
    }
    // far below the watchdog of the deadlock test; a sanitizer build (TSan: every memory access
    // and fiber switch goes through its runtime) on a loaded machine gets more (7 s seen)
    let limit = if emu_ffi::memcheck_instrumented() {
        5
    } else {
        30
    };
    assert!(
        t0.elapsed() < Duration::from_secs(limit),
        "{kernel}: took {:?}",
        t0.elapsed()
    );
}

#[test]
fn divergent_syncthreads_is_an_error_not_a_hang() {
    expect_error(
        quick_watchdog(),
        "emu_test_divergent_barrier",
        64,
        &[
            "divergent __syncthreads()",
            "emu_test_divergent_barrier",
            "kernels/test/emu_test.cu:",
            "block (0,0,0)",
        ],
    );
}

#[test]
fn partial_warp_shuffle_is_an_error_not_a_hang() {
    expect_error(
        quick_watchdog(),
        "emu_test_partial_shfl",
        32,
        &["exited", "__shfl_sync at kernels/test/emu_test.cu:"],
    );
    expect_error(
        quick_watchdog(),
        "emu_test_full_mask_shfl",
        48,
        &["do not exist", "__shfl_xor_sync"],
    );
    expect_error(
        quick_watchdog(),
        "emu_test_mixed_warp_ops",
        32,
        &["different warp operations"],
    );
}

#[test]
fn broken_kernels_are_errors_in_shuffle_mode_too() {
    expect_error(
        shuffled(5),
        "emu_test_divergent_barrier",
        64,
        &["divergent __syncthreads()"],
    );
    expect_error(shuffled(5), "emu_test_partial_shfl", 32, &["exited"]);
}

#[test]
fn deadlock_is_detected_at_once_with_a_census() {
    // a long watchdog: the deadlock must be found without it
    let opts = EmuOptions {
        watchdog_ms: Some(60_000),
        shuffle: Some(None),
        ..Default::default()
    };
    expect_error(
        opts,
        "emu_test_deadlock",
        32,
        &[
            "deadlock, every live thread waits",
            "16 thread(s) waiting at __shfl_sync at kernels/test/emu_test.cu:",
            "lanes 16-31 never arrived",
            "16 thread(s) waiting at __syncthreads() at kernels/test/emu_test.cu:",
        ],
    );
}

#[test]
fn watchdog_abandons_a_pure_spin_and_emulator_recovers() {
    use std::sync::atomic::{AtomicI32, Ordering};
    // leaked: the abandoned emulated thread still reads it after the launch returned
    let flag: &'static AtomicI32 = Box::leak(Box::new(AtomicI32::new(0)));
    let t0 = Instant::now();
    let err = run_opts(
        quick_watchdog(),
        "emu_test_pure_spin",
        [2, 1, 1],
        [32, 1, 1],
        0,
        Args::default().cptr(flag.as_ptr()),
    )
    .expect_err("spin must time out");
    flag.store(1, Ordering::SeqCst); // let the abandoned thread finish instead of burning a CPU
    let msg = format!("{err:#}");
    eprintln!("emu_test_pure_spin: {msg}");
    assert!(
        msg.contains("watchdog") && msg.contains("abandoned"),
        "{msg}"
    );
    assert!(msg.contains("running (spinning?)"), "{msg}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    let (input, out) = reduce(quick_watchdog(), 64, 64, true);
    assert_eq!(out[0], input.iter().sum::<f32>());
}

#[test]
fn trap_is_reported_with_thread() {
    expect_error(
        quick_watchdog(),
        "emu_test_trap",
        32,
        &["__trap()", "thread (5,0,0)"],
    );
}

#[test]
fn watchdog_stops_a_spin_on_another_block_and_emulator_recovers() {
    let mut flag = vec![0i32; 1];
    let t0 = Instant::now();
    let err = run_opts(
        quick_watchdog(),
        "emu_test_spin",
        [2, 1, 1],
        [32, 1, 1],
        0,
        Args::default().ptr(flag.as_mut_ptr()),
    )
    .expect_err("spin must time out");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("watchdog") && msg.contains("block (0,0,0)"),
        "{msg}"
    );
    assert!(
        !msg.contains("abandoned"),
        "the spinning thread should have stopped at its atomic: {msg}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    // the emulator still works afterwards
    let (input, out) = reduce(quick_watchdog(), 64, 64, true);
    assert_eq!(out[0], input.iter().sum::<f32>());
}

#[test]
fn conversions_round_to_nearest_even_like_half_crate() {
    let mut xs: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        65504.0,
        65519.99,
        65520.0,
        1e10,
        -1e10,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        1e-40,
        5.960_464_5e-8,
        2.980_232_2e-8,
        2.980_233e-8,
        6.1e-5,
        3.0e-5,
        f32::MAX,
        // bf16 ties: 1 + 2^-8 (rounds to even: 1.0), 1 + 3*2^-8 (rounds up)
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        // f16 ties: 1 + 2^-11 and 1 + 3*2^-11
        f32::from_bits(0x3f80_1000),
        f32::from_bits(0x3f80_3000),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..4000 {
        xs.push(f32::from_bits(rng.gen()));
        xs.push(rng.gen_range(-70000.0f32..70000.0));
        xs.push(rng.gen_range(-1e-4f32..1e-4));
    }
    let n = xs.len();
    let (mut bf, mut hf, mut back_bf, mut back_hf) =
        (vec![0u16; n], vec![0u16; n], vec![0f32; n], vec![0f32; n]);
    run(
        "emu_test_convert",
        [n.div_ceil(256) as u32, 1, 1],
        [256, 1, 1],
        0,
        Args::default()
            .cptr(xs.as_ptr())
            .ptr(bf.as_mut_ptr())
            .ptr(hf.as_mut_ptr())
            .ptr(back_bf.as_mut_ptr())
            .ptr(back_hf.as_mut_ptr())
            .int(n as i32),
    )
    .unwrap();
    for i in 0..n {
        let x = xs[i];
        if x.is_nan() {
            assert_eq!(
                (bf[i], hf[i]),
                (0x7fff, 0x7fff),
                "NaN must become CUDA's canonical NaN"
            );
            assert!(back_bf[i].is_nan() && back_hf[i].is_nan());
            continue;
        }
        assert_eq!(
            bf[i],
            bf16::from_f32(x).to_bits(),
            "bf16 of {x:e} ({:#010x})",
            x.to_bits()
        );
        assert_eq!(
            hf[i],
            f16::from_f32(x).to_bits(),
            "f16 of {x:e} ({:#010x})",
            x.to_bits()
        );
        assert_eq!(
            back_bf[i].to_bits(),
            bf16::from_bits(bf[i]).to_f32().to_bits()
        );
        assert_eq!(
            back_hf[i].to_bits(),
            f16::from_bits(hf[i]).to_f32().to_bits()
        );
    }
}

#[test]
fn float_atomic_add() {
    let n: usize = 1000;
    let input: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut acc = vec![0f32; 1];
    run_opts(
        EmuOptions {
            allow_float_atomics: true,
            ..quick_watchdog()
        },
        "emu_test_atomic",
        [4, 1, 1],
        [256, 1, 1],
        0,
        Args::default()
            .ptr(acc.as_mut_ptr())
            .cptr(input.as_ptr())
            .int(n as i32),
    )
    .unwrap();
    assert_eq!(acc[0], input.iter().sum::<f32>());
}

#[test]
fn kernel_table_and_launch_validation() {
    let names = emu_ffi::kernel_names();
    for k in ["emu_test_shfl", "emu_test_mma", "emu_test_reduce"] {
        assert!(names.iter().any(|n| n == k), "{k} missing from {names:?}");
    }
    assert!(emu_ffi::has_kernel("emu_test_vote"));
    // (const int*, const int*, const int*, const int*, int*, double*) and (int, const u16*, ..)
    assert_eq!(
        emu_ffi::kernel_param_sizes("emu_test_shfl"),
        Some(vec![8; 6])
    );
    assert_eq!(
        emu_ffi::kernel_param_sizes("emu_test_mma"),
        Some(vec![4, 8, 8, 8, 8])
    );
    assert_eq!(emu_ffi::kernel_param_sizes("no_such_kernel"), None);
    let err = run("emu_test_trap", [1, 1, 1], [32, 1, 1], 0, Args::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("takes 1 parameters, 0 were given"),
        "{err:#}"
    );
    let err = run("no_such_kernel", [1, 1, 1], [1, 1, 1], 0, Args::default()).unwrap_err();
    assert!(format!("{err:#}").contains("no kernel named `no_such_kernel`"));
    let mut out = vec![0i32; 2048];
    for (grid, block, smem) in [
        ([1, 1, 1], [1025, 1, 1], 0),
        ([0, 1, 1], [32, 1, 1], 0),
        ([1, 1, 1], [32, 1, 1], 300_000),
    ] {
        let err = run(
            "emu_test_trap",
            grid,
            block,
            smem,
            Args::default().ptr(out.as_mut_ptr()),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("invalid launch configuration"),
            "{err:#}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// On a GPU: the same test kernels through the device layer on cuda and on emu must agree. This is
// what validates the emulator's rules (shuffle segments, fragment layouts, conversions) against
// the hardware; the tests above only check them against the documentation.

mod gpu {
    use super::*;
    use pepler_cuda::device::{Device, KernelArg, LaunchConfig};

    /// A test-kernel argument: input words, an output of n u32 words (zeroed), or an int.
    enum A<'a> {
        In(&'a [u32]),
        Out(usize),
        Int(i32),
    }

    fn pack_u16(v: &[u16]) -> Vec<u32> {
        v.chunks(2)
            .map(|c| c[0] as u32 | (*c.get(1).unwrap_or(&0) as u32) << 16)
            .collect()
    }

    fn run_on(dev: &Device, name: &str, cfg: LaunchConfig, args: &[A]) -> Vec<Vec<u32>> {
        let mut bufs = Vec::new();
        for a in args {
            match a {
                A::In(words) => bufs.push(dev.upload(words).unwrap()),
                A::Out(n) => bufs.push(dev.alloc::<u32>(*n).unwrap()),
                A::Int(_) => {}
            }
        }
        let mut it = bufs.iter();
        let kargs: Vec<KernelArg> = args
            .iter()
            .map(|a| match a {
                A::Int(v) => KernelArg::I32(*v),
                _ => KernelArg::from(it.next().unwrap().view()),
            })
            .collect();
        // SAFETY: each call below passes the kernel's parameters in order with buffers sized for
        // what the kernel touches at that launch shape.
        unsafe { dev.launch(name, &cfg, &kargs) }
            .unwrap_or_else(|e| panic!("{name} on {}: {e:#}", dev.name()));
        dev.synchronize().unwrap();
        let mut outs = Vec::new();
        let mut it = bufs.iter();
        for a in args {
            match a {
                A::In(_) => {
                    it.next();
                }
                A::Out(_) => outs.push(dev.download(it.next().unwrap().view()).unwrap()),
                A::Int(_) => {}
            }
        }
        outs
    }

    /// Runs on the emulator, and on the GPU when there is one; outputs must be identical.
    fn agree(
        gpu: Option<&Device>,
        emu: &Device,
        name: &str,
        cfg: LaunchConfig,
        args: &[A],
    ) -> Vec<Vec<u32>> {
        let e = run_on(emu, name, cfg, args);
        if let Some(gpu) = gpu {
            let g = run_on(gpu, name, cfg, args);
            for (i, (g, e)) in g.iter().zip(&e).enumerate() {
                if let Some(j) = (0..g.len()).find(|&j| g[j] != e[j]) {
                    panic!(
                        "{name} {cfg:?}: output {i} word {j}: gpu {:#010x}, emulator {:#010x}",
                        g[j], e[j]
                    );
                }
            }
        }
        e
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn test_kernels_agree_with_the_emulator_on_cuda() {
        let gpu = Device::cuda().expect("a CUDA GPU and a build with nvcc");
        cross_check(Some(&gpu));
    }

    /// The emulator half of the cross-check, so the harness itself is exercised without a GPU.
    #[test]
    fn cross_check_harness_runs_on_the_emulated_device() {
        cross_check(None);
    }

    fn cross_check(gpu: Option<&Device>) {
        let emu = Device::emu().unwrap();
        let lin = |g, b| LaunchConfig::linear(g, b, 0);

        // shuffles, every width and mode
        let (mut modes, mut widths, mut argv) = (vec![], vec![], vec![]);
        for w in [1u32, 2, 4, 8, 16, 32] {
            for m in 0..4u32 {
                for a in 0..=40u32 {
                    modes.push(m);
                    widths.push(w);
                    argv.push(a);
                }
            }
        }
        let n = modes.len();
        let input: Vec<u32> = (0..n as u32 * 32)
            .map(|i| i.wrapping_mul(2654435761))
            .collect();
        agree(
            gpu,
            &emu,
            "emu_test_shfl",
            lin(n as u32, 32),
            &[
                A::In(&modes),
                A::In(&widths),
                A::In(&argv),
                A::In(&input),
                A::Out(n * 32),
                A::Out(n * 64),
            ],
        );

        // votes (two disjoint half-warp groups included), warp reductions
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let pred: Vec<u32> = (0..256).map(|_| rng.gen_range(0..2)).collect();
        agree(
            gpu,
            &emu,
            "emu_test_vote",
            lin(2, 128),
            &[A::In(&pred), A::Out(4 * 256)],
        );
        let xs: Vec<u32> = (0..128)
            .map(|_| rng.gen_range(-3.0f32..3.0).to_bits())
            .collect();
        agree(
            gpu,
            &emu,
            "emu_test_warp_reduce",
            lin(1, 128),
            &[A::In(&xs), A::Out(256)],
        );

        // ldmatrix layouts
        for num in [1, 2, 4] {
            for trans in [0, 1] {
                let src: Vec<u16> = (0..256).map(|i| 1000 + i as u16).collect();
                agree(
                    gpu,
                    &emu,
                    "emu_test_ldmatrix",
                    lin(1, 32),
                    &[
                        A::Int(num),
                        A::Int(trans),
                        A::In(&pack_u16(&src)),
                        A::Out(128),
                    ],
                );
            }
        }

        // mma: both against the naive product (the accumulation order differs from the emulator's)
        for kernel in ["emu_test_mma", "emu_test_mma_ldmatrix"] {
            for kind in [0, 1] {
                let (a_bits, a) = random_tile(&mut rng, kind, 256);
                let (b_bits, b) = random_tile(&mut rng, kind, 128);
                let c: Vec<f32> = (0..128).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                let c_bits: Vec<u32> = c.iter().map(|x| x.to_bits()).collect();
                let args = [
                    A::Int(kind),
                    A::In(&pack_u16(&a_bits)),
                    A::In(&pack_u16(&b_bits)),
                    A::In(&c_bits),
                    A::Out(128),
                ];
                for dev in gpu.into_iter().chain([&emu]) {
                    let d = &run_on(dev, kernel, lin(1, 32), &args)[0];
                    for i in 0..16 {
                        for j in 0..8 {
                            let want = c[i * 8 + j] as f64
                                + (0..16).map(|k| a[i * 16 + k] * b[k * 8 + j]).sum::<f64>();
                            let got = f32::from_bits(d[i * 8 + j]) as f64;
                            assert!(
                                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{kernel} kind {kind} on {}: D[{i}][{j}] = {got}, want {want}",
                                dev.name()
                            );
                        }
                    }
                }
            }
        }

        // conversions, bit for bit (NaN included)
        let mut xs: Vec<u32> = (0..4096).map(|_| rng.gen()).collect();
        xs.extend([
            0x7fc00000, 0xff800001, 0x3f808000, 0x3f818000, 0x477ff000, 0x33000000, 0x33000001,
        ]);
        let n = xs.len();
        agree(
            gpu,
            &emu,
            "emu_test_convert",
            lin(n.div_ceil(128) as u32, 128),
            &[
                A::In(&xs),
                A::Out(n.div_ceil(2)),
                A::Out(n.div_ceil(2)),
                A::Out(n),
                A::Out(n),
                A::Int(n as i32),
            ],
        );

        // built-in indices at odd sizes; a barrier reduction with early exits
        let cfg = LaunchConfig {
            grid: (3, 2, 2),
            block: (7, 3, 2),
            dyn_smem: 0,
        };
        agree(gpu, &emu, "emu_test_indices", cfg, &[A::Out(8 * 12 * 42)]);
        let vals: Vec<u32> = (0..1000).map(|i| ((i % 13) as f32).to_bits()).collect();
        let cfg = LaunchConfig::linear(1, 1024, 4000);
        agree(
            gpu,
            &emu,
            "emu_test_reduce",
            cfg,
            &[A::In(&vals), A::Out(2), A::Int(1000), A::Int(1)],
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Strict mode (docs/emulator.md): the emulated device as compute-sanitizer. Each planted bug of
// kernels/test/emu_strict.cu must be reported, naming the kernel; launches go through the device
// layer, whose views give every pointer its entitled range.

mod strict {
    use super::*;
    use pepler_cuda::device::{Device, KernelArg, LaunchConfig, MAX_DYN_SMEM, MAX_DYN_SMEM_OPTIN};

    /// The memcheck/initcheck hooks are compiled into every build but the TSan/ASan ones
    /// (scripts/sanitize.sh), where the sanitizer checks memory instead.
    fn memcheck_built() -> bool {
        let built = emu_ffi::memcheck_instrumented();
        if !built {
            eprintln!("sanitizer build: strict-mode memcheck hooks not compiled in, test skipped");
        }
        built
    }

    fn device(strict: bool) -> Device {
        Device::emu_with(EmuOptions {
            watchdog_ms: Some(10_000),
            shuffle: Some(None),
            strict: Some(strict),
            allow_float_atomics: false,
        })
        .unwrap()
    }

    fn launch(
        dev: &Device,
        name: &str,
        cfg: LaunchConfig,
        args: &[KernelArg],
    ) -> anyhow::Result<()> {
        // SAFETY: every test passes the kernel's parameters in order, pointers from live device
        // buffers; what the planted bugs touch outside their views is inside the emulated
        // allocations' redzones or other views of the same buffer.
        unsafe { dev.launch(name, &cfg, args) }
    }

    fn assert_reported(err: anyhow::Error, needles: &[&str]) {
        let msg = format!("{err:#}");
        eprintln!("{msg}");
        for n in needles {
            assert!(msg.contains(n), "{n:?} not in: {msg}");
        }
    }

    #[test]
    fn memcheck_reports_a_write_one_past_the_end() {
        if !memcheck_built() {
            return;
        }
        let dev = device(true);
        // an exact-size buffer, and a view of a larger one: both end at element 40
        let mut exact = dev.alloc::<f32>(40).unwrap();
        let mut big = dev.alloc::<f32>(64).unwrap();
        let views = [exact.view_mut(), big.slice_mut(0..40)];
        for v in views {
            let err = launch(
                &dev,
                "emu_strict_write_past_end",
                LaunchConfig::linear(1, 64, 0),
                &[KernelArg::from(&v), 40i32.into()],
            )
            .unwrap_err();
            assert_reported(
                err,
                &[
                    "emu_strict_write_past_end",
                    "block (0,0,0) thread (40,0,0)",
                    "out-of-bounds write of 4 bytes at element 40 of argument 0 `out` (float*)",
                    "entitled to elements [0, 40)",
                    "one past the end",
                ],
            );
        }
        // the same launch without the planted thread is clean
        launch(
            &dev,
            "emu_strict_write_past_end",
            LaunchConfig::linear(1, 40, 0),
            &[KernelArg::from(&big.slice_mut(0..40)), 39i32.into()],
        )
        .unwrap();
    }

    #[test]
    fn memcheck_reports_a_read_before_the_start() {
        if !memcheck_built() {
            return;
        }
        let dev = device(true);
        let data: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let input = dev.upload(&data).unwrap();
        let mut out = dev.alloc::<f32>(32).unwrap();
        // in the middle of a buffer (element -1 is real memory) and at its start (the redzone)
        for start in [16usize, 0] {
            let err = launch(
                &dev,
                "emu_strict_read_before_start",
                LaunchConfig::linear(1, 32, 0),
                &[
                    KernelArg::from(&out.view_mut()),
                    input.slice(start..start + 32).into(),
                    32i32.into(),
                ],
            )
            .unwrap_err();
            assert_reported(
                err,
                &[
                    "emu_strict_read_before_start",
                    "thread (0,0,0)",
                    "out-of-bounds read of 4 bytes at element -1 of argument 1 `in` (const float*)",
                    "before the start",
                ],
            );
        }
    }

    #[test]
    fn memcheck_reports_a_read_past_the_batch_prefix() {
        if !memcheck_built() {
            return;
        }
        // buffers sized for a batch of 4 rows, a launch for 2: the views are the 2-row prefix
        let (rows, cap, c) = (2usize, 4usize, 16usize);
        let dev = device(true);
        let input = dev.upload(&vec![1f32; cap * c]).unwrap();
        let mut out = dev.alloc::<f32>(cap).unwrap();
        let err = launch(
            &dev,
            "emu_strict_row_sum",
            LaunchConfig::linear(cap as u32, 32, 0),
            &[
                KernelArg::from(&out.slice_mut(0..rows)),
                input.slice(0..rows * c).into(),
                (rows as i32).into(),
                (c as i32).into(),
                (cap as i32).into(),
            ],
        )
        .unwrap_err();
        assert_reported(
            err,
            &[
                "emu_strict_row_sum",
                "block (2,0,0) thread (0,0,0)",
                "out-of-bounds read of 4 bytes at element 32 of argument 1 `inp`",
                "entitled to elements [0, 32)",
            ],
        );
        // without strict mode the bug goes unseen: the rows past the batch are real memory
        let dev = device(false);
        let input = dev.upload(&vec![1f32; cap * c]).unwrap();
        let mut out = dev.alloc::<f32>(cap).unwrap();
        launch(
            &dev,
            "emu_strict_row_sum",
            LaunchConfig::linear(cap as u32, 32, 0),
            &[
                KernelArg::from(&out.slice_mut(0..rows)),
                input.slice(0..rows * c).into(),
                (rows as i32).into(),
                (c as i32).into(),
                (cap as i32).into(),
            ],
        )
        .unwrap();
    }

    #[test]
    fn initcheck_reports_an_output_the_kernel_missed() {
        if !memcheck_built() {
            return;
        }
        let n = 40usize;
        for strict in [true, false] {
            let dev = device(strict);
            let input = dev.upload(&vec![1.5f32; n]).unwrap();
            let mut out = dev.alloc_uninit::<f32>(n).unwrap();
            launch(
                &dev,
                "emu_strict_missed_write",
                LaunchConfig::linear(1, 64, 0),
                &[
                    KernelArg::from(&out.view_mut()),
                    input.view().into(),
                    (n as i32).into(),
                ],
            )
            .unwrap();
            let got = dev.download(out.view());
            if strict {
                assert_reported(
                    got.unwrap_err(),
                    &[
                        "element 20 of this F32 view of 40 elements was never written",
                        "1 element(s)",
                        "`emu_strict_missed_write`",
                    ],
                );
                // the elements the kernel did write download fine
                assert_eq!(dev.download(out.slice(0..20)).unwrap(), vec![3.0; 20]);
            } else {
                // unchecked, the poison shows as NaN in the output
                let got = got.unwrap();
                assert!(got[20].is_nan() && got[19] == 3.0 && got[21] == 3.0);
            }
        }
    }

    #[test]
    fn initcheck_reports_a_missing_barrier() {
        if !memcheck_built() {
            return;
        }
        let dev = device(true);
        let data: Vec<f32> = (0..512).map(|i| (i % 10) as f32).collect();
        let input = dev.upload(&data).unwrap();
        let mut out = dev.alloc_uninit::<f32>(2).unwrap();
        let run = |out: &mut pepler_cuda::device::DeviceBuffer<f32>, with_barrier: i32| {
            launch(
                &dev,
                "emu_strict_static_smem_sum",
                LaunchConfig::linear(2, 256, 0),
                &[
                    KernelArg::from(&out.view_mut()),
                    input.view().into(),
                    with_barrier.into(),
                ],
            )
        };
        assert_reported(
            run(&mut out, 0).unwrap_err(),
            &[
                "emu_strict_static_smem_sum",
                "block (0,0,0) thread (0,0,0)",
                "static __shared__ memory",
                "missing __syncthreads()",
            ],
        );
        run(&mut out, 1).unwrap();
        let want: Vec<f32> = data.chunks(256).map(|c| c.iter().sum()).collect();
        assert_eq!(dev.download(out.view()).unwrap(), want);
    }

    #[test]
    fn static_shared_memory_is_poisoned_per_block() {
        if !memcheck_built() {
            return;
        }
        for strict in [true, false] {
            let dev = device(strict);
            let mut out = dev.alloc::<f32>(64).unwrap();
            let r = launch(
                &dev,
                "emu_strict_stale_static_smem",
                LaunchConfig::linear(2, 32, 0),
                &[KernelArg::from(&out.view_mut())],
            );
            if strict {
                // block 1 reads what only block 0 wrote
                assert_reported(
                    r.unwrap_err(),
                    &[
                        "emu_strict_stale_static_smem",
                        "block (1,0,0)",
                        "static __shared__",
                    ],
                );
            } else {
                // unchecked: block 1 sees block 0's values (on a GPU: garbage)
                r.unwrap();
                assert_eq!(dev.download(out.view()).unwrap(), vec![1.0; 64]);
            }
        }
    }

    #[test]
    fn memcheck_reports_dynamic_shared_memory_out_of_bounds() {
        if !memcheck_built() {
            return;
        }
        let dev = device(true);
        let mut out = dev.alloc::<f32>(32).unwrap();
        let cfg = LaunchConfig::linear(1, 32, 32 * 4);
        launch(
            &dev,
            "emu_strict_smem_oob",
            cfg,
            &[KernelArg::from(&out.view_mut()), 0i32.into()],
        )
        .unwrap();
        let err = launch(
            &dev,
            "emu_strict_smem_oob",
            cfg,
            &[KernelArg::from(&out.view_mut()), 1i32.into()],
        )
        .unwrap_err();
        assert_reported(
            err,
            &[
                "emu_strict_smem_oob",
                "thread (31,0,0)",
                "out-of-bounds write of 4 bytes at byte offset 128 of dynamic shared memory, which has 128 bytes",
            ],
        );
    }

    #[test]
    fn memcheck_reports_a_write_through_a_const_pointer() {
        if !memcheck_built() {
            return;
        }
        let dev = device(true);
        let input = dev.upload(&[1f32; 32]).unwrap();
        let err = launch(
            &dev,
            "emu_strict_write_const",
            LaunchConfig::linear(1, 32, 0),
            &[input.view().into()],
        )
        .unwrap_err();
        assert_reported(
            err,
            &[
                "emu_strict_write_const",
                "argument 0 `in`",
                "pointer to const",
            ],
        );
    }

    #[test]
    fn misaligned_vector_load_is_reported() {
        let dev = device(true);
        let input = dev
            .upload(&(0..160).map(|i| i as f32).collect::<Vec<_>>())
            .unwrap();
        let mut out = dev.alloc::<f32>(32).unwrap();
        let run = |out: &mut pepler_cuda::device::DeviceBuffer<f32>, offset: i32| {
            launch(
                &dev,
                "emu_strict_vector_load",
                LaunchConfig::linear(1, 32, 0),
                &[
                    KernelArg::from(&out.view_mut()),
                    input.view().into(),
                    offset.into(),
                ],
            )
        };
        run(&mut out, 4).unwrap();
        let want: Vec<f32> = (0..32)
            .map(|t| (0..4).map(|j| (4 + 4 * t + j) as f32).sum())
            .collect();
        assert_eq!(dev.download(out.view()).unwrap(), want);
        assert_reported(
            run(&mut out, 1).unwrap_err(),
            &[
                "emu_strict_vector_load",
                "thread (0,0,0)",
                "misaligned 16-byte vector load",
                "4 mod 16",
            ],
        );
    }

    #[test]
    fn float_atomic_is_an_error_in_strict_mode() {
        let dev = device(true);
        let input = dev.upload(&[1f32; 256]).unwrap();
        let mut acc = dev.alloc::<f32>(1).unwrap();
        let err = launch(
            &dev,
            "emu_test_atomic",
            LaunchConfig::linear(1, 256, 0),
            &[
                KernelArg::from(&acc.view_mut()),
                input.view().into(),
                256i32.into(),
            ],
        )
        .unwrap_err();
        assert_reported(err, &["emu_test_atomic", "float atomicAdd", "determinism"]);
    }

    #[test]
    fn production_kernels_cannot_use_float_atomics() {
        // build.rs compiles kernels/*.cu with PEPLER_EMU_PRODUCTION_KERNEL: there a float
        // atomicAdd does not compile at all. Checked with the same host compiler on a snippet.
        let kdir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
        let src = "#define PEPLER_EMU_PRODUCTION_KERNEL 1\n#include \"common.cuh\"\n\
                   extern \"C\" __global__ void k(float* a, int* b) { atomicAdd(b, 1); atomicAdd(a, 1.0f); }\n";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.cpp");
        std::fs::write(&file, src).unwrap();
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let out = std::process::Command::new(&cxx)
            .args(["-std=c++20", "-fsyntax-only", "-I", kdir])
            .arg(&file)
            .output()
            .expect("the host C++ compiler (it built the emulator) runs");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "float atomicAdd compiled in a production kernel"
        );
        assert!(
            log.contains("float atomicAdd/atomicSub in a production kernel"),
            "{log}"
        );
        // the integer atomic alone is fine
        std::fs::write(&file, src.replace("atomicAdd(a, 1.0f);", "")).unwrap();
        let out = std::process::Command::new(&cxx)
            .args(["-std=c++20", "-fsyntax-only", "-I", kdir])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn activemask_returns_the_lanes_in_the_branch() {
        let dev = device(true);
        let mut out = dev.alloc::<u32>(64).unwrap();
        launch(
            &dev,
            "emu_strict_activemask",
            LaunchConfig::linear(1, 64, 0),
            &[KernelArg::from(&out.view_mut())],
        )
        .unwrap();
        let got = dev.download(out.view()).unwrap();
        for (t, m) in got.iter().enumerate() {
            let lane = t % 32;
            let want = match lane {
                0..=9 => 0x0000_03ff,
                10..=19 => 0x000f_fc00,
                _ => 0,
            };
            assert_eq!(*m, want, "thread {t}");
        }
    }

    #[test]
    fn dynamic_shared_memory_above_48k_needs_an_opt_in() {
        let dev = device(true);
        let mut out = dev.alloc::<f32>(32).unwrap();
        let big = LaunchConfig::linear(1, 32, 64 * 1024);
        let args = [KernelArg::from(&out.view_mut()), 0i32.into()];
        let err = launch(&dev, "emu_strict_smem_oob", big, &args).unwrap_err();
        assert!(format!("{err:#}").contains("opt_in_dyn_smem"), "{err:#}");
        assert!(dev
            .opt_in_dyn_smem("emu_strict_smem_oob", MAX_DYN_SMEM_OPTIN + 1)
            .is_err());
        assert!(dev.opt_in_dyn_smem("no_such_kernel", MAX_DYN_SMEM).is_err());
        dev.opt_in_dyn_smem("emu_strict_smem_oob", 64 * 1024)
            .unwrap();
        launch(&dev, "emu_strict_smem_oob", big, &args).unwrap();
        // the opt-in is per kernel
        let err = launch(
            &dev,
            "emu_test_smem_fill",
            big,
            &[KernelArg::from(&out.view_mut()), 1i32.into()],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("opt_in_dyn_smem"), "{err:#}");
    }
}
