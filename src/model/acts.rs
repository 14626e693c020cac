//! The model's activations and their bookkeeping: one block's saved activations (`LayerActs`),
//! everything a forward/backward keeps in backend memory (`Acts`, allocated for the largest
//! (batch, length) seen and reused), the shapes and dropout of one pass (`Pass`), and the dropout
//! sites (the masks are a function of (seed, step, site), so the backward regenerates them).

use anyhow::Result;

use super::block::BlockGrads;
use super::config::{ModelConfig, RecKind};
use crate::backend::{Act, AttnShape, Backend, DropoutSite, EmbedShape};

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
pub(crate) struct LayerActs<B: Backend, A: Act> {
    pub ln1: B::Buf<A>,
    pub ln1_mean: B::Buf<f32>,
    pub ln1_rstd: B::Buf<f32>,
    pub qkv: B::Buf<A>,
    pub att: B::Buf<f32>,
    pub atty: B::Buf<A>,
    pub attproj: B::Buf<A>,
    pub res2: B::Buf<A>,
    pub ln2: B::Buf<A>,
    pub ln2_mean: B::Buf<f32>,
    pub ln2_rstd: B::Buf<f32>,
    pub fch: B::Buf<A>,
    pub fchg: B::Buf<A>,
    pub fcproj: B::Buf<A>,
    pub res3: B::Buf<A>,
}

impl<B: Backend, A: Act> LayerActs<B, A> {
    /// Buffers for `rows` positions of width `c`; `att` = length of the attention state the
    /// backend saves for the backward (`Backend::attention_state_len`; 0 for decoding).
    pub(crate) fn new(be: &B, rows: usize, c: usize, att: usize) -> Result<Self> {
        let f = |n: usize| be.alloc::<f32>(n);
        let a = |n: usize| be.alloc::<A>(n);
        Ok(LayerActs {
            ln1: a(rows * c)?,
            ln1_mean: f(rows)?,
            ln1_rstd: f(rows)?,
            qkv: a(rows * 3 * c)?,
            att: f(att)?,
            atty: a(rows * c)?,
            attproj: a(rows * c)?,
            res2: a(rows * c)?,
            ln2: a(rows * c)?,
            ln2_mean: f(rows)?,
            ln2_rstd: f(rows)?,
            fch: a(rows * 4 * c)?,
            fchg: a(rows * 4 * c)?,
            fcproj: a(rows * c)?,
            res3: a(rows * c)?,
        })
    }
}

/// All activations and scratch of one forward/backward, sized for (cap_b, cap_l).
pub(crate) struct Acts<B: Backend, A: Act> {
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
    pub emb: B::Buf<A>,
    pub encoded_d: B::Buf<A>,
    pub layers: Vec<LayerActs<B, A>>,
    pub lnf: B::Buf<A>,
    pub lnf_mean: B::Buf<f32>,
    pub lnf_rstd: B::Buf<f32>,
    pub lnf_sel: B::Buf<A>,
    pub logits: B::Buf<A>,
    pub losses: B::Buf<f32>,
    /// `[text loss, rating loss, gradient norm]` on the device: the losses are the one read of a
    /// training step; the gradient norm is read when asked (per epoch).
    pub scalars: B::Buf<f32>,
    pub ui: B::Buf<A>,
    pub rec_z: Vec<B::Buf<A>>,
    pub rec_a: Vec<B::Buf<A>>,
    pub pred: B::Buf<A>,
    pub dpred: B::Buf<A>,
    // backward scratch
    pub drop_tmp: B::Buf<A>,
    pub dres: B::Buf<A>,
    /// d(ln_f output) (rows, C): the LM head's gradient scattered back to every position.
    pub dlnf: B::Buf<A>,
    /// One block's activation gradients, reused by every block.
    pub dblock: BlockGrads<B, A>,
    pub dlnf_sel: B::Buf<A>,
    pub dui: B::Buf<A>,
    pub drec_a: B::Buf<A>,
    pub drec_z: B::Buf<A>,
}

impl<B: Backend, A: Act> Acts<B, A> {
    pub fn new(be: &B, cfg: &ModelConfig, cap_b: usize, cap_l: usize) -> Result<Self> {
        let c = cfg.n_embd;
        let rows = cap_b * cap_l;
        let f = |n: usize| be.alloc::<f32>(n);
        let x = |n: usize| be.alloc::<A>(n);
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
            rec_z.push(x(cap_b * h)?);
            rec_a.push(x(cap_b * h)?);
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
            emb: x(rows * c)?,
            encoded_d: x(if cfg.dropout > 0.0 { rows * c } else { 0 })?,
            layers,
            lnf: x(rows * c)?,
            lnf_mean: f(rows)?,
            lnf_rstd: f(rows)?,
            lnf_sel: x(rows * c)?,
            logits: x(rows * cfg.vocab_size)?,
            losses: f(rows)?,
            scalars: f(3)?,
            ui: x(rc)?,
            rec_z,
            rec_a,
            pred: x(cap_b)?,
            dpred: x(cap_b)?,
            drop_tmp: x(if cfg.dropout > 0.0 { rows * c } else { 0 })?,
            dres: x(rows * c)?,
            dlnf: x(rows * c)?,
            dblock: BlockGrads::new(be, rows, c)?,
            dlnf_sel: x(rows * c)?,
            dui: x(rc)?,
            drec_a: x(cap_b * h)?,
            drec_z: x(cap_b * h)?,
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
    /// Target tokens (the text loss averages over them).
    pub n: usize,
    /// Rows the LM head runs on: the `n` target rows, then (on backends with step graphs)
    /// non-target rows with target -1 up to a multiple of `HEAD_ROW_BUCKET` (loss 0, gradient 0),
    /// so that batches with nearby target counts share one captured step.
    pub head_rows: usize,
    pub c: usize,
    pub dropout: Option<StepDropout>,
    /// The batch has padded keys (attention takes the key mask).
    pub any_pad: bool,
}

impl Pass {
    /// The text loss's gradient scale, 1 / the target count: `crossentropy_forward`'s dscale and
    /// the step scalar a captured step reads in its place (one expression, so the same bits).
    pub fn dscale(&self) -> f32 {
        1.0 / self.n as f32
    }

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

/// The input of the block after `before`: the previous block's output, or for the first block the
/// embeddings (after dropout when the pass has it).
pub(crate) fn block_input<'a, B: Backend, A: Act>(
    before: &'a [LayerActs<B, A>],
    emb: &'a B::Buf<A>,
    encoded_d: &'a B::Buf<A>,
    dropout: bool,
) -> &'a B::Buf<A> {
    match before.last() {
        Some(prev) => &prev.res3,
        None if dropout => encoded_d,
        None => emb,
    }
}

/// The gradient that reaches a dropped-out branch from `dres`: `dropout(dres)` with the forward's
/// mask, written to `tmp`, or `dres` itself without dropout.
pub(crate) fn through_dropout<'a, B: Backend, A: Act>(
    be: &B,
    site: Option<DropoutSite>,
    dres: &'a B::Buf<A>,
    tmp: &'a mut B::Buf<A>,
    n: usize,
) -> Result<&'a B::Buf<A>> {
    match site {
        Some(s) => {
            be.dropout_forward(tmp, dres, s, n)?;
            Ok(tmp)
        }
        None => Ok(dres),
    }
}
