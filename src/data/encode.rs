//! Tokenization of a split: explanation sequences `<bos> w.. <eos>` (cut to 20 BPE tokens) and,
//! for PEPLER-D, the discrete feature prompt, mirroring the original `DataLoader.load_data`,
//! `Batchify` and `Batchify2` (PEPLER utils.py, transformers 4.18 slow `GPT2Tokenizer`).

use std::collections::HashMap;

use anyhow::{Context, Result};
use rayon::prelude::*;

use super::dataset::{Dataset, Split};
use crate::tokenizer::Tokenizer;

/// The original cuts explanations (and discrete prompts) to `--words` = 20 BPE tokens.
pub const MAX_EXPLANATION_TOKENS: usize = 20;
/// Discrete prompt length cap (the original reuses `--words`).
pub const MAX_PROMPT_TOKENS: usize = 20;

/// How an explanation becomes token ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextStyle {
    /// Exactly the original's ids. `load_data` keeps
    /// `text = decode(encode(sentence)[:20])` (decode applies `clean_up_tokenization`, e.g.
    /// "did n't" -> "didn't", " ," -> ","), then `Batchify` encodes `'<bos> ' + text + ' <eos>'`.
    /// In transformers 4.18 `GPT2Tokenizer.__init__` wraps `<bos>`/`<eos>` in
    /// `AddedToken(lstrip=False, rstrip=False)`, so the spaces next to them are NOT stripped:
    /// the first word gets its leading-space form ("Ġthe"=262) and a lone "Ġ" (220) precedes
    /// `<eos>`: "the room was clean" -> `[50257, 262, 2119, 373, 3424, 220, 50258]`
    /// (checked against transformers 4.18.0 with the repo's vocabulary). The body may thus be
    /// a token or two longer than 20.
    Original,
    /// `[<bos>] + encode(sentence)[:20] + [<eos>]`: no decode round trip, no extra spaces.
    Compact,
}

/// Options for [`encode_split`].
#[derive(Clone, Debug, PartialEq)]
pub struct EncodeOptions {
    /// Explanation length cap in BPE tokens (20).
    pub max_text_tokens: usize,
    /// Discrete prompt length cap in BPE tokens (20).
    pub max_prompt_tokens: usize,
    pub style: TextStyle,
    /// Build the discrete feature prompt (PEPLER-D).
    pub discrete_prompt: bool,
    /// Repeat shared features in the discrete prompt as the original's operator-precedence
    /// slip does (see [`Dataset::prompt_features`]).
    pub repeat_shared_features: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            max_text_tokens: MAX_EXPLANATION_TOKENS,
            max_prompt_tokens: MAX_PROMPT_TOKENS,
            style: TextStyle::Original,
            discrete_prompt: false,
            repeat_shared_features: false,
        }
    }
}

/// One split, tokenized, unpadded. Row `k` is review `review_ids[k]` of the dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedSplit {
    pub split: Split,
    pub review_ids: Vec<usize>,
    pub users: Vec<u32>,
    pub items: Vec<u32>,
    pub ratings: Vec<f32>,
    /// Full sequences `<bos> w.. <eos>`, unpadded.
    pub sequences: Vec<Vec<u32>>,
    /// The reference explanation text after truncation (the original's `text` field).
    pub references: Vec<String>,
    /// Ground-truth template feature of each row (FMR).
    pub features: Vec<String>,
    /// Discrete prompt ids per row (at most `max_prompt_tokens`), unpadded; `None` unless asked.
    pub prompts: Option<Vec<Vec<u32>>>,
    /// Prompt width P used in every batch: the longest prompt in the split. The original pads
    /// prompts over the whole split and the model ATTENDS to prompt padding, so P changes the
    /// numbers; keeping it split-wide reproduces the original whatever the text padding.
    pub prompt_width: usize,
    /// Longest sequence in the split (the original's padded length T).
    pub max_seq_len: usize,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
}

impl EncodedSplit {
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The explanation ids (with `<bos>`/`<eos>`) and the kept reference text for one sentence.
pub fn encode_explanation(
    tok: &Tokenizer,
    sentence: &str,
    max_tokens: usize,
    style: TextStyle,
) -> Result<(Vec<u32>, String)> {
    let mut ids = tok.encode(sentence)?;
    ids.truncate(max_tokens);
    let (body, text) = match style {
        TextStyle::Original => {
            // decode() is transformers' decode with clean_up_tokenization, as the original.
            let text = tok.decode(&ids, false)?;
            // Encode the body alone instead of '<bos> text <eos>': the builtin asset strips
            // whitespace next to special tokens, the original does not.
            (tok.encode(&format!(" {text} "))?, text)
        }
        TextStyle::Compact => {
            let text = tok.decode(&ids, false)?;
            (ids, text)
        }
    };
    let mut seq = Vec::with_capacity(body.len() + 2);
    seq.push(tok.bos_id());
    seq.extend_from_slice(&body);
    seq.push(tok.eos_id());
    Ok((seq, text))
}

/// Tokenizes one split of `ds` (rows in the split's index order).
pub fn encode_split(
    ds: &Dataset,
    split: Split,
    tok: &Tokenizer,
    opts: &EncodeOptions,
) -> Result<EncodedSplit> {
    let idx = ds.split(split);
    let encoded: Vec<(Vec<u32>, String)> = idx
        .par_iter()
        .map(|&i| {
            encode_explanation(
                tok,
                &ds.reviews[i].sentence,
                opts.max_text_tokens,
                opts.style,
            )
            .with_context(|| format!("{}: tokenizing review {i}", ds.source))
        })
        .collect::<Result<_>>()?;
    let prompts = if opts.discrete_prompt {
        let pieces = FeaturePieces::new(ds, tok)?;
        let p: Vec<Vec<u32>> = idx
            .par_iter()
            .map(|&i| {
                let r = &ds.reviews[i];
                let feats = ds.prompt_features(r.user, r.item, opts.repeat_shared_features);
                pieces.prompt(&feats, opts.max_prompt_tokens)
            })
            .collect();
        Some(p)
    } else {
        None
    };
    let prompt_width = prompts
        .as_ref()
        .map_or(0, |p| p.iter().map(Vec::len).max().unwrap_or(0));
    let (sequences, references): (Vec<_>, Vec<_>) = encoded.into_iter().unzip();
    let max_seq_len = sequences.iter().map(Vec::len).max().unwrap_or(0);
    Ok(EncodedSplit {
        split,
        review_ids: idx.to_vec(),
        users: idx.iter().map(|&i| ds.reviews[i].user).collect(),
        items: idx.iter().map(|&i| ds.reviews[i].item).collect(),
        ratings: idx.iter().map(|&i| ds.reviews[i].rating).collect(),
        sequences,
        references,
        features: idx.iter().map(|&i| ds.reviews[i].feature.clone()).collect(),
        prompts,
        prompt_width,
        max_seq_len,
        bos_id: tok.bos_id(),
        eos_id: tok.eos_id(),
        pad_id: tok.pad_id(),
    })
}

/// BPE ids of every feature, alone (`"room"`) and after a space (`" room"`), so a discrete prompt
/// `encode("f1 f2 f3 ..")[:20]` is assembled as `ids("f1") + ids(" f2") + ids(" f3") ..` instead
/// of tokenizing hundreds of words per review. Equal by construction of GPT-2's pre-tokenizer:
/// its pieces never span the joining space (every piece that contains a space starts with it, or
/// is a whitespace run that stops before the space preceding a word), and BPE runs per piece.
/// (A feature containing a special-token string like "<pad>" would break this; no dataset has one.)
struct FeaturePieces<'a> {
    first: HashMap<&'a str, Vec<u32>>,
    later: HashMap<&'a str, Vec<u32>>,
}

impl<'a> FeaturePieces<'a> {
    fn new(ds: &'a Dataset, tok: &Tokenizer) -> Result<Self> {
        let encoded: Vec<(Vec<u32>, Vec<u32>)> = ds
            .features
            .par_iter()
            .map(|f| -> Result<_> {
                let ctx = || format!("{}: tokenizing feature {f:?}", ds.source);
                Ok((
                    tok.encode(f).with_context(ctx)?,
                    tok.encode(&format!(" {f}")).with_context(ctx)?,
                ))
            })
            .collect::<Result<_>>()?;
        let mut first = HashMap::new();
        let mut later = HashMap::new();
        for (f, (a, b)) in ds.features.iter().zip(encoded) {
            first.insert(f.as_str(), a);
            later.insert(f.as_str(), b);
        }
        Ok(Self { first, later })
    }

    fn prompt(&self, feats: &[&str], max_tokens: usize) -> Vec<u32> {
        let mut ids = Vec::new();
        for (k, f) in feats.iter().enumerate() {
            if ids.len() >= max_tokens {
                break;
            }
            let map = if k == 0 { &self.first } else { &self.later };
            // Features come from the dataset's own reviews, so they are always in the map.
            if let Some(p) = map.get(f) {
                ids.extend_from_slice(p);
            }
        }
        ids.truncate(max_tokens);
        ids
    }
}
