//! Launch wrapper for `kernels/softmax.cu` (CPU reference: `crate::ops::softmax`).

use anyhow::{bail, Result};

use super::{check_len, grid_for, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};

/// Launch shape: a warp per row, 8 rows per 256-thread block.
pub fn softmax_forward_config(rows: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig::linear(
        grid_for("softmax_forward", rows, (BLOCK / 32) as usize)?,
        BLOCK,
        0,
    ))
}

/// Row softmax of a row-major `rows x c` matrix (`=`).
pub fn softmax_forward(
    dev: &Device,
    out: ViewMut<'_, f32>,
    inp: View<'_, f32>,
    rows: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "softmax_forward";
    if c == 0 {
        bail!("{K}: c must be > 0");
    }
    let n = rows
        .checked_mul(c)
        .ok_or_else(|| anyhow::anyhow!("{K}: rows*c overflows"))?;
    check_len(K, "out", out.len(), n)?;
    check_len(K, "inp", inp.len(), n)?;
    to_i32(K, "rows*c", n)?;
    if rows == 0 {
        return Ok(());
    }
    let cfg = softmax_forward_config(rows)?;
    let args = [
        KernelArg::from(&out),
        inp.into(),
        to_i32(K, "rows", rows)?.into(),
        to_i32(K, "c", c)?.into(),
    ];
    // SAFETY: args match `softmax_forward(float*, const float*, int, int)`; buffers hold >= rows*c.
    unsafe { dev.launch(K, &cfg, &args) }
}
