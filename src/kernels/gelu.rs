//! Launch wrappers for `kernels/gelu.cu` (CPU reference: `crate::ops::gelu`).

use anyhow::Result;

use super::{check_len, grid_for, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};

/// Launch shape of both GELU kernels: one element per thread, 256 threads per block.
pub fn gelu_config(kernel: &str, n: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig::linear(
        grid_for(kernel, n, BLOCK as usize)?,
        BLOCK,
        0,
    ))
}

/// `out[i] = gelu(inp[i])` for `i < n` (`=`).
pub fn gelu_forward(
    dev: &Device,
    out: ViewMut<'_, f32>,
    inp: View<'_, f32>,
    n: usize,
) -> Result<()> {
    const K: &str = "gelu_forward";
    check_len(K, "out", out.len(), n)?;
    check_len(K, "inp", inp.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = gelu_config(K, n)?;
    let args = [KernelArg::from(&out), inp.into(), to_i32(K, "n", n)?.into()];
    // SAFETY: args match `gelu_forward(float*, const float*, int)`; buffers hold >= n elements.
    unsafe { dev.launch(K, &cfg, &args) }
}

/// `dinp[i] = gelu'(inp[i]) * dout[i]` for `i < n` (`=`).
pub fn gelu_backward(
    dev: &Device,
    dinp: ViewMut<'_, f32>,
    inp: View<'_, f32>,
    dout: View<'_, f32>,
    n: usize,
) -> Result<()> {
    const K: &str = "gelu_backward";
    check_len(K, "dinp", dinp.len(), n)?;
    check_len(K, "inp", inp.len(), n)?;
    check_len(K, "dout", dout.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let cfg = gelu_config(K, n)?;
    let args = [
        KernelArg::from(&dinp),
        inp.into(),
        dout.into(),
        to_i32(K, "n", n)?.into(),
    ];
    // SAFETY: args match `gelu_backward(float*, const float*, const float*, int)`; buffers hold
    // >= n elements.
    unsafe { dev.launch(K, &cfg, &args) }
}
