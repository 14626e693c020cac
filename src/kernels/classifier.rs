//! Launch wrappers for `kernels/classifier.cu` (CPU reference: `crate::ops::crossentropy`): the
//! fused cross-entropy (losses, and dlogits in place of the logits), the mean of the valid rows'
//! losses as one device scalar, and the greedy argmax. `crossentropy_forward` and
//! `argmax_forward` are generic over the activation type `A` of the logits (f32 or bf16); losses
//! and the mean are always f32.

use anyhow::{bail, Result};

use super::{check_len, mul, to_i32};
use crate::device::{DevPtr, Device, KernelArg, LaunchConfig, StepSlot, View, ViewMut};
use crate::precision::Act;

/// Threads per row of `crossentropy_forward` / `argmax_forward` (`CE_BLOCK` in the .cu file).
pub const CE_BLOCK: u32 = 512;
/// Threads of the single `crossentropy_mean` block (`CE_MEAN_BLOCK`).
pub const CE_MEAN_BLOCK: u32 = 256;

/// Launch shape of the per-row kernels: one `CE_BLOCK`-thread block per row.
pub fn classifier_row_config(kernel: &str, rows: usize) -> Result<LaunchConfig> {
    let g = u32::try_from(rows)
        .map_err(|_| anyhow::anyhow!("{kernel}: {rows} rows exceed the grid"))?;
    Ok(LaunchConfig::linear(g, CE_BLOCK, 0))
}

fn row_sizes(kernel: &str, rows: usize, v: usize) -> Result<usize> {
    if v == 0 {
        bail!("{kernel}: v must be > 0");
    }
    let n = mul(kernel, "rows*v", rows, v)?;
    to_i32(kernel, "v", v)?;
    to_i32(kernel, "rows", rows)?;
    Ok(n)
}

/// Per-row cross-entropy `losses` (=, f32) of `logits` (rows, v) against `targets` (rows; negative
/// = ignored: loss 0). With `dscale`, the logits become `dlogits = (softmax - onehot) * dscale` in
/// place (ignored rows: 0), computed in f32 and rounded once to `A`. See `kernels/classifier.cu`.
pub fn crossentropy_forward<A: Act>(
    dev: &Device,
    losses: ViewMut<'_, f32>,
    logits: ViewMut<'_, A>,
    targets: View<'_, i32>,
    rows: usize,
    v: usize,
    dscale: Option<f32>,
) -> Result<()> {
    const K: &str = "crossentropy_forward";
    let n = row_sizes(K, rows, v)?;
    check_len(K, "losses", losses.len(), rows)?;
    check_len(K, "logits", logits.len(), n)?;
    check_len(K, "targets", targets.len(), rows)?;
    if rows == 0 {
        return Ok(());
    }
    let (mut losses, mut logits) = (losses, logits);
    let (losses, logits) = (losses.slice_mut(..rows), logits.slice_mut(..n));
    let cfg = classifier_row_config(K, rows)?;
    let args = [
        KernelArg::from(&losses),
        KernelArg::from(&logits),
        targets.slice(..rows).into(),
        to_i32(K, "rows", rows)?.into(),
        to_i32(K, "v", v)?.into(),
        dscale.unwrap_or(0.0).into(),
        i32::from(dscale.is_some()).into(),
        match dscale {
            Some(d) => dev.step_arg(K, StepSlot::DScale(d))?,
            None => KernelArg::Ptr(DevPtr::NULL),
        },
    ];
    // SAFETY: args match `crossentropy_forward[_bf16](float*, A*, const int*, int, int, float,
    // int, const float*)` (the last NULL or the dscale step scalar); losses/targets hold rows, logits rows*v; block r touches row r only, and only targets
    // in 0..v index into it.
    unsafe { dev.launch(&A::kernel(K), &cfg, &args) }
}

/// `out[0] = mean of losses[r] over rows with targets[r] >= 0` (=), summed in f64 on the device
/// (NaN when no row has a target). `out` is a 1-element device buffer: no host read.
pub fn crossentropy_mean(
    dev: &Device,
    out: ViewMut<'_, f32>,
    losses: View<'_, f32>,
    targets: View<'_, i32>,
    rows: usize,
) -> Result<()> {
    const K: &str = "crossentropy_mean";
    check_len(K, "out", out.len(), 1)?;
    check_len(K, "losses", losses.len(), rows)?;
    check_len(K, "targets", targets.len(), rows)?;
    let mut out = out;
    let out = out.slice_mut(..1);
    let cfg = LaunchConfig::linear(1, CE_MEAN_BLOCK, 0);
    let args = [
        KernelArg::from(&out),
        losses.slice(..rows).into(),
        targets.slice(..rows).into(),
        to_i32(K, "rows", rows)?.into(),
    ];
    // SAFETY: args match `crossentropy_mean(float*, const float*, const int*, int)`; out holds 1,
    // losses/targets rows elements.
    unsafe { dev.launch(K, &cfg, &args) }
}

/// `out[r]` = the lowest index of the largest logit of row `r` (=).
pub fn argmax_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, i32>,
    logits: View<'_, A>,
    rows: usize,
    v: usize,
) -> Result<()> {
    const K: &str = "argmax_forward";
    let n = row_sizes(K, rows, v)?;
    check_len(K, "out", out.len(), rows)?;
    check_len(K, "logits", logits.len(), n)?;
    if rows == 0 {
        return Ok(());
    }
    let mut out = out;
    let out = out.slice_mut(..rows);
    let cfg = classifier_row_config(K, rows)?;
    let args = [
        KernelArg::from(&out),
        logits.slice(..n).into(),
        to_i32(K, "rows", rows)?.into(),
        to_i32(K, "v", v)?.into(),
    ];
    // SAFETY: args match `argmax_forward[_bf16](int*, const A*, int, int)`; out holds rows, logits
    // rows*v.
    unsafe { dev.launch(&A::kernel(K), &cfg, &args) }
}
