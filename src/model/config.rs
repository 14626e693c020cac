//! Model configuration (Contract 3): GPT-2 hyper-parameters plus the PEPLER fields (prompt kind,
//! rating head), with the built-in presets and parsers for a Hugging Face `config.json` and for the
//! `config` metadata JSON of a PyTorch parity dump (docs/parity-format.md).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// GPT-2's BPE vocabulary size before PEPLER adds its three special tokens.
pub const GPT2_BASE_VOCAB: usize = 50257;
/// `<bos>`, `<eos>`, `<pad>` as the original adds them to the GPT-2 tokenizer (in this order).
pub const BOS_ID: u32 = 50257;
pub const EOS_ID: u32 = 50258;
pub const PAD_ID: u32 = 50259;
/// Vocabulary after the resize: 50257 + 3.
pub const PEPLER_VOCAB: usize = 50260;

/// How the (user, item) pair enters the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptKind {
    /// PEPLER: two learned vectors `user_embeddings[u]`, `item_embeddings[i]` before the text.
    Continuous,
    /// PEPLER-D: item-feature BPE tokens embedded with GPT-2's own `wte`.
    Discrete,
}

/// Recommendation-as-regularization head on the prompt vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecKind {
    None,
    /// rating = u . i
    Mf,
    /// rating = last(sigmoid(layers..(sigmoid(first([u, i])))))
    Mlp,
}

/// GPT-2 + PEPLER configuration. Serialised with serde exactly as the dump's `config` JSON
/// (plus `dropout`, which dumps omit because they are taken with dropout off).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub layer_norm_epsilon: f32,
    pub n_users: usize,
    pub n_items: usize,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
    pub prompt: PromptKind,
    pub rec: RecKind,
    pub rec_lambda: f32,
    /// Hidden width of the MLP rating head (original: 400).
    pub mlp_hidden: usize,
    /// Number of hidden `[H,H]` layers of the MLP head (original: 2).
    pub mlp_layers: usize,
    /// Dropout probability for resid/embd/attn dropout (original: 0.1; 0 in dumps).
    #[serde(default)]
    pub dropout: f32,
}

impl ModelConfig {
    /// The real GPT-2 small (124M) shapes with PEPLER's resized vocabulary and original defaults
    /// (continuous prompt, no rating head, MLP head 400 x 2 if enabled, dropout 0.1).
    pub fn gpt2_small(n_users: usize, n_items: usize) -> Self {
        ModelConfig {
            vocab_size: PEPLER_VOCAB,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            layer_norm_epsilon: 1e-5,
            n_users,
            n_items,
            bos_id: BOS_ID,
            eos_id: EOS_ID,
            pad_id: PAD_ID,
            prompt: PromptKind::Continuous,
            rec: RecKind::None,
            rec_lambda: 1.0,
            mlp_hidden: 400,
            mlp_layers: 2,
            dropout: 0.1,
        }
    }

    /// A built-in tiny GPT-2 (randomly initialised) for smoke runs and tests without downloads:
    /// 64 wide, 2 layers, 2 heads, 64 positions, the full PEPLER vocabulary (so the real tokenizer
    /// works with it), MLP head 64 x 2.
    pub fn tiny(n_users: usize, n_items: usize) -> Self {
        ModelConfig {
            n_positions: 64,
            n_embd: 64,
            n_layer: 2,
            n_head: 2,
            mlp_hidden: 64,
            ..Self::gpt2_small(n_users, n_items)
        }
    }

    /// Builder-style setters for the PEPLER variant.
    pub fn with_prompt(mut self, prompt: PromptKind) -> Self {
        self.prompt = prompt;
        self
    }
    pub fn with_rec(mut self, rec: RecKind, rec_lambda: f32) -> Self {
        self.rec = rec;
        self.rec_lambda = rec_lambda;
        self
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    /// Prompt length for the continuous prompt (user, item); the discrete prompt's length is
    /// per batch.
    pub fn continuous_prompt_len(&self) -> usize {
        2
    }

    /// Whether the model has `user_embeddings` / `item_embeddings` tables.
    pub fn has_id_embeddings(&self) -> bool {
        self.prompt == PromptKind::Continuous
    }

    /// Checks the invariants every other module relies on; the error says which field is wrong.
    pub fn validate(&self) -> Result<()> {
        let pos = |name: &str, v: usize| -> Result<()> {
            if v == 0 {
                bail!("model config: {name} must be > 0");
            }
            Ok(())
        };
        pos("vocab_size", self.vocab_size)?;
        pos("n_positions", self.n_positions)?;
        pos("n_embd", self.n_embd)?;
        pos("n_layer", self.n_layer)?;
        pos("n_head", self.n_head)?;
        if !self.n_embd.is_multiple_of(self.n_head) {
            bail!(
                "model config: n_embd {} is not divisible by n_head {}",
                self.n_embd,
                self.n_head
            );
        }
        // The fused attention kernels keep a head's row in registers and its K/V tile in 48 KiB of
        // shared memory: head sizes up to 128 (every GPT-2 size uses 64). One limit for every
        // backend, so a model trained on one backend runs on all of them.
        let hd = self.n_embd / self.n_head;
        if hd > crate::kernels::attention::ATTN_MAX_HD {
            bail!(
                "model config: head size n_embd / n_head = {hd} exceeds {} (the fused attention's \
                 limit; GPT-2 uses 64)",
                crate::kernels::attention::ATTN_MAX_HD
            );
        }
        for (name, id) in [
            ("bos_id", self.bos_id),
            ("eos_id", self.eos_id),
            ("pad_id", self.pad_id),
        ] {
            if id as usize >= self.vocab_size {
                bail!(
                    "model config: {name} {id} is outside the vocabulary (vocab_size {})",
                    self.vocab_size
                );
            }
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            bail!("model config: layer_norm_epsilon must be > 0");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("model config: dropout {} must be in [0, 1)", self.dropout);
        }
        if self.prompt == PromptKind::Continuous && (self.n_users == 0 || self.n_items == 0) {
            bail!("model config: the continuous prompt needs n_users > 0 and n_items > 0");
        }
        if self.rec != RecKind::None && self.prompt != PromptKind::Continuous {
            bail!(
                "model config: a rating head (rec = {:?}) needs the continuous prompt",
                self.rec
            );
        }
        if self.rec == RecKind::Mlp && self.mlp_hidden == 0 {
            bail!("model config: rec = mlp needs mlp_hidden > 0");
        }
        Ok(())
    }

    /// Parses a PyTorch parity dump's `config` metadata JSON (Contract 2). Every field listed
    /// there is required; `dropout` defaults to 0 (dumps are taken with dropout off).
    pub fn from_dump_json(text: &str) -> Result<Self> {
        let cfg: ModelConfig =
            serde_json::from_str(text).context("parsing the dump's `config` metadata JSON")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a Hugging Face GPT-2 `config.json` (fields `vocab_size`, `n_positions`, `n_embd`,
    /// `n_layer`, `n_head`, `layer_norm_epsilon`, `resid_pdrop`; older files may say `n_ctx`).
    /// PEPLER fields may be present at the top level (as `save_hf_dir` writes them); those absent
    /// take the original's defaults, with `n_users`/`n_items` from the arguments when absent.
    /// The vocabulary in the file is kept (50257 for the released `gpt2`; see `with_pepler_vocab`).
    pub fn from_hf_config_json(text: &str, n_users: usize, n_items: usize) -> Result<Self> {
        let v: Value = serde_json::from_str(text).context("parsing a Hugging Face config.json")?;
        let obj = v
            .as_object()
            .context("Hugging Face config.json: the top level is not a JSON object")?;
        let get_usize = |key: &str| -> Result<Option<usize>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .with_context(|| format!("config.json: `{key}` is not a non-negative integer")),
            }
        };
        let get_f32 = |key: &str| -> Result<Option<f32>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_f64()
                    .map(|n| Some(n as f32))
                    .with_context(|| format!("config.json: `{key}` is not a number")),
            }
        };
        let req = |key: &str, alt: Option<&str>| -> Result<usize> {
            if let Some(n) = get_usize(key)? {
                return Ok(n);
            }
            if let Some(a) = alt {
                if let Some(n) = get_usize(a)? {
                    return Ok(n);
                }
            }
            bail!("config.json: missing `{key}`")
        };
        let mut cfg = Self::gpt2_small(n_users, n_items);
        cfg.vocab_size = req("vocab_size", None)?;
        cfg.n_positions = req("n_positions", Some("n_ctx"))?;
        cfg.n_embd = req("n_embd", Some("hidden_size"))?;
        cfg.n_layer = req("n_layer", Some("num_hidden_layers"))?;
        cfg.n_head = req("n_head", Some("num_attention_heads"))?;
        if let Some(eps) = get_f32("layer_norm_epsilon")? {
            cfg.layer_norm_epsilon = eps;
        }
        if let Some(p) = get_f32("resid_pdrop")? {
            cfg.dropout = p;
        }
        if let Some(n) = get_usize("n_users")? {
            cfg.n_users = n;
        }
        if let Some(n) = get_usize("n_items")? {
            cfg.n_items = n;
        }
        for (key, slot) in [
            ("bos_id", &mut cfg.bos_id),
            ("eos_id", &mut cfg.eos_id),
            ("pad_id", &mut cfg.pad_id),
        ] {
            if let Some(n) = get_usize(key)? {
                *slot = n as u32;
            }
        }
        if let Some(p) = obj.get("prompt") {
            cfg.prompt = serde_json::from_value(p.clone())
                .context("config.json: `prompt` must be \"continuous\" or \"discrete\"")?;
        }
        if let Some(r) = obj.get("rec") {
            cfg.rec = serde_json::from_value(r.clone())
                .context("config.json: `rec` must be \"none\", \"mf\" or \"mlp\"")?;
        }
        if let Some(l) = get_f32("rec_lambda")? {
            cfg.rec_lambda = l;
        }
        if let Some(n) = get_usize("mlp_hidden")? {
            cfg.mlp_hidden = n;
        }
        if let Some(n) = get_usize("mlp_layers")? {
            cfg.mlp_layers = n;
        }
        // The special ids only have to fit once the vocabulary is resized; validate the rest now.
        let mut probe = cfg.clone();
        probe.vocab_size = probe.vocab_size.max(PEPLER_VOCAB);
        probe.validate()?;
        Ok(cfg)
    }

    /// The same config with the vocabulary grown to hold `<bos> <eos> <pad>` (50257 -> 50260).
    pub fn with_pepler_vocab(mut self) -> Self {
        self.vocab_size = self.vocab_size.max(PEPLER_VOCAB);
        self
    }

    /// A Hugging Face `config.json` for the GPT-2 part (what `GPT2LMHeadModel.from_pretrained`
    /// needs), with the PEPLER fields alongside at the top level (HF keeps unknown keys).
    pub fn to_hf_config_json(&self) -> String {
        let v = serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "activation_function": "gelu_new",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": null,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": 0.02,
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
            "tie_word_embeddings": true,
            "torch_dtype": "float32",
            "n_users": self.n_users,
            "n_items": self.n_items,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "prompt": self.prompt,
            "rec": self.rec,
            "rec_lambda": self.rec_lambda,
            "mlp_hidden": self.mlp_hidden,
            "mlp_layers": self.mlp_layers,
        });
        serde_json::to_string_pretty(&v).expect("a JSON value always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        ModelConfig::gpt2_small(10, 20).validate().unwrap();
        ModelConfig::tiny(3, 4).validate().unwrap();
        // head sizes up to 128 (the fused attention's limit), not beyond
        let mut wide = ModelConfig::tiny(3, 4);
        (wide.n_embd, wide.n_head) = (256, 2);
        wide.validate().unwrap();
        wide.n_head = 1;
        let err = wide.validate().unwrap_err().to_string();
        assert!(err.contains("head size") && err.contains("256"), "{err}");
        assert_eq!(ModelConfig::gpt2_small(1, 1).head_dim(), 64);
    }

    #[test]
    fn dump_json_round_trips_and_rejects_bad_kinds() {
        let cfg = ModelConfig::tiny(5, 6).with_rec(RecKind::Mlp, 0.5);
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(text.contains("\"prompt\":\"continuous\"") && text.contains("\"rec\":\"mlp\""));
        assert_eq!(ModelConfig::from_dump_json(&text).unwrap(), cfg);
        let bad = text.replace("\"mlp\"", "\"deep\"");
        assert!(ModelConfig::from_dump_json(&bad).is_err());
    }

    #[test]
    fn hf_config_parses_released_gpt2_and_round_trips() {
        let released = r#"{"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
          "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256,
          "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
          "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
          "resid_pdrop": 0.1, "vocab_size": 50257}"#;
        let cfg = ModelConfig::from_hf_config_json(released, 7, 8).unwrap();
        assert_eq!(cfg.vocab_size, 50257);
        assert_eq!(cfg.with_pepler_vocab(), ModelConfig::gpt2_small(7, 8));
        let ours = ModelConfig::tiny(3, 4).with_rec(RecKind::Mf, 0.1);
        let back = ModelConfig::from_hf_config_json(&ours.to_hf_config_json(), 0, 0).unwrap();
        assert_eq!(back, ours);
        assert!(ModelConfig::from_hf_config_json(r#"{"n_embd": 8}"#, 1, 1)
            .unwrap_err()
            .to_string()
            .contains("vocab_size"));
    }
}
