//! GPT-2 byte-level BPE with PEPLER's added tokens `<bos>`=50257, `<eos>`=50258, `<pad>`=50259
//! (vocabulary 50260), behaving like the original code's
//! `GPT2Tokenizer.from_pretrained('gpt2', bos_token='<bos>', eos_token='<eos>', pad_token='<pad>')`
//! (transformers 4.18, the *slow* Python tokenizer).
//!
//! The BPE itself runs in the `tokenizers` crate from a `tokenizer.json`; the vocabulary shipped in
//! `assets/gpt2/tokenizer.json` is OpenAI's, converted by `scripts/tokenizer/convert_gpt2.py`
//! (provenance and hashes in `assets/gpt2/README.md`).
//!
//! Behaviours of the slow tokenizer reproduced on purpose (they change token ids and metric
//! inputs; expected values in tests/tokenizer.rs come from transformers 4.18 itself, printed by
//! `scripts/tokenizer/slow_reference.py`):
//! - special tokens are matched anywhere and the whitespace next to them is kept: the original's
//!   `'<bos> ' + text + ' <eos>'` encodes as `[50257, " the"=262, .., " clean"=3424, " "=220, 50258]`
//!   (note the trailing 220 before `<eos>`);
//! - [`Tokenizer::decode`] joins the byte-level text runs and the added tokens with single
//!   spaces and then applies `clean_up_tokenization` (" ." -> "." and friends), exactly as
//!   `PreTrainedTokenizer._decode` with its defaults. [`Tokenizer::decode_plain`] is the plain
//!   byte-level concatenation.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// The tokenizer JSON compiled into the binary.
const BUILTIN_JSON: &[u8] = include_bytes!("../assets/gpt2/tokenizer.json");

pub const BOS_TOKEN: &str = "<bos>";
pub const EOS_TOKEN: &str = "<eos>";
pub const PAD_TOKEN: &str = "<pad>";
/// GPT-2's own end-of-text token; the slow tokenizer's `unk_token`, so also a special token.
pub const ENDOFTEXT_TOKEN: &str = "<|endoftext|>";

/// GPT-2 BPE + PEPLER special tokens. Cheap to share across threads (`Send + Sync`).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `is_special[id]`: id is a special token (skipped by `decode(.., true)`): all added tokens,
    /// including `<|endoftext|>` which is also in the BPE vocabulary.
    is_special: Vec<bool>,
    /// Ids at or above this are added tokens outside the BPE model (`<bos>`, `<eos>`, `<pad>`):
    /// the slow tokenizer's `added_tokens_encoder`, which `decode` separates by spaces.
    model_vocab_size: u32,
    bos: u32,
    eos: u32,
    pad: u32,
    vocab_size: usize,
    sha256: String,
    source: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Tokenizer {
    /// The embedded GPT-2 tokenizer (`assets/gpt2/tokenizer.json`).
    pub fn builtin() -> Result<Self> {
        Self::from_json_bytes(BUILTIN_JSON, "<builtin assets/gpt2/tokenizer.json>")
    }

    /// Loads a `tokenizers` JSON file; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read tokenizer file {}", path.display()))?;
        Self::from_json_bytes(&bytes, &path.display().to_string())
    }

    /// Parses tokenizer JSON bytes; `source` names them in error messages.
    pub fn from_json_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        // `tokenizers` 0.22 panics (`expect("Helper")` in its decoder) on some malformed JSON:
        // check the syntax first, so a broken file is an error naming it.
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| anyhow!("tokenizer file {source} is not valid JSON: {e}"))?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| anyhow!("tokenizer file {source} is not a valid tokenizer JSON: {e}"))?;
        let id_of = |tok: &str| {
            inner
                .token_to_id(tok)
                .ok_or_else(|| anyhow!("tokenizer file {source} has no {tok} token"))
        };
        let (bos, eos, pad) = (id_of(BOS_TOKEN)?, id_of(EOS_TOKEN)?, id_of(PAD_TOKEN)?);
        let vocab_size = inner.get_vocab_size(true);
        let model_vocab_size = inner.get_vocab_size(false) as u32;
        let mut is_special = vec![false; vocab_size];
        for (id, tok) in inner.get_added_tokens_decoder() {
            let slot = is_special.get_mut(id as usize).ok_or_else(|| {
                anyhow!(
                    "tokenizer file {source}: added token {:?} has id {id} outside the vocabulary of {vocab_size}",
                    tok.content
                )
            })?;
            *slot = true;
        }
        for (name, id) in [(BOS_TOKEN, bos), (EOS_TOKEN, eos), (PAD_TOKEN, pad)] {
            if !is_special.get(id as usize).copied().unwrap_or(false) {
                bail!("tokenizer file {source}: {name} (id {id}) is not an added special token");
            }
        }
        let sha256 = hex(&Sha256::digest(bytes));
        Ok(Self {
            inner,
            is_special,
            bos,
            eos,
            pad,
            vocab_size,
            model_vocab_size,
            sha256,
            source: source.to_string(),
        })
    }

    /// BPE ids of `text`, special tokens recognised (whitespace next to them is kept, as the slow
    /// tokenizer does). No tokens are added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("tokenizer {}: cannot encode {text:?}: {e}", self.source))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Self::encode`] over many texts in parallel (rayon); order preserved.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// The original's training sequence for one explanation: `encode('<bos> ' + text + ' <eos>')`
    /// (utils.py `Batchify`: `'{} {} {}'.format(bos, text, eos)`), without padding.
    pub fn encode_explanation(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(&format!("{BOS_TOKEN} {text} {EOS_TOKEN}"))
    }

    /// Text of `ids` as transformers 4.18 `GPT2Tokenizer.decode(ids, skip_special_tokens)` with its
    /// defaults (`spaces_between_special_tokens=True`, `clean_up_tokenization_spaces=True`):
    /// 1. with `skip_special_tokens`, every special id (`<|endoftext|>`, `<bos>`, `<eos>`, `<pad>`)
    ///    is dropped first, so the text on both sides becomes one run;
    /// 2. the byte-level runs between *added* tokens (`<bos>`, `<eos>`, `<pad>`; `<|endoftext|>` is
    ///    part of GPT-2's own vocabulary and stays inside its run) are decoded separately (invalid
    ///    UTF-8 becomes U+FFFD) and joined with the added tokens by single spaces;
    /// 3. [`clean_up_tokenization`] runs on the result.
    ///
    /// Unknown ids are an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let mut parts: Vec<String> = Vec::new();
        let mut run: Vec<u32> = Vec::new();
        for (pos, &id) in ids.iter().enumerate() {
            if (id as usize) >= self.vocab_size {
                bail!(
                    "tokenizer {}: id {id} at position {pos} is outside the vocabulary of {}",
                    self.source,
                    self.vocab_size
                );
            }
            if skip_special_tokens && self.is_special[id as usize] {
                continue;
            }
            if id >= self.model_vocab_size {
                if !run.is_empty() {
                    parts.push(self.decode_plain(&run)?);
                    run.clear();
                }
                parts.push(self.id_to_token(id).unwrap_or_default());
            } else {
                run.push(id);
            }
        }
        if !run.is_empty() {
            parts.push(self.decode_plain(&run)?);
        }
        Ok(clean_up_tokenization(&parts.join(" ")))
    }

    /// Plain byte-level decoding: tokens' bytes concatenated (special tokens as their text, no
    /// spaces added, no clean-up). What a `tokenizers`-based GPT-2 decoder returns.
    pub fn decode_plain(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| anyhow!("tokenizer {}: cannot decode {ids:?}: {e}", self.source))
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }
    pub fn eos_id(&self) -> u32 {
        self.eos
    }
    pub fn pad_id(&self) -> u32 {
        self.pad
    }
    /// Number of ids including the added tokens (50260 for the builtin asset).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    /// Whether `id` is an added (special) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }
    /// Hex sha256 of the tokenizer JSON bytes (for checkpoint sidecars).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    /// Where the tokenizer came from (file path or the builtin marker).
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    /// The raw vocabulary string of `id` (byte-level alphabet, e.g. "Ġthe" for " the").
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}

/// transformers' `PreTrainedTokenizerBase.clean_up_tokenization` (4.18), the same replacements in
/// the same order.
pub fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
