//! KV-cache decoding for greedy generation, written against the `Backend` like the training path.
//!
//! A [`KvCache`] holds, per layer, the keys and values of every position seen so far
//! (B, NH, lmax, hd) plus the scratch buffers of one step, all in backend memory. A step takes `n`
//! new positions of every sequence (the prompt + `<bos>` at prefill, then one token at a time), runs
//! the blocks through the training forward's `block_forward` with `attention_cached_forward` (which
//! appends the new k, v and attends to all cached positions), applies `ln_f` to the last new
//! position of each sequence only, computes its logits with the tied LM head and returns the greedy
//! next token per sequence: only B ids come back to the host. Decoding attends to every position (the original generates without an attention
//! mask: prompt padding of the discrete prompt is attended, as in training).

use anyhow::{bail, Result};

use super::acts::LayerActs;
use super::block::{block_forward, BlockAttn};
use super::config::PromptKind;
use super::heads::widen;
use super::pepler::Pepler;
use crate::backend::{Act, AttnShape, Backend, EmbedShape, WeightLayout};

/// The new positions of one decoding step.
#[derive(Clone, Copy, Debug)]
pub enum StepInput<'a> {
    /// Continuous prompt: user and item ids [B], then `first` tokens [B] (usually `<bos>`).
    PrefillContinuous {
        users: &'a [u32],
        items: &'a [u32],
        first: &'a [u32],
    },
    /// Discrete prompt: feature tokens [B * p], then `first` tokens [B].
    PrefillDiscrete {
        prompt: &'a [u32],
        p: usize,
        first: &'a [u32],
    },
    /// One token per sequence [B].
    Tokens(&'a [u32]),
}

/// Keys/values of every layer and the scratch of one step (see the module docs).
pub struct KvCache<B: Backend, A: Act = f32> {
    b: usize,
    lmax: usize,
    nmax: usize,
    len: usize,
    k: Vec<B::Buf<A>>,
    v: Vec<B::Buf<A>>,
    /// The ids of the segment being embedded.
    ids: B::Buf<i32>,
    last_idx: B::Buf<i32>,
    /// The step size `last_idx` currently holds indices for.
    last_idx_n: usize,
    /// The input of the next block (the step's embeddings, then each block's output).
    x: B::Buf<A>,
    /// One block's intermediates, reused by every layer.
    blk: LayerActs<B, A>,
    last: B::Buf<A>,
    lnf: B::Buf<A>,
    lnf_mean: B::Buf<f32>,
    lnf_rstd: B::Buf<f32>,
    logits: B::Buf<A>,
    next: B::Buf<i32>,
}

impl<B: Backend, A: Act> KvCache<B, A> {
    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Capacity in positions.
    pub fn capacity(&self) -> usize {
        self.lmax
    }
    /// Logits [B, V] of the last step (tests, sampling).
    pub fn last_logits(&self, be: &B, vocab: usize) -> Result<Vec<f32>> {
        Ok(widen(be.download(&self.logits, self.b * vocab)?))
    }
}

impl<B: Backend, A: Act> Pepler<B, A> {
    /// A cache for `b` sequences of up to `lmax` positions, with steps of up to `nmax` positions.
    pub fn kv_cache(&self, b: usize, lmax: usize, nmax: usize) -> Result<KvCache<B, A>> {
        let cfg = &self.cfg;
        if lmax > cfg.n_positions {
            bail!(
                "kv_cache: {lmax} positions exceed n_positions {}",
                cfg.n_positions
            );
        }
        if b == 0 || nmax == 0 || nmax > lmax {
            bail!("kv_cache: need b > 0 and 0 < nmax <= lmax (b {b}, nmax {nmax}, lmax {lmax})");
        }
        let c = cfg.n_embd;
        let be = &self.be;
        let rows = b * nmax;
        let f = |n: usize| be.alloc::<f32>(n);
        let x = |n: usize| be.alloc::<A>(n);
        let mut k = Vec::with_capacity(cfg.n_layer);
        let mut v = Vec::with_capacity(cfg.n_layer);
        for _ in 0..cfg.n_layer {
            k.push(x(b * lmax * c)?);
            v.push(x(b * lmax * c)?);
        }
        Ok(KvCache {
            b,
            lmax,
            nmax,
            len: 0,
            k,
            v,
            ids: be.alloc(rows)?,
            last_idx: be.alloc(b)?,
            last_idx_n: 0,
            x: x(rows * c)?,
            blk: LayerActs::new(be, rows, c, 0)?,
            last: x(b * c)?,
            lnf: x(b * c)?,
            lnf_mean: f(b)?,
            lnf_rstd: f(b)?,
            logits: x(b * cfg.vocab_size)?,
            next: be.alloc(b)?,
        })
    }

    /// One decoding step: appends the new positions to `cache` and returns the greedy next token
    /// of every sequence (argmax of the logits at its last new position).
    pub fn decode_step(&self, cache: &mut KvCache<B, A>, input: StepInput<'_>) -> Result<Vec<u32>> {
        let cfg = &self.cfg;
        let (be, idx) = (&self.be, &self.idx);
        let w = self.weights();
        let (b, c, v, nh) = (cache.b, cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let start = cache.len;
        let to_i32 = |s: &[u32]| s.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        let check_tokens = |what: &str, s: &[u32], n: usize| -> Result<()> {
            if s.len() != n {
                bail!("decode_step: {what} has {} entries, expected {n}", s.len());
            }
            if let Some(&bad) = s.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                bail!(
                    "decode_step: {what} token {bad} outside the vocabulary of {}",
                    cfg.vocab_size
                );
            }
            Ok(())
        };
        // ---- embeddings of the n new positions, one segment of ids at a time
        let embed = |cache: &mut KvCache<B, A>, table: usize, ids: &[u32], s: EmbedShape| {
            be.write(&mut cache.ids, &to_i32(ids))?;
            be.embedding_forward(
                &mut cache.x,
                w.f32(table),
                &cache.ids,
                Some(w.f32(idx.wpe)),
                s,
            )
        };
        let n = match input {
            StepInput::PrefillContinuous {
                users,
                items,
                first,
            } => {
                if cfg.prompt != PromptKind::Continuous || start != 0 {
                    bail!("decode_step: a continuous prefill needs the continuous prompt and an empty cache");
                }
                check_tokens("first", first, b)?;
                if users.len() != b || items.len() != b {
                    bail!(
                        "decode_step: {} users and {} items for {b} sequences",
                        users.len(),
                        items.len()
                    );
                }
                if let Some(&u) = users.iter().find(|&&u| u as usize >= cfg.n_users) {
                    bail!("decode_step: user {u} outside 0..{}", cfg.n_users);
                }
                if let Some(&i) = items.iter().find(|&&i| i as usize >= cfg.n_items) {
                    bail!("decode_step: item {i} outside 0..{}", cfg.n_items);
                }
                let n = 3;
                self.check_room(cache, n)?;
                let seg = |offset| EmbedShape {
                    batch: b,
                    n: 1,
                    seq: n,
                    offset,
                    pos0: 0,
                    c,
                };
                let (ui, ii) = idx.user_item();
                embed(cache, ui, users, seg(0))?;
                embed(cache, ii, items, seg(1))?;
                embed(cache, idx.wte, first, seg(2))?;
                n
            }
            StepInput::PrefillDiscrete { prompt, p, first } => {
                if cfg.prompt != PromptKind::Discrete || start != 0 {
                    bail!("decode_step: a discrete prefill needs the discrete prompt and an empty cache");
                }
                check_tokens("prompt", prompt, b * p)?;
                check_tokens("first", first, b)?;
                let n = p + 1;
                self.check_room(cache, n)?;
                let seg = |k, offset| EmbedShape {
                    batch: b,
                    n: k,
                    seq: n,
                    offset,
                    pos0: 0,
                    c,
                };
                if p > 0 {
                    embed(cache, idx.wte, prompt, seg(p, 0))?;
                }
                embed(cache, idx.wte, first, seg(1, p))?;
                n
            }
            StepInput::Tokens(tokens) => {
                check_tokens("tokens", tokens, b)?;
                if start == 0 {
                    bail!("decode_step: prefill the cache with the prompt first");
                }
                self.check_room(cache, 1)?;
                let s = EmbedShape {
                    batch: b,
                    n: 1,
                    seq: 1,
                    offset: 0,
                    pos0: start,
                    c,
                };
                embed(cache, idx.wte, tokens, s)?;
                1
            }
        };
        let ash = AttnShape { b, l: n, c, nh };
        let eps = cfg.layer_norm_epsilon;
        // ---- blocks
        for (li, lw) in idx.layers.iter().enumerate() {
            let attn = BlockAttn::Cached {
                k: &mut cache.k[li],
                v: &mut cache.v[li],
                start,
                lmax: cache.lmax,
            };
            block_forward(be, w, lw, eps, &cache.x, &mut cache.blk, attn, None, ash)?;
            std::mem::swap(&mut cache.x, &mut cache.blk.res3);
        }
        // ---- last new position of each sequence -> ln_f -> logits -> argmax
        if n != cache.last_idx_n {
            let idx_host: Vec<i32> = (0..b).map(|i| ((i + 1) * n - 1) as i32).collect();
            be.write(&mut cache.last_idx, &idx_host)?;
            cache.last_idx_n = n;
        }
        be.row_gather(&mut cache.last, &cache.x, &cache.last_idx, b, c, b * n)?;
        be.layernorm_forward(
            &mut cache.lnf,
            &mut cache.lnf_mean,
            &mut cache.lnf_rstd,
            &cache.last,
            w.f32(idx.lnf_w),
            w.f32(idx.lnf_b),
            b,
            c,
            eps,
        )?;
        be.matmul_forward(
            &mut cache.logits,
            &cache.lnf,
            w.gemm(idx.wte)?,
            None,
            b,
            c,
            v,
            WeightLayout::OutIn,
        )?;
        be.argmax(&mut cache.next, &cache.logits, b, v)?;
        cache.len += n;
        Ok(be
            .download(&cache.next, b)?
            .into_iter()
            .map(|t| t as u32)
            .collect())
    }

    fn check_room(&self, cache: &KvCache<B, A>, n: usize) -> Result<()> {
        if n > cache.nmax {
            bail!(
                "decode_step: {n} new positions exceed the cache's step size {}",
                cache.nmax
            );
        }
        if cache.len + n > cache.lmax {
            bail!(
                "decode_step: cache full ({} + {n} > {} positions)",
                cache.len,
                cache.lmax
            );
        }
        Ok(())
    }
}
