//! The parts of the model around the blocks, forward and backward side by side:
//! - the **encoder**: `[prompt, text]` embeddings plus positions (continuous prompt: the user and
//!   item rows at positions 0 and 1; discrete: `wte` of the feature tokens), then dropout;
//! - the **LM head**: final layernorm, the tied `wte` on the rows that carry a target (gathered),
//!   fused cross-entropy that leaves dlogits in place, the mean loss into a device scalar;
//! - the **rating head** on `[u | i]`: MF (`u . i`) or the MLP (`Linear` + sigmoid layers), MSE
//!   into a device scalar, `lambda * dMSE` kept for the backward.
//!
//! Every function reads and writes the pass's buffers in `Acts`; `need(i)` says whether parameter
//! `i`'s gradient is wanted (frozen ones are skipped).

use anyhow::Result;

use super::acts::{Acts, Pass, SITE_EMB};
use super::config::{ModelConfig, PromptKind, RecKind};
use super::pepler::{pick, Idx, Weights};
use crate::backend::{Act, Backend, WeightLayout};

// ------------------------------------------------------------------------------------ encoder

/// `a.emb` = prompt and text embeddings + positions (=); `a.encoded_d` = dropout of it when the
/// pass has dropout. The ids are already in `a`.
pub(crate) fn encoder_forward<B: Backend, A: Act>(
    be: &B,
    w: Weights<'_, B, A>,
    idx: &Idx,
    cfg: &ModelConfig,
    a: &mut Acts<B, A>,
    pass: &Pass,
) -> Result<()> {
    let wpe = Some(w.f32(idx.wpe));
    match cfg.prompt {
        PromptKind::Continuous => {
            let (ui, ii) = idx.user_item();
            be.embedding_forward(&mut a.emb, w.f32(ui), &a.users, wpe, pass.seg(1, 0))?;
            be.embedding_forward(&mut a.emb, w.f32(ii), &a.items, wpe, pass.seg(1, 1))?;
        }
        PromptKind::Discrete if pass.p > 0 => {
            let seg = pass.seg(pass.p, 0);
            be.embedding_forward(&mut a.emb, w.f32(idx.wte), &a.prompt_ids, wpe, seg)?;
        }
        PromptKind::Discrete => {}
    }
    let seg = pass.seg(pass.t, pass.p);
    be.embedding_forward(&mut a.emb, w.f32(idx.wte), &a.text_ids, wpe, seg)?;
    if let Some(s) = pass.site(SITE_EMB) {
        be.dropout_forward(&mut a.encoded_d, &a.emb, s, pass.b * pass.l * pass.c)?;
    }
    Ok(())
}

/// Backward of [`encoder_forward`] from `a.dres` = d(block input): `+=` into the user/item rows,
/// `wte` and `wpe`.
pub(crate) fn encoder_backward<B: Backend, A: Act>(
    be: &B,
    grads: &mut [B::Buf<f32>],
    need: &dyn Fn(usize) -> Option<usize>,
    idx: &Idx,
    cfg: &ModelConfig,
    a: &mut Acts<B, A>,
    pass: &Pass,
) -> Result<()> {
    let n = pass.b * pass.l * pass.c;
    let demb = super::acts::through_dropout(be, pass.site(SITE_EMB), &a.dres, &mut a.drop_tmp, n)?;
    match cfg.prompt {
        PromptKind::Continuous => {
            let (ui, ii) = idx.user_item();
            let [du, dwpe] = pick(grads, [need(ui), need(idx.wpe)]);
            be.embedding_backward(du, dwpe, demb, &a.users, pass.seg(1, 0))?;
            let [di, dwpe] = pick(grads, [need(ii), need(idx.wpe)]);
            be.embedding_backward(di, dwpe, demb, &a.items, pass.seg(1, 1))?;
        }
        PromptKind::Discrete if pass.p > 0 => {
            let [dwte, dwpe] = pick(grads, [need(idx.wte), need(idx.wpe)]);
            be.embedding_backward(dwte, dwpe, demb, &a.prompt_ids, pass.seg(pass.p, 0))?;
        }
        PromptKind::Discrete => {}
    }
    let [dwte, dwpe] = pick(grads, [need(idx.wte), need(idx.wpe)]);
    be.embedding_backward(dwte, dwpe, demb, &a.text_ids, pass.seg(pass.t, pass.p))
}

// ------------------------------------------------------------------------------------ LM head

/// Final layernorm of `x` (the last block's output), logits of the target rows with the tied
/// `wte`, per-row cross-entropy (dlogits in place when `train`) and the mean text loss into
/// `a.scalars[0]`. With `want_logits`, also the full logits (B, L, V) on the host.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lm_head_forward<B: Backend, A: Act>(
    be: &B,
    w: Weights<'_, B, A>,
    idx: &Idx,
    cfg: &ModelConfig,
    x: &B::Buf<A>,
    a: &mut Acts<B, A>,
    pass: &Pass,
    train: bool,
    want_logits: bool,
) -> Result<Option<Vec<f32>>> {
    let (rows, c, v, n) = (pass.b * pass.l, pass.c, cfg.vocab_size, pass.head_rows);
    let (lnw, lnb) = (w.f32(idx.lnf_w), w.f32(idx.lnf_b));
    let eps = cfg.layer_norm_epsilon;
    be.layernorm_forward(
        &mut a.lnf,
        &mut a.lnf_mean,
        &mut a.lnf_rstd,
        x,
        lnw,
        lnb,
        rows,
        c,
        eps,
    )?;
    let logits = if want_logits {
        // All rows, into a temporary (parity and debugging only).
        let mut full = be.alloc::<A>(rows * v)?;
        let wte = w.gemm(idx.wte)?;
        be.matmul_forward(
            &mut full,
            &a.lnf,
            wte,
            None,
            rows,
            c,
            v,
            WeightLayout::OutIn,
        )?;
        Some(widen(be.download(&full, rows * v)?))
    } else {
        None
    };
    be.row_gather(&mut a.lnf_sel, &a.lnf, &a.sel_idx, n, c, rows)?;
    let wte = w.gemm(idx.wte)?;
    be.matmul_forward(
        &mut a.logits,
        &a.lnf_sel,
        wte,
        None,
        n,
        c,
        v,
        WeightLayout::OutIn,
    )?;
    // the mean over the real targets (padding rows have target -1: loss 0, dlogits 0)
    let dscale = train.then(|| pass.dscale());
    be.crossentropy_forward(&mut a.losses, &mut a.logits, &a.targets, n, v, dscale)?;
    be.crossentropy_mean(&mut a.scalars, 0, &a.losses, &a.targets, n)?;
    Ok(logits)
}

/// Backward of [`lm_head_forward`] (dlogits sit in `a.logits`): `+=` into `wte` and the final
/// layernorm's parameters; `a.dres` = d(x) (=).
#[allow(clippy::too_many_arguments)]
pub(crate) fn lm_head_backward<B: Backend, A: Act>(
    be: &B,
    w: Weights<'_, B, A>,
    grads: &mut [B::Buf<f32>],
    need: &dyn Fn(usize) -> Option<usize>,
    idx: &Idx,
    cfg: &ModelConfig,
    x: &B::Buf<A>,
    a: &mut Acts<B, A>,
    pass: &Pass,
) -> Result<()> {
    let (rows, c, v, n) = (pass.b * pass.l, pass.c, cfg.vocab_size, pass.head_rows);
    let [dwte] = pick(grads, [need(idx.wte)]);
    be.matmul_backward(
        Some(&mut a.dlnf_sel),
        dwte,
        None,
        &a.logits,
        &a.lnf_sel,
        w.gemm(idx.wte)?,
        n,
        c,
        v,
        WeightLayout::OutIn,
    )?;
    // Scatter the target rows' gradient into a zeroed (rows, C) buffer.
    be.zero(&mut a.dlnf)?;
    be.row_scatter_add(&mut a.dlnf, &a.dlnf_sel, &a.sel_idx, n, c, rows)?;
    be.zero(&mut a.dres)?;
    let [dw, db] = pick(grads, [need(idx.lnf_w), need(idx.lnf_b)]);
    be.layernorm_backward(
        &mut a.dres,
        dw,
        db,
        &a.dlnf,
        x,
        w.f32(idx.lnf_w),
        &a.lnf_mean,
        &a.lnf_rstd,
        rows,
        c,
    )
}

// ------------------------------------------------------------------------------------ rating head

/// `a.pred` = the rating head on `[u | i]` (=); MSE against `a.rating_target` into
/// `a.scalars[1]` and `a.dpred = lambda * dMSE/dpred` (=).
pub(crate) fn rating_head_forward<B: Backend, A: Act>(
    be: &B,
    w: Weights<'_, B, A>,
    idx: &Idx,
    cfg: &ModelConfig,
    a: &mut Acts<B, A>,
    pass: &Pass,
) -> Result<()> {
    let (b, c) = (pass.b, pass.c);
    let (ui, ii) = idx.user_item();
    be.embedding_forward(&mut a.ui, w.f32(ui), &a.users, None, pass.pair(0))?;
    be.embedding_forward(&mut a.ui, w.f32(ii), &a.items, None, pass.pair(1))?;
    match cfg.rec {
        RecKind::Mf => be.rating_mf_forward(&mut a.pred, &a.ui, b, c)?,
        _ => {
            let h = cfg.mlp_hidden;
            let nl = idx.rec.len();
            for (k, &(wi, bi)) in idx.rec.iter().enumerate() {
                let (cin, inp) = if k == 0 {
                    (2 * c, &a.ui)
                } else {
                    (h, &a.rec_a[k - 1])
                };
                let (wk, bk) = (w.gemm(wi)?, Some(w.f32(bi)));
                if k + 1 == nl {
                    be.matmul_forward(&mut a.pred, inp, wk, bk, b, cin, 1, WeightLayout::OutIn)?;
                } else {
                    let z = &mut a.rec_z[k];
                    be.matmul_forward(z, inp, wk, bk, b, cin, h, WeightLayout::OutIn)?;
                    be.sigmoid_forward(&mut a.rec_a[k], &a.rec_z[k], b * h)?;
                }
            }
        }
    }
    let (lambda, target) = (cfg.rec_lambda, &a.rating_target);
    be.mse_forward(&mut a.scalars, 1, &mut a.dpred, &a.pred, target, b, lambda)
}

/// Backward of [`rating_head_forward`] from `a.dpred`: `+=` into the head's parameters and the
/// user/item rows it read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rating_head_backward<B: Backend, A: Act>(
    be: &B,
    w: Weights<'_, B, A>,
    grads: &mut [B::Buf<f32>],
    need: &dyn Fn(usize) -> Option<usize>,
    idx: &Idx,
    cfg: &ModelConfig,
    a: &mut Acts<B, A>,
    pass: &Pass,
) -> Result<()> {
    let (b, c) = (pass.b, pass.c);
    match cfg.rec {
        RecKind::Mf => be.rating_mf_backward(&mut a.dui, &a.dpred, &a.ui, b, c)?,
        _ => {
            let h = cfg.mlp_hidden;
            let nl = idx.rec.len();
            for k in (0..nl).rev() {
                let (wi, bi) = idx.rec[k];
                let (cin, inp) = if k == 0 {
                    (2 * c, &a.ui)
                } else {
                    (h, &a.rec_a[k - 1])
                };
                let (cout, dout) = if k + 1 == nl {
                    (1, &a.dpred)
                } else {
                    (h, &a.drec_z)
                };
                // d(input): dui for the first layer, else d(previous activation).
                let dinp = if k == 0 { &mut a.dui } else { &mut a.drec_a };
                let [dw, db] = pick(grads, [need(wi), need(bi)]);
                let layout = WeightLayout::OutIn;
                be.matmul_backward(
                    Some(dinp),
                    dw,
                    db,
                    dout,
                    inp,
                    w.gemm(wi)?,
                    b,
                    cin,
                    cout,
                    layout,
                )?;
                if k > 0 {
                    be.sigmoid_backward(&mut a.drec_z, &a.rec_a[k - 1], &a.drec_a, b * h)?;
                }
            }
        }
    }
    let (ui, ii) = idx.user_item();
    let [du] = pick(grads, [need(ui)]);
    be.embedding_backward(du, None, &a.dui, &a.users, pass.pair(0))?;
    let [di] = pick(grads, [need(ii)]);
    be.embedding_backward(di, None, &a.dui, &a.items, pass.pair(1))
}

/// Activations downloaded as f32 (exact widening).
pub(crate) fn widen<A: Act>(v: Vec<A>) -> Vec<f32> {
    v.into_iter().map(A::to_f32).collect()
}
