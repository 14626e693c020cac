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
//! Where things are: one block's forward and backward in `block.rs` (the forward is shared with
//! KV-cache decoding, which swaps the attention for `attention_cached_forward`); the encoder, LM
//! head and rating head in `heads.rs`; activations and their bookkeeping in `acts.rs`; this file
//! holds the parameters, gradients and optimizer state and runs a pass end to end.
//!
//! Backward mirrors the forward in reverse with one residual-gradient buffer updated in place
//! (llm.c). Activation buffers are allocated for the largest (batch, length) seen and reused.
//!
//! Call order for training: `zero_grads`, `forward` (train), `backward`, `adamw_step`.

use anyhow::{bail, Context, Result};

use super::acts::{block_input, Acts, Pass, StepDropout};
use super::batch::Batch;
use super::block::{block_backward, block_forward, BlockAttn, BlockDropout, LayerIdx};
use super::config::{ModelConfig, RecKind};
use super::heads;
use super::params::{ParamSet, ParamSpec};
use super::step::StepGraphs;
use crate::backend::{Act, AdamWParams, AttnShape, Backend, GroupTensor};
use crate::precision::Precision;

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

/// The parameters as the ops read them: the f32 masters (layernorm, embedding tables, biases) and,
/// for a GEMM, the weight in the activation type: `Act::gemm_weight`, the master itself for f32,
/// the copy the optimizer keeps for bf16 (see `crate::precision`).
pub(crate) struct Weights<'a, B: Backend, A: Act> {
    pub master: &'a [B::Buf<f32>],
    pub copy: &'a [B::Buf<A>],
}

impl<B: Backend, A: Act> Clone for Weights<'_, B, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend, A: Act> Copy for Weights<'_, B, A> {}

impl<'a, B: Backend, A: Act> Weights<'a, B, A> {
    /// Parameter `i`, f32.
    pub fn f32(&self, i: usize) -> &'a B::Buf<f32> {
        &self.master[i]
    }
    /// Parameter `i` as a GEMM reads it.
    pub fn gemm(&self, i: usize) -> Result<&'a B::Buf<A>> {
        A::gemm_weight::<B>(&self.master[i], self.copy.get(i))
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

/// AdamW first and second moments of every parameter, in backend memory (one group each), and
/// which parameters have been updated since the optimizer was (re)set: the others' moments are
/// not part of the optimizer state (checkpoints store `None`) and start from zero when first used.
pub(crate) struct Moments<B: Backend> {
    pub m: Vec<B::Buf<f32>>,
    pub v: Vec<B::Buf<f32>>,
    live: Vec<bool>,
}

/// AdamW moments `(m, v)` per parameter on the host (`None`: not updated yet).
pub type HostMoments = Vec<Option<(Vec<f32>, Vec<f32>)>>;

/// GPT-2 + PEPLER on backend `B` with activations stored as `A` (f32, or bf16 for mixed
/// precision: see `crate::precision`) (see the module docs).
pub struct Pepler<B: Backend, A: Act = f32> {
    pub(crate) cfg: ModelConfig,
    pub(crate) be: B,
    pub(crate) specs: Vec<ParamSpec>,
    pub(crate) idx: Idx,
    /// The f32 master weights (one group).
    pub(crate) params: Vec<B::Buf<f32>>,
    /// The weights in `A` that the GEMMs read, laid out like `params` (empty for f32, where the
    /// GEMMs read the masters); rewritten by every optimizer step and every parameter upload.
    pub(crate) copies: Vec<B::Buf<A>>,
    pub(crate) grads: Vec<B::Buf<f32>>,
    pub(crate) moments: Option<Moments<B>>,
    pub(crate) acts: Option<Acts<B, A>>,
    saved: Option<Pass>,
    /// Captured training steps (`train_step`, `super::step`).
    pub(crate) graphs: StepGraphs<B::Graph>,
    /// Dropout seed.
    pub seed: u64,
}

impl<B: Backend> Pepler<B> {
    /// Uploads `params` (its config defines the model) to the backend; f32 activations.
    pub fn new(be: B, params: &ParamSet) -> Result<Self> {
        Self::with_activations(be, params)
    }
}

impl<B: Backend, A: Act> Pepler<B, A> {
    /// Uploads `params` (its config defines the model) to the backend, for activations stored as
    /// `A` (the training precision).
    pub fn with_activations(be: B, params: &ParamSet) -> Result<Self> {
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
        let copies = if A::PRECISION == Precision::Fp32 {
            Vec::new()
        } else {
            let mut copies = be.alloc_group::<A>(&lens)?;
            be.cast_group(&mut copies, &bufs)?;
            copies
        };
        Ok(Pepler {
            cfg,
            be,
            specs,
            idx,
            params: bufs,
            copies,
            grads: Vec::new(),
            moments: None,
            acts: None,
            saved: None,
            graphs: StepGraphs::default(),
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
        if !self.copies.is_empty() {
            self.be.cast_group(&mut self.copies, &self.params)?;
        }
        Ok(())
    }

    /// The parameters as the ops read them.
    pub(crate) fn weights(&self) -> Weights<'_, B, A> {
        Weights {
            master: &self.params,
            copy: &self.copies,
        }
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
            self.graphs.clear();
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
        self.prepare_moments(trainable)?;
        let tensors = group_tensors(trainable);
        let Pepler {
            be,
            params,
            copies,
            grads,
            moments,
            ..
        } = self;
        let Moments { m, v, .. } = moments.as_mut().expect("ensured above");
        be.adamw_update_group(params, grads, m, v, copies, &tensors, hp, step)
    }

    /// The global L2 norm of the accumulated gradients, computed on the device (slot 2 of the
    /// step's scalars) and read back: for the per-epoch report, not for every step.
    pub fn grad_norm(&mut self) -> Result<f32> {
        self.norm_on_device()?;
        let a = self
            .acts
            .as_ref()
            .expect("norm_on_device needs activations");
        Ok(self.be.download(&a.scalars, 3)?[2])
    }

    /// Scales every gradient by `min(1, max_norm / (norm + 1e-6))` (torch's `clip_grad_norm_`),
    /// with the norm computed and applied on the device: no host read.
    pub fn clip_grad_norm(&mut self, max_norm: f32) -> Result<()> {
        if !(max_norm.is_finite() && max_norm > 0.0) {
            bail!("clip_grad_norm: the maximum norm must be a positive number, not {max_norm}");
        }
        self.norm_on_device()?;
        let Pepler {
            be, grads, acts, ..
        } = self;
        let a = acts.as_ref().expect("norm_on_device needs activations");
        be.clip_group(grads, &a.scalars, 2, max_norm)
    }

    fn norm_on_device(&mut self) -> Result<()> {
        if self.grads.is_empty() || self.acts.is_none() {
            bail!("grad_norm: no gradients yet (zero_grads, forward, backward first)");
        }
        let Pepler {
            be, grads, acts, ..
        } = self;
        let a = acts.as_mut().expect("checked above");
        be.global_norm(&mut a.scalars, 2, grads)
    }

    /// Element count of every parameter, in canonical order.
    fn lens(&self) -> Vec<usize> {
        self.specs.iter().map(|s| s.numel()).collect()
    }

    /// Allocates the moments on first use and zeroes those of every trainable tensor the
    /// optimizer has not updated since it was (re)set.
    pub(crate) fn prepare_moments(&mut self, trainable: &[bool]) -> Result<()> {
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
        Ok(())
    }

    /// Allocates the moment groups (zero-filled) on first use.
    fn ensure_moments(&mut self) -> Result<()> {
        if self.moments.is_none() {
            self.graphs.clear();
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
            self.graphs.clear(); // they use the old buffers
            self.acts = None; // free before allocating the larger set
            self.acts = Some(Acts::new(&self.be, &self.cfg, cb, cl)?);
        }
        Ok(())
    }

    /// Forward pass over `batch`. With `opts.train`, dropout is on and `backward` may follow.
    pub fn forward(&mut self, batch: &Batch, opts: ForwardOptions) -> Result<ForwardOutput> {
        let pass = self.stage(batch, opts.train, opts.step)?;
        let Pepler {
            cfg,
            be,
            idx,
            params,
            copies,
            acts,
            ..
        } = self;
        let w = Weights {
            master: params,
            copy: copies,
        };
        let a = acts.as_mut().expect("staged");
        let (train, want) = (opts.train, opts.want_logits);
        let logits = forward_on_device(be, w, idx, cfg, a, &pass, train, want)?;
        // Predictions come back for evaluation and parity forwards, not for training steps.
        let rating = if cfg.rec != RecKind::None && (!opts.train || opts.want_logits) {
            Some(heads::widen(be.download(&a.pred, pass.b)?))
        } else {
            None
        };
        let mut out = self.read_losses(&pass)?;
        out.rating = rating;
        out.logits = logits;
        self.saved = opts.train.then_some(pass);
        Ok(out)
    }

    /// The host side of a pass: validates `batch`, picks the LM head's rows, sizes the
    /// activations and uploads the inputs. Everything after it is device work.
    pub(crate) fn stage(&mut self, batch: &Batch, train: bool, step: u64) -> Result<Pass> {
        let cfg = self.cfg.clone();
        let cfg = &cfg;
        batch.validate(cfg)?;
        let (b, t) = (batch.b, batch.t);
        let p = batch.prompt_len(cfg);
        let l = p + t;
        let (c, rows) = (cfg.n_embd, b * l);
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
        if self.be.has_graphs() {
            pad_head_rows(&mut sel, &mut tgt, rows);
        }
        let head_rows = sel.len();
        self.ensure_acts(b, l)?;
        let dropout = (train && cfg.dropout > 0.0).then_some(StepDropout {
            p: cfg.dropout,
            seed: self.seed,
            step,
        });
        let pass = Pass {
            b,
            l,
            p,
            t,
            n,
            head_rows,
            c,
            dropout,
            any_pad: batch.mask.contains(&0),
        };
        let Pepler { cfg, be, acts, .. } = self;
        let a = acts.as_mut().expect("ensured above");
        // ---- inputs (validated on the host above: kernels never see an out-of-range id)
        let ids = |v: &[u32]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        be.write(&mut a.text_ids, &ids(&batch.text))?;
        let mut km = Vec::with_capacity(rows);
        for bi in 0..b {
            km.extend(std::iter::repeat_n(1i32, p));
            km.extend(batch.mask[bi * t..(bi + 1) * t].iter().map(|&m| m as i32));
        }
        be.write(&mut a.key_mask, &km)?;
        be.write(&mut a.sel_idx, &sel)?;
        be.write(&mut a.targets, &tgt)?;
        if cfg.has_id_embeddings() {
            be.write(&mut a.users, &ids(&batch.users))?;
            be.write(&mut a.items, &ids(&batch.items))?;
        }
        if p > 0 {
            be.write(&mut a.prompt_ids, &ids(&batch.prompt))?;
        }
        if cfg.rec != RecKind::None {
            be.write(&mut a.rating_target, &batch.rating)?;
        }
        Ok(pass)
    }

    /// The losses a forward left on the device (slots 0 and 1 of the scalars): the one
    /// device-to-host read of a training step.
    pub(crate) fn read_losses(&self, pass: &Pass) -> Result<ForwardOutput> {
        let a = self.acts.as_ref().expect("a forward ran");
        let has_rating = self.cfg.rec != RecKind::None;
        let scalars = self
            .be
            .download(&a.scalars, if has_rating { 2 } else { 1 })?;
        let text_loss = scalars[0];
        let rating_loss = has_rating.then(|| scalars[1]);
        let loss = text_loss + rating_loss.map_or(0.0, |r| self.cfg.rec_lambda * r);
        Ok(ForwardOutput {
            text_loss,
            rating_loss,
            loss,
            rating: None,
            logits: None,
            n_targets: pass.n,
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
        let Pepler {
            cfg,
            be,
            idx,
            params,
            copies,
            grads,
            acts,
            ..
        } = self;
        let w = Weights {
            master: params,
            copy: copies,
        };
        let a = acts.as_mut().expect("forward allocated the activations");
        backward_on_device(be, w, grads, need, idx, cfg, a, &pass)
    }
}

/// The optimizer's per-tensor flags: `trainable` as given, weight decay on every tensor (as the
/// original, which passes `model.parameters()` to one AdamW group).
pub(crate) fn group_tensors(trainable: &[bool]) -> Vec<GroupTensor> {
    trainable
        .iter()
        .map(|&trainable| GroupTensor {
            trainable,
            decay: true,
        })
        .collect()
}

/// Appends rows `0..rows` that are not already in `sel`, with target -1, until `sel` holds a
/// multiple of [`HEAD_ROW_BUCKET`] rows (or all `rows`): the LM head's padding on backends with
/// step graphs (see `Pass::head_rows`). The extra rows are real, distinct rows of the final
/// layernorm's output, so the gather, the GEMMs and the scatter need no special case.
fn pad_head_rows(sel: &mut Vec<i32>, tgt: &mut Vec<i32>, rows: usize) {
    let want = sel.len().div_ceil(HEAD_ROW_BUCKET) * HEAD_ROW_BUCKET;
    let want = want.min(rows);
    let mut taken = vec![false; rows];
    for &r in sel.iter() {
        taken[r as usize] = true;
    }
    let free = (0..rows).filter(|&r| !taken[r]);
    for r in free.take(want - sel.len()) {
        sel.push(r as i32);
        tgt.push(-1);
    }
}

/// Rows of the LM head on backends with step graphs are padded to a multiple of this (a GEMM
/// tile), so a step graph serves every batch whose target count falls in the same bucket.
pub const HEAD_ROW_BUCKET: usize = 128;

/// The device work of a forward pass (encoder, blocks, heads): losses into `a.scalars`, the
/// rating prediction into `a.pred`. No host read, except the full logits when `want_logits`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_on_device<B: Backend, A: Act>(
    be: &B,
    w: Weights<'_, B, A>,
    idx: &Idx,
    cfg: &ModelConfig,
    a: &mut Acts<B, A>,
    pass: &Pass,
    train: bool,
    want_logits: bool,
) -> Result<Option<Vec<f32>>> {
    let (b, l, c, nh) = (pass.b, pass.l, pass.c, cfg.n_head);
    let dropout = pass.dropout;
    heads::encoder_forward(be, w, idx, cfg, a, pass)?;
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
        block_forward(be, w, lw, eps, x_in, &mut rest[0], attn, drop, ash)?;
    }
    // The heads read the last block's output while writing other activations: lend them
    // the layers' buffers for the call (a move of the Vec, not of device memory).
    let layers = std::mem::take(&mut a.layers);
    let last = &layers[cfg.n_layer - 1].res3;
    let logits = heads::lm_head_forward(be, w, idx, cfg, last, a, pass, train, want_logits);
    a.layers = layers;
    let logits = logits?;
    if cfg.rec != RecKind::None {
        heads::rating_head_forward(be, w, idx, cfg, a, pass)?;
    }
    Ok(logits)
}

/// The device work of a backward pass (see `Pepler::backward`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_on_device<B: Backend, A: Act>(
    be: &B,
    w: Weights<'_, B, A>,
    grads: &mut [B::Buf<f32>],
    need: Option<&[bool]>,
    idx: &Idx,
    cfg: &ModelConfig,
    a: &mut Acts<B, A>,
    pass: &Pass,
) -> Result<()> {
    let need = |i: usize| need.is_none_or(|nd| nd[i]).then_some(i);
    let ash = AttnShape {
        b: pass.b,
        l: pass.l,
        c: pass.c,
        nh: cfg.n_head,
    };

    // ---- LM head (dlogits sit in a.logits): a.dres = d(last block's output)
    let layers = std::mem::take(&mut a.layers);
    let last = &layers[cfg.n_layer - 1].res3;
    let head = heads::lm_head_backward(be, w, grads, &need, idx, cfg, last, a, pass);
    a.layers = layers;
    head?;

    // ---- blocks, last to first; a.dres holds d(residual stream)
    for (li, lw) in idx.layers.iter().enumerate().rev() {
        let (prev, rest) = a.layers.split_at(li);
        let x_in = block_input(prev, &a.emb, &a.encoded_d, pass.dropout.is_some());
        let mask = pass.any_pad.then_some(&a.key_mask);
        block_backward(
            be,
            w,
            grads,
            &need,
            lw,
            li,
            x_in,
            &rest[0],
            mask,
            pass.dropout,
            &mut a.dres,
            &mut a.dblock,
            &mut a.drop_tmp,
            ash,
        )?;
    }

    // ---- encoder and rating head
    heads::encoder_backward(be, grads, &need, idx, cfg, a, pass)?;
    if cfg.rec != RecKind::None {
        heads::rating_head_backward(be, w, grads, &need, idx, cfg, a, pass)?;
    }
    Ok(())
}

/// Optimizer state in and out (checkpoints, `--resume`, a fresh optimizer per training stage).
impl<B: Backend, A: Act> Pepler<B, A> {
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
