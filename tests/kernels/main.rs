//! Every CUDA kernel against its CPU reference in `pepler_cuda::ops`, through the typed launch
//! wrappers in `pepler_cuda::kernels`, on the emulated device (the exact kernel source, compiled for
//! the host); one module per kernel file. Shapes are small and odd on purpose: rows not a multiple
//! of what a block handles, c not a multiple of 4 or 32, c = 1. Backwards with a reduction are also
//! run under a shuffled schedule and must be bitwise reproducible. GPU-only tests
//! (`#[ignore]`, named `*_on_cuda`: `cargo test --test kernels -- --ignored on_cuda` on a machine
//! with a GPU) run the same bodies on the CUDA device.

#[path = "../common/mod.rs"]
mod common;

mod adamw;
mod classifier;
mod dropout;
mod embedding;
mod gather;
mod gelu;
mod global_norm;
mod layernorm;
mod matmul;
mod rating;
mod residual;
mod softmax;

use common::*;
use pepler_cuda::kernels;

/// Odd shapes: rows around the 8-rows-per-block boundary, c below/above a warp, not /4.
const ROWS: &[usize] = &[1, 7, 33];
const COLS: &[usize] = &[1, 3, 45, 771];
const EPS: f32 = 1e-5;

/// The emulated device in shuffle mode (random block order and thread interleaving, a pure
/// function of `seed`), without touching the environment.
fn emu_shuffled(seed: u64) -> pepler_cuda::device::Device {
    pepler_cuda::device::Device::emu_with(pepler_cuda::device::EmuOptions {
        shuffle: Some(Some(seed)),
        ..Default::default()
    })
    .unwrap()
}

/// Upload i32 data.
fn up_i32(dev: &pepler_cuda::device::Device, v: &[i32]) -> pepler_cuda::device::DeviceBuffer<i32> {
    dev.upload(v).unwrap()
}

#[test]
fn launch_wrappers_reject_bad_sizes() {
    let dev = emu();
    let a = dev.alloc::<f32>(10).unwrap();
    let mut out = dev.alloc::<f32>(10).unwrap();
    let err = kernels::residual::residual_forward(&dev, out.view_mut(), a.view(), a.slice(..9), 10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("residual_forward: b has 9 elements, needs at least 10"),
        "{err}"
    );
    let err = kernels::softmax::softmax_forward(&dev, out.view_mut(), a.view(), 5, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("c must be > 0"), "{err}");
    let err = kernels::layernorm::layernorm_forward(
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
    assert!(kernels::layernorm::layernorm_backward_scratch_len(1, 100_000).is_err());
    // zero-sized work is a no-op
    kernels::gelu::gelu_forward(&dev, out.view_mut(), a.view(), 0).unwrap();
}
