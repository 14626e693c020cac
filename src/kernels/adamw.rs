//! Launch wrappers for `kernels/adamw.cu` (CPU reference: `crate::ops::adamw`): a per-tensor
//! update and the multi-tensor update of one flat parameter/grad/m/v allocation, both bit-identical
//! to the CPU reference in both formulas (`torch`, `hf`). The f32 scalars are derived on the host
//! by `ops::adamw` itself ([`AdamWScalars`], [`HfScalars`]), so the kernel sees the CPU's values.
//!
//! Mixed precision (`src/precision.rs`): the GEMMs read a bf16 copy of the f32 masters, laid out
//! like them. [`adamw_update_multi_with_copy`] rewrites the copy of every updated element in the
//! same launch; [`cast_f32_to_bf16`] makes the whole copy after a load (frozen tensors too).

use anyhow::{bail, Result};

use super::{check_len, grid_for, to_i32, BLOCK};
use crate::backend::{AdamWParams, AdamWVariant};
use crate::device::{
    DevPtr, Device, DeviceBuffer, KernelArg, LaunchConfig, StepSlot, View, ViewMut,
};
use crate::ops::adamw::{AdamWScalars, HfScalars};

/// Elements per block of the multi-tensor update (a tensor longer than this gets several blocks).
pub const ADAMW_CHUNK: usize = 4096;
/// Threads per block of the multi-tensor update (`ADAMW_BLOCK` in the .cu file).
pub const ADAMW_BLOCK: u32 = 256;

/// The kernel's scalar arguments for one step: variant, then the eight [`step_factors`]; plus
/// whether decay applies at all (hf with wd = 0 skips it, as transformers does).
fn scalar_args(hp: &AdamWParams, step: u64) -> Result<([KernelArg; 9], bool)> {
    let f = step_factors(hp, step)?;
    let variant = match hp.variant {
        AdamWVariant::Torch => 0i32,
        AdamWVariant::Hf => 1,
    };
    let has_decay = match hp.variant {
        // the CPU multiplies by `decay` always; by 1.0 (exact) when wd = 0
        AdamWVariant::Torch => true,
        AdamWVariant::Hf => {
            HfScalars::new(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, step)
                .decay
                .is_some()
        }
    };
    Ok((
        [
            variant.into(),
            f[0].into(),
            f[1].into(),
            f[2].into(),
            f[3].into(),
            f[4].into(),
            f[5].into(),
            f[6].into(),
            f[7].into(),
        ],
        has_decay,
    ))
}

/// AdamW's eight f32 factors of one step, in the kernels' order: beta1, 1-beta1, beta2, 1-beta2,
/// sqrt(1-beta2^t) (1 for hf, which folds it into the step size), eps, -step_size, decay (torch:
/// 1 - lr*wd; hf: -lr*wd, 0 without decay). They change with the step and the learning rate, so a
/// captured step reads them from the device's step scalars (`crate::device::step`).
pub fn step_factors(hp: &AdamWParams, step: u64) -> Result<[f32; 8]> {
    if step == 0 {
        bail!("adamw: step counts from 1");
    }
    Ok(match hp.variant {
        AdamWVariant::Torch => {
            let s = AdamWScalars::new(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, step);
            [
                // torch's lerp form never uses beta1 itself
                hp.beta1 as f32,
                s.one_minus_beta1,
                s.beta2,
                s.one_minus_beta2,
                s.bias_correction2_sqrt,
                s.eps,
                s.neg_step_size,
                s.decay,
            ]
        }
        AdamWVariant::Hf => {
            let s = HfScalars::new(hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, step);
            [
                s.beta1,
                s.one_minus_beta1,
                s.beta2,
                s.one_minus_beta2,
                1.0,
                s.eps,
                s.neg_step_size,
                s.decay.unwrap_or(0.0),
            ]
        }
    })
}

/// One AdamW update (`hp.variant`) of `n` elements of `param` from `grad` with moments `m`, `v`
/// (all `=` in place), `step` counting from 1; exactly `ops::adamw::adamw_update[_hf]`.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    dev: &Device,
    param: ViewMut<'_, f32>,
    grad: View<'_, f32>,
    m: ViewMut<'_, f32>,
    v: ViewMut<'_, f32>,
    hp: &AdamWParams,
    step: u64,
    n: usize,
) -> Result<()> {
    const K: &str = "adamw_update";
    check_len(K, "param", param.len(), n)?;
    check_len(K, "grad", grad.len(), n)?;
    check_len(K, "m", m.len(), n)?;
    check_len(K, "v", v.len(), n)?;
    let (scalars, has_decay) = scalar_args(hp, step)?;
    if n == 0 {
        return Ok(());
    }
    let (mut param, mut m, mut v) = (param, m, v);
    let (param, m, v) = (param.slice_mut(..n), m.slice_mut(..n), v.slice_mut(..n));
    let cfg = LaunchConfig::linear(grid_for(K, n, BLOCK as usize)?, BLOCK, 0);
    let mut args = vec![
        KernelArg::from(&param),
        grad.slice(..n).into(),
        KernelArg::from(&m),
        KernelArg::from(&v),
        to_i32(K, "n", n)?.into(),
    ];
    args.extend(scalars);
    args.push(i32::from(has_decay).into());
    args.push(dev.step_arg(K, StepSlot::AdamW(step_factors(hp, step)?))?);
    // SAFETY: args match `adamw_update(float*, const float*, float*, float*, int, int, float x8,
    // int, const float*)` (the last NULL or the 8 AdamW step scalars); the four views hold n elements each, one thread per element.
    unsafe { dev.launch(K, &cfg, &args) }
}

/// One tensor of a flat parameter allocation, for [`AdamWPlan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdamWTensor {
    /// First element of the tensor in the flat allocation.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
    /// Whether weight decay applies (`hp.weight_decay`) or not (as if it were 0).
    pub decay: bool,
    /// Frozen tensors (false) are never touched.
    pub trainable: bool,
}

/// The per-block work table of the multi-tensor update, built and uploaded once per set of
/// tensors (rebuild it when the trainable set changes, e.g. at stage 2 of sequential tuning).
pub struct AdamWPlan {
    /// 3 i32 per block: start, len (<= ADAMW_CHUNK), decay flag.
    blocks: DeviceBuffer<i32>,
    nblocks: usize,
    /// Elements the flat buffers must hold (end of the last tensor).
    extent: usize,
}

impl AdamWPlan {
    /// Splits every trainable tensor into chunks of [`ADAMW_CHUNK`] and uploads the table.
    /// Errors when tensors overlap or the allocation exceeds the kernels' int range.
    pub fn new(dev: &Device, tensors: &[AdamWTensor]) -> Result<AdamWPlan> {
        const K: &str = "AdamWPlan";
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut extent = 0usize;
        for (i, t) in tensors.iter().enumerate() {
            let end = t
                .offset
                .checked_add(t.len)
                .ok_or_else(|| anyhow::anyhow!("{K}: tensor {i} offset + len overflows"))?;
            to_i32(K, "tensor end", end)?;
            extent = extent.max(end);
            if t.len > 0 {
                spans.push((t.offset, end));
            }
        }
        spans.sort_unstable();
        if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
            bail!(
                "{K}: tensors [{}, {}) and [{}, {}) overlap",
                w[0].0,
                w[0].1,
                w[1].0,
                w[1].1
            );
        }
        let mut table = Vec::new();
        for t in tensors.iter().filter(|t| t.trainable) {
            let mut start = t.offset;
            while start < t.offset + t.len {
                let len = ADAMW_CHUNK.min(t.offset + t.len - start);
                table.extend([start as i32, len as i32, i32::from(t.decay)]);
                start += len;
            }
        }
        let nblocks = table.len() / 3;
        u32::try_from(nblocks).map_err(|_| anyhow::anyhow!("{K}: {nblocks} blocks"))?;
        Ok(AdamWPlan {
            blocks: dev.upload(&table)?,
            nblocks,
            extent,
        })
    }

    /// Blocks of one launch (0 when nothing is trainable).
    pub fn blocks(&self) -> usize {
        self.nblocks
    }

    /// Elements the flat buffers must hold.
    pub fn extent(&self) -> usize {
        self.extent
    }
}

/// One AdamW update (`hp.variant`, `step` from 1) of every trainable tensor of `plan` in the flat
/// `params`/`grads`/`m`/`v` allocations, in ONE launch; each element exactly as
/// [`adamw_update`] with `weight_decay = hp.weight_decay` for tensors with `decay` and 0 for the
/// rest. Frozen tensors and gaps are not touched. When `copy` is given (the bf16 copy of the
/// parameters the GEMMs read, laid out like `params`: same offsets, at least `plan.extent()`
/// elements), also `copy[i] = bf16(params[i])` (round to nearest even) for every element it
/// updates, in the same launch; the copies of frozen tensors and gaps are not touched, and
/// `params`, `m`, `v` are the same bits with or without a copy.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update_multi(
    dev: &Device,
    plan: &AdamWPlan,
    params: ViewMut<'_, f32>,
    grads: View<'_, f32>,
    m: ViewMut<'_, f32>,
    v: ViewMut<'_, f32>,
    copy: Option<ViewMut<'_, half::bf16>>,
    hp: &AdamWParams,
    step: u64,
) -> Result<()> {
    const K: &str = "adamw_update_multi";
    let n = plan.extent;
    check_len(K, "params", params.len(), n)?;
    check_len(K, "grads", grads.len(), n)?;
    check_len(K, "m", m.len(), n)?;
    check_len(K, "v", v.len(), n)?;
    if let Some(c) = &copy {
        check_len(K, "copy", c.len(), n)?;
    }
    let (scalars, has_decay) = scalar_args(hp, step)?;
    if plan.nblocks == 0 {
        return Ok(());
    }
    let (mut params, mut m, mut v) = (params, m, v);
    let (params, m, v) = (params.slice_mut(..n), m.slice_mut(..n), v.slice_mut(..n));
    let mut copy = copy;
    let copy_arg = match copy.as_mut() {
        Some(c) => KernelArg::from(&c.slice_mut(..n)),
        None => KernelArg::Ptr(DevPtr::NULL),
    };
    let cfg = LaunchConfig::linear(plan.nblocks as u32, ADAMW_BLOCK, 0);
    let mut args = vec![
        KernelArg::from(&params),
        grads.slice(..n).into(),
        KernelArg::from(&m),
        KernelArg::from(&v),
        copy_arg,
        plan.blocks.view().into(),
        to_i32(K, "blocks", plan.nblocks)?.into(),
    ];
    args.extend(scalars);
    // Tensors without decay skip it: torch's CPU multiplies them by (1 - lr*0) = 1.0 exactly, hf
    // skips it; with hf and wd = 0 no tensor decays.
    args.push(i32::from(has_decay).into());
    args.push(dev.step_arg(K, StepSlot::AdamW(step_factors(hp, step)?))?);
    // SAFETY: args match `adamw_update_multi(float*, const float*, float*, float*, __nv_bfloat16*,
    // const int*, int, int, float x8, int, const float*)` (the last NULL or the 8 AdamW step
    // scalars); the table (built by AdamWPlan::new, on this device)
    // holds 3*nblocks ints whose ranges lie inside [0, extent), and the four views (five with the
    // copy; NULL otherwise) hold extent elements each.
    unsafe { dev.launch(K, &cfg, &args) }
}

/// Elements each thread of `cast_f32_to_bf16` converts (one 16-byte store of bf16).
const CAST_PER_THREAD: usize = 8;

/// `out[i] = bf16(inp[i])` (=, round to nearest even) for `i < n`: the bf16 copy of f32 masters
/// after a load or init (16-byte vector accesses when both views are 16-byte aligned; the result
/// does not depend on alignment).
pub fn cast_f32_to_bf16(
    dev: &Device,
    out: ViewMut<'_, half::bf16>,
    inp: View<'_, f32>,
    n: usize,
) -> Result<()> {
    const K: &str = "cast_f32_to_bf16";
    check_len(K, "out", out.len(), n)?;
    check_len(K, "inp", inp.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let mut out = out;
    let threads = n.div_ceil(CAST_PER_THREAD);
    let cfg = LaunchConfig::linear(grid_for(K, threads, BLOCK as usize)?, BLOCK, 0);
    let n = i64::try_from(n).map_err(|_| anyhow::anyhow!("{K}: n={n} exceeds i64"))?;
    let args = [
        KernelArg::from(&out.slice_mut(..n as usize)),
        inp.slice(..n as usize).into(),
        n.into(),
    ];
    // SAFETY: args match `cast_f32_to_bf16(__nv_bfloat16*, const float*, long long)`; both views
    // hold n elements; each thread touches 8 consecutive elements below n.
    unsafe { dev.launch(K, &cfg, &args) }
}
