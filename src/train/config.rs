//! Everything that defines a training run, in one serialisable struct: it is written into every
//! checkpoint's sidecar, and `--resume` refuses to continue a run whose configuration changed.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::strategy::{Stage1Wte, Strategy};
use crate::backend::AdamWVariant;
use crate::data::SyntheticConfig;
use crate::model::config::{PromptKind, RecKind};
use crate::model::sizes::ModelSize;

/// The largest `--batch-size` (the original uses 128).
pub const MAX_BATCH_SIZE: usize = 8192;
/// The largest `--max-words` (GPT-2 has 1024 positions).
pub const MAX_WORDS: usize = 4096;

/// Where the reviews come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataSource {
    /// The built-in synthetic dataset (`crate::data::synthetic`).
    Synthetic {
        users: usize,
        items: usize,
        reviews: usize,
        seed: u64,
    },
    /// `reviews.pickle` (+ split folder) or a JSON-lines file (+ optional split folder).
    Files {
        data: PathBuf,
        index_dir: Option<PathBuf>,
    },
}

impl DataSource {
    /// The synthetic dataset with its default sizes.
    pub fn default_synthetic() -> Self {
        let d = SyntheticConfig::default();
        DataSource::Synthetic {
            users: d.n_users,
            items: d.n_items,
            reviews: d.n_reviews,
            seed: d.seed,
        }
    }
}

/// The run's configuration (see the CLI's `train --help` for each field's meaning).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data: DataSource,
    /// A Hugging Face GPT-2 directory (config.json + model.safetensors [+ tokenizer.json]);
    /// `None` = the built-in tiny GPT-2, randomly initialised.
    pub model_dir: Option<PathBuf>,
    /// A tokenizer.json overriding the model directory's and the built-in one.
    pub tokenizer: Option<PathBuf>,
    pub prompt: PromptKind,
    pub strategy: Strategy,
    pub stage1_wte: Stage1Wte,
    pub rec: RecKind,
    pub rec_lambda: f32,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    /// Upper limit of epochs per stage.
    pub epochs: u32,
    /// Early stopping: epochs without improvement (in total, per stage) before the stage ends.
    pub endure: u32,
    /// Explanations are cut to this many BPE tokens (the original's `--words`).
    pub max_words: usize,
    pub dropout: f32,
    pub seed: u64,
    /// Ablation: the user/item prompt vectors are zero and never train.
    pub zero_prompts: bool,
    /// Keep all 50260 GPT-2 tokens in the built-in model (default: only those in the data; see
    /// `train::vocab`). Pretrained models always keep their full vocabulary.
    #[serde(default)]
    pub full_vocab: bool,
    /// Which AdamW formula (`torch.optim.AdamW`, or `transformers.AdamW` as the original scripts).
    #[serde(default)]
    pub adamw: AdamWVariant,
    /// A built-in GPT-2 shape (randomly initialised) instead of the tiny model, when `model_dir`
    /// is `None`. Omitted from the JSON when unset, so earlier runs' sidecars still compare equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_size: Option<ModelSize>,
    /// Clip the global gradient norm to this value before each optimizer step (torch's
    /// `clip_grad_norm_`); `None`, the default, does not clip, as the original. Omitted from the
    /// JSON when unset, so earlier runs' sidecars still compare equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f32>,
}

impl TrainConfig {
    /// The original's defaults for the given prompt kind: lr 1e-3 (1e-4 for the discrete prompt),
    /// batch 128, 100 epochs, endure 5, 20 words, dropout 0.1, sequential tuning for the continuous
    /// prompt and full fine-tuning for the discrete one.
    pub fn defaults(prompt: PromptKind) -> Self {
        let discrete = prompt == PromptKind::Discrete;
        TrainConfig {
            data: DataSource::default_synthetic(),
            model_dir: None,
            tokenizer: None,
            strategy: if discrete {
                Strategy::Full
            } else {
                Strategy::Sequential
            },
            prompt,
            stage1_wte: Stage1Wte::Train,
            rec: RecKind::None,
            rec_lambda: 0.01,
            lr: if discrete { 1e-4 } else { 1e-3 },
            weight_decay: 0.0,
            batch_size: 128,
            epochs: 100,
            endure: 5,
            max_words: 20,
            dropout: 0.1,
            seed: 42,
            zero_prompts: false,
            full_vocab: false,
            adamw: AdamWVariant::Torch,
            model_size: None,
            clip_grad_norm: None,
        }
    }

    /// Checks the options that have a valid range; the error names the option.
    pub fn validate(&self) -> Result<()> {
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                bail!("--clip-grad-norm must be a positive number, not {c}");
            }
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.batch_size > MAX_BATCH_SIZE {
            // Activations grow with batch x length x vocabulary: refuse before allocating.
            bail!(
                "--batch-size {} is too large: at most {MAX_BATCH_SIZE}",
                self.batch_size
            );
        }
        if self.max_words > MAX_WORDS {
            bail!(
                "--max-words {} is too large: at most {MAX_WORDS}",
                self.max_words
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!("--weight-decay must be >= 0, got {}", self.weight_decay);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("--dropout must be in [0, 1), got {}", self.dropout);
        }
        if !(self.rec_lambda.is_finite() && self.rec_lambda >= 0.0) {
            bail!("--lambda must be >= 0, got {}", self.rec_lambda);
        }
        if self.max_words == 0 {
            bail!("--max-words must be at least 1");
        }
        if self.endure == 0 {
            bail!("--endure must be at least 1");
        }
        Ok(())
    }
}
