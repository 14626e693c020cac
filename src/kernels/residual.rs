//! Launch wrapper for `kernels/residual.cu` (CPU reference: `crate::ops::residual`).

use anyhow::Result;

use super::{check_len, grid_for, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};

/// Launch shape: 4 elements per thread, 256 threads per block.
pub fn residual_forward_config(n: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig::linear(
        grid_for("residual_forward", n, 4 * BLOCK as usize)?,
        BLOCK,
        0,
    ))
}

/// `out[i] = a[i] + b[i]` for `i < n` (`=`).
pub fn residual_forward(
    dev: &Device,
    out: ViewMut<'_, f32>,
    a: View<'_, f32>,
    b: View<'_, f32>,
    n: usize,
) -> Result<()> {
    const K: &str = "residual_forward";
    check_len(K, "out", out.len(), n)?;
    check_len(K, "a", a.len(), n)?;
    check_len(K, "b", b.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = residual_forward_config(n)?;
    let args = [
        KernelArg::from(&out),
        a.into(),
        b.into(),
        to_i32(K, "n", n)?.into(),
    ];
    // SAFETY: args match `residual_forward(float*, const float*, const float*, int)`; every buffer
    // holds >= n elements, which is all the kernel touches.
    unsafe { dev.launch(K, &cfg, &args) }
}
