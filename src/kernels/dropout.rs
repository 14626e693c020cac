//! Launch wrapper for `kernels/dropout.cu` (CPU reference: `crate::ops::dropout`).

use anyhow::Result;

use super::{check_len, grid_for, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut};
use crate::ops::dropout::DropoutSite;

/// `out[i] = inp[i] * dropout_scale(site, i)` for `i < n` (=): the CPU reference's mask, bit for
/// bit. Also the backward pass (same site, the gradient as `inp`). For in-place dropout use
/// [`dropout_forward_inplace`].
pub fn dropout_forward(
    dev: &Device,
    out: ViewMut<'_, f32>,
    inp: View<'_, f32>,
    site: DropoutSite,
    n: usize,
) -> Result<()> {
    const K: &str = "dropout_forward";
    check_len(K, "inp", inp.len(), n)?;
    launch(dev, out, Some(inp), site, n)
}

/// [`dropout_forward`] with `out` as its own input.
pub fn dropout_forward_inplace(
    dev: &Device,
    buf: ViewMut<'_, f32>,
    site: DropoutSite,
    n: usize,
) -> Result<()> {
    launch(dev, buf, None, site, n)
}

fn launch(
    dev: &Device,
    out: ViewMut<'_, f32>,
    inp: Option<View<'_, f32>>,
    site: DropoutSite,
    n: usize,
) -> Result<()> {
    const K: &str = "dropout_forward";
    check_len(K, "out", out.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let mut out = out;
    let out = out.slice_mut(..n);
    let inp_arg = match inp {
        Some(v) => v.slice(..n).into(),
        None => KernelArg::from(&out),
    };
    let cfg = LaunchConfig::linear(grid_for(K, n, BLOCK as usize)?, BLOCK, 0);
    let args = [
        KernelArg::from(&out),
        inp_arg,
        to_i32(K, "n", n)?.into(),
        site.seed.into(),
        site.step.into(),
        site.site.into(),
        site.p.into(),
    ];
    // SAFETY: args match `dropout_forward(float*, const float*, int, unsigned long long, unsigned
    // long long, unsigned int, float)`; out and inp hold n elements (inp may be out itself: the
    // kernel reads each element before writing it, in the same thread).
    unsafe { dev.launch(K, &cfg, &args) }
}
