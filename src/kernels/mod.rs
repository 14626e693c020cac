//! Typed launch wrappers, one file per `kernels/<op>.cu`.
//!
//! Each wrapper checks its sizes and buffers, computes the launch shape ONCE for both devices
//! (the CUDA device and the emulated device run the same kernel with the same grid, block,
//! shared memory and argument list), and launches by name. Sizes are element counts; a view may
//! be longer than needed (buffers are often allocated for the largest batch), never shorter.
//! Zero-sized work returns without launching.
//!
//! Launchers of kernels that touch activations are generic over the activation type
//! `A: Act` (`f32` or `bf16`, see `crate::precision`): activation views are typed `A`, statistics,
//! parameters, their gradients and losses stay `f32`, and the kernel launched is
//! `A::kernel(name)` (`name` for f32, `name_bf16` for bf16). Error messages name the op without
//! the suffix.

pub mod adamw;
pub mod attention;
pub mod classifier;
pub mod dropout;
pub mod embedding;
pub mod gather;
pub mod gelu;
pub mod global_norm;
pub mod layernorm;
pub mod matmul;
pub mod rating;
pub mod residual;
pub mod softmax;

use anyhow::{bail, Result};

use crate::device::{DevPtr, Elem, KernelArg, LaunchConfig, View};
use crate::precision::{Act, Precision};

/// Threads per block for the elementwise and warp-per-row kernels.
pub(crate) const BLOCK: u32 = 256;

/// Elements per thread of the elementwise activation kernels that go through `act_map1/2`
/// (`ACT_PER_THREAD` in kernels/common.cuh): one f32, or 8 bf16 (one 16-byte access).
pub(crate) fn act_per_thread<A: Act>() -> usize {
    match A::PRECISION {
        Precision::Fp32 => 1,
        Precision::Bf16 => 8,
    }
}

/// Launch shape of an `act_map1/2` kernel over `n` elements of `A`: `act_per_thread::<A>()`
/// elements per thread, 256 threads per block.
pub(crate) fn act_map_config<A: Act>(kernel: &str, n: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig::linear(
        grid_for(kernel, n, act_per_thread::<A>() * BLOCK as usize)?,
        BLOCK,
        0,
    ))
}

/// Error unless a buffer has at least `need` elements.
pub(crate) fn check_len(kernel: &str, what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        bail!("{kernel}: {what} has {have} elements, needs at least {need}");
    }
    Ok(())
}

/// The kernels take `int` sizes: error when a size does not fit.
pub(crate) fn to_i32(kernel: &str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| anyhow::anyhow!("{kernel}: {what}={v} exceeds the kernels' int range"))
}

/// `ceil(a / b)` as a grid dimension.
pub(crate) fn grid_for(kernel: &str, a: usize, b: usize) -> Result<u32> {
    let g = a.div_ceil(b);
    u32::try_from(g).map_err(|_| anyhow::anyhow!("{kernel}: grid of {g} blocks is too large"))
}

/// An optional input as a kernel argument: the view's pointer, or NULL.
pub(crate) fn opt_ref<T: Elem>(v: &Option<View<'_, T>>) -> KernelArg {
    v.map_or(KernelArg::Ptr(DevPtr::NULL), KernelArg::from)
}

/// `a * b` with an error naming the kernel on overflow.
pub(crate) fn mul(kernel: &str, what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| anyhow::anyhow!("{kernel}: {what} ({a} x {b}) overflows"))
}
