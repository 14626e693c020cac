//! One training/evaluation batch as the model consumes it (the host side of Contract 2's `batch.*`):
//! user and item ids, the text `<bos> w.. <eos> <pad>..` with its mask, the ratings, and for the
//! discrete prompt the feature tokens. `validate` checks everything against a config so the model
//! never indexes out of range.

use anyhow::{bail, Result};

use super::config::{ModelConfig, PromptKind};

/// A batch of `b` examples, texts padded to `t` tokens, discrete prompts padded to `p` tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Number of examples.
    pub b: usize,
    /// Text length (with `<bos>`, `<eos>`, padding).
    pub t: usize,
    /// Discrete prompt length (0 for the continuous prompt).
    pub p: usize,
    /// User ids [b] (continuous prompt; ignored by the discrete prompt).
    pub users: Vec<u32>,
    /// Item ids [b].
    pub items: Vec<u32>,
    /// Token ids [b * t], row-major.
    pub text: Vec<u32>,
    /// 1 on real tokens (incl. `<bos>`/`<eos>`), 0 on padding [b * t].
    pub mask: Vec<u8>,
    /// Ratings [b] (the rating head's targets).
    pub rating: Vec<f32>,
    /// Feature tokens [b * p] for the discrete prompt (right-padded with `<pad>`, all attended).
    pub prompt: Vec<u32>,
}

impl Batch {
    /// Prompt length for `cfg`: 2 (user, item) for the continuous prompt, `p` for the discrete one.
    pub fn prompt_len(&self, cfg: &ModelConfig) -> usize {
        match cfg.prompt {
            PromptKind::Continuous => 2,
            PromptKind::Discrete => self.p,
        }
    }

    /// Total input length: prompt + text.
    pub fn seq_len(&self, cfg: &ModelConfig) -> usize {
        self.prompt_len(cfg) + self.t
    }

    /// Checks sizes and id ranges against `cfg`; the error names the field.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let (b, t) = (self.b, self.t);
        if b == 0 || t == 0 {
            bail!("batch: empty (b = {b}, t = {t})");
        }
        let want = |name: &str, got: usize, n: usize| -> Result<()> {
            if got != n {
                bail!("batch: `{name}` has {got} entries, expected {n}");
            }
            Ok(())
        };
        want("text", self.text.len(), b * t)?;
        want("mask", self.mask.len(), b * t)?;
        want("rating", self.rating.len(), b)?;
        if let Some(&bad) = self.text.iter().find(|&&x| x as usize >= cfg.vocab_size) {
            bail!(
                "batch: token {bad} outside the vocabulary of {}",
                cfg.vocab_size
            );
        }
        if let Some(&bad) = self.mask.iter().find(|&&m| m > 1) {
            bail!("batch: mask value {bad} is not 0 or 1");
        }
        match cfg.prompt {
            PromptKind::Continuous => {
                want("users", self.users.len(), b)?;
                want("items", self.items.len(), b)?;
                if let Some(&u) = self.users.iter().find(|&&u| u as usize >= cfg.n_users) {
                    bail!("batch: user {u} outside 0..{}", cfg.n_users);
                }
                if let Some(&i) = self.items.iter().find(|&&i| i as usize >= cfg.n_items) {
                    bail!("batch: item {i} outside 0..{}", cfg.n_items);
                }
            }
            PromptKind::Discrete => {
                want("prompt", self.prompt.len(), b * self.p)?;
                if let Some(&bad) = self.prompt.iter().find(|&&x| x as usize >= cfg.vocab_size) {
                    bail!(
                        "batch: prompt token {bad} outside the vocabulary of {}",
                        cfg.vocab_size
                    );
                }
            }
        }
        let l = self.seq_len(cfg);
        if l > cfg.n_positions {
            bail!(
                "batch: sequence of {l} positions exceeds n_positions {}",
                cfg.n_positions
            );
        }
        Ok(())
    }
}
