//! One whole training step (`Pepler::train_step`): zero the gradients, forward, backward, the
//! gradient norm and clipping, AdamW, then one host read of the losses. On a backend with graphs
//! (the GPU backend) the device work of the step is captured once per [`StepKey`] and replayed:
//! one graph launch instead of hundreds of kernel launches.
//!
//! What makes a step replayable:
//! - every input is uploaded into the same activation buffers before the work (`Pepler::stage`);
//! - the values that change every step (dropout's step, AdamW's factors, the loss's 1/n) are
//!   written into the device's step scalars (`Backend::set_step_values`), which captured kernels
//!   read at run time instead of their by-value arguments;
//! - everything else a launch depends on is in the key: the batch shape, the LM head's row count
//!   (a multiple of `HEAD_ROW_BUCKET`), whether keys are padded (the mask pointer), which
//!   parameters train, clipping, the AdamW hyper-parameters other than the learning rate.
//!
//! Policy: a key seen for the first time runs as plain launches (one-off shapes such as an
//! epoch's last, smaller batch never pay for a capture); the second time it is captured, then
//! replayed from then on. A capture that fails (say, a buffer would have to grow inside it) is
//! remembered and that key runs plain. Graphs are dropped when the model reallocates the buffers
//! they use (a larger batch), and a graph whose backend memory moved is recaptured. Captured and
//! plain steps launch the same kernels with the same arguments: same bits, which a test checks.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};

use super::batch::Batch;
use super::pepler::{
    backward_on_device, forward_on_device, group_tensors, ForwardOutput, Pepler, Weights,
};
use crate::backend::{Act, AdamWParams, Backend, StepValues};

/// What one training step does besides forward and backward.
#[derive(Clone, Copy, Debug)]
pub struct TrainStep<'a> {
    /// The global step: selects the dropout masks (`ForwardOptions::step`).
    pub step: u64,
    /// AdamW's step, counting from 1 per optimizer (`Pepler::adamw_step`).
    pub adam_step: u64,
    pub hp: AdamWParams,
    /// Which parameters get gradients and updates (the rest stay frozen).
    pub trainable: &'a [bool],
    /// Clip the gradient's global L2 norm to this (torch's `clip_grad_norm_`).
    pub clip_grad_norm: Option<f32>,
    /// Also return the gradient norm before clipping (one more reduction).
    pub want_grad_norm: bool,
}

/// How a step's device work was launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepLaunch {
    /// Kernel by kernel: graphs off, a backend without graphs, or a key not (yet) captured.
    Plain,
    /// Captured into a graph just now, then launched.
    Captured,
    /// One launch of a graph captured by an earlier step.
    Replayed,
}

/// What comes back from a training step.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// The losses of the step's forward (no logits, no ratings).
    pub out: ForwardOutput,
    /// The gradient norm before clipping, when asked for.
    pub grad_norm: Option<f32>,
    pub launch: StepLaunch,
}

/// Everything a step's launches depend on besides buffer contents and the step scalars.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StepKey {
    b: usize,
    l: usize,
    p: usize,
    head_rows: usize,
    any_pad: bool,
    dropout: bool,
    seed: u64,
    trainable: Vec<bool>,
    clip_bits: Option<u32>,
    norm: bool,
    /// beta1, beta2, eps, weight decay (bits) and the variant: by-value kernel arguments.
    hp: (u64, u64, u64, u64, bool),
}

/// Graphs captured from steps with at most this many distinct keys (each holds only launch
/// parameters: a few hundred nodes).
const MAX_STEP_GRAPHS: usize = 64;

/// The model's step graphs (see the module docs).
pub(crate) struct StepGraphs<G> {
    /// Captures on (the default; `Pepler::set_step_graphs`).
    pub on: bool,
    seen: HashSet<StepKey>,
    graphs: HashMap<StepKey, G>,
    failed: HashSet<StepKey>,
}

impl<G> Default for StepGraphs<G> {
    fn default() -> Self {
        StepGraphs {
            on: true,
            seen: HashSet::new(),
            graphs: HashMap::new(),
            failed: HashSet::new(),
        }
    }
}

impl<G> StepGraphs<G> {
    /// Forgets every graph (the buffers they use are about to be reallocated).
    pub fn clear(&mut self) {
        self.graphs.clear();
        self.failed.clear();
    }
}

impl<B: Backend, A: Act> Pepler<B, A> {
    /// Step graphs on or off (on by default; only backends with graphs use them). Off, every
    /// step launches kernel by kernel: for measuring what the graphs save, and as a fallback.
    pub fn set_step_graphs(&mut self, on: bool) {
        self.graphs.on = on;
        if !on {
            self.graphs.clear();
        }
    }

    /// Number of step graphs held now.
    pub fn step_graphs(&self) -> usize {
        self.graphs.graphs.len()
    }

    /// One whole training step on `batch` (see the module docs): the same result as
    /// `zero_grads`, `forward` (train), `backward(trainable)`, `clip_grad_norm`, `adamw_step`.
    pub fn train_step(&mut self, batch: &Batch, s: TrainStep<'_>) -> Result<StepReport> {
        let n_params = self.params.len();
        if s.trainable.len() != n_params {
            bail!(
                "train_step: {} trainable flags for {n_params} parameters",
                s.trainable.len()
            );
        }
        if let Some(max) = s.clip_grad_norm {
            if !(max.is_finite() && max > 0.0) {
                bail!("train_step: the maximum gradient norm must be a positive number, not {max}");
            }
        }
        // ---- host side: inputs, buffers, fresh moments, the step's values
        let pass = self.stage(batch, true, s.step)?;
        if self.grads.is_empty() {
            self.zero_grads()?;
        }
        self.prepare_moments(s.trainable)?;
        self.be.set_step_values(&StepValues {
            dropout_step: s.step,
            adamw: Some((s.hp, s.adam_step)),
            dscale: pass.dscale(),
        })?;
        let norm = s.want_grad_norm || s.clip_grad_norm.is_some();
        let key = StepKey {
            b: pass.b,
            l: pass.l,
            p: pass.p,
            head_rows: pass.head_rows,
            any_pad: pass.any_pad,
            dropout: pass.dropout.is_some(),
            seed: self.seed,
            trainable: s.trainable.to_vec(),
            clip_bits: s.clip_grad_norm.map(f32::to_bits),
            norm,
            hp: (
                s.hp.beta1.to_bits(),
                s.hp.beta2.to_bits(),
                s.hp.eps.to_bits(),
                s.hp.weight_decay.to_bits(),
                s.hp.variant == crate::backend::AdamWVariant::Hf,
            ),
        };
        let tensors = group_tensors(s.trainable);

        // ---- the device work, as one closure: run directly, or captured and replayed
        let Pepler {
            cfg,
            be,
            idx,
            params,
            copies,
            grads,
            moments,
            acts,
            graphs,
            ..
        } = self;
        let (cfg, be, idx) = (&*cfg, &*be, &*idx);
        let a = acts.as_mut().expect("staged");
        let mo = moments.as_mut().expect("prepared");
        let mut work = || -> Result<()> {
            be.zero_group(grads)?;
            let w = Weights {
                master: params,
                copy: copies,
            };
            forward_on_device(be, w, idx, cfg, a, &pass, true, false)?;
            backward_on_device(be, w, grads, Some(s.trainable), idx, cfg, a, &pass)?;
            if norm {
                be.global_norm(&mut a.scalars, 2, grads)?;
            }
            if let Some(max_norm) = s.clip_grad_norm {
                be.clip_group(grads, &a.scalars, 2, max_norm)?;
            }
            let (m, v) = (&mut mo.m, &mut mo.v);
            be.adamw_update_group(params, grads, m, v, copies, &tensors, s.hp, s.adam_step)
        };
        let launch = run_step(be, graphs, key, &mut work)?;
        let mut out = self.read_losses(&pass)?;
        out.n_targets = pass.n;
        let grad_norm = if s.want_grad_norm {
            let a = self.acts.as_ref().expect("staged");
            Some(self.be.download(&a.scalars, 3)?[2])
        } else {
            None
        };
        Ok(StepReport {
            out,
            grad_norm,
            launch,
        })
    }
}

/// Runs `work` per the graph policy of the module docs.
fn run_step<B: Backend>(
    be: &B,
    graphs: &mut StepGraphs<B::Graph>,
    key: StepKey,
    work: &mut dyn FnMut() -> Result<()>,
) -> Result<StepLaunch> {
    if !(graphs.on && be.has_graphs()) || graphs.failed.contains(&key) {
        work()?;
        return Ok(StepLaunch::Plain);
    }
    if let Some(g) = graphs.graphs.get(&key) {
        // SAFETY: the graph's buffers are the model's, alive and unmoved: `StepGraphs::clear`
        // runs before any of them is reallocated.
        if unsafe { be.replay(g)? } {
            return Ok(StepLaunch::Replayed);
        }
        graphs.graphs.remove(&key); // stale: recapture below
    } else if graphs.seen.insert(key.clone()) || graphs.graphs.len() >= MAX_STEP_GRAPHS {
        work()?;
        return Ok(StepLaunch::Plain);
    }
    match be.capture(work) {
        Ok(g) => {
            // SAFETY: as above; captured from this model's buffers just now.
            if !unsafe { be.replay(&g)? } {
                bail!("train_step: a graph went stale right after its capture");
            }
            graphs.graphs.insert(key, g);
            Ok(StepLaunch::Captured)
        }
        Err(e) => {
            eprintln!("step graph: capture failed, this batch shape runs kernel by kernel: {e:#}");
            graphs.failed.insert(key);
            work()?;
            Ok(StepLaunch::Plain)
        }
    }
}
