//! Launch wrappers for `kernels/rating.cu` (CPU reference: `crate::ops::rating`): the MF head, the
//! MLP head's sigmoid, and MSE with the loss kept in a 1-element device buffer.

use anyhow::Result;

use super::{check_len, grid_for, mul, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};

/// Threads of the single `mse_forward` block (`MSE_BLOCK` in the .cu file).
pub const MSE_BLOCK: u32 = 256;

fn elementwise(kernel: &str, n: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig::linear(
        grid_for(kernel, n, BLOCK as usize)?,
        BLOCK,
        0,
    ))
}

/// `out[r] = u_r . i_r` from `ui` (b, 2c) (=).
pub fn rating_mf_forward(
    dev: &Device,
    out: ViewMut<'_, f32>,
    ui: View<'_, f32>,
    b: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "rating_mf_forward";
    let n = mul(K, "b*2c", b, mul(K, "2c", 2, c)?)?;
    to_i32(K, "b*2c", n)?;
    check_len(K, "out", out.len(), b)?;
    check_len(K, "ui", ui.len(), n)?;
    if b == 0 {
        return Ok(());
    }
    let mut out = out;
    let out = out.slice_mut(..b);
    let cfg = LaunchConfig::linear(grid_for(K, b, (BLOCK / 32) as usize)?, BLOCK, 0);
    let args = [
        KernelArg::from(&out),
        ui.slice(..n).into(),
        to_i32(K, "b", b)?.into(),
        to_i32(K, "c", c)?.into(),
    ];
    // SAFETY: args match `rating_mf_forward(float*, const float*, int, int)`; out holds b, ui b*2c.
    unsafe { dev.launch(K, &cfg, &args) }
}

/// `dui = [dpred * i | dpred * u]` (=).
pub fn rating_mf_backward(
    dev: &Device,
    dui: ViewMut<'_, f32>,
    dpred: View<'_, f32>,
    ui: View<'_, f32>,
    b: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "rating_mf_backward";
    let n = mul(K, "b*2c", b, mul(K, "2c", 2, c)?)?;
    to_i32(K, "b*2c", n)?;
    check_len(K, "dui", dui.len(), n)?;
    check_len(K, "dpred", dpred.len(), b)?;
    check_len(K, "ui", ui.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let mut dui = dui;
    let dui = dui.slice_mut(..n);
    let args = [
        KernelArg::from(&dui),
        dpred.slice(..b).into(),
        ui.slice(..n).into(),
        to_i32(K, "b", b)?.into(),
        to_i32(K, "c", c)?.into(),
    ];
    // SAFETY: args match `rating_mf_backward(float*, const float*, const float*, int, int)`; dui
    // and ui hold b*2c, dpred b; one thread per dui element.
    unsafe { dev.launch(K, &elementwise(K, n)?, &args) }
}

/// `out = 1 / (1 + exp(-inp))` over `n` elements (=).
pub fn sigmoid_forward(
    dev: &Device,
    out: ViewMut<'_, f32>,
    inp: View<'_, f32>,
    n: usize,
) -> Result<()> {
    const K: &str = "sigmoid_forward";
    check_len(K, "out", out.len(), n)?;
    check_len(K, "inp", inp.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let mut out = out;
    let out = out.slice_mut(..n);
    let args = [
        KernelArg::from(&out),
        inp.slice(..n).into(),
        to_i32(K, "n", n)?.into(),
    ];
    // SAFETY: args match `sigmoid_forward(float*, const float*, int)`; both hold n elements.
    unsafe { dev.launch(K, &elementwise(K, n)?, &args) }
}

/// `dinp = dout * out * (1 - out)` over `n` elements (=), from the forward's output.
pub fn sigmoid_backward(
    dev: &Device,
    dinp: ViewMut<'_, f32>,
    out: View<'_, f32>,
    dout: View<'_, f32>,
    n: usize,
) -> Result<()> {
    const K: &str = "sigmoid_backward";
    check_len(K, "dinp", dinp.len(), n)?;
    check_len(K, "out", out.len(), n)?;
    check_len(K, "dout", dout.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let mut dinp = dinp;
    let dinp = dinp.slice_mut(..n);
    let args = [
        KernelArg::from(&dinp),
        out.slice(..n).into(),
        dout.slice(..n).into(),
        to_i32(K, "n", n)?.into(),
    ];
    // SAFETY: args match `sigmoid_backward(float*, const float*, const float*, int)`; all hold n.
    unsafe { dev.launch(K, &elementwise(K, n)?, &args) }
}

/// `loss[0] = mean((pred - target)^2)` over `n` (=, a device scalar: no host read) and
/// `dpred = grad_scale * 2 (pred - target) / n` (=); bit-identical to `ops::rating::mse_forward`.
pub fn mse_forward(
    dev: &Device,
    loss: ViewMut<'_, f32>,
    dpred: ViewMut<'_, f32>,
    pred: View<'_, f32>,
    target: View<'_, f32>,
    n: usize,
    grad_scale: f32,
) -> Result<()> {
    const K: &str = "mse_forward";
    check_len(K, "loss", loss.len(), 1)?;
    check_len(K, "dpred", dpred.len(), n)?;
    check_len(K, "pred", pred.len(), n)?;
    check_len(K, "target", target.len(), n)?;
    let (mut loss, mut dpred) = (loss, dpred);
    let (loss, dpred) = (loss.slice_mut(..1), dpred.slice_mut(..n));
    let args = [
        KernelArg::from(&loss),
        KernelArg::from(&dpred),
        pred.slice(..n).into(),
        target.slice(..n).into(),
        to_i32(K, "n", n)?.into(),
        grad_scale.into(),
    ];
    // SAFETY: args match `mse_forward(float*, float*, const float*, const float*, int, float)`;
    // loss holds 1, the others n; a single block strides over n.
    unsafe { dev.launch(K, &LaunchConfig::linear(1, MSE_BLOCK, 0), &args) }
}
