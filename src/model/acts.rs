//! The model's activations and their bookkeeping: one block's saved activations (`LayerActs`),
//! everything a forward/backward keeps in backend memory (`Acts`, allocated for the largest
//! (batch, length) seen and reused), the shapes and dropout of one pass (`Pass`), and the dropout
//! sites (the masks are a function of (seed, step, site), so the backward regenerates them).

use anyhow::Result;

use super::block::BlockGrads;
use super::config::{ModelConfig, RecKind};
use crate::backend::{AttnShape, Backend, DropoutSite, EmbedShape};

/// Dropout site ids (see `ops::dropout`): embedding, then three per layer.
pub(crate) const SITE_EMB: u32 = 0;
pub(crate) fn site_attn(l: usize) -> u32 {
    1 + 3 * l as u32
}
pub(crate) fn site_attn_resid(l: usize) -> u32 {
    2 + 3 * l as u32
}
pub(crate) fn site_mlp_resid(l: usize) -> u32 {
    3 + 3 * l as u32
}

/// Dropout of one training step. The masks are a function of (seed, step, site) (`ops::dropout`),
/// so `backward` regenerates the forward's masks instead of storing them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepDropout {
    pub p: f32,
    pub seed: u64,
    pub step: u64,
}

impl StepDropout {
    pub fn site(self, site: u32) -> DropoutSite {
        DropoutSite {
            p: self.p,
            seed: self.seed,
            step: self.step,
            site,
        }
    }
}

/// One block's activations (capacity rows = cap_b * cap_l).
pub(crate) struct LayerActs<B: Backend> {
    pub ln1: B::Buf<f32>,
    pub ln1_mean: B::Buf<f32>,
    pub ln1_rstd: B::Buf<f32>,
    pub qkv: B::Buf<f32>,
    pub att: B::Buf<f32>,
    pub atty: B::Buf<f32>,
    pub attproj: B::Buf<f32>,
    pub res2: B::Buf<f32>,
    pub ln2: B::Buf<f32>,
    pub ln2_mean: B::Buf<f32>,
    pub ln2_rstd: B::Buf<f32>,
    pub fch: B::Buf<f32>,
    pub fchg: B::Buf<f32>,
    pub fcproj: B::Buf<f32>,
    pub res3: B::Buf<f32>,
}

impl<B: Backend> LayerActs<B> {
    /// Buffers for `rows` positions of width `c`; `att` = length of the attention state the
    /// backend saves for the backward (`Backend::attention_state_len`; 0 for decoding).
    pub(crate) fn new(be: &B, rows: usize, c: usize, att: usize) -> Result<Self> {
        let f = |n: usize| be.alloc::<f32>(n);
        Ok(LayerActs {
            ln1: f(rows * c)?,
            ln1_mean: f(rows)?,
            ln1_rstd: f(rows)?,
            qkv: f(rows * 3 * c)?,
            att: f(att)?,
            atty: f(rows * c)?,
            attproj: f(rows * c)?,
            res2: f(rows * c)?,
            ln2: f(rows * c)?,
            ln2_mean: f(rows)?,
            ln2_rstd: f(rows)?,
            fch: f(rows * 4 * c)?,
            fchg: f(rows * 4 * c)?,
            fcproj: f(rows * c)?,
            res3: f(rows * c)?,
        })
    }
}

/// All activations and scratch of one forward/backward, sized for (cap_b, cap_l).
pub(crate) struct Acts<B: Backend> {
    pub cap_b: usize,
    pub cap_l: usize,
    // inputs
    pub text_ids: B::Buf<i32>,
    pub prompt_ids: B::Buf<i32>,
    pub users: B::Buf<i32>,
    pub items: B::Buf<i32>,
    pub key_mask: B::Buf<i32>,
    pub sel_idx: B::Buf<i32>,
    pub targets: B::Buf<i32>,
    pub rating_target: B::Buf<f32>,
    // forward
    pub emb: B::Buf<f32>,
    pub encoded_d: B::Buf<f32>,
    pub layers: Vec<LayerActs<B>>,
    pub lnf: B::Buf<f32>,
    pub lnf_mean: B::Buf<f32>,
    pub lnf_rstd: B::Buf<f32>,
    pub lnf_sel: B::Buf<f32>,
    pub logits: B::Buf<f32>,
    pub losses: B::Buf<f32>,
    /// `[text loss, rating loss, gradient norm]` on the device: the losses are the one read of a
    /// training step; the gradient norm is read when asked (per epoch).
    pub scalars: B::Buf<f32>,
    pub ui: B::Buf<f32>,
    pub rec_z: Vec<B::Buf<f32>>,
    pub rec_a: Vec<B::Buf<f32>>,
    pub pred: B::Buf<f32>,
    pub dpred: B::Buf<f32>,
    // backward scratch
    pub drop_tmp: B::Buf<f32>,
    pub dres: B::Buf<f32>,
    /// d(ln_f output) (rows, C): the LM head's gradient scattered back to every position.
    pub dlnf: B::Buf<f32>,
    /// One block's activation gradients, reused by every block.
    pub dblock: BlockGrads<B>,
    pub dlnf_sel: B::Buf<f32>,
    pub dui: B::Buf<f32>,
    pub drec_a: B::Buf<f32>,
    pub drec_z: B::Buf<f32>,
}

impl<B: Backend> Acts<B> {
    pub fn new(be: &B, cfg: &ModelConfig, cap_b: usize, cap_l: usize) -> Result<Self> {
        let c = cfg.n_embd;
        let rows = cap_b * cap_l;
        let f = |n: usize| be.alloc::<f32>(n);
        let i = |n: usize| be.alloc::<i32>(n);
        let att = be.attention_state_len(AttnShape {
            b: cap_b,
            l: cap_l,
            c,
            nh: cfg.n_head,
        });
        let layers = (0..cfg.n_layer)
            .map(|_| LayerActs::new(be, rows, c, att))
            .collect::<Result<Vec<_>>>()?;
        let (n_rec, h) = match cfg.rec {
            RecKind::Mlp => (1 + cfg.mlp_layers, cfg.mlp_hidden),
            _ => (0, 0),
        };
        let mut rec_z = Vec::new();
        let mut rec_a = Vec::new();
        for _ in 0..n_rec {
            rec_z.push(f(cap_b * h)?);
            rec_a.push(f(cap_b * h)?);
        }
        let has_rec = cfg.rec != RecKind::None;
        let rc = if has_rec { cap_b * 2 * c } else { 0 };
        Ok(Acts {
            cap_b,
            cap_l,
            text_ids: i(rows)?,
            prompt_ids: i(rows)?,
            users: i(cap_b)?,
            items: i(cap_b)?,
            key_mask: i(rows)?,
            sel_idx: i(rows)?,
            targets: i(rows)?,
            rating_target: f(cap_b)?,
            emb: f(rows * c)?,
            encoded_d: f(if cfg.dropout > 0.0 { rows * c } else { 0 })?,
            layers,
            lnf: f(rows * c)?,
            lnf_mean: f(rows)?,
            lnf_rstd: f(rows)?,
            lnf_sel: f(rows * c)?,
            logits: f(rows * cfg.vocab_size)?,
            losses: f(rows)?,
            scalars: f(3)?,
            ui: f(rc)?,
            rec_z,
            rec_a,
            pred: f(cap_b)?,
            dpred: f(cap_b)?,
            drop_tmp: f(if cfg.dropout > 0.0 { rows * c } else { 0 })?,
            dres: f(rows * c)?,
            dlnf: f(rows * c)?,
            dblock: BlockGrads::new(be, rows, c)?,
            dlnf_sel: f(rows * c)?,
            dui: f(rc)?,
            drec_a: f(cap_b * h)?,
            drec_z: f(cap_b * h)?,
        })
    }
}

/// Shapes and dropout of one forward pass; the last training one is kept for `backward`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pass {
    pub b: usize,
    pub l: usize,
    pub p: usize,
    pub t: usize,
    /// Target tokens (rows of the LM head).
    pub n: usize,
    pub c: usize,
    pub dropout: Option<StepDropout>,
    /// The batch has padded keys (attention takes the key mask).
    pub any_pad: bool,
}

impl Pass {
    /// `n_ids` ids per sequence at positions `offset..` of the `l`-long input (encoder segments).
    pub fn seg(&self, n_ids: usize, offset: usize) -> EmbedShape {
        EmbedShape {
            batch: self.b,
            n: n_ids,
            seq: self.l,
            offset,
            pos0: 0,
            c: self.c,
        }
    }

    /// Half `offset` (0 = user, 1 = item) of the rating head's `[u | i]` rows.
    pub fn pair(&self, offset: usize) -> EmbedShape {
        EmbedShape {
            batch: self.b,
            n: 1,
            seq: 2,
            offset,
            pos0: 0,
            c: self.c,
        }
    }

    /// The dropout site `s` of this pass (`None` without dropout).
    pub fn site(&self, s: u32) -> Option<DropoutSite> {
        self.dropout.map(|d| d.site(s))
    }
}

/// `n` rows of width `c` gathered by index (`embedding_forward` without positions) or scattered
/// back (`embedding_backward`): the LM head's target rows, decoding's last positions.
pub(crate) fn row_gather(n: usize, c: usize) -> EmbedShape {
    EmbedShape {
        batch: 1,
        n,
        seq: n,
        offset: 0,
        pos0: 0,
        c,
    }
}

/// The input of the block after `before`: the previous block's output, or for the first block the
/// embeddings (after dropout when the pass has it).
pub(crate) fn block_input<'a, B: Backend>(
    before: &'a [LayerActs<B>],
    emb: &'a B::Buf<f32>,
    encoded_d: &'a B::Buf<f32>,
    dropout: bool,
) -> &'a B::Buf<f32> {
    match before.last() {
        Some(prev) => &prev.res3,
        None if dropout => encoded_d,
        None => emb,
    }
}

/// The gradient that reaches a dropped-out branch from `dres`: `dropout(dres)` with the forward's
/// mask, written to `tmp`, or `dres` itself without dropout.
pub(crate) fn through_dropout<'a, B: Backend>(
    be: &B,
    site: Option<DropoutSite>,
    dres: &'a B::Buf<f32>,
    tmp: &'a mut B::Buf<f32>,
    n: usize,
) -> Result<&'a B::Buf<f32>> {
    match site {
        Some(s) => {
            be.dropout_forward(tmp, dres, s, n)?;
            Ok(tmp)
        }
        None => Ok(dres),
    }
}
