//! Launch wrappers for `kernels/global_norm.cu` (CPU reference: `crate::ops::global_norm`): the
//! global gradient norm as a device scalar (two deterministic passes, scratch from the caller) and
//! torch's `clip_grad_norm_` scaling that reads it from device memory.

use anyhow::Result;

use super::{check_len, grid_for, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};

/// Threads per block of both passes (`GN_BLOCK` in the .cu file).
pub const GN_BLOCK: u32 = 256;
/// Upper bound on pass-1 blocks. Fixed (not from the GPU's SM count) so the summation order, and
/// with it every bit of the norm, depends on n alone.
pub const GN_MAX_BLOCKS: usize = 512;

/// Launch shapes: (pass 1, pass 2, number of partials). About 8 elements per thread, at most
/// [`GN_MAX_BLOCKS`] blocks.
pub fn global_norm_config(n: usize) -> (LaunchConfig, LaunchConfig, usize) {
    let blocks = n.div_ceil(GN_BLOCK as usize * 8).clamp(1, GN_MAX_BLOCKS);
    (
        LaunchConfig::linear(blocks as u32, GN_BLOCK, 0),
        LaunchConfig::linear(1, GN_BLOCK, 0),
        blocks,
    )
}

/// Scratch elements (f32) [`global_norm`] needs for `n` (contents overwritten).
pub fn global_norm_scratch_len(n: usize) -> usize {
    global_norm_config(n).2
}

/// `norm[0] = sqrt(sum_i x[i]^2)` over the first `n` elements (=), deterministic (fixed order).
pub fn global_norm(
    dev: &Device,
    norm: ViewMut<'_, f32>,
    scratch: ViewMut<'_, f32>,
    x: View<'_, f32>,
    n: usize,
) -> Result<()> {
    const K: &str = "global_norm";
    check_len(K, "norm", norm.len(), 1)?;
    check_len(K, "x", x.len(), n)?;
    let (pass1, pass2, blocks) = global_norm_config(n);
    check_len(K, "scratch", scratch.len(), blocks)?;
    let (mut norm, mut scratch) = (norm, scratch);
    let (norm, scratch) = (norm.slice_mut(..1), scratch.slice_mut(..blocks));
    let args = [
        KernelArg::from(&scratch),
        x.slice(..n).into(),
        (n as i64).into(),
    ];
    // SAFETY: args match `global_norm_partial(float*, const float*, long long)`; x holds n
    // elements, scratch one float per block of pass 1.
    unsafe { dev.launch("global_norm_partial", &pass1, &args)? };
    let args = [
        KernelArg::from(&norm),
        scratch.as_view().into(),
        (blocks as i32).into(),
    ];
    // SAFETY: args match `global_norm_final(float*, const float*, int)`; scratch holds `blocks`
    // partials written by pass 1 (same stream), norm 1 element.
    unsafe { dev.launch("global_norm_final", &pass2, &args) }
}

/// `x[i] *= min(1, max_norm / (norm[0] + 1e-6))` for `i < n` (in place), `norm` a 1-element device
/// buffer (from [`global_norm`]): torch's `clip_grad_norm_` without a host round trip.
pub fn scale_by_clip(
    dev: &Device,
    x: ViewMut<'_, f32>,
    norm: View<'_, f32>,
    max_norm: f32,
    n: usize,
) -> Result<()> {
    const K: &str = "scale_by_clip";
    check_len(K, "x", x.len(), n)?;
    check_len(K, "norm", norm.len(), 1)?;
    if n == 0 {
        return Ok(());
    }
    let mut x = x;
    let x = x.slice_mut(..n);
    let cfg = LaunchConfig::linear(grid_for(K, n, BLOCK as usize)?, BLOCK, 0);
    let args = [
        KernelArg::from(&x),
        norm.slice(..1).into(),
        max_norm.into(),
        (n as i64).into(),
    ];
    // SAFETY: args match `scale_by_clip(float*, const float*, float, long long)`; x holds n
    // elements, norm 1.
    unsafe { dev.launch(K, &cfg, &args) }
}
