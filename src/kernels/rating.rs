//! Launch wrappers for `kernels/rating.cu` (CPU reference: `crate::ops::rating`): the MF head, the
//! MLP head's sigmoid, and MSE with the loss kept in a 1-element device buffer. Every launcher is
//! generic over the activation type `A` (f32 or bf16) of its activations; MSE's target and loss
//! are always f32.

use anyhow::Result;

use super::{act_map_config, check_len, grid_for, mul, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};
use crate::precision::Act;

/// Threads of the single `mse_forward` block (`MSE_BLOCK` in the .cu file).
pub const MSE_BLOCK: u32 = 256;

fn elementwise(kernel: &str, n: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig::linear(
        grid_for(kernel, n, BLOCK as usize)?,
        BLOCK,
        0,
    ))
}

/// `out[r] = u_r . i_r` from `ui` (b, 2c) (=; summed in f32, rounded once to `A`).
pub fn rating_mf_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    ui: View<'_, A>,
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
    // SAFETY: args match `rating_mf_forward[_bf16](A*, const A*, int, int)`; out holds b, ui b*2c.
    unsafe { dev.launch(&A::kernel(K), &cfg, &args) }
}

/// `dui = [dpred * i | dpred * u]` (=).
pub fn rating_mf_backward<A: Act>(
    dev: &Device,
    dui: ViewMut<'_, A>,
    dpred: View<'_, A>,
    ui: View<'_, A>,
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
    // SAFETY: args match `rating_mf_backward[_bf16](A*, const A*, const A*, int, int)`; dui and
    // ui hold b*2c, dpred b; one thread per dui element.
    unsafe { dev.launch(&A::kernel(K), &elementwise(K, n)?, &args) }
}

/// `out = 1 / (1 + exp(-inp))` over `n` elements (=).
pub fn sigmoid_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    inp: View<'_, A>,
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
    // SAFETY: args match `sigmoid_forward[_bf16](A*, const A*, int)`; both hold n elements.
    unsafe { dev.launch(&A::kernel(K), &act_map_config::<A>(K, n)?, &args) }
}

/// `dinp = dout * out * (1 - out)` over `n` elements (=), from the forward's output.
pub fn sigmoid_backward<A: Act>(
    dev: &Device,
    dinp: ViewMut<'_, A>,
    out: View<'_, A>,
    dout: View<'_, A>,
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
    // SAFETY: args match `sigmoid_backward[_bf16](A*, const A*, const A*, int)`; all hold n.
    unsafe { dev.launch(&A::kernel(K), &act_map_config::<A>(K, n)?, &args) }
}

/// `loss[0] = mean((pred - target)^2)` over `n` (=, an f32 device scalar: no host read) and
/// `dpred = grad_scale * 2 (pred - target) / n` (=, rounded once to `A`); bit-identical to
/// `ops::rating::mse_forward` on the widened `pred`.
pub fn mse_forward<A: Act>(
    dev: &Device,
    loss: ViewMut<'_, f32>,
    dpred: ViewMut<'_, A>,
    pred: View<'_, A>,
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
    // SAFETY: args match `mse_forward[_bf16](float*, A*, const A*, const float*, int, float)`;
    // loss holds 1, the others n; a single block strides over n.
    unsafe { dev.launch(&A::kernel(K), &LaunchConfig::linear(1, MSE_BLOCK, 0), &args) }
}
