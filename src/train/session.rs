//! Everything a run needs before the first step, built from a [`TrainConfig`]: the dataset, the
//! tokenizer, the tokenized splits, the model configuration and the initial parameters. `train`,
//! `generate` and `evaluate` all start here, so they read data and models the same way.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::config::{DataSource, TrainConfig};
use super::vocab::VocabMap;
use crate::data::{
    encode_split, synthetic, Dataset, EncodeOptions, EncodedSplit, Split, SyntheticConfig,
};
use crate::model::config::{ModelConfig, PromptKind, GPT2_BASE_VOCAB};
use crate::model::params::ParamSet;
use crate::tokenizer::Tokenizer;

/// The loaded data of a run.
pub struct Session {
    pub dataset: Dataset,
    pub tokenizer: Tokenizer,
    pub train: EncodedSplit,
    pub valid: EncodedSplit,
    pub test: EncodedSplit,
    /// The compact vocabulary of the built-in model (`None`: token ids are GPT-2's own).
    pub vocab: Option<VocabMap>,
}

/// Loads the dataset named by `source`.
pub fn load_dataset(source: &DataSource) -> Result<Dataset> {
    match source {
        DataSource::Synthetic {
            users,
            items,
            reviews,
            seed,
        } => synthetic::generate(&SyntheticConfig {
            n_users: *users,
            n_items: *items,
            n_reviews: *reviews,
            seed: *seed,
            ..SyntheticConfig::default()
        }),
        DataSource::Files { data, index_dir } => Dataset::load(data, index_dir.as_deref(), 0),
    }
}

/// The tokenizer: `--tokenizer`, else the model directory's `tokenizer.json`, else the built-in
/// GPT-2 vocabulary. A `--tokenizer` that does not exist is an error. A model directory's
/// tokenizer without PEPLER's `<bos>`/`<eos>`/`<pad>` (the released `gpt2` one) is GPT-2's own
/// 50257-token BPE: then the built-in copy of that vocabulary, which has the three tokens added as
/// the original's `GPT2Tokenizer.from_pretrained(.., bos_token=..)` adds them, is used instead.
pub fn load_tokenizer(explicit: Option<&Path>, model_dir: Option<&Path>) -> Result<Tokenizer> {
    if let Some(path) = explicit {
        return Tokenizer::from_file(path);
    }
    let Some(path) = model_dir
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.exists())
    else {
        return Tokenizer::builtin();
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read tokenizer file {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("tokenizer file {} is not JSON", path.display()))?;
    let added: Vec<&str> = json["added_tokens"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["content"].as_str()).collect())
        .unwrap_or_default();
    if ["<bos>", "<eos>", "<pad>"]
        .iter()
        .all(|t| added.contains(t))
    {
        return Tokenizer::from_file(&path);
    }
    let base = json["model"]["vocab"].as_object().map_or(0, |v| v.len());
    if base != GPT2_BASE_VOCAB {
        bail!(
            "tokenizer file {} has {base} BPE tokens and no <bos>/<eos>/<pad>: it is not GPT-2's; \
             add the three tokens as special tokens or pass --tokenizer",
            path.display()
        );
    }
    eprintln!(
        "tokenizer: {} is GPT-2's without <bos>/<eos>/<pad>: using the built-in GPT-2 vocabulary \
         with the three tokens added (ids 50257-50259), as the original does",
        path.display()
    );
    Tokenizer::builtin()
}

impl Session {
    pub fn load(cfg: &TrainConfig) -> Result<Self> {
        let dataset = load_dataset(&cfg.data)?;
        let tokenizer = load_tokenizer(cfg.tokenizer.as_deref(), cfg.model_dir.as_deref())?;
        let opts = EncodeOptions {
            max_text_tokens: cfg.max_words,
            max_prompt_tokens: cfg.max_words,
            discrete_prompt: cfg.prompt == PromptKind::Discrete,
            ..EncodeOptions::default()
        };
        let enc = |split| encode_split(&dataset, split, &tokenizer, &opts);
        let (mut train, mut valid, mut test) =
            (enc(Split::Train)?, enc(Split::Valid)?, enc(Split::Test)?);
        let vocab = if cfg.model_dir.is_none() && !cfg.full_vocab {
            let specials = [tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()];
            let map = VocabMap::from_splits(&[&train, &valid, &test], &specials);
            for split in [&mut train, &mut valid, &mut test] {
                map.apply(split)?;
            }
            Some(map)
        } else {
            None
        };
        Ok(Session {
            dataset,
            tokenizer,
            train,
            valid,
            test,
            vocab,
        })
    }

    /// The model configuration of this run: the built-in tiny GPT-2 (with the compact vocabulary
    /// unless `full_vocab`) or the one in `model_dir`, with the dataset's user/item counts and the
    /// run's prompt, rating head and dropout.
    pub fn model_config(&self, cfg: &TrainConfig) -> Result<ModelConfig> {
        let (nu, ni) = (self.dataset.n_users(), self.dataset.n_items());
        let mut mc = match &cfg.model_dir {
            None => cfg
                .model_size
                .map_or_else(|| ModelConfig::tiny(nu, ni), |size| size.config(nu, ni)),
            Some(dir) => {
                let path = dir.join("config.json");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{}: cannot read the model config", path.display()))?;
                ModelConfig::from_hf_config_json(&text, nu, ni)
                    .with_context(|| format!("{}", path.display()))?
                    .with_pepler_vocab()
            }
        };
        mc.n_users = nu;
        mc.n_items = ni;
        mc.prompt = cfg.prompt.clone();
        mc.rec = cfg.rec;
        mc.rec_lambda = cfg.rec_lambda;
        mc.dropout = cfg.dropout;
        if let Some(map) = &self.vocab {
            mc.vocab_size = map.len();
            mc.bos_id = self.train.bos_id;
            mc.eos_id = self.train.eos_id;
            mc.pad_id = self.train.pad_id;
        } else if self.tokenizer.vocab_size() > mc.vocab_size {
            bail!(
                "the tokenizer ({}) has {} tokens but the model only {}",
                self.tokenizer.source(),
                self.tokenizer.vocab_size(),
                mc.vocab_size
            );
        }
        let longest = [&self.train, &self.valid, &self.test]
            .iter()
            .map(|s| s.max_seq_len + s.prompt_width.max(2))
            .max()
            .unwrap_or(0);
        if longest > mc.n_positions {
            bail!(
                "the longest input ({longest} positions: prompt + <bos> text <eos>) does not fit the \
                 model's {} positions: lower --max-words",
                mc.n_positions
            );
        }
        mc.validate()?;
        Ok(mc)
    }

    /// The parameters training starts from: the released GPT-2 weights from `model_dir` (vocabulary
    /// resized for the three PEPLER tokens) or a random initialisation of the built-in tiny model;
    /// PEPLER's prompt and rating-head tensors are initialised as the original does. With
    /// `zero_prompts` the user/item vectors are zero.
    pub fn initial_params(&self, cfg: &TrainConfig, mc: &ModelConfig) -> Result<ParamSet> {
        let mut params = match &cfg.model_dir {
            None => ParamSet::init(mc, cfg.seed),
            Some(dir) => {
                let path: PathBuf = dir.join("model.safetensors");
                ParamSet::from_pretrained_gpt2(&path, mc, cfg.seed)?
            }
        };
        if cfg.zero_prompts {
            for name in ["user_embeddings.weight", "item_embeddings.weight"] {
                if let Some(t) = params.get_mut(name) {
                    t.data.fill(0.0);
                }
            }
        }
        Ok(params)
    }
}

impl Session {
    /// Model token ids back to the tokenizer's (the identity without a compact vocabulary).
    pub fn tokenizer_ids(&self, ids: &[u32]) -> Result<Vec<u32>> {
        match &self.vocab {
            Some(map) => map.unmap(ids),
            None => Ok(ids.to_vec()),
        }
    }
}
