//! AdamW with per-tensor trainable flags (torch.optim.AdamW semantics; arithmetic in
//! `ops::adamw`). `AdamWConfig` holds the hyper-parameters; `StepPlan` decides, for each parameter
//! tensor in canonical order, whether it updates this step and with which scalars (so a backend
//! that keeps parameters and moments in its own buffers runs the same schedule); `HostAdamW` is the
//! complete optimizer on a host `ParamSet` (reference, tests, parity).
//!
//! Like torch, each tensor has its own step count, advanced only when the tensor is updated, and
//! frozen tensors keep their values and their moments untouched.

use std::collections::HashSet;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::model::params::ParamSet;
use crate::ops::adamw::{adamw_update_scalars, AdamWScalars};

/// AdamW hyper-parameters, f64 because torch computes its scalars with Python floats.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// The original PEPLER setting: lr 1e-3, betas (0.9, 0.999), eps 1e-6, no weight decay.
    /// (The original's discrete-prompt runs use lr 1e-4: `with_lr`.)
    pub fn pepler() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
        }
    }

    /// `torch.optim.AdamW`'s own defaults (eps 1e-8, weight decay 0.01).
    pub fn torch_default() -> Self {
        AdamWConfig {
            eps: 1e-8,
            weight_decay: 0.01,
            ..Self::pepler()
        }
    }

    pub fn with_lr(mut self, lr: f64) -> Self {
        self.lr = lr;
        self
    }

    /// The f32 scalars for a tensor's `step` (counting from 1).
    pub fn scalars(&self, step: u64) -> AdamWScalars {
        AdamWScalars::new(
            self.lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            step,
        )
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            bail!("adamw: lr {} must be finite and >= 0", self.lr);
        }
        for (n, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("adamw: {n} {b} must be in [0, 1)");
            }
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            bail!("adamw: eps {} must be finite and >= 0", self.eps);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "adamw: weight_decay {} must be finite and >= 0",
                self.weight_decay
            );
        }
        Ok(())
    }
}

/// Per-tensor trainable flags and step counts, in canonical parameter order.
#[derive(Clone, Debug, PartialEq)]
pub struct StepPlan {
    pub config: AdamWConfig,
    names: Vec<String>,
    trainable: Vec<bool>,
    steps: Vec<u64>,
}

impl StepPlan {
    /// All tensors of `params` in canonical order; those named in `trainable` update. An unknown
    /// name is an error (a typo would otherwise silently freeze a tensor).
    pub fn new<S: AsRef<str>>(
        config: AdamWConfig,
        params: &ParamSet,
        trainable: &[S],
    ) -> Result<Self> {
        config.validate()?;
        let names: Vec<String> = params.names().map(str::to_string).collect();
        let mut plan = StepPlan {
            config,
            trainable: vec![false; names.len()],
            steps: vec![0; names.len()],
            names,
        };
        plan.set_trainable(trainable)?;
        Ok(plan)
    }

    /// Every tensor trainable.
    pub fn all(config: AdamWConfig, params: &ParamSet) -> Result<Self> {
        let names: Vec<String> = params.names().map(str::to_string).collect();
        Self::new(config, params, &names)
    }

    /// Replaces the trainable set (e.g. between sequential-tuning stages). Step counts and moments
    /// of tensors are kept, as torch keeps per-parameter state (the original builds a new optimizer
    /// for stage 2: use a new `StepPlan`/`HostAdamW` for that).
    pub fn set_trainable<S: AsRef<str>>(&mut self, trainable: &[S]) -> Result<()> {
        let wanted: HashSet<&str> = trainable.iter().map(|s| s.as_ref()).collect();
        for w in &wanted {
            if !self.names.iter().any(|n| n == w) {
                bail!("adamw: trainable parameter `{w}` is not a parameter of this model");
            }
        }
        for (flag, n) in self.trainable.iter_mut().zip(&self.names) {
            *flag = wanted.contains(n.as_str());
        }
        Ok(())
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
    pub fn is_trainable(&self, i: usize) -> bool {
        self.trainable[i]
    }
    pub fn trainable_names(&self) -> Vec<&str> {
        self.names
            .iter()
            .zip(&self.trainable)
            .filter(|(_, &t)| t)
            .map(|(n, _)| n.as_str())
            .collect()
    }
    /// The step count of tensor `i` (0 before its first update).
    pub fn step_of(&self, i: usize) -> u64 {
        self.steps[i]
    }

    /// Advances one optimizer step: for each tensor in canonical order, `Some(scalars)` if it
    /// updates now (its step count incremented first, as torch does), `None` if frozen.
    pub fn begin_step(&mut self) -> Vec<Option<AdamWScalars>> {
        let cfg = self.config;
        self.trainable
            .iter()
            .zip(self.steps.iter_mut())
            .map(|(&t, step)| {
                if t {
                    *step += 1;
                    Some(cfg.scalars(*step))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// AdamW on a host `ParamSet`: the plan plus first/second moments (zero-initialised, as torch
/// creates them lazily at a tensor's first step).
#[derive(Clone, Debug)]
pub struct HostAdamW {
    pub plan: StepPlan,
    m: ParamSet,
    v: ParamSet,
}

impl HostAdamW {
    pub fn new<S: AsRef<str>>(
        config: AdamWConfig,
        params: &ParamSet,
        trainable: &[S],
    ) -> Result<Self> {
        Ok(HostAdamW {
            plan: StepPlan::new(config, params, trainable)?,
            m: ParamSet::zeros(params.config()),
            v: ParamSet::zeros(params.config()),
        })
    }

    /// One step: updates the trainable tensors of `params` from `grads` (same config/layout);
    /// frozen tensors, and their moments, are not touched.
    pub fn step(&mut self, params: &mut ParamSet, grads: &ParamSet) -> Result<()> {
        if params.specs() != grads.specs() || params.specs() != self.m.specs() {
            bail!("adamw: parameters, gradients and optimizer state have different layouts");
        }
        let plan = self.plan.begin_step();
        for (i, s) in plan.iter().enumerate() {
            if let Some(s) = s {
                adamw_update_scalars(
                    &mut params.at_mut(i).data,
                    &grads.at(i).data,
                    &mut self.m.at_mut(i).data,
                    &mut self.v.at_mut(i).data,
                    s,
                );
            }
        }
        Ok(())
    }

    /// First moments (for checkpoints and tests).
    pub fn first_moments(&self) -> &ParamSet {
        &self.m
    }
    /// Second moments.
    pub fn second_moments(&self) -> &ParamSet {
        &self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;

    #[test]
    fn frozen_tensors_keep_values_and_state_and_unknown_names_fail() {
        let cfg = ModelConfig {
            vocab_size: 20,
            n_positions: 8,
            n_embd: 4,
            n_layer: 1,
            n_head: 1,
            bos_id: 17,
            eos_id: 18,
            pad_id: 19,
            ..ModelConfig::tiny(2, 3)
        };
        let mut p = ParamSet::init(&cfg, 1);
        let before = p.clone();
        let mut g = ParamSet::init(&cfg, 2);
        for (_, t) in g.iter_mut() {
            t.data.iter_mut().for_each(|x| *x += 0.5);
        }
        let train = ["user_embeddings.weight", "transformer.wte.weight"];
        let mut opt = HostAdamW::new(AdamWConfig::pepler(), &p, &train).unwrap();
        opt.step(&mut p, &g).unwrap();
        opt.step(&mut p, &g).unwrap();
        for (i, (s, t)) in p.iter().enumerate() {
            let trained = train.contains(&s.name.as_str());
            assert_eq!(t == before.at(i), !trained, "{}", s.name);
            assert_eq!(opt.plan.step_of(i), if trained { 2 } else { 0 });
            let m_zero = opt.first_moments().at(i).data.iter().all(|&x| x == 0.0);
            assert_eq!(m_zero, !trained, "{}", s.name);
        }
        let err =
            HostAdamW::new(AdamWConfig::pepler(), &p, &["user_embedding.weight"]).unwrap_err();
        assert!(err.to_string().contains("user_embedding.weight"));
    }
}
