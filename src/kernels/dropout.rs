//! Launch wrapper for `kernels/dropout.cu` (CPU reference: `crate::ops::dropout`), generic over
//! the activation type (f32 or bf16; the same mask either way).

use anyhow::Result;

use super::{act_map_config, check_len, to_i32};
use crate::device::{Device, KernelArg, StepSlot, View, ViewMut};
use crate::ops::dropout::DropoutSite;
use crate::precision::Act;

/// `out[i] = inp[i] * dropout_scale(site, i)` for `i < n` (=): the CPU reference's mask, bit for
/// bit (in bf16: the f32 product rounded once). Also the backward pass (same site, the gradient as
/// `inp`). For in-place dropout use [`dropout_forward_inplace`].
pub fn dropout_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    inp: View<'_, A>,
    site: DropoutSite,
    n: usize,
) -> Result<()> {
    const K: &str = "dropout_forward";
    check_len(K, "inp", inp.len(), n)?;
    launch(dev, out, Some(inp), site, n)
}

/// [`dropout_forward`] with `out` as its own input.
pub fn dropout_forward_inplace<A: Act>(
    dev: &Device,
    buf: ViewMut<'_, A>,
    site: DropoutSite,
    n: usize,
) -> Result<()> {
    launch(dev, buf, None, site, n)
}

fn launch<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    inp: Option<View<'_, A>>,
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
    let cfg = act_map_config::<A>(K, n)?;
    let args = [KernelArg::from(&out), inp_arg, to_i32(K, "n", n)?.into()];
    let args: Vec<KernelArg> = args.into_iter().chain(site_args(dev, K, site)?).collect();
    // SAFETY: args match `dropout_forward[_bf16](A*, const A*, int, unsigned long long, unsigned
    // long long, const unsigned long long* (NULL or the step scalar), unsigned int, float)`; out and inp hold n elements (inp may be out itself: the
    // kernel reads each element before writing it, in the same thread).
    unsafe { dev.launch(&A::kernel(K), &cfg, &args) }
}

/// The dropout arguments every dropout-applying kernel takes: (seed, step, step_at, site, p).
/// `step_at` is NULL outside a graph capture; inside one it is the device's dropout-step scalar
/// (`Device::step_arg`), so a replay draws the masks of the step it runs for.
pub(crate) fn site_args(dev: &Device, kernel: &str, d: DropoutSite) -> Result<[KernelArg; 5]> {
    if !(0.0..1.0).contains(&d.p) {
        anyhow::bail!("{kernel}: dropout p={} must be in [0, 1)", d.p);
    }
    Ok([
        d.seed.into(),
        d.step.into(),
        dev.step_arg(kernel, StepSlot::DropoutStep(d.step))?,
        d.site.into(),
        d.p.into(),
    ])
}
