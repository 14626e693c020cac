//! Built-in model shapes: the tiny smoke-test GPT-2 and the four released GPT-2 sizes (small,
//! medium, large, XL; Radford et al. 2019, the shapes of Hugging Face's `gpt2`, `gpt2-medium`,
//! `gpt2-large`, `gpt2-xl`), so a model-size sweep (the paper's Fig. 9) runs without downloads.
//! Without a Hugging Face directory the weights are randomly initialised: the sweep then measures
//! the architecture, not the pre-training, and the CLI says so.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::config::ModelConfig;

/// A built-in GPT-2 shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSize {
    /// 2 layers, 64 wide, 2 heads (`ModelConfig::tiny`).
    Tiny,
    /// 12 layers, 768 wide, 12 heads (124M parameters).
    Small,
    /// 24 layers, 1024 wide, 16 heads (355M).
    Medium,
    /// 36 layers, 1280 wide, 20 heads (774M).
    Large,
    /// 48 layers, 1600 wide, 25 heads (1558M).
    Xl,
}

impl ModelSize {
    pub const ALL: [ModelSize; 5] = [
        ModelSize::Tiny,
        ModelSize::Small,
        ModelSize::Medium,
        ModelSize::Large,
        ModelSize::Xl,
    ];

    /// (layers, width, heads).
    pub fn shape(self) -> (usize, usize, usize) {
        match self {
            ModelSize::Tiny => (2, 64, 2),
            ModelSize::Small => (12, 768, 12),
            ModelSize::Medium => (24, 1024, 16),
            ModelSize::Large => (36, 1280, 20),
            ModelSize::Xl => (48, 1600, 25),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelSize::Tiny => "tiny",
            ModelSize::Small => "small",
            ModelSize::Medium => "medium",
            ModelSize::Large => "large",
            ModelSize::Xl => "xl",
        }
    }

    /// The model configuration of this shape with PEPLER's vocabulary and the original defaults
    /// (`ModelConfig::gpt2_small`'s fields: 1024 positions, MLP head 400 x 2, dropout 0.1); the
    /// tiny model is exactly `ModelConfig::tiny`.
    pub fn config(self, n_users: usize, n_items: usize) -> ModelConfig {
        if self == ModelSize::Tiny {
            return ModelConfig::tiny(n_users, n_items);
        }
        let (n_layer, n_embd, n_head) = self.shape();
        ModelConfig {
            n_layer,
            n_embd,
            n_head,
            ..ModelConfig::gpt2_small(n_users, n_items)
        }
    }
}

impl fmt::Display for ModelSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelSize {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_prefix("gpt2-").unwrap_or(&t);
        for m in ModelSize::ALL {
            if m.name() == t {
                return Ok(m);
            }
        }
        bail!("unknown model size `{s}`: expected tiny, small, medium, large or xl")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::param_specs;

    /// GPT-2 parameter counts without PEPLER's tables: embeddings (50257 tokens as released) and
    /// blocks; the published counts are 124M, 355M, 774M and 1558M.
    #[test]
    fn shapes_have_the_released_parameter_counts() {
        for (size, millions) in [
            (ModelSize::Small, 124),
            (ModelSize::Medium, 355),
            (ModelSize::Large, 774),
            (ModelSize::Xl, 1558),
        ] {
            let mut cfg = size.config(1, 1);
            cfg.validate().unwrap();
            cfg.vocab_size = 50257; // the released count excludes PEPLER's three added tokens
            let n: usize = param_specs(&cfg)
                .iter()
                .filter(|s| s.name.starts_with("transformer."))
                .map(|s| s.numel())
                .sum();
            assert_eq!((n as f64 / 1e6).round() as usize, millions, "{size}");
        }
        assert_eq!(ModelSize::Tiny.config(3, 4), ModelConfig::tiny(3, 4));
    }

    #[test]
    fn names_parse_and_bad_names_are_errors() {
        assert_eq!(
            "gpt2-medium".parse::<ModelSize>().unwrap(),
            ModelSize::Medium
        );
        assert_eq!("XL".parse::<ModelSize>().unwrap(), ModelSize::Xl);
        let err = "huge".parse::<ModelSize>().unwrap_err().to_string();
        assert!(err.contains("huge") && err.contains("medium"), "{err}");
    }
}
