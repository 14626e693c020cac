//! Which parameters train in which stage.
//!
//! - `sequential` (PEPLER's default for the continuous prompt): stage "prompt" trains the prompt
//!   parameters (user/item embeddings and the rating head, which is as new as the prompts) with the
//!   language model frozen, until the validation loss stops improving; the best model is restored and
//!   stage "full" trains everything with a fresh optimizer, as `main.py` does.
//! - `prompt-only`: only stage "prompt".
//! - `full`: only stage "full" (what `reg.py` and `discrete.py` do).
//!
//! The original's stage 1 also trains the tied word-embedding table, by accident: it freezes the
//! pretrained model and *then* calls `resize_token_embeddings`, which creates a fresh, trainable table.
//! Here that is an explicit choice, `Stage1Wte`, whose default reproduces the original code.

use anyhow::{bail, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::model::config::ModelConfig;
use crate::model::params::param_specs;

/// The word-embedding table's name (the LM head is tied to it).
pub const WTE: &str = "transformer.wte.weight";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stage "prompt" (LM frozen), then stage "full" (everything).
    Sequential,
    /// Only the prompt parameters (and rating head) ever train.
    PromptOnly,
    /// Everything trains from the start.
    Full,
}

/// Whether the word-embedding table trains in stage "prompt".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Stage1Wte {
    /// As the original code (which trains it by accident, see the module docs).
    Train,
    /// As the paper describes: the whole language model is frozen.
    Freeze,
}

/// One training stage: a name for logs and checkpoints, and the parameters the optimizer updates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub trainable: Vec<String>,
}

fn is_prompt_param(name: &str) -> bool {
    name.starts_with("user_embeddings.")
        || name.starts_with("item_embeddings.")
        || name.starts_with("recommender.")
}

/// The stages of a strategy for a model config, with their trainable parameter names (in the
/// canonical parameter order).
pub fn stages(strategy: Strategy, stage1_wte: Stage1Wte, cfg: &ModelConfig) -> Result<Vec<Stage>> {
    let names: Vec<String> = param_specs(cfg).into_iter().map(|s| s.name).collect();
    let prompt_stage = || -> Result<Stage> {
        let trainable: Vec<String> = names
            .iter()
            .filter(|n| is_prompt_param(n) || (stage1_wte == Stage1Wte::Train && n.as_str() == WTE))
            .cloned()
            .collect();
        if trainable.is_empty() {
            bail!(
                "the {:?} prompt has no prompt parameters to train: use --strategy full",
                cfg.prompt
            );
        }
        Ok(Stage {
            name: "prompt".into(),
            trainable,
        })
    };
    let full_stage = || Stage {
        name: "full".into(),
        trainable: names.clone(),
    };
    Ok(match strategy {
        Strategy::Sequential => vec![prompt_stage()?, full_stage()],
        Strategy::PromptOnly => vec![prompt_stage()?],
        Strategy::Full => vec![full_stage()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{PromptKind, RecKind};

    #[test]
    fn sequential_stage1_trains_prompts_head_and_optionally_wte() {
        let cfg = ModelConfig::tiny(3, 4).with_rec(RecKind::Mlp, 0.1);
        let s = stages(Strategy::Sequential, Stage1Wte::Train, &cfg).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].trainable.contains(&WTE.to_string()));
        assert!(s[0].trainable.iter().any(|n| n.starts_with("recommender.")));
        assert!(!s[0].trainable.iter().any(|n| n.contains(".h.0.")));
        assert_eq!(s[1].trainable.len(), param_specs(&cfg).len());

        let frozen = stages(Strategy::PromptOnly, Stage1Wte::Freeze, &cfg).unwrap();
        assert_eq!(frozen.len(), 1);
        assert!(!frozen[0].trainable.contains(&WTE.to_string()));
    }

    #[test]
    fn discrete_prompt_has_no_prompt_stage() {
        let cfg = ModelConfig::tiny(3, 4).with_prompt(PromptKind::Discrete);
        let err = stages(Strategy::PromptOnly, Stage1Wte::Freeze, &cfg).unwrap_err();
        assert!(err.to_string().contains("--strategy full"), "{err}");
        assert_eq!(
            stages(Strategy::Full, Stage1Wte::Freeze, &cfg)
                .unwrap()
                .len(),
            1
        );
    }
}
