//! Launch wrappers for `kernels/layernorm.cu` (CPU reference: `crate::ops::layernorm`).
//!
//! The backward is two launches (per-block partial sums of dweight/dbias into a scratch buffer,
//! then a fixed-order reduction), so it is deterministic without float atomics. The scratch size
//! comes from [`layernorm_backward_scratch_len`]; the scratch contents need no initialisation.

use anyhow::{bail, Result};

use super::{check_len, grid_for, to_i32, BLOCK};
use crate::device::{Device, KernelArg, LaunchConfig, View, ViewMut, MAX_DYN_SMEM};

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

/// LayerNorm forward over rows of `c` (`=`); `mean`/`rstd` (`rows` each) are optional outputs
/// (the backward needs them; inference does not).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    dev: &Device,
    out: ViewMut<'_, f32>,
    mean: Option<ViewMut<'_, f32>>,
    rstd: Option<ViewMut<'_, f32>>,
    inp: View<'_, f32>,
    weight: View<'_, f32>,
    bias: View<'_, f32>,
    rows: usize,
    c: usize,
    eps: f32,
) -> Result<()> {
    const K: &str = "layernorm_forward";
    let n = ln_sizes(K, rows, c)?;
    check_len(K, "out", out.len(), n)?;
    check_len(K, "inp", inp.len(), n)?;
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
    let opt = |v: &Option<ViewMut<'_, f32>>| {
        v.as_ref()
            .map_or(KernelArg::Ptr(crate::device::DevPtr::NULL), KernelArg::from)
    };
    let cfg = layernorm_forward_config(rows)?;
    let args = [
        KernelArg::from(&out),
        opt(&mean),
        opt(&rstd),
        inp.into(),
        weight.into(),
        bias.into(),
        to_i32(K, "rows", rows)?.into(),
        to_i32(K, "c", c)?.into(),
        eps.into(),
    ];
    // SAFETY: args match `layernorm_forward(float*, float*, float*, const float*, const float*,
    // const float*, int, int, float)`; buffers were checked against rows/c; NULL mean/rstd are
    // skipped by the kernel.
    unsafe { dev.launch(K, &cfg, &args) }
}

/// LayerNorm backward: `dinp +=`, `dweight +=`, `dbias +=` (see `kernels/layernorm.cu`).
/// `scratch` needs [`layernorm_backward_scratch_len`] elements (contents are overwritten).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dev: &Device,
    dinp: ViewMut<'_, f32>,
    dweight: ViewMut<'_, f32>,
    dbias: ViewMut<'_, f32>,
    scratch: ViewMut<'_, f32>,
    dout: View<'_, f32>,
    inp: View<'_, f32>,
    weight: View<'_, f32>,
    mean: View<'_, f32>,
    rstd: View<'_, f32>,
    rows: usize,
    c: usize,
) -> Result<()> {
    const K: &str = "layernorm_backward";
    let n = ln_sizes(K, rows, c)?;
    check_len(K, "dinp", dinp.len(), n)?;
    check_len(K, "dout", dout.len(), n)?;
    check_len(K, "inp", inp.len(), n)?;
    check_len(K, "dweight", dweight.len(), c)?;
    check_len(K, "dbias", dbias.len(), c)?;
    check_len(K, "weight", weight.len(), c)?;
    check_len(K, "mean", mean.len(), rows)?;
    check_len(K, "rstd", rstd.len(), rows)?;
    let (pass1, pass2, blocks) = layernorm_backward_config(rows, c)?;
    check_len(K, "scratch", scratch.len(), blocks * 2 * c)?;
    if rows == 0 {
        return Ok(());
    }
    let (rows_i, c_i) = (to_i32(K, "rows", rows)?, to_i32(K, "c", c)?);
    let args1 = [
        KernelArg::from(&dinp),
        KernelArg::from(&scratch),
        dout.into(),
        inp.into(),
        weight.into(),
        mean.into(),
        rstd.into(),
        rows_i.into(),
        c_i.into(),
    ];
    // SAFETY: args match `layernorm_backward(float*, float*, const float* x5, int, int)`; dinp,
    // dout, inp hold rows*c, weight c, mean/rstd rows, scratch blocks*2c (one 2c row per block);
    // dyn_smem holds 2c floats per warp.
    unsafe { dev.launch(K, &pass1, &args1)? };
    let args2 = [
        KernelArg::from(&dweight),
        KernelArg::from(&dbias),
        scratch.as_view().into(),
        to_i32(K, "blocks", blocks)?.into(),
        c_i.into(),
    ];
    // SAFETY: args match `layernorm_backward_reduce(float*, float*, const float*, int, int)`;
    // dweight/dbias hold c, scratch blocks*2c written by pass 1 (ordered on the same stream).
    unsafe { dev.launch("layernorm_backward_reduce", &pass2, &args2) }
}
