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
            Some(dir) => read_hf_config(&dir.join("config.json"), nu, ni)?,
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
        // Generation after training feeds prompt + <bos> + up to max_words - 1 tokens: check it
        // now rather than after the whole training.
        let prompt = [&self.train, &self.valid, &self.test]
            .iter()
            .map(|s| s.prompt_width.max(2))
            .max()
            .unwrap_or(2);
        if prompt + cfg.max_words > mc.n_positions {
            bail!(
                "--max-words {} does not fit the model's {} positions: generation needs the \
                 prompt ({prompt} positions), <bos> and up to {} more tokens; use --max-words {} \
                 at most",
                cfg.max_words,
                mc.n_positions,
                cfg.max_words - 1,
                mc.n_positions.saturating_sub(prompt)
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

/// The largest model `--model` may describe, in parameters (64 GB of fp32 weights); a larger
/// config.json is refused before anything is allocated.
pub const MAX_MODEL_PARAMS: u64 = 16_000_000_000;

/// Reads a Hugging Face `config.json` (with PEPLER's vocabulary) and bounds its sizes before
/// anything is allocated from them; every error names the file.
pub fn read_hf_config(path: &Path, n_users: usize, n_items: usize) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the model config", path.display()))?;
    parse_hf_config(&text, n_users, n_items).with_context(|| format!("{}", path.display()))
}

/// [`read_hf_config`] on the file's text.
pub fn parse_hf_config(text: &str, n_users: usize, n_items: usize) -> Result<ModelConfig> {
    let mc = ModelConfig::from_hf_config_json(text, n_users, n_items)?.with_pepler_vocab();
    mc.validate()?;
    let (v, p, c, l) = (
        mc.vocab_size as u64,
        mc.n_positions as u64,
        mc.n_embd as u64,
        mc.n_layer as u64,
    );
    let prompts = (n_users as u64).saturating_add(n_items as u64);
    // GPT-2: wte + wpe + per layer ~12 c^2 (attention 4 c^2, MLP 8 c^2); plus the prompt vectors.
    let params = v
        .saturating_add(p)
        .saturating_add(prompts)
        .saturating_mul(c)
        .saturating_add(l.saturating_mul(12).saturating_mul(c).saturating_mul(c));
    if params > MAX_MODEL_PARAMS {
        bail!(
            "the model it describes (vocab_size {v}, n_positions {p}, n_embd {c}, n_layer {l}) \
             has about {params} parameters, more than the {MAX_MODEL_PARAMS} supported"
        );
    }
    Ok(mc)
}

/// A fingerprint of a dataset's content (ids, ratings, texts and the three splits), for the run
/// id: resuming on changed data is refused.
pub fn data_fingerprint(ds: &Dataset) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for r in &ds.reviews {
        h.update(r.user.to_le_bytes());
        h.update(r.item.to_le_bytes());
        h.update(r.rating.to_bits().to_le_bytes());
        for s in [&r.feature, &r.adjective, &r.sentence] {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.update(r.sentiment.to_le_bytes());
    }
    for names in [ds.users.names(), ds.items.names()] {
        for n in names {
            h.update((n.len() as u64).to_le_bytes());
            h.update(n.as_bytes());
        }
    }
    for split in [&ds.train, &ds.valid, &ds.test] {
        h.update((split.len() as u64).to_le_bytes());
        for &i in split.iter() {
            h.update((i as u64).to_le_bytes());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Session {
    /// [`data_fingerprint`] of this session's dataset.
    pub fn data_fingerprint(&self) -> String {
        data_fingerprint(&self.dataset)
    }

    /// Model token ids back to the tokenizer's (the identity without a compact vocabulary).
    pub fn tokenizer_ids(&self, ids: &[u32]) -> Result<Vec<u32>> {
        match &self.vocab {
            Some(map) => map.unmap(ids),
            None => Ok(ids.to_vec()),
        }
    }
}
