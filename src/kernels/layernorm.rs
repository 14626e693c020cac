//! Launch wrappers for `kernels/layernorm.cu` (CPU reference: `crate::ops::layernorm`).
//!
//! The backward is two launches (per-block partial sums of dweight/dbias into a scratch buffer,
//! then a fixed-order reduction), so it is deterministic without float atomics. The scratch size
//! comes from [`layernorm_backward_scratch_len`]; the scratch contents need no initialisation.
//! Every launcher is generic over the activation type `A` (f32 or bf16: inp, out, dout, dinp, the
//! residual stream); mean, rstd, weight, bias, their gradients and the scratch are always f32. The
//! launch shapes do not depend on `A`.

use anyhow::{bail, Result};

use super::{check_len, grid_for, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut, MAX_DYN_SMEM};
use crate::ops::shape::LnShape;
use crate::precision::Act;

/// Upper bound on pass-1 blocks of the backward. Fixed (not derived from the GPU's SM count) so
/// that the reduction order, and with it every bit of dweight/dbias, depends on (rows, c) only.
pub const LN_BACKWARD_MAX_BLOCKS: usize = 256;

/// Launch shape of the forward: a warp per row, 8 rows per 256-thread block.
pub fn layernorm_forward_config(rows: usize) -> Result<LaunchConfig> {
    Ok(LaunchConfig::linear(
        grid_for("layernorm_forward", rows, (BLOCK / 32) as usize)?,
        BLOCK,
        0,
    ))
}

/// Warps per block of the backward's pass 1: the largest of 8, 4, 2, 1 whose per-warp
/// accumulators (2c floats each) fit the 48 KiB of dynamic shared memory every GPU allows.
fn ln_backward_warps(c: usize) -> Result<usize> {
    for w in [8usize, 4, 2, 1] {
        if 2 * c * w * 4 <= MAX_DYN_SMEM as usize {
            return Ok(w);
        }
    }
    bail!(
        "layernorm_backward: c={c} is too large (max {})",
        MAX_DYN_SMEM as usize / 8
    )
}

/// Launch shapes of the backward: (pass 1, pass 2, number of partial rows).
pub fn layernorm_backward_config(
    rows: usize,
    c: usize,
) -> Result<(LaunchConfig, LaunchConfig, usize)> {
    const K: &str = "layernorm_backward";
    let wpb = ln_backward_warps(c)?;
    let blocks = rows.div_ceil(wpb).clamp(1, LN_BACKWARD_MAX_BLOCKS);
    let pass1 = LaunchConfig::linear(blocks as u32, (wpb * 32) as u32, (2 * c * wpb * 4) as u32);
    let pass2 = LaunchConfig::linear(grid_for(K, 2 * c, BLOCK as usize)?, BLOCK, 0);
    Ok((pass1, pass2, blocks))
}

/// Scratch elements [`layernorm_backward`] needs for `rows x c`.
pub fn layernorm_backward_scratch_len(rows: usize, c: usize) -> Result<usize> {
    let (_, _, blocks) = layernorm_backward_config(rows, c)?;
    Ok(blocks * 2 * c)
}

fn ln_sizes(kernel: &str, rows: usize, c: usize) -> Result<usize> {
    if c == 0 {
        bail!("{kernel}: c must be > 0");
    }
    let n = rows
        .checked_mul(c)
        .ok_or_else(|| anyhow::anyhow!("{kernel}: rows*c overflows"))?;
    to_i32(kernel, "rows*c", n)?;
    Ok(n)
}

/// LayerNorm forward over rows of `c` (`=`); `mean`/`rstd` (`rows` each, f32) are optional
/// outputs (the backward needs them; inference does not). `out` is rounded once to `A`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward<A: Act>(
    dev: &Device,
    out: ViewMut<'_, A>,
    mean: Option<ViewMut<'_, f32>>,
    rstd: Option<ViewMut<'_, f32>>,
    inp: View<'_, A>,
    weight: View<'_, f32>,
    bias: View<'_, f32>,
    rows: usize,
    c: usize,
    eps: f32,
) -> Result<()> {
    const K: &str = "layernorm_forward";
    let n = ln_sizes(K, rows, c)?;
    let (lm, lr) = (
        mean.as_ref().map(|m| m.len()),
        rstd.as_ref().map(|r| r.len()),
    );
    let (lo, li, lw, lb) = (out.len(), inp.len(), weight.len(), bias.len());
    LnShape { rows, c }.check_forward(K, lo, lm, lr, li, lw, lb)?;
    if rows == 0 {
        return Ok(());
    }
    let rows_only = |v: Option<ViewMut<'_, f32>>| -> KernelArg {
        match v {
            Some(mut v) => KernelArg::from(&v.slice_mut(..rows)),
            None => KernelArg::Ptr(crate::device::DevPtr::NULL),
        }
    };
    let mut out = out;
    let cfg = layernorm_forward_config(rows)?;
    let args = [
        KernelArg::from(&out.slice_mut(..n)),
        rows_only(mean),
        rows_only(rstd),
        inp.slice(..n).into(),
        weight.slice(..c).into(),
        bias.slice(..c).into(),
        to_i32(K, "rows", rows)?.into(),
        to_i32(K, "c", c)?.into(),
        eps.into(),
    ];
    // SAFETY: args match `layernorm_forward[_bf16](A*, float*, float*, const A*, const float*,
    // const float*, int, int, float)`; buffers were checked against rows/c; NULL mean/rstd are
    // skipped by the kernel.
    unsafe { dev.launch(&A::kernel(K), &cfg, &args) }
}

/// Launch shape of the backward's pass 1 when no weight gradient is wanted: a warp per row, 8 rows
/// per 256-thread block, no shared memory.
pub fn layernorm_backward_dinp_only_config(rows: usize) -> Result<LaunchConfig> {
    layernorm_forward_config(rows)
}

/// LayerNorm backward: `dinp +=` (in `A`: the old value plus the f32 increment, rounded once),
/// `dweight +=`, `dbias +=` (f32; see `kernels/layernorm.cu`).
/// `None` skips that gradient; with both `None` the partial-sum work is skipped entirely (one
/// launch, no shared memory) and `scratch` is unused (it may be empty). Otherwise `scratch` needs
/// [`layernorm_backward_scratch_len`] elements (contents are overwritten).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<A: Act>(
    dev: &Device,
    dinp: ViewMut<'_, A>,
    dweight: Option<ViewMut<'_, f32>>,
    dbias: Option<ViewMut<'_, f32>>,
    scratch: ViewMut<'_, f32>,
    dout: View<'_, A>,
    inp: View<'_, A>,
    weight: View<'_, f32>,
    mean: View<'_, f32>,
    rstd: View<'_, f32>,
    rows: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "layernorm_backward";
    let n = ln_sizes(K, rows, c)?;
    let (lw, lb) = (
        dweight.as_ref().map(|d| d.len()),
        dbias.as_ref().map(|d| d.len()),
    );
    let (ldi, ldo, li) = (dinp.len(), dout.len(), inp.len());
    let (lwt, lm, lr) = (weight.len(), mean.len(), rstd.len());
    LnShape { rows, c }.check_backward(K, ldi, lw, lb, ldo, li, lwt, lm, lr)?;
    let want_weights = dweight.is_some() || dbias.is_some();
    let (pass1, pass2, blocks) = if want_weights {
        let cfg = layernorm_backward_config(rows, c)?;
        check_len(K, "scratch", scratch.len(), cfg.2 * 2 * c)?;
        cfg
    } else {
        // pass 2 is not launched
        let p1 = layernorm_backward_dinp_only_config(rows)?;
        (p1, p1, 0)
    };
    if rows == 0 {
        return Ok(());
    }
    let (rows_i, c_i) = (to_i32(K, "rows", rows)?, to_i32(K, "c", c)?);
    let mut dinp = dinp;
    let dinp = dinp.slice_mut(..n);
    let mut scratch = scratch;
    let scratch = scratch.slice_mut(..blocks * 2 * c);
    let partials = if want_weights {
        KernelArg::from(&scratch)
    } else {
        KernelArg::Ptr(crate::device::DevPtr::NULL)
    };
    let args1 = [
        KernelArg::from(&dinp),
        partials,
        dout.slice(..n).into(),
        inp.slice(..n).into(),
        weight.slice(..c).into(),
        mean.slice(..rows).into(),
        rstd.slice(..rows).into(),
        rows_i.into(),
        c_i.into(),
    ];
    // SAFETY: args match `layernorm_backward[_bf16](A*, float*, const A*, const A*, const float*
    // x3, int, int)`; dinp, dout, inp hold rows*c, weight c, mean/rstd rows, scratch blocks*2c (one
    // 2c row per block) or NULL (then the kernel touches neither it nor shared memory); dyn_smem
    // holds 2c floats per warp when partials are wanted.
    unsafe { dev.launch(&A::kernel(K), &pass1, &args1)? };
    if !want_weights {
        return Ok(());
    }
    let slice_c = |v: Option<ViewMut<'_, f32>>| -> KernelArg {
        match v {
            Some(mut v) => KernelArg::from(&v.slice_mut(..c)),
            None => KernelArg::Ptr(crate::device::DevPtr::NULL),
        }
    };
    let args2 = [
        slice_c(dweight),
        slice_c(dbias),
        scratch.as_view().into(),
        to_i32(K, "blocks", blocks)?.into(),
        c_i.into(),
    ];
    // SAFETY: args match `layernorm_backward_reduce(float*, float*, const float*, int, int)`;
    // dweight/dbias hold c or are NULL (skipped), scratch blocks*2c written by pass 1 (ordered on
    // the same stream).
    unsafe { dev.launch("layernorm_backward_reduce", &pass2, &args2) }
}

/// `resid = a + b` (=), then [`layernorm_forward`] of `resid` into `out`, `mean`, `rstd` (=), in one
/// launch (the residual add never makes a second trip through memory). `resid` must not alias
/// `a` or `b`. CPU reference: `ops::layernorm::residual_layernorm_forward`. In bf16 the LayerNorm
/// normalises `resid` as stored (rounded), so the result equals [`super::residual::residual_forward`]
/// then [`layernorm_forward`] in that precision.
#[allow(clippy::too_many_arguments)]
pub fn residual_layernorm_forward<A: Act>(
    dev: &Device,
    resid: ViewMut<'_, A>,
    out: ViewMut<'_, A>,
    mean: Option<ViewMut<'_, f32>>,
    rstd: Option<ViewMut<'_, f32>>,
    a: View<'_, A>,
    b: View<'_, A>,
    weight: View<'_, f32>,
    bias: View<'_, f32>,
    rows: usize,
    c: usize,
    eps: f32,
) -> Result<()> {
    const K: &str = "residual_layernorm_forward";
    let n = ln_sizes(K, rows, c)?;
    check_len(K, "resid", resid.len(), n)?;
    check_len(K, "out", out.len(), n)?;
    check_len(K, "a", a.len(), n)?;
    check_len(K, "b", b.len(), n)?;
    check_len(K, "weight", weight.len(), c)?;
    check_len(K, "bias", bias.len(), c)?;
    if let Some(m) = &mean {
        check_len(K, "mean", m.len(), rows)?;
    }
    if let Some(r) = &rstd {
        check_len(K, "rstd", r.len(), rows)?;
    }
    if rows == 0 {
        return Ok(());
    }
    let rows_only = |v: Option<ViewMut<'_, f32>>| -> KernelArg {
        match v {
            Some(mut v) => KernelArg::from(&v.slice_mut(..rows)),
            None => KernelArg::Ptr(crate::device::DevPtr::NULL),
        }
    };
    let (mut resid, mut out) = (resid, out);
    let cfg = layernorm_forward_config(rows)?;
    let args = [
        KernelArg::from(&resid.slice_mut(..n)),
        KernelArg::from(&out.slice_mut(..n)),
        rows_only(mean),
        rows_only(rstd),
        a.slice(..n).into(),
        b.slice(..n).into(),
        weight.slice(..c).into(),
        bias.slice(..c).into(),
        to_i32(K, "rows", rows)?.into(),
        to_i32(K, "c", c)?.into(),
        eps.into(),
    ];
    // SAFETY: args match `residual_layernorm_forward[_bf16](A*, A*, float*, float*, const A* x2,
    // const float* x2, int, int, float)`; resid/out/a/b hold rows*c, weight/bias c, mean/rstd rows
    // or NULL.
    unsafe { dev.launch(&A::kernel(K), &cfg, &args) }
}
