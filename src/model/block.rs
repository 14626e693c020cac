//! One pre-LN GPT-2 block, forward and backward side by side:
//!
//! ```text
//! ln1 = layernorm(x)            qkv = ln1 W_attn + b       atty = attention(qkv)   (causal, key mask, dropout)
//! res2 = x + dropout(atty W_proj + b)
//! ln2 = layernorm(res2)         fch = ln2 W_fc + b         fchg = gelu(fch)
//! res3 = res2 + dropout(fchg W_fcproj + b)
//! ```
//!
//! The forward is shared with KV-cache decoding (`BlockAttn::Cached`). The backward runs the same
//! ops in reverse with llm.c's convention: the residual-stream gradient `dres` is updated in place
//! (layernorm's `dinp +=`), activation gradients are written (`=`) into [`BlockGrads`], parameter
//! gradients accumulate (`+=`) and frozen ones (`need` = `None`) are skipped.

use anyhow::{bail, Result};

use super::acts::{
    site_attn, site_attn_resid, site_mlp_resid, through_dropout, LayerActs, StepDropout,
};
use super::pepler::{pick, Weights};
use crate::backend::{Act, AttnShape, Backend, WeightLayout};

/// Indices (into the canonical parameter list) of one block's parameters.
#[derive(Clone, Debug)]
pub(crate) struct LayerIdx {
    pub ln1_w: usize,
    pub ln1_b: usize,
    pub qkv_w: usize,
    pub qkv_b: usize,
    pub proj_w: usize,
    pub proj_b: usize,
    pub ln2_w: usize,
    pub ln2_b: usize,
    pub fc_w: usize,
    pub fc_b: usize,
    pub fcp_w: usize,
    pub fcp_b: usize,
}

/// How a block attends: over the whole sequences of a batch (training and eval), or appending the
/// new positions to a KV cache and attending over everything cached (decoding).
pub(crate) enum BlockAttn<'a, B: Backend, A: Act> {
    /// Causal, with the key-padding mask when the batch has padding.
    Full { mask: Option<&'a B::Buf<i32>> },
    /// `ash.l` new positions at `start` of a (B, NH, lmax, hd) cache.
    Cached {
        k: &'a mut B::Buf<A>,
        v: &'a mut B::Buf<A>,
        start: usize,
        lmax: usize,
    },
}

/// Training dropout inside block `layer`: the step's masks and the scratch a dropped residual
/// branch is written to.
pub(crate) struct BlockDropout<'a, B: Backend, A: Act> {
    pub step: StepDropout,
    pub layer: usize,
    pub tmp: &'a mut B::Buf<A>,
}

/// One pre-LN GPT-2 block on `ash.b * ash.l` rows, shared by the training/eval forward and KV-cache
/// decoding: reads `x`, leaves every intermediate in `la` (what `backward` needs) and the block's
/// output in `la.res3`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn block_forward<B: Backend, A: Act>(
    be: &B,
    w: Weights<'_, B, A>,
    lw: &LayerIdx,
    eps: f32,
    x: &B::Buf<A>,
    la: &mut LayerActs<B, A>,
    attn: BlockAttn<'_, B, A>,
    dropout: Option<BlockDropout<'_, B, A>>,
    ash: AttnShape,
) -> Result<()> {
    let (rows, c) = (ash.b * ash.l, ash.c);
    be.layernorm_forward(
        &mut la.ln1,
        &mut la.ln1_mean,
        &mut la.ln1_rstd,
        x,
        w.f32(lw.ln1_w),
        w.f32(lw.ln1_b),
        rows,
        c,
        eps,
    )?;
    be.matmul_forward(
        &mut la.qkv,
        &la.ln1,
        w.gemm(lw.qkv_w)?,
        Some(w.f32(lw.qkv_b)),
        rows,
        c,
        3 * c,
        WeightLayout::InOut,
    )?;
    match attn {
        BlockAttn::Full { mask } => be.attention_forward(
            &mut la.atty,
            &mut la.att,
            &la.qkv,
            mask,
            dropout.as_ref().map(|d| d.step.site(site_attn(d.layer))),
            ash,
        )?,
        BlockAttn::Cached { k, v, start, lmax } => {
            if dropout.is_some() {
                bail!("block_forward: cached attention is for decoding, which has no dropout");
            }
            be.attention_cached_forward(&mut la.atty, &la.qkv, k, v, start, ash.l, lmax, ash)?
        }
    }
    be.matmul_forward(
        &mut la.attproj,
        &la.atty,
        w.gemm(lw.proj_w)?,
        Some(w.f32(lw.proj_b)),
        rows,
        c,
        c,
        WeightLayout::InOut,
    )?;
    let mut dropout = dropout;
    if let Some(d) = dropout.as_mut() {
        let site = d.step.site(site_attn_resid(d.layer));
        be.dropout_forward(d.tmp, &la.attproj, site, rows * c)?;
        be.residual_forward(&mut la.res2, x, d.tmp, rows * c)?;
    } else {
        be.residual_forward(&mut la.res2, x, &la.attproj, rows * c)?;
    }
    be.layernorm_forward(
        &mut la.ln2,
        &mut la.ln2_mean,
        &mut la.ln2_rstd,
        &la.res2,
        w.f32(lw.ln2_w),
        w.f32(lw.ln2_b),
        rows,
        c,
        eps,
    )?;
    be.matmul_bias_gelu_forward(
        &mut la.fch,
        &mut la.fchg,
        &la.ln2,
        w.gemm(lw.fc_w)?,
        w.f32(lw.fc_b),
        rows,
        c,
        4 * c,
        WeightLayout::InOut,
    )?;
    be.matmul_forward(
        &mut la.fcproj,
        &la.fchg,
        w.gemm(lw.fcp_w)?,
        Some(w.f32(lw.fcp_b)),
        rows,
        4 * c,
        c,
        WeightLayout::InOut,
    )?;
    if let Some(d) = dropout {
        let site = d.step.site(site_mlp_resid(d.layer));
        be.dropout_forward(d.tmp, &la.fcproj, site, rows * c)?;
        be.residual_forward(&mut la.res3, &la.res2, d.tmp, rows * c)?;
    } else {
        be.residual_forward(&mut la.res3, &la.res2, &la.fcproj, rows * c)?;
    }
    Ok(())
}

/// Activation gradients of one block's backward, by role, reused by every block (rows = B * L).
pub(crate) struct BlockGrads<B: Backend, A: Act> {
    /// d(fchg): the MLP's GELU output (rows, 4C).
    pub d_fchg: B::Buf<A>,
    /// d(fch): the MLP's hidden pre-activation (rows, 4C).
    pub d_fch: B::Buf<A>,
    /// d(ln2): the second layernorm's output (rows, C).
    pub d_ln2: B::Buf<A>,
    /// d(atty): the attention output before the projection (rows, C).
    pub d_atty: B::Buf<A>,
    /// d(qkv) (rows, 3C).
    pub d_qkv: B::Buf<A>,
    /// d(ln1): the first layernorm's output (rows, C).
    pub d_ln1: B::Buf<A>,
}

impl<B: Backend, A: Act> BlockGrads<B, A> {
    pub fn new(be: &B, rows: usize, c: usize) -> Result<Self> {
        let f = |n: usize| be.alloc::<A>(n);
        Ok(BlockGrads {
            d_fchg: f(rows * 4 * c)?,
            d_fch: f(rows * 4 * c)?,
            d_ln2: f(rows * c)?,
            d_atty: f(rows * c)?,
            d_qkv: f(rows * 3 * c)?,
            d_ln1: f(rows * c)?,
        })
    }
}

/// Backward of [`block_forward`] for a training pass: `dres` holds d(res3) on entry and d(x) on
/// exit (+=, the residual stream); parameter gradient `i` accumulates into `grads[i]` when
/// `need(i)` is `Some(i)`. `x` and `la` are the forward's input and activations, `mask` its key
/// mask, `dropout` its step (`None` without dropout) and `tmp` scratch for dropped gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn block_backward<B: Backend, A: Act>(
    be: &B,
    w: Weights<'_, B, A>,
    grads: &mut [B::Buf<f32>],
    need: &dyn Fn(usize) -> Option<usize>,
    lw: &LayerIdx,
    layer: usize,
    x: &B::Buf<A>,
    la: &LayerActs<B, A>,
    mask: Option<&B::Buf<i32>>,
    dropout: Option<StepDropout>,
    dres: &mut B::Buf<A>,
    d: &mut BlockGrads<B, A>,
    tmp: &mut B::Buf<A>,
    ash: AttnShape,
) -> Result<()> {
    let (rows, c) = (ash.b * ash.l, ash.c);
    let site = |s: u32| dropout.map(|st| st.site(s));

    // MLP: d(fcproj) = dropout(dres).
    let dfcp = through_dropout(be, site(site_mlp_resid(layer)), dres, tmp, rows * c)?;
    let [dw, db] = pick(grads, [need(lw.fcp_w), need(lw.fcp_b)]);
    be.matmul_backward(
        Some(&mut d.d_fchg),
        dw,
        db,
        dfcp,
        &la.fchg,
        w.gemm(lw.fcp_w)?,
        rows,
        4 * c,
        c,
        WeightLayout::InOut,
    )?;
    be.gelu_backward(&mut d.d_fch, &la.fch, &d.d_fchg, rows * 4 * c)?;
    let [dw, db] = pick(grads, [need(lw.fc_w), need(lw.fc_b)]);
    be.matmul_backward(
        Some(&mut d.d_ln2),
        dw,
        db,
        &d.d_fch,
        &la.ln2,
        w.gemm(lw.fc_w)?,
        rows,
        c,
        4 * c,
        WeightLayout::InOut,
    )?;
    let [dw, db] = pick(grads, [need(lw.ln2_w), need(lw.ln2_b)]);
    be.layernorm_backward(
        dres,
        dw,
        db,
        &d.d_ln2,
        &la.res2,
        w.f32(lw.ln2_w),
        &la.ln2_mean,
        &la.ln2_rstd,
        rows,
        c,
    )?;

    // Attention: d(attproj) = dropout(dres).
    let dap = through_dropout(be, site(site_attn_resid(layer)), dres, tmp, rows * c)?;
    let [dw, db] = pick(grads, [need(lw.proj_w), need(lw.proj_b)]);
    be.matmul_backward(
        Some(&mut d.d_atty),
        dw,
        db,
        dap,
        &la.atty,
        w.gemm(lw.proj_w)?,
        rows,
        c,
        c,
        WeightLayout::InOut,
    )?;
    be.attention_backward(
        &mut d.d_qkv,
        &d.d_atty,
        &la.qkv,
        &la.atty,
        &la.att,
        mask,
        site(site_attn(layer)),
        ash,
    )?;
    let [dw, db] = pick(grads, [need(lw.qkv_w), need(lw.qkv_b)]);
    be.matmul_backward(
        Some(&mut d.d_ln1),
        dw,
        db,
        &d.d_qkv,
        &la.ln1,
        w.gemm(lw.qkv_w)?,
        rows,
        c,
        3 * c,
        WeightLayout::InOut,
    )?;
    let [dw, db] = pick(grads, [need(lw.ln1_w), need(lw.ln1_b)]);
    be.layernorm_backward(
        dres,
        dw,
        db,
        &d.d_ln1,
        x,
        w.f32(lw.ln1_w),
        &la.ln1_mean,
        &la.ln1_rstd,
        rows,
        c,
    )
}
