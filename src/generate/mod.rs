//! Greedy explanation generation (the original's `generate`): start from `<bos>` after the prompt,
//! append the argmax token, stop at `<eos>` or after `max_len` (20) tokens.
//!
//! [`greedy`] decodes a whole batch with a KV cache through the backend (`Pepler::decode_step`):
//! one prefill step for prompt + `<bos>`, then one position per step; only B token ids per step
//! come back to the host. [`greedy_full_recompute`] is the cache-free reference that reruns the
//! full forward on the growing sequence (as the original does), one [`full_last_logits`] per token;
//! tests check the two agree, token for token and step logits against `full_last_logits`.
//!
//! Output per sequence: the generated ids, up to and including the first `<eos>` (if any), at most
//! `max_len` of them. Sequences that have finished still ride along in the batch until all have
//! finished (their later tokens are discarded), so batching does not change anyone's output.

use anyhow::{bail, Result};

use crate::backend::{Act, Backend};
use crate::model::batch::Batch;
use crate::model::config::PromptKind;
use crate::model::decode::StepInput;
use crate::model::pepler::{ForwardOptions, Pepler};

/// The original's explanation length cap.
pub const DEFAULT_MAX_LEN: usize = 20;

/// What the generated text is conditioned on, for a batch of `b` sequences.
#[derive(Clone, Copy, Debug)]
pub enum GenPrompt<'a> {
    /// PEPLER: user and item ids [b].
    Continuous { users: &'a [u32], items: &'a [u32] },
    /// PEPLER-D: feature tokens [b * p] (right-padded with `<pad>`, attended as in training).
    Discrete { tokens: &'a [u32], p: usize },
}

impl GenPrompt<'_> {
    /// Number of sequences.
    pub fn batch(&self) -> usize {
        match self {
            GenPrompt::Continuous { users, .. } => users.len(),
            GenPrompt::Discrete { tokens, p } => {
                if *p == 0 {
                    0
                } else {
                    tokens.len() / p
                }
            }
        }
    }
    fn len(&self) -> usize {
        match self {
            GenPrompt::Continuous { .. } => 2,
            GenPrompt::Discrete { p, .. } => *p,
        }
    }
}

fn check_prompt<B: Backend, A: Act>(
    model: &Pepler<B, A>,
    prompt: &GenPrompt<'_>,
    max_len: usize,
) -> Result<usize> {
    let cfg = model.config();
    let b = prompt.batch();
    if b == 0 {
        bail!("generate: empty batch");
    }
    match (prompt, &cfg.prompt) {
        (GenPrompt::Continuous { users, items }, PromptKind::Continuous) => {
            if users.len() != items.len() {
                bail!("generate: {} users but {} items", users.len(), items.len());
            }
        }
        (GenPrompt::Discrete { tokens, p }, PromptKind::Discrete) => {
            if tokens.len() != b * p {
                bail!(
                    "generate: {} prompt tokens are not {b} rows of {p}",
                    tokens.len()
                );
            }
        }
        _ => bail!(
            "generate: the prompt kind does not match the model's ({:?})",
            cfg.prompt
        ),
    }
    let lmax = prompt.len() + 1 + max_len;
    if lmax > cfg.n_positions + 1 {
        bail!(
            "generate: prompt {} + <bos> + {max_len} tokens exceed n_positions {}",
            prompt.len(),
            cfg.n_positions
        );
    }
    Ok(b)
}

/// Appends `next` to each unfinished sequence; returns true when all have finished.
fn push_tokens(
    out: &mut [Vec<u32>],
    done: &mut [bool],
    next: &[u32],
    eos: u32,
    max_len: usize,
) -> bool {
    for ((o, d), &t) in out.iter_mut().zip(done.iter_mut()).zip(next) {
        if !*d {
            o.push(t);
            *d = t == eos || o.len() >= max_len;
        }
    }
    done.iter().all(|&d| d)
}

/// Batched greedy decoding with a KV cache (see the module docs).
pub fn greedy<B: Backend, A: Act>(
    model: &Pepler<B, A>,
    prompt: GenPrompt<'_>,
    max_len: usize,
) -> Result<Vec<Vec<u32>>> {
    let b = check_prompt(model, &prompt, max_len)?;
    let cfg = model.config();
    let mut out = vec![Vec::with_capacity(max_len); b];
    if max_len == 0 {
        return Ok(out);
    }
    let mut done = vec![false; b];
    let first = vec![cfg.bos_id; b];
    let nmax = prompt.len() + 1;
    // The last generated token never needs to enter the cache: prompt + <bos> + (max_len - 1).
    let lmax = nmax + max_len - 1;
    let mut cache = model.kv_cache(b, lmax, nmax)?;
    let input = match prompt {
        GenPrompt::Continuous { users, items } => StepInput::PrefillContinuous {
            users,
            items,
            first: &first,
        },
        GenPrompt::Discrete { tokens, p } => StepInput::PrefillDiscrete {
            prompt: tokens,
            p,
            first: &first,
        },
    };
    let mut next = model.decode_step(&mut cache, input)?;
    while !push_tokens(&mut out, &mut done, &next, cfg.eos_id, max_len) {
        next = model.decode_step(&mut cache, StepInput::Tokens(&next))?;
    }
    Ok(out)
}

/// Logits [B, V] at the last position of `[prompt, seqs[r]]` for every sequence `r` (all of one
/// length), from the full forward without a cache: what a decoding step must reproduce.
pub fn full_last_logits<B: Backend, A: Act>(
    model: &mut Pepler<B, A>,
    prompt: GenPrompt<'_>,
    seqs: &[Vec<u32>],
) -> Result<Vec<f32>> {
    let (b, t) = (seqs.len(), seqs.first().map_or(0, |s| s.len()));
    if seqs.iter().any(|s| s.len() != t) {
        bail!("generate: sequences of different lengths");
    }
    let (users, items, prompt, p) = match prompt {
        GenPrompt::Continuous { users, items } => (users.to_vec(), items.to_vec(), vec![], 0),
        GenPrompt::Discrete { tokens, p } => (vec![0; b], vec![0; b], tokens.to_vec(), p),
    };
    let batch = Batch {
        b,
        t,
        p,
        users,
        items,
        text: seqs.concat(),
        mask: vec![1; b * t],
        rating: vec![0.0; b],
        prompt,
    };
    let opts = ForwardOptions {
        want_logits: true,
        ..Default::default()
    };
    let logits = model.forward(&batch, opts)?.logits.expect("requested");
    let (l, v) = (batch.seq_len(model.config()), model.config().vocab_size);
    Ok((0..b)
        .flat_map(|r| &logits[(r * l + l - 1) * v..(r * l + l) * v])
        .copied()
        .collect())
}

/// Cache-free reference: reruns the full forward on `[prompt, <bos>, generated..]` for every new
/// token (the original's algorithm). Slow; for tests.
pub fn greedy_full_recompute<B: Backend, A: Act>(
    model: &mut Pepler<B, A>,
    prompt: GenPrompt<'_>,
    max_len: usize,
) -> Result<Vec<Vec<u32>>> {
    let b = check_prompt(model, &prompt, max_len)?;
    let cfg = model.config().clone();
    let v = cfg.vocab_size;
    let mut out = vec![Vec::with_capacity(max_len); b];
    let mut done = vec![false; b];
    let mut seqs: Vec<Vec<u32>> = vec![vec![cfg.bos_id]; b];
    if max_len == 0 {
        return Ok(out);
    }
    loop {
        let logits = full_last_logits(model, prompt, &seqs)?;
        let next: Vec<u32> = logits
            .chunks(v)
            .map(|row| {
                let mut best = 0;
                for (j, &x) in row.iter().enumerate() {
                    if x > row[best] {
                        best = j;
                    }
                }
                best as u32
            })
            .collect();
        if push_tokens(&mut out, &mut done, &next, cfg.eos_id, max_len) {
            return Ok(out);
        }
        for (s, &t) in seqs.iter_mut().zip(&next) {
            s.push(t);
        }
    }
}
