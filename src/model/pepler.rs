//! GPT-2 + PEPLER written once against a [`Backend`]: forward (logits on request, text loss, rating
//! loss, total loss), backward (every parameter gradient, or only the requested ones), eval-only
//! forward, AdamW steps, and parameter upload/download. KV-cache decoding lives in `decode.rs`.
//!
//! # How the model maps onto the backend
//! Input = `[prompt, text]` of length `L = P + T`, positions `0..L`:
//! - encoder: one `embedding_forward` per segment, each adding `wpe` for its positions: continuous
//!   prompt = user row (pos 0) + item row (pos 1) + `wte[text]` (pos 2..); discrete = `wte[prompt]`
//!   + `wte[text]`; then embedding dropout.
//! - each pre-LN block: `layernorm` -> `matmul` (c_attn, Conv1D) -> `attention` (causal AND key
//!   padding `[1]*P ++ mask`) -> `matmul` (c_proj) -> dropout -> `residual`; `layernorm` -> `matmul`
//!   (c_fc) -> `gelu` -> `matmul` (c_proj) -> dropout -> `residual`.
//! - final `layernorm`; the LM head (tied `wte`, `OutIn` layout) runs only on the rows that carry a
//!   target (gathered with `embedding_forward` as a row gather), fused with `crossentropy_forward`,
//!   which leaves dlogits in place for the backward. Full logits `[B, L, V]` only on request.
//! - targets: position `P + t - 1` predicts `text[t]` where `mask[t] == 1` (HF's shift by one);
//!   text loss = mean over those targets of the whole batch.
//! - rating head on `[u | i]` (gathered rows of the user/item tables): MF = `rating_mf`, MLP =
//!   `matmul` (`OutIn`) + `sigmoid` layers; loss = text + lambda * MSE.
//!
//! The block forward (`block_forward`) is shared with KV-cache decoding, which swaps the attention
//! for `attention_cached_forward`.
//!
//! Backward mirrors this in reverse with one residual-gradient buffer updated in place (llm.c).
//! Activation buffers are allocated for the largest (batch, length) seen and reused.
//!
//! Call order for training: `zero_grads`, `forward` (train), `backward`, `adamw_step`.

use anyhow::{bail, Context, Result};

use super::batch::Batch;
use super::config::{ModelConfig, PromptKind, RecKind};
use super::params::{ParamSet, ParamSpec};
use crate::backend::{
    AdamWParams, AttnShape, Backend, DropoutSite, EmbedShape, GroupTensor, WeightLayout,
};

/// Dropout site ids (see `ops::dropout`): embedding, then three per layer.
const SITE_EMB: u32 = 0;
fn site_attn(l: usize) -> u32 {
    1 + 3 * l as u32
}
fn site_attn_resid(l: usize) -> u32 {
    2 + 3 * l as u32
}
fn site_mlp_resid(l: usize) -> u32 {
    3 + 3 * l as u32
}

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

/// Indices of every parameter the model uses.
#[derive(Clone, Debug)]
pub(crate) struct Idx {
    pub wte: usize,
    pub wpe: usize,
    pub layers: Vec<LayerIdx>,
    pub lnf_w: usize,
    pub lnf_b: usize,
    pub user: Option<usize>,
    pub item: Option<usize>,
    /// MLP head (weight, bias) per linear layer: first, hidden.., last.
    pub rec: Vec<(usize, usize)>,
}

impl Idx {
    fn new(cfg: &ModelConfig, specs: &[ParamSpec]) -> Result<Self> {
        let find = |name: &str| -> Result<usize> {
            specs.iter().position(|s| s.name == name).with_context(|| {
                format!("model: parameter `{name}` missing from the parameter list")
            })
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| find(&format!("transformer.h.{i}.{s}"));
            layers.push(LayerIdx {
                ln1_w: p("ln_1.weight")?,
                ln1_b: p("ln_1.bias")?,
                qkv_w: p("attn.c_attn.weight")?,
                qkv_b: p("attn.c_attn.bias")?,
                proj_w: p("attn.c_proj.weight")?,
                proj_b: p("attn.c_proj.bias")?,
                ln2_w: p("ln_2.weight")?,
                ln2_b: p("ln_2.bias")?,
                fc_w: p("mlp.c_fc.weight")?,
                fc_b: p("mlp.c_fc.bias")?,
                fcp_w: p("mlp.c_proj.weight")?,
                fcp_b: p("mlp.c_proj.bias")?,
            });
        }
        let (user, item) = if cfg.has_id_embeddings() {
            (
                Some(find("user_embeddings.weight")?),
                Some(find("item_embeddings.weight")?),
            )
        } else {
            (None, None)
        };
        let mut rec = Vec::new();
        if cfg.rec == RecKind::Mlp {
            rec.push((
                find("recommender.first_layer.weight")?,
                find("recommender.first_layer.bias")?,
            ));
            for j in 0..cfg.mlp_layers {
                rec.push((
                    find(&format!("recommender.layers.{j}.weight"))?,
                    find(&format!("recommender.layers.{j}.bias"))?,
                ));
            }
            rec.push((
                find("recommender.last_layer.weight")?,
                find("recommender.last_layer.bias")?,
            ));
        }
        Ok(Idx {
            wte: find("transformer.wte.weight")?,
            wpe: find("transformer.wpe.weight")?,
            layers,
            lnf_w: find("transformer.ln_f.weight")?,
            lnf_b: find("transformer.ln_f.bias")?,
            user,
            item,
            rec,
        })
    }

    /// The user and item embedding tables (continuous prompt or a rating head; the config
    /// validation guarantees them there).
    pub(crate) fn user_item(&self) -> (usize, usize) {
        let need = "user/item embeddings exist for a continuous prompt or a rating head";
        (self.user.expect(need), self.item.expect(need))
    }
}

/// Distinct mutable references to up to `N` elements of `v` (`None` entries stay `None`).
pub(crate) fn pick<const N: usize, T>(
    v: &mut [T],
    want: [Option<usize>; N],
) -> [Option<&mut T>; N] {
    let mut out: [Option<&mut T>; N] = std::array::from_fn(|_| None);
    for (i, x) in v.iter_mut().enumerate() {
        if let Some(k) = want.iter().position(|w| *w == Some(i)) {
            debug_assert!(
                want.iter().filter(|w| **w == Some(i)).count() == 1,
                "pick: repeated index"
            );
            out[k] = Some(x);
        }
    }
    out
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

/// How a block attends: over the whole sequences of a batch (training and eval), or appending the
/// new positions to a KV cache and attending over everything cached (decoding).
pub(crate) enum BlockAttn<'a, B: Backend> {
    /// Causal, with the key-padding mask when the batch has padding.
    Full { mask: Option<&'a B::Buf<i32>> },
    /// `ash.l` new positions at `start` of a (B, NH, lmax, hd) cache.
    Cached {
        k: &'a mut B::Buf<f32>,
        v: &'a mut B::Buf<f32>,
        start: usize,
        lmax: usize,
    },
}

/// Dropout of one training step. The masks are a function of (seed, step, site) (`ops::dropout`),
/// so `backward` regenerates the forward's masks instead of storing them.
#[derive(Clone, Copy, Debug)]
struct StepDropout {
    p: f32,
    seed: u64,
    step: u64,
}

impl StepDropout {
    fn site(self, site: u32) -> DropoutSite {
        DropoutSite {
            p: self.p,
            seed: self.seed,
            step: self.step,
            site,
        }
    }
}

/// Training dropout inside block `layer`: the step's masks and the scratch a dropped residual
/// branch is written to.
pub(crate) struct BlockDropout<'a, B: Backend> {
    step: StepDropout,
    layer: usize,
    tmp: &'a mut B::Buf<f32>,
}

/// One pre-LN GPT-2 block on `ash.b * ash.l` rows, shared by the training/eval forward and KV-cache
/// decoding: reads `x`, leaves every intermediate in `la` (what `backward` needs) and the block's
/// output in `la.res3`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn block_forward<B: Backend>(
    be: &B,
    params: &[B::Buf<f32>],
    lw: &LayerIdx,
    eps: f32,
    x: &B::Buf<f32>,
    la: &mut LayerActs<B>,
    attn: BlockAttn<'_, B>,
    dropout: Option<BlockDropout<'_, B>>,
    ash: AttnShape,
) -> Result<()> {
    let w = |i: usize| &params[i];
    let (rows, c) = (ash.b * ash.l, ash.c);
    be.layernorm_forward(
        &mut la.ln1,
        &mut la.ln1_mean,
        &mut la.ln1_rstd,
        x,
        w(lw.ln1_w),
        w(lw.ln1_b),
        rows,
        c,
        eps,
    )?;
    be.matmul_forward(
        &mut la.qkv,
        &la.ln1,
        w(lw.qkv_w),
        Some(w(lw.qkv_b)),
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
        w(lw.proj_w),
        Some(w(lw.proj_b)),
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
        w(lw.ln2_w),
        w(lw.ln2_b),
        rows,
        c,
        eps,
    )?;
    be.matmul_forward(
        &mut la.fch,
        &la.ln2,
        w(lw.fc_w),
        Some(w(lw.fc_b)),
        rows,
        c,
        4 * c,
        WeightLayout::InOut,
    )?;
    be.gelu_forward(&mut la.fchg, &la.fch, rows * 4 * c)?;
    be.matmul_forward(
        &mut la.fcproj,
        &la.fchg,
        w(lw.fcp_w),
        Some(w(lw.fcp_b)),
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
    /// `[text loss, rating loss]` on the device: the one read of a training step.
    pub scalars: B::Buf<f32>,
    pub ui: B::Buf<f32>,
    pub rec_z: Vec<B::Buf<f32>>,
    pub rec_a: Vec<B::Buf<f32>>,
    pub pred: B::Buf<f32>,
    pub dpred: B::Buf<f32>,
    // backward scratch
    pub drop_tmp: B::Buf<f32>,
    pub dres: B::Buf<f32>,
    pub dc1: B::Buf<f32>,
    pub dc2: B::Buf<f32>,
    pub dqkv: B::Buf<f32>,
    pub d4a: B::Buf<f32>,
    pub d4b: B::Buf<f32>,
    pub dlnf_sel: B::Buf<f32>,
    pub dui: B::Buf<f32>,
    pub drec_a: B::Buf<f32>,
    pub drec_z: B::Buf<f32>,
}

impl<B: Backend> Acts<B> {
    fn new(be: &B, cfg: &ModelConfig, cap_b: usize, cap_l: usize) -> Result<Self> {
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
            scalars: f(2)?,
            ui: f(rc)?,
            rec_z,
            rec_a,
            pred: f(cap_b)?,
            dpred: f(cap_b)?,
            drop_tmp: f(if cfg.dropout > 0.0 { rows * c } else { 0 })?,
            dres: f(rows * c)?,
            dc1: f(rows * c)?,
            dc2: f(rows * c)?,
            dqkv: f(rows * 3 * c)?,
            d4a: f(rows * 4 * c)?,
            d4b: f(rows * 4 * c)?,
            dlnf_sel: f(rows * c)?,
            dui: f(rc)?,
            drec_a: f(cap_b * h)?,
            drec_z: f(cap_b * h)?,
        })
    }
}

/// What one forward call should do.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ForwardOptions {
    /// Training: dropout on (per the config) and gradients prepared for `backward`.
    pub train: bool,
    /// Optimizer step (selects the dropout masks).
    pub step: u64,
    /// Also compute and return the full logits `[B, L, V]` (parity, debugging).
    pub want_logits: bool,
}

/// What comes back to the host from a forward call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ForwardOutput {
    /// Mean token cross-entropy over the batch's targets.
    pub text_loss: f32,
    /// MSE of the rating head (when it has one).
    pub rating_loss: Option<f32>,
    /// `text_loss + rec_lambda * rating_loss`.
    pub loss: f32,
    /// Predicted ratings [B] (when there is a rating head).
    pub rating: Option<Vec<f32>>,
    /// Logits [B, L, V] when requested.
    pub logits: Option<Vec<f32>>,
    /// Number of target tokens the text loss averages over.
    pub n_targets: usize,
}

/// Shapes and dropout of one forward pass; the last training one is kept for `backward`.
#[derive(Clone, Copy, Debug)]
struct Pass {
    b: usize,
    l: usize,
    p: usize,
    t: usize,
    /// Target tokens (rows of the LM head).
    n: usize,
    c: usize,
    dropout: Option<StepDropout>,
    /// The batch has padded keys (attention takes the key mask).
    any_pad: bool,
}

impl Pass {
    /// `n_ids` ids per sequence at positions `offset..` of the `l`-long input (encoder segments).
    fn seg(&self, n_ids: usize, offset: usize) -> EmbedShape {
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
    fn pair(&self, offset: usize) -> EmbedShape {
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
    fn site(&self, s: u32) -> Option<DropoutSite> {
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
fn block_input<'a, B: Backend>(
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
fn through_dropout<'a, B: Backend>(
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

/// AdamW first and second moments of every parameter, in backend memory (one group each), and
/// which parameters have been updated since the optimizer was (re)set: the others' moments are
/// not part of the optimizer state (checkpoints store `None`) and start from zero when first used.
struct Moments<B: Backend> {
    m: Vec<B::Buf<f32>>,
    v: Vec<B::Buf<f32>>,
    live: Vec<bool>,
}

/// AdamW moments `(m, v)` per parameter on the host (`None`: not updated yet).
pub type HostMoments = Vec<Option<(Vec<f32>, Vec<f32>)>>;

/// GPT-2 + PEPLER on backend `B` (see the module docs).
pub struct Pepler<B: Backend> {
    pub(crate) cfg: ModelConfig,
    pub(crate) be: B,
    pub(crate) specs: Vec<ParamSpec>,
    pub(crate) idx: Idx,
    pub(crate) params: Vec<B::Buf<f32>>,
    grads: Vec<B::Buf<f32>>,
    moments: Option<Moments<B>>,
    acts: Option<Acts<B>>,
    saved: Option<Pass>,
    /// Dropout seed.
    pub seed: u64,
}

impl<B: Backend> Pepler<B> {
    /// Uploads `params` (its config defines the model) to the backend.
    pub fn new(be: B, params: &ParamSet) -> Result<Self> {
        let cfg = params.config().clone();
        cfg.validate()?;
        let specs = params.specs().to_vec();
        let idx = Idx::new(&cfg, &specs)?;
        // Parameters, gradients and moments are each one group (one allocation on a GPU), so
        // zeroing every gradient and updating every parameter are one launch each.
        let lens: Vec<usize> = specs.iter().map(|s| s.numel()).collect();
        let mut bufs = be.alloc_group(&lens)?;
        for ((spec, t), buf) in params.iter().zip(&mut bufs) {
            if t.data.len() != spec.numel() {
                bail!(
                    "model: parameter `{}` has {} values, expected {}",
                    spec.name,
                    t.data.len(),
                    spec.numel()
                );
            }
            be.write(buf, &t.data)?;
        }
        Ok(Pepler {
            cfg,
            be,
            specs,
            idx,
            params: bufs,
            grads: Vec::new(),
            moments: None,
            acts: None,
            saved: None,
            seed: 0,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn backend(&self) -> &B {
        &self.be
    }
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Overwrites every parameter from `params` (same config).
    pub fn upload_params(&mut self, params: &ParamSet) -> Result<()> {
        if params.config() != &self.cfg {
            bail!("model: upload_params with a different config");
        }
        for (i, (_, t)) in params.iter().enumerate() {
            self.be.write(&mut self.params[i], &t.data)?;
        }
        Ok(())
    }

    fn download_set(&self, bufs: &[B::Buf<f32>]) -> Result<ParamSet> {
        let mut i = 0;
        ParamSet::try_from_fn(&self.cfg, |spec| {
            let data = self.be.download(&bufs[i], spec.numel())?;
            i += 1;
            super::params::HostTensor::new(spec.shape.clone(), data)
        })
    }

    /// The current parameters, on the host.
    pub fn download_params(&self) -> Result<ParamSet> {
        self.download_set(&self.params)
    }

    /// The accumulated gradients, on the host (zeros before the first backward).
    pub fn download_grads(&self) -> Result<ParamSet> {
        if self.grads.is_empty() {
            return Ok(ParamSet::zeros(&self.cfg));
        }
        self.download_set(&self.grads)
    }

    /// Sets every gradient to zero (allocating them on first use).
    pub fn zero_grads(&mut self) -> Result<()> {
        if self.grads.is_empty() {
            self.grads = self.be.alloc_group(&self.lens())?;
            return Ok(());
        }
        self.be.zero_group(&mut self.grads)
    }

    /// One AdamW update of every parameter whose `trainable` flag is set (moments allocated on
    /// first use; `step` counts from 1 as torch's `state['step']`). Frozen parameters are untouched.
    pub fn adamw_step(&mut self, hp: AdamWParams, step: u64, trainable: &[bool]) -> Result<()> {
        if trainable.len() != self.params.len() {
            bail!(
                "adamw_step: {} trainable flags for {} parameters",
                trainable.len(),
                self.params.len()
            );
        }
        if self.grads.is_empty() {
            bail!("adamw_step: no gradients (call zero_grads, forward, backward first)");
        }
        self.ensure_moments()?;
        let Pepler { be, moments, .. } = self;
        let mo = moments.as_mut().expect("ensured above");
        for (i, &tr) in trainable.iter().enumerate() {
            if tr && !mo.live[i] {
                // fresh moments for a tensor the optimizer has not updated since it was set
                be.zero(&mut mo.m[i])?;
                be.zero(&mut mo.v[i])?;
                mo.live[i] = true;
            }
        }
        let tensors: Vec<GroupTensor> = trainable
            .iter()
            .map(|&trainable| GroupTensor {
                trainable,
                decay: true,
            })
            .collect();
        let Pepler {
            be,
            params,
            grads,
            moments,
            ..
        } = self;
        let Moments { m, v, .. } = moments.as_mut().expect("ensured above");
        be.adamw_update_group(params, grads, m, v, &tensors, hp, step)
    }

    /// Element count of every parameter, in canonical order.
    fn lens(&self) -> Vec<usize> {
        self.specs.iter().map(|s| s.numel()).collect()
    }

    /// Allocates the moment groups (zero-filled) on first use.
    fn ensure_moments(&mut self) -> Result<()> {
        if self.moments.is_none() {
            let lens = self.lens();
            self.moments = Some(Moments {
                m: self.be.alloc_group(&lens)?,
                v: self.be.alloc_group(&lens)?,
                live: vec![false; lens.len()],
            });
        }
        Ok(())
    }

    fn ensure_acts(&mut self, b: usize, l: usize) -> Result<()> {
        let fits = self
            .acts
            .as_ref()
            .is_some_and(|a| a.cap_b >= b && a.cap_l >= l);
        if !fits {
            let (cb, cl) = match &self.acts {
                Some(a) => (a.cap_b.max(b), a.cap_l.max(l)),
                None => (b, l),
            };
            self.acts = None; // free before allocating the larger set
            self.acts = Some(Acts::new(&self.be, &self.cfg, cb, cl)?);
        }
        Ok(())
    }

    /// Forward pass over `batch`. With `opts.train`, dropout is on and `backward` may follow.
    pub fn forward(&mut self, batch: &Batch, opts: ForwardOptions) -> Result<ForwardOutput> {
        let cfg = self.cfg.clone();
        let cfg = &cfg;
        batch.validate(cfg)?;
        let (b, t) = (batch.b, batch.t);
        let p = batch.prompt_len(cfg);
        let l = p + t;
        let (c, v, nh) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let rows = b * l;
        // Targets: position p+t'-1 predicts text[t'] where mask[t'] == 1 (HF shift by one).
        let mut sel = Vec::with_capacity(rows);
        let mut tgt = Vec::with_capacity(rows);
        for bi in 0..b {
            for ti in 0..t {
                if batch.mask[bi * t + ti] == 1 && p + ti >= 1 {
                    sel.push((bi * l + p + ti - 1) as i32);
                    tgt.push(batch.text[bi * t + ti] as i32);
                }
            }
        }
        let n = sel.len();
        if n == 0 {
            bail!("forward: the batch has no target tokens (all text is padding)");
        }
        self.ensure_acts(b, l)?;
        let dropout = (opts.train && cfg.dropout > 0.0).then_some(StepDropout {
            p: cfg.dropout,
            seed: self.seed,
            step: opts.step,
        });
        let any_pad = batch.mask.contains(&0);
        let pass = Pass {
            b,
            l,
            p,
            t,
            n,
            c,
            dropout,
            any_pad,
        };
        let Pepler {
            cfg,
            be,
            idx,
            params,
            acts,
            ..
        } = self;
        let a = acts.as_mut().expect("ensured above");
        let w = |i: usize| &params[i];

        // ---- inputs
        let text: Vec<i32> = batch.text.iter().map(|&x| x as i32).collect();
        be.write(&mut a.text_ids, &text)?;
        let mut km = Vec::with_capacity(rows);
        for bi in 0..b {
            km.extend(std::iter::repeat_n(1i32, p));
            km.extend(batch.mask[bi * t..(bi + 1) * t].iter().map(|&m| m as i32));
        }
        be.write(&mut a.key_mask, &km)?;
        be.write(&mut a.sel_idx, &sel)?;
        be.write(&mut a.targets, &tgt)?;

        // ---- encoder
        match cfg.prompt {
            PromptKind::Continuous => {
                let users: Vec<i32> = batch.users.iter().map(|&x| x as i32).collect();
                let items: Vec<i32> = batch.items.iter().map(|&x| x as i32).collect();
                be.write(&mut a.users, &users)?;
                be.write(&mut a.items, &items)?;
                let (ui, ii) = idx.user_item();
                be.embedding_forward(
                    &mut a.emb,
                    w(ui),
                    &a.users,
                    Some(w(idx.wpe)),
                    pass.seg(1, 0),
                )?;
                be.embedding_forward(
                    &mut a.emb,
                    w(ii),
                    &a.items,
                    Some(w(idx.wpe)),
                    pass.seg(1, 1),
                )?;
            }
            PromptKind::Discrete => {
                if p > 0 {
                    let pr: Vec<i32> = batch.prompt.iter().map(|&x| x as i32).collect();
                    be.write(&mut a.prompt_ids, &pr)?;
                    be.embedding_forward(
                        &mut a.emb,
                        w(idx.wte),
                        &a.prompt_ids,
                        Some(w(idx.wpe)),
                        pass.seg(p, 0),
                    )?;
                }
            }
        }
        be.embedding_forward(
            &mut a.emb,
            w(idx.wte),
            &a.text_ids,
            Some(w(idx.wpe)),
            pass.seg(t, p),
        )?;
        if let Some(s) = pass.site(SITE_EMB) {
            be.dropout_forward(&mut a.encoded_d, &a.emb, s, rows * c)?;
        }

        // ---- blocks
        let ash = AttnShape { b, l, c, nh };
        let mask = pass.any_pad.then_some(&a.key_mask);
        for (li, lw) in idx.layers.iter().enumerate() {
            let (prev, rest) = a.layers.split_at_mut(li);
            let x_in = block_input(prev, &a.emb, &a.encoded_d, dropout.is_some());
            let drop = dropout.map(|step| BlockDropout {
                step,
                layer: li,
                tmp: &mut a.drop_tmp,
            });
            let attn = BlockAttn::Full { mask };
            let eps = cfg.layer_norm_epsilon;
            block_forward(be, params, lw, eps, x_in, &mut rest[0], attn, drop, ash)?;
        }
        let last = &a.layers[cfg.n_layer - 1].res3;
        be.layernorm_forward(
            &mut a.lnf,
            &mut a.lnf_mean,
            &mut a.lnf_rstd,
            last,
            w(idx.lnf_w),
            w(idx.lnf_b),
            rows,
            c,
            cfg.layer_norm_epsilon,
        )?;

        // ---- LM head (tied wte) + cross-entropy
        let logits = if opts.want_logits {
            // All rows, into a temporary (parity/debugging only).
            let mut full = be.alloc::<f32>(rows * v)?;
            be.matmul_forward(
                &mut full,
                &a.lnf,
                w(idx.wte),
                None,
                rows,
                c,
                v,
                WeightLayout::OutIn,
            )?;
            Some(be.download(&full, rows * v)?)
        } else {
            None
        };
        be.embedding_forward(&mut a.lnf_sel, &a.lnf, &a.sel_idx, None, row_gather(n, c))?;
        be.matmul_forward(
            &mut a.logits,
            &a.lnf_sel,
            w(idx.wte),
            None,
            n,
            c,
            v,
            WeightLayout::OutIn,
        )?;
        let dscale = opts.train.then_some(1.0 / n as f32);
        be.crossentropy_forward(&mut a.losses, &mut a.logits, &a.targets, n, v, dscale)?;
        be.crossentropy_mean(&mut a.scalars, 0, &a.losses, &a.targets, n)?;

        // ---- rating head
        let (has_rating, rating) = if cfg.rec != RecKind::None {
            let (ui_i, ii_i) = idx.user_item();
            be.embedding_forward(&mut a.ui, w(ui_i), &a.users, None, pass.pair(0))?;
            be.embedding_forward(&mut a.ui, w(ii_i), &a.items, None, pass.pair(1))?;
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
                        if k + 1 == nl {
                            be.matmul_forward(
                                &mut a.pred,
                                inp,
                                w(wi),
                                Some(w(bi)),
                                b,
                                cin,
                                1,
                                WeightLayout::OutIn,
                            )?;
                        } else {
                            be.matmul_forward(
                                &mut a.rec_z[k],
                                inp,
                                w(wi),
                                Some(w(bi)),
                                b,
                                cin,
                                h,
                                WeightLayout::OutIn,
                            )?;
                            be.sigmoid_forward(&mut a.rec_a[k], &a.rec_z[k], b * h)?;
                        }
                    }
                }
            }
            be.write(&mut a.rating_target, &batch.rating)?;
            let (lambda, target) = (cfg.rec_lambda, &a.rating_target);
            be.mse_forward(&mut a.scalars, 1, &mut a.dpred, &a.pred, target, b, lambda)?;
            // Predictions come back for evaluation and parity forwards, not for training steps.
            let want = !opts.train || opts.want_logits;
            (true, want.then(|| be.download(&a.pred, b)).transpose()?)
        } else {
            (false, None)
        };
        // The one device-to-host read of a training step: the losses.
        let scalars = be.download(&a.scalars, if has_rating { 2 } else { 1 })?;
        let text_loss = scalars[0];
        let rating_loss = has_rating.then(|| scalars[1]);
        let loss = text_loss + rating_loss.map_or(0.0, |r| cfg.rec_lambda * r);
        self.saved = opts.train.then_some(pass);
        Ok(ForwardOutput {
            text_loss,
            rating_loss,
            loss,
            rating,
            logits,
            n_targets: n,
        })
    }

    /// Backward of the last training `forward`: accumulates (`+=`) the gradient of the total loss
    /// into every parameter's gradient, or only those with `need[i]` set (the rest are skipped,
    /// not zeroed). Call `zero_grads` before the forward of a fresh step.
    pub fn backward(&mut self, need: Option<&[bool]>) -> Result<()> {
        let Some(pass) = self.saved.take() else {
            bail!(
                "backward: no training forward to differentiate (forward with train = true first)"
            );
        };
        if let Some(nd) = need {
            if nd.len() != self.params.len() {
                bail!(
                    "backward: {} flags for {} parameters",
                    nd.len(),
                    self.params.len()
                );
            }
        }
        if self.grads.is_empty() {
            self.zero_grads()?;
        }
        let Pass {
            b,
            l,
            p,
            t,
            n,
            c,
            dropout,
            ..
        } = pass;
        let Pepler {
            cfg,
            be,
            idx,
            params,
            grads,
            acts,
            ..
        } = self;
        let a = acts.as_mut().expect("forward allocated the activations");
        let (v, nh) = (cfg.vocab_size, cfg.n_head);
        let rows = b * l;
        let w = |i: usize| &params[i];
        let g = |i: usize| need.is_none_or(|nd| nd[i]).then_some(i);

        // ---- LM head: dlogits sit in a.logits.
        let [dwte] = pick(grads, [g(idx.wte)]);
        be.matmul_backward(
            Some(&mut a.dlnf_sel),
            dwte,
            None,
            &a.logits,
            &a.lnf_sel,
            w(idx.wte),
            n,
            c,
            v,
            WeightLayout::OutIn,
        )?;
        // Scatter the selected rows' gradient into a zeroed (rows, C) buffer (dc1).
        be.zero(&mut a.dc1)?;
        let gather = row_gather(n, c);
        be.embedding_backward(Some(&mut a.dc1), None, &a.dlnf_sel, &a.sel_idx, gather)?;
        be.zero(&mut a.dres)?;
        let [dw, db] = pick(grads, [g(idx.lnf_w), g(idx.lnf_b)]);
        let last = &a.layers[cfg.n_layer - 1].res3;
        be.layernorm_backward(
            &mut a.dres,
            dw,
            db,
            &a.dc1,
            last,
            w(idx.lnf_w),
            &a.lnf_mean,
            &a.lnf_rstd,
            rows,
            c,
        )?;

        // ---- blocks, last to first; a.dres holds d(residual stream).
        let ash = AttnShape { b, l, c, nh };
        for li in (0..cfg.n_layer).rev() {
            let lw = &idx.layers[li];
            let (prev, rest) = a.layers.split_at(li);
            let la = &rest[0];
            let x_in = block_input(prev, &a.emb, &a.encoded_d, dropout.is_some());
            // MLP: d(fcproj) = dropout(dres).
            let site = pass.site(site_mlp_resid(li));
            let dfcp = through_dropout(be, site, &a.dres, &mut a.drop_tmp, rows * c)?;
            let [dw, db] = pick(grads, [g(lw.fcp_w), g(lw.fcp_b)]);
            be.matmul_backward(
                Some(&mut a.d4a),
                dw,
                db,
                dfcp,
                &la.fchg,
                w(lw.fcp_w),
                rows,
                4 * c,
                c,
                WeightLayout::InOut,
            )?;
            be.gelu_backward(&mut a.d4b, &la.fch, &a.d4a, rows * 4 * c)?;
            let [dw, db] = pick(grads, [g(lw.fc_w), g(lw.fc_b)]);
            be.matmul_backward(
                Some(&mut a.dc1),
                dw,
                db,
                &a.d4b,
                &la.ln2,
                w(lw.fc_w),
                rows,
                c,
                4 * c,
                WeightLayout::InOut,
            )?;
            let [dw, db] = pick(grads, [g(lw.ln2_w), g(lw.ln2_b)]);
            be.layernorm_backward(
                &mut a.dres,
                dw,
                db,
                &a.dc1,
                &la.res2,
                w(lw.ln2_w),
                &la.ln2_mean,
                &la.ln2_rstd,
                rows,
                c,
            )?;
            // Attention: d(attproj) = dropout(dres).
            let site = pass.site(site_attn_resid(li));
            let dap = through_dropout(be, site, &a.dres, &mut a.drop_tmp, rows * c)?;
            let [dw, db] = pick(grads, [g(lw.proj_w), g(lw.proj_b)]);
            be.matmul_backward(
                Some(&mut a.dc1),
                dw,
                db,
                dap,
                &la.atty,
                w(lw.proj_w),
                rows,
                c,
                c,
                WeightLayout::InOut,
            )?;
            be.attention_backward(
                &mut a.dqkv,
                &a.dc1,
                &la.qkv,
                &la.atty,
                &la.att,
                pass.any_pad.then_some(&a.key_mask),
                pass.site(site_attn(li)),
                ash,
            )?;
            let [dw, db] = pick(grads, [g(lw.qkv_w), g(lw.qkv_b)]);
            be.matmul_backward(
                Some(&mut a.dc2),
                dw,
                db,
                &a.dqkv,
                &la.ln1,
                w(lw.qkv_w),
                rows,
                c,
                3 * c,
                WeightLayout::InOut,
            )?;
            let [dw, db] = pick(grads, [g(lw.ln1_w), g(lw.ln1_b)]);
            be.layernorm_backward(
                &mut a.dres,
                dw,
                db,
                &a.dc2,
                x_in,
                w(lw.ln1_w),
                &la.ln1_mean,
                &la.ln1_rstd,
                rows,
                c,
            )?;
        }

        // ---- encoder
        let demb = through_dropout(be, pass.site(SITE_EMB), &a.dres, &mut a.drop_tmp, rows * c)?;
        match cfg.prompt {
            PromptKind::Continuous => {
                let (ui, ii) = idx.user_item();
                let [du, dwpe] = pick(grads, [g(ui), g(idx.wpe)]);
                be.embedding_backward(du, dwpe, demb, &a.users, pass.seg(1, 0))?;
                let [di, dwpe] = pick(grads, [g(ii), g(idx.wpe)]);
                be.embedding_backward(di, dwpe, demb, &a.items, pass.seg(1, 1))?;
            }
            PromptKind::Discrete => {
                if p > 0 {
                    let [dwte, dwpe] = pick(grads, [g(idx.wte), g(idx.wpe)]);
                    be.embedding_backward(dwte, dwpe, demb, &a.prompt_ids, pass.seg(p, 0))?;
                }
            }
        }
        let [dwte, dwpe] = pick(grads, [g(idx.wte), g(idx.wpe)]);
        be.embedding_backward(dwte, dwpe, demb, &a.text_ids, pass.seg(t, p))?;

        // ---- rating head: dpred = lambda * dMSE/dpred sits in a.dpred.
        if cfg.rec != RecKind::None {
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
                        let [dw, db] = pick(grads, [g(wi), g(bi)]);
                        be.matmul_backward(
                            Some(dinp),
                            dw,
                            db,
                            dout,
                            inp,
                            w(wi),
                            b,
                            cin,
                            cout,
                            WeightLayout::OutIn,
                        )?;
                        if k > 0 {
                            be.sigmoid_backward(&mut a.drec_z, &a.rec_a[k - 1], &a.drec_a, b * h)?;
                        }
                    }
                }
            }
            let (ui, ii) = idx.user_item();
            let [du] = pick(grads, [g(ui)]);
            be.embedding_backward(du, None, &a.dui, &a.users, pass.pair(0))?;
            let [di] = pick(grads, [g(ii)]);
            be.embedding_backward(di, None, &a.dui, &a.items, pass.pair(1))?;
        }
        Ok(())
    }
}

/// Optimizer state in and out (checkpoints, `--resume`, a fresh optimizer per training stage).
impl<B: Backend> Pepler<B> {
    /// Drops every AdamW moment: the next `adamw_step` starts a fresh optimizer (step 1).
    pub fn reset_optimizer(&mut self) {
        if let Some(mo) = self.moments.as_mut() {
            mo.live.iter_mut().for_each(|l| *l = false);
        }
    }

    /// The AdamW moments `(m, v)` per parameter in canonical order, on the host (`None` where the
    /// parameter has not been updated yet).
    pub fn optimizer_moments(&self) -> Result<HostMoments> {
        let Some(mo) = &self.moments else {
            return Ok(vec![None; self.specs.len()]);
        };
        (0..self.specs.len())
            .map(|i| {
                let n = self.specs[i].numel();
                mo.live[i]
                    .then(|| {
                        Ok((
                            self.be.download(&mo.m[i], n)?,
                            self.be.download(&mo.v[i], n)?,
                        ))
                    })
                    .transpose()
            })
            .collect()
    }

    /// Restores moments saved by `optimizer_moments`.
    pub fn set_optimizer_moments(&mut self, moments: HostMoments) -> Result<()> {
        if moments.len() != self.specs.len() {
            bail!(
                "set_optimizer_moments: {} entries for {} parameters",
                moments.len(),
                self.specs.len()
            );
        }
        let lens = self.lens();
        for (i, m) in moments.iter().enumerate() {
            if let Some((m, v)) = m {
                if m.len() != lens[i] || v.len() != lens[i] {
                    bail!(
                        "set_optimizer_moments: `{}` needs {} values per moment",
                        self.specs[i].name,
                        lens[i]
                    );
                }
            }
        }
        self.ensure_moments()?;
        let Pepler {
            be, moments: mo, ..
        } = self;
        let mo = mo.as_mut().expect("ensured above");
        for (i, m) in moments.into_iter().enumerate() {
            mo.live[i] = m.is_some();
            if let Some((m, v)) = m {
                be.write(&mut mo.m[i], &m)?;
                be.write(&mut mo.v[i], &v)?;
            }
        }
        Ok(())
    }
}
