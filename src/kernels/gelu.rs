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

/// `pre[r, j] += bias[j]`, `out = gelu(pre)` over `rows x c` (see `kernels/gelu.cu`): the bias
/// add of the MLP's first matmul fused into its GELU.
pub fn bias_gelu_forward(
    dev: &Device,
    pre: ViewMut<'_, f32>,
    out: ViewMut<'_, f32>,
    bias: View<'_, f32>,
    rows: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "bias_gelu_forward";
    if c == 0 {
        anyhow::bail!("{K}: c must be > 0");
    }
    let n = rows
        .checked_mul(c)
        .ok_or_else(|| anyhow::anyhow!("{K}: rows*c overflows"))?;
    check_len(K, "pre", pre.len(), n)?;
    check_len(K, "out", out.len(), n)?;
    check_len(K, "bias", bias.len(), c)?;
    if n == 0 {
        return Ok(());
    }
    let (mut pre, mut out) = (pre, out);
    let cfg = gelu_config(K, n)?;
    let args = [
        KernelArg::from(&pre.slice_mut(..n)),
        KernelArg::from(&out.slice_mut(..n)),
        bias.slice(..c).into(),
        to_i32(K, "rows", rows)?.into(),
        to_i32(K, "c", c)?.into(),
    ];
    to_i32(K, "rows*c", n)?;
    // SAFETY: args match `bias_gelu_forward(float*, float*, const float*, int, int)`; pre and out
    // are sliced to rows*c, bias to c.
    unsafe { dev.launch(K, &cfg, &args) }
}
